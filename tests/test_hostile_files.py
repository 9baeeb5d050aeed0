"""Files a user hands over, written to hurt: dataset folders, run folders, adapter folders, the environment. Each is
refused with one message naming the file, the record and the field; in a dataset run the bad sample is recorded and
the rest go on; memory stays bounded whatever a file declares (checked under an address-space limit, so a
regression fails instead of exhausting the machine)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from anyword.adapters import find_adapters, read_adapter
from anyword.diffusion.adaptation import AdapterError
from anyword.errors import AnywordError, SettingsError
from anyword.evaluation import DatasetOptions, make_task, open_dataset, run_evaluation
from anyword.presets import PRESETS, get_preset
from anyword.rle import encode
from tests.conftest import ASSETS
from tests.eval_fixtures import HEIGHT, WIDTH, write_grandf, write_grefcoco, write_pc59
from tests.test_images import huge_png_header

SHIPPED = Path(get_preset("shapes").shipped_adapter_path())


def under_memory_limit(code: str, gigabytes: float = 1.5) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python whose address space is capped: an allocation a file asked for fails there."""
    limit = int(gigabytes * 2**30)
    script = f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n{code}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def first_annotation(data: dict) -> dict:
    return next(a for a in data["annotations"] if a["image_id"] == 1 and a["iscrowd"] == 0)


# --- 2: declared sizes never drive memory ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segmentation", "message"),
    [
        ({"size": [100000, 100000], "counts": "0"}, "differs from the image's 96x128"),
        ({"size": [100000, 100000], "counts": [5, 5]}, "differs from the image's 96x128"),
        ({"size": [30000, 30000], "counts": "0"}, "differs from the image's 96x128"),
        ({"size": [-5, 128], "counts": "0"}, "two positive whole numbers"),
        ({"size": [HEIGHT, WIDTH], "counts": [5, 5]}, "runs cover 10 pixels"),  # runs past the buffer, in C
        ({"size": [HEIGHT, WIDTH], "counts": "~~~~"}, "outside COCO's alphabet"),
    ],
)
def test_an_rle_is_checked_against_its_image_before_decoding(tmp_path, segmentation, message):
    fixture = write_grefcoco(tmp_path)
    edit_json(
        fixture.root / "grefcoco" / "instances.json", lambda d: first_annotation(d).update(segmentation=segmentation)
    )
    code = f"""
from anyword.evaluation import DatasetOptions, open_dataset
from anyword.evaluation.coco import DatasetError
dataset = open_dataset("grefcoco", DatasetOptions(split="val", root={str(fixture.root)!r}))
try:
    dataset.target(next(s for s in dataset.samples() if s.key == "sent 100"))
except DatasetError as error:
    print("refused:", error)
"""
    done = under_memory_limit(code)
    assert done.returncode == 0, done.stderr  # no MemoryError, no crash (the [5, 5] case was SIGSEGV)
    assert done.stdout.startswith("refused: instances.json annotation") and message in done.stdout
    assert "'segmentation'" in done.stdout


def test_a_pascal_context_label_map_is_measured_from_its_header(tmp_path):
    fixture = write_pc59(tmp_path)
    labels = fixture.root / "VOCdevkit" / "VOC2010" / "SegmentationClassContext"
    first = sorted(labels.iterdir())[0]
    first.write_bytes(huge_png_header(12000, 12000))  # 69 bytes declaring 144 MP
    code = f"""
from anyword.evaluation import DatasetOptions, open_dataset
from anyword.evaluation.coco import DatasetError
dataset = open_dataset("pc59", DatasetOptions(split="val", root={str(fixture.root)!r}))
try:
    dataset.target(dataset.samples()[0])
except DatasetError as error:
    print("refused:", error)
"""
    done = under_memory_limit(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"refused: label map {first.name} is 12000x12000, over the 40 MP limit")


