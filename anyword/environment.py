"""Environment variables: every one the project reads goes through :func:`read` and one of the parsers below, so a
bad value is one clear message naming the variable (and, on the command line, the same parser checks the flag that
the variable stands for).

The parsers take text and raise :class:`ValueError` with what was expected; :func:`argument_type` turns one into an
argparse type.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from anyword.errors import SettingsError

T = TypeVar("T")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def read(name: str, parse: Callable[[str], T], default: T) -> T:
    """The variable ``name`` parsed by ``parse``; ``default`` when it is unset or empty; :class:`SettingsError`
    naming the variable and what it should hold otherwise."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return parse(raw.strip())
    except ValueError as error:
        raise SettingsError(f"environment variable {name}={raw!r}: {error}") from None


def argument_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type (its message becomes argparse's one error line)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE or lowered in FALSE:
        return lowered in TRUE
    raise ValueError(f"expected 1 or 0 (also true/false, yes/no, on/off), got {text!r}")


def text(value: str) -> str:
    return value


def folder(value: str) -> Path:
    return Path(value).expanduser()


def whole_number(low: int = 0) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < low:
            raise ValueError(f"must be at least {low}, got {number}")
        return number

    parse.__name__ = "whole number"
    return parse


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return seconds


def http_url(value: str) -> str:
    """An ``http://`` or ``https://`` address with a host (never ``file:``, ``ftp:`` or a bare path)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// address with a host, got {value!r}")
    return value
