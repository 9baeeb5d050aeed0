"""``anyword bench``: time and memory of inversion, denoising, attention and prompt learning, as one JSON object."""

from __future__ import annotations

import argparse
import json

from anyword.cli.options import EXIT_OK, add_adapter_option, add_device_options, add_output_options
from anyword.cli.values import positive_int, preset_name, seed

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
        "--speed",
        action="store_true",
        help="also time the compiled path (compiled prompt learning, channels-last, no per-step sync) against "
        "eager, with ratios, its warm-up and its distance from the eager results",
    )
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
    if args.speed:
        result.update(bench.run_speed_benchmark(preset, dtype=args.dtype, learning_steps=args.steps, **common))
    if args.edit:
        result.update(bench.run_edit_benchmark(preset, dtype=args.dtype, **common))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return EXIT_OK
