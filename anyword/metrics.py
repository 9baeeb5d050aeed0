"""Segmentation metrics with the official definitions of the benchmarks the paper reports.

Masks are bool ``(H, W)`` arrays. Sources:

* cIoU, gIoU: gRefCOCO (Liu et al., CVPR 2023, "GRES", the ReLA code): cIoU is the cumulative intersection over
  the cumulative union of all samples; gIoU the mean of per-sample IoUs, where a sample with an empty ground truth
  scores 1 if the prediction is empty too, else 0.
* mIoU, AP50, recall: GranDf's grounded-conversation evaluation (Rasheed et al., CVPR 2024, GLaMM,
  ``eval/gcg/evaluate.py``): per image, predictions and ground truths are paired one-to-one greedily by the highest
  remaining IoU (stopping when it is 0) and the image's mIoU is the mean of the paired IoUs, averaged over images;
  AP50 is COCO mask AP at IoU 0.5 with every prediction scored 1.0 (one category); recall counts ground-truth
  phrases greedily matched to a prediction with IoU >= 0.5 whose phrase matches.
  GranDf decides "phrase matches" by BERT cosine similarity >= 0.5; with no BERT weights offline, ``phrase_match``
  is pluggable and defaults to same root noun and shared words (stricter than BERT similarity).
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def mask_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(prediction, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(prediction, target).sum() / union)


def cumulative_iou(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """gRefCOCO cIoU: sum of intersections / sum of unions over ``(prediction, target)`` pairs."""
    intersection = sum(int(np.logical_and(p, t).sum()) for p, t in pairs)
    union = sum(int(np.logical_or(p, t).sum()) for p, t in pairs)
    return intersection / union if union else 1.0


def generalized_iou(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """gRefCOCO gIoU: mean per-sample IoU; an empty target scores 1 for an empty prediction, else 0."""
    if not pairs:
        return 0.0
    scores = []
    for prediction, target in pairs:
        if not target.any():
            scores.append(1.0 if not prediction.any() else 0.0)
        else:
            scores.append(mask_iou(prediction, target))
    return float(np.mean(scores))


def _iou_matrix(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([[mask_iou(p, t) for t in targets] for p in predictions], dtype=np.float64).reshape(
        len(predictions), len(targets)
    )


def _greedy_order(ious: np.ndarray) -> Iterator[tuple[int, int, float]]:
    """GranDf's one-to-one pairing order: the highest remaining IoU first, its row and column then leave.
    Yields ``(row, column, iou)``; the caller stops where its own rule says."""
    ious = ious.copy()
    for _ in range(min(ious.shape)):
        i, j = np.unravel_index(int(np.argmax(ious)), ious.shape)
        yield int(i), int(j), float(ious[i, j])
        ious[i, :] = -1.0
        ious[:, j] = -1.0


def greedy_pairs(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> list[tuple[int, int, float]]:
    """GranDf's one-to-one pairing: repeatedly take the highest remaining IoU (> 0). ``(pred, target, iou)``."""
    return list(itertools.takewhile(lambda pair: pair[2] > 0, _greedy_order(_iou_matrix(predictions, targets))))


def grandf_image_miou(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    """One image's GranDf mIoU: the mean IoU of the greedy pairs (0 if nothing pairs)."""
    pairs = greedy_pairs(predictions, targets)
    return float(np.mean([iou for _, _, iou in pairs])) if pairs else 0.0


@dataclass(frozen=True)
class ImageResult:
    """Predictions and ground truth of one image: masks with their phrases."""

    predictions: Sequence[np.ndarray]
    predicted_phrases: Sequence[str]
    targets: Sequence[np.ndarray]
    target_phrases: Sequence[str]


def default_phrase_match(target: str, prediction: str) -> bool:
    """Same root noun (last word) and every target word present in the prediction, case-insensitively."""
    target_words, predicted_words = target.lower().split(), prediction.lower().split()
    if not target_words or not predicted_words:
        return False
    return target_words[-1] == predicted_words[-1] and set(target_words) <= set(predicted_words)


def grandf_miou(images: Sequence[ImageResult]) -> float:
    return float(np.mean([grandf_image_miou(r.predictions, r.targets) for r in images])) if images else 0.0


def grandf_recall(
    images: Sequence[ImageResult],
    iou_threshold: float = 0.5,
    phrase_match: Callable[[str, str], bool] = default_phrase_match,
) -> float:
    """Share of ground-truth phrases matched one-to-one (greedy by IoU) to a prediction with IoU >= threshold and
    a matching phrase."""
    matched = total = 0
    for result in images:
        total += len(result.targets)
        ious = _iou_matrix(result.targets, result.predictions)
        admissible = np.array(
            [[phrase_match(t, p) for p in result.predicted_phrases] for t in result.target_phrases], dtype=bool
        ).reshape(ious.shape)
        for i, j, iou in _greedy_order(ious):
            if iou < iou_threshold or not admissible[i, j]:
                break  # as GLaMM's find_best_matches: stop at the first best pair that fails either test
            matched += 1
    return matched / total if total else 0.0


def grandf_ap50(images: Sequence[ImageResult]) -> float:
    """COCO mask AP at IoU 0.5 over all images (one category, every prediction scored 1.0), via pycocotools."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask: np.ndarray) -> dict:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode("ascii")
        return encoded

    images_info, annotations, detections = [], [], []
    for image_id, result in enumerate(images, 1):
        height, width = (result.targets[0] if result.targets else result.predictions[0]).shape
        images_info.append({"id": image_id, "width": width, "height": height})
        for target in result.targets:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle(target),
                    "area": float(target.sum()),
                    "iscrowd": 0,
                    "bbox": list(mask_utils.toBbox(rle(target))),
                }
            )
        for prediction in result.predictions:
            detections.append({"image_id": image_id, "category_id": 1, "segmentation": rle(prediction), "score": 1.0})
    if not annotations or not detections:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ground_truth = COCO()
        ground_truth.dataset = {
            "images": images_info,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object"}],
        }
        ground_truth.createIndex()
        detected = ground_truth.loadRes(detections)
        evaluation = COCOeval(ground_truth, detected, "segm")
        evaluation.evaluate()
        evaluation.accumulate()
    # precision[T, R, K, A, M]: IoU 0.5 (T=0), all recall points, the category, area "all", 100 detections.
    precision = evaluation.eval["precision"][0, :, 0, 0, -1]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else 0.0
