"""Dataset loaders in their official layouts, the restricted refs unpickler, and the official metrics on
hand-worked cases (no models here; tests/test_eval_run.py runs the harness)."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from anyword.errors import AnywordError
from anyword.evaluation import DatasetOptions, open_dataset
from anyword.evaluation.base import IGNORE
from anyword.evaluation.pascal_context import NAMES_PER_CAPTION, PC59_CLASSES, caption_chunks
from anyword.evaluation.safe_pickle import UnsafePickleError, load_plain_pickle
from anyword.evaluation.tasks import concentration, fixed_parse
from anyword.metrics import (
    ReferringScore,
    confusion_matrix,
    grefcoco_metrics,
    refcoco_metrics,
    semantic_miou,
)
from anyword.rle import decode, encode
from tests.eval_fixtures import HEIGHT, WIDTH, write_grandf, write_grefcoco, write_pc59, write_refcoco


def _open(name, root, split="val", **options):
    return open_dataset(name, DatasetOptions(split=split, root=root, **options))


# --- the refs pickle ------------------------------------------------------------------------------------------


class _Trap:
    """Pickles as a call to os.system: loading it with pickle.load would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_pickle_reads_plain_data(tmp_path):
    data = [{"ref_id": 1, "sentences": [{"sent": "the man", "tokens": ["the", "man"]}], "box": (1.5, 2.0)}, {3, 4}]
    for protocol in (0, 2, 5):
        path = tmp_path / f"refs{protocol}.p"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_plain_pickle(path) == data


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_booby_trapped_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    if payload == "system":
        trap = _Trap(marker)
    elif payload == "eval":
        trap = type("EvalTrap", (), {"__reduce__": lambda self: (eval, (f"open({str(marker)!r}, 'w')",))})()
    else:
        trap = [{"ref_id": 1, "sentences": [_Trap(marker)]}]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps(trap, protocol=2))
    with pytest.raises(UnsafePickleError, match="only plain lists, dicts, strings and numbers"):
        load_plain_pickle(path)
    assert not marker.exists()


def test_refcoco_loader_refuses_a_trapped_refs_file(tmp_path):
    write_refcoco(tmp_path)
    marker = tmp_path / "ran"
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_Trap(marker)], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: holds a pickled posix\.system"):
        _open("refcoco", tmp_path)
    assert not marker.exists()


def test_a_broken_pickle_is_one_clear_error(tmp_path):
    path = tmp_path / "refs.p"
    path.write_bytes(b"\x80\x02]q\x00(")
    with pytest.raises(AnywordError, match="not a readable pickle"):
        load_plain_pickle(path)


# --- loaders --------------------------------------------------------------------------------------------------


def test_grefcoco_samples_and_targets(tmp_path):
    fixture = write_grefcoco(tmp_path)
    dataset = _open("grefcoco", tmp_path)
    samples = dataset.samples()
    assert [s.key for s in samples] == list(fixture.truth)  # val only (ref 13 is train), one per sentence
    assert samples[0].ids == {"sent_id": 100, "ref_id": 10, "image_id": 1}
    assert samples[1].caption == f"The {samples[0].caption}."  # "raw", as written, not the lower-cased "sent"
    assert samples[0].image == (tmp_path / "images" / "train2014" / "COCO_train2014_000000000001.jpg").resolve()
    for sample in samples:
        target = dataset.target(sample)
        assert target.mask.shape == (HEIGHT, WIDTH)
        expected = fixture.truth[sample.key]
        if expected is None:
            assert target.empty and not target.mask.any()
        else:
            assert not target.empty and np.array_equal(target.mask, expected)
    multi = dataset.target(samples[2]).mask  # two targets merged, the crowd annotation (top-left block) skipped
    assert multi.sum() > fixture.truth["sent 100"].sum() and not multi[:10, :10].all()


def test_grefcoco_masks_from_polygons_and_rle_match_the_drawn_shapes(tmp_path):
    fixture = write_grefcoco(tmp_path)
    dataset = _open("grefcoco", tmp_path)
    kinds = set()
    for annotation_id, annotation in dataset.coco.annotations.items():
        if annotation["iscrowd"]:
            continue
        segmentation = annotation["segmentation"]
        kinds.add("polygon" if isinstance(segmentation, list) else type(segmentation["counts"]).__name__)
        assert np.array_equal(dataset.coco.mask(annotation_id), fixture.masks[annotation_id])
    assert kinds == {"polygon", "str", "list"}  # polygons, compressed and uncompressed RLE


