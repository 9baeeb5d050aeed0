"""Markdown tables of the saved `anyword eval` results (docs/results/*.json), as pasted into docs/benchmarks.md.

Usage: python scripts/benchmark_tables.py [docs/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = ("miou", "ciou", "giou", "ap50", "recall", "seconds_per_image")


def ablation_table(result: dict) -> str:
    lines = [
        "| row | PL | R1 | R2 | mIoU | cIoU | gIoU | AP50 | recall | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        flags = ["x" if row[key] else "" for key in ("learning", "r1", "r2")]
        values = [f"{row[m]:.3f}" for m in METRICS[:-1]] + [f"{row['seconds_per_image']:.1f}"]
        lines.append(f"| `{name}` | {' | '.join(flags)} | {' | '.join(values)} |")
    return "\n".join(lines)


def localization_table(result: dict) -> str:
    lines = [
        "| averaging | grids | timesteps | noun pointing | colour pointing | control | chance | shapes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["localization"].items():
        timesteps = (
            "all"
            if row["attention_timesteps"] is None
            else f"{row['attention_timesteps'][0]}-{row['attention_timesteps'][1]}"
        )
        lines.append(
            f"| {name} | {'+'.join(map(str, row['attention_resolutions']))} | {timesteps} | "
            f"{row['noun_pointing']:.3f} | {row['colour_pointing']:.3f} | {row['control_pointing']:.3f} | "
            f"{row['chance']:.3f} | {row['n_shapes']} |"
        )
    return "\n".join(lines)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    for path in sorted(folder.glob("ablation-*.json")):
        result = json.loads(path.read_text())
        print(
            f"### {result['split']} (scenes {result['scenes'][0]}-{result['scenes'][1]}, parse recall "
            f"{result['parse_recall']:.3f})\n"
        )
        print(ablation_table(result), "\n")
    for path in sorted(folder.glob("localization-*.json")):
        print(f"### {path.stem}\n")
        print(localization_table(json.loads(path.read_text())), "\n")


if __name__ == "__main__":
    main()
