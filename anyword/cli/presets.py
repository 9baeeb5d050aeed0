"""``anyword presets``: the model setups, their segmenters and whether their weights are here."""

from __future__ import annotations

import argparse
import json

from anyword.cli.options import EXIT_OK, add_output_options
from anyword.segment import SEGMENTERS

NAME = "presets"


def register(commands) -> None:
    parser = commands.add_parser(NAME, help="the model setups, their segmenters and whether their weights are here")
    add_output_options(parser, out_help=None, progress=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from anyword.presets import PRESETS

    rows = [preset.to_dict() for preset in PRESETS.values()]
    segmenters = [spec.to_dict() for spec in SEGMENTERS.values()]
    if args.json:
        print(json.dumps({"presets": rows, "segmenters": segmenters}, ensure_ascii=False))
        return EXIT_OK
    for row in rows:
        _print_preset(row)
    print("segmenters: " + ", ".join(spec["key"] for spec in segmenters))
    return EXIT_OK


def _print_preset(row: dict) -> None:
    weights = row["weights"]["backbone"]
    state = "available" if row["available"] else "NOT AVAILABLE"
    random = ", random weights" if row["random_weights"] else ""
    print(f"{row['name']:12s} {state} ({weights['state']}{random}) - {row['description']}")
    named = row["segmenter"] + (f" ({row['segmenter_model']})" if row["segmenter_model"] else "")
    print(f"{'':12s} backbone {row['backbone']}; segmenter {named}; {row['learning_steps']} steps; {row['speed']}")
    where = weights["reason"] or weights["where"]
    if where:
        print(f"{'':12s} weights: {where}")
    segmenter = row["weights"]["segmenter"]
    if not segmenter["ready"]:
        print(f"{'':12s} segmenter: {segmenter['reason']}")
