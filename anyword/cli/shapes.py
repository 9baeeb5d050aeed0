"""``anyword shapes ablation | localization | sam | train | train-sam``: the synthetic worlds' reports, their
diffusion models' training and the training of the SAM of world 2.

The reports print one JSON object (``--json``) or the same indented; both are pure functions of the split, the scene
indices, the shipped weights and the settings (docs/benchmarks.md pastes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anyword.cli.options import (
    EXIT_OK,
    add_device_options,
    add_method_options,
    add_model_options,
    add_output_options,
    add_renamed_option,
    add_segmenter_options,
)
from anyword.cli.runs import make_pipeline
from anyword.cli.values import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    seed,
    timestep,
)
from anyword.errors import AnywordError
from anyword.evaluation import SHAPES_DATASET
from anyword.shapes.ablation import ABLATION
from anyword.shapes.scenes import SPLITS
from anyword.shapes.worlds import WORLDS, get_world

NAME = "shapes"


def register(commands) -> None:
    parser = commands.add_parser(NAME, help="the shapes world: the paper's ablation, word localisation, training")
    reports = parser.add_subparsers(dest="report", required=True, metavar="REPORT")
    ablation = reports.add_parser("ablation", help="one row per configuration of the paper's Table 6 (plain ... full)")
    _scene_options(ablation, default_n=100)
    _world_option(ablation)
    ablation.add_argument("--image-size", type=positive_int, default=128, help="rendered scene size (pixels)")
    ablation.add_argument(
        "--rows", nargs="+", choices=list(ABLATION), default=list(ABLATION), help="rows to run (default: all)"
    )
    add_output_options(ablation, out_help=None)
    add_model_options(ablation, preset_help="model setup (default: the world's)", model=False)
    add_segmenter_options(ablation, checkpoint=False)
    add_method_options(ablation)
    ablation.set_defaults(run=run_ablation)
    localization = reports.add_parser(
        "localization", help="does each word's attention point at its shape? (no segmentation, no learning)"
    )
    _scene_options(localization, default_n=100)
    _world_option(localization)
    add_device_options(localization)
    add_output_options(localization, out_help=None)
    localization.set_defaults(run=run_localization)
    sam = reports.add_parser("sam", help="the SAM trained in world 2 on held-out scenes: one-point mIoU, granularity")
    _scene_options(sam, default_n=100)
    sam.add_argument("--checkpoint", default=None, metavar="DIR", help="a trained SAM's folder (default: shipped)")
    add_output_options(sam, out_help=None)
    sam.set_defaults(run=run_sam_report)
    train = reports.add_parser("train", help="train the shapes model (the shipped recipe by default)")
    _train_options(train)
    train.set_defaults(run=run_train)
    train_sam = reports.add_parser("train-sam", help="train world 2's SAM (the shipped recipe by default)")
    _train_sam_options(train_sam)
    train_sam.set_defaults(run=run_train_sam)


def _world_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", choices=list(WORLDS), default=SHAPES_DATASET, help="scene family (default "
                        f"{SHAPES_DATASET}; parts: objects with parts)")  # fmt: skip


def _scene_options(parser: argparse.ArgumentParser, default_n: int) -> None:
    group = parser.add_argument_group("scenes")
    group.add_argument("--split", default="seen", choices=SPLITS, help="split (test: seen, novel)")
    group.add_argument("--n", type=positive_int, default=default_n, help=f"scenes (default {default_n})")
    group.add_argument("--start", type=non_negative_int, default=0, help="first scene index")


def run_ablation(args: argparse.Namespace) -> int:
    return world_ablation(args, args.world, args.rows)


def world_ablation(args: argparse.Namespace, world: str, rows: list[str]) -> int:
    """The ablation of ``world`` as ``args`` say (``anyword shapes ablation`` and ``anyword eval --ablation``)."""
    from anyword.shapes.ablation import ablation

    pipeline = make_pipeline(args, default_preset=get_world(world).preset, progress=False)
    variants = {name: ABLATION[name] for name in ABLATION if name in rows}
    result = ablation(
        pipeline, args.split, args.n, variants, args.image_size, args.start, progress=not args.quiet, world=world
    )
    return _print(result, args)


def run_sam_report(args: argparse.Namespace) -> int:
    from anyword.shapes.sam_report import sam_report

    return _print(sam_report(args.split, args.n, args.start, args.checkpoint, progress=not args.quiet), args)


def run_localization(args: argparse.Namespace) -> int:
    from anyword.presets import get_preset
    from anyword.settings import Overrides, PipelineSettings, apply_overrides
    from anyword.shapes.localization import localization

    preset = get_preset(get_world(args.world).preset)
    backbone = preset.load(device=args.device, dtype=args.dtype)
    no_learning = Overrides(learning_steps=0)
    rows = {  # the paper's averaging (its grid, every timestep) and the preset's (chosen on validation scenes)
        "paper": apply_overrides(PipelineSettings(), no_learning).diffusion,
        "preset": preset.settings(no_learning).diffusion,
    }
    report = {
        name: localization(
            backbone, settings, args.split, args.n, args.start, progress=not args.quiet, world=args.world
        )
        for name, settings in rows.items()
    }
    return _print({"dataset": args.world, "localization": report}, args)


def _print(result: dict, args: argparse.Namespace) -> int:
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return EXIT_OK


def _train_options(parser: argparse.ArgumentParser) -> None:
    from anyword.shapes.training import TrainConfig

    default = TrainConfig()
    from anyword.shapes.worlds import WORLDS

    parser.add_argument("--out", type=Path, required=True, help="model folder (rerun the same command to resume)")
    parser.add_argument("--world", choices=list(WORLDS), default=default.world, help="scene family to train on")
    parser.add_argument("--init", default=None, help="start from this model folder's weights (default: random init)")
    numbers = {
        "--train-steps": ("steps", positive_int, "training steps"),
        "--batch-size": ("batch_size", positive_int, "scenes per step"),
        "--train-learning-rate": ("learning_rate", positive_float, "AdamW rate"),
        "--seed": ("seed", seed, "model init and noise"),
        "--threads": ("threads", positive_int, "torch CPU threads"),
        "--workers": ("workers", non_negative_int, "data-loading processes (scenes are drawn on the CPU)"),
        "--max-seconds": ("max_seconds", positive_float, "stop early (and save) after this long"),
        "--same-colour": ("same_colour", probability, "share of one-colour training scenes"),
        "--absent-words": ("absent_words", probability, "share of captions naming an absent shape"),
        "--qk-gain": ("qk_gain", positive_float, "initial cross-attention query/key weight scale"),
        "--text-norm-gain": ("text_norm_gain", positive_float, "initial text final layer-norm scale"),
        "--grounding-weight": ("grounding_weight", non_negative_float, "weight of the token-grounding loss (0: off)"),
        "--pixel-weight": ("pixel_weight", non_negative_float, "weight of the pixel-grounding loss (0: off)"),
        "--grounding-max-t": ("grounding_max_t", timestep, "supervise attention only below this timestep"),
    }
    _config_options(parser, default, numbers)
    parser.add_argument("--no-autocast", dest="autocast", action="store_false", help="fp32 instead of bf16 autocast")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    for old, new in (("--steps", "--train-steps"), ("--lr", "--train-learning-rate")):
        add_renamed_option(parser, old, new, " (--steps and --learning-rate are prompt learning's)")


def _config_options(parser: argparse.ArgumentParser, default, numbers: dict) -> None:
    """One option per ``flag: (config field, type, help)``, defaulting to ``default``'s value (shown in the help)."""
    for flag, (field, kind, help_text) in numbers.items():
        value = getattr(default, field)
        parser.add_argument(flag, dest=field, type=kind, default=value, help=f"{help_text} (default {value})")


