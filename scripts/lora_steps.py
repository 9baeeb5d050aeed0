"""Segment Anyword_f in the shapes world: the full method's mIoU / gIoU against prompt-learning steps, with and
without the shipped text-encoder adapter, on `seen` and `novel` test scenes -> docs/results/lora-steps.json.

Each (split, adapter, steps) cell is saved as soon as it is done; a rerun computes only the missing cells, so the
measurement can be spread over several runs. `--render` pastes the table into docs/benchmarks.md (between the
`lora-steps` markers) and draws docs/lora-steps.png from the JSON alone.

    python scripts/lora_steps.py --n 30 --steps 0 3 10 30       # measure (CPU: ~20 s per scene and cell)
    python scripts/lora_steps.py --render                        # table + plot from docs/results/lora-steps.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results" / "lora-steps.json"
MARK_BEGIN, MARK_END = "<!-- lora-steps:begin -->", "<!-- lora-steps:end -->"


def measure(args: argparse.Namespace) -> None:
    import torch

    from anyword.pipeline import SegmentAnyword
    from anyword.presets import SHAPES_PRESET
    from anyword.segment import GRABCUT
    from anyword.settings import Overrides
    from anyword.shapes.ablation import ABLATION, ablation

    data = json.loads(args.out.read_text()) if args.out.is_file() else {"cells": {}}
    data["machine"] = {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    # GrabCut: the segmenter the shapes preset had when these cells were measured (docs/benchmarks.md)
    pipelines = {
        "none": SegmentAnyword(SHAPES_PRESET, segmenter=GRABCUT),
        "adapter": SegmentAnyword(SHAPES_PRESET, adapter=args.adapter, segmenter=GRABCUT),
    }
    data["adapter"] = pipelines["adapter"].adapter.ident
    for split in args.splits:
        for steps in args.steps:
            for name, pipeline in pipelines.items():
                key = f"{split}/{name}/{steps}/{args.start}+{args.n}"
                if key in data["cells"]:
                    continue
                settings = pipeline.preset.settings(Overrides(learning_steps=steps))
                started = time.perf_counter()
                full = {"full": ABLATION["full"]}
                result = ablation(pipeline, split, args.n, full, start=args.start, settings=settings)
                row = result["rows"]["full"]
                data["cells"][key] = {
                    "split": split,
                    "adapter": name,
                    "steps": steps,
                    "scenes": result["scenes"],
                    "miou": row["miou"],
                    "giou": row["giou"],
                    "ciou": row["ciou"],
                    "phrases": result["phrases"],
                    "seconds": round(time.perf_counter() - started, 1),
                    "torch_threads": torch.get_num_threads(),
                }
                args.out.write_text(json.dumps(data, indent=1))
                print(key, round(row["miou"], 4), round(row["giou"], 4), flush=True)


def _phrases(split: str, first: int, last: int) -> int:
    from anyword.shapes.scenes import make_scene

    return sum(len(make_scene(split, i).phrases) for i in range(first, last + 1))


def combined_cells(cells: list[dict]) -> dict[tuple, dict]:
    """One cell per (split, adapter, steps) over all its contiguous scene ranges measured from scene 0: mIoU (a
    mean over scenes) weighted by scenes, gIoU (a mean over phrases) by phrases; exact, as both are means."""
    grouped: dict[tuple, list[dict]] = {}
    for cell in cells:
        grouped.setdefault((cell["split"], cell["adapter"], cell["steps"]), []).append(cell)
    combined = {}
    for key, parts in grouped.items():
        parts.sort(key=lambda c: c["scenes"][0])
        chain, last = [], -1
        for part in parts:
            if part["scenes"][0] == last + 1:
                chain.append(part)
                last = part["scenes"][1]
        if not chain:
            continue
        scenes = [c["scenes"][1] - c["scenes"][0] + 1 for c in chain]
        phrases = [c.get("phrases") or _phrases(key[0], *c["scenes"]) for c in chain]
        combined[key] = {
            "scenes": [0, last],
            "miou": sum(c["miou"] * n for c, n in zip(chain, scenes, strict=True)) / sum(scenes),
            "giou": sum(c["giou"] * n for c, n in zip(chain, phrases, strict=True)) / sum(phrases),
        }
    return combined


def render(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    lookup = combined_cells(list(data["cells"].values()))
    splits = sorted({k[0] for k in lookup}, key=["seen", "novel"].index)
    steps = sorted({k[2] for k in lookup})
    widest = max(c["scenes"][1] for c in lookup.values())
    narrowest = min(c["scenes"][1] for c in lookup.values())
    partial = f" (* where only 0-{narrowest} are measured so far)" if narrowest < widest else ""
    lines = [
        f"Full method on test scenes 0-{widest} of each split{partial}; adapter `{data['adapter']}`; mIoU / gIoU:",
        "",
        "| split | adapter | " + " | ".join(f"{s} steps" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for split in splits:
        for name, label in (("none", "none"), ("adapter", "shipped")):
            values = [lookup.get((split, name, s)) for s in steps]
            text = [
                f"{v['miou']:.3f} / {v['giou']:.3f}" + ("" if v["scenes"][1] == widest else "*") if v else "-"
                for v in values
            ]
            lines.append(f"| {split} | {label} | " + " | ".join(text) + " |")
    table = "\n".join(lines)
    docs = ROOT / "docs" / "benchmarks.md"
    text = docs.read_text()
    if MARK_BEGIN in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + MARK_BEGIN + "\n" + table + "\n" + MARK_END + rest.split(MARK_END, 1)[1]
    else:
        text += f"\n{MARK_BEGIN}\n{table}\n{MARK_END}\n"
    docs.write_text(text)
    figure, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.6), sharey=True, squeeze=False)
    for axis, split in zip(axes[0], splits, strict=True):
        for name, style in (("none", "o--"), ("adapter", "s-")):
            points = [(s, lookup[(split, name, s)]["miou"]) for s in steps if (split, name, s) in lookup]
            if points:
                axis.plot(
                    *zip(*points, strict=True), style, label="with adapter" if name == "adapter" else "no adapter"
                )
        axis.set_title(f"{split} test scenes 0-{widest}")
        axis.set_xlabel("prompt-learning steps")
        axis.set_xscale("symlog", linthresh=1)
        axis.set_xticks(steps, [str(s) for s in steps])
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("GranDf mIoU (full method)")
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(ROOT / "docs" / "lora-steps.png", dpi=110)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["seen", "novel"])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 3, 10, 30])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--adapter", default="shipped")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="table and plot from the JSON; no measuring")
    args = parser.parse_args()
    if args.render:
        render(args.out)
    else:
        measure(args)


if __name__ == "__main__":
    main()
