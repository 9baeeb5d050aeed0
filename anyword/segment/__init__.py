"""Image + point prompts -> masks. One interface (:class:`Segmenter`) and one registry (:data:`SEGMENTERS`).

Adding a backend is one file (a module with ``load(model, weights, checkpoint, device, seed)`` and
``availability(model)``, whose segmenter class sets ``key`` to its entry's key) plus one :class:`SegmenterSpec`
entry here; the CLI's choices and help, the demo's list, ``anyword presets`` and ``anyword bench --segmenters`` read
the registry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal, get_args

from anyword.downloads import Availability
from anyword.errors import SettingsError
from anyword.segment.base import MaskPrediction, MaskRequest, Segmenter, empty_prediction

SegmenterWeights = Literal["pretrained", "tiny", "random"]
PRETRAINED: SegmenterWeights = "pretrained"  # the published checkpoint
TINY: SegmenterWeights = "tiny"  # the same classes at toy size, seeded random weights (tests)
RANDOM: SegmenterWeights = "random"  # full size, seeded random weights (timing only)
WEIGHTS: tuple[SegmenterWeights, ...] = get_args(SegmenterWeights)
SAM_SHAPES = "shapes"  # the sam backend's model trained in the shapes world (ships with the package)


@dataclass(frozen=True)
class SegmenterSpec:
    """A segmenter backend: ``key`` is what users pick (``--segmenter KEY``) and what every loaded segmenter of it
    reports as its ``key``; ``module`` implements it; ``models`` are its sizes (``default_model`` first choice).

    ``weights`` when loading: "pretrained" (the real checkpoint), "tiny" (the same classes at toy size with seeded
    random weights, for tests) or "random" (full size, random weights: for timing only).
    """

    key: str
    description: str
    module: str
    models: tuple[str, ...] = ()
    default_model: str | None = None

    @property
    def promptable(self) -> bool:
        """Whether it has a network of its own (an image encoder and a mask decoder), which plain and GrabCut
        do not."""
        return bool(self.models)

    def _backend(self):
        return importlib.import_module(self.module)

    def check_model(self, model: str | None) -> str | None:
        model = model or self.default_model
        if self.models and model not in self.models:
            raise SettingsError(f"unknown {self.key} model {model!r}: choose one of {', '.join(self.models)}")
        return model

    def load(
        self,
        model: str | None = None,
        *,
        weights: SegmenterWeights = PRETRAINED,
        checkpoint: str | None = None,
        device: str | None = None,
        seed: int = 0,
    ) -> Segmenter:
        """Segmenter ``model`` (a size of :attr:`models`; ``None``: the default) with ``weights``."""
        if weights not in WEIGHTS:
            raise SettingsError(f"unknown weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
        return self._backend().load(self.check_model(model), weights, checkpoint, device, seed)

    def availability(self, model: str | None = None, weights: SegmenterWeights = PRETRAINED) -> Availability:
        if not self.promptable:
            return Availability("shipped", "")
        if weights != PRETRAINED:
            return Availability("random", "built from a config")
        return self._backend().availability(self.check_model(model))

    def published(self):
        """Where its published weights live and how they are fetched, listed and stood in for (``None`` for
        backends without weights): an object with ``kind`` ("hub" or "url"), ``source(model)``,
        ``fetch(model)``, ``files(model)`` and ``write_stand_in(folder, model, seed)``."""
        return self._backend().PUBLISHED if self.promptable else None

    def describe_models(self) -> str:
        """Its sizes for help texts, default first marked: "vit_h (default), vit_l, vit_b"."""
        return ", ".join(f"{m} (default)" if m == self.default_model else m for m in self.models)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "description": self.description,
            "models": list(self.models),
            "default_model": self.default_model,
        }


SEGMENTERS: dict[str, SegmenterSpec] = {
    spec.key: spec
    for spec in (
        SegmenterSpec(
            "sam",
            "SAM (Kirillov et al. 2023), the paper's segmenter",
            "anyword.segment.sam",
            ("vit_h", "vit_l", "vit_b", SAM_SHAPES),
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
PLAIN = "plain"  # the ablation's "no segmenter" row (paper Table 6, row 1) is this entry
GRABCUT = "grabcut"  # the weight-free stand-in the shapes ablation sets beside a trained SAM


def segmenter_spec(key: str) -> SegmenterSpec:
    """The registry entry ``key``; :class:`SettingsError` naming the choices otherwise."""
    if key not in SEGMENTERS:
        raise SettingsError(f"unknown segmenter {key!r}: choose one of {', '.join(SEGMENTERS)}")
    return SEGMENTERS[key]


def models_help() -> str:
    """Every promptable segmenter's sizes, for help texts ("vit_h (default), vit_l, vit_b for sam; ...")."""
    return "; ".join(f"{spec.describe_models()} for {key}" for key, spec in SEGMENTERS.items() if spec.promptable)


__all__ = [
    "GRABCUT",
    "PLAIN",
    "PRETRAINED",
    "RANDOM",
    "SAM_SHAPES",
    "SEGMENTERS",
    "TINY",
    "MaskPrediction",
    "MaskRequest",
    "Segmenter",
    "SegmenterSpec",
    "SegmenterWeights",
    "empty_prediction",
    "models_help",
    "segmenter_spec",
]
