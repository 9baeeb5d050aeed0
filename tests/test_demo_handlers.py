"""Demo handlers called directly (no server): the flow, point editing with real select events, bad input."""

from __future__ import annotations

import io
import json
import zipfile

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from anyword.errors import AnywordError
from anyword.parsing.llm_access import LLMAccess
from anyword.presets import SD_CPU_COST
from demo import choices
from demo import handlers as h
from demo.exports import ExportStore
from demo.models import ModelHub
from demo.requests import ComputeRequest, EditRequest, ParseRequest, PointSettings
from demo.state import DISPLAY_MAX_SIDE, Session
from tests.conftest import ASSETS
from tests.fake_openai import Reply
from tests.test_images import huge_png_header

CAPTION = "a red espresso cup on a red saucer with a silver spoon"


@pytest.fixture(scope="module")
def hub(nlp):
    return ModelHub(device="cpu", nlp=nlp)


def compute_quick(hub, session, seed=0):
    return h.compute(hub, session, ComputeRequest("tiny", quality=choices.CUSTOM, steps=1, seed=seed))


@pytest.fixture(scope="module")
def computed(hub, nlp):
    session, _ = h.set_image(Session(), str(ASSETS / "coffee.png"))
    session, _ = h.parse_caption(session, ParseRequest(CAPTION), nlp=nlp)
    session, view = compute_quick(hub, session)
    return session, view


def compute_preset(hub, session, quality=choices.PRESET_DEFAULT, steps=0):
    return h.compute(hub, session, ComputeRequest("tiny", quality=quality, steps=steps))


def select(x, y):
    return gr.SelectData(target=None, data={"index": [x, y], "value": None, "selected": True})


def test_parse_view_highlights_nouns_and_adjectives(nlp):
    _, view = h.parse_caption(Session(), ParseRequest("a red cup and a big silver spoon"), nlp=nlp)
    assert ("cup", "noun") in view["highlight"] and ("spoon", "noun") in view["highlight"]
    assert ("red", "adjective") in view["highlight"] and ("silver", "adjective") in view["highlight"]
    assert "".join(text for text, _ in view["highlight"]) == "a red cup and a big silver spoon"
    assert view["concept_choices"] == [("0: red cup", 0), ("1: big silver spoon", 1)]  # the page's words, the id
    assert view["concepts"][1][:4] == [1, "big silver spoon", "spoon", "big, silver"]


def test_compute_shows_maps_and_points(computed):
    session, view = computed
    assert session.attention is not None and session.prompts is not None
    labels = [title for _, title in view["gallery"]]
    assert labels == [  # a panel per concept and per bound adjective
        "0: red espresso cup",
        "0: 'red' of cup",
        "1: red saucer",
        "1: 'red' of saucer",
        "2: silver spoon",
        "2: 'silver' of spoon",
    ]
    assert view["editor"].shape == (400, 600, 3)  # the editor shows the original 600x400 photo
    assert "RANDOM WEIGHTS" in view["notice"]
    assert view["concept_choice"] == 0


def test_click_adds_a_point_in_image_pixels(computed):
    session, _ = computed
    before = len(session.prompts.for_concept(0))
    session, view = h.select_point(session, choices.NEGATIVE, select(590, 10))
    points = session.prompts.for_concept(0)
    assert len(points) == before + 1
    assert (points[-1].x, points[-1].y, points[-1].label, points[-1].source) == (590.0, 10.0, 0, "user")
    assert "negative point at (590, 10)" in view["notice"]
    session, _ = h.undo(session)
    assert len(session.prompts.for_concept(0)) == before
    session, _ = h.clear(session)
    assert session.prompts.for_concept(0) == ()
    session, _ = h.reset(session)
    assert session.prompts == session.sampled


def test_clicks_on_a_downscaled_editor_map_back_exactly(hub, nlp, tmp_path):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((700, 2400, 3), 90, dtype=np.uint8)).save(wide)  # shown at 1024 x 299
    session, _ = h.set_image(Session(), str(wide))
    session, _ = h.parse_caption(session, ParseRequest("a grey wall"), nlp=nlp)
    session, view = compute_quick(hub, session)
    scale = DISPLAY_MAX_SIDE / 2400
    assert view["editor"].shape == (round(700 * scale), DISPLAY_MAX_SIDE, 3)
    session, _ = h.select_point(session, choices.POSITIVE, select(1000, 100))
    point = session.prompts.for_concept(0)[-1]
    assert (point.x, point.y) == (round(1000 / scale), round(100 / scale))  # (2344, 342) in the original