def _train_sam_options(parser: argparse.ArgumentParser) -> None:
    from anyword.shapes.sam_training import SamTrainConfig

    default = SamTrainConfig()
    parser.add_argument("--out", type=Path, required=True, help="SAM folder (rerun the same command to resume)")
    numbers = {
        "--train-steps": ("steps", positive_int, "training steps"),
        "--images": ("images", positive_int, "scenes per step"),
        "--targets": ("targets", positive_int, "prompted wholes or parts per scene"),
        "--corrections": ("corrections", non_negative_int, "corrective clicks after the first point"),
        "--train-learning-rate": ("learning_rate", positive_float, "AdamW rate"),
        "--seed": ("seed", seed, "model init and prompts"),
        "--threads": ("threads", positive_int, "torch CPU threads"),
        "--max-seconds": ("max_seconds", positive_float, "stop early (and save) after this long"),
    }
    _config_options(parser, default, numbers)


def run_train_sam(args: argparse.Namespace) -> int:
    from anyword.shapes.sam_training import SamTrainConfig, train_sam

    return _train(args, SamTrainConfig, train_sam, ("steps_done", "train_seconds", "parameters"))


def run_train(args: argparse.Namespace) -> int:
    from anyword.shapes.training import TrainConfig, train

    return _train(args, TrainConfig, train, ("steps", "train_seconds", "final_loss_ema", "text_gain"))


def _train(args: argparse.Namespace, config_class, train, shown: tuple[str, ...]) -> int:
    """Build ``config_class`` from the options of the same names, train into ``--out`` and print ``shown``."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_class)}
    config = config_class(**{name: value for name, value in vars(args).items() if name in fields})
    try:
        info = train(args.out, config)
    except ValueError as error:  # a checkpoint written with other settings
        raise AnywordError(str(error)) from None
    print(json.dumps({k: info[k] for k in shown}))
    return EXIT_OK
