"""The paper's evaluation protocol: which mask answers a referring expression (match, subject, first, all), where
referring masks are scored (native, ReLA/LAVT's 480x480), parses kept in the run folder and never asked for twice,
GranDf's recall as GLaMM computes it, random training pairs, and the no-target calibration on any dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anyword.errors import NoConceptError
from anyword.evaluation import DatasetOptions, make_task, open_dataset, run_evaluation
from anyword.evaluation.base import REFERRING, EvalDataset, ReferringTarget, Sample, resize_nearest
from anyword.evaluation.tasks import OFFICIAL_SIZE, Grounded, Referring, choose_referent
from anyword.metrics import ImageResult, grandf_recall, mask_iou, word_phrase_match
from anyword.parsing.concepts import Concept, Mention, ParseResult
from anyword.rle import decode, encode
from tests.conftest import ROOT
from tests.eval_fixtures import write_grandf, write_grefcoco, write_pc59
from tests.fake_openai import Reply


def _masks(shape=(6, 9)) -> dict[int, np.ndarray]:
    """Three concepts' masks on a 6x9 image: columns 0-2, 3-5 and 6-8."""
    masks = {}
    for concept in range(3):
        mask = np.zeros(shape, dtype=bool)
        mask[:, 3 * concept : 3 * concept + 3] = True
        masks[concept] = mask
    return masks


def _parse(subject: int | None) -> ParseResult:
    caption = "dog cat cow"
    concepts = tuple(
        Concept(i, word, word, (), (Mention((4 * i, 4 * i + 3), (4 * i, 4 * i + 3)),))
        for i, word in enumerate(caption.split())
    )
    span = None if subject is None else (4 * subject, 4 * subject + 3)
    return ParseResult(caption, concepts, "spacy", "spacy", subject=span)


def test_referent_rules_on_hand_worked_masks():
    masks, ids = _masks(), [0, 1, 2]
    truth = np.zeros((6, 9), dtype=bool)
    truth[:, 2:5] = True  # one column of concept 0, two of concept 1: IoU 1/5 and 2/4
    assert choose_referent("match", ids, masks, _parse(None), truth) == ([1], {"match_iou": [0.2, 0.5, 0.0]})
    empty = {i: np.zeros_like(m) for i, m in masks.items()}
    assert choose_referent("match", ids, empty, _parse(None), truth)[0] == []  # nothing overlaps: no answer
    assert choose_referent("match", [0, 1], masks, _parse(None), masks[2])[0] == []  # disjoint candidates
    assert choose_referent("subject", ids, masks, _parse(2), truth) == ([2], {})
    assert choose_referent("subject", ids, masks, _parse(None), truth) == ([0], {"subject_found": False})
    assert choose_referent("first", ids, masks, _parse(2), truth) == ([0], {})
    assert choose_referent("all", ids, masks, _parse(2), truth) == ([0, 1, 2], {})


def _shapes_run(dataset, out: Path, **task):
    from anyword.pipeline import SegmentAnyword
    from anyword.settings import Overrides

    pipeline = SegmentAnyword("shapes", progress=False)
    settings = pipeline.preset.settings(Overrides(learning_steps=0, inversion_steps=5))
    run_evaluation(pipeline, settings, dataset, make_task(dataset, **task), out, progress=False)
    return {r["key"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def grefcoco(tmp_path_factory):
    return write_grefcoco(tmp_path_factory.mktemp("grefcoco"))


def test_referents_end_to_end_on_the_grefcoco_fixture(grefcoco, tmp_path):
    dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=grefcoco.root))
    runs = {rule: _shapes_run(dataset, tmp_path / rule, referent=rule) for rule in ("match", "first", "all")}
    truth = {s.key: dataset.target(s).mask for s in dataset.samples()}
    several = 0
    for key, matched in runs["match"].items():
        first, merged = (decode(runs[rule][key]["mask"]) for rule in ("first", "all"))
        mask = decode(matched["mask"])
        ious = matched["match_iou"]
        assert len(ious) == len(matched["concepts"])
        if max(ious) > 0:  # the best-overlapping concept, at least as good as the first concept
            assert matched["referent"] == [matched["concepts"][int(np.argmax(ious))]["id"]]
            assert mask_iou(mask, truth[key]) == pytest.approx(max(ious), abs=1e-6)
            assert mask_iou(mask, truth[key]) >= mask_iou(first, truth[key]) - 1e-9
        else:
            assert matched["referent"] == [] and not mask.any()
        assert (merged | first).sum() == merged.sum()  # all concepts merged hold the first one's mask
        several += len(matched["concepts"]) > 1
    assert several >= 1  # "X and Y": two candidates


