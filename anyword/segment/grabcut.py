"""A weight-free promptable segmenter: OpenCV GrabCut seeded by the same point prompts SAM takes.

Seeds: small discs around positive points are certain foreground, around negative points certain background;
the parts of the concept's thresholded attention that hold a positive point are probable foreground, cold parts
of the map certain background, the rest probable background. GrabCut then fits colour models and cuts along
edges. The mask keeps the connected parts that contain a positive point.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np

from anyword.segment.base import MaskPrediction, MaskRequest, empty_prediction


class GrabCutSegmenter:
    """``iterations`` of GrabCut; seed discs of ``seed_radius`` x the image's short side (at least 1 pixel).

    ``background_below``: pixels whose attention is below this are certain background (``None``: only probable),
    which keeps a mask from flooding the background when a map is diffuse; 0.5 was chosen on validation scenes of
    the shapes world (docs/benchmarks.md).
    """

    key = label = "grabcut"
    random_weights = False

    def __init__(self, iterations: int = 5, seed_radius: float = 0.03, background_below: float | None = 0.5):
        self.iterations = iterations
        self.seed_radius = seed_radius
        self.background_below = background_below

    def parameter_count(self) -> int:
        return 0

    def embed(self, image: np.ndarray) -> np.ndarray:
        """GrabCut works on the pixels themselves: the "embedding" is the image in OpenCV's BGR order."""
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)

    def segment(self, embedding: np.ndarray, request: MaskRequest) -> MaskPrediction:
        height, width = embedding.shape[:2]
        positives = request.points[request.labels == 1]
        if positives.shape[0] == 0:
            return empty_prediction((height, width))
        seeds = np.full((height, width), cv2.GC_PR_BGD, dtype=np.uint8)
        if request.heatmap is not None:
            # Only hot parts holding a positive point: a hot part elsewhere is some other object, not this one.
            seeds[_components_at(request.heatmap >= request.threshold, positives)] = cv2.GC_PR_FGD
            if self.background_below is not None:
                cold = request.heatmap < self.background_below
                # A positive point on a cold part (a user's click correcting the map) lets the cut grow there.
                seeds[cold & ~_components_at(cold, positives)] = cv2.GC_BGD
        radius = max(1, round(self.seed_radius * min(height, width)))
        for (x, y), label in zip(request.points, request.labels, strict=True):
            value = cv2.GC_FGD if label == 1 else cv2.GC_BGD
            cv2.circle(seeds, (round(float(x)), round(float(y))), radius, int(value), -1)
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means initialisation: same input, same mask
        # A seed class with too few pixels for its colour model makes OpenCV raise: keep the seeds themselves then.
        with contextlib.suppress(cv2.error):
            cv2.grabCut(
                embedding, seeds, None, background_model, foreground_model, self.iterations, cv2.GC_INIT_WITH_MASK
            )
        mask = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
        mask = _parts_with_points(mask, positives)
        inside = sum(
            bool(mask[min(round(float(y)), height - 1), min(round(float(x)), width - 1)]) for x, y in positives
        )
        return MaskPrediction(mask=mask, score=inside / positives.shape[0])


def _components_at(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The 8-connected parts of ``mask`` that contain one of ``points`` (``(N, 2)`` x, y); empty if none does."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    height, width = mask.shape
    hit = {int(labels[min(round(float(y)), height - 1), min(round(float(x)), width - 1)]) for x, y in points} - {0}
    return np.isin(labels, sorted(hit))


def _parts_with_points(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    kept = _components_at(mask, points)
    return kept if kept.any() else mask


def load(model, weights, checkpoint, device, seed) -> GrabCutSegmenter:
    """Registry entry point (:mod:`anyword.segment`): weight-free."""
    return GrabCutSegmenter()
