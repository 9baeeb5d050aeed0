"""The diffusion stage: image + aligned caption -> learned embeddings -> inversion -> averaged attention maps.

Algorithm 1 of the paper: learn the concept embeddings V (prompt learning), invert the image with Eq. 1, denoise
the inverted latents with V (direct inversion keeps the path on the input), and average the cross-attention of
every token over heads, layers and denoising timesteps.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from anyword.diffusion.attention import AttentionMaps, record_cross_attention
from anyword.diffusion.backbone import Backbone
from anyword.diffusion.inversion import (
    ddim_denoise,
    ddim_invert,
    make_schedule,
    predict_on_trajectory,
    recorded_steps,
)
from anyword.diffusion.prompt_learning import (
    LearnedEmbeddings,
    LearningSettings,
    embedding_key,
    embedding_slots,
    learn_embeddings,
)
from anyword.errors import SettingsError
from anyword.images import ImageFrame, image_digest
from anyword.seeds import MAX_SEED
from anyword.tokens import TokenAlignment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiffusionSettings:
    """Settings of the diffusion stage; defaults follow the paper (C.1) and null-text inversion.

    Attributes:
        inversion_steps: DDIM steps for inversion and denoising (50).
        direct_inversion: add the inversion/denoising gap at each step (Ju et al. 2024).
        learning: prompt-learning settings (1100 steps in the paper, 0 to skip).
        attention_resolutions: query-grid sides whose cross-attention is averaged; ``None``: the paper's 16x16
            layers where the model has them (SD 1.x at 512 px, LDM at 256 px), else its grid nearest a quarter of
            the latent side (:attr:`Backbone.default_attention_grid`). Add 32/64 for small objects. Results record
            the grids actually used.
        attention_timesteps: ``(low, high)``: average only denoising steps with ``low <= t <= high`` (None: all).
        resize: how the image becomes the square model input, "stretch" or "pad" (see :class:`ImageFrame`).
        seed: seeds prompt learning's timesteps and noise.
    """

    inversion_steps: int = 50
    direct_inversion: bool = True
    learning: LearningSettings = field(default_factory=LearningSettings)
    attention_resolutions: tuple[int, ...] | None = None
    attention_timesteps: tuple[int, int] | None = None
    resize: str = "stretch"
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be from 0 to {MAX_SEED}, got {self.seed}")


@dataclass
class AttentionResult:
    """Output of the diffusion stage for one image and caption."""

    maps: AttentionMaps
    embeddings: LearnedEmbeddings
    reconstruction_mse: float
    timings: dict[str, float]
    settings: DiffusionSettings
    backbone: str
    random_weights: bool
    recorded_layers: tuple[str, ...]
    unet_calls: int


def extract_attention(
    backbone: Backbone,
    image: np.ndarray,
    alignment: TokenAlignment,
    settings: DiffusionSettings = DiffusionSettings(),
    embeddings: LearnedEmbeddings | None = None,
    progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
    digest: str | None = None,
) -> AttentionResult:
    """Run Algorithm 1 on ``image`` (``(H, W, 3)`` uint8) for the concepts in ``alignment``.

    ``digest``: the image's :func:`~anyword.images.image_digest` if the caller has it (hashed here otherwise).
    ``embeddings`` reuses vectors learned earlier for the same image and caption (their key must match).
    ``on_stage(name)`` is called as each stage starts ("encode", "learn", "invert", "denoise").
    """
    timings: dict[str, float] = {}
    calls = {"unet": 0}

    def stage(name: str):
        if on_stage is not None:
            on_stage(name)
        return _Timer(timings, name)

    def predict(latents: torch.Tensor, timestep) -> torch.Tensor:
        calls["unet"] += latents.shape[0]  # UNet evaluations (a batched call evaluates several latents)
        return backbone.unet_forward(latents, timestep, text_states)

    settings = with_attention_grids(settings, backbone)
    frame = ImageFrame(width=image.shape[1], height=image.shape[0], size=backbone.resolution, mode=settings.resize)
    key = learned_embeddings_key(backbone, digest or image_digest(image), alignment, settings)
    with stage("encode"):
        latents = backbone.encode_image(frame.to_model(image))
    with stage("learn"):
        if embeddings is not None:
            if embeddings.key != key:
                raise ValueError("these learned embeddings belong to another image, caption, model or settings")
        else:
            embeddings = learn_embeddings(
                backbone, latents, alignment, settings.learning, settings.seed, key, progress=progress
            )
            calls["unet"] += settings.learning.steps if embeddings.slots else 0
    with torch.no_grad():
        text_states = backbone.text_states(alignment.input_ids, embeddings)
    schedule = make_schedule(backbone.scheduler, settings.inversion_steps)
    record = _record_batched if settings.direct_inversion and backbone.speed.recording_batch else _record_stepwise
    token_grids, recorder, final = record(backbone, predict, latents, schedule, settings, stage, progress)
    mse = float(torch.mean((final.float() - latents.float()) ** 2))
    embeddings.vectors = embeddings.vectors.detach().cpu()  # results live on the CPU (per-session state)
    logger.info("diffusion stage: %s, reconstruction MSE %.3g", {k: round(v, 2) for k, v in timings.items()}, mse)
    return AttentionResult(
        maps=AttentionMaps(token_grids=token_grids, frame=frame, alignment=alignment),
        embeddings=embeddings,
        reconstruction_mse=mse,
        timings=timings,
        settings=settings,
        backbone=backbone.name,
        random_weights=backbone.random_weights,
        recorded_layers=tuple(sorted(recorder.layers_seen)),
        unet_calls=calls["unet"],
    )


def _record_stepwise(backbone, predict, latents, schedule, settings, stage, progress):
    """Invert every step, then denoise step by step, recording the chosen timesteps' attention."""
    with stage("invert"):
        trajectory = ddim_invert(predict, latents, schedule, backbone.prediction_type, progress=progress)
    low, high = settings.attention_timesteps or (0, backbone.scheduler.config.num_train_timesteps)
    with stage("denoise"), record_cross_attention(backbone.unet, settings.attention_resolutions) as recorder:

        def before_step(timestep: int) -> bool:
            recorder.active = low <= timestep <= high
            return recorder.active  # direct inversion skips the UNet where no attention is wanted

        final, _ = ddim_denoise(
            predict,
            trajectory,
            schedule,
            backbone.prediction_type,
            direct=settings.direct_inversion,
            before_step=before_step,
            progress=progress,
        )
        recorder.active = False
        return recorder.average(), recorder, final


