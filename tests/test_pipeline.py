"""The end-to-end pipeline on the tiny preset: caching, point edits without diffusion work, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from anyword.diffusion import DiffusionSettings, LearningSettings
from anyword.images import load_image
from anyword.pipeline import SegmentAnyword
from anyword.prompts import PromptSettings
from anyword.settings import Overrides, PipelineSettings, apply_overrides
from tests.conftest import ASSETS

PHOTO = ASSETS / "chelsea.png"  # 451 x 300, a real non-square photo
CAPTION = "A tabby cat with big green eyes and a pink nose."
QUICK = PipelineSettings(
    diffusion=DiffusionSettings(inversion_steps=6, learning=LearningSettings(steps=2, batch_size=2))
)


@pytest.fixture(scope="module")
def pipeline(nlp):
    from anyword.parsing import SpacyParser

    return SegmentAnyword("tiny", parser=SpacyParser(nlp=nlp), settings=QUICK, device="cpu")


@pytest.fixture(scope="module")
def first(pipeline):
    return pipeline.run(PHOTO, CAPTION)


def test_result_holds_everything_at_the_original_size(first):
    assert first.image_size == (451, 300)
    assert [c.noun for c in first.concepts] == ["cat", "eyes", "nose"]
    for concept in first.concepts:
        assert first.masks[concept.id].shape == (300, 451) and first.masks[concept.id].dtype == bool
        assert first.heatmap(concept.id).shape == (300, 451)
        assert 0.0 <= first.scores[concept.id] <= 1.0
        assert all(0 <= p.x < 451 and 0 <= p.y < 300 for p in first.prompts.for_concept(concept.id))
    data = first.to_dict()
    assert data["image"] == {"width": 451, "height": 300} and data["random_weights"] is True
    assert data["models"]["backbone"] == "tiny" and data["models"]["segmenter"] == "sam"
    assert data["models"]["segmenter_model"] == "sam-tiny"
    assert data["settings"]["prompts"]["threshold"] == 0.7
    assert [c["noun"] for c in data["concepts"]] == ["cat", "eyes", "nose"]
    assert {"attention_learn_s", "attention_invert_s", "attention_denoise_s", "total_s"} <= set(data["timings"])
    assert any("random weights" in w for w in first.warnings)


def test_the_daam_style_views_of_a_result(first):
    """The README's per-word API: a word, a token position, a concept, an adjective, all at the image's size."""
    maps = first.attention.maps
    cat, nose = first.concepts[0], first.concepts[2]
    (position,) = first.alignment.for_concept(cat.id).noun_positions  # "cat" is one CLIP token
    assert maps.word_map("cat").shape == maps.token_map(position).shape == (300, 451)
    np.testing.assert_allclose(maps.word_map("cat"), maps.concept_map(cat.id))
    np.testing.assert_allclose(maps.token_map(position), maps.concept_map(cat.id))
    np.testing.assert_allclose(maps.adjective_map(nose.id, "pink"), maps.word_map("pink"))
    assert not np.allclose(maps.word_map("cat"), maps.word_map("pink"))  # different tokens, different maps
    assert maps.token_map(position, size="grid").shape == (16, 16)  # tiny's default grid
    with pytest.raises(KeyError, match="zebra"):
        maps.word_map("zebra")


def test_point_edits_rerun_only_the_segmenter(pipeline, first, monkeypatch):
    import anyword.pipeline as module

    def no_diffusion(*args, **kwargs):
        raise AssertionError("diffusion ran for a point edit")

    monkeypatch.setattr(module, "extract_attention", no_diffusion)
    analysis = pipeline.analyze(load_image(PHOTO), pipeline.parse(CAPTION))  # what a session keeps
    assert analysis.attention_cached and analysis.sampled.points == first.prompts.points
    before = dict(pipeline.counters)
    edited = first.prompts.clear(0).add_point(0, 400.0, 250.0, 1)
    again = pipeline.run(PHOTO, CAPTION, prompts=edited, analysis=analysis)
    assert again.attention_cached and again.attention is first.attention
    assert pipeline.counters["unet_calls"] == before["unet_calls"]
    assert pipeline.counters["attention"] == before["attention"]
    assert pipeline.counters["embed"] == before["embed"]  # SAM's image embedding is the analysis'
    assert pipeline.counters["decode"] == before["decode"] + 3
    assert "attention_learn_s" not in again.timings
    assert not np.array_equal(again.masks[0], first.masks[0])
    np.testing.assert_array_equal(again.masks[1], first.masks[1])  # untouched concepts keep their masks

    # New prompt settings re-sample points from the cached maps, still without diffusion.
    resampled = pipeline.run(
        PHOTO, CAPTION, settings=dataclasses.replace(QUICK, prompts=PromptSettings(threshold=0.5, r1=False))
    )
    assert resampled.attention_cached and pipeline.counters["unet_calls"] == before["unet_calls"]


def test_new_caption_or_image_recomputes_what_depends_on_it(pipeline, first):
    before = dict(pipeline.counters)
    pipeline.run(PHOTO, "a cat with a pink nose")
    assert pipeline.counters["attention"] == before["attention"] + 1
    pipeline.run(PHOTO, "a cat with a pink nose")  # cached attention
    assert pipeline.counters["attention"] == before["attention"] + 1
    flipped = load_image(PHOTO)[:, ::-1].copy()
    pipeline.run(flipped, "a cat with a pink nose")
    assert pipeline.counters["attention"] == before["attention"] + 2
    # Without an analysis passed in, each run embeds its image once (the caller keeps analyses, not the pipeline).
    assert pipeline.counters["embed"] == before["embed"] + 3


def test_each_image_is_hashed_once_per_run(pipeline, monkeypatch):
    import anyword.diffusion.extract as extract
    import anyword.pipeline as module

    calls = []
    original = module.image_digest

    def counting(image):
        calls.append(image.shape)
        return original(image)

    monkeypatch.setattr(module, "image_digest", counting)
    monkeypatch.setattr(extract, "image_digest", counting)
    pipeline.run(load_image(PHOTO)[:, :400].copy(), "a cat with a pink nose")  # new image: attention computed
    assert calls == [(300, 400, 3)]


def test_result_settings_are_the_ones_its_parts_were_made_with(pipeline):
    custom = apply_overrides(QUICK, Overrides(learning_steps=1, seed=7, threshold=0.6))
    result = pipeline.run(PHOTO, "a cat with a pink nose", settings=custom)
    # What was asked, with the attention grid made explicit: the model's default grid when none was set.
    used = dataclasses.replace(custom.diffusion, attention_resolutions=custom.diffusion.attention_resolutions or (16,))
    assert result.settings.diffusion == result.attention.settings == used
    assert result.settings.prompts == result.prompts.settings == custom.prompts
    data = result.to_dict()["settings"]
    assert data["diffusion"]["learning"]["steps"] == 1 and data["diffusion"]["seed"] == 7
    assert data["prompts"]["seed"] == 7 and data["prompts"]["threshold"] == 0.6


def test_same_seed_same_points_and_masks(nlp, first):
    from anyword.parsing import SpacyParser

    fresh = SegmentAnyword("tiny", parser=SpacyParser(nlp=nlp), settings=QUICK, device="cpu")
    again = fresh.run(PHOTO, CAPTION)
    assert again.prompts.points == first.prompts.points
    for cid in first.masks:
        np.testing.assert_array_equal(again.masks[cid], first.masks[cid])
    other = fresh.run(PHOTO, CAPTION, settings=apply_overrides(QUICK, Overrides(seed=7)))
    assert other.prompts.points != first.prompts.points


def test_plain_segmenter_outputs_the_thresholded_maps(nlp):
    from anyword.parsing import SpacyParser

    plain = SegmentAnyword("tiny", segmenter="plain", parser=SpacyParser(nlp=nlp), settings=QUICK, device="cpu")
    result = plain.run(PHOTO, "a cat with a pink nose")
    for concept in result.concepts:
        np.testing.assert_array_equal(result.masks[concept.id], result.heatmap(concept.id) >= 0.7)
    assert result.models["segmenter"] == "plain"


def test_edited_parse_is_honoured(pipeline):
    parse = pipeline.parse(CAPTION).drop_concept(1)
    result = pipeline.run(PHOTO, parse)
    assert [c.noun for c in result.concepts] == ["cat", "nose"]
    with pytest.raises(ValueError, match="belong to a"):
        pipeline.segment(load_image(PHOTO)[:100], parse, result.attention, result.prompts)
    whole = pipeline.analyze(load_image(PHOTO), pipeline.parse(CAPTION))
    with pytest.raises(ValueError, match="another image or caption"):
        pipeline.run(PHOTO, parse, analysis=whole)  # an analysis of the unedited parse


def test_learned_embeddings_are_saved_and_reused(nlp, tmp_path):
    from anyword.parsing import SpacyParser

    def pipeline():
        return SegmentAnyword(
            "tiny", parser=SpacyParser(nlp=nlp), settings=QUICK, device="cpu", embeddings_dir=tmp_path
        )

    first = pipeline()
    result = first.run(PHOTO, "a cat with a pink nose")
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors" and files[0].stat().st_size < 10_000
    second = pipeline()
    again = second.run(PHOTO, "a cat with a pink nose")
    steps = QUICK.diffusion.inversion_steps
    assert second.counters["unet_calls"] == 2 * steps  # inversion + denoising only: no prompt learning
    assert first.counters["unet_calls"] == 2 * steps + QUICK.diffusion.learning.steps
    np.testing.assert_allclose(again.attention.maps.token_grids, result.attention.maps.token_grids, atol=1e-6)
    second.run(PHOTO, "a cat with a pink nose", settings=apply_overrides(QUICK, Overrides(seed=5)))  # learns, saves
    assert len(list(tmp_path.iterdir())) == 2
