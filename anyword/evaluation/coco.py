"""COCO-format annotations as the referring datasets ship them (``instances.json``): images, annotations and
categories, with masks decoded the way the official ``refer.py`` / ``grefer.py`` decode them (polygons, or RLE
compressed or not, rasterised at the image's size by pycocotools; several polygons of one object merged).

Masks are bool ``(H, W)`` arrays at the image's size; RLE is COCO's ``{"size": [h, w], "counts": str}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anyword.errors import AnywordError


class DatasetError(AnywordError):
    """A dataset file is missing or not in the layout its official loader reads."""


def read_json(path: Path, what: str):
    """The JSON at ``path``; a missing or malformed file is one clear :class:`DatasetError`."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None


def segmentation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """An annotation's ``segmentation`` (polygon list, uncompressed RLE or compressed RLE) as a bool mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one object may have several parts
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise DatasetError(f"unknown segmentation format: {type(segmentation).__name__}")
    decoded = mask_utils.decode(rle)
    if decoded.ndim == 3:
        decoded = decoded.max(axis=2)
    if decoded.shape != (height, width):
        raise DatasetError(f"a segmentation of size {decoded.shape} belongs to a {height}x{width} image")
    return decoded.astype(bool)


@dataclass
class CocoIndex:
    """``instances.json`` indexed by id."""

    images: dict
    annotations: dict
    categories: dict

    @classmethod
    def read(cls, path: Path) -> CocoIndex:
        data = read_json(path, "COCO instances file")
        try:
            return cls(
                images={image["id"]: image for image in data["images"]},
                annotations={ann["id"]: ann for ann in data["annotations"]},
                categories={cat["id"]: cat["name"] for cat in data.get("categories", [])},
            )
        except (KeyError, TypeError) as error:
            raise DatasetError(f"{path}: not a COCO instances file (missing {error})") from None

    def image_size(self, image_id) -> tuple[int, int]:
        """``(height, width)`` of an image."""
        image = self.images[image_id]
        return int(image["height"]), int(image["width"])

    def mask(self, annotation_id) -> np.ndarray:
        annotation = self.annotations[annotation_id]
        return segmentation_mask(annotation["segmentation"], *self.image_size(annotation["image_id"]))
