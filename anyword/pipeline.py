"""``SegmentAnyword``: caption parsing -> token alignment -> diffusion attention -> point prompts -> masks.

Expensive results are cached by content: attention by (image, caption, concept tokens, model, diffusion
settings); the segmenter's image embedding by (image, segmenter). Editing points or prompt settings re-runs only
prompt sampling and mask decoding; a new caption or image recomputes what depends on it. Models load lazily, once
per pipeline object (no module globals).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anyword.diffusion import AttentionResult, Backbone, DiffusionSettings, LearnedEmbeddings, extract_attention
from anyword.diffusion.extract import learned_embeddings_key
from anyword.diffusion.presets import PRESETS, load_backbone
from anyword.images import image_digest, load_image
from anyword.parsing import CaptionParser, ParseResult, ParseSettings, make_parser
from anyword.prompts import PromptSet, PromptSettings, make_prompts
from anyword.segment import MaskRequest, Segmenter, make_segmenter
from anyword.tokens import TokenAlignment, align_tokens

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = "random weights: the maps and masks carry no meaning (use a pretrained preset)"


@dataclass(frozen=True)
class PipelineSettings:
    """All settings of a run; defaults are the paper's (see each stage's settings)."""

    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    parse: ParseSettings = field(default_factory=ParseSettings)

    def with_seed(self, seed: int) -> PipelineSettings:
        return dataclasses.replace(
            self,
            diffusion=dataclasses.replace(self.diffusion, seed=seed),
            prompts=dataclasses.replace(self.prompts, seed=seed),
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["parse"] = {"predicates": self.parse.predicates, "max_caption_chars": self.parse.max_caption_chars}
        return data


def apply_defaults(settings: PipelineSettings, defaults: Mapping[str, Any]) -> PipelineSettings:
    """Apply a preset's recommended settings (``learning_steps``, ``learning_batch``, ``learning_timesteps``,
    ``inversion_steps``, ``attention_resolutions``, ``attention_timesteps``, ``threshold``, ``adjective_region``) on
    top of ``settings``."""
    diffusion, prompts = settings.diffusion, settings.prompts
    learning = diffusion.learning
    if "learning_steps" in defaults:
        learning = dataclasses.replace(learning, steps=defaults["learning_steps"])
    if "learning_timesteps" in defaults:
        timesteps = defaults["learning_timesteps"]
        learning = dataclasses.replace(learning, timestep_range=None if timesteps is None else tuple(timesteps))
    if "learning_batch" in defaults:
        learning = dataclasses.replace(learning, batch_size=defaults["learning_batch"])
    changes = {"learning": learning}
    for key in ("inversion_steps", "attention_resolutions", "attention_timesteps"):
        if key in defaults:
            value = defaults[key]
            changes[key] = tuple(value) if isinstance(value, list) else value
    diffusion = dataclasses.replace(diffusion, **changes)
    for key in ("threshold", "adjective_region"):
        if key in defaults:
            prompts = dataclasses.replace(prompts, **{key: defaults[key]})
    return dataclasses.replace(settings, diffusion=diffusion, prompts=prompts)


def preset_defaults(preset: str) -> dict:
    if preset in PRESETS:
        return dict(PRESETS[preset].defaults)
    if preset == "shapes":
        from anyword.shapes.model import SHAPES_DEFAULTS

        return dict(SHAPES_DEFAULTS)
    return {}


def default_segmenter(preset: str) -> tuple[str, str]:
    """(segmenter, SAM model) a preset runs with unless told otherwise."""
    if preset == "tiny":
        return "sam", "tiny"
    if preset == "sd15-random":
        return "sam", "vit_h-random"
    if preset == "shapes":
        return "grabcut", "tiny"
    return "sam", "vit_h"


@dataclass
class SegmentationResult:
    """Everything one run produced. Masks are bool ``(H, W)`` at the original image size; points are in
    original-image pixels."""

    image_size: tuple[int, int]
    parse: ParseResult
    alignment: TokenAlignment
    attention: AttentionResult
    prompts: PromptSet
    masks: dict[int, np.ndarray]
    scores: dict[int, float]
    timings: dict[str, float]
    models: dict[str, Any]
    settings: PipelineSettings
    warnings: list[str]
    attention_cached: bool = False

    @property
    def concepts(self):
        return self.parse.concepts

    def heatmap(self, concept_id: int) -> np.ndarray:
        """The concept's averaged attention, ``(H, W)`` float32 in [0, 1]."""
        return self.attention.maps.concept_map(concept_id)

    @property
    def heatmaps(self) -> dict[int, np.ndarray]:
        return {c.id: self.heatmap(c.id) for c in self.concepts}

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

    def clear(self) -> None:
        self._items.clear()


