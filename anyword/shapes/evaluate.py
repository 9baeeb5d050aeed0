"""Evaluation in the shapes world: the paper's ablation (Table 6) and the model's word localisation.

Every number is a pure function of the split, the scene indices, the shipped weights and the settings, so
``anyword eval`` reproduces ``docs/benchmarks.md`` exactly on the same software.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from anyword.metrics import (
    ImageResult,
    cumulative_iou,
    default_phrase_match,
    generalized_iou,
    grandf_ap50,
    grandf_miou,
    grandf_recall,
    mask_iou,
)
from anyword.shapes.scenes import SHAPES, Scene, make_scene, render, true_concepts

SHAPES_PRESET = "shapes"  # the preset whose model was trained on these scenes
PROMPTABLE = "promptable"  # the pipeline's segmenter (GrabCut by default in the shapes world; --segmenter picks)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: "plain" (the thresholded map) or the pipeline's promptable segmenter, and whether
    prompt learning, R1 and R2 are on."""

    segmenter: str
    learning: bool
    r1: bool
    r2: bool


# Mirrors the paper's Table 6 (w/SAM -> a promptable segmenter; by default here the weight-free GrabCut).
ABLATION = {
    "plain": Variant("plain", learning=False, r1=False, r2=False),
    "segmenter": Variant(PROMPTABLE, learning=False, r1=False, r2=False),
    "pl": Variant(PROMPTABLE, learning=True, r1=False, r2=False),
    "pl_r1": Variant(PROMPTABLE, learning=True, r1=True, r2=False),
    "pl_r2": Variant(PROMPTABLE, learning=True, r1=False, r2=True),
    "full": Variant(PROMPTABLE, learning=True, r1=True, r2=True),
}


def match_concepts(scene: Scene, concepts) -> dict[int, int]:
    """Ground-truth phrase index -> concept id, for concepts whose phrase names that shape (noun + its words)."""
    matches: dict[int, int] = {}
    used: set[int] = set()
    for index, phrase in enumerate(scene.phrases):
        for concept in concepts:
            if concept.id not in used and default_phrase_match(phrase.text, concept.phrase):
                matches[index] = concept.id
                used.add(concept.id)
                break
    return matches