def test_subject_rule_uses_the_sentence_subject(nlp):
    from anyword.parsing import SpacyParser

    parser = SpacyParser(nlp=nlp)
    parse = parser.parse("a small blue square is left of a red circle")
    assert parse.subject_concept().noun == "square"
    verbless = parser.parse("red circle left of the blue square")  # no verb: the root noun
    assert verbless.subject_concept().noun == "circle"


class _Strip(EvalDataset):
    """One 3x7 image whose truth is column 0 (a hand-worked scoring case)."""

    name, task, splits = "strip", REFERRING, ()

    def samples(self):
        return [Sample("s", {}, None, "x")]

    def image_size(self, sample):
        return 3, 7

    def target(self, sample):
        mask = np.zeros((3, 7), dtype=bool)
        mask[:, 0] = True
        return ReferringTarget(mask)


def test_scoring_at_480_as_rela_differs_from_native_on_a_hand_worked_case():
    dataset, sample = _Strip("x"), Sample("s", {}, None, "x")
    prediction = np.zeros((3, 7), dtype=bool)
    prediction[:, :2] = True  # columns 0-1: native IoU 3 / 6
    record = {"key": "s", "mask": encode(prediction), "no_target": False}
    native = Referring(score_at="native").entry(dataset, sample, record)
    official = Referring(score_at="official").entry(dataset, sample, record)
    assert native.intersection / native.union == 0.5
    # Nearest resize 7 -> 480 columns: output column x reads input floor((x + 0.5) * 7 / 480): 69 of them read
    # column 0 and 68 column 1, so IoU = 69 / 137 at 480x480.
    reads = np.floor((np.arange(480) + 0.5) * 7 / 480).astype(int)
    assert (reads == 0).sum() == 69 and (reads == 1).sum() == 68
    assert (official.intersection, official.union) == (69 * 480, 137 * 480)
    assert Referring(score_at="official").describe()["score_size"] == list(OFFICIAL_SIZE)


def test_official_scoring_rasterises_coco_polygons_at_480(grefcoco):
    dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=grefcoco.root))
    polygon = next(i for i, a in dataset.coco.annotations.items() if isinstance(a["segmentation"], list))
    rle = next(i for i, a in dataset.coco.annotations.items() if isinstance(a["segmentation"], dict))
    size = dataset.coco.image_size(1)
    drawn = dataset.coco.mask(polygon, size, at=OFFICIAL_SIZE)
    resized = resize_nearest(dataset.coco.mask(polygon, size), OFFICIAL_SIZE)
    assert drawn.shape == OFFICIAL_SIZE
    assert 0.9 < mask_iou(drawn, resized) < 1.0  # the polygon drawn at 480, not the native mask stretched
    native_rle = dataset.coco.mask(rle, size)  # RLE has no finer form: resized by nearest neighbour
    assert np.array_equal(dataset.coco.mask(rle, size, at=OFFICIAL_SIZE), resize_nearest(native_rle, OFFICIAL_SIZE))
    sample = next(s for s in dataset.samples() if s.key == "sent 110")
    merged = dataset.target_at(sample, OFFICIAL_SIZE)
    assert merged.mask.shape == OFFICIAL_SIZE and not merged.empty
    absent = next(s for s in dataset.samples() if s.key == "sent 120")
    assert dataset.target_at(absent, OFFICIAL_SIZE).empty


def _llm_reply(body, headers) -> Reply:
    """The referred object: the caption's last word (what a careful annotator would name for these captions)."""
    caption = json.loads(body["messages"][-1]["content"])["caption"]
    noun = caption.rstrip(".").split()[-1]
    entry = {"noun": noun, "adjectives": [], "phrase": noun, "kind": "object"}
    return Reply(content=json.dumps({"concepts": [entry]}))


