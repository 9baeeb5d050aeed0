"""Metrics on hand-made masks whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from anyword.metrics import (
    ImageResult,
    cumulative_iou,
    generalized_iou,
    grandf_ap50,
    grandf_image_miou,
    grandf_miou,
    grandf_recall,
    greedy_pairs,
    mask_iou,
    word_phrase_match,
)


def box(y0, y1, x0, x1, shape=(10, 20)):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


A = box(0, 4, 0, 5)  # 20 px
B = box(0, 4, 3, 8)  # 20 px, overlaps A on 8 px (columns 3-4): IoU 8 / 32 = 0.25
C = box(5, 10, 10, 20)  # 50 px, disjoint from A and B
EMPTY = np.zeros((10, 20), dtype=bool)


def test_mask_iou():
    assert mask_iou(A, A) == 1.0
    assert mask_iou(A, B) == pytest.approx(0.25)
    assert mask_iou(A, C) == 0.0
    assert mask_iou(EMPTY, EMPTY) == 1.0


def test_cumulative_vs_generalized_iou():
    pairs = [(A, B), (C, C)]  # I: 8 + 50, U: 32 + 50
    assert cumulative_iou(pairs) == pytest.approx(58 / 82)
    assert generalized_iou(pairs) == pytest.approx((0.25 + 1.0) / 2)


def test_generalized_iou_empty_target_rule():
    # gRefCOCO: no-target samples score 1 for an empty prediction and 0 otherwise.
    assert generalized_iou([(EMPTY, EMPTY)]) == 1.0
    assert generalized_iou([(A, EMPTY)]) == 0.0
    assert generalized_iou([(EMPTY, EMPTY), (A, EMPTY), (A, A)]) == pytest.approx(2 / 3)


def test_greedy_pairing_takes_the_best_iou_first():
    # Prediction 0 overlaps target 0 (IoU 1.0) and target 1 (0.25); prediction 1 only target 1 (0.25).
    pairs = greedy_pairs([A, B], [A, B])
    assert pairs == [(0, 0, 1.0), (1, 1, 1.0)]
    pairs = greedy_pairs([A, C], [B, C])
    assert sorted(pairs) == [(0, 0, 0.25), (1, 1, 1.0)]
    assert greedy_pairs([C], [A]) == []  # IoU 0: nothing pairs


def test_grandf_miou_averages_paired_ious_per_image_then_images():
    first = ImageResult([A, C], ["a", "c"], [B, C], ["b", "c"])  # pairs 0.25 and 1.0 -> 0.625
    second = ImageResult([C], ["c"], [A], ["a"])  # nothing pairs -> 0
    assert grandf_image_miou(first.predictions, first.targets) == pytest.approx(0.625)
    assert grandf_miou([first, second]) == pytest.approx(0.3125)


def test_recall_needs_iou_and_a_matching_phrase():
    image = ImageResult(
        predictions=[A, C],
        predicted_phrases=["red circle", "big blue square"],
        targets=[A, C],
        target_phrases=["red circle", "blue square"],
    )
    assert grandf_recall([image], word_phrase_match) == 1.0
    wrong_words = ImageResult([A, C], ["red circle", "green square"], [A, C], ["red circle", "blue square"])
    assert grandf_recall([wrong_words], word_phrase_match) == 0.5
    low_iou = ImageResult([B], ["red circle"], [A], ["red circle"])  # IoU 0.25 < 0.5
    assert grandf_recall([low_iou], word_phrase_match) == 0.0
    assert word_phrase_match("red circle", "small red circle")
    assert not word_phrase_match("red circle", "red ring")


def test_ap50_with_pycocotools():
    perfect = ImageResult([A, C], ["a", "c"], [A, C], ["a", "c"])
    assert grandf_ap50([perfect]) == pytest.approx(1.0)
    # Two targets; the first prediction is right, the second misses (scores tie, so order is kept):
    # precision 1.0 up to recall 0.5, recall never reaches 1 -> 51 of 101 recall points at precision 1.
    half = ImageResult([A, box(0, 2, 15, 20)], ["a", "x"], [A, C], ["a", "c"])
    assert grandf_ap50([half]) == pytest.approx(51 / 101)
    # The miss first: precision at recall 0.5 is 1/2.
    late = ImageResult([box(0, 2, 15, 20), A], ["x", "a"], [A, C], ["a", "c"])
    assert grandf_ap50([late]) == pytest.approx(51 / 101 * 0.5)
