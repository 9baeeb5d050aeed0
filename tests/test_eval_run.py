"""The benchmark harness on fixture datasets with the shapes model: predictions.jsonl and summary.json, metrics that
recompute from the predictions, resume, refusals, failures recorded, and 2 processes equal to 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anyword.evaluation import DatasetOptions, make_task, open_dataset, run_evaluation
from anyword.evaluation.base import IGNORE
from anyword.evaluation.tasks import NoTargetRule, Referring
from anyword.metrics import ReferringScore, confusion_matrix, grefcoco_metrics, semantic_miou
from anyword.rle import decode
from tests.eval_fixtures import HEIGHT, WIDTH, write_grandf, write_grefcoco, write_pc59, write_refcoco

BIN = Path(sys.executable).parent
QUICK = ["--preset", "shapes", "--steps", "2"]
GRANDF_METRICS = {"AP50", "mIoU", "recall", "recall_unavailable", "recall_words", "phrase_mask_mismatches"}


def anyword(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """The console script (or ``launcher``) in subprocesses: what `accelerate launch` starts."""
    command = launcher or [str(BIN / "anyword")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=900, env=env)


def lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def recomputed_grefcoco(run: Path, truth: dict) -> dict:
    """gRefCOCO metrics from predictions.jsonl and the fixture's own masks, independently of the harness."""
    scores = []
    for record in lines(run):
        mask = decode(record["mask"])
        target = truth[record["key"]]
        empty = target is None
        target = np.zeros((HEIGHT, WIDTH), dtype=bool) if empty else target
        scores.append(ReferringScore.of(mask, target, record["no_target"], empty))
    return grefcoco_metrics(scores)


@pytest.fixture(scope="module")
def grefcoco(tmp_path_factory):
    return write_grefcoco(tmp_path_factory.mktemp("grefcoco"))


@pytest.mark.slow
def test_grefcoco_run_resume_and_two_processes(grefcoco, tmp_path):
    run = tmp_path / "run"
    command = [
        "eval",
        "--dataset",
        "grefcoco",
        "--data-root",
        str(grefcoco.root),
        "--split",
        "val",
        *QUICK,
        "--score-at",
        "native",
    ]  # fmt: skip  (recomputed below from the fixture's own masks)
    done = anyword(*command, "--out", str(run), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["counts"] == {"done": 5, "reused": 0, "failed": 0, "missing": 0, "unscored": 0, "dropped_records": 0}
    assert summary["settings"]["diffusion"]["learning"]["steps"] == 2 and summary["models"]["preset"] == "shapes"
    assert summary["evaluation"]["no_target"]["enabled"] is False  # off unless asked: the paper describes none
    assert summary["evaluation"]["referent"] == "match" and summary["evaluation"]["score_at"] == "native"
    assert summary["parses"]["stored"] == 5 and (run / "parses.jsonl").is_file()
    assert "cIoU" in done.stderr and "N_acc" in done.stderr  # the table
    records = lines(run)
    assert [r["key"] for r in records] == list(grefcoco.truth)
    assert records[0]["sent_id"] == 100 and records[0]["ref_id"] == 10 and records[0]["image_id"] == 1
    assert all(r["mask"]["size"] == [HEIGHT, WIDTH] and isinstance(r["no_target"], bool) for r in records)
    assert all(r["concepts"] and r["concepts"][0]["points"] for r in records)
    metrics = recomputed_grefcoco(run, grefcoco.truth)
    assert summary["metrics"] == metrics
    assert set(summary["metrics"]) >= {"cIoU", "gIoU", "N_acc", "T_acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"}
    assert all(0 <= v <= 1 for k, v in metrics.items() if isinstance(v, float))

    again = anyword(*command, "--out", str(run), "--json")  # resume: nothing left to compute
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["counts"] == {"done": 0, "reused": 5, "failed": 0, "missing": 0, "unscored": 0, "dropped_records": 0}
    assert resumed["metrics"] == summary["metrics"]

    kept = (run / "predictions.jsonl").read_text().splitlines()
    (run / "predictions.jsonl").write_text("\n".join(kept[:3]) + "\n" + kept[3][:40])  # 2 lost, one cut short
    partial = json.loads(anyword(*command, "--out", str(run), "--json").stdout)
    assert partial["counts"]["done"] == 2 and partial["counts"]["reused"] == 3
    assert partial["metrics"] == summary["metrics"]  # seeded: the recomputed samples come out the same

    refused = anyword("eval", "--dataset", "grefcoco", "--data-root", str(grefcoco.root), "--preset", "shapes",
                      "--steps", "3", "--score-at", "native", "--out", str(run))  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert "holds a run with other settings" in refused.stderr and len(refused.stderr.splitlines()) == 1

    two = tmp_path / "two"
    launcher = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "-m", "anyword"]
    sharded = anyword(*command, "--out", str(two), "--json", "--quiet", launcher=launcher)
    assert sharded.returncode == 0, sharded.stderr
    summary_two = json.loads(sharded.stdout)
    assert summary_two["processes"] == 2 and summary_two["counts"]["done"] == 5
    assert summary_two["metrics"] == summary["metrics"]
    assert {r["rank"] for r in lines(two)} == {0, 1}
    assert [r["mask"] for r in lines(two)] == [r["mask"] for r in lines(run)]
    assert not (two / "parts").exists()

    # The command as the accelerate docs write it for CPUs: without MPI, accelerate 1.15 starts one process here.
    literal = ["launch", "--cpu", "--num_processes", "2", "-m", "anyword"]
    cpu = anyword(
        *command, "--out", str(tmp_path / "cpu"), "--json", "--quiet", launcher=[str(BIN / "accelerate"), *literal]
    )
    assert cpu.returncode == 0, cpu.stderr
    assert json.loads(cpu.stdout)["metrics"] == summary["metrics"]


