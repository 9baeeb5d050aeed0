"""Models for the demo: one pipeline per preset, loaded lazily, once per process, shared by all sessions.

Sessions never share results: everything a session computes lives in its own ``gr.State`` (see ``state.py``);
the pipelines only cache content-keyed attention. Which presets exist and whether their weights are here is read
from :mod:`anyword.presets`.
"""

from __future__ import annotations

import threading

from anyword.errors import AnywordError
from anyword.presets import PRESETS, get_preset


def demo_presets() -> list[str]:
    """The presets offered on the page, in the registry's order."""
    return [name for name, preset in PRESETS.items() if preset.in_demo]


class ModelHub:
    """Builds :class:`~anyword.pipeline.SegmentAnyword` objects on first use and keeps them.

    ``device``/``dtype`` apply to every preset; ``segmenter_model`` sets the default segmenter's size for presets
    with pretrained segmenters.
    """

    def __init__(
        self, device: str | None = None, dtype: str | None = None, segmenter_model: str | None = None, nlp=None
    ):
        self.device = device
        self.dtype = dtype
        self.segmenter_model = segmenter_model
        self._nlp = nlp
        self._pipelines: dict[str, object] = {}
        self._lock = threading.Lock()  # model loading
        self._nlp_lock = threading.Lock()  # parsing must not wait for a model to load

    @property
    def nlp(self):
        """The spaCy pipeline, loaded on first use and shared by all sessions."""
        from anyword.parsing import load_spacy_model

        with self._nlp_lock:
            if self._nlp is None:
                self._nlp = load_spacy_model()
            return self._nlp

    def pipeline(self, preset: str):
        """The preset's pipeline with its models loaded (raises :class:`AnywordError` if they cannot load)."""
        from anyword.parsing import SpacyParser
        from anyword.pipeline import SegmentAnyword
        from anyword.segment import PRETRAINED

        if preset not in demo_presets():
            raise AnywordError(f"unknown preset {preset!r}: choose one of {', '.join(demo_presets())}")
        nlp = self.nlp
        with self._lock:
            if preset not in self._pipelines:
                pretrained = get_preset(preset).segmenter_weights == PRETRAINED
                pipeline = SegmentAnyword(
                    preset,
                    parser=SpacyParser(nlp=nlp),
                    device=self.device,
                    dtype=self.dtype,
                    segmenter_model=self.segmenter_model if pretrained else None,
                    progress=True,
                )
                pipeline.backbone, pipeline.segmenter  # noqa: B018 (load both now, once)
                self._pipelines[preset] = pipeline
            return self._pipelines[preset]