def test_a_resumed_run_never_asks_the_llm_again(run_cli, grefcoco, tmp_path, openai_server, monkeypatch):
    from anyword.parsing.openai_parser import REFERRING_PROMPT

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    openai_server.reply = _llm_reply
    run = tmp_path / "run"
    command = ["eval", "--dataset", "grefcoco", "--data-root", grefcoco.root, "--split", "val", "--preset", "shapes",
               "--steps", "0", "--inversion-steps", "4", "--parser", "openai", "--base-url", openai_server.base_url,
               "--referent", "subject", "--out", run, "--json", "--quiet"]  # fmt: skip
    first = run_cli(*command)
    assert first.returncode == 0, first.stderr
    assert len(openai_server.requests) == 5
    assert openai_server.requests[0].body["messages"][0]["content"] == REFERRING_PROMPT
    summary = json.loads(first.stdout)
    parser = summary["models"]["parser"]
    assert (parser["parser"], parser["model"], parser["prompt"]) == ("openai", "gpt-4o", "referring")
    assert "sk-test-key" not in first.stdout and summary["parses"]["stored"] == 5
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert all("subject_found" not in r for r in records)  # the LLM named the subject of every sentence
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))  # 3 samples lost
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["counts"]["done"] == 3 and len(openai_server.requests) == 5  # no new request
    lines = (run / "parses.jsonl").read_text().splitlines()
    assert len(lines) == 5 and {json.loads(line)["key"] for line in lines} == {r["key"] for r in records}