# --- 8: malformed records are one message naming file, record and field -------------------------------------


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda d: d["images"][0].update(file_name=5), "sent 100", "instances.json image 1: 'file_name' must be text"),
        (lambda d: d["images"][0].update(height="abc"), "sent 100", "image 1: 'height' must be a whole number"),
        (lambda d: first_annotation(d).update(segmentation=[["1", "2", "3", "4", "5", "6"]]), "sent 100",
         "polygon coordinates must be finite numbers"),
        (lambda d: first_annotation(d).update(segmentation=[[0, 0, 1e12, 0, 0, 1e12]]), "sent 100",
         "a polygon lies far outside the 128x96 image"),
    ],
)  # fmt: skip
def test_malformed_instances_fail_their_samples_by_name(tmp_path, change, key, message):
    fixture = write_grefcoco(tmp_path)
    edit_json(fixture.root / "grefcoco" / "instances.json", change)
    dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=fixture.root))
    sample = next(s for s in dataset.samples() if s.key == key)
    with pytest.raises(AnywordError, match=message):
        if sample.problem:
            raise AnywordError(sample.problem)
        dataset.target(sample)
    others = [s for s in dataset.samples() if s.ids.get("image_id") == 2]
    assert others and all(s.problem is None for s in others)
    assert dataset.target(others[0]).mask.shape == (HEIGHT, WIDTH)  # the rest of the dataset reads


@pytest.mark.parametrize("polygons", [[[1, 2]], [[]], [[1, 2, 30, 40]], [[1, 2, 3, 4, 5]]])
def test_degenerate_polygons_are_dropped_as_detectron2_drops_them(tmp_path, polygons):
    fixture = write_grefcoco(tmp_path)
    edit_json(fixture.root / "grefcoco" / "instances.json", lambda d: first_annotation(d).update(segmentation=polygons))
    dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=fixture.root))
    target = dataset.target(next(s for s in dataset.samples() if s.key == "sent 100"))
    assert target.mask.shape == (HEIGHT, WIDTH) and not target.mask.any()  # fewer than 3 points: no area


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda refs: refs[0].pop("sentences"), "ref 10", "ref 10: no 'sentences' list"),
        (lambda refs: refs[0].update(image_id=[1]), "sent 100", "an image id must be a number or text"),
        (lambda refs: refs[0]["sentences"][0].pop("sent"), "ref 10 sentence 0", "needs a 'sent_id' and a 'sent'"),
    ],
)
def test_malformed_refs_fail_their_samples_by_name(tmp_path, change, key, message):
    fixture = write_grefcoco(tmp_path)
    edit_json(fixture.root / "grefcoco" / "grefs(unc).json", change)
    samples = open_dataset("grefcoco", DatasetOptions(split="val", root=fixture.root)).samples()
    problems = {s.key: s.problem for s in samples}
    assert message in problems[key]
    assert problems["sent 140"] is None  # another ref's sample runs


def test_a_grandf_caption_file_that_is_a_list_is_one_clear_error(run_cli, tmp_path):
    fixture = write_grandf(tmp_path)
    captions = fixture.root / "annotations" / "val_test" / "val_gcg_coco_caption_gt.json"
    captions.write_text("[1, 2]")
    done = run_cli("eval", "--dataset", "grandf", "--data-root", fixture.root, "--out", tmp_path / "run", "--quiet")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith(f"error: {captions}: not a GranDf caption file")


@pytest.fixture(scope="module")
def shapes_pipeline():
    from anyword.pipeline import SegmentAnyword

    return SegmentAnyword("shapes", progress=False)


def quick_run(pipeline, dataset, out, n=None):
    from anyword.settings import Overrides

    settings = pipeline.preset.settings(Overrides(learning_steps=0, inversion_steps=4))
    return run_evaluation(pipeline, settings, dataset, make_task(dataset, no_target=False), out, n=n, progress=False)


