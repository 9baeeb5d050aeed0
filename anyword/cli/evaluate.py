"""``anyword eval --dataset D --out RUN_DIR``: a benchmark run in the dataset's official layout and metrics,
resumable, sharded when started by ``accelerate launch``. (The shapes world's ablation and localization reports are
``anyword shapes ...``.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anyword.cli.options import (
    EXIT_OK,
    add_method_options,
    add_model_options,
    add_output_options,
    add_renamed_option,
    add_segmenter_options,
)
from anyword.cli.runs import make_pipeline, warn_cost
from anyword.cli.values import fraction, non_negative_int, positive_int
from anyword.errors import AnywordError
from anyword.evaluation import DATASETS, REFERENT_CHOICES, SHAPES_DATASET

NAME = "eval"


def register(commands) -> None:
    parser = commands.add_parser(
        NAME, help="quality on a benchmark: predictions.jsonl + summary.json in --out (resumable, shardable)"
    )
    data = parser.add_argument_group("dataset")
    data.add_argument(
        "--dataset", default=SHAPES_DATASET, choices=list(DATASETS), help="the benchmark (default: the shapes world)"
    )
    data.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's folder (official layout)")
    data.add_argument(
        "--image-root",
        default=None,
        metavar="DIR",
        help="images elsewhere (default: the layout's, e.g. DATA_ROOT/images/train2014 for the COCO-based sets)",
    )
    data.add_argument("--split", default=None, help="dataset split (default: the dataset's, e.g. val)")
    data.add_argument("--n", type=positive_int, default=None, help="number of samples (default 100)")
    data.add_argument("--start", type=non_negative_int, default=0, help="first sample index")
    data.add_argument("--image-size", type=positive_int, default=128, help="shapes datasets: scene size (pixels)")
    task = parser.add_argument_group("task")
    task.add_argument(
        "--referent",
        default=None,
        choices=REFERENT_CHOICES,
        help="referring sets: the referred object is the first concept (default) or all concepts merged",
    )
    task.add_argument(
        "--no-target",
        default=None,
        choices=("on", "off"),
        help="the rule that can answer 'nothing here' (default: on where the dataset scores it)",
    )
    task.add_argument(
        "--no-target-threshold",
        type=fraction,
        default=None,
        help="the no-target rule's threshold on its signal (default: the value chosen on validation scenes)",
    )
    task.add_argument(
        "--classes",
        default=None,
        choices=("all", "present"),
        help="pc59 captions: all 59 class names (default, OVDiff's protocol) or only the image's (an oracle)",
    )
    add_output_options(parser, "RUN_DIR: predictions.jsonl + summary.json go there; rerun to resume", required=False)
    add_model_options(parser, preset_help="model setup (default: the dataset's, e.g. shapes for shapes, else sd15)")
    add_segmenter_options(parser)
    add_method_options(parser)
    for report in ("--ablation", "--localization"):
        add_renamed_option(parser, report, f"`anyword shapes {report.removeprefix('--')}`", " (a shapes report)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """A dataset evaluation into --out: resumable, sharded when started by `accelerate launch`."""
    from anyword.evaluation import DatasetOptions, get_dataset_spec, make_task, open_dataset, print_table
    from anyword.evaluation.run import current_processes, preflight, run_evaluation

    if args.out is None:
        raise AnywordError(
            "anyword eval needs --out RUN_DIR (predictions.jsonl and summary.json go there); the shapes world's "
            "reports are `anyword shapes ablation|localization`"
        )
    spec = get_dataset_spec(args.dataset)
    preflight(Path(args.out))
    options = DatasetOptions(
        split=args.split or spec.default_split,
        root=Path(args.data_root) if args.data_root else None,
        image_root=Path(args.image_root) if args.image_root else None,
        count=args.start + (args.n or 100),
        image_size=args.image_size,
        classes=args.classes or "all",
    )
    dataset = open_dataset(args.dataset, options)
    task = make_task(
        dataset,
        referent=args.referent or "first",
        no_target=None if args.no_target is None else args.no_target == "on",
        threshold=args.no_target_threshold,
    )
    _, state = current_processes()
    device = args.device or (str(state.device) if state is not None else None)
    pipeline = make_pipeline(args, default_preset=spec.preset, device=device, progress=False)
    warn_cost(pipeline, args)
    summary = run_evaluation(
        pipeline, pipeline.settings, dataset, task, args.out, start=args.start, n=args.n, progress=not args.quiet
    )
    if summary is None:  # another process of the run: the main one reports
        return EXIT_OK
    print_table(summary)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return EXIT_OK
