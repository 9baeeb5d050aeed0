"""Synthetic scenes with ground truth: 1-4 coloured shapes on plain or textured backgrounds, captions in three
styles, and a visible-instance mask for every noun phrase.

Splits: ``train`` (training vocabulary), ``seen`` (new scenes, training vocabulary) and ``novel`` (new scenes whose
phrases use words never seen in training: every phrase has a novel noun, a novel colour, or both, e.g. "crimson
disk", "azure square", "red box"). Scenes are drawn in normalised coordinates and rendered at any size, so the model
trains at 64 px while evaluation images can be larger. Everything is a pure function of ``(split, index)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 90, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 60, 195),
    "orange": (245, 135, 25),
}
# Words the model never sees in training; the novel split uses them in place of the training words.
NOVEL_NOUNS = {"circle": "disk", "square": "box", "triangle": "pyramid", "star": "pentagram", "ring": "hoop"}
NOVEL_COLOURS = {
    "red": "crimson",
    "green": "emerald",
    "blue": "azure",
    "yellow": "golden",
    "purple": "violet",
    "orange": "amber",
}
SPLITS = ("train", "seen", "novel")
SHAPES_DATASET = "shapes"  # the world's scenes as an evaluation dataset (anyword.evaluation.DATASETS)
_SPLIT_SEED = {"train": 0, "seen": 1, "novel": 2}
BACKGROUNDS = [(28, 28, 30), (72, 72, 75), (200, 200, 198), (232, 226, 214), (92, 80, 68), (42, 52, 62)]
# Radius ranges in image widths per size word ("none": the caption gives no size); the shipped model was trained
# on these (docs/benchmarks.md).
RADII = {"small": (0.09, 0.12), "none": (0.11, 0.17), "big": (0.15, 0.2)}
RELATIONS = {"above": "is above", "below": "is below", "left": "is to the left of", "right": "is to the right of"}


@dataclass(frozen=True)
class Shape:
    """One shape in normalised image coordinates (``cx``, ``cy``, ``radius`` in [0, 1] of the image side)."""

    kind: str
    colour: str
    size: str | None
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass(frozen=True)
class Phrase:
    """The words naming one shape in a caption (the ground-truth noun phrase)."""

    text: str
    noun: str
    adjectives: tuple[str, ...]
    shape_index: int


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    shapes: tuple[Shape, ...]
    background: tuple[int, int, int]
    texture: str
    caption: str
    phrases: tuple[Phrase, ...]
    style: str


def make_scene(
    split: str,
    index: int,
    min_shapes: int = 1,
    max_shapes: int = 4,
    same_colour: float = 0.0,
) -> Scene:
    """Scene ``index`` of ``split`` (deterministic).

    ``same_colour``: probability that every shape of the scene has one colour (distinct kinds), so that only the
    nouns tell the shapes apart. It is drawn from its own random stream: at 0 (the default, and what the test splits
    use) scenes do not change.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([_SPLIT_SEED[split], index, min_shapes, max_shapes])
    count = int(rng.integers(min_shapes, max_shapes + 1))
    one_colour = None
    if same_colour > 0:
        draw = np.random.default_rng([_SPLIT_SEED[split], index, min_shapes, max_shapes, 78])
        if draw.random() < same_colour:
            one_colour = str(draw.choice(list(COLOURS)))
    shapes = _place_shapes(rng, count, one_colour)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    texture = str(rng.choice(["plain", "plain", "noise", "stripes", "checker"]))
    words = [_words_for(shape, split, rng) for shape in shapes]
    style = (
        str(rng.choice(["list", "relation", "description"])) if count > 1 else str(rng.choice(["list", "description"]))
    )
    caption, phrases = _caption(shapes, words, style, rng)
    return Scene(split, index, tuple(shapes), background, texture, caption, tuple(phrases), style)


