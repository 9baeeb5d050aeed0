"""Seeds: one range for every seeded stage (prompt learning, point sampling), checked where a user types one.

NumPy's and torch's generators take larger integers, but torch raises an overflow past 2**64 and NumPy's legacy
seeding stops at 2**32; one documented range keeps results reproducible across both.
"""

from __future__ import annotations

import math

from anyword.errors import SettingsError

MAX_SEED = 2**32 - 1


def check_seed(value: object) -> int:
    """``value`` as a seed in ``[0, MAX_SEED]``, or :class:`SettingsError` saying what is allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise SettingsError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {value!r}")
    seed = int(value)
    if not 0 <= seed <= MAX_SEED:
        raise SettingsError(f"the seed must be a whole number from 0 to {MAX_SEED}; {seed} is out of range")
    return seed
