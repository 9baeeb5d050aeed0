"""Plain Segment Anyword: the thresholded attention map itself is the mask (paper section 2.3, Table 6 row 1)."""

from __future__ import annotations

import numpy as np

from anyword.segment.base import MaskPrediction, MaskRequest


class PlainSegmenter:
    """Mask = ``heatmap >= threshold``; score = the mean attention inside the mask. Needs no image embedding."""

    key = label = "plain"
    random_weights = False

    def parameter_count(self) -> int:
        return 0

    def embed(self, image: np.ndarray) -> tuple[int, int]:
        return image.shape[:2]

    def segment(self, embedding: tuple[int, int], request: MaskRequest) -> MaskPrediction:
        mask = request.heatmap >= request.threshold
        score = float(request.heatmap[mask].mean()) if mask.any() else 0.0
        return MaskPrediction(mask=mask, score=score)


def load(model, weights, checkpoint, device, seed) -> PlainSegmenter:
    """Registry entry point (:mod:`anyword.segment`): nothing to load."""
    return PlainSegmenter()
