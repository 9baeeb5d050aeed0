"""``anyword bench``: time and memory of inversion, denoising, attention and prompt learning, as one JSON object."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anyword.cli.options import EXIT_OK, add_adapter_option, add_device_options, add_output_options
from anyword.cli.values import positive_int, preset_name, seed
from anyword.flags import DeprecatedFlag

NAME = "bench"


def register(commands) -> None:
    parser = commands.add_parser(NAME, help="time and memory of inversion, denoising, attention, prompt learning")
    parser.add_argument("--preset", default=None, type=preset_name, help="model setup (default tiny)")
    add_device_options(parser)
    parser.add_argument("--steps", type=positive_int, default=5, help="timed prompt-learning steps (default 5)")
    parser.add_argument(
        "--inversion-steps", type=positive_int, default=50, help="DDIM steps per timed inversion/denoising (default 50)"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved denoising runs (median)")
    parser.add_argument("--seed", type=seed, default=0)
    add_adapter_option(parser)
    parser.add_argument(
        "--edit", action="store_true", help="also time a full pipeline run against re-segmenting after a point edit"
    )
    parser.add_argument(
        "--segmenters",
        action="store_true",
        help="also time each promptable segmenter's image encoder and mask decoder (sizes as the preset gives)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the compiled path (compiled prompt learning, channels-last, no per-step sync) against "
        "eager, with ratios, its warm-up and its distance from the eager results",
    )
    # Its old name; --speed NAME now picks how the UNet runs on the other commands.
    parser.add_argument("--speed", action=DeprecatedFlag, nargs=0, dest="compiled", help=argparse.SUPPRESS)
    parser.add_argument(
        "--first-result",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time a visitor's first result (parse + attention + masks) on the baseline, eager and preset's "
        "paths, with warm-up, per-stage seconds, parity and the UNet's GFLOP/s against a matmul's (default: on "
        "for presets whose settings were chosen for speed)",
    )
    parser.add_argument("--image", type=Path, default=None, help="first-result image (default: seeded random)")
    parser.add_argument("--caption", default=None, help="first-result caption (default: the bench's)")
    add_output_options(parser, out_help=None, progress=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from anyword import bench
    from anyword.presets import TEST_PRESET

    preset, common = args.preset or TEST_PRESET, {"device": args.device, "seed": args.seed}
    result = bench.run_benchmark(
        preset,
        inversion_steps=args.inversion_steps,
        learning_steps=args.steps,
        repeats=args.repeats,
        dtype=args.dtype,
        adapter=args.adapter,
        **common,
    )
    if args.segmenters:
        result.update(bench.run_segmenter_benchmark(preset, **common))
    if args.compiled:
        result.update(bench.run_speed_benchmark(preset, dtype=args.dtype, learning_steps=args.steps, **common))
    if _first_result(args, preset):
        from anyword.images import load_image

        image = load_image(args.image) if args.image else None
        result.update(bench.run_rate_benchmark(preset, dtype=args.dtype, **common))
        caption = args.caption or bench.BENCH_CAPTION
        result.update(bench.run_first_result_benchmark(preset, image, caption, dtype=args.dtype, **common))
    if args.edit:
        result.update(bench.run_edit_benchmark(preset, dtype=args.dtype, **common))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return EXIT_OK


def _first_result(args: argparse.Namespace, preset: str) -> bool:
    from anyword.presets import get_preset

    return args.first_result if args.first_result is not None else get_preset(preset).reference is not None
