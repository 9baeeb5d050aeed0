"""Models for the demo: one pipeline per preset, loaded lazily, once per process, shared by all sessions.

Sessions never share results: everything a session computes lives in its own ``gr.State`` (see ``state.py``);
the pipelines only cache content-keyed intermediate results.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from anyword.errors import AnywordError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresetChoice:
    key: str
    label: str
    random_weights: bool


PRESETS = {
    "sd15": PresetChoice("sd15", "Stable Diffusion 1.5 + SAM ViT-H (the paper's setup)", False),
    "sd14": PresetChoice("sd14", "Stable Diffusion 1.4 + SAM ViT-H", False),
    "shapes": PresetChoice("shapes", "shapes: toy model trained in this repo + GrabCut (offline, shape scenes)", False),
    "tiny": PresetChoice("tiny", "tiny: random weights, tries the flow offline (results mean nothing)", True),
}
OFFLINE_FALLBACK = "tiny"


class ModelHub:
    """Builds :class:`~anyword.pipeline.SegmentAnyword` objects on first use and keeps them.

    ``device``/``dtype`` apply to every preset; ``sam_model`` overrides the SAM variant of pretrained presets.
    """

    def __init__(self, device: str | None = None, dtype: str | None = None, sam_model: str | None = None, nlp=None):
        self.device = device
        self.dtype = dtype
        self.sam_model = sam_model
        self._nlp = nlp
        self._pipelines: dict[str, object] = {}
        self._lock = threading.Lock()  # model loading
        self._nlp_lock = threading.Lock()  # parsing must not wait for a model to load
        self.status: dict[str, str] = {}

    @property
    def nlp(self):
        """The spaCy pipeline, loaded on first use and shared by all sessions."""
        from anyword.parsing import load_spacy_model

        with self._nlp_lock:
            if self._nlp is None:
                self._nlp = load_spacy_model()
            return self._nlp

    def pipeline(self, preset: str):
        """The preset's pipeline with both models loaded (raises :class:`AnywordError` if they cannot load)."""
        from anyword.parsing import SpacyParser
        from anyword.pipeline import SegmentAnyword

        if preset not in PRESETS:
            raise AnywordError(f"unknown preset {preset!r}")
        nlp = self.nlp
        with self._lock:
            if preset not in self._pipelines:
                self.status[preset] = "loading…"
                try:
                    pipeline = SegmentAnyword(
                        preset,
                        parser=SpacyParser(nlp=nlp),
                        device=self.device,
                        dtype=self.dtype,
                        sam_model=self.sam_model if preset in ("sd15", "sd14") else None,
                        progress=True,
                    )
                    pipeline.backbone, pipeline.segmenter  # noqa: B018 (load both now, once)
                except AnywordError as error:
                    self.status[preset] = f"unavailable: {error}"
                    raise
                self._pipelines[preset] = pipeline
                backbone = pipeline.backbone
                self.status[preset] = (
                    f"loaded on {backbone.device} ({str(backbone.dtype).removeprefix('torch.')}), "
                    f"segmenter {pipeline.segmenter.name}"
                )
            return self._pipelines[preset]

    def loaded(self, preset: str) -> bool:
        return preset in self._pipelines


def availability(preset: str) -> str | None:
    """Why ``preset`` cannot run here (weights missing and not downloadable), or ``None`` if it can.

    Cheap: looks at the caches and whether the hosts answer; loads and downloads nothing.
    """
    if preset == "tiny":
        return None
    if preset == "shapes":
        from anyword.shapes.model import WEIGHT_FILES, weights_dir

        missing = [f for f in WEIGHT_FILES if not (weights_dir() / f).is_file()]
        return f"the shapes weights are missing ({', '.join(missing)})" if missing else None
    from anyword.diffusion.presets import PRESETS as BACKBONES
    from anyword.diffusion.presets import hub_unavailable_reason
    from anyword.downloads import unavailable_reason
    from anyword.segment.sam import SAM_CHECKPOINTS

    return hub_unavailable_reason(BACKBONES[preset].model) or unavailable_reason(SAM_CHECKPOINTS["vit_h"])
