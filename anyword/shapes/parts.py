"""Shapes world 2: objects with parts. A house (body, roof, door), a flag (pole, cloth), a target (ring, centre), a
lollipop (stick, head) and a snowman (body, head), each part in its own colour, 1-3 objects per scene; captions name
wholes and parts with bound adjectives ("a house with a red roof", "the blue cloth of a flag") in world 1's three
styles, and every named whole and part has a ground-truth visible mask.

A point on a part is truly ambiguous (the roof, or the house): SAM's three masks, R1's adjective points and R2's
negatives can show what they do here, which world 1 (objects without parts) cannot. A third of the scenes with two or
more objects put two of them side by side, touching, sharing a colour, so a mask can leak into the neighbour.

Splits as in world 1 (``train``, ``seen``, ``novel``; novel phrases have at least one word never seen in training:
every whole a novel noun, every part a novel colour or part noun). Everything is a pure function of
``(split, index)``; scenes are drawn in normalised coordinates and rendered at any size.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from anyword.shapes.scenes import (
    BACKGROUNDS,
    COLOURS,
    NOVEL_COLOURS,
    RELATIONS,
    SPLITS,
    Phrase,
    article,
    paint_background,
    place_words,
    relation_between,
)

PARTS_DATASET = "parts"  # world 2 as an evaluation dataset (anyword.evaluation.DATASETS)
# Each whole's parts in drawing order (later parts cover earlier ones).
OBJECTS = {
    "house": ("body", "roof", "door"),
    "flag": ("pole", "cloth"),
    "target": ("ring", "centre"),
    "lollipop": ("stick", "head"),
    "snowman": ("body", "head"),
}
NOVEL_WHOLES = {"house": "cottage", "flag": "banner", "target": "dartboard", "lollipop": "sucker",
                "snowman": "snowperson"}  # fmt: skip
NOVEL_PARTS = {"door": "gate", "pole": "mast", "cloth": "fabric", "stick": "rod", "ring": "band"}
SCALES = (0.15, 0.22)  # an object's half-extent, in image widths
TOUCHING = 1 / 3  # share of multi-object scenes with two touching objects that share a colour
FORMS = ("whole", "with", "of")  # "a house" | "a house with a red roof" | "the red roof of a house"
_SPLIT_SEED = {"train": 10, "seen": 11, "novel": 12}
# The smallest visible share of a part, and its smallest area at 64 px, for a placement to be kept.
_MIN_VISIBLE, _MIN_PIXELS = 0.6, 6


@dataclass(frozen=True)
class PartObject:
    """One object: ``kind`` (a key of :data:`OBJECTS`), centre and half-extent in normalised image coordinates,
    and one colour name per part (in :data:`OBJECTS` order)."""

    kind: str
    cx: float
    cy: float
    scale: float
    colours: tuple[str, ...]


@dataclass(frozen=True)
class Region:
    """What a phrase can name: a whole object (``part`` is ``None``) or one of its parts."""

    object_index: int
    part: str | None


@dataclass(frozen=True)
class PartsScene:
    """A world-2 scene. ``phrases[i].shape_index`` indexes ``regions`` (and the masks :func:`render_parts`
    returns); ``touching``: objects 0 and 1 touch and share a colour."""

    split: str
    index: int
    objects: tuple[PartObject, ...]
    background: tuple[int, int, int]
    texture: str
    caption: str
    phrases: tuple[Phrase, ...]
    regions: tuple[Region, ...]
    style: str
    touching: bool


def make_parts_scene(split: str, index: int) -> PartsScene:
    """Scene ``index`` of ``split`` (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([_SPLIT_SEED[split], index])
    count = int(rng.integers(1, 4))
    touching = count > 1 and bool(rng.random() < TOUCHING)
    objects = _place_objects(rng, count, touching)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    texture = str(rng.choice(["plain", "plain", "noise", "stripes", "checker"]))
    mentions = [_mention(obj, i, split, rng) for i, obj in enumerate(objects)]
    styles = ["list", "relation", "description"] if count > 1 else ["list", "description"]
    style = str(rng.choice(styles))
    caption = _caption(objects, [text for text, _ in mentions], style, rng, split)
    regions, phrases = [], []
    for _, named in mentions:
        for region, (text, noun, adjectives) in named:
            phrases.append(Phrase(text, noun, adjectives, len(regions)))
            regions.append(region)
    return PartsScene(split, index, tuple(objects), background, texture, caption, tuple(phrases), tuple(regions),
                      style, touching)  # fmt: skip


def _place_objects(rng: np.random.Generator, count: int, touching: bool) -> list[PartObject]:
    for _ in range(300):
        kinds = [str(k) for k in rng.choice(list(OBJECTS), size=count, replace=False)]
        objects = []
        for i, kind in enumerate(kinds):
            scale = float(rng.uniform(*SCALES))
            colours = tuple(str(c) for c in rng.choice(list(COLOURS), size=len(OBJECTS[kind]), replace=False))
            if touching and i == 1:  # beside object 0, touching it, its first part in object 0's first colour
                first = objects[0]
                side = 1 if rng.random() < 0.5 else -1
                cy = first.cy + float(rng.uniform(-0.1, 0.1))
                colours = (first.colours[0], *[c for c in colours if c != first.colours[0]][: len(colours) - 1])
                objects.append(_beside(first, PartObject(kind, first.cx, cy, scale, colours), side))
                continue
            cx, cy = (float(v) for v in rng.uniform(scale + 0.02, 0.98 - scale, size=2))
            objects.append(PartObject(kind, float(cx), float(cy), scale, colours))
        if all(scale_fits(o) for o in objects) and _parts_visible(objects):
            return objects
    raise RuntimeError("could not place objects")  # practically unreachable: 300 tries of a sparse layout


def _beside(first: PartObject, second: PartObject, side: int) -> PartObject:
    """``second`` moved along x to the ``side`` of ``first`` (+1 right, -1 left) until their shapes touch (at 128
    px, within one pixel), closing in from a clear gap."""
    first_mask = _whole_mask(first, 128)
    grown = cv2.dilate(first_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    for step in range(120):
        distance = (first.scale + second.scale) * (1.2 - step * 0.01)
        moved = dataclasses.replace(second, cx=first.cx + side * distance)
        if (grown & _whole_mask(moved, 128)).any():
            return moved
    return moved  # practically unreachable: at 0 distance the centres coincide


def _whole_mask(obj: PartObject, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    for part in OBJECTS[obj.kind]:
        _draw_part(mask, obj, part, size, 1)
    return mask.astype(bool)


def scale_fits(obj: PartObject) -> bool:
    return obj.scale + 0.01 <= obj.cx <= 0.99 - obj.scale and obj.scale + 0.01 <= obj.cy <= 0.99 - obj.scale


def _parts_visible(objects: list[PartObject]) -> bool:
    labels = _label_map(objects, 64)
    for i, obj in enumerate(objects):
        for j, part in enumerate(OBJECTS[obj.kind]):
            full = np.zeros((64, 64), dtype=np.uint8)
            _draw_part(full, obj, part, 64, 1)
            visible = int((labels == _label(i, j)).sum())
            if visible < _MIN_PIXELS or visible < _MIN_VISIBLE * full.sum():
                return False
    return True


def _mention(obj: PartObject, index: int, split: str, rng: np.random.Generator):
    """How the caption names ``obj``: ``(text, [(region, (phrase, noun, adjectives)), ...])``."""
    form = str(rng.choice(FORMS))
    whole = NOVEL_WHOLES[obj.kind] if split == "novel" else obj.kind
    whole_phrase = (Region(index, None), (whole, whole, ()))
    if form == "whole":
        return f"{article(whole)} {whole}", [whole_phrase]
    slot = int(rng.integers(len(OBJECTS[obj.kind])))
    part, colour = OBJECTS[obj.kind][slot], obj.colours[slot]
    if split == "novel":
        novel_part = part in NOVEL_PARTS and bool(rng.random() < 0.5)
        novel_colour = not novel_part or bool(rng.random() < 0.5)
        part = NOVEL_PARTS[part] if novel_part else part
        colour = NOVEL_COLOURS[colour] if novel_colour else colour
    part_phrase = (Region(index, OBJECTS[obj.kind][slot]), (f"{colour} {part}", part, (colour,)))
    if form == "with":
        return f"{article(whole)} {whole} with {article(colour)} {colour} {part}", [whole_phrase, part_phrase]
    return f"the {colour} {part} of {article(whole)} {whole}", [part_phrase, whole_phrase]


def _caption(objects: list[PartObject], named: list[str], style: str, rng: np.random.Generator, split: str) -> str:
    if style == "list":
        return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    if style == "relation":
        sentences = []
        for a, b in itertools.pairwise(range(len(objects))):
            relation = relation_between(objects[a], objects[b])
            whole = NOVEL_WHOLES[objects[a].kind] if split == "novel" else objects[a].kind
            subject = named[a][0].upper() + named[a][1:] if a == 0 else f"The {whole}"  # named before: "the"
            sentences.append(f"{subject} {RELATIONS[relation]} {named[b]}.")
        return " ".join(sentences)
    openers = ["The image shows", "There is", "We can see"]
    sentences = []
    for i, obj in enumerate(objects):
        lead = str(rng.choice(openers)) if i == 0 else str(rng.choice(["Next to it there is", "There is also"]))
        sentences.append(f"{lead} {named[i]} {place_words(obj)}.")
    return " ".join(sentences)


# --- geometry and rendering --------------------------------------------------------------------------------------

# Parts as ("poly", [(dx, dy), ...]) or ("circle", (dx, dy, r)) in units of the object's half-extent from its centre.
_GEOMETRY = {
    ("house", "body"): ("poly", [(-0.75, -0.15), (0.75, -0.15), (0.75, 1.0), (-0.75, 1.0)]),
    ("house", "roof"): ("poly", [(-1.0, -0.1), (1.0, -0.1), (0.0, -1.0)]),
    ("house", "door"): ("poly", [(-0.24, 0.3), (0.24, 0.3), (0.24, 1.0), (-0.24, 1.0)]),
    ("flag", "pole"): ("poly", [(-0.9, -1.0), (-0.66, -1.0), (-0.66, 1.0), (-0.9, 1.0)]),
    ("flag", "cloth"): ("poly", [(-0.66, -0.95), (0.9, -0.95), (0.9, 0.1), (-0.66, 0.1)]),
    ("target", "ring"): ("circle", (0.0, 0.0, 1.0)),
    ("target", "centre"): ("circle", (0.0, 0.0, 0.45)),
    ("lollipop", "stick"): ("poly", [(-0.13, 0.1), (0.13, 0.1), (0.13, 1.0), (-0.13, 1.0)]),
    ("lollipop", "head"): ("circle", (0.0, -0.35, 0.62)),
    ("snowman", "body"): ("circle", (0.0, 0.38, 0.6)),
    ("snowman", "head"): ("circle", (0.0, -0.55, 0.42)),
}


def _draw_part(canvas: np.ndarray, obj: PartObject, part: str, size: int, value, shift: int = 4) -> None:
    """Draw one part of ``obj`` on ``canvas`` (``size`` pixels wide) with sub-pixel precision."""
    scale = 1 << shift
    kind, shape = _GEOMETRY[(obj.kind, part)]
    half = obj.scale * size
    if kind == "circle":
        dx, dy, r = shape
        centre = (round((obj.cx * size + dx * half) * scale), round((obj.cy * size + dy * half) * scale))
        cv2.circle(canvas, centre, round(r * half * scale), value, -1, cv2.LINE_8, shift)
        return
    points = np.array([(obj.cx * size + dx * half, obj.cy * size + dy * half) for dx, dy in shape])
    cv2.fillPoly(canvas, [np.round(points * scale).astype(np.int32)], value, cv2.LINE_8, shift)


def _label(object_index: int, part_index: int) -> int:
    return 1 + object_index * 8 + part_index


def _label_map(objects, size: int) -> np.ndarray:
    """``(size, size)`` int32: which part of which object is visible at each pixel (0: background)."""
    labels = np.zeros((size, size), dtype=np.int32)
    for i, obj in enumerate(objects):
        for j, part in enumerate(OBJECTS[obj.kind]):
            _draw_part(labels, obj, part, size, _label(i, j))
    return labels


def region_mask(labels: np.ndarray, objects, region: Region) -> np.ndarray:
    """A region's visible mask in a label map: the part's pixels, or all of the object's parts'."""
    parts = OBJECTS[objects[region.object_index].kind]
    chosen = [j for j, part in enumerate(parts) if region.part is None or part == region.part]
    return np.isin(labels, [_label(region.object_index, j) for j in chosen])


def render_parts(scene: PartsScene, size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """The scene as ``(size, size, 3)`` uint8 RGB (anti-aliased) and one bool ``(size, size)`` visible mask per
    region, in the order of ``scene.regions`` (what ``phrases[i].shape_index`` indexes)."""
    factor = 4
    canvas = paint_background(scene.split, scene.index, scene.background, scene.texture, size, factor)
    for obj in scene.objects:
        for part, colour in zip(OBJECTS[obj.kind], obj.colours, strict=True):
            _draw_part(canvas, obj, part, size * factor, COLOURS[colour])
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    labels = _label_map(scene.objects, size)
    return image, [region_mask(labels, scene.objects, region) for region in scene.regions]


def all_regions(scene: PartsScene) -> list[Region]:
    """Every whole and every part of the scene, named in the caption or not (what SAM trains on)."""
    return [Region(i, part) for i, obj in enumerate(scene.objects) for part in (None, *OBJECTS[obj.kind])]


def region_masks(scene: PartsScene, regions: list[Region], size: int) -> list[np.ndarray]:
    labels = _label_map(scene.objects, size)
    return [region_mask(labels, scene.objects, region) for region in regions]


def other_granularity(scene: PartsScene, region: Region) -> list[Region]:
    """The regions a point on ``region`` could also mean: a part's whole; a whole's parts."""
    if region.part is not None:
        return [Region(region.object_index, None)]
    return [Region(region.object_index, part) for part in OBJECTS[scene.objects[region.object_index].kind]]


def absent_wholes(scene: PartsScene) -> list[str]:
    """Training nouns for objects the scene does not hold (for captions that name what is not there)."""
    return [kind for kind in OBJECTS if all(obj.kind != kind for obj in scene.objects)]