def test_a_run_records_bad_samples_and_scores_the_rest(shapes_pipeline, tmp_path):
    """Three hostile samples in one gRefCOCO run: an RLE of another size (scoring used to run out of memory after
    every prediction), an image whose file is another size than instances.json says (scored through broadcasting),
    and a ref without sentences. Each is one failure with its reason; the other samples are scored; the summary is
    written."""
    fixture = write_grefcoco(tmp_path)
    root = fixture.root

    def hostile(data):
        second = [a for a in data["annotations"] if a["image_id"] == 1 and a["iscrowd"] == 0][1]  # ref 11's
        second.update(segmentation={"size": [100000, 100000], "counts": "0"})
        data["images"][1].update(height=HEIGHT + 4)  # image 2's file is 96 high; its mask a polygon of any size
        for annotation in data["annotations"]:
            if annotation["image_id"] == 2:
                annotation["segmentation"] = [[10, 10, 40, 10, 40, 40, 10, 40]]

    edit_json(root / "grefcoco" / "instances.json", hostile)
    edit_json(root / "grefcoco" / "grefs(unc).json", lambda refs: refs[2].pop("sentences"))  # ref 12
    dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=root))
    summary = quick_run(shapes_pipeline, dataset, tmp_path / "run")
    failures = {f["key"]: f["error"] for f in summary["failures"]}
    assert "differs from the image's 96x128" in failures["sent 110"] and "'segmentation'" in failures["sent 110"]
    assert "the image file is 128x96 but its ground truth 128x100" in failures["sent 140"]
    assert "ref 12: no 'sentences' list" in failures["ref 12"]
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 3  # sent 100 and 101 are scored
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert summary["metrics"]["gIoU"] is not None


# --- 8: a run folder's own files --------------------------------------------------------------------------------


def test_bad_lines_in_predictions_are_dropped_and_their_samples_recomputed(shapes_pipeline, tmp_path):
    dataset = open_dataset("shapes-referring", DatasetOptions(split="seen", count=2))
    out = tmp_path / "run"
    first = quick_run(shapes_pipeline, dataset, out)
    lines = (out / "predictions.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    no_key = {k: v for k, v in records[1].items() if k != "key"}
    no_mask = {k: v for k, v in records[2].items() if k != "mask"}
    wrong_size = {**records[3], "mask": {"size": [8, 8], "counts": "0T"}}
    hostile = [b"\xff" + lines[0], b"[1, 2]", json.dumps(no_key).encode(), json.dumps(no_mask).encode(),
               json.dumps(wrong_size).encode()]  # fmt: skip
    (out / "predictions.jsonl").write_bytes(b"\n".join(hostile) + b"\n")
    again = quick_run(shapes_pipeline, dataset, out)
    assert again["counts"]["done"] == 4 and again["counts"]["reused"] == 0 and again["counts"]["failed"] == 0
    assert again["metrics"] == first["metrics"]  # every sample recomputed, seeded: the same answers
    kept = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["key"] for r in kept] == [r["key"] for r in records]


def test_a_record_the_metrics_cannot_use_is_left_out_and_listed(shapes_pipeline, tmp_path):
    """A record that reads but does not fit its ground truth (here: its mask's size) at scoring: counted as
    unscored with the reason; the metrics come from the rest."""
    dataset = open_dataset("shapes-referring", DatasetOptions(split="seen", count=1))
    task = make_task(dataset, no_target=False)
    blank = encode(np.zeros((128, 128), dtype=bool))
    records = [{"key": s.key, "mask": blank, "no_target": False} for s in dataset.samples()]
    records[0]["mask"] = encode(np.zeros((4, 4), dtype=bool))
    metrics, unscored = task.metrics(dataset, {s.key: s for s in dataset.samples()}, records)
    assert [u["key"] for u in unscored] == [records[0]["key"]] and "4x4 mask" in unscored[0]["error"]
    assert metrics["gIoU"] is not None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_corrupt_run_record_is_one_clear_error(run_cli, tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(content)
    done = run_cli("eval", "--dataset", "shapes", "--n", "1", "--out", out, "--steps", "0", "--quiet")
    assert done.returncode == 2 and done.stderr.startswith(f"error: {out / 'run.json'} is not a run record")
    assert "Traceback" not in done.stderr


# --- 1, 4, 8: adapter folders ---------------------------------------------------------------------------------


def adapter_copy(tmp_path: Path, name: str = "adapter") -> Path:
    folder = tmp_path / name
    shutil.copytree(SHIPPED, folder)
    return folder


@pytest.mark.parametrize("record", ["[]", '"x"', "{not json"])
def test_a_bad_adapter_record_is_left_out_of_the_list_with_one_log_line(tmp_path, caplog, monkeypatch, record):
    good = adapter_copy(tmp_path / "adapters", "good")
    bad = adapter_copy(tmp_path / "adapters", "bad")
    (bad / "anyword_adapter.json").write_text(record)
    monkeypatch.setenv("ANYWORD_ADAPTERS", str(tmp_path / "adapters"))
    with caplog.at_level(logging.WARNING, logger="anyword.adapters"):
        found = find_adapters()
    assert [a.path for a in found] == [good]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"left out adapter folder {bad}: ") and "anyword_adapter.json" in line


