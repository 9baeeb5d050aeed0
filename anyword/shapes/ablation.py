"""The paper's ablation (Table 6) in the shapes world: ``anyword shapes ablation``.

Every number is a pure function of the split, the scene indices, the shipped weights and the settings, so the
command reproduces ``docs/benchmarks.md`` exactly on the same software.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from anyword.metrics import (
    ImageResult,
    cumulative_iou,
    generalized_iou,
    grandf_ap50,
    grandf_miou,
    grandf_recall,
    mask_iou,
    word_phrase_match,
)
from anyword.segment import GRABCUT, PLAIN
from anyword.settings import Overrides, PipelineSettings, apply_overrides
from anyword.shapes.scenes import SHAPES_DATASET
from anyword.shapes.worlds import get_world

PROMPTABLE = "promptable"  # the pipeline's segmenter (the SAM trained in world 2 by default; --segmenter picks)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: "plain" (the thresholded map) or the pipeline's promptable segmenter, and whether
    prompt learning, R1 and R2 are on."""

    segmenter: str
    learning: bool
    r1: bool
    r2: bool

    def overrides(self) -> Overrides:
        """The variant as changes to the run's settings (no learning: 0 steps)."""
        return Overrides(learning_steps=None if self.learning else 0, r1=self.r1, r2=self.r2)


# Mirrors the paper's Table 6 (w/SAM -> the pipeline's promptable segmenter), then GrabCut in its place.
ABLATION = {
    "plain": Variant(PLAIN, learning=False, r1=False, r2=False),
    "segmenter": Variant(PROMPTABLE, learning=False, r1=False, r2=False),
    "pl": Variant(PROMPTABLE, learning=True, r1=False, r2=False),
    "pl_r1": Variant(PROMPTABLE, learning=True, r1=True, r2=False),
    "pl_r2": Variant(PROMPTABLE, learning=True, r1=False, r2=True),
    "full": Variant(PROMPTABLE, learning=True, r1=True, r2=True),
    "grabcut": Variant(GRABCUT, learning=False, r1=False, r2=False),
    "full_grabcut": Variant(GRABCUT, learning=True, r1=True, r2=True),
}
# The row whose lone-point masks define the ambiguous subset (phrases whose mask took the wrong granularity).
AMBIGUITY_ROW = "segmenter"


def match_concepts(scene, concepts) -> dict[int, int]:
    """Ground-truth phrase index -> concept id, for concepts whose phrase names that shape (noun + its words)."""
    matches: dict[int, int] = {}
    used: set[int] = set()
    for index, phrase in enumerate(scene.phrases):
        for concept in concepts:
            if concept.id not in used and word_phrase_match(phrase.text, concept.phrase):
                matches[index] = concept.id
                used.add(concept.id)
                break
    return matches


@dataclass
class _Record:
    """What one variant collected over the scenes."""

    images: list[ImageResult] = dataclasses.field(default_factory=list)
    pairs: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    wrong_granularity: list[bool] = dataclasses.field(default_factory=list)  # per pair: the other granularity won


def ablation(
    pipeline,
    split: str = "seen",
    n: int = 100,
    variants: dict[str, Variant] | None = None,
    image_size: int = 128,
    start: int = 0,
    progress: bool = True,
    settings: PipelineSettings | None = None,
    world: str = SHAPES_DATASET,
) -> dict:
    """Segment scenes ``start .. start+n-1`` of ``world``'s ``split`` with each variant of the full method run by
    ``pipeline`` with ``settings`` (default: the pipeline's); metrics per variant. The diffusion stage runs at most
    twice per image (with and without prompt learning) and each segmenter embeds each image once: the variants share
    them.

    In a world with parts, a phrase is *ambiguous* when the :data:`AMBIGUITY_ROW` row's mask (one point, no
    learning) overlaps a region of the other granularity (its whole, or one of its parts) more than its own; each row
    also reports its phrase IoU on that subset."""
    variants = variants or {"full": ABLATION["full"]}
    chosen = get_world(world)
    settings = settings or pipeline.settings
    records = {name: _Record() for name in variants}
    parsed = found = 0
    for index in tqdm(range(start, start + n), desc=f"ablation {split}", disable=not progress):
        scene = chosen.make_scene(split, index)
        image, masks = chosen.render(scene, image_size)
        parse = pipeline.parse(scene.caption)
        matches = match_concepts(scene, parse.concepts)
        parsed, found = parsed + len(scene.phrases), found + len(matches)
        for name, (predicted, seconds) in _segment_variants(pipeline, settings, variants, image, parse).items():
            record = records[name]
            record.seconds.append(seconds)
            record.images.append(
                ImageResult(
                    predictions=[predicted[c.id] for c in parse.concepts],
                    predicted_phrases=[c.phrase for c in parse.concepts],
                    targets=[masks[p.shape_index] for p in scene.phrases],
                    target_phrases=[p.text for p in scene.phrases],
                )
            )
            for phrase_index, phrase in enumerate(scene.phrases):
                concept_id = matches.get(phrase_index)
                prediction = predicted[concept_id] if concept_id is not None else np.zeros_like(masks[0])
                record.pairs.append((prediction, masks[phrase.shape_index]))
                others = chosen.other_granularity(scene, phrase, image_size)
                own = mask_iou(prediction, masks[phrase.shape_index])
                record.wrong_granularity.append(any(mask_iou(prediction, other) > own for other in others))
    ambiguous = records[AMBIGUITY_ROW].wrong_granularity if AMBIGUITY_ROW in records else []
    return {
        "dataset": world,
        "split": split,
        "n": n,
        "scenes": [start, start + n - 1],
        "image_size": image_size,
        "adapter": pipeline.adapter.ident if pipeline.adapter is not None else None,
        "speed": pipeline.speed.name,
        "threads": torch.get_num_threads(),
        "phrases": parsed,
        "parse_recall": found / parsed if parsed else 0.0,
        "settings": _reported_settings(settings),
        "ambiguity_row": AMBIGUITY_ROW if ambiguous else None,
        "ambiguous_phrases": int(sum(ambiguous)),
        "rows": {name: _row(pipeline, variants[name], record, ambiguous) for name, record in records.items()},
    }


