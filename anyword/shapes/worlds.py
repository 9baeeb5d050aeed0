"""The synthetic worlds, declared once: world 1 (``shapes``: objects without parts) and world 2 (``parts``: objects
with named parts). Training, the evaluation datasets and the reports read a world from here; nothing else matches
their names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anyword.presets import PARTS_PRESET, SHAPES_PRESET
from anyword.shapes import parts, scenes


@dataclass(frozen=True)
class World:
    """A scene family: ``make_scene(split, index)`` (pure), ``render(scene, size)`` -> image ``(S, S, 3)`` uint8 and
    one bool mask per ``scene.phrases[i].shape_index``; ``absent_nouns(scene)``: training nouns for things the
    scene lacks (in the world's order); ``other_granularity(scene, phrase, size)``: masks
    a point on the phrase's region could also mean (a part's whole, a whole's parts; none in world 1); ``preset``: the
    preset that runs on it (its diffusion model and segmenter)."""

    name: str
    description: str
    make_scene: Callable
    render: Callable
    absent_nouns: Callable
    other_granularity: Callable
    preset: str


def _shapes_absent(scene) -> list[str]:
    return [kind for kind in scenes.SHAPES if all(shape.kind != kind for shape in scene.shapes)]


def _no_other_granularity(scene, phrase, size: int) -> list[np.ndarray]:
    return []


def _parts_other_granularity(scene, phrase, size: int) -> list[np.ndarray]:
    return parts.region_masks(scene, parts.other_granularity(scene, scene.regions[phrase.shape_index]), size)


WORLDS: dict[str, World] = {
    world.name: world
    for world in (
        World(scenes.SHAPES_DATASET, "world 1: 1-4 coloured shapes, no parts", scenes.make_scene, scenes.render,
              _shapes_absent, _no_other_granularity, SHAPES_PRESET),
        World(parts.PARTS_DATASET, "world 2: houses, flags, targets, lollipops, snowmen with coloured parts",
              parts.make_parts_scene, parts.render_parts, parts.absent_wholes, _parts_other_granularity, PARTS_PRESET),
    )
}  # fmt: skip


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}: choose one of {', '.join(WORLDS)}")
    return WORLDS[name]
