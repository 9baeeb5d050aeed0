"""The stability table and plot in docs/benchmarks.md, from `anyword eval --stability` runs copied into
docs/results/stability/ as ``SPLIT-CONDITION.json`` (the run's stability.json with its summary's settings).

Usage: python scripts/stability_tables.py [--paste docs/benchmarks.md]
  collect: python scripts/stability_tables.py --collect RUN_DIR SPLIT CONDITION
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "stability"
FIGURE = ROOT / "docs" / "stability.png"
BEGIN, END = "<!-- stability:begin -->", "<!-- stability:end -->"
CONDITIONS = ("no-learning", "learning", "adapter-fast")


def collect(run: Path, split: str, condition: str) -> Path:
    """One run's stability report and the settings and models that made it, as one JSON file."""
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "stability.json").read_text())
    fields = ("dataset", "split", "settings", "models", "samples", "metrics", "seconds_per_sample")
    kept = {k: summary[k] for k in fields if k in summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{split}-{condition}.json"
    path.write_text(json.dumps({"condition": condition, **kept, "stability": report}, indent=1))
    return path


def table(rows: list[dict]) -> str:
    lines = [
        "| split | condition | scenes | units | IoU mean | IoU std | agreement | easy / medium / hard | GranDf mIoU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        report, means = row["stability"], row["stability"]["means"]
        counts = " / ".join(str(report["difficulty"][k]) for k in ("easy", "medium", "hard"))
        scenes = len({unit["group"] for unit in report["groups"]})
        lines.append(f"| {row['split']} | {row['condition']} | {scenes} | {report['units']} | "
                     f"{means['iou_mean']:.3f} | {means['iou_std']:.3f} | {means['agreement']:.3f} | {counts} | "
                     f"{row['metrics']['mIoU']:.3f} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({row["split"] for row in rows})
    figure, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False, sharey=True)
    for axis, split in zip(axes[0], splits, strict=True):
        for row in (r for r in rows if r["split"] == split):
            units = row["stability"]["groups"]
            axis.scatter([u["iou_mean"] for u in units], [u["iou_std"] for u in units], s=10, alpha=0.6,
                         label=row["condition"])  # fmt: skip
        axis.set_title(f"{split}: one dot per target")
        axis.set_xlabel("IoU mean across wordings")
        axis.set_xlim(0, 1)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("IoU std across wordings")
    figure.tight_layout()
    figure.savefig(FIGURE, dpi=110)


def main() -> None:
    if "--collect" in sys.argv:
        run, split, condition = sys.argv[sys.argv.index("--collect") + 1 :][:3]
        print(collect(Path(run), split, condition))
        return
    order = {c: i for i, c in enumerate(CONDITIONS)}
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    rows.sort(key=lambda r: (r["split"], order.get(r["condition"], 9)))
    text = table(rows)
    print(text)
    plot(rows)
    if "--paste" in sys.argv:
        page = Path(sys.argv[sys.argv.index("--paste") + 1])
        content = page.read_text()
        head, rest = content.split(BEGIN, 1)
        page.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
