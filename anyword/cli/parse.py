"""``anyword parse CAPTION``: caption -> concepts (nouns, bound adjectives, mentions, CLIP token positions)."""

from __future__ import annotations

import argparse
import json

from anyword.cli.options import EXIT_OK, add_output_options, add_parser_options, overrides_from
from anyword.cli.runs import make_caption_parser

NAME = "parse"


def register(commands) -> None:
    parser = commands.add_parser(NAME, help="caption -> concepts (nouns, bound adjectives, mentions, tokens)")
    parser.add_argument("caption", help="the caption, in English")
    add_output_options(parser, out_help=None, progress=False)
    add_parser_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from anyword.tokens import align_tokens, load_tokenizer

    result = make_caption_parser(args, overrides_from(args)).parse(args.caption)
    alignment = align_tokens(result.caption, result.concepts, load_tokenizer())
    data = result.to_dict()
    for concept in data["concepts"]:
        tokens = alignment.for_concept(concept["id"])
        concept["tokens"] = {
            "noun": list(tokens.noun_positions),
            "adjectives": {w: list(tokens.adjective_positions(w)) for w in tokens.adjective_words},
        }
    data["token_window"] = {"caption_tokens": alignment.caption_tokens, "window": alignment.window}
    if alignment.warnings:
        data["warnings"] = [*data.get("warnings", []), *alignment.warnings]
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        _print_table(data)
    return EXIT_OK


def _print_table(data: dict) -> None:
    print(f"caption: {data['caption']}")
    parser = data["parser"]
    if data.get("fallback_reason"):
        parser += f" (fell back from {data['requested_parser']}: {data['fallback_reason']})"
    print(f"parser:  {parser}")
    rows = [("id", "kind", "phrase", "noun", "adjectives", "mentions", "tokens")]
    for c in data["concepts"]:
        mentions = " ".join(f"[{s},{e})" for s, e in c["mentions"])
        tokens = " ".join(str(p) for p in c["tokens"]["noun"])
        rows.append(
            (str(c["id"]), c["kind"], c["phrase"], c["noun"], ", ".join(c["adjectives"]) or "-", mentions, tokens)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for warning in data.get("warnings", []):
        print(f"warning: {warning}")
