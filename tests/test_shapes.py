"""The shapes world: scenes and ground truth, the shipped model, GrabCut, and the v-prediction paths."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch

from anyword.errors import SettingsError
from anyword.metrics import mask_iou
from anyword.shapes.scenes import (
    COLOURS,
    NOVEL_COLOURS,
    NOVEL_NOUNS,
    SHAPES,
    make_scene,
    render,
    true_concepts,
)


def test_scenes_are_deterministic_and_consistent():
    for split in ("train", "seen", "novel"):
        for index in range(20):
            scene = make_scene(split, index)
            assert scene == make_scene(split, index)
            image, masks = render(scene, 96)
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8
            assert len(masks) == len(scene.shapes) == len(scene.phrases)
            for phrase in scene.phrases:
                mask = masks[phrase.shape_index]
                assert mask.dtype == bool and mask.sum() > 30  # every shape stays visible
                assert re.search(rf"\b{phrase.text}\b", scene.caption), (phrase.text, scene.caption)
            union = np.zeros((96, 96), dtype=int)
            for mask in masks:
                union += mask
            assert union.max() <= 1  # visible masks never overlap
    assert make_scene("seen", 0) != make_scene("train", 0)


def test_novel_words_never_appear_in_training_captions():
    novel = set(NOVEL_NOUNS.values()) | set(NOVEL_COLOURS.values())
    training_words = {w for i in range(2000) for w in re.findall(r"[a-z]+", make_scene("train", i).caption.lower())}
    assert not novel & training_words
    assert set(SHAPES) | set(COLOURS) <= training_words
    for index in range(50):
        scene = make_scene("novel", index)
        for phrase in scene.phrases:  # every phrase has at least one novel word
            assert phrase.noun in novel or any(a in novel for a in phrase.adjectives)


def test_same_colour_scenes_tell_shapes_apart_by_noun_only():
    scenes = [make_scene("train", index, min_shapes=2, same_colour=0.5) for index in range(200)]
    one_colour = [s for s in scenes if len({shape.colour for shape in s.shapes}) == 1]
    assert 60 < len(one_colour) < 140  # about half
    for scene in one_colour:
        assert len({shape.kind for shape in scene.shapes}) == len(scene.shapes)
    unchanged = [s for s in scenes if s not in one_colour]
    assert all(s == make_scene("train", s.index, min_shapes=2) for s in unchanged)  # other scenes are untouched


def test_training_writes_loadable_weights_and_resumes(tmp_path):
    from anyword.diffusion.shapes_model import build_models, load_shapes_backbone
    from anyword.shapes.training import TrainConfig, sharpen_cross_attention, train

    settings = {
        "qk_gain": 3.0,
        "same_colour": 0.5,
        "grounding_weight": 0.1,
        "pixel_weight": 0.2,
        "grounding_max_t": 1000,
    }
    quick = {"batch_size": 2, "warmup": 1, "log_every": 1, "gain_scenes": 4, **settings}
    first = train(tmp_path, TrainConfig(steps=1, **quick))
    assert first["steps"] == 1 and first["qk_gain"] == 3.0 and np.isfinite(first["final_loss_ema"])
    resumed = train(tmp_path, TrainConfig(steps=2, **quick))
    assert resumed["steps"] == 2 and resumed["grounding_weight"] == 0.1
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2]  # the second call went on from the checkpoint
    # every timestep is supervised (max_t 1000): both grounding losses are on
    assert all(0 < record["grounding_token"] <= 1 and record["grounding_pixel"] > 0 for record in log)
    backbone = load_shapes_backbone(folder=tmp_path)
    assert "trained 2 steps" in backbone.source
    with pytest.raises(ValueError, match=r"same_colour 0.5 -> 0.0"):  # a resumed run keeps its data and init
        train(tmp_path, TrainConfig(steps=3, **{**quick, "same_colour": 0.0}))

    unet, text_encoder = build_models(0)
    sharp_unet, sharp_text = build_models(0)
    sharpen_cross_attention(sharp_unet, sharp_text, qk_gain=3.0, text_norm_gain=2.0)
    layers = [n for n, m in unet.named_modules() if getattr(m, "is_cross_attention", False)]
    assert len(layers) == 10  # 32x32 attends to the text twice per block (no self-attention)
    modules = dict(unet.named_modules())
    sharp_modules = dict(sharp_unet.named_modules())
    for name in layers:
        torch.testing.assert_close(sharp_modules[name].to_k.weight, 3 * modules[name].to_k.weight)
        torch.testing.assert_close(sharp_modules[name].to_v.weight, modules[name].to_v.weight)
    torch.testing.assert_close(sharp_text.final_layer_norm.weight, 2 * text_encoder.final_layer_norm.weight)


def test_grounding_targets_pair_each_shape_word_with_its_mask():
    from anyword.shapes.training import GROUNDING_SLOTS, batch
    from anyword.tokens import load_tokenizer

    tokenizer = load_tokenizer()
    pixels, ids, positions, masks, absent = batch(3, 8, tokenizer)
    assert not absent.any()
    assert (
        pixels.shape == (8, 3, 64, 64) and positions.shape == (8, GROUNDING_SLOTS) and masks.shape[1:] == (32, 64, 64)
    )
    for row in range(8):
        scene = make_scene("train", 3 * 8 + row)
        _, visible = render(scene, 64)
        used = positions[row] > 0
        words = tokenizer.convert_ids_to_tokens(ids[row, positions[row, used]].tolist())
        expected = [w for p in scene.phrases for w in (*p.adjectives, p.noun)]
        # every word of every phrase, once per mention (relation captions repeat a phrase)
        assert sorted({w.removesuffix("</w>") for w in words}) == sorted(set(expected))
        for slot in torch.nonzero(used).flatten().tolist():
            word = tokenizer.convert_ids_to_tokens(int(ids[row, positions[row, slot]])).removesuffix("</w>")
            owners = [p.shape_index for p in scene.phrases if word in (*p.adjectives, p.noun)]
            assert any(np.array_equal(masks[row, slot].numpy(), visible[i]) for i in owners)
        assert not masks[row, ~used].any()

    # With absent words every caption also names a shape kind the scene lacks; its attention belongs to the background.
    _, absent_ids, absent_positions, absent_masks, absent = batch(3, 8, tokenizer, absent_words=1.0)
    for row in range(8):
        scene = make_scene("train", 3 * 8 + row)
        _, visible = render(scene, 64)
        (slot,) = torch.nonzero(absent[row]).flatten().tolist()
        noun = tokenizer.convert_ids_to_tokens(int(absent_ids[row, absent_positions[row, slot]])).removesuffix("</w>")
        assert noun in SHAPES and all(shape.kind != noun for shape in scene.shapes)
        np.testing.assert_array_equal(absent_masks[row, slot].numpy(), ~np.any(visible, axis=0))
        end = int((ids[row] == tokenizer.eos_token_id).nonzero()[0])
        assert torch.equal(absent_ids[row, :end], ids[row, :end])  # appended: the caption itself is unchanged
        shown = int((positions[row] > 0).sum())
        assert torch.equal(absent_positions[row, :shown], positions[row, :shown])
        assert torch.equal(absent_masks[row, :shown], masks[row, :shown])


def test_grounding_losses_are_zero_inside_the_shape_and_grow_outside():
    from anyword.shapes.training import grounding_loss

    masks = torch.zeros(2, 4, 64, 64, dtype=torch.bool)
    masks[0, 0, 8:24, 40:64] = True  # a wide shape in the top right (rows 8-23, columns 40-63)
    masks[1, 0, 32:, :32] = True
    positions = torch.tensor([[5, 0, 0, 0], [7, 0, 0, 0]])
    heads, side = 2, 16
    inside = torch.zeros(2 * heads, side * side, 77)
    inside[..., 0] = 1.0  # every cell looks at the start token...
    grid = torch.zeros(side, side)
    grid[2:6, 10:16] = 1.0  # ...except where the first shape is (64 px -> 16 cells: rows 2-5, columns 10-15)
    inside[:heads, :, 5] = grid.flatten()
    inside[:heads, :, 0] -= grid.flatten()
    keep = torch.tensor([True, False])
    none_absent = torch.zeros(2, 4, dtype=torch.bool)  # every supervised word names a shape in the scene
    token, pixel = grounding_loss([(side, inside)], positions, masks, none_absent, keep)
    assert token == 0 and pixel == pytest.approx(0, abs=1e-5)
    transposed = inside.clone()  # the same attention mirrored to the bottom left: (H, W) swapped for (W, H)
    transposed[:heads, :, 5] = grid.T.flatten()
    token, pixel = grounding_loss([(side, transposed)], positions, masks, none_absent, keep)
    # 24 cells attend outside the shape and the shape's 24 cells do not: BCE -log(1e-6) on 48 of 256 cells
    assert token == pytest.approx(1.0) and pixel == pytest.approx(48 / 256 * -np.log(1e-6), rel=1e-3)

    uniform = torch.full((2 * heads, side * side, 77), 1 / 77, requires_grad=True)
    token, pixel = grounding_loss([(side, uniform)], positions, masks, none_absent, torch.tensor([True, True]))
    areas = np.array([16 * 24, 32 * 32]) / 64**2
    assert float(token.detach()) == pytest.approx(np.mean((1 - areas) ** 2), rel=1e-5)
    expected_pixel = np.mean(areas * np.log(77) + (1 - areas) * -np.log(1 - 1 / 77))
    assert float(pixel.detach()) == pytest.approx(expected_pixel, rel=1e-4)
    (token + pixel).backward()
    assert uniform.grad is not None and uniform.grad.abs().sum() > 0
    assert grounding_loss([(side, uniform)], positions, masks, none_absent, torch.tensor([False, False])) == (0, 0)

    # A word for an absent shape (mask: the background) should take no cell's attention, least of all on shapes.
    absent = torch.tensor([[True, False, False, False], [False, False, False, False]])
    background = masks.clone()
    background[0, 0] = ~masks[0, 0]
    token, pixel = grounding_loss([(side, inside)], positions, background, absent, keep)
    assert token == pytest.approx(1.0)  # all its attention sits on the shape
    assert pixel == pytest.approx(24 / 256 * -np.log(1e-6), rel=1e-3)  # and takes those 24 cells entirely
    off_shape = inside.clone()
    off_shape[:heads, :, 5] = 0.01 * (1 - grid.flatten())  # a little of every background cell
    token, pixel = grounding_loss([(side, off_shape)], positions, background, absent, keep)
    assert token == pytest.approx(0, abs=1e-6) and pixel == pytest.approx(232 / 256 * -np.log(0.99), rel=1e-3)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--grounding-weight", "-1", "--grounding-weight: must be at least 0.0"),
        ("--pixel-weight", "-0.5", "--pixel-weight: must be at least 0.0"),
        ("--grounding-max-t", "0", "--grounding-max-t: must be between 1 and 1000"),
        ("--same-colour", "2", "--same-colour: must be between 0.0 and 1.0"),
        ("--absent-words", "1.5", "--absent-words: must be between 0.0 and 1.0"),
        ("--qk-gain", "0", "--qk-gain: must be greater than 0.0"),
        ("--steps", "5", "--steps is --train-steps here"),
    ],
)
def test_train_cli_rejects_bad_settings(run_cli, tmp_path, flag, value, message):
    done = run_cli("shapes", "train", "--out", tmp_path / "run", flag, value)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_config_refuses_what_the_cli_refuses():
    from anyword.shapes.training import TrainConfig

    with pytest.raises(SettingsError, match="same_colour is a probability"):
        TrainConfig(same_colour=2.0)
    with pytest.raises(SettingsError, match="grounding_max_t is a timestep"):
        TrainConfig(grounding_max_t=0)


@pytest.mark.parametrize(("place", "expected"), [("end", "{caption} {control}"), ("start", "{control}. {caption}")])
def test_control_word_is_a_shape_the_caption_lacks(place, expected):
    from anyword.shapes.localization import with_control

    scene = make_scene("seen", 4, min_shapes=2, max_shapes=4)
    caption, concepts, control = with_control(scene, place)
    assert control in SHAPES and all(p.noun != control for p in scene.phrases)
    assert caption == expected.format(caption=scene.caption, control=control)
    by_phrase = {c.phrase: c for c in concepts}
    assert set(by_phrase) == {p.text for p in scene.phrases} | {control}
    (mention,) = by_phrase[control].mentions
    assert caption[mention.noun[0] : mention.noun[1]] == control
    inserted, _, _ = with_control(scene, "second")
    first, _, rest = scene.caption.partition(" ")
    assert inserted == f"{first} {control} {rest}"


def test_training_target_follows_the_prediction_type():
    from diffusers import DDIMScheduler

    from anyword.diffusion.prompt_learning import training_target

    clean, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 500])
    epsilon = DDIMScheduler(prediction_type="epsilon")
    velocity = DDIMScheduler(prediction_type="v_prediction")
    assert torch.equal(training_target(epsilon, clean, noise, t), noise)
    alpha = velocity.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = alpha.sqrt() * noise - (1 - alpha).sqrt() * clean
    torch.testing.assert_close(training_target(velocity, clean, noise, t), expected)


def test_grabcut_segments_a_shape_from_one_point():
    from anyword.segment import MaskRequest
    from anyword.segment.grabcut import GrabCutSegmenter

    scene = next(
        make_scene("seen", i)
        for i in range(100)
        if make_scene("seen", i).texture == "plain" and len(make_scene("seen", i).shapes) == 2
    )
    image, masks = render(scene, 128)
    segmenter = GrabCutSegmenter()
    embedding = segmenter.embed(image)
    ys, xs = np.nonzero(masks[0])
    inside = (float(np.median(xs)), float(np.median(ys)))
    ys2, xs2 = np.nonzero(masks[1])
    other = (float(np.median(xs2)), float(np.median(ys2)))
    for point in (inside,):
        assert masks[0][round(point[1]), round(point[0])]
    request = MaskRequest(
        points=np.array([inside, other], dtype=np.float32),
        labels=np.array([1, 0], dtype=np.int32),
        heatmap=np.zeros((128, 128), np.float32),
    )
    prediction = segmenter.segment(embedding, request)
    assert mask_iou(prediction.mask, masks[0]) > 0.7
    assert prediction.score == 1.0
    assert np.array_equal(segmenter.segment(embedding, request).mask, prediction.mask)  # deterministic

    # Cold parts of the map are certain background: the mask stays inside the warm area around the point.
    warm = cv2.dilate(masks[0].astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    heatmap = np.where(warm, 0.8, 0.1).astype(np.float32)
    point_only = MaskRequest(points=np.array([inside], np.float32), labels=np.array([1], np.int32), heatmap=heatmap)
    bounded = segmenter.segment(embedding, point_only).mask
    assert not (bounded & ~warm).any() and mask_iou(bounded, masks[0]) > 0.7
    # ... except where a positive point lies in the cold part: a click that corrects a wrong map still works.
    wrong_map = np.where(masks[1], 0.9, 0.05).astype(np.float32)
    click = MaskRequest(points=np.array([inside], np.float32), labels=np.array([1], np.int32), heatmap=wrong_map)
    assert mask_iou(segmenter.segment(embedding, click).mask, masks[0]) > 0.7


@pytest.fixture(scope="module")
def shapes_backbone():
    from anyword.presets import get_preset

    return get_preset("shapes").load(device="cpu")


def test_shipped_model_loads_offline(shapes_backbone):
    backbone = shapes_backbone
    assert backbone.vae is None and backbone.latent_factor == 1 and backbone.resolution == 64
    assert backbone.attention_grids == (32, 16) and backbone.default_attention_grid == 16
    assert backbone.prediction_type == "v_prediction" and not backbone.random_weights
    pixels, _ = render(make_scene("seen", 0), 64)
    latents = backbone.encode_image(pixels)
    assert latents.shape == (1, 3, 64, 64) and latents.min() >= -1 and latents.max() <= 1
    expected = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    torch.testing.assert_close(latents, expected)  # pixel space: the "latent" is the image itself


@pytest.mark.slow
def test_shipped_model_points_at_named_shapes(shapes_backbone):
    from anyword.presets import get_preset
    from anyword.settings import Overrides
    from anyword.shapes.localization import localization

    settings = get_preset("shapes").settings(Overrides(learning_steps=0)).diffusion  # grids 16 + 32, t <= 400
    # Held-out validation scenes of the training distribution (not the test splits).
    result = localization(shapes_backbone, settings, "train", 12, start=7_000_000, progress=False)
    assert result["attention_resolutions"] == [16, 32] and result["attention_timesteps"] == (0, 400)
    # 33 shapes; measured noun 0.88, colour 0.91, control 0.06, chance 0.05 (docs/benchmarks.md: 0.9 on 300 test shapes)
    assert result["noun_pointing"] >= 0.7 and result["colour_pointing"] >= 0.7
    assert result["control_pointing"] <= 0.2  # a word the caption lacks does not light the shapes


def test_variants_probe_scores_every_grid_and_control_place(shapes_backbone):
    import importlib.util
    from pathlib import Path

    from anyword.shapes.localization import CONTROL_PLACES, with_control

    path = Path(__file__).parents[1] / "scripts" / "shapes_variants.py"
    spec = importlib.util.spec_from_file_location("shapes_variants", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    pointing, shares = harness.direct_probe(shapes_backbone, n=3, shares_n=1)
    places = [p for p in CONTROL_PLACES if p != "end"]
    assert set(pointing) == {"direct16", "direct32", "direct16_32"} | {f"direct16_32_control_{p}" for p in places}
    assert len({row["chance"] for row in pointing.values()}) == 1  # every row scores the same shapes
    assert all(0 <= row[k] <= 1 for row in pointing.values() for k in ("noun", "colour", "control"))
    assert shares["words_on_shapes"] > shares["words_on_background"]
    scene = make_scene("train", harness.VALIDATION_START, min_shapes=2, max_shapes=4)
    captions = {place: with_control(scene, place)[0] for place in CONTROL_PLACES}
    assert len(set(captions.values())) == len(CONTROL_PLACES) and captions["end"].startswith(scene.caption)


def test_direct_inversion_is_exact_with_v_prediction(shapes_backbone):
    from anyword.diffusion import DiffusionSettings, LearningSettings, extract_attention
    from anyword.tokens import align_tokens

    scene = make_scene("seen", 3)
    image, _ = render(scene, 64)
    concepts = true_concepts(scene)
    alignment = align_tokens(scene.caption, concepts, shapes_backbone.tokenizer)
    settings = DiffusionSettings(
        inversion_steps=10, learning=LearningSettings(steps=2, batch_size=2), attention_resolutions=(16, 32)
    )
    result = extract_attention(shapes_backbone, image, alignment, settings)
    assert result.reconstruction_mse < 1e-10
    assert result.maps.token_grids.shape == (77, 32, 32)
    assert len(result.embeddings.losses) == 2 and all(np.isfinite(result.embeddings.losses))


@pytest.mark.slow
def test_ablation_cli_prints_one_row_per_configuration(run_cli):
    from anyword.shapes.ablation import ABLATION

    quick = ["--split", "novel", "--n", "2", "--steps", "2", "--inversion-steps", "8", "--quiet"]
    done = run_cli("shapes", "ablation", *quick, "--learning-rate", "0.002", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one JSON object
    assert result["split"] == "novel" and result["n"] == 2 and result["scenes"] == [0, 1]
    assert result["settings"]["learning_steps"] == 2 and result["settings"]["inversion_steps"] == 8
    assert result["settings"]["learning_rate"] == 0.002
    assert list(result["rows"]) == list(ABLATION)
    for name, row in result["rows"].items():
        assert (row["learning"], row["r1"], row["r2"]) == (
            ABLATION[name].learning,
            ABLATION[name].r1,
            ABLATION[name].r2,
        )
        for metric in ("miou", "ciou", "giou", "ap50", "recall"):
            assert 0.0 <= row[metric] <= 1.0, (name, metric)
        assert row["seconds_per_image"] > 0
    assert result["rows"]["plain"]["segmenter"] == "plain" and result["rows"]["full"]["segmenter"] == "sam-shapes"
    assert result["rows"]["full_grabcut"]["segmenter"] == "grabcut"
    # world 1 has no parts: no phrase can take the other granularity
    assert result["ambiguous_phrases"] == 0 and result["rows"]["segmenter"]["ambiguous_phrase_iou"] is None
    again = json.loads(run_cli("shapes", "ablation", *quick, "--learning-rate", "0.002", "--json").stdout)
    assert {k: v["miou"] for k, v in again["rows"].items()} == {k: v["miou"] for k, v in result["rows"].items()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shapes", "ablation", "--split", "bogus"], "invalid choice: 'bogus'"),
        (["shapes", "ablation", "--n", "0"], "--n"),
        (["shapes", "ablation", "--start", "-3"], "--start"),
        (["shapes", "ablation", "--rows", "everything"], "invalid choice: 'everything'"),
        (["shapes", "localization", "--steps", "5"], "unrecognized arguments: --steps"),
        (["shapes", "ablation", "--learning-rate", "0"], "--learning-rate: must be greater than 0.0, got 0.0"),
        (["shapes", "ablation", "--learning-rate", "nan"], "--learning-rate: expected a finite number, got 'nan'"),
        (["eval", "--dataset", "coco"], "invalid choice: 'coco'"),
        (["eval", "--dataset", "grandf", "--ablation"], "--ablation runs on the synthetic worlds (shapes, parts)"),
        (["eval", "--localization"], "--localization is `anyword shapes localization` here"),
        (["eval", "--dataset", "shapes", "--n", "2"], "needs --out RUN_DIR"),
    ],
)
def test_shapes_and_eval_cli_reject_bad_arguments(run_cli, args, message):
    done = run_cli(*args, "--quiet")
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
