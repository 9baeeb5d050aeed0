"""COCO run-length encoding of masks, JSON-ready: ``{"size": [h, w], "counts": str}`` (pycocotools' compressed
RLE with ``counts`` as text). Masks are bool ``(H, W)``."""

from __future__ import annotations

import numpy as np


def encode(mask: np.ndarray) -> dict:
    """A bool ``(H, W)`` mask as COCO RLE with text counts."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask).astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`encode` (also takes bytes counts): a bool ``(H, W)`` mask."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    compressed = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(compressed).astype(bool)
