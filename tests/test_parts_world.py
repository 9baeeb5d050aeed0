"""Shapes world 2 (objects with parts): scenes and ground truth, the SAM trained there (loading, three masks,
one training step, resuming), and the world's diffusion training data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from anyword.metrics import mask_iou
from anyword.segment import MaskRequest, segmenter_spec
from anyword.shapes.parts import (
    NOVEL_PARTS,
    NOVEL_WHOLES,
    OBJECTS,
    Region,
    all_regions,
    make_parts_scene,
    other_granularity,
    region_masks,
    render_parts,
)
from anyword.shapes.scenes import NOVEL_COLOURS


def test_scenes_are_pure_and_every_phrase_has_its_whole_or_part_mask():
    touching = 0
    for split in ("train", "seen", "novel"):
        for index in range(40):
            scene = make_parts_scene(split, index)
            assert scene == make_parts_scene(split, index)
            image, masks = render_parts(scene, 96)
            again, masks_again = render_parts(scene, 96)
            assert np.array_equal(image, again)
            assert all(np.array_equal(a, b) for a, b in zip(masks, masks_again, strict=True))
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and len(masks) == len(scene.regions)
            for phrase in scene.phrases:
                region, mask = scene.regions[phrase.shape_index], masks[phrase.shape_index]
                assert mask.dtype == bool and mask.sum() >= 6, (split, index, phrase)
                assert re.search(rf"\b{phrase.text}\b", scene.caption), (phrase.text, scene.caption)
                whole = region_masks(scene, [Region(region.object_index, None)], 96)[0]
                assert not (mask & ~whole).any()  # a part lies inside its whole
                if region.part is not None:
                    assert phrase.noun in (region.part, NOVEL_PARTS.get(region.part)) and mask.sum() < whole.sum()
            for i, obj in enumerate(scene.objects):  # a whole is exactly the union of its visible parts
                whole, *parts = region_masks(scene, [Region(i, None), *(Region(i, p) for p in OBJECTS[obj.kind])], 96)
                assert np.array_equal(whole, np.any(parts, axis=0))
            touching += scene.touching
    assert touching >= 10  # touching same-colour neighbours occur
    assert make_parts_scene("seen", 0) != make_parts_scene("train", 0)


def test_touching_objects_share_a_colour_and_touch():
    scenes = [s for s in (make_parts_scene("seen", i) for i in range(200)) if s.touching]
    assert scenes
    for scene in scenes:
        first, second = scene.objects[:2]
        assert first.colours[0] == second.colours[0]
        a, b = region_masks(scene, [Region(0, None), Region(1, None)], 128)
        grown = np.zeros_like(a)
        ys, xs = np.nonzero(a)
        for dy in (-2, -1, 0, 1, 2):  # within two pixels of each other
            for dx in (-2, -1, 0, 1, 2):
                grown[np.clip(ys + dy, 0, 127), np.clip(xs + dx, 0, 127)] = True
        assert (grown & b).any(), scene.index


def test_novel_words_never_appear_in_training_and_every_novel_phrase_has_one():
    novel = set(NOVEL_WHOLES.values()) | set(NOVEL_PARTS.values()) | set(NOVEL_COLOURS.values())
    training = {w for i in range(2000) for w in re.findall(r"[a-z]+", make_parts_scene("train", i).caption.lower())}
    assert not novel & training
    assert set(OBJECTS) <= training and {p for parts in OBJECTS.values() for p in parts} <= training
    for index in range(60):
        for phrase in make_parts_scene("novel", index).phrases:
            assert phrase.noun in novel or any(a in novel for a in phrase.adjectives), phrase


def test_other_granularity_names_a_parts_whole_and_a_wholes_parts():
    scene = make_parts_scene("seen", 3)
    kind = scene.objects[0].kind
    assert other_granularity(scene, Region(0, OBJECTS[kind][0])) == [Region(0, None)]
    assert other_granularity(scene, Region(0, None)) == [Region(0, p) for p in OBJECTS[kind]]
    assert len(all_regions(scene)) == sum(1 + len(OBJECTS[o.kind]) for o in scene.objects)


def test_the_trained_sam_loads_through_the_sam_backend_and_answers_a_point_with_three_masks():
    segmenter = segmenter_spec("sam").load("shapes", device="cpu")
    assert segmenter.key == "sam" and segmenter.label == "sam-shapes" and not segmenter.random_weights
    scene = make_parts_scene("seen", 5)
    square, masks = render_parts(scene, 128)
    image = np.ascontiguousarray(np.concatenate([square, square[:, :32]], axis=1))  # 128 x 160: not square
    embedding = segmenter.embed(image)
    target = np.zeros(image.shape[:2], bool)
    target[:, :128] = masks[0]
    ys, xs = np.nonzero(masks[0])
    point = np.array([[xs[len(xs) // 2] + 0.5, ys[len(ys) // 2] + 0.5]], np.float32)
    request = MaskRequest(points=point, labels=np.ones(1, np.int32), heatmap=None)
    candidates = segmenter.candidates(embedding, request)
    assert len(candidates) == 3
    assert all(c.mask.shape == (128, 160) and c.mask.dtype == bool and 0 <= c.score <= 1 for c in candidates)
    chosen = segmenter.segment(embedding, request)
    assert chosen.score == max(c.score for c in candidates)
    assert max(mask_iou(c.mask, target) for c in candidates) > 0.5  # it learnt the world: one of three fits
    two_points = MaskRequest(points=np.concatenate([point, point + 1]), labels=np.ones(2, np.int32), heatmap=None)
    assert len(segmenter.candidates(embedding, two_points, multimask=False)) == 1


def test_one_sam_training_step_runs_resumes_and_writes_a_loadable_model(tmp_path):
    from anyword.segment.sam import load_shapes_sam
    from anyword.shapes.sam_training import SamTrainConfig, _Run, train_sam

    quick = {"images": 2, "targets": 2, "corrections": 1, "warmup": 1, "log_every": 1}
    run = _Run(SamTrainConfig(steps=1, **quick))
    before = {k: v.clone() for k, v in run.sam.state_dict().items()}
    losses = run.train_step()
    assert np.isfinite(losses["mask_loss"]) and np.isfinite(losses["iou_loss"])
    changed = [k for k, v in run.sam.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("image_encoder") for k in changed) and any(k.startswith("mask_decoder") for k in changed)

    first = train_sam(tmp_path, SamTrainConfig(steps=1, **quick))
    resumed = train_sam(tmp_path, SamTrainConfig(steps=2, **quick))
    assert first["steps_done"] == 1 and resumed["steps_done"] == 2
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2]
    with pytest.raises(ValueError, match=r"corrections 1 -> 2"):
        train_sam(tmp_path, SamTrainConfig(steps=3, **{**quick, "corrections": 2}))
    sam = load_shapes_sam(tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["sam"]
    for key, value in sam.state_dict().items():
        torch.testing.assert_close(value, saved[key].half().float())


def test_world_two_training_batches_ground_wholes_and_parts():
    from anyword.shapes.training import batch
    from anyword.tokens import load_tokenizer

    tokenizer = load_tokenizer()
    pixels, ids, positions, masks, absent = batch(2, 6, tokenizer, world="parts")
    assert pixels.shape == (6, 3, 64, 64) and not absent.any()
    for row in range(6):
        scene = make_parts_scene("train", 2 * 6 + row)
        _, visible = render_parts(scene, 64)
        for slot in torch.nonzero(positions[row] > 0).flatten().tolist():
            word = tokenizer.convert_ids_to_tokens(int(ids[row, positions[row, slot]])).removesuffix("</w>")
            owners = [p.shape_index for p in scene.phrases if word in (*p.adjectives, p.noun)]
            assert any(np.array_equal(masks[row, slot].numpy(), visible[i]) for i in owners), (word, scene.caption)


@pytest.mark.slow
def test_eval_ablation_on_world_two_prints_every_row_with_the_ambiguous_subset(run_cli):
    from anyword.shapes.ablation import ABLATION

    done = run_cli("eval", "--dataset", "parts", "--split", "novel", "--n", "2", "--ablation", "--steps", "1",
                   "--inversion-steps", "6", "--json", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dataset"] == "parts" and result["split"] == "novel" and result["scenes"] == [0, 1]
    assert list(result["rows"]) == list(ABLATION) and result["ambiguity_row"] in ("segmenter", None)
    assert result["rows"]["full"]["segmenter"] == "sam-shapes" and result["rows"]["grabcut"]["segmenter"] == "grabcut"
    for row in result["rows"].values():
        assert 0.0 <= row["miou"] <= 1.0 and 0.0 <= row["wrong_granularity"] <= 1.0
        assert (row["ambiguous_phrase_iou"] is None) == (result["ambiguous_phrases"] == 0)
    assert result["rows"]["segmenter"]["wrong_granularity"] == result["ambiguous_phrases"] / result["phrases"]


def test_sam_report_measures_granularity_and_click_time(run_cli):
    done = run_cli("shapes", "sam", "--split", "seen", "--n", "2", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    scenes = [make_parts_scene("seen", i) for i in (0, 1)]
    assert report["all"]["count"] == sum(len(all_regions(s)) for s in scenes)
    for kind in ("whole", "part"):
        row = report["regions"][kind]
        assert 0 <= row["miou_top_scored"] <= row["miou_best_of_three"] <= 1 and 0 <= row["wrong_granularity"] <= 1
    assert report["click_ms_median"] > 0 and report["segmenter"] == "sam-shapes"


def test_the_demos_world_two_examples_are_validation_scenes_as_the_generator_draws_them():
    import cv2

    from tests.conftest import ASSETS

    rows = json.loads((ASSETS / "parts" / "examples.json").read_text())
    assert len(rows) == 4
    for row in rows:
        scene = make_parts_scene(row["split"], row["scene"])
        assert row["scene"] >= 10000 and row["caption"] == scene.caption  # never a test scene (0-99)
        image = cv2.cvtColor(cv2.imread(str(ASSETS / "parts" / row["image"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(image, render_parts(scene, row["size"])[0])


def test_adapt_draws_world_two_pairs(run_cli, tmp_path):
    out = tmp_path / "adapter"
    done = run_cli("adapt", "--preset", "tiny", "--dataset", "parts", "--split", "seen", "novel", "--start",
                   "20000", "--n", "4", "--adapt-steps", "1", "--batch-size", "2", "--out", out, "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "anyword_adapter.json").read_text())
    assert record["pairs_source"] == "parts seen+novel scenes 20000..20001" and record["pairs_used"] == 4


def test_localization_on_world_two_points_with_wholes_and_parts(run_cli):
    done = run_cli("shapes", "localization", "--world", "parts", "--split", "seen", "--n", "2", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dataset"] == "parts"
    phrases = sum(len(make_parts_scene("seen", i).phrases) for i in (0, 1))
    for row in report["localization"].values():
        assert row["world"] == "parts" and row["n_shapes"] == phrases
        assert 0 <= row["noun_pointing"] <= 1 and 0 <= row["control_pointing"] <= 1
