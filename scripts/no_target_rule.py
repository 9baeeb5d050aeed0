"""Choose the no-target rule on validation data only: shapes scenes 10000+ of `seen` and `novel`, each giving one
expression that names a present shape and one that names an absent one (dataset `shapes-referring`).

Runs the full method with the rule off, then, for each signal the predictions record (`concentration`: share of
the referent's map mass at or above the prompt threshold, high = present; `region_share`: share of the map's grid
at or above it, low = present), picks the threshold with the best balanced accuracy (mean of N-acc and T-acc) and
checks the chosen rule on test scenes 0+ -> docs/results/no-target.json.

    python scripts/no_target_rule.py --n 40            # CPU: ~4 s per expression with 2 threads
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "docs" / "results" / "no-target.json"
VALIDATION_START = 10000

from anyword.evaluation.tasks import NO_TARGET_SIGNALS as SIGNALS  # noqa: E402  (+1: higher means present)


def records(split: str, start: int, n: int, folder: Path) -> list[dict]:
    from anyword.evaluation import DatasetOptions, make_task, open_dataset, run_evaluation
    from anyword.pipeline import SegmentAnyword
    from anyword.presets import SHAPES_PRESET

    dataset = open_dataset("shapes-referring", DatasetOptions(split=split, count=start + n))
    pipeline = SegmentAnyword(SHAPES_PRESET)
    task = make_task(dataset, no_target=False)
    run_evaluation(pipeline, pipeline.settings, dataset, task, folder / f"{split}-{start}", start=2 * start, n=2 * n)
    lines = (folder / f"{split}-{start}" / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "error" not in json.loads(line)]


def balanced_accuracy(rows: list[dict], signal: str, threshold: float) -> dict:
    sign = SIGNALS[signal]
    absent = [r for r in rows if r["key"].endswith("absent")]
    present = [r for r in rows if r["key"].endswith("present")]
    says_absent = lambda r: sign * r[signal] < sign * threshold  # noqa: E731
    n_acc = sum(says_absent(r) for r in absent) / len(absent)
    t_acc = sum(not says_absent(r) for r in present) / len(present)
    return {"threshold": threshold, "N_acc": n_acc, "T_acc": t_acc, "balanced": (n_acc + t_acc) / 2}


def choose(rows: list[dict], signal: str) -> dict:
    values = sorted({round(r[signal], 4) for r in rows})
    candidates = [(a + b) / 2 for a, b in itertools.pairwise(values)] or values
    scored = [balanced_accuracy(rows, signal, t) for t in candidates]
    return max(scored, key=lambda r: (r["balanced"], -r["threshold"]))


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="scenes per split (two expressions each)")
    parser.add_argument("--splits", nargs="+", default=["seen", "novel"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        validation = [r for s in args.splits for r in records(s, VALIDATION_START, args.n, Path(folder))]
        choices = {signal: choose(validation, signal) for signal in SIGNALS}
        signal = max(choices, key=lambda s: choices[s]["balanced"])
        test = [r for s in args.splits for r in records(s, 0, args.n, Path(folder))]
    result = {
        "validation": {"scenes": [VALIDATION_START, VALIDATION_START + args.n - 1], "splits": args.splits},
        "candidates": choices,
        "chosen": {"signal": signal, "threshold": choices[signal]["threshold"]},
        "test": {
            "scenes": [0, args.n - 1],
            **{s: balanced_accuracy(test, s, choices[s]["threshold"]) for s in SIGNALS},
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
