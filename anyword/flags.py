"""Command-line conventions shared by ``anyword`` (:mod:`anyword.cli`) and the demo's launcher (``app.py``), which
must not import each other: the dtype names, and flags kept for one release under an old name."""

from __future__ import annotations

import argparse
import sys

DTYPE_CHOICES = ("fp16", "bf16", "fp32")  # what anyword.devices reads (named here so help texts need no torch)


class DeprecatedFlag(argparse.Action):
    """A store-true flag under its old name (``nargs=0``): sets ``dest`` and says the new name on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use --{self.dest.replace('_', '-')}", file=sys.stderr)
        setattr(namespace, self.dest, True)
