"""Argparse value types: numbers within bounds, seeds, presets. A bad value is argparse's one ``error:`` line naming
the option (exit status 2)."""

from __future__ import annotations

import argparse
import math

from anyword.seeds import MAX_SEED


def number(
    kind: type,
    low: float | None = None,
    high: float | None = None,
    inclusive: bool = True,
    low_inclusive: bool | None = None,
):
    """An argparse type: a number of ``kind`` within ``[low, high]`` (open bounds when not ``inclusive``;
    ``low_inclusive`` overrides it for the lower bound alone, e.g. ``(0, 600]``)."""
    low_closed = inclusive if low_inclusive is None else low_inclusive

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {'whole number' if kind is int else 'number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        below = low is not None and (value < low if low_closed else value <= low)
        above = high is not None and (value > high if inclusive else value >= high)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high, low_closed, inclusive)}, got {value}")
        return value

    return convert


def _bounds(low, high, low_closed: bool, inclusive: bool) -> str:
    if high is None:
        return f"at least {low}" if low_closed else f"greater than {low}"
    if low_closed != inclusive:
        lower = f"{'at least' if low_closed else 'greater than'} {low}"
        return f"{lower} and {'at most' if inclusive else 'less than'} {high}"
    return f"between {low} and {high}" + ("" if inclusive else " (exclusive)")


positive_int = number(int, 1)
non_negative_int = number(int, 0)
fraction = number(float, 0.0, 1.0, inclusive=False)  # (0, 1): thresholds
probability = number(float, 0.0, 1.0)  # [0, 1]
positive_float = number(float, 0.0, inclusive=False)
non_negative_float = number(float, 0.0)
seed = number(int, 0, MAX_SEED)
timestep = number(int, 1, 1000)  # a diffusion training timestep (1000 of them)


def preset_name(name: str) -> str:
    """A name from the preset registry (read only when a command takes a preset)."""
    from anyword.presets import PRESETS

    if name not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return name
