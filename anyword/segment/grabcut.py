"""A weight-free promptable segmenter: OpenCV GrabCut seeded by the same point prompts SAM takes.

Seeds: small discs around positive points are certain foreground, around negative points certain background;
the concept's thresholded attention region is probable foreground, the rest probable background. GrabCut then fits
colour models and cuts along edges. The mask keeps the connected parts that contain a positive point.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np

from anyword.segment.base import MaskPrediction, MaskRequest, empty_prediction


class GrabCutSegmenter:
    """``iterations`` of GrabCut; seed discs of ``seed_radius`` x the image's short side (at least 1 pixel)."""

    name = "grabcut"
    random_weights = False

    def __init__(self, iterations: int = 5, seed_radius: float = 0.03):
        self.iterations = iterations
        self.seed_radius = seed_radius

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
            seeds[request.heatmap >= request.threshold] = cv2.GC_PR_FGD
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


def _parts_with_points(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    keep = set()
    height, width = mask.shape
    for x, y in points:
        label = labels[min(round(float(y)), height - 1), min(round(float(x)), width - 1)]
        if label:
            keep.add(int(label))
    return np.isin(labels, sorted(keep)) if keep else mask
