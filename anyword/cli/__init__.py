"""Command line: ``anyword parse | segment | pairs | adapt | eval | bench | presets | download | shapes``.

Each subcommand is one module with ``register(commands)`` and ``run(args)``; the option groups they share and the
translation of options into the library's settings are in :mod:`anyword.cli.options`. Errors the user can fix
(:class:`~anyword.errors.AnywordError`) print one ``error: ...`` line to stderr and exit with status 2; anything
else is a bug and exits with status 1 (``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from anyword.cli import adapt, bench, download, evaluate, pairs, parse, presets, segment, shapes, stability
from anyword.cli.options import EXIT_BROKEN_PIPE, EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from anyword.errors import AnywordError

COMMANDS = (parse, segment, stability, pairs, adapt, evaluate, bench, presets, download, shapes)

__all__ = ["EXIT_BUG", "EXIT_OK", "EXIT_USAGE", "build_argument_parser", "main"]


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anyword",
        description="Segment Anyword: segment every object a caption names, with a frozen diffusion model and a "
        "promptable segmenter.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_argument_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "openai"):  # their debug lines carry request details, even with --debug
        logging.getLogger(noisy).setLevel(logging.INFO)
    try:
        return args.run(args)
    except BrokenPipeError:
        return _closed_pipe()
    except AnywordError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            raise
        print(
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_BUG


def _closed_pipe() -> int:
    """The reader of our output went away (``anyword ... | head``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit cannot fail again
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE
