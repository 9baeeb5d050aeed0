"""Image + point prompts -> masks. One interface (:class:`Segmenter`); backends: SAM, plain (thresholded
attention), GrabCut (weight-free)."""

from __future__ import annotations

from anyword.segment.base import MaskPrediction, MaskRequest, Segmenter, empty_prediction
from anyword.segment.plain import PlainSegmenter

SEGMENTERS = ("sam", "plain", "grabcut")


def make_segmenter(
    name: str = "sam",
    *,
    sam_model: str = "vit_h",
    sam_checkpoint: str | None = None,
    device: str | None = None,
    multimask: bool = True,
    random_weights: bool = False,
    seed: int = 0,
) -> Segmenter:
    """Build a segmenter by name. "sam" uses ``sam_model`` ("vit_h", "vit_l", "vit_b", "tiny");
    ``random_weights`` builds a full-size SAM without its checkpoint (timing only)."""
    if name == "sam":
        from anyword.segment.sam import SamSegmenter

        return SamSegmenter.load(
            sam_model, sam_checkpoint, device=device, multimask=multimask, random_weights=random_weights, seed=seed
        )
    if name == "plain":
        return PlainSegmenter()
    if name == "grabcut":
        from anyword.segment.grabcut import GrabCutSegmenter

        return GrabCutSegmenter()
    raise ValueError(f"unknown segmenter {name!r}: choose one of {', '.join(SEGMENTERS)}")


__all__ = [
    "SEGMENTERS",
    "MaskPrediction",
    "MaskRequest",
    "PlainSegmenter",
    "Segmenter",
    "empty_prediction",
    "make_segmenter",
]