@pytest.fixture()
def store(tmp_path):
    return ExportStore(tmp_path / "exports")


def test_segment_returns_masks_and_a_download(hub, computed, store):
    session, _ = computed
    session, _ = h.select_point(session, choices.POSITIVE, select(300, 200))
    session, view = h.segment(hub, session)
    base, annotations = view["annotated"]
    assert base.shape == (400, 600, 3)
    assert [label for _, label in annotations] == ["0: red espresso cup", "1: red saucer", "2: silver spoon"]
    assert all(mask.shape == (400, 600) and mask.dtype == bool for mask, _ in annotations)
    session, view = h.export(session, store)
    points = view["result_json"]["concepts"][0]["points"]
    assert {"x": 300.0, "y": 200.0, "label": 1, "source": "user"} in points
    with zipfile.ZipFile(view["download"]) as archive:
        names = set(archive.namelist())
        assert {"result.json", "masks_coco.json", "overlay.png", "heatmaps.png", "masks/0_cup.png"} <= names
        mask = Image.open(io.BytesIO(archive.read("masks/2_spoon.png")))
        assert mask.size == (600, 400)
        assert json.loads(archive.read("result.json"))["caption"] == CAPTION


def test_exported_settings_are_the_ones_the_attention_was_computed_with(hub, nlp, store):
    """Custom steps and seed on the page: result.json reports them (not the preset's 10 steps and seed 0)."""
    session, _ = h.set_image(Session(), str(ASSETS / "coffee.png"))
    session, _ = h.parse_caption(session, ParseRequest("a red cup"), nlp=nlp)
    session, view = h.compute(
        hub, session, ComputeRequest("tiny", quality=choices.CUSTOM, steps=2, seed=7, threshold=0.6, r2=False)
    )
    assert "2 prompt-learning steps, seed 7" in view["notice"]
    session, _ = h.segment(hub, session)
    session, view = h.export(session, store)
    for settings in (
        view["result_json"]["settings"],
        json.loads(zipfile.ZipFile(view["download"]).read("result.json"))["settings"],
    ):
        assert settings["diffusion"]["learning"]["steps"] == 2 and settings["diffusion"]["seed"] == 7
        assert settings["prompts"]["seed"] == 7 and settings["prompts"]["threshold"] == 0.6
        assert settings["prompts"]["r2"] is False
        assert settings["diffusion"]["inversion_steps"] == 25  # the tiny preset's own


def test_a_point_edit_never_reruns_the_image_encoder_whatever_other_sessions_do(hub, nlp):
    """Six sessions with six images (more than any shared cache would hold), then an edit in the first one: the
    mask decoder runs, the image encoder and the diffusion model do not."""
    pipeline = hub.pipeline("tiny")
    sessions = []
    for index in range(6):
        session, _ = h.set_image(Session(), str(ASSETS / "coffee.png"))
        session.image = np.ascontiguousarray(np.roll(session.image, 37 * index, axis=1))  # six different images
        session.digest = f"image-{index}"
        session, _ = h.parse_caption(session, ParseRequest("a red cup"), nlp=nlp)
        session, _ = h.compute(hub, session, ComputeRequest("tiny", quality=choices.CUSTOM, steps=0))
        sessions.append(session)
    before = dict(pipeline.counters)
    first, _ = h.select_point(sessions[0], choices.POSITIVE, select(100, 100))
    first, view = h.segment(hub, first)
    assert pipeline.counters["embed"] == before["embed"]
    assert pipeline.counters["attention"] == before["attention"]
    assert pipeline.counters["unet_calls"] == before["unet_calls"]
    assert pipeline.counters["decode"] == before["decode"] + 1
    assert view["annotated"][1][0][0].shape == (400, 600)


