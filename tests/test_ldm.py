"""The paper's backbone (LDM + BERT) on its random-weight stand-in ``ldm-tiny``: WordPiece alignment, the paper's
embedding initialisation, loading published-layout folders (safetensors and ``.bin`` through ``weights_only``), and
the whole product on it: segment, eval, pairs -> adapt -> segment with the adapter."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from anyword.diffusion.ldm import build_ldm_tiny, ldm_layouts, load_ldm, packaged_dir
from anyword.diffusion.prompt_learning import initial_embeddings
from anyword.errors import ModelUnavailableError
from anyword.parsing import SpacyParser
from anyword.tokens import align_tokens
from tests.conftest import ASSETS
from tests.eval_fixtures import write_grefcoco

TINY_ARGS = ["--preset", "ldm-tiny", "--steps", "1", "--inversion-steps", "4", "--quiet"]


@pytest.fixture(scope="module")
def ldm():
    return build_ldm_tiny(device="cpu")


def _alignment(backbone, nlp, caption: str):
    parse = SpacyParser(nlp=nlp).parse(caption)
    return parse, align_tokens(parse.caption, parse.concepts, backbone.tokenizer, backbone.text_length)


def test_wordpiece_alignment_maps_a_split_word_to_all_its_pieces(ldm, nlp):
    parse, alignment = _alignment(ldm, nlp, "a red circle beside a zebra")
    vocabulary = ldm.tokenizer.get_vocab()
    assert "circle" in vocabulary and "zebra" not in vocabulary
    assert alignment.input_ids[0] == ldm.tokenizer.cls_token_id  # BERT frames with [CLS] ... [SEP]
    assert len(alignment.input_ids) == ldm.text_length
    circle = alignment.for_concept(next(c.id for c in parse.concepts if c.noun == "circle"))
    zebra = alignment.for_concept(next(c.id for c in parse.concepts if c.noun == "zebra"))
    assert [alignment.pieces[p] for p in circle.noun_positions] == ["circle"]
    pieces = [alignment.pieces[p] for p in zebra.noun_positions]
    assert len(pieces) > 1 and "".join(p.removeprefix("##") for p in pieces) == "zebra"
    assert list(zebra.noun_positions) == list(range(zebra.noun_positions[0], zebra.noun_positions[-1] + 1))
    assert alignment.input_ids[zebra.noun_positions[-1] + 1] == ldm.tokenizer.sep_token_id


def test_in_vocabulary_words_start_from_bert_and_others_from_a_seeded_random_vector(ldm, nlp):
    _, alignment = _alignment(ldm, nlp, "a red circle beside a zebra")
    table = ldm.text_encoder.get_input_embeddings().weight.detach().float()
    learned = initial_embeddings(ldm, alignment, seed=3)
    known = [i for i, s in enumerate(learned.slots) if s.in_vocabulary]
    unknown = [i for i, s in enumerate(learned.slots) if not s.in_vocabulary]
    assert {learned.slots[i].word for i in known} >= {"red", "circle"} and {learned.slots[i].word for i in unknown} == {
        "zebra"
    }
    for index in known:  # the pretrained embedding, exactly
        torch.testing.assert_close(learned.vectors[index], table[learned.slots[index].token_id])
    for index in unknown:  # not the piece's embedding: a random vector of the table's scale
        assert not torch.allclose(learned.vectors[index], table[learned.slots[index].token_id])
    again, other_seed = initial_embeddings(ldm, alignment, seed=3), initial_embeddings(ldm, alignment, seed=4)
    torch.testing.assert_close(again.vectors, learned.vectors)  # seeded
    assert not torch.allclose(other_seed.vectors[unknown], learned.vectors[unknown])
    torch.testing.assert_close(other_seed.vectors[known], learned.vectors[known])
    _, elsewhere = _alignment(ldm, nlp, "a zebra")  # the same word starts from the same vector in another caption
    moved = initial_embeddings(ldm, elsewhere, seed=3)
    torch.testing.assert_close(moved.vectors[0], learned.vectors[unknown[0]])


def _published_folder(backbone, root, weights: str):
    """``backbone`` written in the published ``CompVis/ldm-text2im-large-256`` layout, as safetensors or ``.bin``."""
    from safetensors.torch import save_file

    config = packaged_dir("ldm-tiny-config")
    shutil.copytree(config, root, ignore=shutil.ignore_patterns("README.md"))
    shutil.copytree(packaged_dir("wordpiece-test-vocab"), root / "tokenizer", ignore=shutil.ignore_patterns("*.md"))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "LDMTextToImagePipeline"}))
    modules = {"unet": backbone.unet, "vqvae": backbone.vae, "bert": backbone.text_encoder}
    names = {
        "safetensors": {"unet": "diffusion_pytorch_model.safetensors", "vqvae": "diffusion_pytorch_model.safetensors",
                        "bert": "model.safetensors"},
        "bin": {"unet": "diffusion_pytorch_model.bin", "vqvae": "diffusion_pytorch_model.bin",
                "bert": "pytorch_model.bin"},
    }[weights]  # fmt: skip
    for part, module in modules.items():
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        if weights == "safetensors":
            save_file(state, str(root / part / names[part]))
        else:
            torch.save(state, root / part / names[part])
    return root


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_a_folder_in_the_published_layout_loads_the_same_weights(ldm, tmp_path, weights):
    folder = _published_folder(ldm, tmp_path / "ldm", weights)
    loaded = load_ldm(str(folder), device="cpu")
    assert not loaded.random_weights and loaded.out_of_vocabulary == "random" and loaded.resolution == ldm.resolution
    for mine, theirs in ((loaded.unet, ldm.unet), (loaded.text_encoder, ldm.text_encoder), (loaded.vae, ldm.vae)):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, msg=name)


def test_a_pickle_in_a_bin_file_is_refused_not_run(ldm, tmp_path):
    folder = _published_folder(ldm, tmp_path / "ldm", "bin")
    marker = tmp_path / "ran"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weight": Trap()}, folder / "bert" / "pytorch_model.bin")
    with pytest.raises(ModelUnavailableError, match=r"pytorch_model\.bin was refused: it holds objects other than"):
        load_ldm(str(folder), device="cpu")
    assert not marker.exists()


def test_the_ldm_preset_offline_says_where_the_weights_go(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelUnavailableError, match=r"LDM weights 'CompVis/ldm-text2im-large-256'.*HF_HUB_OFFLINE"):
        load_ldm(device="cpu")
    assert ldm_layouts()[1].weights["bert"] == ("pytorch_model.bin",)


def test_segment_on_ldm_tiny(run_cli, tmp_path):
    done = run_cli("segment", ASSETS / "coffee.png", "a red cup on a saucer", "--out", tmp_path / "out", *TINY_ARGS)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["models"]["preset"] == "ldm-tiny" and result["models"]["backbone_random_weights"] is True
    assert [c["noun"] for c in result["concepts"]] == ["cup", "saucer"]
    assert result["settings"]["diffusion"]["attention_resolutions"] == [16]  # the paper's grid, which LDM has


def test_eval_on_ldm_tiny_records_the_protocol(run_cli, tmp_path, offline):
    """The issue's command: gRefCOCO fixture, ldm-tiny, IoU cross-matching, offline."""
    fixture = write_grefcoco(tmp_path / "data")
    run = tmp_path / "run"
    done = run_cli("eval", "--dataset", "grefcoco", "--data-root", fixture.root, "--split", "val", "--preset",
                   "ldm-tiny", "--referent", "match", "--out", run, "--json", "--quiet", "--steps", "1",
                   "--inversion-steps", "4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["models"]["preset"] == "ldm-tiny" and summary["models"]["text_encoder"] == "LDMBertModel"
    assert summary["models"]["backbone_random_weights"] is True
    assert summary["evaluation"]["referent"] == "match" and summary["evaluation"]["referent_reads_truth"] is True
    assert summary["evaluation"]["no_target"]["enabled"] is False
    assert summary["models"]["parser"]["parser"] == "spacy" and summary["models"]["parser"]["model"].startswith("en_")
    assert summary["evaluation"]["score_at"] == "official" and summary["evaluation"]["score_size"] == [480, 480]
    assert summary["counts"]["done"] == 5 and summary["counts"]["failed"] == 0
    assert set(summary["metrics"]) >= {"cIoU", "gIoU"}


def test_pairs_then_adapt_then_segment_with_the_adapter_on_ldm_tiny(run_cli, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    drawn = run_cli("pairs", "--dataset", "shapes", "--split", "train", "--n", "6", "--seed", "2", "--image-size",
                    "64", "--out", pairs, "--json")  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    assert json.loads(drawn.stdout)["pairs"] == 6
    adapter = tmp_path / "adapter"
    trained = run_cli("adapt", "--preset", "ldm-tiny", "--pairs", pairs, "--n", "4", "--adapt-steps", "2",
                      "--batch-size", "2", "--rank", "4", "--out", adapter, "--json", "--quiet")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    info = json.loads(trained.stdout)
    assert info["base"] == "ldm-tiny" and info["pairs_used"] == 4
    assert "a random 4 of 6, seed 0" in info["pairs_source"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "out_proj"}  # BERT's attention
    out = tmp_path / "out"
    done = run_cli("segment", ASSETS / "coffee.png", "a red cup", "--adapter", adapter, "--out", out, *TINY_ARGS)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "result.json").read_text())["models"]["adapter"]
