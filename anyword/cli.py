"""Command line: ``anyword parse | segment | bench | eval``.

Errors the user can fix (:class:`~anyword.errors.AnywordError`) print one ``error: ...`` line to stderr and exit
with status 2; anything else is a bug and exits with status 1 (``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from anyword.errors import AnywordError

EXIT_OK, EXIT_BUG, EXIT_USAGE = 0, 1, 2
PRESET_NAMES = ("sd15", "sd14", "sd15-random", "tiny", "shapes")

logger = logging.getLogger("anyword")


def _add_parser_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("caption parsing")
    group.add_argument(
        "--parser",
        choices=("spacy", "openai"),
        default="spacy",
        help="spaCy (offline, default) or an OpenAI-compatible LLM (key from OPENAI_API_KEY)",
    )
    group.add_argument("--predicates", action="store_true", help="also segment verbs such as 'holding' (sec. 3.3)")
    group.add_argument(
        "--keep-frame-nouns",
        action="store_true",
        help="treat 'image', 'photo', 'scene', 'left', 'background' ... as concepts too",
    )
    group.add_argument("--llm-model", default=None, help="LLM name for --parser openai (default gpt-4o)")
    group.add_argument(
        "--base-url", default=None, help="OpenAI-compatible server URL (default: OPENAI_BASE_URL, else OpenAI)"
    )
    group.add_argument("--llm-timeout", type=float, default=None, help="seconds to wait for the LLM (default 30)")


def _make_parser(args: argparse.Namespace):
    from anyword.parsing import DEFAULT_MODEL, DEFAULT_TIMEOUT_S, ParseSettings, make_parser

    settings = ParseSettings(predicates=args.predicates)
    if args.keep_frame_nouns:
        settings = ParseSettings(predicates=args.predicates, frame_nouns=frozenset(), location_nouns=frozenset())
    return make_parser(
        args.parser,
        settings,
        model=args.llm_model or DEFAULT_MODEL,
        base_url=args.base_url,
        timeout_s=args.llm_timeout or DEFAULT_TIMEOUT_S,
    )


# --- parse ---------------------------------------------------------------------------------------------------


def cmd_parse(args: argparse.Namespace) -> int:
    from anyword.tokens import align_tokens, load_tokenizer

    result = _make_parser(args).parse(args.caption)
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
        return EXIT_OK
    _print_parse(data)
    return EXIT_OK


def _print_parse(data: dict) -> None:
    print(f"caption: {data['caption']}")
    parser = data["parser"]
    if data.get("fallback_reason"):
        parser += f" (fell back from {data['requested_parser']}: {data['fallback_reason']})"
    print(f"parser:  {parser}")
    rows = [("id", "kind", "phrase", "noun", "adjectives", "mentions", "tokens")]
    for c in data["concepts"]:
        rows.append(
            (
                str(c["id"]),
                c["kind"],
                c["phrase"],
                c["noun"],
                ", ".join(c["adjectives"]) or "-",
                " ".join(f"[{s},{e})" for s, e in c["mentions"]),
                " ".join(str(p) for p in c["tokens"]["noun"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for warning in data.get("warnings", []):
        print(f"warning: {warning}")


# --- bench ---------------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from anyword.bench import run_benchmark

    result = run_benchmark(
        preset=args.preset,
        device=args.device,
        steps=args.steps,
        learning_steps=args.learning_steps,
        repeats=args.repeats,
        dtype=args.dtype,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return EXIT_OK


# --- entry point ---------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anyword",
        description="Segment Anyword: segment every object a caption names, with a frozen Stable Diffusion and SAM.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parse = commands.add_parser("parse", help="caption -> concepts (nouns, bound adjectives, mentions, tokens)")
    parse.add_argument("caption", help="the caption, in English")
    parse.add_argument("--json", action="store_true", help="print exactly one JSON object")
    _add_parser_options(parse)
    parse.set_defaults(handler=cmd_parse)

    bench = commands.add_parser("bench", help="time and memory of inversion, denoising, attention, prompt learning")
    bench.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="default: tiny")
    bench.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    bench.add_argument("--dtype", default=None, choices=("fp16", "bf16", "fp32"), help="default: fp16 on CUDA")
    bench.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps per timed phase (default 50)")
    bench.add_argument("--learning-steps", type=_positive_int, default=5, help="timed prompt-learning steps")
    bench.add_argument("--repeats", type=_positive_int, default=3, help="interleaved denoising runs (median)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", action="store_true", help="print exactly one JSON object")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except AnywordError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