def evaluate(
    split: str = "seen",
    n: int = 100,
    variants: dict[str, Variant] | None = None,
    image_size: int = 128,
    start: int = 0,
    progress: bool = True,
    pipeline=None,
) -> dict:
    """Segment scenes ``start .. start+n-1`` of ``split`` with each variant; metrics per variant.

    The diffusion stage runs at most twice per image (with and without prompt learning); the variants share it.
    """
    from anyword.pipeline import SegmentAnyword
    from anyword.segment import PlainSegmenter
    from anyword.settings import Overrides, apply_overrides

    variants = variants or {"full": ABLATION["full"]}
    pipeline = pipeline or SegmentAnyword(SHAPES_PRESET)
    segmenters = {PROMPTABLE: pipeline.segmenter, "plain": PlainSegmenter()}
    used = {variant.segmenter for variant in variants.values()}
    base = pipeline.settings
    no_learning = apply_overrides(base, Overrides(learning_steps=0)).diffusion

    per_variant: dict[str, dict] = {name: {"images": [], "pairs": [], "seconds": []} for name in variants}
    parsed = found = 0
    for index in tqdm(range(start, start + n), desc=f"eval {split}", disable=not progress):
        scene = make_scene(split, index)
        image, masks = render(scene, image_size)
        parse = pipeline.parse(scene.caption)
        matches = match_concepts(scene, parse.concepts)
        parsed += len(scene.phrases)
        found += len(matches)
        attention = {}
        for learning in sorted({v.learning for v in variants.values()}):
            started = time.perf_counter()
            settings = base.diffusion if learning else no_learning
            attention[learning] = (pipeline.attend(image, parse, settings)[0], time.perf_counter() - started)
        embeddings = {role: pipeline.embed(image, segmenters[role]) for role in sorted(used)}  # once per image
        for name, variant in variants.items():
            result, attention_s = attention[variant.learning]
            started = time.perf_counter()
            prompts = pipeline.sample_prompts(
                result, parse, dataclasses.replace(base.prompts, r1=variant.r1, r2=variant.r2)
            )
            predicted, _ = pipeline.segment(
                image,
                parse,
                result,
                prompts,
                embedding=embeddings[variant.segmenter],
                segmenter=segmenters[variant.segmenter],
            )
            seconds = attention_s + time.perf_counter() - started
            record = per_variant[name]
            record["seconds"].append(seconds)
            record["images"].append(
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
                record["pairs"].append((prediction, masks[phrase.shape_index]))

    rows = {}
    for name, record in per_variant.items():
        pairs = record["pairs"]
        variant = variants[name]
        segmenter = "plain" if variant.segmenter == "plain" else pipeline.segmenter.name
        rows[name] = {
            **dataclasses.asdict(variant),
            "segmenter": segmenter,
            "miou": grandf_miou(record["images"]),
            "ciou": cumulative_iou(pairs),
            "giou": generalized_iou(pairs),
            "phrase_iou": float(np.mean([mask_iou(p, t) for p, t in pairs])),
            "ap50": grandf_ap50(record["images"]),
            "recall": grandf_recall(record["images"]),
            "seconds_per_image": float(np.mean(record["seconds"])),
        }
    return {
        "dataset": "shapes",
        "split": split,
        "n": n,
        "scenes": [start, start + n - 1],
        "image_size": image_size,
        "adapter": pipeline.adapter.ident if pipeline.adapter is not None else None,
        "phrases": parsed,
        "parse_recall": found / parsed if parsed else 0.0,
        "settings": {
            "learning_steps": base.diffusion.learning.steps,
            "learning_batch": base.diffusion.learning.batch_size,
            "learning_rate": base.diffusion.learning.learning_rate,
            "learning_timesteps": base.diffusion.learning.timestep_range,
            "inversion_steps": base.diffusion.inversion_steps,
            "attention_resolutions": list(base.diffusion.attention_resolutions),
            "attention_timesteps": base.diffusion.attention_timesteps,
            "threshold": base.prompts.threshold,
        },
        "rows": rows,
    }


# Where the control word goes: appended (what ``anyword eval --localization`` measures), first, or after the
# caption's first word (ungrammatical on purpose: a place training captions never put a word).
CONTROL_PLACES = {"end": "{caption} {control}", "start": "{control}. {caption}", "second": "{first} {control} {rest}"}


def with_control(scene: Scene, place: str = "end") -> tuple[str, list, str]:
    """``(caption, concepts, control)``: the caption with a control word (a training noun the scene does not name,
    picked by the scene index) at ``place`` (a key of :data:`CONTROL_PLACES`) and the ground-truth concepts, one
    per phrase plus the control."""
    absent = [s for s in SHAPES if all(p.noun != s for p in scene.phrases)]
    control = absent[scene.index % len(absent)]
    first, _, rest = scene.caption.partition(" ")
    caption = CONTROL_PLACES[place].format(caption=scene.caption, control=control, first=first, rest=rest)
    return caption, true_concepts(scene, caption, (control,)), control


def localization(
    split: str = "seen",
    n: int = 100,
    resolutions: tuple[int, ...] = (16,),
    timesteps: tuple[int, int] | None = None,
    start: int = 0,
    progress: bool = True,
    backbone=None,
) -> dict:
    """Does the model's cross-attention point at the named object? On multi-object scenes (2-4 shapes):

    * noun / colour pointing: share of shapes whose noun's (colour word's) map has its maximum inside the shape;
    * control: the same for a training noun that the caption does not contain (appended to the caption);
    * chance: the mean area fraction of the shapes (what a random maximum would score).

    Uses the ground-truth phrases as concepts (no parser) and no prompt learning: the model's attention alone.
    """
    from anyword.diffusion import DiffusionSettings, LearningSettings, extract_attention
    from anyword.presets import get_preset
    from anyword.tokens import align_tokens

    backbone = backbone or get_preset(SHAPES_PRESET).load()
    settings = DiffusionSettings(
        learning=LearningSettings(steps=0), attention_resolutions=tuple(resolutions), attention_timesteps=timesteps
    )
    hits = {"noun": [], "colour": [], "control": [], "chance": []}
    for index in tqdm(range(start, start + n), desc="localization", disable=not progress):
        scene = make_scene(split, index, min_shapes=2, max_shapes=4)
        image, masks = render(scene, backbone.resolution)
        caption, concepts, control = with_control(scene)
        alignment = align_tokens(caption, concepts, backbone.tokenizer)
        maps = extract_attention(backbone, image, alignment, settings).maps
        record_pointing(hits, maps, scene, masks, concepts, control)
    return {
        "split": split,
        "n_scenes": n,
        "n_shapes": len(hits["noun"]),
        "attention_resolutions": list(resolutions),
        "attention_timesteps": timesteps,
        "noun_pointing": float(np.mean(hits["noun"])),
        "colour_pointing": float(np.mean(hits["colour"])),
        "control_pointing": float(np.mean(hits["control"])),
        "chance": float(np.mean(hits["chance"])),
    }


def record_pointing(hits: dict[str, list], maps, scene: Scene, masks, concepts, control: str) -> None:
    """Append, per shape of ``scene``, whether its noun's, its colour word's and the control word's maps peak inside
    it (``hits["noun"|"colour"|"control"]``) and its area fraction (``hits["chance"]``)."""
    by_phrase = {c.phrase: c for c in concepts}
    control_map = maps.concept_map(by_phrase[control].id)
    for phrase in scene.phrases:
        mask = masks[phrase.shape_index]
        concept = by_phrase[phrase.text]
        hits["noun"].append(_argmax_inside(maps.concept_map(concept.id), mask))
        colour = phrase.adjectives[-1]  # scenes put the colour right before the noun
        hits["colour"].append(_argmax_inside(maps.adjective_map(concept.id, colour), mask))
        hits["control"].append(_argmax_inside(control_map, mask))
        hits["chance"].append(float(mask.mean()))


def _argmax_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return float(mask[y, x])
