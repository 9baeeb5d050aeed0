"""``anyword adapt``: train a LoRA text-encoder adapter (Segment Anyword_f) on image-caption pairs."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from anyword.cli.jsonl import beside, jsonl_lines
from anyword.cli.options import add_device_options, add_output_options, add_renamed_option, report
from anyword.cli.values import non_negative_int, positive_float, positive_int, preset_name, seed
from anyword.errors import AnywordError
from anyword.shapes.worlds import WORLDS

NAME = "adapt"


def register(commands) -> None:
    parser = commands.add_parser(
        NAME, help="train a LoRA text-encoder adapter (Segment Anyword_f) on image-caption pairs"
    )
    parser.add_argument("--preset", default=None, type=preset_name, help="the model to adapt (default sd15)")
    add_device_options(parser)
    data = parser.add_argument_group("training pairs")
    data.add_argument("--pairs", default=None, help='JSONL, one {"image": path, "caption": text} per line')
    data.add_argument("--dataset", default=None, choices=list(WORLDS), help="pairs from a synthetic world")
    data.add_argument("--split", nargs="+", default=["train"], help="shapes splits, drawn in turn (default train)")
    data.add_argument("--start", type=non_negative_int, default=20000, help="first shapes scene index")
    data.add_argument(
        "--n", type=positive_int, default=500, help="pairs to use (default 500, the paper's; drawn at random, --seed)"
    )
    lora = parser.add_argument_group("LoRA training")
    lora.add_argument("--adapt-steps", type=positive_int, default=1100, help="training steps (default 1100)")
    lora.add_argument("--rank", type=positive_int, default=16, help="LoRA rank (default 16)")
    lora.add_argument("--alpha", type=positive_float, default=None, help="LoRA alpha (default: the rank)")
    lora.add_argument("--adapt-learning-rate", type=positive_float, default=1e-4, help="AdamW rate (default 1e-4)")
    lora.add_argument("--batch-size", type=positive_int, default=4, help="pairs per step (default 4)")
    lora.add_argument("--mlp", action="store_true", help="also adapt the MLP layers (default: attention only)")
    lora.add_argument("--seed", type=seed, default=0, help="seed of the LoRA init and every step's draws")
    add_output_options(parser, out_help="adapter folder (rerun the same command to resume)")
    for old, new in (("--steps", "--adapt-steps"), ("--learning-rate", "--adapt-learning-rate")):
        add_renamed_option(parser, old, new, " (--steps and --learning-rate are prompt learning's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from anyword.diffusion.adaptation import ATTENTION_TARGETS, MLP_TARGETS, AdaptSettings, train_adapter
    from anyword.presets import DEFAULT_PRESET, get_preset

    if bool(args.pairs) == bool(args.dataset):
        raise AnywordError(f"give either --pairs FILE.jsonl or --dataset {'|'.join(WORLDS)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise AnywordError(f"--out {out} is a file; give a folder for the adapter (it is created if missing)")
    pairs, source, unreadable = _pairs_file(Path(args.pairs)) if args.pairs else _shapes_pairs(args)
    settings = AdaptSettings(
        steps=args.adapt_steps,
        rank=args.rank,
        alpha=float(args.alpha or args.rank),
        learning_rate=args.adapt_learning_rate,
        batch_size=args.batch_size,
        targets=ATTENTION_TARGETS + (MLP_TARGETS if args.mlp else ()),
        seed=args.seed,
    )
    if len(pairs) > args.n:  # appendix C.1: pairs sampled at random, not the file's first ones
        source += f" (a random {args.n} of {len(pairs)}, seed {args.seed})"
        pairs = random.Random(args.seed).sample(pairs, args.n)
    backbone = get_preset(args.preset or DEFAULT_PRESET).load(device=args.device, dtype=args.dtype)
    info = train_adapter(backbone, pairs, out, settings, pairs_source=source, progress=not args.quiet)
    summary = {**info.to_dict(), "pairs_unreadable_lines": unreadable, "out": str(out)}
    summary.pop("extra")
    return report(
        args,
        summary,
        f"adapter for {info.base} in {out}: {info.steps} steps on {info.pairs_used} pairs "
        f"({info.pairs_skipped + unreadable} skipped), final loss {info.final_loss:.4f}, {info.seconds:.0f} s",
    )


def _pairs_file(file: Path):
    """Training pairs from a JSONL file (``{"image": path, "caption": text}``, paths relative to the file); lines
    that are not such objects are counted, not fatal (unreadable images are skipped later, also counted)."""
    from anyword.diffusion.adaptation import TrainingPair
    from anyword.images import load_image

    pairs, unreadable = [], 0
    for number, line in jsonl_lines(file, "pairs"):
        try:
            item = json.loads(line)
            image, caption = item["image"], item["caption"]
            if not isinstance(image, str) or not isinstance(caption, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        image_path = beside(file, image)
        pairs.append(TrainingPair(f"line {number}", caption, lambda p=image_path: load_image(p)))
    if not pairs:
        raise AnywordError(f"{file} has no usable image-caption pair ({unreadable} unreadable lines)")
    return pairs, str(file), unreadable


def _shapes_pairs(args: argparse.Namespace):
    """Pairs from a synthetic world: scenes ``--start``.. of each ``--split`` in turn (rendered at 64 px)."""
    from anyword.diffusion.adaptation import TrainingPair
    from anyword.shapes.scenes import SPLITS

    world = WORLDS[args.dataset]
    unknown = [split for split in args.split if split not in SPLITS]
    if unknown:
        raise AnywordError(f"the shapes world has no split {unknown[0]!r}: choose from {', '.join(SPLITS)}")
    pairs = []
    for offset in range(args.n):
        split = args.split[offset % len(args.split)]
        scene = world.make_scene(split, args.start + offset // len(args.split))
        pairs.append(TrainingPair(f"{split}:{scene.index}", scene.caption, lambda s=scene: world.render(s, 64)[0]))
    source = f"{world.name} {'+'.join(args.split)} scenes {args.start}..{args.start + (args.n - 1) // len(args.split)}"
    return pairs, source, 0
