"""COCO-format annotations as the referring datasets ship them (``instances.json``): images, annotations and
categories, with masks decoded the way the official ``refer.py`` / ``grefer.py`` decode them (polygons, or RLE
compressed or not, rasterised at the image's size; several polygons of one object merged).

A dataset file is data a user hands over, so every field is checked where it is read, against the image's declared
size and the pixel limit, before anything is allocated: a problem is one :class:`DatasetError` naming the file, the
record and the field. The loaders turn a problem with one image or annotation into an error for the samples that
use it; the rest of the run goes on.

Masks are bool ``(H, W)`` arrays at the image's size; RLE is COCO's ``{"size": [h, w], "counts": str}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anyword.errors import AnywordError
from anyword.evaluation.base import resize_nearest
from anyword.images import MAX_IMAGE_PIXELS
from anyword.rle import RleError
from anyword.rle import decode as decode_rle


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


def is_id(value) -> bool:
    """Whether ``value`` can be a record's id (a whole number or text: what COCO files use)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def whole_number(value, where: str, field: str, low: int = 0) -> int:
    """``value`` as a whole number of at least ``low``, or a :class:`DatasetError` naming ``where`` and ``field``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DatasetError(f"{where}: {field!r} must be a whole number of at least {low}, not {value!r}")
    return value


def segmentation_mask(
    segmentation, height: int, width: int, where: str = "a segmentation", at: tuple[int, int] | None = None
) -> np.ndarray:
    """An annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) as a bool mask of the image's
    ``(height, width)``, or of ``at`` when given (the image resized there: polygons scaled and rasterised at that
    size, RLE resized by nearest neighbour, as detectron2's transforms do for ReLA). Polygons with fewer than 3
    points (or an odd number of coordinates) are dropped, as detectron2's COCO loader does for ReLA; coordinates
    must be finite numbers within the image's range."""
    if isinstance(segmentation, dict):
        try:
            mask = decode_rle(segmentation, (height, width))
        except RleError as error:
            raise DatasetError(f"{where}: 'segmentation': {error}") from None
        return mask if at is None else resize_nearest(mask, at)
    if not isinstance(segmentation, list) or not all(isinstance(part, list) for part in segmentation):
        raise DatasetError(f"{where}: 'segmentation' must be polygons (lists of numbers) or an RLE object")
    polygons = [_polygon(part, height, width, where) for part in segmentation if len(part) >= 6 and len(part) % 2 == 0]
    out_height, out_width = at or (height, width)
    if not polygons:
        return np.zeros((out_height, out_width), dtype=bool)
    from pycocotools import mask as mask_utils

    scale = np.array([out_width / width, out_height / height])
    polygons = [(np.asarray(p).reshape(-1, 2) * scale).reshape(-1).tolist() for p in polygons]
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, out_height, out_width))
    return mask_utils.decode(rle).astype(bool)


def _polygon(part: list, height: int, width: int, where: str) -> list[float]:
    """A polygon's coordinates, checked: finite numbers no farther than one image size outside the image (which
    bounds the rasteriser's work, whatever a file declares)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in part):
        raise DatasetError(f"{where}: polygon coordinates must be finite numbers")
    xs, ys = part[0::2], part[1::2]
    if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
        raise DatasetError(f"{where}: a polygon lies far outside the {width}x{height} image")
    return [float(v) for v in part]


@dataclass
class CocoIndex:
    """``instances.json`` indexed by id. Records whose id is not a number or text cannot be referred to and are
    left out; every other field is checked when it is used (:meth:`image_size`, :meth:`file_name`, :meth:`mask`)."""

    path: Path
    images: dict
    annotations: dict
    categories: dict

    @classmethod
    def read(cls, path: Path) -> CocoIndex:
        data = read_json(path, "COCO instances file")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(f"{path}: not a COCO instances file (no 'images' list)")
        if not isinstance(data.get("annotations", []), list) or not isinstance(data.get("categories", []), list):
            raise DatasetError(f"{path}: 'annotations' and 'categories' must be lists")

        def index(records) -> dict:
            return {r["id"]: r for r in records if isinstance(r, dict) and is_id(r.get("id"))}

        categories = {c["id"]: c.get("name") for c in index(data.get("categories", [])).values()}
        return cls(path, index(data["images"]), index(data.get("annotations", [])), categories)

    def image(self, image_id) -> dict:
        if not is_id(image_id):
            raise DatasetError(f"{self.path}: an image id must be a number or text, not {image_id!r}")
        if image_id not in self.images:
            raise DatasetError(f"{self.path}: no image with id {image_id!r}")
        return self.images[image_id]

    def image_size(self, image_id) -> tuple[int, int]:
        """``(height, width)`` of an image as the file declares it (checked against the pixel limit)."""
        image, where = self.image(image_id), f"{self.path.name} image {image_id}"
        height = whole_number(image.get("height"), where, "height", low=1)
        width = whole_number(image.get("width"), where, "width", low=1)
        if height * width > MAX_IMAGE_PIXELS:
            raise DatasetError(f"{where}: {width}x{height} is over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit")
        return height, width

    def file_name(self, image_id) -> str:
        name = self.image(image_id).get("file_name")
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{self.path.name} image {image_id}: 'file_name' must be text, not {name!r}")
        return name

    def annotation(self, annotation_id) -> dict:
        if not is_id(annotation_id) or annotation_id not in self.annotations:
            raise DatasetError(f"{self.path}: no annotation with id {annotation_id!r}")
        return self.annotations[annotation_id]

    def mask(self, annotation_id, size: tuple[int, int] | None = None, at: tuple[int, int] | None = None) -> np.ndarray:
        """The annotation's mask on an image of ``size`` (``(height, width)``; default: its own image's), as the
        official loaders rasterise it at the size of the image the ref or caption names; ``at``: on that image
        resized to ``at`` (see :func:`segmentation_mask`)."""
        annotation = self.annotation(annotation_id)
        where = f"{self.path.name} annotation {annotation_id}"
        if "segmentation" not in annotation:
            raise DatasetError(f"{where}: no 'segmentation'")
        height, width = size or self.image_size(annotation.get("image_id"))
        return segmentation_mask(annotation["segmentation"], height, width, where=where, at=at)
