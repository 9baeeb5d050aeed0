"""Segmentation metrics with the official definitions of the benchmarks the paper reports.

Masks are bool ``(H, W)`` arrays. Sources:

* cIoU, gIoU: gRefCOCO (Liu et al., CVPR 2023, "GRES", the ReLA code): cIoU is the cumulative intersection over
  the cumulative union of all samples; gIoU the mean of per-sample IoUs, where a sample with an empty ground truth
  scores 1 if the prediction is empty too, else 0.
* mIoU, AP50, recall: GranDf's grounded-conversation evaluation (Rasheed et al., CVPR 2024, GLaMM,
  ``eval/gcg/evaluate.py``): per image, predictions and ground truths are paired one-to-one greedily by the highest
  remaining IoU (stopping when it is 0) and the image's mIoU is the mean of the paired IoUs, averaged over images;
  AP50 is COCO mask AP at IoU 0.5 with every prediction scored 1.0 (one category); recall counts ground-truth
  phrases greedily matched to a prediction with IoU >= 0.5 whose phrase matches, "matches" meaning BERT cosine
  similarity >= 0.5 (``phrase_match``; :func:`word_phrase_match`, same root noun and shared words, is a diagnostic
  that needs no model and is never reported as GranDf's recall).
* gRefCOCO's full set (ReLA ``gres_model/evaluation/refer_evaluation.py``): :func:`grefcoco_metrics` adds the
  no-target accuracies N-acc and T-acc and Pr@0.7/0.8/0.9 over the samples that have a target.
* RefCOCO / RefCOCO+ / RefCOCOg (LAVT's ``train.py`` evaluation, which the referring papers report): overall IoU
  (cIoU), mean IoU and Pr@0.5..0.9: :func:`refcoco_metrics`.
* PASCAL-Context 59 (mmsegmentation's ``IoUMetric``): a confusion matrix over the classes, pixels labelled
  ``ignore`` in the ground truth left out, mIoU the mean of the classes' IoUs that are defined:
  :func:`confusion_matrix`, :func:`semantic_miou`.

Every metric is a fraction in [0, 1] (the evaluators print percentages).
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


def word_phrase_match(target: str, prediction: str) -> bool:
    """Same root noun (last word) and every target word present in the prediction, case-insensitively."""
    target_words, predicted_words = target.lower().split(), prediction.lower().split()
    if not target_words or not predicted_words:
        return False
    return target_words[-1] == predicted_words[-1] and set(target_words) <= set(predicted_words)


def grandf_miou(images: Sequence[ImageResult]) -> float:
    return float(np.mean([grandf_image_miou(r.predictions, r.targets) for r in images])) if images else 0.0


def grandf_recall(
    images: Sequence[ImageResult], phrase_match: Callable[[str, str], bool], iou_threshold: float = 0.5
) -> float:
    """Share of ground-truth phrases matched one-to-one (greedy by IoU) to a prediction with IoU >= threshold and
    a matching phrase: ``phrase_match(target, prediction)``, GLaMM's BERT similarity for GranDf's recall
    (:mod:`anyword.evaluation.phrase_similarity`), :func:`word_phrase_match` for a diagnostic without a model."""
    matched = total = 0
    for result in images:
        total += len(result.target_phrases)
        if len(result.target_phrases) != len(result.targets):
            continue  # phrases and masks do not pair: GLaMM counts the phrases and matches none
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

    from anyword.rle import encode as rle

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


@dataclass(frozen=True)
class ReferringScore:
    """One referring sample as ReLA's evaluator sees it: intersection and union of the predicted and true masks
    (pixels), whether the prediction says "no target" and whether the truth has none."""

    intersection: int
    union: int
    predicted_empty: bool
    target_empty: bool

    @classmethod
    def of(cls, prediction: np.ndarray, target: np.ndarray, predicted_empty: bool, target_empty: bool):
        return cls(
            int(np.logical_and(prediction, target).sum()),
            int(np.logical_or(prediction, target).sum()),
            bool(predicted_empty),
            bool(target_empty),
        )


def grefcoco_metrics(scores: Sequence[ReferringScore], thresholds: Sequence[float] = (0.7, 0.8, 0.9)) -> dict:
    """gRefCOCO's metrics exactly as ReLA computes them.

    A no-target sample scores IoU 1 (and adds nothing to cIoU) when the prediction says "no target", else IoU 0 and
    its predicted area to the cumulative union. A sample with a target predicted as "no target" keeps its union
    but no intersection. gIoU is the mean IoU over all samples, Pr@t the share of samples *with* a target whose IoU
    is at least t, N-acc = TP / (TP + FN) over no-target samples, T-acc = TN / (TN + FP) over the others. Where
    ReLA prints 0 for an accuracy with no samples to count, this returns ``None``.
    """
    nt = {"TP": 0, "FN": 0, "FP": 0, "TN": 0}
    intersection = union = 0
    ious, targeted = [], []
    for score in scores:
        if score.target_empty:
            nt["TP" if score.predicted_empty else "FN"] += 1
            ious.append(1.0 if score.predicted_empty else 0.0)
            union += 0 if score.predicted_empty else score.union
            continue
        nt["FP" if score.predicted_empty else "TN"] += 1
        hit = 0 if score.predicted_empty else score.intersection
        iou = hit / score.union if score.union else 0.0
        intersection, union = intersection + hit, union + score.union
        ious.append(iou)
        targeted.append(iou)
    metrics = {
        "cIoU": intersection / union if union else 0.0,
        "gIoU": float(np.mean(ious)) if ious else 0.0,
        "N_acc": nt["TP"] / (nt["TP"] + nt["FN"]) if nt["TP"] + nt["FN"] else None,
        "T_acc": nt["TN"] / (nt["TN"] + nt["FP"]) if nt["TN"] + nt["FP"] else None,
    }
    for threshold in thresholds:
        metrics[f"Pr@{threshold:.1f}"] = sum(iou >= threshold for iou in targeted) / len(targeted) if targeted else 0.0
    metrics["no_target_counts"] = nt
    return metrics


def refcoco_metrics(scores: Sequence[ReferringScore], thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """RefCOCO family: cIoU (overall IoU: summed intersections over summed unions), mIoU (mean per-sample IoU)
    and Pr@t (share of samples with IoU above t, LAVT's ``iou >= t``)."""
    intersection = sum(s.intersection for s in scores)
    union = sum(s.union for s in scores)
    ious = [s.intersection / s.union if s.union else 0.0 for s in scores]
    metrics = {"cIoU": intersection / union if union else 0.0, "mIoU": float(np.mean(ious)) if ious else 0.0}
    for threshold in thresholds:
        metrics[f"Pr@{threshold:.1f}"] = sum(iou >= threshold for iou in ious) / len(ious) if ious else 0.0
    return metrics


def confusion_matrix(prediction: np.ndarray, target: np.ndarray, classes: int, ignore: int = 255) -> np.ndarray:
    """``(classes, classes + 1)`` int64 counts: row = true class, column = predicted class, the last column
    pixels with no predicted class (any prediction outside ``0..classes-1``). Pixels whose truth is ``ignore``
    (or outside the classes) are left out."""
    prediction = np.asarray(prediction).astype(np.int64)
    target = np.asarray(target).astype(np.int64)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    scored = (target != ignore) & (target >= 0) & (target < classes)
    predicted = np.where((prediction >= 0) & (prediction < classes), prediction, classes)
    flat = target[scored] * (classes + 1) + predicted[scored]
    return np.bincount(flat, minlength=classes * (classes + 1)).reshape(classes, classes + 1)


def semantic_miou(matrix: np.ndarray) -> dict:
    """mIoU from a :func:`confusion_matrix`: per class IoU = TP / (true + predicted - TP); classes whose union is
    empty are undefined and left out of the mean (mmsegmentation's ``nanmean``)."""
    classes = matrix.shape[0]
    true_positive = np.diag(matrix[:, :classes]).astype(np.float64)
    union = matrix.sum(axis=1) + matrix[:, :classes].sum(axis=0) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)
    defined = iou[~np.isnan(iou)]
    scored = matrix.sum()
    return {
        "mIoU": float(defined.mean()) if defined.size else 0.0,
        "aAcc": float(true_positive.sum() / scored) if scored else 0.0,
        "classes_scored": int(defined.size),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }
