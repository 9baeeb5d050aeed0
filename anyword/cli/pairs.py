"""``anyword pairs``: a random, seeded sample of a dataset's training split as ``anyword adapt --pairs`` input."""

from __future__ import annotations

import argparse
from pathlib import Path

from anyword.cli.options import add_dataset_options, report
from anyword.cli.runs import dataset_from
from anyword.cli.values import positive_int, seed
from anyword.errors import AnywordError

NAME = "pairs"
SHAPES_SCENES = 20000  # how many shapes scenes the world's training split offers to draw from


def register(commands) -> None:
    parser = commands.add_parser(
        NAME, help="draw image-text pairs at random from a training split (input of `anyword adapt --pairs`)"
    )
    data = add_dataset_options(parser, dataset_default=None, split_help="the split to draw from (default train)")
    data.add_argument("--n", type=positive_int, default=500, help="pairs to draw (default 500, appendix C.1)")
    data.add_argument("--seed", type=seed, default=0, help="seed of the draw (default 0)")
    parser.add_argument("--out", required=True, metavar="FILE", help="pairs JSONL to write")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from anyword.evaluation.pairs import write_pairs

    out = Path(args.out)
    if out.is_dir():
        raise AnywordError(f"--out {out} is a folder; give the pairs file to write (JSONL)")
    dataset = dataset_from(args, split=args.split or "train", count=SHAPES_SCENES)
    draw = write_pairs(dataset, args.n, args.seed, out)
    summary = {
        "dataset": dataset.name,
        "split": dataset.split,
        "seed": args.seed,
        "requested": args.n,
        "pairs": len(draw.pairs),
        "candidates": draw.candidates,
        "left_out": len(draw.left_out),
        "left_out_examples": draw.left_out[:20],
        "out": str(out),
    }
    return report(
        args,
        summary,
        f"{len(draw.pairs)} pairs drawn at random (seed {args.seed}) from {draw.candidates} usable samples of "
        f"{dataset.name} {dataset.split} ({len(draw.left_out)} left out) -> {out}",
    )
