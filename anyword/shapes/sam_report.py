"""How the SAM trained in world 2 answers one point: ``anyword shapes sam``.

For every whole and every part of held-out scenes, one positive point at the region's most interior pixel (the
maximum of its distance transform, as SAM's own single-point evaluation places it), three masks: the best of the three
(the ambiguity is resolved by an oracle), the top-scored one (SAM's own choice), how often that choice takes the other
granularity (a part's whole, or a part of a whole, overlaps it more than the target does), and the time of a click
(prompt encoder + mask decoder + upsampling, the image embedding reused) on this machine.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from anyword.metrics import mask_iou
from anyword.segment import MaskRequest
from anyword.segment.sam import SHAPES_MODEL, SamSegmenter
from anyword.shapes.parts import all_regions, make_parts_scene, other_granularity, region_masks, render_parts


def interior_point(mask: np.ndarray) -> np.ndarray:
    """``(1, 2)`` float32 ``(x, y)``: the pixel centre farthest from the mask's boundary (first in raster order on
    ties)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([[x + 0.5, y + 0.5]], dtype=np.float32)


def sam_report(
    split: str = "seen", n: int = 100, start: int = 0, checkpoint: str | None = None, size: int = 128,
    progress: bool = True,
) -> dict:  # fmt: skip
    """The report over scenes ``start .. start+n-1`` of world 2's ``split`` rendered at ``size`` pixels."""
    segmenter = SamSegmenter.load(SHAPES_MODEL, checkpoint=checkpoint, device="cpu")
    rows = {"whole": [], "part": []}
    click_seconds, embed_seconds = [], []
    for index in tqdm(range(start, start + n), desc=f"sam {split}", disable=not progress):
        scene = make_parts_scene(split, index)
        image, _ = render_parts(scene, size)
        started = time.perf_counter()
        embedding = segmenter.embed(image)
        embed_seconds.append(time.perf_counter() - started)
        regions = all_regions(scene)
        for region, target in zip(regions, region_masks(scene, regions, size), strict=True):
            request = MaskRequest(points=interior_point(target), labels=np.ones(1, np.int32), heatmap=None)
            started = time.perf_counter()
            candidates = segmenter.candidates(embedding, request, multimask=True)
            click_seconds.append(time.perf_counter() - started)
            ious = [mask_iou(c.mask, target) for c in candidates]
            top = max(range(len(candidates)), key=lambda i: candidates[i].score)
            others = region_masks(scene, other_granularity(scene, region), size)
            wrong = any(mask_iou(candidates[top].mask, other) > ious[top] for other in others)
            rows["part" if region.part else "whole"].append((max(ious), ious[top], wrong))
    return {
        "world": "parts",
        "split": split,
        "scenes": [start, start + n - 1],
        "image_size": size,
        "segmenter": segmenter.label,
        "parameters": segmenter.parameter_count(),
        "regions": {kind: _summary(values) for kind, values in rows.items()},
        "all": _summary(rows["whole"] + rows["part"]),
        "click_ms_median": 1000 * float(np.median(click_seconds)),
        "embed_ms_median": 1000 * float(np.median(embed_seconds)),
        "threads": torch.get_num_threads(),
    }


def _summary(values: list[tuple[float, float, bool]]) -> dict:
    best, top, wrong = (np.array(column, dtype=float) for column in zip(*values, strict=True))
    return {"count": len(values), "miou_best_of_three": float(best.mean()), "miou_top_scored": float(top.mean()),
            "wrong_granularity": float(wrong.mean())}  # fmt: skip
