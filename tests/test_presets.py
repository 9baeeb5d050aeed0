"""The preset registry and the settings layer: one declaration per preset, one place where overrides apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anyword.errors import AnywordError, SettingsError
from anyword.presets import PRESETS, get_preset
from anyword.segment import SEGMENTERS, TINY
from anyword.settings import PAPER_LEARNING_STEPS, Overrides, PipelineSettings, apply_overrides

ANYWORD = str(Path(sys.executable).parent / "anyword")
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "ANYWORD_OFFLINE": "1"}


def test_presets_json_lists_every_preset_with_its_availability(tmp_path):
    env = {**OFFLINE, "ANYWORD_CACHE": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([ANYWORD, "presets", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {row["name"]: row for row in data["presets"]}
    assert set(rows) == {"sd15", "sd14", "tiny", "sd15-random", "shapes"}
    assert rows["sd15"]["backbone"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert rows["sd15"]["available"] is False and rows["sd15"]["random_weights"] is False
    assert "HF_HUB_OFFLINE" in rows["sd15"]["weights"]["backbone"]["reason"]
    assert rows["sd15"]["weights"]["segmenter"]["where"].startswith(str(tmp_path))  # where SAM would go
    assert rows["sd15"]["learning_steps"] == PAPER_LEARNING_STEPS
    assert rows["shapes"]["available"] is True and rows["shapes"]["weights"]["backbone"]["state"] == "shipped"
    assert rows["shapes"]["segmenter"] == "grabcut" and rows["shapes"]["learning_steps"] == 30
    assert rows["shapes"]["fast_steps"] == 3 and rows["shapes"]["shipped_adapter"].endswith("shapes/adapter")
    assert rows["sd15"]["fast_steps"] == 50 and rows["sd15"]["shipped_adapter"] is None
    assert rows["tiny"]["available"] is True and rows["tiny"]["random_weights"] is True
    assert {s["name"] for s in data["segmenters"]} == {"sam", "sam2", "sam-hq", "plain", "grabcut"}


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
    assert settings.diffusion.learning.steps == 30 and settings.diffusion.learning.batch_size == 4
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
    for name in ("sam", "sam2", "sam-hq"):
        assert tiny.segmenter_availability(name).state == "random"


def test_cpu_cost_is_said_for_big_presets_only():
    assert "175 s" in get_preset("sd15").cost_warning(PAPER_LEARNING_STEPS, device="cpu")
    assert get_preset("sd15").cost_warning(PAPER_LEARNING_STEPS, device="cuda") is None
    assert get_preset("tiny").cost_warning(PAPER_LEARNING_STEPS, device="cpu") is None


def test_the_cli_says_what_a_cpu_run_costs_before_it_starts(tmp_path):
    image = Path(__file__).resolve().parent.parent / "assets" / "coffee.png"
    env = {**OFFLINE, "ANYWORD_CACHE": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    command = [ANYWORD, "segment", str(image), "a red cup", "--out", str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    warning, error = done.stderr.strip().splitlines()
    assert warning.startswith("warning: sd15: without a GPU") and "175 s" in warning and "--fast" in warning
    assert error.startswith("error: Stable Diffusion weights")


def test_a_bad_segmenter_size_is_one_clear_error(tmp_path):
    image = Path(__file__).resolve().parent.parent / "assets" / "coffee.png"
    command = [ANYWORD, "segment", str(image), "a red cup", "--out", str(tmp_path / "out"), "--preset", "tiny"]
    done = subprocess.run(
        [*command, "--segmenter", "sam2", "--segmenter-model", "huge", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=OFFLINE,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: unknown sam2 model 'huge'")
