"""Segmenters (tiny SAM, plain) and checkpoint fetching with sha256 checks."""

from __future__ import annotations

import hashlib
import importlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from anyword.downloads import Checkpoint, fetch
from anyword.errors import ModelUnavailableError
from anyword.segment import SEGMENTERS, TINY, MaskRequest, segmenter_spec
from anyword.segment.plain import PlainSegmenter
from anyword.segment.sam import SAM_CHECKPOINTS, SamSegmenter

# The backends served through transformers' hub classes (SAM 2.1, HQ-SAM, and whatever joins them): read from the
# registry, so a new one is tested without touching this file.
HUB_BACKENDS = [key for key, spec in SEGMENTERS.items() if hasattr(importlib.import_module(spec.module), "REPOS")]


def tiny(key: str):
    return segmenter_spec(key).load(weights=TINY, device="cpu")


@pytest.fixture()
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_verifies_and_reuses(file_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ANYWORD_OFFLINE", raising=False)
    root, url = file_server
    payload = bytes(range(256)) * 5000
    (root / "weights.pth").write_bytes(payload)
    checkpoint = Checkpoint("weights.pth", f"{url}/weights.pth", hashlib.sha256(payload).hexdigest(), "sam")
    cache = tmp_path / "cache"
    path = fetch(checkpoint, cache, progress=False)
    assert path == cache / "sam" / "weights.pth" and path.read_bytes() == payload
    (root / "weights.pth").unlink()  # a second call uses the cache, no network
    assert fetch(checkpoint, cache, progress=False) == path

    path.write_bytes(b"tampered")
    with pytest.raises(ModelUnavailableError, match="expected"):
        fetch(checkpoint, cache, progress=False)


def test_fetch_rejects_a_bad_download_and_keeps_nothing(file_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ANYWORD_OFFLINE", raising=False)
    root, url = file_server
    (root / "weights.pth").write_bytes(b"evil bytes")
    checkpoint = Checkpoint("weights.pth", f"{url}/weights.pth", "0" * 64)
    with pytest.raises(ModelUnavailableError, match="corrupt or was tampered with"):
        fetch(checkpoint, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    missing = Checkpoint("nope.pth", f"{url}/nope.pth", "0" * 64)
    with pytest.raises(ModelUnavailableError, match=r"downloading .* failed"):
        fetch(missing, tmp_path / "cache", progress=False)


def test_offline_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYWORD_OFFLINE", "1")
    monkeypatch.setenv("ANYWORD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailableError) as raised:
        SamSegmenter.load("vit_h")
    message = str(raised.value)
    assert "sam_vit_h_4b8939.pth" in message and SAM_CHECKPOINTS["vit_h"].url in message
    assert str(tmp_path / "cache" / "sam") in message


class Payload:
    """Stands for any object a malicious pickle could build."""


def test_checkpoints_load_with_weights_only(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, evil)  # a pickle with an arbitrary object
    with pytest.raises(ModelUnavailableError, match="not a loadable SAM checkpoint"):
        SamSegmenter.load("vit_b", checkpoint=evil)
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(2)}, wrong)
    with pytest.raises(ModelUnavailableError, match="does not hold SAM vit_b weights"):
        SamSegmenter.load("vit_b", checkpoint=wrong)


def two_points() -> MaskRequest:
    """A positive and a negative point on a 130x70 image."""
    return MaskRequest(
        points=np.array([[100.0, 20.0], [10.0, 60.0]], dtype=np.float32),
        labels=np.array([1, 0], dtype=np.int32),
        heatmap=np.zeros((70, 130), np.float32),
    )


def test_tiny_sam_masks_have_the_image_size_and_are_deterministic():
    segmenter = tiny("sam")
    assert (segmenter.key, segmenter.label) == ("sam", "sam-tiny") and segmenter.random_weights
    rng = np.random.default_rng(0)
    image = (rng.random((70, 130, 3)) * 255).astype(np.uint8)
    embedding = segmenter.embed(image)
    assert embedding.features.device.type == "cpu" and embedding.original_size == (70, 130)
    request = two_points()
    first = segmenter.segment(embedding, request)
    assert first.mask.shape == (70, 130) and first.mask.dtype == bool and 0.0 <= first.score <= 1.0
    assert np.array_equal(segmenter.segment(embedding, request).mask, first.mask)
    moved = MaskRequest(
        points=np.array([[5.0, 5.0]], dtype=np.float32), labels=np.array([1], dtype=np.int32), heatmap=request.heatmap
    )
    assert not np.array_equal(segmenter.segment(embedding, moved).mask, first.mask)  # prompts matter
    only_negative = MaskRequest(points=request.points[1:], labels=request.labels[1:], heatmap=request.heatmap)
    assert not segmenter.segment(embedding, only_negative).mask.any()


def test_every_backend_reports_its_registry_key():
    for key in SEGMENTERS:
        assert tiny(key).key == key


@pytest.mark.parametrize("name", HUB_BACKENDS)
def test_transformers_segmenters_embed_once_and_decode_at_the_image_size(name):
    segmenter = tiny(name)
    assert segmenter.label == f"{name}-tiny-random" and segmenter.random_weights and segmenter.parameter_count() > 0
    image = (np.random.default_rng(1).random((70, 130, 3)) * 255).astype(np.uint8)
    embedding = segmenter.embed(image)
    assert embedding.original_size == (70, 130) and all(f.device.type == "cpu" for f in embedding.features)
    request = two_points()
    first = segmenter.segment(embedding, request)
    assert first.mask.shape == (70, 130) and first.mask.dtype == bool and 0.0 <= first.score <= 1.0
    assert np.array_equal(segmenter.segment(embedding, request).mask, first.mask)
    only_negative = MaskRequest(points=request.points[1:], labels=request.labels[1:], heatmap=request.heatmap)
    assert not segmenter.segment(embedding, only_negative).mask.any()


@pytest.mark.parametrize("name", HUB_BACKENDS)
@pytest.mark.parametrize("point", [(120.0, 8.0), (6.0, 64.0), (65.0, 35.0)])
def test_transformers_segmenters_map_points_and_masks_back_to_the_original_pixels(name, point):
    """A decoder that lights up exactly the low-resolution cell under the prompt it receives: the final mask must
    hold the original point (points go image -> encoder input, masks come back; SAM-HQ pads, SAM 2.1 stretches)."""
    segmenter = tiny(name)
    image = np.zeros((70, 130, 3), np.uint8)
    embedding = segmenter.embed(image)
    side = 128  # the tiny models' square input

    def decode(features, points, labels):
        low = torch.full((1, 1, 3, 32, 32), -10.0)
        x, y = (points[0, 0, 0] * 32 / side).long().clamp(0, 31).tolist()
        low[..., y, x] = 10.0
        return low, torch.tensor([[[0.9, 0.1, 0.1]]])

    segmenter.decode = decode
    request = MaskRequest(
        points=np.array([point], np.float32), labels=np.array([1], np.int32), heatmap=np.zeros((70, 130), np.float32)
    )
    mask = segmenter.segment(embedding, request).mask
    assert mask.shape == (70, 130) and 0 < mask.sum() < 0.02 * mask.size  # one low-resolution cell's worth
    ys, xs = np.nonzero(mask)
    # The cell under the point comes back around it (within a cell's size in original pixels, ~4 px here).
    assert np.hypot(xs - point[0], ys - point[1]).min() <= 1.5
    assert np.hypot(xs.mean() - point[0], ys.mean() - point[1]) <= 4.0


def test_plain_segmenter_thresholds_the_map():
    heatmap = np.zeros((30, 50), dtype=np.float32)
    heatmap[5:10, 20:40] = 0.9
    heatmap[20:25, 0:5] = 0.6
    prediction = PlainSegmenter().segment((30, 50), MaskRequest(np.zeros((0, 2)), np.zeros(0), heatmap, 0.7))
    assert prediction.mask.sum() == 100 and prediction.mask[7, 30] and not prediction.mask[22, 2]
    assert prediction.score == pytest.approx(0.9)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown segmenter"):
        segmenter_spec("magic")
    with pytest.raises(ValueError, match="unknown SAM model"):
        SamSegmenter.load("vit_z")


@pytest.mark.parametrize("name", HUB_BACKENDS)
def test_transformers_segmenters_offline_name_the_weights_and_how_to_get_them(name, monkeypatch, tmp_path):
    spec = segmenter_spec(name)
    repo = importlib.import_module(spec.module).REPOS[spec.default_model]
    assert repo.count("/") == 1  # a hub id
    monkeypatch.setenv("ANYWORD_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    availability = segmenter_spec(name).availability()
    assert availability.state == "missing" and repo in availability.reason
    with pytest.raises(ModelUnavailableError, match=f"'{repo}' are not in the Hugging Face cache.*hf download {repo}"):
        spec.load(device="cpu")
