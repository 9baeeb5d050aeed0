"""The preset registry and the settings layer: one declaration per preset, one place where overrides apply."""

from __future__ import annotations

import json

import pytest

from anyword.errors import AnywordError, SettingsError
from anyword.presets import LDM_CPU_COST, PRESETS, SD_CPU_COST, get_preset
from anyword.segment import SEGMENTERS, TINY
from anyword.settings import PAPER_LEARNING_STEPS, Overrides, PipelineSettings, apply_overrides
from tests.conftest import ASSETS, run_anyword


@pytest.mark.slow
def test_presets_json_lists_every_preset_with_its_availability(tmp_path):
    env = {"ANYWORD_CACHE": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    done = run_anyword("presets", "--json", env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {row["name"]: row for row in data["presets"]}
    assert list(rows) == list(PRESETS)  # every registered preset, in the registry's order
    assert rows["sd15"]["backbone"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert rows["sd15"]["available"] is False and rows["sd15"]["random_weights"] is False
    assert "HF_HUB_OFFLINE" in rows["sd15"]["weights"]["backbone"]["reason"]
    assert rows["sd15"]["weights"]["segmenter"]["where"].startswith(str(tmp_path))  # where SAM would go
    assert rows["sd15"]["learning_steps"] == PAPER_LEARNING_STEPS
    assert rows["shapes"]["available"] is True and rows["shapes"]["weights"]["backbone"]["state"] == "shipped"
    assert rows["shapes"]["segmenter"] == "sam" and rows["shapes"]["segmenter_model"] == "shapes"
    assert rows["shapes"]["learning_steps"] == 20 and rows["parts"]["weights"]["segmenter"]["state"] == "shipped"
    assert rows["shapes"]["fast_steps"] == 3 and rows["shapes"]["shipped_adapter"].endswith("shapes/adapter")
    assert rows["sd15"]["fast_steps"] == 50 and rows["sd15"]["shipped_adapter"] is None
    assert rows["tiny"]["available"] is True and rows["tiny"]["random_weights"] is True
    assert rows["shapes"]["speed"] == "batched" and rows["sd15"]["speed"] == "eager"
    assert [s["key"] for s in data["segmenters"]] == list(SEGMENTERS)


def test_every_preset_names_a_registered_segmenter_and_valid_settings():
    for preset in PRESETS.values():
        assert preset.segmenter in SEGMENTERS
        settings = preset.settings()
        assert isinstance(settings, PipelineSettings) and settings.diffusion.learning.steps >= 0
    with pytest.raises(AnywordError, match=r"unknown preset 'sd9'.*sd15"):
        get_preset("sd9")


def test_the_shapes_preset_runs_with_its_validated_settings():
    settings = get_preset("shapes").settings()
    assert settings.diffusion.attention_resolutions == (16, 32) and settings.diffusion.attention_timesteps == (0, 400)
    assert settings.diffusion.learning.steps == 20 and settings.diffusion.learning.batch_size == 2
    assert settings.diffusion.inversion_steps == 25 and settings.diffusion.learning.attention_dtype == "bf16"
    parts = get_preset("parts").settings().diffusion.learning  # world 2's tables ran (and run) 30 x 4
    assert (parts.steps, parts.batch_size) == (30, 4)
    assert settings.prompts.adjective_region == "noun_support" and settings.prompts.threshold == 0.7


def test_overrides_layer_on_the_preset_and_name_budgets():
    tiny = get_preset("tiny")
    assert tiny.settings().diffusion.learning.steps == 10 and tiny.settings().diffusion.inversion_steps == 25
    paper = tiny.settings(Overrides(quality="paper", seed=9, r2=False))
    assert paper.diffusion.learning.steps == PAPER_LEARNING_STEPS and paper.diffusion.inversion_steps == 25
    assert paper.diffusion.seed == paper.prompts.seed == 9 and paper.prompts.r2 is False and paper.prompts.r1
    assert tiny.settings(Overrides(quality="50-steps", learning_steps=3)).diffusion.learning.steps == 3
    untouched = PipelineSettings()
    assert apply_overrides(untouched, Overrides()) == untouched
    with pytest.raises(SettingsError, match="from 0 to 5000"):
        Overrides(learning_steps=6000)
    with pytest.raises(SettingsError, match="unknown quality"):
        Overrides(quality="turbo")


def test_tiny_gives_every_promptable_segmenter_toy_random_weights():
    tiny = get_preset("tiny")
    assert tiny.segmenter_weights == TINY
    promptable = [key for key, spec in SEGMENTERS.items() if spec.promptable]
    assert promptable  # SAM and its kin: networks of their own
    for key in promptable:
        assert tiny.segmenter_availability(key).state == "random"
        assert get_preset("sd15").segmenter_availability(key).state != "random"


def test_cpu_cost_is_said_for_big_presets_only():
    assert f"about {SD_CPU_COST.step_s:.0f} s" in get_preset("sd15").cost_warning(PAPER_LEARNING_STEPS, device="cpu")
    assert f"about {LDM_CPU_COST.step_s:.0f} s" in get_preset("ldm").cost_warning(PAPER_LEARNING_STEPS, device="cpu")
    assert get_preset("sd15").cost_warning(PAPER_LEARNING_STEPS, device="cuda") is None
    assert get_preset("tiny").cost_warning(PAPER_LEARNING_STEPS, device="cpu") is None


def test_the_cli_says_what_a_cpu_run_costs_before_it_starts(run_cli, offline):
    done = run_cli("segment", ASSETS / "coffee.png", "a red cup", "--out", offline / "out", "--device", "cpu")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    warning, error = done.stderr.strip().splitlines()
    assert warning.startswith("warning: sd15: without a GPU") and "--fast" in warning
    assert f"{SD_CPU_COST.step_s:.0f} s" in warning
    assert error.startswith("error: Stable Diffusion weights")


def test_a_bad_segmenter_size_is_one_clear_error_before_any_work(run_cli, tmp_path):
    command = ["segment", ASSETS / "coffee.png", "a red cup", "--out", tmp_path / "out", "--preset", "tiny"]
    done = run_cli(*command, "--segmenter", "sam2", "--segmenter-model", "huge", "--quiet")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: unknown sam2 model 'huge'")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
