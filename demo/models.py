"""Models for the demo: one pipeline per preset, loaded lazily, once per process, shared by all sessions.

Sessions never share results: everything a session computes lives in its own ``gr.State`` (see ``state.py``);
the pipelines only cache content-keyed attention. Which presets exist and whether their weights are here is read
from :mod:`anyword.presets`.
"""

from __future__ import annotations

import threading

from anyword.adapters import Adapter, choose_adapter, find_adapters
from anyword.diffusion.speed import SpeedName
from anyword.errors import AnywordError
from anyword.presets import PRESETS, get_preset
from anyword.settings import Quality


def demo_presets() -> list[str]:
    """The presets offered on the page, in the registry's order."""
    return [name for name, preset in PRESETS.items() if preset.in_demo]


def demo_adapters() -> list[Adapter]:
    """The adapters the page offers: each demo preset's shipped one, then those in ``$ANYWORD_ADAPTERS``."""
    found = {}
    for name in demo_presets():
        for adapter in find_adapters(shipped=get_preset(name).shipped_adapter_path(), include_env=False):
            found[str(adapter.path)] = adapter
    for adapter in find_adapters():
        found.setdefault(str(adapter.path), adapter)
    return list(found.values())


class ModelHub:
    """Builds :class:`~anyword.pipeline.SegmentAnyword` objects on first use and keeps them.

    ``device``/``dtype`` apply to every preset; ``segmenter_model`` sets the default segmenter's size for presets
    with pretrained segmenters.
    """

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        segmenter_model: str | None = None,
        nlp=None,
        speed: SpeedName | None = None,
    ):
        self.speed = speed
        self.device = device
        self.dtype = dtype
        self.segmenter_model = segmenter_model
        self._nlp = nlp
        self._pipelines: dict[tuple[str, str | None], object] = {}
        self.adapters = {str(adapter.path): adapter for adapter in demo_adapters()}  # what the page may pick
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

    def adapter_for(self, preset: str, chosen: str | None, quality: Quality | None) -> Adapter | None:
        """The adapter a compute request uses (:func:`anyword.adapters.choose_adapter`): the one picked, from
        :attr:`adapters` only (the page never reads a path a visitor typed), else for the fast quality the preset's
        shipped one, else none; fast with no adapter for this model is refused in plain words."""
        if chosen and chosen not in self.adapters:
            raise AnywordError("Pick an adapter from the list.")
        return choose_adapter(get_preset(preset), self.adapters.get(chosen) if chosen else None, quality)

    def pipeline(self, preset: str, adapter: Adapter | None = None):
        """The preset's pipeline (with ``adapter`` merged) and its models loaded (raises :class:`AnywordError` if
        they cannot load). Adapted pipelines share the base's UNet, VAE and default segmenter."""
        from anyword.parsing import SpacyParser
        from anyword.pipeline import SegmentAnyword

        base = self._base(preset)
        if adapter is None:
            return base
        with self._lock:
            key = (preset, str(adapter.path))
            if key not in self._pipelines:
                pipeline = SegmentAnyword(
                    base.preset,
                    base.segmenter,
                    SpacyParser(nlp=self.nlp),
                    backbone=base.backbone,
                    adapter=adapter,
                    progress=True,
                    speed=self.speed,
                )
                pipeline.backbone  # noqa: B018 (merge now, once)
                self._pipelines[key] = pipeline
            return self._pipelines[key]

    def _base(self, preset: str):
        from anyword.parsing import SpacyParser
        from anyword.pipeline import SegmentAnyword
        from anyword.segment import PRETRAINED

        if preset not in demo_presets():
            raise AnywordError(f"unknown preset {preset!r}: choose one of {', '.join(demo_presets())}")
        nlp = self.nlp
        key = (preset, None)
        with self._lock:
            if key not in self._pipelines:
                pretrained = get_preset(preset).segmenter_weights == PRETRAINED
                pipeline = SegmentAnyword(
                    preset,
                    parser=SpacyParser(nlp=nlp),
                    device=self.device,
                    dtype=self.dtype,
                    segmenter_model=self.segmenter_model if pretrained else None,
                    progress=True,
                    speed=self.speed,
                )
                pipeline.backbone, pipeline.segmenter  # noqa: B018 (load both now, once)
                self._pipelines[key] = pipeline
            return self._pipelines[key]

    def warm_up(self, preset: str) -> float:
        """Load the preset's models and pay the one-time costs before the first visitor
        (:meth:`~anyword.pipeline.SegmentAnyword.warm_up`); returns the seconds it took."""
        return self.pipeline(preset).warm_up()
