"""The picture of shapes world 2 in docs/benchmarks.md: validation scenes (never the test scenes 0-99), each with
its caption and the ground-truth mask of every phrase it names.

Usage: python scripts/parts_figure.py [docs/parts-scenes.png]
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCENES = [("seen", 10003), ("seen", 10005), ("seen", 10011), ("novel", 10012), ("novel", 10014), ("novel", 10016)]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from anyword.shapes.parts import make_parts_scene, render_parts

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "parts-scenes.png")
    widest = max(len(make_parts_scene(*s).phrases) for s in SCENES)
    figure, axes = plt.subplots(len(SCENES), widest + 1, figsize=(1.6 * (widest + 1), 1.9 * len(SCENES)))
    for row, (split, index) in enumerate(SCENES):
        scene = make_parts_scene(split, index)
        image, masks = render_parts(scene, 128)
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f"{split} {index}" + (" (touching)" if scene.touching else ""), fontsize=7)
        axes[row, 0].set_xlabel("\n".join(textwrap.wrap(scene.caption, 34)), fontsize=5.5)
        for column, phrase in enumerate(scene.phrases, start=1):
            shown = (image * 0.25).astype(np.uint8)
            shown[masks[phrase.shape_index]] = image[masks[phrase.shape_index]]
            axes[row, column].imshow(shown)
            axes[row, column].set_title(f'"{phrase.text}"', fontsize=7)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
            if not axis.images:
                axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