def _run(dataset, out, task=None):
    from anyword.pipeline import SegmentAnyword
    from anyword.settings import Overrides

    pipeline = SegmentAnyword("shapes", progress=False)
    settings = pipeline.preset.settings(Overrides(learning_steps=0, inversion_steps=5))
    return run_evaluation(pipeline, settings, dataset, task or make_task(dataset), out, progress=False)


def test_a_failing_sample_is_recorded_and_retried(grefcoco, tmp_path):
    image = grefcoco.root / "images" / "train2014" / "COCO_train2014_000000000002.jpg"
    moved = tmp_path / "kept.jpg"
    image.rename(moved)
    try:
        dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=grefcoco.root))
        summary = _run(dataset, tmp_path / "run")
    finally:
        moved.rename(image)
    assert summary["counts"] == {"done": 4, "reused": 0, "failed": 1, "missing": 0, "unscored": 0, "dropped_records": 0}
    failed = [r for r in lines(tmp_path / "run") if "error" in r]
    assert [r["key"] for r in failed] == ["sent 140"] and "COCO_train2014_000000000002.jpg" in failed[0]["error"]
    assert summary["failures"] == [{"key": "sent 140", "error": failed[0]["error"]}]
    retried = _run(dataset, tmp_path / "run")
    assert retried["counts"] == {"done": 1, "reused": 4, "failed": 0, "missing": 0, "unscored": 0, "dropped_records": 0}


def test_refcoco_grandf_and_pc59_runs(tmp_path, offline):
    refcoco = open_dataset("refcoco", DatasetOptions(split="val", root=write_refcoco(tmp_path / "r").root))
    summary = _run(refcoco, tmp_path / "refcoco")
    assert set(summary["metrics"]) == {"cIoU", "mIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"}
    assert summary["evaluation"]["no_target"]["enabled"] is False and summary["counts"]["failed"] == 0

    grandf = open_dataset("grandf", DatasetOptions(split="val", root=write_grandf(tmp_path / "g").root))
    summary = _run(grandf, tmp_path / "grandf")
    assert set(summary["metrics"]) == GRANDF_METRICS and summary["counts"]["done"] == 2
    assert summary["metrics"]["recall"] is None and "bert-base-uncased" in summary["metrics"]["recall_unavailable"]
    assert all(m["rle"]["size"] == [HEIGHT, WIDTH] for r in lines(tmp_path / "grandf") for m in r["masks"])

    fixture = write_pc59(tmp_path / "pc")
    pc59 = open_dataset("pc59", DatasetOptions(split="val", root=fixture.root))
    summary = _run(pc59, tmp_path / "pc59")
    assert summary["counts"]["done"] == 2 and summary["data"]["classes"] == "all"
    matrix = np.zeros((59, 60), dtype=np.int64)
    for record in lines(tmp_path / "pc59"):
        assert len(record["classes_named"]) == 59 and len(record["concepts"]) == 59  # 4 captions of <= 15 names
        predicted = np.full((HEIGHT, WIDTH), IGNORE)
        for entry in record["labels"]:
            predicted[decode(entry["rle"])] = entry["class"]
        matrix += confusion_matrix(predicted, fixture.truth[record["key"]], 59)
    assert summary["metrics"]["mIoU"] == pytest.approx(semantic_miou(matrix)["mIoU"])


