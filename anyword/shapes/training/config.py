"""What a training run of the shapes model is made of: :class:`TrainConfig` (the shipped recipe by default)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from anyword.errors import SettingsError

# Fields a resumed run must share with the run that wrote the checkpoint (``steps`` may grow: it only stretches the
# schedule's tail; the rest is how the run is carried out, not what it learns).
RESUMABLE_CHANGES = ("steps", "threads", "autocast", "log_every", "save_every", "device", "workers", "max_seconds",
                     "gain_scenes")  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """A training run of the shapes model; the defaults are the shipped recipe (docs/benchmarks.md lists the runs
    that led to it).

    World: ``world`` (a key of :data:`anyword.shapes.worlds.WORLDS`); ``init``: a model folder to start from (its
    ``unet.safetensors`` and ``text_encoder.safetensors``) instead of a seeded random init.
    Optimisation: ``steps`` of ``batch_size`` scenes, AdamW (``learning_rate``, ``weight_decay``), ``warmup`` linear
    steps then a cosine to a tenth. Data: ``same_colour`` share of one-colour scenes; ``absent_words`` share of
    captions that also name a shape the scene lacks. Initialisation: ``qk_gain`` scales the cross-attention
    query/key weights, ``text_norm_gain`` the text encoder's final layer-norm scale (1.0: diffusers' and
    transformers' own init). Grounding: TokenCompose's token and pixel losses weighted by ``grounding_weight`` and
    ``pixel_weight`` (both 0: the diffusion loss alone) on samples with timestep below ``grounding_max_t``.
    Running: ``seed``, ``threads``, bf16 ``autocast``, ``device``, data-loading ``workers``, ``max_seconds`` (stop and
    save early), a log line every ``log_every`` steps (with :func:`text_gain` on ``gain_scenes`` scenes every 20th),
    a checkpoint every ``save_every`` steps.
    """

    steps: int = 1000
    batch_size: int = 32
    world: str = "shapes"
    init: str | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    same_colour: float = 0.0
    absent_words: float = 0.5
    qk_gain: float = 1.0
    text_norm_gain: float = 1.0
    grounding_weight: float = 0.1
    pixel_weight: float = 0.2
    grounding_max_t: int = 600
    threads: int | None = None
    autocast: bool = True
    device: str = "cpu"
    workers: int = 0
    max_seconds: float | None = None
    log_every: int = 25
    save_every: int = 250
    gain_scenes: int = 64

    def __post_init__(self):
        problems = [
            f"{name} is a probability in [0, 1], got {getattr(self, name)}"
            for name in ("same_colour", "absent_words")
            if not 0 <= getattr(self, name) <= 1
        ]
        problems += [f"{name} must be positive" for name in ("qk_gain", "text_norm_gain") if getattr(self, name) <= 0]
        if self.grounding_weight < 0 or self.pixel_weight < 0:
            problems.append("grounding_weight and pixel_weight must be >= 0")
        if not 0 < self.grounding_max_t <= 1000:
            problems.append(f"grounding_max_t is a timestep in 1..1000, got {self.grounding_max_t}")
        from anyword.shapes.worlds import WORLDS

        if self.world not in WORLDS:
            problems.append(f"unknown world {self.world!r}: choose one of {', '.join(WORLDS)}")
        elif self.same_colour and self.world != "shapes":
            problems.append("same_colour is world 1's option (shapes)")
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def grounding(self) -> bool:
        return self.grounding_weight > 0 or self.pixel_weight > 0

    def identity(self) -> dict:
        """What a checkpoint records and a resumed run must match."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_CHANGES}


def check_resumable(checkpoint, saved: dict, identity: dict) -> None:
    """``ValueError`` naming every setting a checkpoint was ``saved`` with that differs from this run's
    ``identity`` (what a training run must share with the run it resumes)."""
    changed = {k: (v, identity.get(k)) for k, v in saved.items() if identity.get(k) != v}
    if changed:
        listed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        raise ValueError(f"{checkpoint} was written with other settings ({listed}); resume with the same ones")


def warmup_cosine(step: int, warmup: int, steps: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then a cosine from 1 to 0.1 until ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