def _record_batched(backbone, predict, latents, schedule, settings, stage, progress):
    """Direct inversion's calls, batched: invert up to the highest recorded timestep, then evaluate the recorded
    steps on the trajectory, ``backbone.speed.recording_batch`` per UNet call (the same maps up to float rounding;
    the corrected path ends on the input latent, which is returned as the final latent)."""
    steps = recorded_steps(schedule, settings.attention_timesteps)
    with stage("invert"):
        needed = steps[-1] + 1 if steps else 0
        trajectory = ddim_invert(predict, latents, schedule, backbone.prediction_type, progress, steps=needed)
    with stage("denoise"), record_cross_attention(backbone.unet, settings.attention_resolutions) as recorder:
        recorder.active = True
        predict_on_trajectory(predict, trajectory, schedule, steps, backbone.speed.recording_batch)
        recorder.active = False
        return recorder.average(), recorder, trajectory[0]


def with_attention_grids(settings: DiffusionSettings, backbone: Backbone) -> DiffusionSettings:
    """``settings`` with the grids to average made explicit for ``backbone`` (its default grid when none are set);
    :class:`SettingsError` naming the model's grids when it has no cross-attention at one of them."""
    grids = settings.attention_resolutions or (backbone.default_attention_grid,)
    missing = sorted(set(grids) - set(backbone.attention_grids))
    if missing:
        raise SettingsError(
            f"{backbone.name} has no cross-attention on a {'/'.join(map(str, missing))} grid at {backbone.resolution} "
            f"px; its grids are {', '.join(map(str, backbone.attention_grids))}"
        )
    return dataclasses.replace(settings, attention_resolutions=tuple(grids))


def learned_embeddings_key(
    backbone: Backbone, image_digest: str, alignment: TokenAlignment, settings: DiffusionSettings
) -> str:
    """What learned embeddings depend on: the image, the caption and its concept tokens, the model, the learning
    settings, the seed and the resize policy. Saved embeddings are found (and checked) by this key."""
    return embedding_key(
        image_digest,
        alignment.caption,
        [list(s.positions) for s in embedding_slots(alignment)],
        backbone.name,
        backbone.source,
        settings.learning,
        settings.seed,
        settings.resize,
    )


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels are asynchronous: time the work, not its launch
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start
        return False