def test_refcoco_family_splits_and_layouts(tmp_path):
    fixture = write_refcoco(tmp_path)
    for split in ("val", "testA"):
        dataset = _open("refcoco", tmp_path, split)
        samples = dataset.samples()
        assert samples and all(fixture.truth[s.key][0] == split for s in samples)
        for sample in samples:
            assert np.array_equal(dataset.target(sample).mask, fixture.truth[sample.key][1])
    shutil.copytree(tmp_path / "refcoco", tmp_path / "refcoco+")
    assert len(_open("refcoco+", tmp_path).samples()) == len(_open("refcoco", tmp_path).samples())
    write_refcoco(tmp_path / "g", name="refcocog", split_by="umd", splits=("val", "test"))
    assert {s.key for s in _open("refcocog", tmp_path / "g", "test").samples()}
    with pytest.raises(AnywordError, match="refcocog has no split 'testA'"):
        _open("refcocog", tmp_path / "g", "testA")


def test_missing_files_and_roots_are_clear_errors(tmp_path):
    with pytest.raises(AnywordError, match="--data-root is required for grefcoco"):
        open_dataset("grefcoco", DatasetOptions(split="val"))
    with pytest.raises(AnywordError, match="COCO instances file not found"):
        _open("grefcoco", tmp_path)
    with pytest.raises(AnywordError, match="unknown dataset 'coco'"):
        _open("coco", tmp_path)


def test_image_names_cannot_leave_the_image_root(tmp_path):
    write_grefcoco(tmp_path)
    instances = tmp_path / "grefcoco" / "instances.json"
    instances.write_text(instances.read_text().replace("COCO_train2014_000000000001.jpg", "../../../etc/passwd"))
    samples = _open("grefcoco", tmp_path).samples()
    escaping = [s for s in samples if s.ids["image_id"] == 1]
    assert escaping and all("points outside" in s.problem and s.image is None for s in escaping)  # never opened
    assert all(s.problem is None for s in samples if s.ids["image_id"] != 1)  # the other samples run


def test_grandf_captions_phrases_and_masks(tmp_path):
    fixture = write_grandf(tmp_path)
    dataset = _open("grandf", tmp_path)
    samples = dataset.samples()
    assert [s.key for s in samples] == list(fixture.truth)
    for sample in samples:
        caption, labels, masks = fixture.truth[sample.key]
        target = dataset.target(sample)
        assert sample.caption == caption and list(target.phrases) == labels
        assert all(np.array_equal(a, b) for a, b in zip(target.masks, masks, strict=True))


def test_pc59_labels_drop_background_and_shift_classes(tmp_path):
    fixture = write_pc59(tmp_path)
    dataset = _open("pc59", tmp_path)
    assert len(PC59_CLASSES) == 59
    for sample in dataset.samples():
        labels = dataset.target(sample).labels
        assert np.array_equal(labels, fixture.truth[sample.key]) and (labels == IGNORE).any()
        assert dataset.concepts(sample) == PC59_CLASSES
    oracle = _open("pc59", tmp_path, classes="present")
    sample = oracle.samples()[0]
    present = {PC59_CLASSES[k] for k in np.unique(fixture.truth[sample.key]) if k != IGNORE}
    assert set(oracle.concepts(sample)) == present


def test_pc59_captions_fit_the_token_window(tokenizer):
    from anyword.evaluation.pascal_context import caption_name
    from anyword.tokens import align_tokens

    chunks = caption_chunks(PC59_CLASSES)
    assert [n for chunk in chunks for n in chunk] == list(PC59_CLASSES)
    assert max(len(c) for c in chunks) <= NAMES_PER_CAPTION
    for chunk in chunks:
        parse = fixed_parse(tuple(caption_name(n) for n in chunk))
        alignment = align_tokens(parse.caption, parse.concepts, tokenizer)  # raises if a name is cut off
        assert [c.phrase for c in parse.concepts] == [caption_name(n) for n in chunk]
        assert all(alignment.for_concept(c.id).noun_positions for c in parse.concepts)