class SegmentAnyword:
    """The whole method behind one object.

    Args:
        backbone: a :class:`Backbone` or a preset name ("sd15", "sd14", "tiny", "sd15-random", "shapes").
        segmenter: a :class:`Segmenter` or a name ("sam", "plain", "grabcut"); ``None``: the preset's default.
        parser: a :class:`CaptionParser` or "spacy" / "openai".
        settings: run settings; ``None`` applies the preset's recommended settings to the paper's defaults.
        model: hub id or local folder overriding the preset's weights.
        sam_model: SAM variant ("vit_h", "vit_l", "vit_b", "tiny", or "<variant>-random" for timing).
        device, dtype: where the diffusion model runs (default: CUDA fp16 if available, else CPU fp32).
        cache_size: how many images' attention and embeddings to keep.
        progress: show tqdm progress bars (the demo hooks them).
        embeddings_dir: folder where learned token embeddings are saved, one small file per (image, caption,
            model, settings); a later run with the same key loads them and skips prompt learning.
    """

    def __init__(
        self,
        backbone: Backbone | str = "sd15",
        segmenter: Segmenter | str | None = None,
        parser: CaptionParser | str = "spacy",
        settings: PipelineSettings | None = None,
        *,
        model: str | None = None,
        sam_model: str | None = None,
        sam_checkpoint: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        cache_size: int = 4,
        progress: bool = False,
        embeddings_dir: str | Path | None = None,
    ):
        preset = backbone if isinstance(backbone, str) else backbone.name
        self.preset = preset
        self._backbone = backbone if isinstance(backbone, Backbone) else None
        self._backbone_options = {"preset": preset, "model": model, "device": device, "dtype": dtype}
        default_name, default_sam = default_segmenter(preset if model is None else "sd15")
        self._segmenter = segmenter if segmenter is not None and not isinstance(segmenter, str) else None
        self._segmenter_options = {
            "name": segmenter if isinstance(segmenter, str) else default_name,
            "sam_model": sam_model or default_sam,
            "sam_checkpoint": sam_checkpoint,
            "device": device,
        }
        if isinstance(backbone, Backbone):
            defaults = backbone.defaults
        else:
            defaults = preset_defaults(preset) if model is None else {}
        base = settings or apply_defaults(PipelineSettings(), defaults)
        self.settings = base
        self.parser = parser if not isinstance(parser, str) else make_parser(parser, base.parse)
        self.progress = progress
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir else None
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()
        # Attention recording swaps the UNet's processors and prompt learning hooks the text encoder: one at a time.
        self._diffusion_lock = threading.Lock()
        self._attention = _LRU(cache_size)
        self._embeddings = _LRU(cache_size)
        self._parses = _LRU(64)

    # --- models (lazy) --------------------------------------------------------------------------------------

    @property
    def backbone(self) -> Backbone:
        with self._lock:
            if self._backbone is None:
                options = self._backbone_options
                self._backbone = load_backbone(
                    options["preset"], model=options["model"], device=options["device"], dtype=options["dtype"]
                )
            return self._backbone

    @property
    def segmenter(self) -> Segmenter:
        with self._lock:
            if self._segmenter is None:
                options = self._segmenter_options
                model = options["sam_model"]
                self._segmenter = make_segmenter(
                    options["name"],
                    sam_model=model.removesuffix("-random"),
                    sam_checkpoint=options["sam_checkpoint"],
                    device=options["device"],
                    random_weights=model.endswith("-random"),
                )
            return self._segmenter

    @property
    def random_weights(self) -> bool:
        return self.backbone.random_weights or bool(getattr(self.segmenter, "random_weights", False))

    def models(self) -> dict[str, Any]:
        segmenter = self.segmenter
        return {
            "backbone": self.backbone.name,
            "backbone_source": self.backbone.source,
            "backbone_random_weights": self.backbone.random_weights,
            "device": str(self.backbone.device),
            "dtype": str(self.backbone.dtype).removeprefix("torch."),
            "segmenter": segmenter.name,
            "segmenter_random_weights": bool(getattr(segmenter, "random_weights", False)),
            "parser": self.parser.name,
        }

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
        return align_tokens(parse.caption, parse.concepts, self.backbone.tokenizer)

    def attend(
        self,
        image: np.ndarray,
        parse: ParseResult,
        settings: DiffusionSettings | None = None,
        digest: str | None = None,
    ) -> tuple[AttentionResult, bool]:
        """Averaged attention for ``image`` and the concepts of ``parse``; returns ``(result, from_cache)``."""
        settings = settings or self.settings.diffusion
        alignment = self.align(parse)
        key = (
            digest or image_digest(image),
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
            saved = (
                self.embeddings_dir / f"{learned_embeddings_key(self.backbone, image, alignment, settings)}.safetensors"
            )
        embeddings = LearnedEmbeddings.load(saved, expected_key=saved.stem) if saved and saved.is_file() else None
        with self._diffusion_lock:
            result = extract_attention(
                self.backbone, image, alignment, settings, embeddings=embeddings, progress=self.progress
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
        maps = attention.maps

        def adjective_map(concept_id: int, adjective: str) -> np.ndarray | None:
            tokens = maps.alignment.for_concept(concept_id)
            if adjective.lower() not in {w.lower() for w in tokens.adjective_words}:
                return None
            return maps.adjective_map(concept_id, adjective)

        self.counters["prompts"] += 1
        return make_prompts(parse.concepts, maps.concept_map, adjective_map, settings or self.settings.prompts)

    def embed(
        self, image: np.ndarray, digest: str | None = None, segmenter: Segmenter | None = None
    ) -> tuple[Any, bool]:
        """The segmenter's per-image embedding (cached); returns ``(embedding, from_cache)``."""
        segmenter = segmenter or self.segmenter
        key = (digest or image_digest(image), segmenter.name)
        with self._lock:
            cached = self._embeddings.get(key)
        if cached is not None:
            return cached, True
        embedding = segmenter.embed(image)
        self.counters["embed"] += 1
        with self._lock:
            self._embeddings.put(key, embedding)
        return embedding, False

    def segment(
        self,
        image: np.ndarray,
        parse: ParseResult,
        attention: AttentionResult,
        prompts: PromptSet,
        threshold: float | None = None,
        digest: str | None = None,
        segmenter: Segmenter | None = None,
    ) -> tuple[dict, dict]:
        """One mask and score per concept, from its points (and heatmap, for the plain backend).

        ``segmenter`` overrides the pipeline's own for this call (the evaluation compares backends).
        """
        if (prompts.width, prompts.height) != (image.shape[1], image.shape[0]):
            raise ValueError(f"these points belong to a {prompts.width}x{prompts.height} image, not this one")
        segmenter = segmenter or self.segmenter
        embedding, _ = self.embed(image, digest, segmenter)
        threshold = threshold if threshold is not None else prompts.settings.threshold
        masks, scores = {}, {}
        for concept in parse.concepts:
            points, labels = prompts.arrays(concept.id)
            request = MaskRequest(
                points=points, labels=labels, heatmap=attention.maps.concept_map(concept.id), threshold=threshold
            )
            prediction = segmenter.segment(embedding, request)
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
        attention: AttentionResult | None = None,
    ) -> SegmentationResult:
        """Segment every concept of ``caption`` in ``image``.

        ``caption`` may be a :class:`ParseResult` (e.g. edited by the user). ``prompts`` replaces the sampled
        points (user edits); only the segmenter runs then, since attention and embedding are cached.
        ``attention`` reuses a result computed earlier for this image and parse (the demo keeps it per session,
        so a busy shared cache can never send a point edit back to the diffusion model).
        """
        settings = settings or self.settings
        timings: dict[str, float] = {}
        started = time.perf_counter()
        array = load_image(image)
        digest = image_digest(array)
        parse = caption if isinstance(caption, ParseResult) else self.parse(caption)
        timings["parse_s"] = time.perf_counter() - started

        mark = time.perf_counter()
        if attention is not None:
            if (
                attention.maps.alignment.caption != parse.caption
                or attention.maps.frame.width != array.shape[1]
                or attention.maps.frame.height != array.shape[0]
            ):
                raise ValueError("this attention result belongs to another image or caption")
            cached = True
        else:
            attention, cached = self.attend(array, parse, settings.diffusion, digest)
        timings["attention_s"] = time.perf_counter() - mark
        if not cached:
            timings.update({f"attention_{k}_s": v for k, v in attention.timings.items()})

        mark = time.perf_counter()
        if prompts is None:
            prompts = self.sample_prompts(attention, parse, settings.prompts)
        timings["prompts_s"] = time.perf_counter() - mark

        mark = time.perf_counter()
        masks, scores = self.segment(array, parse, attention, prompts, settings.prompts.threshold, digest)
        timings["segment_s"] = time.perf_counter() - mark
        timings["total_s"] = time.perf_counter() - started

        warnings = list(attention.maps.alignment.warnings)
        if parse.fallback_reason:
            warnings.append(f"{parse.requested_parser} parser failed ({parse.fallback_reason}); used {parse.parser}")
        if self.random_weights:
            warnings.append(RANDOM_WEIGHTS_WARNING)
        return SegmentationResult(
            image_size=(array.shape[1], array.shape[0]),
            parse=parse,
            alignment=attention.maps.alignment,
            attention=attention,
            prompts=prompts,
            masks=masks,
            scores=scores,
            timings=timings,
            models=self.models(),
            settings=settings,
            warnings=warnings,
            attention_cached=cached,
        )

    def clear_cache(self) -> None:
        with self._lock:
            self._attention.clear()
            self._embeddings.clear()
            self._parses.clear()