def test_a_damaged_parse_line_is_parsed_again(grefcoco, tmp_path, nlp):
    dataset = open_dataset("grefcoco", DatasetOptions(split="val", root=grefcoco.root))
    out = tmp_path / "run"
    _shapes_run(dataset, out)
    lines = [json.loads(line) for line in (out / "parses.jsonl").read_text().splitlines()]
    lines[0]["parse"]["concepts"][0]["mentions"] = [[0, 999]]  # a span outside the caption
    (out / "parses.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"key": "cut')
    (out / "predictions.jsonl").write_text("")
    from anyword.evaluation.parses import ParseStore

    class Counting:
        def __init__(self, pipeline):
            self.parser, self.calls, self.pipeline = pipeline.parser, 0, pipeline

        def parse(self, caption):
            self.calls += 1
            return self.pipeline.parse(caption)

    from anyword.pipeline import SegmentAnyword

    counting = Counting(SegmentAnyword("shapes", progress=False))
    store = ParseStore(counting, [out / "parses.jsonl"], None)
    for sample in dataset.samples():
        try:
            store.parse(sample)
        except NoConceptError:
            continue
    assert counting.calls == 1  # only the damaged line's sentence


def test_eval_can_draw_its_samples_at_random(run_cli, grefcoco, tmp_path):
    def keys(seed: int, name: str) -> list[str]:
        done = run_cli("eval", "--dataset", "grefcoco", "--data-root", grefcoco.root, "--preset", "shapes", "--steps",
                       "0", "--inversion-steps", "3", "--n", "2", "--draw", seed, "--out", tmp_path / name, "--json",
                       "--quiet")  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["samples"]["drawn_with_seed"] == seed and summary["samples"]["count"] == 2
        return [json.loads(line)["key"] for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]

    every = ["sent 100", "sent 101", "sent 110", "sent 120", "sent 140"]
    drawn = {seed: keys(seed, f"run{seed}") for seed in (0, 1, 2)}
    assert all(sorted(k, key=every.index) == k for k in drawn.values())  # in the dataset's order
    assert len({tuple(k) for k in drawn.values()}) > 1  # the seed decides which
    assert keys(1, "again") == drawn[1]


# --- GranDf's recall as GLaMM computes it ----------------------------------------------------------------------


def _boxes(*columns: tuple[int, int]) -> list[np.ndarray]:
    masks = []
    for start, stop in columns:
        mask = np.zeros((4, 10), dtype=bool)
        mask[:, start:stop] = True
        masks.append(mask)
    return masks


def test_glamm_recall_rule_on_hand_worked_cases():
    targets, predictions = _boxes((0, 3), (3, 6), (6, 10)), _boxes((0, 3), (3, 6), (0, 1))  # two right, one wrong
    image = ImageResult(predictions, ["man", "dog", "ball"], targets, ["A man", "a dog", "a red ball"])
    similar = lambda target, prediction: target.lower().split()[-1] == prediction  # noqa: E731  a stand-in test
    assert grandf_recall([image], similar) == pytest.approx(2 / 3)  # GLaMM's rule: 2 of 3 phrases
    assert grandf_recall([image], word_phrase_match) == 0.0  # the word rule: "A man" never matches "man"
    # The best IoU pair failing the phrase test stops the matching, as find_best_matches breaks.
    swapped = ImageResult(predictions, ["dog", "man", "ball"], targets, ["A man", "a dog", "a red ball"])
    assert grandf_recall([swapped], similar) == 0.0
    # Phrases and masks that do not pair: the phrases count, none matches (GLaMM skips the image on the error).
    uneven = ImageResult(predictions, ["man", "dog", "ball"], targets[:2], ["A man", "a dog", "a red ball"])
    assert grandf_recall([image, uneven], similar) == pytest.approx(2 / 6)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random BertModel (4 layers of 32) with the small test vocabulary, saved as a transformers folder."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from anyword.diffusion.ldm import packaged_dir

    folder = tmp_path_factory.mktemp("bert")
    shutil.copytree(packaged_dir("wordpiece-test-vocab"), folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=241, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def test_the_bert_phrase_embedding_is_glammms_mean_of_every_token(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from anyword.evaluation.phrase_similarity import load_phrase_embedder

    embedder = load_phrase_embedder(str(tiny_bert))
    tokenizer, model = AutoTokenizer.from_pretrained(str(tiny_bert)), AutoModel.from_pretrained(str(tiny_bert))
    inputs = tokenizer("a red ball", return_tensors="pt")
    assert inputs["input_ids"][0, 0] == tokenizer.cls_token_id and inputs["input_ids"][0, -1] == tokenizer.sep_token_id
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state[0].mean(dim=0).double().numpy()
    np.testing.assert_allclose(embedder.embed("a red ball"), expected, rtol=1e-5, atol=1e-6)
    assert embedder.similarity("a red ball", "a red ball") == pytest.approx(1.0)
    a, b = embedder.embed("a man"), embedder.embed("a red ball")
    assert embedder.similarity("a man", "a red ball") == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_grandf_recall_uses_the_bert_model_and_is_null_without_it(tiny_bert, tmp_path, offline):
    fixture = write_grandf(tmp_path / "g")
    dataset = open_dataset("grandf", DatasetOptions(split="val", root=fixture.root))
    samples = {s.key: s for s in dataset.samples()}
    records = [  # the ground truth itself, phrases as written: every phrase found
        {"key": key, "masks": [{"phrase": p, "rle": encode(m)} for p, m in zip(labels, masks, strict=True)]}
        for key, (_, labels, masks) in fixture.truth.items()
    ]
    metrics, unscored = Grounded(recall_model=str(tiny_bert)).metrics(dataset, samples, records)
    assert not unscored and metrics["recall"] == 1.0 and metrics["recall_words"] == 1.0 and metrics["mIoU"] == 1.0
    missing, _ = Grounded().metrics(dataset, samples, records)
    assert missing["recall"] is None and missing["recall_words"] == 1.0
    assert "bert-base-uncased" in missing["recall_unavailable"] and "--recall-model" in missing["recall_unavailable"]


# --- training pairs and the no-target calibration ----------------------------------------------------------------


def test_pairs_are_a_seeded_random_sample(run_cli, tmp_path):
    def draw(seed: int, name: str) -> list[dict]:
        out = tmp_path / f"{name}.jsonl"
        done = run_cli("pairs", "--dataset", "shapes", "--split", "train", "--n", "8", "--seed", seed, "--image-size",
                       "32", "--out", out)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in out.read_text().splitlines()]

    first, same, other = draw(1, "a"), draw(1, "b"), draw(2, "c")
    assert [p["key"] for p in first] == [p["key"] for p in same] and [p["caption"] for p in first] == [
        p["caption"] for p in same
    ]
    assert {p["key"] for p in first} != {p["key"] for p in other}
    assert {p["key"] for p in first} != {f"scene {i}" for i in range(8)}  # not the split's first samples
    assert all((tmp_path / p["image"]).is_file() for p in first)


def test_pairs_from_grandf_train_pc59_and_grefcoco(run_cli, tmp_path):
    grandf = write_grandf(tmp_path / "g")
    train = grandf.root / "annotations" / "train"
    train.mkdir(parents=True)
    images = grandf.root / "GranDf_HA_images" / "train"
    images.mkdir(parents=True)
    records = []
    for key, (caption, labels, masks) in grandf.truth.items():
        name = key.removeprefix("image ") + ".jpg"
        (images / name).write_bytes((grandf.root / "GranDf_HA_images" / "val_test" / name).read_bytes())
        groundings = {
            label: {"token_positives": [0, 1], "rle_masks": [encode(m)]} for label, m in zip(labels, masks, strict=True)
        }
        records.append({"file_name": name, "caption": f'"{caption} "', "groundings": groundings})
    records.append({"caption": "no file"})  # a malformed record is left out, not fatal
    (train / "GranDf_HA_GCG_train.json").write_text(json.dumps(records))
    out = tmp_path / "grandf.jsonl"
    done = run_cli("pairs", "--dataset", "grandf", "--data-root", grandf.root, "--n", "5", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["pairs"], summary["candidates"], summary["left_out"]) == (2, 2, 1)
    drawn = [json.loads(line) for line in out.read_text().splitlines()]
    assert {p["caption"] for p in drawn} == {caption for caption, _, _ in grandf.truth.values()}  # quotes stripped
    dataset = open_dataset("grandf", DatasetOptions(split="train", root=grandf.root))
    sample = dataset.samples()[0]
    assert [m.sum() for m in dataset.target(sample).masks] == [m.sum() for m in grandf.truth["image sa_0"][2]]

    pc59 = write_pc59(tmp_path / "pc")
    listing = pc59.root / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext"
    (listing / "train.txt").write_text((listing / "val.txt").read_text())
    out = tmp_path / "pc59.jsonl"
    done = run_cli("pairs", "--dataset", "pc59", "--data-root", pc59.root, "--n", "5", "--out", out)
    assert done.returncode == 0, done.stderr
    from anyword.evaluation.pascal_context import PC59_CLASSES, caption_name

    for pair in map(json.loads, out.read_text().splitlines()):
        labels = pc59.truth[pair["key"]]
        present = [caption_name(PC59_CLASSES[k]) for k in np.unique(labels) if k != 255]
        assert pair["caption"] == ", ".join(present) and Path(pair["image"]).is_file()

    grefcoco = write_grefcoco(tmp_path / "r")
    out = tmp_path / "grefcoco.jsonl"
    done = run_cli("pairs", "--dataset", "grefcoco", "--data-root", grefcoco.root, "--out", out)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["key"] for line in out.read_text().splitlines()] == ["sent 130"]  # the train ref


@pytest.mark.slow
def test_no_target_rule_calibrates_on_a_registered_dataset(grefcoco, tmp_path):
    out = tmp_path / "rule.json"
    command = [sys.executable, str(ROOT / "scripts" / "no_target_rule.py"), "--dataset", "grefcoco", "--data-root",
               str(grefcoco.root), "--split", "val", "--n", "5", "--preset", "shapes", "--steps", "0", "--out",
               str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env={"OMP_NUM_THREADS": "1",
                          "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["dataset"] == "grefcoco" and result["chosen"]["signal"] in ("concentration", "region_share")
    check = result["check"][result["chosen"]["signal"]]
    assert check["N_acc"] in (0.0, 1.0) and 0.0 <= check["T_acc"] <= 1.0  # one no-target expression among 5
    assert result["calibration"] == {"splits": ["val"], "samples": [0, 4]}


@pytest.mark.parametrize("command", ["parse", "eval"])
def test_a_spacy_model_that_is_not_installed_is_one_clear_error(run_cli, tmp_path, command):
    args = ["a red dog"] if command == "parse" else ["--dataset", "shapes-referring", "--n", "1", "--out", tmp_path]
    done = run_cli(command, *args, "--spacy-model", "en_core_web_trf")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: spaCy model 'en_core_web_trf' is not installed: `python -m spacy download")
    assert not any(tmp_path.iterdir())  # refused before a run folder was written
