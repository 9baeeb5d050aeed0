"""`anyword segment` on the tiny preset with real photos: output files, batch mode, and bad input (the command
runs in this process; one run goes through the installed console script)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from anyword.segment import SEGMENTERS, TINY
from tests.conftest import ASSETS, QUICK_ARGS, run_anyword
from tests.test_images import huge_png_header

PROMPTABLE = [key for key, spec in SEGMENTERS.items() if spec.promptable]


@pytest.mark.parametrize("segmenter", ["sam", "plain"])
def test_segment_writes_consistent_outputs(run_cli, tmp_path, segmenter):
    out = tmp_path / "out"
    caption = "A tabby cat with big green eyes and a pink nose."
    done = run_cli("segment", ASSETS / "chelsea.png", caption, "--out", out, "--segmenter", segmenter, *QUICK_ARGS)
    assert done.returncode == 0, done.stderr
    assert "random weights" in done.stderr  # every output of the tiny preset says so
    assert {p.name for p in out.iterdir()} == {"result.json", "masks", "overlay.png", "heatmaps.png", "masks_coco.json"}
    result = json.loads((out / "result.json").read_text())
    coco = json.loads((out / "masks_coco.json").read_text())
    assert result["image"] == {"width": 451, "height": 300} and result["random_weights"] is True
    model = SEGMENTERS[segmenter].load(weights=TINY, device="cpu").label
    assert (result["models"]["segmenter"], result["models"]["segmenter_model"]) == (segmenter, model)
    assert result["settings"]["diffusion"]["learning"]["steps"] == 1
    assert [c["noun"] for c in result["concepts"]] == ["cat", "eyes", "nose"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0_cat.png", "1_eyes.png", "2_nose.png"]
    for concept, annotation in zip(result["concepts"], coco["annotations"], strict=True):
        png = np.asarray(Image.open(out / "masks" / f"{concept['id']}_{concept['noun']}.png"))
        assert png.shape == (300, 451) and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        assert int((png == 255).sum()) == concept["mask_area"] == annotation["area"]
        rle = {"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), png == 255)
        assert annotation["category_id"] == concept["id"] + 1 and annotation["phrase"] == concept["phrase"]
        assert all(0 <= p["x"] < 451 and 0 <= p["y"] < 300 for p in concept["points"])
        assert {p["label"] for p in concept["points"]} == {0, 1}  # R2 negatives present
    overlay = Image.open(out / "overlay.png")
    assert overlay.width == 451 and overlay.height > 300  # the image plus a legend
    assert Image.open(out / "heatmaps.png").mode == "RGB"


@pytest.mark.parametrize("segmenter", PROMPTABLE)
def test_every_promptable_segmenter_writes_masks_of_the_input_size(run_cli, tmp_path, segmenter):
    out = tmp_path / "out"
    image = tmp_path / "wide.png"
    Image.open(ASSETS / "coffee.png").crop((0, 0, 517, 283)).save(image)  # non-square, odd sizes
    done = run_cli(
        "segment", image, "a red ball next to a blue box", "--out", out, "--segmenter", segmenter, *QUICK_ARGS
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["models"]["segmenter"] == segmenter and result["image"] == {"width": 517, "height": 283}
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0_ball.png", "1_box.png"]
    for png in (out / "masks").iterdir():
        assert Image.open(png).size == (517, 283)


@pytest.mark.slow
def test_r1_r2_switches_and_seed_through_the_console_script(tmp_path):
    out = tmp_path / "out"
    args = ["--no-r1", "--no-r2", "--seed", "3", "--json", *QUICK_ARGS]
    done = run_anyword("segment", ASSETS / "coffee.png", "a red cup on a saucer", "--out", out, *args)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert all([p["source"] for p in c["points"]] == ["noun"] for c in result["concepts"])
    assert result["settings"]["prompts"]["seed"] == 3 and result["settings"]["diffusion"]["seed"] == 3


def test_batch_runs_good_lines_and_reports_bad_ones(run_cli, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name, image in {
        "cmyk.jpg": Image.new("CMYK", (90, 60), (0, 255, 255, 0)),
        "grey16.png": Image.fromarray(np.full((50, 80), 40000, dtype=np.uint16)),
        "alpha.png": Image.new("RGBA", (70, 40), (0, 0, 255, 128)),
        "grey.png": Image.new("L", (64, 48), 100),
    }.items():
        image.save(folder / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 100 x 40, upright 40 x 100
    Image.new("RGB", (100, 40), (200, 10, 10)).save(folder / "rotated.jpg", exif=exif)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "huge.png").write_bytes(huge_png_header(20000, 20000))
    os.mkfifo(folder / "pipe.png")  # opening it would block the run forever
    (folder / "folder.png").mkdir()
    lines = [
        {"image": "cmyk.jpg", "caption": "a red square"},
        {"image": "grey16.png", "caption": "a grey wall"},
        "this line is not json",
        {"image": "alpha.png", "caption": "a blue window"},
        {"image": "missing.png", "caption": "a dog"},
        {"image": "grey.png", "caption": "hello!!"},
        {"image": "corrupt.png", "caption": "a dog"},
        {"image": "huge.png", "caption": "a dog"},
        {"image": "rotated.jpg", "caption": "a red door"},
        {"caption": "no image key"},
        {"image": "pipe.png", "caption": "a dog"},
        {"image": "folder.png", "caption": "a dog"},
    ]
    batch = folder / "batch.jsonl"
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    batch.write_text("\ufeff" + text, encoding="utf-8")  # a byte-order mark, as some Windows editors write
    out = tmp_path / "out"
    done = run_cli("segment", "--batch", batch, "--out", out, *QUICK_ARGS)
    assert done.returncode == 2, done.stderr  # some lines failed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lines"] == 12 and summary["done"] == 4 and summary["failed"] == 8
    errors = {e["line"]: e["error"] for e in summary["errors"]}
    assert "not valid JSON" in errors[3]
    assert "not found" in errors[5]
    assert "no nouns" in errors[6]
    assert "corrupt" in errors[7]
    assert "too large" in errors[8] and "40 MP" in errors[8]
    assert '"image" and "caption"' in errors[10]
    assert "not a regular file" in errors[11] and "folder" in errors[12]
    assert 1 not in errors  # the byte-order mark is not part of line 1
    assert "Traceback" not in done.stderr and "line 5: error:" in done.stderr
    sizes = {
        Path(r["image"]).name: json.loads((Path(r["out"]) / "result.json").read_text())["image"]
        for r in summary["results"]
    }
    assert sizes == {
        "cmyk.jpg": {"width": 90, "height": 60},
        "grey16.png": {"width": 80, "height": 50},
        "alpha.png": {"width": 70, "height": 40},
        "rotated.jpg": {"width": 40, "height": 100},
    }
    rotated = next(Path(r["out"]) for r in summary["results"] if r["image"].endswith("rotated.jpg"))
    assert np.asarray(Image.open(next((rotated / "masks").iterdir()))).shape == (100, 40)  # upright (H, W)


@pytest.mark.parametrize(
    ("make", "caption", "message"),
    [
        (lambda p: p.write_bytes(b"GIF89a broken"), "a dog", "not a readable image"),
        (lambda p: p.write_bytes(huge_png_header(20000, 20000)), "a dog", "too large"),
        (lambda p: Image.new("RGB", (40, 30)).save(p, format="PNG"), "hello!!", "no nouns"),
        (lambda p: Image.new("RGB", (40, 30)).save(p, format="PNG"), "", "empty"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(run_cli, tmp_path, make, caption, message):
    path = tmp_path / "input.png"
    make(path)
    done = run_cli("segment", path, caption, "--out", tmp_path / "out", *QUICK_ARGS)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and message in done.stderr and "Traceback" not in done.stderr


def test_missing_arguments(run_cli, tmp_path):
    done = run_cli("segment", ASSETS / "coffee.png", "--out", tmp_path, *QUICK_ARGS)
    assert done.returncode == 2 and "give an IMAGE and a CAPTION" in done.stderr
    done = run_cli("segment", tmp_path / "nope.png", "a dog", "--out", tmp_path, *QUICK_ARGS)
    assert done.returncode == 2 and "not found" in done.stderr


def test_speed_and_learning_batch_options(run_cli, tmp_path):
    done = run_cli("segment", ASSETS / "coffee.png", "a cup", "--out", tmp_path / "a", *QUICK_ARGS,
                   "--speed", "batched", "--compile")  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: --compile means --speed compiled; it cannot go with --speed batched"
    )
    done = run_cli("segment", ASSETS / "coffee.png", "a cup", "--out", tmp_path / "b", *QUICK_ARGS,
                   "--speed", "batched", "--learning-batch", "3", "--learning-attention-dtype", "bf16")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["models"]["speed"] == "batched"
    assert result["settings"]["diffusion"]["learning"]["batch_size"] == 3
    assert result["settings"]["diffusion"]["learning"]["attention_dtype"] == "bf16"
