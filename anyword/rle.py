"""COCO run-length encoding of masks, JSON-ready: ``{"size": [h, w], "counts": str}`` (pycocotools' compressed
RLE with ``counts`` as text). Masks are bool ``(H, W)``.

Decoding is done here, not by pycocotools: an RLE read from a file (a dataset's annotation, a run's
``predictions.jsonl``) declares its own size and run lengths, and pycocotools trusts both (a size of 100000 x 100000
allocates 9 GB; run lengths that add up to more than the size write past the buffer). :func:`decode` checks the
size against the pixel limit (and the size the caller expects) and the runs against the size before one pixel is
written.
"""

from __future__ import annotations

import numpy as np

from anyword.errors import AnywordError
from anyword.images import MAX_IMAGE_PIXELS as MAX_MASK_PIXELS  # a mask is never larger than an image we read


class RleError(AnywordError):
    """An RLE that cannot be a mask of the size it claims (or of the size expected)."""


def encode(mask: np.ndarray) -> dict:
    """A bool ``(H, W)`` mask as COCO RLE with text counts."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask).astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: object, size: tuple[int, int] | None = None) -> np.ndarray:
    """A bool ``(H, W)`` mask from COCO RLE: ``counts`` compressed (text or bytes) or uncompressed (a list of run
    lengths). :class:`RleError` for anything else, for a size other than ``size`` (when given) or over
    :data:`MAX_MASK_PIXELS`, and for runs that do not add up to the size."""
    height, width = check_size(rle, size)
    counts = _counts(rle["counts"])
    if counts.size and counts.min() < 0:
        raise RleError("RLE run lengths must not be negative")
    if int(counts.sum()) != height * width:
        raise RleError(
            f"RLE runs cover {int(counts.sum())} pixels, not the {height}x{width} = {height * width} it claims"
        )
    values = np.arange(counts.size) % 2 == 1  # runs alternate 0, 1, 0, ... starting with background
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T  # column-major, as COCO stores masks


def check_size(rle: object, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(height, width)`` an RLE declares, checked: two positive whole numbers, at most
    :data:`MAX_MASK_PIXELS` pixels, equal to ``size`` when given."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise RleError('an RLE is an object with "size" and "counts"')
    declared = rle["size"]
    if (
        not isinstance(declared, (list, tuple))
        or len(declared) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in declared)
    ):
        raise RleError(f"RLE size must be [height, width], two positive whole numbers, not {declared!r}")
    height, width = declared
    if size is not None and (height, width) != tuple(size):
        raise RleError(f"RLE size {height}x{width} differs from the image's {size[0]}x{size[1]}")
    if height * width > MAX_MASK_PIXELS:
        raise RleError(f"RLE size {height}x{width} is over the {MAX_MASK_PIXELS / 1e6:.0f} MP limit")
    return height, width


def _counts(counts: object) -> np.ndarray:
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise RleError("uncompressed RLE counts must be whole numbers")
        return np.asarray(counts, dtype=np.int64)
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if not isinstance(counts, str):
        raise RleError(f"RLE counts must be text or a list of numbers, not {type(counts).__name__}")
    return np.asarray(_uncompress(counts), dtype=np.int64)


def _uncompress(text: str) -> list[int]:
    """COCO's compressed counts (``maskApi.c`` ``rleFrString``): 5 bits per character from ``'0'``, a
    continuation bit, the sign of the last group, and each run after the second stored as the difference from the
    run two before it."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value = shift = 0
        more = True
        while more:
            if position >= len(text):
                raise RleError("compressed RLE counts end in the middle of a number")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise RleError(f"compressed RLE counts hold a character outside COCO's alphabet: {text[position]!r}")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
