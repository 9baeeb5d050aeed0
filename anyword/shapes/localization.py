"""Does the shapes model's cross-attention point at the named object? ``anyword shapes localization``.

Uses the ground-truth phrases as concepts (no parser) and no prompt learning: the model's attention alone.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from anyword.shapes.scenes import SHAPES, SHAPES_DATASET, true_concepts
from anyword.shapes.worlds import get_world

# Where the control word goes: appended (what ``anyword shapes localization`` measures), first, or after the
# caption's first word (ungrammatical on purpose: a place training captions never put a word).
CONTROL_PLACES = {"end": "{caption} {control}", "start": "{control}. {caption}", "second": "{first} {control} {rest}"}


def with_control(scene, place: str = "end", absent: list[str] | None = None) -> tuple[str, tuple, str]:
    """``(caption, concepts, control)``: the caption with a control word (a training noun the scene does not name,
    picked by the scene index) at ``place`` (a key of :data:`CONTROL_PLACES`) and the ground-truth concepts, one
    per phrase plus the control."""
    absent = absent if absent is not None else [s for s in SHAPES if all(p.noun != s for p in scene.phrases)]
    control = absent[scene.index % len(absent)]
    first, _, rest = scene.caption.partition(" ")
    caption = CONTROL_PLACES[place].format(caption=scene.caption, control=control, first=first, rest=rest)
    return caption, true_concepts(scene, caption, (control,)), control


def localization(
    backbone,
    settings,
    split: str = "seen",
    n: int = 100,
    start: int = 0,
    progress: bool = True,
    world: str = SHAPES_DATASET,
) -> dict:
    """Pointing on scenes of ``world``'s ``split`` (world 1: multi-object scenes, 2-4 shapes; world 2: every
    scene, its wholes and parts) with ``backbone`` and diffusion ``settings``
    (:class:`~anyword.diffusion.DiffusionSettings`, made by the settings layer; learning steps 0 here):

    * noun / colour pointing: share of shapes whose noun's (colour word's) map has its maximum inside the shape;
    * control: the same for a training noun that the caption does not contain (appended to the caption);
    * chance: the mean area fraction of the shapes (what a random maximum would score).
    """
    from anyword.diffusion import extract_attention
    from anyword.diffusion.extract import with_attention_grids
    from anyword.tokens import align_tokens

    settings = with_attention_grids(settings, backbone)
    chosen = get_world(world)
    extra = {"min_shapes": 2, "max_shapes": 4} if world == SHAPES_DATASET else {}
    hits = {"noun": [], "colour": [], "control": [], "chance": []}
    for index in tqdm(range(start, start + n), desc="localization", disable=not progress):
        scene = chosen.make_scene(split, index, **extra)
        image, masks = chosen.render(scene, backbone.resolution)
        caption, concepts, control = with_control(scene, absent=chosen.absent_nouns(scene))
        alignment = align_tokens(caption, concepts, backbone.tokenizer, backbone.text_length)
        maps = extract_attention(backbone, image, alignment, settings).maps
        record_pointing(hits, maps, scene, masks, concepts, control)
    return {
        "world": world,
        "split": split,
        "n_scenes": n,
        "n_shapes": len(hits["noun"]),
        "attention_resolutions": list(settings.attention_resolutions),
        "attention_timesteps": settings.attention_timesteps,
        "noun_pointing": float(np.mean(hits["noun"])),
        "colour_pointing": float(np.mean(hits["colour"])),
        "control_pointing": float(np.mean(hits["control"])),
        "chance": float(np.mean(hits["chance"])),
    }


def record_pointing(hits: dict[str, list], maps, scene, masks, concepts, control: str) -> None:
    """Append, per phrase of ``scene``, whether its noun's, its colour word's (phrases with one) and the control
    word's maps peak inside its mask (``hits["noun"|"colour"|"control"]``) and its area fraction
    (``hits["chance"]``)."""
    by_phrase = {c.phrase: c for c in concepts}
    control_map = maps.concept_map(by_phrase[control].id)
    for phrase in scene.phrases:
        mask = masks[phrase.shape_index]
        concept = by_phrase[phrase.text]
        hits["noun"].append(_argmax_inside(maps.concept_map(concept.id), mask))
        if phrase.adjectives:  # scenes put the colour right before the noun
            hits["colour"].append(_argmax_inside(maps.adjective_map(concept.id, phrase.adjectives[-1]), mask))
        hits["control"].append(_argmax_inside(control_map, mask))
        hits["chance"].append(float(mask.mean()))


def _argmax_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return float(mask[y, x])
