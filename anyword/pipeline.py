"""``SegmentAnyword``: caption parsing -> token alignment -> diffusion attention -> point prompts -> masks.

Attention, the expensive part, is cached by content (image, caption, concept tokens, model, diffusion settings)
in a small LRU per pipeline. Everything a point edit needs for one image (attention, the segmenter's image
embedding, the sampled points) is an :class:`Analysis` the caller keeps (the demo keeps it per session), so an
edit only samples or decodes, whatever else the pipeline has computed since. Models load lazily, once per
pipeline object (no module globals). Which models and settings a preset name means is read from
:mod:`anyword.presets`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anyword.adapters import Adapter, apply_adapter, resolve_adapter
from anyword.diffusion import AttentionResult, Backbone, DiffusionSettings, LearnedEmbeddings, extract_attention
from anyword.diffusion.extract import learned_embeddings_key
from anyword.diffusion.speed import SPEEDS, SpeedName, SpeedSettings
from anyword.images import image_digest, load_image
from anyword.parsing import CaptionParser, ParseResult, ParseSettings, make_parser
from anyword.presets import DEFAULT_PRESET, Preset, get_preset
from anyword.prompts import PromptSet, PromptSettings, make_prompts
from anyword.segment import MaskRequest, Segmenter, segmenter_spec
from anyword.settings import Overrides, PipelineSettings, apply_overrides
from anyword.tokens import TokenAlignment, align_tokens

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = "random weights: the maps and masks carry no meaning (use a pretrained preset)"


@dataclass(frozen=True, eq=False)  # compared by identity: it holds tensors
class Analysis:
    """What one image and parse produced before any point edit: the attention, the segmenter's image embedding
    (made once), and the points as sampled. Kept by the caller (e.g. per demo session) and passed back to
    :meth:`SegmentAnyword.run` so an edit never re-runs the diffusion model or the image encoder.

    ``image_size`` is ``(width, height)``; ``digest`` the image's :func:`~anyword.images.image_digest`;
    ``segmenter`` the registry key of the segmenter whose ``embedding`` this is.
    """

    digest: str
    image_size: tuple[int, int]
    parse: ParseResult
    attention: AttentionResult
    segmenter: str
    embedding: Any
    sampled: PromptSet
    attention_cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def matches(self, image: np.ndarray, parse: ParseResult) -> bool:
        """Whether this analysis can serve ``image`` and ``parse`` (same parse, same size: a cheap guard that does
        not hash the image again)."""
        return self.parse == parse and self.image_size == (image.shape[1], image.shape[0])


@dataclass
class SegmentationResult:
    """Everything one run produced. Masks are bool ``(H, W)`` at the original image size; points are in
    original-image pixels. Its :attr:`settings` are read from the parts themselves (the attention's diffusion
    settings, the points' prompt settings), so they are always the ones that produced them."""

    image_size: tuple[int, int]
    parse: ParseResult
    alignment: TokenAlignment
    attention: AttentionResult
    prompts: PromptSet
    masks: dict[int, np.ndarray]
    scores: dict[int, float]
    timings: dict[str, float]
    models: dict[str, Any]
    warnings: list[str]
    attention_cached: bool = False
    parse_settings: ParseSettings = field(default_factory=ParseSettings)

    @classmethod
    def preview(cls, analysis: Analysis, prompts: PromptSet | None = None) -> SegmentationResult:
        """The analysis as a result without masks yet (for pictures of maps and points before segmenting)."""
        return cls(
            image_size=analysis.image_size,
            parse=analysis.parse,
            alignment=analysis.attention.maps.alignment,
            attention=analysis.attention,
            prompts=prompts or analysis.sampled,
            masks={},
            scores={},
            timings={},
            models={},
            warnings=[],
            attention_cached=analysis.attention_cached,
        )

    @property
    def settings(self) -> PipelineSettings:
        return PipelineSettings(
            diffusion=self.attention.settings, prompts=self.prompts.settings, parse=self.parse_settings
        )

    @property
    def concepts(self):
        return self.parse.concepts

    def heatmap(self, concept_id: int) -> np.ndarray:
        """The concept's averaged attention, ``(H, W)`` float32 in [0, 1]."""
        return self.attention.maps.concept_map(concept_id)

    def to_dict(self) -> dict:
        width, height = self.image_size
        concepts = []
        for concept in self.concepts:
            tokens = self.alignment.for_concept(concept.id)
            mask = self.masks.get(concept.id)
            concepts.append(
                {
                    **concept.to_dict(),
                    "tokens": {
                        "noun": list(tokens.noun_positions),
                        "adjectives": {w: list(tokens.adjective_positions(w)) for w in tokens.adjective_words},
                    },
                    "points": [p.to_dict() for p in self.prompts.for_concept(concept.id)],
                    "score": self.scores.get(concept.id),
                    "mask_area": int(mask.sum()) if mask is not None else 0,
                }
            )
        return {
            "caption": self.parse.caption,
            "image": {"width": width, "height": height},
            "parser": self.parse.parser,
            "requested_parser": self.parse.requested_parser,
            "fallback_reason": self.parse.fallback_reason,
            "concepts": concepts,
            "models": self.models,
            "settings": self.settings.to_dict(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "attention_cached": self.attention_cached,
            "diffusion": {
                "reconstruction_mse": self.attention.reconstruction_mse,
                "unet_calls": self.attention.unet_calls,
                "attention_grid": self.attention.maps.grid_size,
                "recorded_layers": list(self.attention.recorded_layers),
                "prompt_learning_final_loss": (self.attention.embeddings.losses or [None])[-1],
            },
            "random_weights": self.attention.random_weights,
            "warnings": list(self.warnings),
        }


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class SegmentAnyword:
    """The whole method behind one object.

    Args:
        preset: a :class:`~anyword.presets.Preset` or a preset name (a key of :data:`anyword.presets.PRESETS`).
        segmenter: a :class:`Segmenter` or a registry key (of :data:`anyword.segment.SEGMENTERS`); ``None``: the
            preset's default.
        parser: a :class:`CaptionParser` or "spacy" / "openai" (built with the settings' parse settings).
        settings: run settings; ``None``: the preset's (see :meth:`Preset.settings`).
        backbone: the preset's model, already loaded (e.g. shared by pipelines with different adapters);
            ``None``: loaded from the preset on first use.
        model: hub id or local folder of published weights replacing the preset's (of its family: Stable Diffusion
            for ``sd15``, LDM for ``ldm``).
        segmenter_model: the segmenter's size ("vit_h", "large", ...); ``None``: its default.
        segmenter_checkpoint: a local checkpoint (SAM: a ``.pth`` file; transformers backends: a hub-layout folder).
        device, dtype: where the models run (default: CUDA fp16 if available, else CPU fp32).
        cache_size: how many attention results to keep (content-keyed, shared by every caller of this object).
        progress: show tqdm progress bars (the demo hooks them).
        embeddings_dir: folder where learned token embeddings are saved, one small file per (image, caption,
            model, settings); a later run with the same key loads them and skips prompt learning.
        adapter: a text-encoder adapter folder (``anyword adapt``), "shipped" for the preset's own, an
            :class:`~anyword.adapters.Adapter`, or ``None``; merged into the text encoder at load (Segment
            Anyword_f with the "fast" quality; :func:`~anyword.adapters.choose_adapter` picks one for it).
        speed: a name of :data:`~anyword.diffusion.speed.SPEEDS` ("eager", "batched", "compiled") or its
            settings; ``None``: the preset's.
    """

    def __init__(
        self,
        preset: Preset | str = DEFAULT_PRESET,
        segmenter: Segmenter | str | None = None,
        parser: CaptionParser | str = "spacy",
        settings: PipelineSettings | None = None,
        *,
        backbone: Backbone | None = None,
        model: str | None = None,
        segmenter_model: str | None = None,
        segmenter_checkpoint: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        cache_size: int = 4,
        progress: bool = False,
        embeddings_dir: str | Path | None = None,
        adapter: str | Path | Adapter | None = None,
        speed: SpeedSettings | SpeedName | None = None,
    ):
        self.preset = preset if isinstance(preset, Preset) else get_preset(preset)
        if model is not None:
            self.preset = self.preset.with_model(model)
        self._backbone = backbone
        self.adapter = resolve_adapter(self.preset, adapter)  # checked now: a wrong folder fails before any load
        self._device, self._dtype = device, dtype
        speed = speed or self.preset.speed
        self.speed = SPEEDS[speed] if isinstance(speed, str) else speed
        self._segmenters: dict[str, Segmenter] = {}
        if segmenter is None or isinstance(segmenter, str):
            self.segmenter_key = segmenter_spec(segmenter or self.preset.segmenter).key
        else:
            self.segmenter_key = segmenter.key
            self._segmenters[segmenter.key] = segmenter
        if segmenter_model is not None:
            segmenter_spec(self.segmenter_key).check_model(segmenter_model)  # refused before any model loads
        self._segmenter_options = {"model": segmenter_model, "checkpoint": segmenter_checkpoint}
        self.settings = settings or self.preset.settings()
        self.parser = parser if not isinstance(parser, str) else make_parser(parser, self.settings.parse)
        self.progress = progress
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir else None
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()
        # Attention recording swaps the UNet's processors and prompt learning hooks the text encoder: one at a time.
        self._diffusion_lock = threading.Lock()
        self._attention = _LRU(cache_size)
        self._parses = _LRU(64)

    # --- models (lazy) --------------------------------------------------------------------------------------

    @property
    def backbone(self) -> Backbone:
        with self._lock:
            if self._backbone is None:
                self._backbone = self.preset.load(device=self._device, dtype=self._dtype)
            if self.adapter is not None and self._backbone.adapter != self.adapter.ident:
                self._backbone = apply_adapter(self._backbone, self.adapter)
            if self._backbone.speed != self.speed:
                self._backbone = self._backbone.with_speed(self.speed)
            return self._backbone

    @property
    def segmenter(self) -> Segmenter:
        """The default segmenter (loaded on first use)."""
        return self.get_segmenter()

    def get_segmenter(self, key: str | None = None) -> Segmenter:
        """Segmenter ``key`` (a registry key; ``None``: the default), loaded once with the preset's weights; the
        size and checkpoint given at construction apply to the default one."""
        key = key or self.segmenter_key
        with self._lock:
            if key not in self._segmenters:
                options = self._segmenter_options if key == self.segmenter_key else {}
                self._segmenters[key] = segmenter_spec(key).load(
                    options.get("model") or self.preset.default_segmenter_model(key),
                    weights=self.preset.segmenter_weights,
                    checkpoint=options.get("checkpoint"),
                    device=self._device,
                )
            return self._segmenters[key]

    def _resolve(self, segmenter: Segmenter | str | None) -> Segmenter:
        return segmenter if segmenter is not None and not isinstance(segmenter, str) else self.get_segmenter(segmenter)

    def random_weights(self, segmenter: Segmenter | str | None = None) -> bool:
        return self.backbone.random_weights or self._resolve(segmenter).random_weights

    def models(self, segmenter: Segmenter | str | None = None) -> dict[str, Any]:
        chosen = self._resolve(segmenter)
        return {
            "preset": self.preset.name,
            "backbone": self.backbone.name,
            "backbone_source": self.backbone.source,
            "backbone_random_weights": self.backbone.random_weights,
            "text_encoder": type(self.backbone.text_encoder).__name__,  # LDMBertModel (the paper's), CLIPTextModel
            "adapter": self.adapter.ident if self.adapter is not None else None,
            "device": str(self.backbone.device),
            "dtype": str(self.backbone.dtype).removeprefix("torch."),
            "speed": self.speed.name,
            "segmenter": chosen.key,
            "segmenter_model": chosen.label,
            "segmenter_random_weights": chosen.random_weights,
            **self._parser_record(),
        }

    def _parser_record(self) -> dict[str, Any]:
        """The parser as results name it: what decides its parses under ``parser``; where it runs (an LLM
        server's URL) apart, under ``parser_base_url``."""
        described = dict(self.parser.describe())
        base_url = described.pop("base_url", None)
        return {"parser": described, **({"parser_base_url": base_url} if base_url else {})}

    # --- stages ---------------------------------------------------------------------------------------------

    def parse(self, caption: str) -> ParseResult:
        with self._lock:
            cached = self._parses.get(caption)
        if cached is not None:
            return cached
        result = self.parser.parse(caption)
        self.counters["parse"] += 1
        with self._lock:
            self._parses.put(caption, result)
        return result

    def align(self, parse: ParseResult) -> TokenAlignment:
        return align_tokens(parse.caption, parse.concepts, self.backbone.tokenizer, self.backbone.text_length)

    def attend(
        self,
        image: np.ndarray,
        parse: ParseResult,
        settings: DiffusionSettings | None = None,
        digest: str | None = None,
    ) -> tuple[AttentionResult, bool]:
        """Averaged attention for ``image`` and the concepts of ``parse``; returns ``(result, from_cache)``."""
        settings = settings or self.settings.diffusion
        digest = digest or image_digest(image)
        alignment = self.align(parse)
        key = (
            digest,
            parse.caption,
            tuple((c.concept_id, c.all_positions) for c in alignment.concepts),
            self.backbone.name,
            self.backbone.source,
            settings,
        )
        with self._lock:
            cached = self._attention.get(key)
        if cached is not None:
            return cached, True
        saved = None
        if self.embeddings_dir is not None:
            name = learned_embeddings_key(self.backbone, digest, alignment, settings)
            saved = self.embeddings_dir / f"{name}.safetensors"
        embeddings = LearnedEmbeddings.load(saved, expected_key=saved.stem) if saved and saved.is_file() else None
        with self._diffusion_lock:
            result = extract_attention(
                self.backbone, image, alignment, settings, embeddings=embeddings, progress=self.progress, digest=digest
            )
        if saved is not None and embeddings is None:
            result.embeddings.save(saved)
        self.counters["attention"] += 1
        self.counters["unet_calls"] += result.unet_calls
        with self._lock:
            self._attention.put(key, result)
        return result, False

    def sample_prompts(
        self, attention: AttentionResult, parse: ParseResult, settings: PromptSettings | None = None
    ) -> PromptSet:
        """Point prompts from the maps (re-run on every threshold, R1/R2 or seed change: no model runs)."""
        maps = attention.maps

        def adjective_map(concept_id: int, adjective: str) -> np.ndarray | None:
            tokens = maps.alignment.for_concept(concept_id)
            if adjective.lower() not in {w.lower() for w in tokens.adjective_words}:
                return None
            return maps.adjective_map(concept_id, adjective)

        self.counters["prompts"] += 1
        return make_prompts(parse.concepts, maps.concept_map, adjective_map, settings or self.settings.prompts)

    def resample(self, analysis: Analysis, overrides: Overrides) -> Analysis:
        """The analysis with points sampled again under ``overrides`` (threshold, R1/R2, seed, ...): no model runs.
        Only prompt settings apply here; diffusion settings need a new :meth:`analyze`."""
        current = PipelineSettings(diffusion=analysis.attention.settings, prompts=analysis.sampled.settings)
        prompts = apply_overrides(current, overrides).prompts
        return dataclasses.replace(analysis, sampled=self.sample_prompts(analysis.attention, analysis.parse, prompts))

    def embed(self, image: np.ndarray, segmenter: Segmenter | str | None = None) -> Any:
        """The segmenter's per-image embedding (its image encoder: run once per image and kept by the caller)."""
        self.counters["embed"] += 1
        return self._resolve(segmenter).embed(image)

    def analyze(
        self,
        image: np.ndarray,
        parse: ParseResult,
        settings: PipelineSettings | None = None,
        *,
        segmenter: str | None = None,
        digest: str | None = None,
    ) -> Analysis:
        """Attention, the segmenter's image embedding and sampled points: all a point edit reuses."""
        settings = settings or self.settings
        digest = digest or image_digest(image)
        key = segmenter or self.segmenter_key
        timings: dict[str, float] = {}
        mark = time.perf_counter()
        attention, cached = self.attend(image, parse, settings.diffusion, digest)
        timings["attention_s"] = time.perf_counter() - mark
        if not cached:
            timings.update({f"attention_{k}_s": v for k, v in attention.timings.items()})
        mark = time.perf_counter()
        embedding = self.embed(image, key)
        timings["embed_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        sampled = self.sample_prompts(attention, parse, settings.prompts)
        timings["prompts_s"] = time.perf_counter() - mark
        analysis = Analysis(digest, (image.shape[1], image.shape[0]), parse, attention, key, embedding, sampled, cached)
        return dataclasses.replace(analysis, timings=timings)

    def segment(
        self,
        image: np.ndarray,
        parse: ParseResult,
        attention: AttentionResult,
        prompts: PromptSet,
        *,
        embedding: Any | None = None,
        segmenter: Segmenter | str | None = None,
    ) -> tuple[dict, dict]:
        """One mask and score per concept, from its points (and heatmap, for the plain backend).

        ``embedding``: the segmenter's embedding of ``image`` if the caller has it (else the encoder runs);
        ``segmenter`` overrides the pipeline's default for this call (the evaluation compares backends).
        """
        if (prompts.width, prompts.height) != (image.shape[1], image.shape[0]):
            raise ValueError(f"these points belong to a {prompts.width}x{prompts.height} image, not this one")
        chosen = self._resolve(segmenter)
        if embedding is None:
            embedding = self.embed(image, chosen)
        masks, scores = {}, {}
        for concept in parse.concepts:
            points, labels = prompts.arrays(concept.id)
            request = MaskRequest(
                points=points,
                labels=labels,
                heatmap=attention.maps.concept_map(concept.id),
                threshold=prompts.settings.threshold,
            )
            prediction = chosen.segment(embedding, request)
            masks[concept.id], scores[concept.id] = prediction.mask, prediction.score
            self.counters["decode"] += 1
        return masks, scores

    # --- everything -----------------------------------------------------------------------------------------

    def run(
        self,
        image: str | Path | np.ndarray,
        caption: str | ParseResult,
        *,
        prompts: PromptSet | None = None,
        settings: PipelineSettings | None = None,
        analysis: Analysis | None = None,
        segmenter: str | None = None,
    ) -> SegmentationResult:
        """Segment every concept of ``caption`` in ``image``.

        ``caption`` may be a :class:`ParseResult` (e.g. edited by the user). ``prompts`` replaces the sampled
        points (user edits). ``analysis`` reuses what :meth:`analyze` computed for this image and parse (attention
        and image embedding), so only the mask decoder runs; ``settings`` and ``segmenter`` then come from it.
        """
        settings = settings or self.settings
        started = time.perf_counter()
        array = load_image(image)
        parse = caption if isinstance(caption, ParseResult) else self.parse(caption)
        timings = {"parse_s": time.perf_counter() - started}
        if analysis is None:
            analysis = self.analyze(array, parse, settings, segmenter=segmenter)
            timings.update(analysis.timings)
        elif not analysis.matches(array, parse):
            raise ValueError("this analysis belongs to another image or caption")
        prompts = prompts or analysis.sampled
        mark = time.perf_counter()
        masks, scores = self.segment(
            array, parse, analysis.attention, prompts, embedding=analysis.embedding, segmenter=analysis.segmenter
        )
        timings["segment_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started
        return SegmentationResult(
            image_size=analysis.image_size,
            parse=parse,
            alignment=analysis.attention.maps.alignment,
            attention=analysis.attention,
            prompts=prompts,
            masks=masks,
            scores=scores,
            timings=timings,
            models=self.models(analysis.segmenter),
            warnings=self._warnings(analysis, parse),
            attention_cached=analysis.attention_cached,
            parse_settings=getattr(self.parser, "settings", ParseSettings()),
        )

    def warm_up(self) -> float:
        """Load the models and run one short analysis (one learning step) on a blank image, so that one-time costs
        (loading, kernel selection, the compiled path's compile: shapes do not depend on the image) are paid before
        the first real request. Returns the seconds it took."""
        started = time.perf_counter()
        side = self.backbone.resolution
        settings = apply_overrides(self.settings, Overrides(learning_steps=1))
        self.run(np.full((side, side, 3), 127, dtype=np.uint8), "a ball", settings=settings)
        return time.perf_counter() - started

    def _warnings(self, analysis: Analysis, parse: ParseResult) -> list[str]:
        warnings = list(analysis.attention.maps.alignment.warnings)
        if parse.fallback_reason:
            warnings.append(f"{parse.requested_parser} parser failed ({parse.fallback_reason}); used {parse.parser}")
        if self.random_weights(analysis.segmenter):
            warnings.append(RANDOM_WEIGHTS_WARNING)
        return warnings
