"""What each page action sends, as typed requests. The page's inputs are derived from these fields (``ui.py`` wires
the component named like each field), so adding a control is one field here and one component in ``layout.py``.
Values are the library's names (:mod:`demo.choices`); each request turns itself into the library's overrides."""

from __future__ import annotations

from dataclasses import dataclass

from anyword.errors import AnywordError
from anyword.seeds import check_seed
from anyword.segment import SEGMENTERS
from anyword.settings import Overrides
from demo.choices import ADD, BIND, CUSTOM, DROP, NO_ADAPTER, PRESET_DEFAULT, QUALITY_VALUES, SPACY, UNBIND


@dataclass(frozen=True)
class ParseRequest:
    """ "Parse": the caption and the parser (with, for the LLM, the visitor's key, model and endpoint)."""

    caption: str
    parser: str = SPACY
    api_key: str = ""
    llm_model: str = ""
    base_url: str = ""


@dataclass(frozen=True)
class EditRequest:
    """ "Apply" under "Edit concepts": drop a concept, add a caption word as one, bind or unbind an adjective."""

    action: str
    edit_concept: int | None = None
    edit_word: str = ""

    def __post_init__(self):
        if self.action not in (DROP, ADD, BIND, UNBIND):
            raise AnywordError("Choose an action from the list.")


@dataclass(frozen=True)
class PointSettings:
    """How points are sampled from the maps: threshold, R1, R2, seed (a change re-samples; no model runs)."""

    threshold: float | None = None
    r1: bool | None = None
    r2: bool | None = None
    seed: float | None = None

    def overrides(self) -> Overrides:
        return Overrides(
            threshold=None if self.threshold is None else float(self.threshold),
            r1=None if self.r1 is None else bool(self.r1),
            r2=None if self.r2 is None else bool(self.r2),
            seed=None if self.seed is None else check_seed(self.seed),
        )


@dataclass(frozen=True)
class ComputeRequest:
    """ "Compute attention": the model, segmenter and adapter, the prompt-learning budget, and the point settings."""

    preset: str
    segmenter: str = PRESET_DEFAULT
    adapter: str = NO_ADAPTER
    quality: str = PRESET_DEFAULT
    steps: float | None = None
    seed: float | None = None
    threshold: float | None = None
    r1: bool | None = None
    r2: bool | None = None

    def __post_init__(self):
        if self.quality not in QUALITY_VALUES:
            raise AnywordError(f"Unknown prompt-learning choice {self.quality!r}: choose one of the list.")
        if self.segmenter not in (PRESET_DEFAULT, *SEGMENTERS):
            raise AnywordError(f"Unknown segmenter {self.segmenter!r}: choose one of the list.")

    @property
    def segmenter_key(self) -> str | None:
        """The registry key, or ``None`` for the preset's own."""
        return None if self.segmenter == PRESET_DEFAULT else self.segmenter

    @property
    def adapter_path(self) -> str | None:
        return self.adapter or None

    def overrides(self) -> Overrides:
        """The page's choices as overrides of the preset's settings."""
        custom = None
        if self.quality == CUSTOM:
            if self.steps is None or not float(self.steps).is_integer():
                raise AnywordError(f"Type a whole number of custom steps, not {self.steps!r}.")
            custom = int(self.steps)
        named = None if self.quality in (PRESET_DEFAULT, CUSTOM) else self.quality
        points = PointSettings(self.threshold, self.r1, self.r2, self.seed).overrides()
        return points.then(Overrides(quality=named, learning_steps=custom))