def _segment_variants(pipeline, base: PipelineSettings, variants: dict[str, Variant], image: np.ndarray, parse):
    """``{variant: (masks by concept id, seconds)}`` for one image; attention and embeddings computed once."""
    attention = {}
    for learning in sorted({v.learning for v in variants.values()}):
        started = time.perf_counter()
        diffusion = apply_overrides(base, Overrides(learning_steps=None if learning else 0)).diffusion
        attention[learning] = (pipeline.attend(image, parse, diffusion)[0], time.perf_counter() - started)
    segmenters = {role: _segmenter(pipeline, role) for role in sorted({v.segmenter for v in variants.values()})}
    embeddings = {role: pipeline.embed(image, segmenter) for role, segmenter in segmenters.items()}
    results = {}
    for name, variant in variants.items():
        result, attention_s = attention[variant.learning]
        started = time.perf_counter()
        prompts = pipeline.sample_prompts(result, parse, apply_overrides(base, variant.overrides()).prompts)
        role = variant.segmenter
        predicted, _ = pipeline.segment(
            image, parse, result, prompts, embedding=embeddings[role], segmenter=segmenters[role]
        )
        results[name] = (predicted, attention_s + time.perf_counter() - started)
    return results


def _segmenter(pipeline, role: str):
    return pipeline.segmenter if role == PROMPTABLE else pipeline.get_segmenter(role)


def _row(pipeline, variant: Variant, record: _Record, ambiguous: list[bool]) -> dict:
    subset = [mask_iou(p, t) for (p, t), chosen in zip(record.pairs, ambiguous, strict=False) if chosen]
    return {
        **dataclasses.asdict(variant),
        "segmenter": _segmenter(pipeline, variant.segmenter).label,
        "miou": grandf_miou(record.images),
        "ciou": cumulative_iou(record.pairs),
        "giou": generalized_iou(record.pairs),
        "phrase_iou": float(np.mean([mask_iou(p, t) for p, t in record.pairs])),
        "ap50": grandf_ap50(record.images),
        "recall": grandf_recall(record.images, word_phrase_match),  # the world's phrases are its own templates
        "ambiguous_phrase_iou": float(np.mean(subset)) if subset else None,
        "wrong_granularity": float(np.mean(record.wrong_granularity)) if record.wrong_granularity else 0.0,
        "seconds_per_image": float(np.mean(record.seconds)),
    }


def _reported_settings(settings: PipelineSettings) -> dict:
    diffusion = settings.diffusion
    grids = diffusion.attention_resolutions
    return {
        "learning_steps": diffusion.learning.steps,
        "learning_batch": diffusion.learning.batch_size,
        "learning_rate": diffusion.learning.learning_rate,
        "learning_timesteps": diffusion.learning.timestep_range,
        "learning_attention_dtype": diffusion.learning.attention_dtype,
        "inversion_steps": diffusion.inversion_steps,
        "attention_resolutions": list(grids) if grids is not None else None,
        "attention_timesteps": diffusion.attention_timesteps,
        "threshold": settings.prompts.threshold,
    }
