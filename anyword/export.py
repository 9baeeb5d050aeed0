"""Result files: ``result.json``, ``masks/<id>_<noun>.png`` (8-bit 0/255 at the input's size), ``overlay.png``,
``heatmaps.png`` (one panel per concept with its points) and ``masks_coco.json`` (COCO RLE via pycocotools)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from anyword import viz
from anyword.errors import OutputError
from anyword.pipeline import RANDOM_WEIGHTS_WARNING, SegmentationResult
from anyword.rle import encode as coco_rle

RESULT_MARKER = "result.json"  # what makes a folder an earlier single-image result


def mask_filename(concept_id: int, noun: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", noun.lower()).strip("_")[:40] or "concept"
    return f"{concept_id}_{slug}.png"


def coco_document(result: SegmentationResult, file_name: str = "image") -> dict:
    """A COCO-style document: one image, one category and one annotation per concept."""
    from pycocotools import mask as mask_utils

    width, height = result.image_size
    categories, annotations = [], []
    for concept in result.concepts:
        mask = result.masks[concept.id]
        rle = coco_rle(mask)
        bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).tolist()
        categories.append({"id": concept.id + 1, "name": concept.phrase, "noun": concept.noun})
        annotations.append(
            {
                "id": concept.id + 1,
                "image_id": 1,
                "category_id": concept.id + 1,
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": [round(v, 2) for v in bbox],
                "iscrowd": 0,
                "score": result.scores[concept.id],
                "phrase": concept.phrase,
            }
        )
    return {
        "info": {"description": f"Segment Anyword masks for: {result.parse.caption}"},
        "images": [{"id": 1, "width": width, "height": height, "file_name": file_name}],
        "categories": categories,
        "annotations": annotations,
    }


def _note(result: SegmentationResult) -> str | None:
    return RANDOM_WEIGHTS_WARNING if result.attention.random_weights else None


def overlay_image(result: SegmentationResult, image: np.ndarray) -> np.ndarray:
    labels = {c.id: f"{c.id}: {c.phrase}" for c in result.concepts}
    points = {c.id: result.prompts.for_concept(c.id) for c in result.concepts}
    return viz.mask_overlay(image, result.masks, labels, points, note=_note(result))


def heatmap_panels(result: SegmentationResult, image: np.ndarray, adjectives: bool = False) -> np.ndarray:
    """One panel per concept (and per bound adjective if ``adjectives``) with the concept's points."""
    return viz.panels(heatmap_items(result, image, adjectives), note=_note(result))


def heatmap_items(
    result: SegmentationResult, image: np.ndarray, adjectives: bool = True
) -> list[tuple[str, np.ndarray]]:
    maps = result.attention.maps
    items = []
    for concept in result.concepts:
        points = result.prompts.for_concept(concept.id)
        picture = viz.draw_points(viz.heatmap_overlay(image, maps.concept_map(concept.id)), points)
        items.append((f"{concept.id}: {concept.phrase}", picture))
        if adjectives:
            tokens = maps.alignment.for_concept(concept.id)
            for adjective in tokens.adjective_words:
                own = [p for p in points if p.source == f"adjective:{adjective}"]
                picture = viz.draw_points(viz.heatmap_overlay(image, maps.adjective_map(concept.id, adjective)), own)
                items.append((f"{concept.id}: '{adjective}' of {concept.noun}", picture))
    return items


def output_files(result: SegmentationResult, image: np.ndarray, image_name: str = "image") -> dict[str, bytes]:
    """Every output file as ``{relative path: bytes}``."""
    files = {
        "result.json": json.dumps(result.to_dict(), indent=2, ensure_ascii=False).encode(),
        "masks_coco.json": json.dumps(coco_document(result, image_name)).encode(),
        "overlay.png": _png(overlay_image(result, image)),
        "heatmaps.png": _png(heatmap_panels(result, image)),
    }
    for concept in result.concepts:
        mask = result.masks[concept.id].astype(np.uint8) * 255
        files[f"masks/{mask_filename(concept.id, concept.noun)}"] = _png(mask)
    return files


def write_outputs(
    result: SegmentationResult, image: np.ndarray, out_dir: str | Path, image_name: str = "image"
) -> dict[str, Path]:
    """Write every output file into ``out_dir``, replacing what an earlier run left there (see
    :func:`replace_folder`); returns ``{relative path: path}``."""
    out = Path(out_dir)
    files = output_files(result, image, image_name)
    replace_folder(out, files)
    return {name: out / name for name in files}


def check_output_folder(out: str | Path, marker: str = RESULT_MARKER) -> Path:
    """Refuse an output folder that cannot take results, before any work is done.

    ``out`` may be missing (it is created), empty, or an earlier result (it holds ``marker``), which is replaced.
    A file, or a folder holding other things, is refused rather than mixed with new results or deleted.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder (it is created if missing)")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise OutputError(
            f"--out {out} already holds files that are not an earlier anyword result; give an empty or new folder "
            f"(a folder with an earlier result, i.e. a {marker}, is replaced)"
        )
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {existing} (permission denied)")
    return out


def replace_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a new folder beside ``out``, then swap it into place: a run that fails half-way
    leaves the earlier result untouched, and no file of an earlier result survives next to the new one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".new", dir=out.parent))
    try:
        os.chmod(staging, 0o755)
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        previous = None
        if out.exists() or out.is_symlink():
            if not out.is_dir():
                raise OutputError(f"--out {out} is a file; give a folder (it is created if missing)")
            previous = out.parent / f"{staging.name.removesuffix('.new')}.old"
            os.rename(out, previous)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def zip_outputs(result: SegmentationResult, image: np.ndarray, image_name: str = "image") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in output_files(result, image, image_name).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
