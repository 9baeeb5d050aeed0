"""Per-session state of the demo, kept in ``gr.State``: CPU arrays and small tensors only, never models."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anyword.diffusion import AttentionResult
from anyword.parsing import ParseResult
from anyword.pipeline import SegmentationResult
from anyword.prompts import PromptSet

DISPLAY_MAX_SIDE = 1024  # the point editor shows images at most this large; clicks are mapped back exactly


@dataclass
class Session:
    """What one browser session has done so far. Handlers return a new or updated session."""

    preset: str = "tiny"
    image: np.ndarray | None = None
    image_name: str = "image"
    digest: str | None = None
    parse: ParseResult | None = None
    attention: AttentionResult | None = None
    sampled: PromptSet | None = None  # points as sampled (what "reset" returns to)
    prompts: PromptSet | None = None  # points as edited
    history: list[PromptSet] = field(default_factory=list)  # for undo
    result: SegmentationResult | None = None
    concept_id: int | None = None
    notice: str = ""
    export_owner: str | None = None  # this session's folder in the export store (made on its first export)

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
        self.attention = None
        self.sampled = self.prompts = None
        self.history = []
        self.result = None
        self.concept_id = None
