"""The diffusion stage: backbone loading, inversion, prompt learning, and averaged cross-attention.

Which backbone a preset name means is declared in :mod:`anyword.presets`, not here.
"""

from anyword.diffusion.attention import AttentionMaps, CrossAttentionRecorder, record_cross_attention
from anyword.diffusion.backbone import Backbone, override_token_embeddings
from anyword.diffusion.extract import AttentionResult, DiffusionSettings, extract_attention
from anyword.diffusion.inversion import DDIMSchedule, ddim_denoise, ddim_invert, ddim_step, make_schedule
from anyword.diffusion.prompt_learning import LearnedEmbeddings, LearningSettings, learn_embeddings

__all__ = [
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
    "make_schedule",
    "override_token_embeddings",
    "record_cross_attention",
]