def test_the_segmenter_is_chosen_on_the_page(hub, nlp):
    session, _ = h.set_image(Session(), str(ASSETS / "coffee.png"))
    session, _ = h.parse_caption(session, ParseRequest("a red cup"), nlp=nlp)
    session, _ = h.compute(hub, session, ComputeRequest("tiny", "sam2", quality=choices.CUSTOM, steps=0))
    session, view = h.segment(hub, session)
    assert "sam2-tiny-random" in view["notice"] and session.result.masks[0].shape == (400, 600)
    assert (
        session.result.models["segmenter"] == "sam2" and session.result.models["segmenter_model"] == "sam2-tiny-random"
    )


def test_custom_steps_out_of_range_are_refused_by_name(hub, nlp):
    session, _ = h.set_image(Session(), str(ASSETS / "coffee.png"))
    session, _ = h.parse_caption(session, ParseRequest("a red cup"), nlp=nlp)
    with pytest.raises(AnywordError, match="from 0 to 5000"):
        h.compute(hub, session, ComputeRequest("tiny", quality=choices.CUSTOM, steps=9999))


def test_a_pretrained_preset_on_a_cpu_says_what_it_costs_before_it_starts():
    notice = h.preset_notice("sd15", device="cpu")
    assert f"about {SD_CPU_COST.step_s:.0f} s" in notice and "would take about" in notice
    assert "**50 steps, no adapter**" in notice
    assert "cost" not in h.preset_notice("shapes", device="cpu") and "Note" not in h.preset_notice("tiny", "cpu")


def test_offline_the_page_starts_on_the_shapes_model(monkeypatch):
    from huggingface_hub import constants

    from demo.ui import DemoConfig, _startup_preset

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ANYWORD_OFFLINE", "1")
    monkeypatch.setenv("ANYWORD_CACHE", "/nonexistent-anyword-cache")
    preset, status = _startup_preset(DemoConfig(preset="sd15"))
    assert preset == "shapes" and "cannot run here" in status and "tiny" in status


def test_threshold_and_regularisation_changes_resample_without_diffusion(hub, computed):
    session, _ = computed
    pipeline = hub.pipeline("tiny")
    unet_calls = pipeline.counters["unet_calls"]
    session, view = h.resample(hub, session, PointSettings(0.5, False, False, 0))
    assert pipeline.counters["unet_calls"] == unet_calls
    assert all(p.source == "noun" for p in session.prompts.for_concept(0))  # no R1 adjective, no R2 negatives
    assert "threshold 0.50" in view["notice"] and len(view["gallery"]) >= 3


def test_concept_edits(nlp):
    session, _ = h.parse_caption(Session(), ParseRequest("a red cup next to a spoon"), nlp=nlp)
    session, view = h.edit_concepts(session, EditRequest(choices.DROP, 1))
    assert view["concept_choices"] == [("0: red cup", 0)]
    session, view = h.edit_concepts(session, EditRequest(choices.ADD, None, "spoon"))
    assert view["concept_choices"] == [("0: red cup", 0), ("1: spoon", 1)]
    session, view = h.edit_concepts(session, EditRequest(choices.UNBIND, 0, "red"))
    assert session.parse.concept(0).adjectives == ()
    session, view = h.edit_concepts(session, EditRequest(choices.BIND, 1, "red"))
    assert session.parse.concept(1).adjectives == ("red",)
    with pytest.raises(AnywordError, match="not a word of the caption"):
        h.edit_concepts(session, EditRequest(choices.ADD, None, "fork"))
    with pytest.raises(AnywordError, match="Pick a concept"):
        h.edit_concepts(session, EditRequest(choices.DROP))


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            lambda hub, s: compute_preset(hub, Session()),
            "Upload an image",
        ),
        (lambda hub, s: compute_preset(hub, s), "Parse the caption"),
        (lambda hub, s: h.click(s, 10, 10, choices.POSITIVE), "Compute attention first"),
        (lambda hub, s: h.segment(hub, s), "Compute attention first"),
        (lambda hub, s: h.export(s, None), "Segment first"),
        (lambda hub, s: h.undo(s), "Nothing to undo"),
        (lambda hub, s: h.parse_caption(s, ParseRequest("  ")), "Type a caption"),
        (lambda hub, s: h.parse_caption(s, ParseRequest("hello!!")), "no nouns"),
        (
            lambda hub, s: compute_preset(hub, s, choices.CUSTOM, 9999),
            "Parse the caption",
        ),
    ],
)
def test_bad_steps_have_clear_messages(hub, step, message):
    session, _ = h.set_image(Session(), str(ASSETS / "coffee.png"))
    with pytest.raises(AnywordError, match=message):
        step(hub, session)