def test_the_demo_starts_beside_a_bad_adapter_folder(tmp_path, monkeypatch):
    from demo.models import demo_adapters

    bad = adapter_copy(tmp_path / "adapters", "bad")
    (bad / "anyword_adapter.json").write_text("[]")
    monkeypatch.setenv("ANYWORD_ADAPTERS", str(tmp_path / "adapters"))
    shipped = [p.shipped_adapter_path() for p in PRESETS.values() if p.shipped_adapter_path() is not None]
    assert SHIPPED in shipped and [a.path for a in demo_adapters()] == shipped  # the shipped ones; the server goes on


def test_the_cli_names_the_file_and_the_field(run_cli, tmp_path):
    folder = adapter_copy(tmp_path)
    edit_json(folder / "anyword_adapter.json", lambda d: d.update(rank="sixteen"))
    image = ASSETS / "shapes" / "novel_1007.png"
    done = run_cli("segment", image, "a red ball", "--preset", "shapes", "--adapter", folder, "--out", tmp_path / "o")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {folder / 'anyword_adapter.json'}: 'rank' must be int, not 'sixteen'")


def test_an_adapter_with_nan_weights_is_refused_naming_the_tensor(tmp_path):
    folder = adapter_copy(tmp_path)
    weights = load_file(str(folder / "adapter_model.safetensors"))
    name = sorted(weights)[3]
    weights[name][0, 0] = float("nan")
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=rf"tensor {name} holds values that are not finite"):
        read_adapter(folder)


def _config(change):
    return lambda folder: edit_json(folder / "adapter_config.json", change)


def _weights(change):
    def apply(folder):
        weights = load_file(str(folder / "adapter_model.safetensors"))
        change(weights)
        save_file(weights, str(folder / "adapter_model.safetensors"))

    return apply


def _text_link(folder):
    (folder / "notes.txt").write_text("not weights")
    (folder / "adapter_model.safetensors").unlink()
    os.symlink(folder / "notes.txt", folder / "adapter_model.safetensors")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda f: (f / "adapter_config.json").write_text("{oops"), r"adapter_config.json is unreadable"),
        (_config(lambda c: c.update(r=0)), r"'r' \(the LoRA rank\) must be a whole number from 1 to 1024, not 0"),
        (_config(lambda c: c.update(r=100000)), r"from 1 to 1024, not 100000"),
        (_config(lambda c: c.pop("target_modules")), r"'target_modules' must be a list of module names"),
        (_config(lambda c: c.update(target_modules=".*")), r"a pattern such as '\.\*' would adapt every layer"),
        (_config(lambda c: c.update(peft_type="PROMPT_TUNING")), r"'peft_type' must be 'LORA', not 'PROMPT_TUNING'"),
        (_config(lambda c: c.update(r=8)), r"has shape \[16, 64\]; a rank-8 lora_A has 8 rows"),
        (_weights(lambda w: w.update(extra=w[next(iter(w))].clone())), r"tensor extra is not a LoRA matrix"),
        (lambda f: (f / "adapter_model.safetensors").write_bytes(b"junk" * 10), r"not a readable safetensors file"),
        (_text_link, r"adapter_model.safetensors is a link"),
    ],
)
def test_hostile_adapter_folders_are_refused_by_name(tmp_path, spoil, message):
    folder = adapter_copy(tmp_path)
    spoil(folder)
    with pytest.raises(AdapterError, match=message):
        read_adapter(folder)


