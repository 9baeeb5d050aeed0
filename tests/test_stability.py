"""Stability across wordings (the paper's motivational study): grouping, hand-worked means, the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anyword.evaluation import DatasetOptions, open_dataset
from anyword.evaluation.stability import agreement, difficulty, run_stability, stability_report
from anyword.evaluation.tasks import Referring
from anyword.rle import encode
from tests.conftest import ASSETS, QUICK_ARGS
from tests.eval_fixtures import write_refcoco


def test_agreement_and_difficulty_on_hand_made_masks():
    top, middle = np.zeros((6, 4), bool), np.zeros((6, 4), bool)
    top[0:4], middle[2:6] = True, True  # 16 and 16 pixels, 8 shared: IoU 8 / 24
    assert agreement([top, middle]) == pytest.approx(1 / 3)
    assert agreement([top, middle, top.copy()]) == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    assert agreement([top]) is None
    assert difficulty(0.7, 0.1) == "easy" and difficulty(0.69, 0.0) == "medium" and difficulty(0.9, 0.26) == "hard"
    assert difficulty(0.39, 0.0) == "hard" and difficulty(0.5, 0.2) == "medium"


def test_a_refs_sentences_form_one_unit_with_hand_worked_mean_std_and_agreement(tmp_path):
    fixture = write_refcoco(tmp_path, wordings=3)
    dataset = open_dataset("refcoco", DatasetOptions(split="val", root=tmp_path))
    samples = dataset.samples()
    refs = sorted({s.ids["ref_id"] for s in samples})
    assert len(samples) == 3 * len(refs) and len(refs) >= 2
    out = tmp_path / "run"
    out.mkdir()
    lines = []
    for sample in samples:
        truth = fixture.truth[sample.key][1]
        wording = sample.ids["sent_id"] % 10
        # ref refs[0]: the truth, nothing, the truth (IoU 1, 0, 1); every other ref: the truth three times
        empty = sample.ids["ref_id"] == refs[0] and wording == 1
        mask = np.zeros_like(truth) if empty else truth
        lines.append(json.dumps({"key": sample.key, "mask": encode(mask), "no_target": False}))
    (out / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    summary = run_stability(out, dataset, Referring(referent="first"), samples)
    report = json.loads((out / "stability.json").read_text())
    units = {unit["group"]: unit for unit in report["groups"]}
    assert set(units) == {f"ref {r}" for r in refs} and summary["units"] == len(refs)
    mixed = units[f"ref {refs[0]}"]
    assert mixed["ious"] == [1.0, 0.0, 1.0] and len(mixed["wordings"]) == 3
    assert mixed["iou_mean"] == pytest.approx(2 / 3)
    assert mixed["iou_std"] == pytest.approx(np.sqrt(2 / 9))  # sqrt(((1/3)^2 * 2 + (2/3)^2) / 3)
    assert mixed["agreement"] == pytest.approx(1 / 3)  # pairs: 0, 1, 0
    assert mixed["difficulty"] == "hard"  # std 0.471 > 0.25
    steady = units[f"ref {refs[1]}"]
    assert (steady["iou_mean"], steady["iou_std"], steady["agreement"], steady["difficulty"]) == (1, 0, 1, "easy")
    count = len(refs)
    assert summary["means"]["iou_mean"] == pytest.approx((2 / 3 + count - 1) / count)
    assert summary["difficulty"] == {"easy": count - 1, "medium": 0, "hard": 1}


def test_units_with_one_wording_are_left_out():
    mask = np.ones((2, 2), bool)
    report = stability_report([("g", "a", 0, mask, mask), ("h", "b", 0, mask, mask), ("h", "c", 0, mask, ~mask)])
    assert report["units"] == 1 and report["groups"][0]["group"] == "h"
    assert report["groups"][0]["ious"] == [1.0, 0.0]


def test_stability_command_on_the_tiny_preset_writes_masks_grid_and_table(run_cli, tmp_path):
    captions = tmp_path / "wordings.txt"
    captions.write_text("a red cup\n\nthe crimson mug\n")
    out = tmp_path / "out"
    done = run_cli("stability", ASSETS / "coffee.png", "--captions", captions, "--caption", "a red espresso cup",
                   "--out", out, "--json", *QUICK_ARGS)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [row["wording"] for row in report["wordings"]] == ["a red cup", "the crimson mug", "a red espresso cup"]
    matrix = np.array(report["agreement_matrix"])
    assert matrix.shape == (3, 3) and np.allclose(np.diag(matrix), 1) and np.allclose(matrix, matrix.T)
    assert report["agreement"] == pytest.approx(matrix[np.triu_indices(3, 1)].mean())
    assert json.loads((out / "stability.json").read_text())["agreement"] == report["agreement"]
    from PIL import Image

    for row in report["wordings"]:
        with Image.open(out / row["file"]) as mask:
            assert mask.size == (600, 400)  # the image's own size, (width, height)
    assert (out / "grid.png").stat().st_size > 1000
    refused = run_cli("stability", ASSETS / "coffee.png", "--caption", "a cup", "--out", tmp_path / "x", *QUICK_ARGS)
    assert refused.returncode == 2 and "at least two wordings" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_eval_stability_on_shapes_groups_each_scenes_paraphrases(run_cli, tmp_path):
    done = run_cli("eval", "--dataset", "shapes", "--split", "novel", "--n", "2", "--stability", "--steps", "1",
                   "--inversion-steps", "6", "--out", tmp_path / "run", "--json", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["counts"]["done"] == 8  # two scenes, four wordings each
    assert summary["stability"]["units"] >= 2 and summary["stability"]["file"] == "stability.json"
    report = json.loads((tmp_path / "run" / "stability.json").read_text())
    assert {unit["group"] for unit in report["groups"]} == {"scene 0", "scene 1"}
    assert all(len(unit["wordings"]) == 4 for unit in report["groups"])
    skipped = run_cli("eval", "--dataset", "shapes-referring", "--n", "1", "--stability", "--steps", "0",
                      "--inversion-steps", "4", "--out", tmp_path / "ref", "--quiet")  # fmt: skip
    assert skipped.returncode == 0 and "--stability skipped" in skipped.stderr