def test_bad_uploads(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(AnywordError, match="not a readable image"):
        h.set_image(Session(), str(corrupt))
    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png_header(30000, 20000))
    with pytest.raises(AnywordError, match="too large"):
        h.set_image(Session(), str(huge))
    session, _ = h.set_image(Session(), None)
    assert session.image is None


def test_llm_failure_falls_back_visibly_and_never_shows_the_key(openai_server, nlp):
    openai_server.reply = lambda body, headers: Reply(status=401)
    key = "sk-demo-SECRET-123456"
    local = LLMAccess(visitor_urls=True, refuse_private=False)  # a local server: the visitor is the operator
    request = ParseRequest("a dog on a sofa", choices.LLM, key, "gpt-4o", openai_server.base_url)
    session, view = h.parse_caption(Session(), request, nlp=nlp, llm=local)
    # one generic sentence: the visitor learns nothing about the endpoint's answer
    assert view["warning"] and "could not be used" in view["notice"] and "spaCy parsed" in view["notice"]
    assert "401" not in view["notice"]
    assert session.parse.parser == "spacy"
    assert key not in json.dumps(view, default=str) and key not in repr(session)
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {key}"


def test_fast_mode_uses_an_adapter_or_says_plainly_there_is_none(hub, nlp):
    session, _ = h.set_image(Session(), str(ASSETS / "shapes" / "novel_1007.png"))
    session, _ = h.parse_caption(session, ParseRequest("a red ball"), nlp=nlp)
    with pytest.raises(AnywordError, match=r"Fast mode .* needs a text-encoder adapter.*none for tiny"):
        h.compute(hub, session, ComputeRequest("tiny", quality="fast"))
    session, view = h.compute(hub, session, ComputeRequest("shapes", quality="fast"))
    assert "3 prompt-learning steps" in view["notice"] and "adapter adapter@" in view["notice"]
    session, _ = h.segment(hub, session)
    assert session.result.models["adapter"].startswith("adapter@")
    assert session.result.settings.diffusion.learning.steps == 3
    with pytest.raises(AnywordError, match="Pick an adapter from the list"):
        h.compute(hub, session, ComputeRequest("shapes", adapter="/etc", quality="fast"))


def test_warm_up_runs_the_pipeline_once_and_the_flags_reach_the_config(nlp):
    from demo.app import parse_args
    from demo.models import ModelHub

    warm = ModelHub(device="cpu", nlp=nlp)
    seconds = warm.warm_up("tiny")
    pipeline = warm.pipeline("tiny")
    assert seconds > 0 and pipeline.counters["unet_calls"] > 0 and pipeline.speed.name == "eager"
    args = parse_args(["--compile", "--warm-up"])
    assert args.compile and args.warm_up
    assert parse_args(["--fast-path"]).compile  # the old name, kept for one release
    compiled = ModelHub(device="cpu", nlp=nlp, speed="compiled")
    assert compiled.pipeline("tiny").backbone.speed.compile  # compiled on first learning step, not here


def test_the_page_starts_with_the_presets_own_point_settings_and_quality_labels():
    """Threshold, R1, R2 and the step counts in the labels come from the preset, never from the page's literals."""
    shapes, tiny = h.preset_view("shapes"), h.preset_view("tiny")
    assert dict((v, k) for k, v in shapes["quality_choices"])["paper"] == "paper (30 steps)"
    assert dict((v, k) for k, v in shapes["quality_choices"])["fast"].endswith("adapter + 3 steps)")
    assert dict((v, k) for k, v in tiny["quality_choices"])["paper"] == "paper (1100 steps)"
    assert shapes["steps"] == 20 and tiny["steps"] == 10
    _, view = h.choose_preset(Session(), "shapes")
    assert {key: view[key] for key in ("threshold", "r1", "r2")} == {"threshold": 0.7, "r1": True, "r2": True}
