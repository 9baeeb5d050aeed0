"""Choose the no-target rule on calibration data of any registered referring dataset, then check it on other data.

Runs the full method with the rule off on the calibration samples, then, for each signal the predictions record
(`concentration`: share of the referent's map mass at or above the prompt threshold, high = present;
`region_share`: share of the map's grid at or above it, low = present), picks the threshold with the best balanced
accuracy (mean of N-acc and T-acc; "absent" = the sample's ground truth has no target) and checks the chosen rule on
the check samples. The paper describes no such rule: `anyword eval` leaves it off unless `--no-target on`.

    python scripts/no_target_rule.py --n 40        # shapes-referring: scenes 10000+ of seen and novel, check on 0+
    python scripts/no_target_rule.py --dataset grefcoco --data-root DATA --split train --check-split val --n 500
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
RESULTS = ROOT / "docs" / "results"
SHAPES_VALIDATION_SCENE = 10000  # the shapes world's calibration scenes start here (two expressions each)

from anyword.evaluation.tasks import NO_TARGET_SIGNALS as SIGNALS  # noqa: E402  (+1: higher means present)


def calibration_rows(args, split: str, start: int, folder: Path) -> list[dict]:
    """The rule's signals and the truth ("absent": no target) of samples ``start .. start+n-1`` of ``split``."""
    from anyword.evaluation import DatasetOptions, get_dataset_spec, make_task, open_dataset, run_evaluation
    from anyword.pipeline import SegmentAnyword
    from anyword.settings import Overrides

    spec = get_dataset_spec(args.dataset)
    options = DatasetOptions(split=split, root=args.data_root, count=start + args.n)
    dataset = open_dataset(args.dataset, options)
    pipeline = SegmentAnyword(args.preset or spec.preset, progress=False)
    settings = pipeline.preset.settings(Overrides(learning_steps=args.steps))
    out = folder / f"{split}-{start}"
    run_evaluation(pipeline, settings, dataset, make_task(dataset), out, start=start, n=args.n, progress=False)
    truth = {s.key: dataset.target(s).empty for s in dataset.samples()[start : start + args.n]}
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [{**r, "absent": truth[r["key"]]} for r in records if "error" not in r and "concentration" in r]


def balanced_accuracy(rows: list[dict], signal: str, threshold: float) -> dict:
    sign = SIGNALS[signal]
    absent = [r for r in rows if r["absent"]]
    present = [r for r in rows if not r["absent"]]
    says_absent = lambda r: sign * r[signal] < sign * threshold  # noqa: E731
    n_acc = sum(says_absent(r) for r in absent) / len(absent) if absent else None
    t_acc = sum(not says_absent(r) for r in present) / len(present) if present else None
    balanced = (n_acc + t_acc) / 2 if n_acc is not None and t_acc is not None else None
    return {"threshold": threshold, "N_acc": n_acc, "T_acc": t_acc, "balanced": balanced}


def choose(rows: list[dict], signal: str) -> dict:
    values = sorted({round(r[signal], 4) for r in rows})
    candidates = [(a + b) / 2 for a, b in itertools.pairwise(values)] or values
    scored = [balanced_accuracy(rows, signal, t) for t in candidates]
    return max(scored, key=lambda r: (r["balanced"] or 0.0, -r["threshold"]))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="shapes-referring", help="a registered referring dataset")
    parser.add_argument("--data-root", type=Path, default=None, help="its folder (official layout)")
    parser.add_argument("--split", nargs="+", default=None, help="calibration split(s) (default: seen novel, train)")
    parser.add_argument("--check-split", nargs="+", default=None, help="check split(s) (default: the same)")
    parser.add_argument("--n", type=int, default=40, help="samples per split (shapes: scenes, two samples each)")
    parser.add_argument("--preset", default=None, help="model setup (default: the dataset's)")
    parser.add_argument("--steps", type=int, default=None, help="prompt-learning steps (default: the preset's)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default docs/results/no-target*.json)")
    args = parser.parse_args()
    from anyword.evaluation import REFERRING, DatasetOptions, get_dataset_spec, open_dataset

    spec = get_dataset_spec(args.dataset)
    shapes = not spec.needs_root
    args.split = args.split or (["seen", "novel"] if shapes else ["train"])
    if open_dataset(args.dataset, DatasetOptions(split=args.split[0], root=args.data_root)).task != REFERRING:
        parser.error(f"{args.dataset} is not a referring dataset")
    args.check_split = args.check_split or args.split
    # The shapes world's calibration and check scenes differ by index; a dataset's by split.
    args.start = 2 * SHAPES_VALIDATION_SCENE if shapes else 0
    args.check_start = 0
    args.n = 2 * args.n if shapes else args.n
    name = "no-target.json" if shapes else f"no-target-{args.dataset}.json"
    args.out = args.out or RESULTS / name
    return args


def main() -> None:
    import torch

    args = arguments()
    with tempfile.TemporaryDirectory() as folder:
        calibration = [r for s in args.split for r in calibration_rows(args, s, args.start, Path(folder))]
        choices = {signal: choose(calibration, signal) for signal in SIGNALS}
        signal = max(choices, key=lambda s: choices[s]["balanced"] or 0.0)
        check = [r for s in args.check_split for r in calibration_rows(args, s, args.check_start, Path(folder))]
    result = {
        "dataset": args.dataset,
        "calibration": {"splits": args.split, "samples": [args.start, args.start + args.n - 1]},
        "candidates": choices,
        "chosen": {"signal": signal, "threshold": choices[signal]["threshold"]},
        "check": {
            "splits": args.check_split,
            "samples": [args.check_start, args.check_start + args.n - 1],
            **{s: balanced_accuracy(check, s, choices[s]["threshold"]) for s in SIGNALS},
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