def test_tensors_that_do_not_fit_the_text_encoder_are_refused_at_merge(tmp_path):
    import torch

    from anyword.adapters import apply_adapter

    folder = adapter_copy(tmp_path)
    _weights(lambda w: w.update({k: torch.zeros(16, 32) for k in w if k.endswith("q_proj.lora_A.weight")}))(folder)
    backbone = get_preset("shapes").load(device="cpu")
    with pytest.raises(AdapterError, match=r"does not fit shapes's text encoder: .*size mismatch"):
        apply_adapter(backbone, read_adapter(folder))


# --- 5: adapt checks --out first ------------------------------------------------------------------------------


def test_adapt_refuses_a_file_as_out_before_any_work(run_cli, tmp_path, monkeypatch):
    from anyword.diffusion import adaptation

    monkeypatch.setattr(adaptation, "train_adapter", lambda *a, **k: pytest.fail("training started"))
    a_file = tmp_path / "adapter.txt"
    a_file.write_text("mine")
    done = run_cli("adapt", "--preset", "shapes", "--dataset", "shapes", "--out", a_file, "--quiet")
    assert done.returncode == 2 and done.stderr.startswith(f"error: --out {a_file} is a file")
    assert a_file.read_text() == "mine"


# --- 6: the environment -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ANYWORD_SESSION_TTL", "abc", "expected a number of seconds, got 'abc'"),
        ("ANYWORD_SESSION_TTL", "-5", "must be a positive number of seconds"),
        ("ANYWORD_MAX_SESSIONS", "-1", "must be at least 1, got -1"),
        ("GRADIO_SERVER_PORT", "http", "expected a whole number, got 'http'"),
        ("ANYWORD_LLM_BASE_URL", "file:///etc/passwd", "expected an http:// or https:// address with a host"),
        ("ANYWORD_SHARE", "maybe", "expected 1 or 0"),
    ],
)
def test_every_environment_variable_of_the_demo_is_one_clear_error(monkeypatch, capsys, variable, value, message):
    from demo.app import parse_args

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        parse_args([])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"app.py: error: environment variable {variable}={value!r}: {message}" or (
        error.startswith(f"app.py: error: environment variable {variable}={value!r}: ") and message in error
    )


def test_the_librarys_environment_variables_are_parsed_alike(monkeypatch):
    from anyword.downloads import offline
    from anyword.parsing import OpenAIParser

    monkeypatch.setenv("ANYWORD_OFFLINE", "maybe")
    with pytest.raises(SettingsError, match="environment variable ANYWORD_OFFLINE='maybe': expected 1 or 0"):
        offline()
    monkeypatch.setenv("ANYWORD_OFFLINE", "yes")
    assert offline()
    monkeypatch.setenv("OPENAI_BASE_URL", "file:///etc/passwd")
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL='file:///etc/passwd'"):
        OpenAIParser()


# --- 7: a seed of 1.5 is refused on the page as on the command line -------------------------------------------


def test_a_fractional_seed_is_refused_on_the_page(run_cli, tmp_path):
    from demo.layout import build_page
    from demo.requests import ComputeRequest

    with pytest.raises(AnywordError, match="the seed must be a whole number"):
        ComputeRequest("tiny", seed=1.5).overrides()
    done = run_cli("segment", ASSETS / "coffee.png", "a cup", "--seed", "1.5", "--out", tmp_path / "o")
    assert done.returncode == 2 and "--seed: expected a whole number, got '1.5'" in done.stderr
    import gradio as gr

    with gr.Blocks():
        page = build_page("tiny", "", {}, visitor_llm_urls=False)
    assert page.seed.precision is None and page.steps.precision is None  # the page never rounds 1.5 to 2
