"""The shapes world: scenes and ground truth, the shipped model, GrabCut, and the v-prediction paths."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch

from anyword.metrics import mask_iou
from anyword.shapes.scenes import COLOURS, NOVEL_COLOURS, NOVEL_NOUNS, SHAPES, make_scene, phrase_masks, render


def test_scenes_are_deterministic_and_consistent():
    for split in ("train", "seen", "novel"):
        for index in range(20):
            scene = make_scene(split, index)
            assert scene == make_scene(split, index)
            image, masks = render(scene, 96)
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8
            assert len(masks) == len(scene.shapes) == len(scene.phrases)
            for phrase, mask in phrase_masks(scene, 96):
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
    from anyword.shapes.model import build_models, load_shapes_backbone
    from anyword.shapes.train import sharpen_cross_attention, train

    first = train(tmp_path, steps=1, batch_size=2, warmup=1, log_every=1, qk_gain=3.0, same_colour=0.5, gain_scenes=4)
    assert first["steps"] == 1 and first["qk_gain"] == 3.0 and np.isfinite(first["final_loss_ema"])
    resumed = train(tmp_path, steps=2, batch_size=2, warmup=1, log_every=1, qk_gain=3.0, same_colour=0.5, gain_scenes=4)
    assert resumed["steps"] == 2
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2]  # the second call went on from the checkpoint
    backbone = load_shapes_backbone(folder=tmp_path)
    assert "trained 2 steps" in backbone.source
    with pytest.raises(ValueError, match=r"same_colour 0.5 -> 0.0"):  # a resumed run keeps its data and init
        train(tmp_path, steps=3, batch_size=2, warmup=1, qk_gain=3.0, same_colour=0.0, gain_scenes=4)

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
    from anyword.diffusion import load_backbone

    return load_backbone("shapes", device="cpu")


def test_shipped_model_loads_offline(shapes_backbone):
    backbone = shapes_backbone
    assert backbone.vae is None and backbone.latent_factor == 1 and backbone.resolution == 64
    assert backbone.prediction_type == "v_prediction" and not backbone.random_weights
    pixels, _ = render(make_scene("seen", 0), 64)
    latents = backbone.encode_image(pixels)
    assert latents.shape == (1, 3, 64, 64) and latents.min() >= -1 and latents.max() <= 1
    np.testing.assert_array_equal(backbone.decode_latents(latents), pixels)  # pixel space is lossless


def test_shipped_model_points_at_named_shapes(shapes_backbone):
    from anyword.shapes.evaluate import localization

    # Held-out validation scenes of the training distribution (not the test splits).
    result = localization(
        "train", 12, resolutions=(16, 32), timesteps=(0, 400), start=7_000_000, progress=False, backbone=shapes_backbone
    )
    assert result["noun_pointing"] > 3 * result["chance"]
    assert result["colour_pointing"] > 3 * result["chance"]


def test_direct_inversion_is_exact_with_v_prediction(shapes_backbone):
    from anyword.diffusion import DiffusionSettings, LearningSettings, extract_attention
    from anyword.parsing import concepts_from_entries
    from anyword.tokens import align_tokens

    scene = make_scene("seen", 3)
    image, _ = render(scene, 64)
    entries = [{"noun": p.noun, "adjectives": list(p.adjectives), "phrase": p.text} for p in scene.phrases]
    concepts = concepts_from_entries(scene.caption, entries)
    alignment = align_tokens(scene.caption, concepts, shapes_backbone.tokenizer)
    settings = DiffusionSettings(
        inversion_steps=10, learning=LearningSettings(steps=2, batch_size=2), attention_resolutions=(16, 32)
    )
    result = extract_attention(shapes_backbone, image, alignment, settings)
    assert result.reconstruction_mse < 1e-10
    assert result.maps.token_grids.shape == (77, 32, 32)
    assert len(result.embeddings.losses) == 2 and all(np.isfinite(result.embeddings.losses))


def _eval_cli(*args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    anyword = str(Path(sys.executable).parent / "anyword")
    return subprocess.run(
        [anyword, "eval", *args], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


def test_eval_ablation_cli_prints_one_row_per_configuration():
    from anyword.shapes.evaluate import ABLATION

    quick = ["--dataset", "shapes", "--split", "novel", "--n", "2", "--steps", "2", "--inversion-steps", "8", "--quiet"]
    done = _eval_cli(*quick, "--ablation", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one JSON object
    assert result["split"] == "novel" and result["n"] == 2 and result["scenes"] == [0, 1]
    assert result["settings"]["learning_steps"] == 2 and result["settings"]["inversion_steps"] == 8
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
    again = json.loads(_eval_cli(*quick, "--ablation", "--json").stdout)
    assert {k: v["miou"] for k, v in again["rows"].items()} == {k: v["miou"] for k, v in result["rows"].items()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "coco"], "unknown dataset 'coco'"),
        (["--n", "0"], "--n"),
        (["--start", "-3"], "--start"),
        (["--localization", "--steps", "5"], "--steps cannot be combined with --localization"),
    ],
)
def test_eval_cli_rejects_bad_arguments(args, message):
    done = _eval_cli(*args, "--quiet")
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
