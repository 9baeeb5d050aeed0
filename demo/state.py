"""Per-session state of the demo, kept in ``gr.State``: CPU arrays and small tensors only, never models.

The session keeps its own :class:`~anyword.pipeline.Analysis` (attention and the segmenter's image embedding), so a
point edit only runs the mask decoder, whatever other sessions compute meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anyword.adapters import Adapter
from anyword.diffusion import AttentionResult
from anyword.parsing import ParseResult
from anyword.pipeline import Analysis, SegmentationResult
from anyword.presets import OFFLINE_PRESET
from anyword.prompts import PromptSet

DISPLAY_MAX_SIDE = 1024  # the point editor shows images at most this large; clicks are mapped back exactly


@dataclass
class Session:
    """What one browser session has done so far. Handlers return a new or updated session."""

    preset: str = OFFLINE_PRESET
    image: np.ndarray | None = None
    image_name: str = "image"
    digest: str | None = None  # the image's content hash, made once per upload
    parse: ParseResult | None = None
    adapter: Adapter | None = None  # the text-encoder adapter the analysis was made with
    analysis: Analysis | None = None  # attention + the segmenter's image embedding + points as sampled
    prompts: PromptSet | None = None  # points as edited
    history: list[PromptSet] = field(default_factory=list)  # for undo
    result: SegmentationResult | None = None
    concept_id: int | None = None
    export_owner: str | None = None  # this session's folder in the export store (made on its first export)

    @property
    def attention(self) -> AttentionResult | None:
        return self.analysis.attention if self.analysis is not None else None

    @property
    def sampled(self) -> PromptSet | None:
        """The points as sampled (what "reset" returns to)."""
        return self.analysis.sampled if self.analysis is not None else None

    @property
    def display_scale(self) -> float:
        """Display pixels per image pixel in the point editor (<= 1)."""
        if self.image is None:
            return 1.0
        return min(1.0, DISPLAY_MAX_SIDE / max(self.image.shape[:2]))

    def forget_from_image(self) -> None:
        self.digest = None
        self.forget_from_attention()

    def forget_from_parse(self) -> None:
        self.parse = None
        self.forget_from_attention()

    def forget_from_attention(self) -> None:
        self.analysis = None
        self.prompts = None
        self.history = []
        self.result = None
        self.concept_id = None
