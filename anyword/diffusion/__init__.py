"""The diffusion stage: backbone presets and loading, inversion, prompt learning, and averaged cross-attention."""

from anyword.diffusion.attention import AttentionMaps, CrossAttentionRecorder, record_cross_attention
from anyword.diffusion.backbone import Backbone, override_token_embeddings
from anyword.diffusion.extract import AttentionResult, DiffusionSettings, extract_attention
from anyword.diffusion.inversion import DDIMSchedule, ddim_denoise, ddim_invert, ddim_step, make_schedule
from anyword.diffusion.presets import DEFAULT_PRESET, PRESETS, load_backbone, pick_device, pick_dtype
from anyword.diffusion.prompt_learning import (
    FAST_STEPS,
    PAPER_STEPS,
    LearnedEmbeddings,
    LearningSettings,
    learn_embeddings,
)

__all__ = [
    "DEFAULT_PRESET",
    "FAST_STEPS",
    "PAPER_STEPS",
    "PRESETS",
    "AttentionMaps",
    "AttentionResult",
    "Backbone",
    "CrossAttentionRecorder",
    "DDIMSchedule",
    "DiffusionSettings",
    "LearnedEmbeddings",
    "LearningSettings",
    "ddim_denoise",
    "ddim_invert",
    "ddim_step",
    "extract_attention",
    "learn_embeddings",
    "load_backbone",
    "make_schedule",
    "override_token_embeddings",
    "pick_device",
    "pick_dtype",
    "record_cross_attention",
]
