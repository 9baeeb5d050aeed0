"""Text-encoder adapters (Segment Anyword_f): training on the tiny preset, peft's on-disk format, resuming,
merging at load, refusal on another base model, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anyword.adapters import apply_adapter, read_adapter
from anyword.diffusion import adaptation
from anyword.diffusion.adaptation import AdapterError, AdaptSettings, TrainingPair, train_adapter
from anyword.errors import AnywordError
from anyword.presets import get_preset
from tests.conftest import ASSETS

QUICK = AdaptSettings(steps=4, rank=4, alpha=4, learning_rate=1e-2, batch_size=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def tiny(tiny_backbone):
    return tiny_backbone


def pairs(count: int = 3) -> list[TrainingPair]:
    rng = np.random.default_rng(0)
    images = [(rng.random((40 + 9 * i, 70, 3)) * 255).astype(np.uint8) for i in range(count)]  # non-square
    return [TrainingPair(f"p{i}", f"a red ball and a blue box {i}", lambda im=im: im) for i, im in enumerate(images)]


def states(backbone, caption: str = "a red ball next to a blue box") -> torch.Tensor:
    ids = backbone.tokenizer(caption, padding="max_length", max_length=77)["input_ids"]
    with torch.no_grad():
        return backbone.text_states(ids)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter")
    broken = TrainingPair("broken", "a cup", lambda: (_ for _ in ()).throw(OSError("cannot read")))
    info = train_adapter(tiny, [*pairs(), TrainingPair("empty", "  ", pairs()[0].load), broken], out, QUICK)
    return out, info


def test_training_writes_peft_format_and_a_record(trained, tiny):
    from peft import PeftModel

    out, info = trained
    assert {p.name for p in out.iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "anyword_adapter.json",
    }
    assert not (out / "checkpoint").exists() and not list(out.glob("*.bin"))
    assert info.pairs_used == 3 and info.pairs_skipped == 2 and info.base == "tiny" and np.isfinite(info.final_loss)
    record = json.loads((out / "anyword_adapter.json").read_text())
    assert (
        record["rank"] == 4 and record["steps"] == 4 and record["targets"] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    )
    import copy

    peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny.text_encoder), str(out))  # peft reads it as is
    assert sum("lora_A" in name for name, _ in peft_model.named_parameters()) == 2 * 4  # 2 layers x q, k, v, out


def test_merged_adapter_changes_the_text_encoder_and_nothing_else(trained, tiny):
    out, _ = trained
    before = states(tiny)
    adapted = apply_adapter(tiny, out)
    after = states(adapted)
    assert (after - before).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(states(tiny), before)  # the shared base text encoder is untouched
    assert adapted.unet is tiny.unet and adapted.adapter == read_adapter(out).ident
    assert "+ adapter adapter" in adapted.source
    assert not any(p.requires_grad for p in adapted.text_encoder.parameters())
    assert not any("lora" in name for name, _ in adapted.text_encoder.named_parameters())  # merged, no extra layers


def test_an_adapter_for_another_base_is_refused_naming_both(trained):
    out, _ = trained
    other_seed = get_preset("tiny").load(device="cpu", seed=1)
    with pytest.raises(AdapterError, match=r"other 'tiny' text-encoder weights \(random weights \(seed 0\).*seed 1"):
        apply_adapter(other_seed, out)
    shapes = get_preset("shapes").load(device="cpu")
    with pytest.raises(AdapterError, match=r"trained for 'tiny'.*not for 'shapes'"):
        apply_adapter(shapes, out)


def test_pickles_and_incomplete_folders_are_refused(trained, tmp_path):
    out, _ = trained
    evil = tmp_path / "evil"
    evil.mkdir()
    for file in out.iterdir():
        (evil / file.name).write_bytes(file.read_bytes())
    (evil / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="pickled weights"):
        read_adapter(evil)
    (evil / "adapter_model.bin").unlink()
    (evil / "anyword_adapter.json").unlink()
    with pytest.raises(AdapterError, match=r"anyword_adapter\.json missing"):
        read_adapter(evil)


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_adapter(tiny, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    whole = tmp_path / "whole"
    train_adapter(tiny, pairs(), whole, QUICK, progress=False)
    original = adaptation._step

    def interrupted(backbone, encoder, prepared, settings, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(backbone, encoder, prepared, settings, step)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(adaptation, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(tiny, pairs(), resumed, QUICK, progress=False)
    assert json.loads((resumed / "checkpoint" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(adaptation, "_step", original)
    info = train_adapter(tiny, pairs(), resumed, QUICK, progress=False)
    assert len(info.extra["loss_curve"]) == 4
    a, b = load_file(str(whole / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    again = train_adapter(tiny, pairs(), resumed, QUICK, progress=False)  # finished: nothing to do
    assert again.final_loss == info.final_loss
    with pytest.raises(AdapterError, match="other settings"):
        train_adapter(tiny, pairs(), resumed, AdaptSettings(steps=5, rank=4), progress=False)


def test_no_usable_pair_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(AnywordError, match="no usable image-caption pair among 2"):
        train_adapter(tiny, [TrainingPair("a", "", pairs()[0].load), TrainingPair("b", " ", pairs()[0].load)], tmp_path)


def test_the_pipeline_merges_the_adapter_and_keys_its_caches_by_it(trained, nlp):
    from anyword.parsing import SpacyParser
    from anyword.pipeline import SegmentAnyword
    from anyword.settings import Overrides

    out, _ = trained
    quick = get_preset("tiny").settings(Overrides(learning_steps=1, inversion_steps=4))
    plain = SegmentAnyword("tiny", parser=SpacyParser(nlp=nlp), settings=quick, device="cpu")
    adapted = SegmentAnyword("tiny", parser=SpacyParser(nlp=nlp), settings=quick, device="cpu", adapter=out)
    image = str(ASSETS / "coffee.png")
    first, second = plain.run(image, "a red cup"), adapted.run(image, "a red cup")
    assert first.models["adapter"] is None and second.models["adapter"] == read_adapter(out).ident
    assert not np.allclose(first.heatmap(0), second.heatmap(0))
    assert adapted.backbone.source != plain.backbone.source  # what the attention cache and embedding keys hold
    with pytest.raises(AdapterError, match="ships no text-encoder adapter"):
        SegmentAnyword("tiny", adapter="shipped")


def test_adapt_from_a_pairs_file_skips_bad_lines_and_pairs(run_cli, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cup.png").write_bytes((ASSETS / "coffee.png").read_bytes())
    lines = [
        json.dumps({"image": "images/cup.png", "caption": "a red cup on a saucer"}),
        json.dumps({"image": "images/missing.png", "caption": "a dog"}),
        json.dumps({"image": "images/cup.png", "caption": ""}),
        "not json",
        json.dumps({"caption": "no image"}),
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines))
    out = tmp_path / "adapter"
    done = run_cli(
        "adapt", "--preset", "tiny", "--pairs", str(tmp_path / "pairs.jsonl"), "--adapt-steps", "2", "--rank", "2",
        "--out", str(out), "--json", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["pairs_used"] == 1 and summary["pairs_skipped"] == 2 and summary["pairs_unreadable_lines"] == 2
    (tmp_path / "none.jsonl").write_text("not json\n")
    done = run_cli("adapt", "--preset", "tiny", "--pairs", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "error: " in done.stderr and "no usable image-caption pair" in done.stderr


def test_fast_without_an_adapter_says_so_plainly(run_cli, tmp_path):
    image = str(ASSETS / "coffee.png")
    done = run_cli("segment", image, "a red cup", "--preset", "tiny", "--fast", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and done.stderr.startswith("error: Fast mode (Segment Anyword_f) needs")
    assert "none for tiny" in done.stderr and "the same 50 prompt-learning steps without one" in done.stderr


def test_adapt_keeps_steps_for_prompt_learning(run_cli, tmp_path):
    """On adapt, --steps (prompt learning's word) is refused with the option it means, before any work."""
    done = run_cli("adapt", "--dataset", "shapes", "--steps", "5", "--out", tmp_path / "a")
    assert done.returncode == 2 and "--steps is --adapt-steps here" in done.stderr
    assert not (tmp_path / "a").exists()


def test_the_shapes_ablation_runs_with_the_shipped_adapter_and_records_it(run_cli):
    done = run_cli(
        "shapes", "ablation", "--split", "novel", "--n", "1", "--steps", "1", "--adapter", "shipped",
        "--rows", "full", "--json", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    shipped = read_adapter(get_preset("shapes").shipped_adapter_path())
    assert result["adapter"] == shipped.ident and shipped.info.base == "shapes" and shipped.info.pairs_used == 500
    assert result["settings"]["learning_steps"] == 1 and 0.0 <= result["rows"]["full"]["miou"] <= 1.0
