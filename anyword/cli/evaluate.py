"""``anyword eval --dataset D --out RUN_DIR``: a benchmark run in the dataset's official layout and metrics,
resumable, sharded when started by ``accelerate launch``. (The shapes world's ablation and localization reports are
``anyword shapes ...``.)"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anyword.cli.options import (
    EXIT_OK,
    add_dataset_options,
    add_method_options,
    add_model_options,
    add_output_options,
    add_parser_options,
    add_renamed_option,
    add_segmenter_options,
)
from anyword.cli.runs import dataset_from, make_pipeline, warn_cost
from anyword.cli.values import fraction, non_negative_int, positive_int, seed
from anyword.errors import AnywordError
from anyword.evaluation import RECALL_MODEL, REFERENT_CHOICES, SCORING_CHOICES, SHAPES_DATASET

NAME = "eval"
DRAW_SCENES = 1000  # the shapes world's scenes --draw picks from (a benchmark's split is what it holds)


def register(commands) -> None:
    parser = commands.add_parser(
        NAME, help="quality on a benchmark: predictions.jsonl + summary.json in --out (resumable, shardable)"
    )
    data = add_dataset_options(
        parser, dataset_default=SHAPES_DATASET, split_help="dataset split (default: the dataset's, e.g. val)"
    )
    data.add_argument("--n", type=positive_int, default=None, help="number of samples (default 100)")
    data.add_argument("--start", type=non_negative_int, default=0, help="first sample index")
    data.add_argument(
        "--draw",
        type=seed,
        default=None,
        metavar="SEED",
        help="draw the --n samples at random from the whole split with this seed (appendix F: 100 random RefCOCO "
        "pairs) instead of a slice from --start",
    )
    task = parser.add_argument_group("task")
    task.add_argument(
        "--referent",
        default="match",
        choices=REFERENT_CHOICES,
        help="referring sets: which concept's mask answers: match (the one overlapping the ground truth most, the "
        "paper's IoU cross-matching; default), subject (the parser's referred subject, appendix F), first, or all "
        "merged",
    )
    task.add_argument(
        "--no-target",
        default="off",
        choices=("on", "off"),
        help="a rule that can answer 'nothing here' (default off: the paper describes none)",
    )
    task.add_argument(
        "--no-target-threshold",
        type=fraction,
        default=None,
        help="the no-target rule's threshold on its signal (default: the value chosen on validation scenes)",
    )
    task.add_argument(
        "--score-at",
        default=None,
        choices=SCORING_CHOICES,
        help="referring sets: score masks at the image's size (native) or at 480x480 as ReLA and LAVT do "
        "(official; default for gRefCOCO and RefCOCO/+/g)",
    )
    task.add_argument(
        "--recall-model",
        default=RECALL_MODEL,
        metavar="NAME|DIR",
        help=f"GranDf recall: the BERT model of GLaMM's phrase test (default {RECALL_MODEL}; hub id or folder)",
    )
    task.add_argument(
        "--classes",
        default=None,
        choices=("all", "present"),
        help="pc59 captions: all 59 class names (default, OVDiff's protocol) or only the image's (an oracle)",
    )
    add_output_options(
        parser, "RUN_DIR: predictions.jsonl, parses.jsonl, summary.json go there; rerun to resume", required=False
    )
    add_model_options(
        parser, preset_help="model setup (default: the dataset's: ldm, the paper's backbone; shapes for shapes)"
    )
    add_segmenter_options(parser)
    add_method_options(parser)
    add_parser_options(parser)
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="shapes worlds: print the paper's Table 6 rows (plain ... full, then GrabCut) instead of a run folder; "
        "the same as `anyword shapes ablation --world DATASET`",
    )
    parser.add_argument(
        "--stability",
        action="store_true",
        help="also measure stability across wordings (a ref's sentences; a shapes scene's paraphrases): "
        "stability.json and the summary's 'stability' (IoU mean and std per target, mask agreement, easy/medium/hard)",
    )
    add_renamed_option(parser, "--localization", "`anyword shapes localization`", " (a shapes report)")
    parser.set_defaults(run=run)


def _add_stability(args: argparse.Namespace, dataset, task, summary: dict) -> dict:
    from anyword.evaluation.run import SUMMARY, chosen_samples
    from anyword.evaluation.stability import run_stability

    per_item = dataset.samples_per_item
    samples = chosen_samples(dataset, args.start * per_item, args.n * per_item if args.n else None, args.draw)
    summary = {**summary, "stability": run_stability(args.out, dataset, task, samples)}
    (Path(args.out) / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def _ablation(args: argparse.Namespace) -> int:
    from anyword.cli.shapes import world_ablation
    from anyword.shapes.ablation import ABLATION
    from anyword.shapes.worlds import WORLDS

    if args.dataset not in WORLDS:
        raise AnywordError(f"--ablation runs on the synthetic worlds ({', '.join(WORLDS)}), not {args.dataset}")
    args.split, args.n = args.split or "seen", args.n or 100
    return world_ablation(args, args.dataset, list(ABLATION))


def run(args: argparse.Namespace) -> int:
    """A dataset evaluation into --out: resumable, sharded when started by `accelerate launch`."""
    from anyword.evaluation import get_dataset_spec, make_task, print_table
    from anyword.evaluation.run import current_processes, preflight, run_evaluation

    if args.ablation:
        return _ablation(args)
    if args.out is None:
        raise AnywordError(
            "anyword eval needs --out RUN_DIR (predictions.jsonl and summary.json go there); the shapes world's "
            "reports are `anyword shapes ablation|localization`"
        )
    spec = get_dataset_spec(args.dataset)
    preflight(Path(args.out))
    scenes = args.start + (args.n or 100) if args.draw is None else DRAW_SCENES
    dataset = dataset_from(args, split=args.split or spec.default_split, count=scenes, wordings=args.stability)
    stability = args.stability and dataset.no_wordings is None
    if args.stability and not stability:
        print(f"note: --stability skipped: {dataset.name} {dataset.no_wordings}", file=sys.stderr)
    per_item = dataset.samples_per_item  # --start and --n count scenes; each has several wordings
    task = make_task(
        dataset,
        referent=args.referent,
        no_target=args.no_target == "on",
        threshold=args.no_target_threshold,
        score_at=args.score_at,
        recall_model=args.recall_model,
    )
    _, state = current_processes()
    device = args.device or (str(state.device) if state is not None else None)
    prompt = "referring" if args.referent == "subject" else "concepts"  # appendix F's prompt asks for the subject
    pipeline = make_pipeline(args, default_preset=spec.preset, device=device, progress=False, prompt=prompt)
    warn_cost(pipeline, args)
    summary = run_evaluation(
        pipeline,
        pipeline.settings,
        dataset,
        task,
        args.out,
        start=args.start * per_item,
        n=args.n * per_item if args.n else None,
        progress=not args.quiet,
        draw_seed=args.draw,
    )
    if summary is None:  # another process of the run: the main one reports
        return EXIT_OK
    if stability:
        summary = _add_stability(args, dataset, task, summary)
    print_table(summary)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return EXIT_OK
