"""Image + point prompts -> masks. One interface (:class:`Segmenter`) and one registry (:data:`SEGMENTERS`).

Adding a backend is one file (a module with ``load(model, weights, checkpoint, device, seed)`` and
``availability(model)``) plus one :class:`SegmenterSpec` entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from anyword.downloads import Availability
from anyword.errors import SettingsError
from anyword.segment.base import MaskPrediction, MaskRequest, Segmenter, empty_prediction
from anyword.segment.plain import PlainSegmenter

PRETRAINED, TINY, RANDOM = "pretrained", "tiny", "random"
WEIGHTS = (PRETRAINED, TINY, RANDOM)


@dataclass(frozen=True)
class SegmenterSpec:
    """A segmenter backend: ``module`` implements it; ``models`` are its sizes (``default_model`` first choice).

    ``weights`` when loading: "pretrained" (the real checkpoint), "tiny" (the same classes at toy size with seeded
    random weights, for tests) or "random" (full size, random weights: for timing only).
    """

    name: str
    description: str
    module: str
    models: tuple[str, ...] = ()
    default_model: str | None = None

    def _backend(self):
        return importlib.import_module(self.module)

    def check_model(self, model: str | None) -> str | None:
        model = model or self.default_model
        if self.models and model not in self.models:
            raise SettingsError(f"unknown {self.name} model {model!r}: choose one of {', '.join(self.models)}")
        return model

    def load(
        self,
        model: str | None = None,
        *,
        weights: str = PRETRAINED,
        checkpoint: str | None = None,
        device: str | None = None,
        seed: int = 0,
    ) -> Segmenter:
        if weights not in WEIGHTS:
            raise SettingsError(f"unknown weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
        return self._backend().load(self.check_model(model), weights, checkpoint, device, seed)

    def availability(self, model: str | None = None, weights: str = PRETRAINED) -> Availability:
        if weights != PRETRAINED or not self.models:
            return Availability("random" if self.models else "shipped", "built from a config" if self.models else "")
        return self._backend().availability(self.check_model(model))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "models": list(self.models),
            "default_model": self.default_model,
        }


SEGMENTERS: dict[str, SegmenterSpec] = {
    spec.name: spec
    for spec in (
        SegmenterSpec(
            "sam",
            "SAM (Kirillov et al. 2023), the paper's segmenter",
            "anyword.segment.sam",
            ("vit_h", "vit_l", "vit_b"),
            "vit_h",
        ),
        SegmenterSpec(
            "sam2",
            "SAM 2.1 (Ravi et al. 2024) through transformers",
            "anyword.segment.sam2",
            ("large", "base-plus", "small", "tiny"),
            "large",
        ),
        SegmenterSpec(
            "sam-hq",
            "HQ-SAM (Ke et al. 2023) through transformers",
            "anyword.segment.sam_hq",
            ("vit_h", "vit_l", "vit_b"),
            "vit_h",
        ),
        SegmenterSpec("plain", "the thresholded attention map itself (paper Table 6, row 1)", "anyword.segment.plain"),
        SegmenterSpec("grabcut", "OpenCV GrabCut seeded by the points (weight-free)", "anyword.segment.grabcut"),
    )
}


def segmenter_spec(name: str) -> SegmenterSpec:
    if name not in SEGMENTERS:
        raise SettingsError(f"unknown segmenter {name!r}: choose one of {', '.join(SEGMENTERS)}")
    return SEGMENTERS[name]


def make_segmenter(
    name: str = "sam",
    model: str | None = None,
    *,
    weights: str = PRETRAINED,
    checkpoint: str | None = None,
    device: str | None = None,
    seed: int = 0,
) -> Segmenter:
    """Build segmenter ``name`` (a key of :data:`SEGMENTERS`) at size ``model`` with ``weights``."""
    return segmenter_spec(name).load(model, weights=weights, checkpoint=checkpoint, device=device, seed=seed)


__all__ = [
    "PRETRAINED",
    "RANDOM",
    "SEGMENTERS",
    "TINY",
    "MaskPrediction",
    "MaskRequest",
    "PlainSegmenter",
    "Segmenter",
    "SegmenterSpec",
    "empty_prediction",
    "make_segmenter",
    "segmenter_spec",
]
