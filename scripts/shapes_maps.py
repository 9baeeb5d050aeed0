"""Per-word attention maps of the shipped shapes model on a few test scenes -> docs/shapes-maps.png.

Usage: python scripts/shapes_maps.py [--split seen] [--scenes 0 1 2] [--out docs/shapes-maps.png]

Each row: the scene (64x64, shown enlarged), then for every shape its noun's and its colour word's map, then a
control word that the caption does not contain (appended to it). Maps are the preset's (16x16 and 32x32 grids,
t <= 400), no prompt learning: what the model itself attends to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anyword.diffusion import DiffusionSettings, extract_attention
from anyword.presets import SHAPES_PRESET, get_preset
from anyword.settings import Overrides
from anyword.shapes.localization import with_control
from anyword.shapes.scenes import make_scene, render
from anyword.tokens import align_tokens
from anyword.viz import heatmap_overlay, panels

SHOWN = 192


def scene_row(backbone, split: str, index: int, settings: DiffusionSettings) -> list[tuple[str, np.ndarray]]:
    scene = make_scene(split, index, min_shapes=2, max_shapes=4)
    image, _ = render(scene, backbone.resolution)
    caption, concepts, control = with_control(scene)
    maps = extract_attention(backbone, image, align_tokens(caption, concepts, backbone.tokenizer), settings).maps
    big = cv2.resize(image, (SHOWN, SHOWN), interpolation=cv2.INTER_NEAREST)

    def overlay(heatmap: np.ndarray) -> np.ndarray:
        return heatmap_overlay(big, cv2.resize(heatmap, (SHOWN, SHOWN), interpolation=cv2.INTER_LINEAR))

    row = [(f"{split} {index}", big)]
    for concept in concepts:
        if concept.phrase == control:
            row.append((f"control: {control}", overlay(maps.concept_map(concept.id))))
            continue
        row.append((concept.noun, overlay(maps.concept_map(concept.id))))
        for adjective in concept.adjectives[-1:]:
            row.append((adjective, overlay(maps.adjective_map(concept.id, adjective))))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="seen")
    parser.add_argument("--scenes", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default="docs/shapes-maps.png")
    args = parser.parse_args()
    preset = get_preset(SHAPES_PRESET)
    backbone = preset.load(device="cpu")
    settings = preset.settings(Overrides(learning_steps=0)).diffusion
    rows = [scene_row(backbone, args.split, index, settings) for index in args.scenes]
    columns = max(len(row) for row in rows)
    items = []
    for row in rows:
        items += row + [("", np.full((SHOWN, SHOWN, 3), 255, np.uint8))] * (columns - len(row))
    sheet = panels(
        items,
        note="caption words' cross-attention (preset: 16+32 grids, t<=400, no learning)",
        max_side=SHOWN,
        columns=columns,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out, optimize=True)
    print(args.out, sheet.shape)


if __name__ == "__main__":
    main()
