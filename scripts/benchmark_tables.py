"""Markdown tables of the saved shapes-world results (docs/results/*.json), as pasted into docs/benchmarks.md.

Usage: python scripts/benchmark_tables.py [docs/results] [--paste docs/benchmarks.md]

World 1's tables are printed; world 2's (``parts-*.json``) are printed and, with ``--paste``, written between the
``<!-- parts:begin -->`` and ``<!-- parts:end -->`` marks of the page.
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


PARTS_BEGIN, PARTS_END = "<!-- parts:begin -->", "<!-- parts:end -->"


def _number(value) -> str:
    return "" if value is None else f"{value:.3f}"


def parts_ablation_table(result: dict) -> str:
    """World 2's ablation: the GranDf metrics, the phrase IoU on all phrases and on the ambiguous subset (phrases
    whose lone-point mask took the other granularity), and how often each row's masks did."""
    lines = [
        "| row | segmenter | PL | R1 | R2 | mIoU | phrase IoU | ambiguous IoU | wrong granularity | AP50 | recall "
        "| s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        flags = ["x" if row[key] else "" for key in ("learning", "r1", "r2")]
        values = [_number(row[m]) for m in ("miou", "phrase_iou", "ambiguous_phrase_iou", "wrong_granularity",
                                             "ap50", "recall")]  # fmt: skip
        lines.append(f"| `{name}` | {row['segmenter']} | {' | '.join(flags)} | {' | '.join(values)} | "
                     f"{row['seconds_per_image']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def sam_table(report: dict) -> str:
    lines = [
        "| regions | count | mIoU best of three | mIoU top-scored | top-scored wrong granularity |",
        "|---|---|---|---|---|",
    ]
    for name, row in (*report["regions"].items(), ("all", report["all"])):
        lines.append(f"| {name} | {row['count']} | {row['miou_best_of_three']:.3f} | {row['miou_top_scored']:.3f} | "
                     f"{row['wrong_granularity']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def parts_tables(folder: Path) -> str:
    """World 2's tables from ``parts-sam-*.json``, ``parts-localization-*.json`` and ``parts-ablation-*.json``."""
    blocks = []
    for path in sorted(folder.glob("parts-sam-*.json")):
        report = json.loads(path.read_text())
        blocks.append(f"#### The trained SAM, `{report['split']}` scenes {report['scenes'][0]}-{report['scenes'][1]} "
                      f"(`{path.name}`)\n\n{sam_table(report)}\n\nA click (prompt encoder + decoder + upsampling): "
                      f"median {report['click_ms_median']:.1f} ms; the image encoder: median "
                      f"{report['embed_ms_median']:.1f} ms ({report['threads']} torch threads).")  # fmt: skip
    for path in sorted(folder.glob("parts-localization-*.json")):
        blocks.append(f"#### Pointing, `{path.name}`\n\n{localization_table(json.loads(path.read_text()))}")
    for path in sorted(folder.glob("parts-ablation-*.json")):
        result = json.loads(path.read_text())
        variant = (f"Segment Anyword_f: adapter `{result['adapter']}`, {result['settings']['learning_steps']} "
                   "learning steps" if result["adapter"] else f"{result['ambiguous_phrases']} ambiguous")  # fmt: skip
        blocks.append(f"#### Ablation, `{result['split']}` scenes {result['scenes'][0]}-{result['scenes'][1]} "
                      f"(`{path.name}`; parse recall {result['parse_recall']:.3f}, {result['phrases']} phrases, "
                      f"{variant})\n\n{parts_ablation_table(result)}")  # fmt: skip
    return "\n\n".join(blocks)


def paste(page: Path, text: str) -> None:
    content = page.read_text()
    head, rest = content.split(PARTS_BEGIN, 1)
    page.write_text(head + PARTS_BEGIN + "\n" + text + "\n" + PARTS_END + rest.split(PARTS_END, 1)[1])


def main() -> None:
    arguments = [a for a in sys.argv[1:] if a != "--paste"]
    page = None
    if "--paste" in sys.argv:
        page = Path(sys.argv[sys.argv.index("--paste") + 1])
        arguments.remove(str(page))
    folder = Path(arguments[0] if arguments else "docs/results")
    for path in sorted(folder.glob("ablation-*.json")):  # world 1
        result = json.loads(path.read_text())
        print(
            f"### {result['split']} (scenes {result['scenes'][0]}-{result['scenes'][1]}, parse recall "
            f"{result['parse_recall']:.3f})\n"
        )
        print(ablation_table(result), "\n")
    for path in sorted(folder.glob("localization-*.json")):
        print(f"### {path.stem}\n")
        print(localization_table(json.loads(path.read_text())), "\n")
    world_two = parts_tables(folder)
    print(world_two)
    if page is not None:
        paste(page, world_two)


if __name__ == "__main__":
    main()