def test_rle_round_trip_on_a_non_square_mask():
    mask = np.zeros((37, 91), dtype=bool)
    mask[3:20, 50:90] = True
    rle = encode(mask)
    assert rle["size"] == [37, 91] and isinstance(rle["counts"], str)
    assert np.array_equal(decode(rle), mask)


# --- metrics on hand-worked cases -----------------------------------------------------------------------------


def test_grefcoco_metrics_as_rela_computes_them():
    scores = [
        ReferringScore(intersection=8, union=10, predicted_empty=False, target_empty=False),  # IoU 0.8
        ReferringScore(intersection=3, union=10, predicted_empty=False, target_empty=False),  # IoU 0.3
        ReferringScore(intersection=5, union=6, predicted_empty=True, target_empty=False),  # FP: I -> 0
        ReferringScore(intersection=0, union=0, predicted_empty=True, target_empty=True),  # TP: IoU 1
        ReferringScore(intersection=0, union=4, predicted_empty=False, target_empty=True),  # FN: IoU 0, U += 4
    ]
    metrics = grefcoco_metrics(scores)
    assert metrics["cIoU"] == pytest.approx((8 + 3 + 0) / (10 + 10 + 6 + 0 + 4))
    assert metrics["gIoU"] == pytest.approx((0.8 + 0.3 + 0 + 1 + 0) / 5)
    assert metrics["N_acc"] == pytest.approx(1 / 2) and metrics["T_acc"] == pytest.approx(2 / 3)
    assert metrics["Pr@0.7"] == pytest.approx(1 / 3) and metrics["Pr@0.8"] == pytest.approx(1 / 3)
    assert metrics["Pr@0.9"] == 0.0
    assert grefcoco_metrics(scores[:2])["N_acc"] is None  # no no-target sample: undefined (ReLA prints 0)


def test_refcoco_metrics_overall_and_mean_iou():
    prediction = np.zeros((4, 6), dtype=bool)
    prediction[:2, :3] = True
    target = np.zeros((4, 6), dtype=bool)
    target[:2, :2] = True
    first = ReferringScore.of(prediction, target, False, False)  # I 4, U 6
    second = ReferringScore(intersection=9, union=10, predicted_empty=False, target_empty=False)
    metrics = refcoco_metrics([first, second])
    assert (first.intersection, first.union) == (4, 6)
    assert metrics["cIoU"] == pytest.approx(13 / 16) and metrics["mIoU"] == pytest.approx((4 / 6 + 0.9) / 2)
    assert metrics["Pr@0.5"] == 1.0 and metrics["Pr@0.7"] == 0.5 and metrics["Pr@0.9"] == 0.5


def test_confusion_matrix_miou_with_ignore_and_unpredicted_pixels():
    target = np.array([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    prediction = np.array([[0, 1, 1, 1], [IGNORE, 2, 0, 1]])  # IGNORE here: no class predicted
    matrix = confusion_matrix(prediction, target, classes=3)
    assert matrix.shape == (3, 4) and matrix.sum() == 6  # the two ignored truth pixels are left out
    assert matrix[2, 3] == 1  # class 2 pixel with no prediction
    metrics = semantic_miou(matrix)
    # class 0: TP 1, true 2, predicted 1 -> 1/2; class 1: TP 2, true 2, predicted 3 -> 2/3; class 2: 1/2
    assert metrics["per_class_iou"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert metrics["mIoU"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    absent = semantic_miou(confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2)), classes=3))
    assert absent["classes_scored"] == 1 and absent["mIoU"] == 1.0  # classes never seen nor predicted: undefined


def test_concentration_separates_a_peaked_map_from_a_diffuse_one():
    peaked = np.zeros((16, 16), dtype=np.float32)
    peaked[4:7, 4:7] = 1.0
    diffuse = np.random.default_rng(0).uniform(0, 1, (16, 16)).astype(np.float32)
    assert concentration(peaked, 0.7) == 1.0
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    assert concentration(diffuse, 0.7) < 0.6 and concentration(ramp, 0.7) < 0.6  # ~half the mass lies above 0.7
    assert concentration(np.zeros((16, 16)), 0.7) == 0.0