def test_an_expression_without_concepts_is_an_empty_answer_not_a_failure(grefcoco, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(grefcoco.root, root)
    refs = root / "grefcoco" / "grefs(unc).json"
    refs.write_text(refs.read_text().replace('"the shape"', '"on the left"'))
    dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=root))
    summary = _run(dataset, tmp_path / "run")
    assert summary["counts"]["failed"] == 0 and summary["counts"]["done"] == 5
    record = next(r for r in lines(tmp_path / "run") if r["key"] == "sent 140")
    assert record["no_target"] is False and not decode(record["mask"]).any() and "note" in record
    assert summary["parses"]["no_concept"] == 1
    with_rule = _run(dataset, tmp_path / "rule", make_task(dataset, no_target=True))  # the rule says "nothing"
    record = next(r for r in lines(tmp_path / "rule") if r["key"] == "sent 140")
    assert record["no_target"] is True and with_rule["evaluation"]["no_target"]["enabled"] is True


def test_no_target_rule_decides_and_is_recorded(tmp_path):
    dataset = open_dataset("shapes-referring", DatasetOptions(split="seen", count=2))
    rule = NoTargetRule(enabled=True, threshold=1.01, signal="concentration")  # every concentration is below
    always = _run(dataset, tmp_path / "always", Referring(no_target=rule))
    assert always["metrics"]["N_acc"] == 1.0 and always["metrics"]["T_acc"] == 0.0
    assert all(r["no_target"] and not decode(r["mask"]).any() for r in lines(tmp_path / "always"))
    never = _run(dataset, tmp_path / "never", make_task(dataset, no_target=False))
    assert never["metrics"]["N_acc"] == 0.0 and never["metrics"]["T_acc"] == 1.0
    assert [r["concentration"] for r in lines(tmp_path / "never")] == [
        r["concentration"] for r in lines(tmp_path / "always")
    ]


def test_run_folder_refusals(run_cli, grefcoco, tmp_path):
    root = ["--data-root", str(grefcoco.root), *QUICK]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = run_cli("eval", "--dataset", "grefcoco", *root, "--out", str(busy))
    assert refused.returncode == 2 and "is not empty and holds no evaluation run" in refused.stderr
    assert (busy / "notes.txt").read_text() == "mine"
    no_out = run_cli("eval", "--dataset", "grefcoco", *root)
    assert no_out.returncode == 2 and "needs --out RUN_DIR" in no_out.stderr
    no_root = run_cli("eval", "--dataset", "refcoco", "--out", str(tmp_path / "x"))
    assert no_root.returncode == 2 and "--data-root is required for refcoco" in no_root.stderr
    bad_split = run_cli("eval", "--dataset", "grefcoco", *root, "--split", "test", "--out", str(tmp_path / "y"))
    assert bad_split.returncode == 2 and "grefcoco has no split 'test'" in bad_split.stderr
    shapes = run_cli("eval", "--dataset", "shapes", "--referent", "all", "--n", "1")
    assert shapes.returncode == 2 and "needs --out RUN_DIR" in shapes.stderr


def test_fast_mode_in_a_benchmark_run_uses_the_shipped_adapter(run_cli, tmp_path, offline):
    done = run_cli("eval", "--dataset", "shapes", "--split", "novel", "--n", "2", "--fast", "--inversion-steps", "5",
                   "--out", str(tmp_path / "run"), "--json", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["models"]["adapter"] and summary["models"]["preset"] == "shapes"
    assert summary["settings"]["diffusion"]["learning"]["steps"] == 3  # the shapes preset's fast budget
    assert set(summary["metrics"]) == GRANDF_METRICS and summary["counts"]["done"] == 2
