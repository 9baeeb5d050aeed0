"""The one settings layer: a run's settings (:class:`PipelineSettings`) and the one function that applies
overrides to them (:func:`apply_overrides`), used alike for a preset's defaults and for what a user asks on the
command line, in the demo, in evaluation and in benchmarks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from anyword.errors import SettingsError
from anyword.parsing.concepts import ParseSettings
from anyword.prompts import PromptSettings
from anyword.steps import MAX_CUSTOM_STEPS, PAPER_LEARNING_STEPS, SHORT_LEARNING_STEPS

if TYPE_CHECKING:
    from anyword.diffusion import DiffusionSettings


def _paper_diffusion() -> DiffusionSettings:
    from anyword.diffusion import DiffusionSettings  # torch: loaded when a run needs it, not to list presets

    return DiffusionSettings()


# Named step budgets a user can pick instead of a number; a preset may scale "paper" and "fast" to its model
# (Preset.budgets). "fast" is Segment Anyword_f's budget and means a text-encoder adapter too (see
# anyword.adapters.choose_adapter); "50-steps" is the same number of steps on the frozen encoder.
Quality = Literal["paper", "fast", "50-steps"]
QUALITIES: dict[Quality, int] = {
    "paper": PAPER_LEARNING_STEPS,
    "fast": SHORT_LEARNING_STEPS,
    "50-steps": SHORT_LEARNING_STEPS,
}
FAST: Quality = "fast"  # Segment Anyword_f: the one meaning of "fast" in this project


@dataclass(frozen=True)
class PipelineSettings:
    """All settings of a run; defaults are the paper's (see each stage's settings)."""

    diffusion: DiffusionSettings = field(default_factory=_paper_diffusion)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    parse: ParseSettings = field(default_factory=ParseSettings)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["parse"] = {
            "predicates": self.parse.predicates,
            "frame_nouns_skipped": bool(self.parse.frame_nouns or self.parse.location_nouns),
            "max_caption_chars": self.parse.max_caption_chars,
        }
        return data


@dataclass(frozen=True)
class Overrides:
    """Changes to a run's settings; ``None`` keeps the value underneath. ``seed`` seeds both prompt learning and
    point sampling. ``quality`` names a learning-step budget (:data:`QUALITIES`); ``learning_steps`` wins over it.
    ``predicates`` and ``keep_frame_nouns`` change what the caption parser counts as a concept."""

    quality: Quality | None = None
    learning_steps: int | None = None
    learning_rate: float | None = None
    learning_batch: int | None = None
    learning_attention_dtype: str | None = None
    inversion_steps: int | None = None
    attention_resolutions: tuple[int, ...] | None = None
    attention_timesteps: tuple[int, int] | None = None
    resize: str | None = None
    seed: int | None = None
    threshold: float | None = None
    r1: bool | None = None
    r2: bool | None = None
    noun_points: int | None = None
    sampling: str | None = None
    adjective_region: str | None = None
    predicates: bool | None = None
    keep_frame_nouns: bool | None = None

    def __post_init__(self):
        if self.quality is not None and self.quality not in QUALITIES:
            raise SettingsError(f"unknown quality {self.quality!r}: choose one of {', '.join(QUALITIES)}")
        if self.learning_steps is not None and not 0 <= self.learning_steps <= MAX_CUSTOM_STEPS:
            raise SettingsError(f"learning steps must be from 0 to {MAX_CUSTOM_STEPS}, got {self.learning_steps}")

    def then(self, later: Overrides) -> Overrides:
        """These overrides with ``later``'s set values on top (a preset's defaults, then the user's)."""
        changes = {
            f.name: getattr(later, f.name) for f in dataclasses.fields(later) if getattr(later, f.name) is not None
        }
        if later.quality is not None and later.learning_steps is None:
            changes["learning_steps"] = None  # a named budget replaces a number set underneath
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


_LEARNING = {
    "learning_steps": "steps",
    "learning_rate": "learning_rate",
    "learning_batch": "batch_size",
    "learning_attention_dtype": "attention_dtype",
}
_DIFFUSION = ("inversion_steps", "attention_resolutions", "attention_timesteps", "resize")
_PROMPTS = ("threshold", "r1", "r2", "noun_points", "sampling", "adjective_region")


def apply_overrides(
    settings: PipelineSettings, overrides: Overrides, budgets: dict[str, int] | None = None
) -> PipelineSettings:
    """``settings`` with every value ``overrides`` sets (the one place settings are changed). ``budgets``: the
    learning steps each quality means for this model (default :data:`QUALITIES`)."""
    learning_changes = {name: getattr(overrides, key) for key, name in _LEARNING.items()}
    if overrides.learning_steps is None and overrides.quality is not None:
        learning_changes["steps"] = {**QUALITIES, **(budgets or {})}[overrides.quality]
    diffusion_changes = {key: getattr(overrides, key) for key in _DIFFUSION}
    prompt_changes = {key: getattr(overrides, key) for key in _PROMPTS}
    if overrides.seed is not None:
        diffusion_changes["seed"] = prompt_changes["seed"] = overrides.seed
    diffusion = settings.diffusion
    learning = _replace(diffusion.learning, learning_changes)
    diffusion = _replace(diffusion, {**diffusion_changes, "learning": learning})
    prompts = _replace(settings.prompts, prompt_changes)
    return dataclasses.replace(
        settings, diffusion=diffusion, prompts=prompts, parse=parse_settings(overrides, settings.parse)
    )


def parse_settings(overrides: Overrides, settings: ParseSettings = ParseSettings()) -> ParseSettings:
    """``settings`` (the parser's part of a run's settings) with what ``overrides`` changes in it; the caption
    parser alone needs no model, so this does not build the rest."""
    changes: dict = {"predicates": overrides.predicates}
    if overrides.keep_frame_nouns is not None:
        kept = overrides.keep_frame_nouns
        changes["frame_nouns"] = frozenset() if kept else ParseSettings().frame_nouns
        changes["location_nouns"] = frozenset() if kept else ParseSettings().location_nouns
    return _replace(settings, changes)


def _replace(value, changes: dict):
    set_values = {key: change for key, change in changes.items() if change is not None}
    return dataclasses.replace(value, **set_values) if set_values else value
