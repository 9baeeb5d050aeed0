"""Stability across wordings: the paper's motivational study (section 2.2, Figures 3, 9 and 10).

Several wordings of one target (a RefCOCO ref's sentences; a shapes scene's paraphrases) should give one mask. Per
*unit* (a group of wordings and one of its targets) this measures the IoU of each wording's mask with the truth, their
mean and standard deviation across the wordings, and the mask agreement (mean IoU between the wordings' masks, over
every pair; it needs no ground truth); each unit is then easy, medium or hard.

The paper sorts its samples into easy / medium / hard by IoU mean and standard deviation without giving numbers (its
Figure 3 caption). The thresholds here are this project's choice, fixed before any measurement: **easy** when the
mean is at least 0.7 and the standard deviation at most 0.1 (accurate and stable), **hard** when the mean is below
0.4 or the standard deviation above 0.25, **medium** otherwise.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from anyword.errors import AnywordError
from anyword.evaluation.run import read_records
from anyword.metrics import mask_iou

EASY_MEAN, EASY_STD = 0.7, 0.1
HARD_MEAN, HARD_STD = 0.4, 0.25
DIFFICULTIES = ("easy", "medium", "hard")
THRESHOLDS = {"easy": f"iou_mean >= {EASY_MEAN} and iou_std <= {EASY_STD}",
              "hard": f"iou_mean < {HARD_MEAN} or iou_std > {HARD_STD}", "medium": "otherwise"}  # fmt: skip


def difficulty(mean: float, std: float) -> str:
    """ "easy", "medium" or "hard" for a unit with IoU ``mean`` and standard deviation ``std`` across wordings."""
    if mean >= EASY_MEAN and std <= EASY_STD:
        return "easy"
    if mean < HARD_MEAN or std > HARD_STD:
        return "hard"
    return "medium"


def agreement(masks: list[np.ndarray]) -> float | None:
    """Mean IoU over every pair of ``masks`` (bool, one shape); ``None`` for fewer than two."""
    pairs = [mask_iou(a, b) for a, b in itertools.combinations(masks, 2)]
    return float(np.mean(pairs)) if pairs else None


def unit_stability(keys: list[str], predicted: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    """One unit: its wordings' sample ``keys``, their masks and the truth of each (the same target)."""
    ious = [mask_iou(p, t) for p, t in zip(predicted, truth, strict=True)]
    mean, std = float(np.mean(ious)), float(np.std(ious))  # population std: the spread of these wordings
    return {"wordings": keys, "ious": ious, "iou_mean": mean, "iou_std": std, "agreement": agreement(predicted),
            "difficulty": difficulty(mean, std)}  # fmt: skip


def stability_report(members: list[tuple[str, str, int, np.ndarray, np.ndarray]]) -> dict:
    """The report over ``members`` (group, sample key, target index, predicted mask, true mask): one unit per
    (group, target) with two or more wordings; the dataset-level means and the count per difficulty."""
    grouped = defaultdict(list)
    for group, key, target, predicted, truth in members:
        grouped[(group, target)].append((key, predicted, truth))
    units = []
    for (group, target), rows in grouped.items():
        if len(rows) < 2:
            continue
        keys, predicted, truth = (list(column) for column in zip(*rows, strict=True))
        units.append({"group": group, "target": target, **unit_stability(keys, predicted, truth)})
    counts = {name: sum(u["difficulty"] == name for u in units) for name in DIFFICULTIES}
    return {
        "thresholds": THRESHOLDS,
        "units": len(units),
        "means": {field: _mean([u[field] for u in units]) for field in ("iou_mean", "iou_std", "agreement")},
        "difficulty": counts,
        "groups": units,
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


STABILITY = "stability.json"


def run_stability(out, dataset, task, samples) -> dict:
    """The stability of a finished run in ``out`` (its ``predictions.jsonl``): writes ``stability.json`` (every
    unit) and returns what the run's summary records (thresholds, counts, dataset-level means)."""
    records = read_records(Path(out))
    members, unscored = [], []
    for sample in samples:
        record = records.get(sample.key)
        if record is None or "error" in record:
            continue
        try:
            rows = task.targets(dataset, sample, record)
        except AnywordError as error:
            unscored.append({"key": sample.key, "error": str(error)})
            continue
        members += [(dataset.wording_group(sample), sample.key, index, p, t) for index, p, t in rows]
    report = {**stability_report(members), "unscored": unscored[:50]}
    (Path(out) / STABILITY).write_text(json.dumps(report, indent=1))
    return {"file": STABILITY, **{k: report[k] for k in ("thresholds", "units", "means", "difficulty")}}