def _place_shapes(rng: np.random.Generator, count: int, one_colour: str | None = None) -> list[Shape]:
    for _ in range(200):
        combos = [(k, c) for k in SHAPES for c in ((one_colour,) if one_colour else COLOURS)]
        chosen = [combos[i] for i in rng.choice(len(combos), size=count, replace=False)]
        shapes = []
        for kind, colour in chosen:
            size = str(rng.choice(["small", "big", "none"]))
            radius = rng.uniform(*RADII[size])
            cx, cy = rng.uniform(radius + 0.02, 0.98 - radius, size=2)
            shapes.append(
                Shape(
                    kind,
                    colour,
                    None if size == "none" else size,
                    float(cx),
                    float(cy),
                    float(radius),
                    float(rng.uniform(0, 2 * np.pi)),
                )
            )
        masks = _visible_masks(shapes, 64)
        full = [_shape_mask(s, 64) for s in shapes]
        if all(v.sum() >= 0.55 * f.sum() and v.sum() >= 20 for v, f in zip(masks, full, strict=True)):
            return shapes
    raise RuntimeError("could not place shapes")  # practically unreachable: 200 tries of a sparse layout


def _words_for(shape: Shape, split: str, rng: np.random.Generator) -> tuple[tuple[str, ...], str]:
    noun, colour = shape.kind, shape.colour
    if split == "novel":
        novel_noun, novel_colour = False, False
        while not (novel_noun or novel_colour):  # every phrase has at least one word never seen in training
            novel_noun, novel_colour = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        noun = NOVEL_NOUNS[noun] if novel_noun else noun
        colour = NOVEL_COLOURS[colour] if novel_colour else colour
    adjectives = (shape.size, colour) if shape.size else (colour,)
    return adjectives, noun


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(shapes: list[Shape], words: list, style: str, rng: np.random.Generator) -> tuple[str, list[Phrase]]:
    phrases = [Phrase(" ".join((*adjectives, noun)), noun, adjectives, i) for i, (adjectives, noun) in enumerate(words)]
    named = [f"{article(p.text)} {p.text}" for p in phrases]
    if style == "list":
        text = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
        return text, phrases
    if style == "relation":
        sentences = []
        for a, b in itertools.pairwise(range(len(shapes))):
            relation = relation_between(shapes[a], shapes[b])
            subject = named[a] if a == 0 else f"the {phrases[a].text}"
            sentences.append(f"{subject[0].upper()}{subject[1:]} {RELATIONS[relation]} {named[b]}.")
        return " ".join(sentences), phrases
    # GranDf-like description: one sentence per shape with its place in the picture.
    openers = ["The image shows", "There is", "We can see"]
    sentences = []
    for i, shape in enumerate(shapes):
        place = place_words(shape)
        if i == 0:
            sentences.append(f"{rng.choice(openers)} {named[i]} {place}.")
        else:
            lead = str(rng.choice(["Next to it there is", "There is also", "Nearby lies"]))
            sentences.append(f"{lead} {named[i]} {place}.")
    return " ".join(sentences), phrases


def caption_from_words(shapes, words: list, style: str, rng: np.random.Generator) -> tuple[str, list[Phrase]]:
    """A caption of ``shapes`` in ``style`` ("list", "relation", "description") naming shape ``i`` with
    ``words[i]`` (``(adjectives, noun)``), and its phrases in shape order."""
    return _caption(list(shapes), words, style, rng)


def relation_between(a, b) -> str:
    """ "above", "below", "left" or "right": where ``a`` is from ``b`` (anything with ``cx``, ``cy``)."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left" if dx < 0 else "right"


def place_words(shape) -> str:
    """Where ``shape`` (anything with ``cx``, ``cy``) is in the picture, in words."""
    horizontal = "on the left" if shape.cx < 0.38 else "on the right" if shape.cx > 0.62 else ""
    vertical = "at the top" if shape.cy < 0.38 else "at the bottom" if shape.cy > 0.62 else ""
    return horizontal or vertical or "in the middle"


# --- rendering -----------------------------------------------------------------------------------------------


def _points(shape: Shape, size: int) -> np.ndarray:
    cx, cy, r = shape.cx * size, shape.cy * size, shape.radius * size
    if shape.kind == "square":
        angles = shape.angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r * 1.1)
    elif shape.kind == "triangle":
        angles = shape.angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r * 1.2)
    else:  # star
        angles = shape.angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r * 1.25, r * 0.5)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _draw(canvas: np.ndarray, shape: Shape, size: int, value, shift: int = 4) -> None:
    """Draw ``shape`` on ``canvas`` (``size`` pixels wide) with sub-pixel precision."""
    scale = 1 << shift
    centre = (round(shape.cx * size * scale), round(shape.cy * size * scale))
    radius = shape.radius * size
    if shape.kind == "circle":
        cv2.circle(canvas, centre, round(radius * scale), value, -1, cv2.LINE_8, shift)
    elif shape.kind == "ring":
        cv2.circle(canvas, centre, round(radius * 0.8 * scale), value, max(1, round(radius * 0.4)), cv2.LINE_8, shift)
    else:
        cv2.fillPoly(canvas, [np.round(_points(shape, size) * scale).astype(np.int32)], value, cv2.LINE_8, shift)


def _shape_mask(shape: Shape, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    _draw(mask, shape, size, 1)
    return mask.astype(bool)


def _visible_masks(shapes, size: int) -> list[np.ndarray]:
    """Later shapes are drawn on top: each mask keeps only what stays visible."""
    masks = [_shape_mask(s, size) for s in shapes]
    visible = []
    for i, mask in enumerate(masks):
        covered = np.zeros_like(mask)
        for later in masks[i + 1 :]:
            covered |= later
        visible.append(mask & ~covered)
    return visible


def paint_background(split: str, index: int, background, texture: str, size: int, factor: int) -> np.ndarray:
    """A scene's background at ``size * factor`` pixels, ``(S, S, 3)`` uint8: plain, noise, stripes or checker
    (the pattern drawn from the scene's own stream, so it is a pure function of ``(split, index)``)."""
    big = size * factor
    rng = np.random.default_rng([_SPLIT_SEED[split], index, 99])
    canvas = np.empty((big, big, 3), dtype=np.float32)
    canvas[:] = background
    if texture == "noise":
        canvas += np.repeat(np.repeat(rng.normal(0, 14, (size, size, 1)), factor, 0), factor, 1)
    elif texture == "stripes":
        period = big // int(rng.integers(4, 9))
        canvas[(np.arange(big) // max(period // 2, 1)) % 2 == 1] += 22 if np.mean(background) < 128 else -22
    elif texture == "checker":
        cell = big // int(rng.integers(3, 7))
        yy, xx = np.mgrid[0:big, 0:big] // max(cell, 1)
        canvas[(yy + xx) % 2 == 1] += 18 if np.mean(background) < 128 else -18
    return np.clip(canvas, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """The scene as ``(size, size, 3)`` uint8 RGB (anti-aliased) and one bool ``(size, size)`` visible mask per
    shape, in the order of ``scene.shapes``."""
    factor = 4
    big = size * factor
    canvas = paint_background(scene.split, scene.index, scene.background, scene.texture, size, factor)
    for shape in scene.shapes:
        _draw(canvas, shape, big, COLOURS[shape.colour])
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return image, _visible_masks(scene.shapes, size)


def true_concepts(scene: Scene, caption: str | None = None, extra_nouns: tuple[str, ...] = ()) -> tuple:
    """The ground-truth concepts of ``caption`` (default: the scene's): one per phrase of the scene (its noun and
    adjectives), plus one bare noun per ``extra_nouns`` entry (words the caption adds that name nothing in the
    scene). Returns :class:`anyword.parsing.Concept` objects placed on ``caption``."""
    from anyword.parsing.concepts import concepts_from_entries

    caption = scene.caption if caption is None else caption
    entries = [{"noun": p.noun, "adjectives": list(p.adjectives), "phrase": p.text} for p in scene.phrases]
    entries += [{"noun": noun, "adjectives": [], "phrase": noun} for noun in extra_nouns]
    return concepts_from_entries(caption, entries)
