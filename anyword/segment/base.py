"""The segmenter interface: one image embedding, then one mask per concept from its point prompts.

A backend implements :class:`Segmenter` in one file and registers a factory in :mod:`anyword.segment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class MaskRequest:
    """What a segmenter gets for one concept.

    ``points``: ``(N, 2)`` float32 ``(x, y)`` in original-image pixels; ``labels``: ``(N,)`` int32, 1 positive /
    0 negative; ``heatmap``: the concept's attention map ``(H, W)`` in [0, 1]; ``threshold``: its region threshold.
    """

    points: np.ndarray
    labels: np.ndarray
    heatmap: np.ndarray
    threshold: float = 0.7


@dataclass(frozen=True)
class MaskPrediction:
    """``mask``: bool ``(H, W)`` at the original image size; ``score``: the backend's confidence in [0, 1]."""

    mask: np.ndarray
    score: float


class Segmenter(Protocol):
    """A promptable segmenter.

    ``key`` is its key in :data:`anyword.segment.SEGMENTERS` ("sam", "grabcut", ...); ``label`` names the model
    for people and result files ("sam-vit_h", "sam2-tiny-random"); ``random_weights`` says whether its masks mean
    nothing. ``embed`` does the per-image work once (e.g. SAM's image encoder) and returns a CPU-storable object
    that ``segment`` reuses for every concept and every point edit.
    """

    key: str
    label: str
    random_weights: bool

    def parameter_count(self) -> int:
        """Learned parameters (0 for weight-free backends)."""
        ...

    def embed(self, image: np.ndarray) -> Any: ...

    def segment(self, embedding: Any, request: MaskRequest) -> MaskPrediction: ...


def empty_prediction(shape: tuple[int, int]) -> MaskPrediction:
    return MaskPrediction(mask=np.zeros(shape, dtype=bool), score=0.0)
