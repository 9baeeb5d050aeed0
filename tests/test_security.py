"""Hostile and careless input: where keys go, which endpoints are contacted, uploads, output folders, the CLI's
edges. Each test reproduces a finding of the security review (issue 13) and keeps it fixed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from gradio.data_classes import FileData
from PIL import Image, ImageFile

from anyword.cli import main
from anyword.errors import AnywordError, ImageError, OutputError, SettingsError
from anyword.export import check_output_folder, replace_folder
from anyword.images import load_image
from anyword.parsing import SpacyParser, normalize_caption
from anyword.parsing.llm_access import EndpointRefused, LLMAccess, check_public_url
from anyword.seeds import MAX_SEED, check_seed
from demo import choices
from demo import handlers as h
from demo.exports import ExportStore
from demo.layout import UploadedImage
from demo.requests import ComputeRequest, ParseRequest
from demo.state import Session
from demo.ui import DemoConfig, build_demo
from tests.conftest import ANYWORD
from tests.fake_openai import FakeOpenAIServer, Reply, concepts_json

OPERATOR_KEY = "sk-operator-SECRET-0001"
VISITOR_KEY = "sk-visitor-0002"
DOG_SOFA = concepts_json(("dog", [], "dog"), ("sofa", [], "sofa"))


@pytest.fixture()
def servers():
    """Two recording LLM servers: the operator's endpoint and one a visitor types."""
    operator, visitor = FakeOpenAIServer().start(), FakeOpenAIServer().start()
    for server in (operator, visitor):
        server.reply = lambda body, headers: Reply(content=DOG_SOFA)
    yield operator, visitor
    operator.stop()
    visitor.stop()


def keys_sent(server) -> list[str]:
    return [r.headers.get("authorization", "") for r in server.requests]


# --- 1, 2: the operator's key and outbound requests -----------------------------------------------------------


def test_the_operators_key_only_goes_to_the_operators_endpoint(servers, spacy_parser, monkeypatch):
    operator, visitor = servers
    monkeypatch.setenv("OPENAI_API_KEY", OPERATOR_KEY)
    llm = LLMAccess(operator.base_url, visitor_urls=True, refuse_private=False)
    parse = h.parse_caption
    # A visitor URL without a key is refused before anything is sent anywhere.
    with pytest.raises(EndpointRefused, match="needs your own API key"):
        parse(Session(), ParseRequest("a dog on a sofa", choices.LLM, "", "gpt-4o", visitor.base_url), llm=llm)
    assert visitor.requests == [] and operator.requests == []
    # With the visitor's key: that key, and only it, goes to the visitor's server.
    session, view = parse(
        Session(), ParseRequest("a dog on a sofa", choices.LLM, VISITOR_KEY, "", visitor.base_url), llm=llm
    )
    assert session.parse.parser == "openai" and not view["warning"]
    assert keys_sent(visitor) == [f"Bearer {VISITOR_KEY}"]
    # No URL typed: the operator's endpoint with the operator's key.
    session, _ = parse(Session(), ParseRequest("a dog on a sofa", choices.LLM, "", "", ""), llm=llm)
    assert session.parse.parser == "openai" and keys_sent(operator) == [f"Bearer {OPERATOR_KEY}"]
    assert all(OPERATOR_KEY not in key for key in keys_sent(visitor))


def test_visitor_urls_are_refused_unless_the_operator_allows_them(servers, spacy_parser, monkeypatch):
    operator, visitor = servers
    monkeypatch.setenv("OPENAI_API_KEY", OPERATOR_KEY)
    public = LLMAccess(operator.base_url)  # the default: no visitor endpoints
    with pytest.raises(EndpointRefused, match="only uses its own LLM endpoint"):
        public.parse("a dog on a sofa", spacy_parser, visitor.base_url, VISITOR_KEY)
    # Allowed on a public server: the visitor's server is on loopback, so it is refused all the same.
    opted_in = LLMAccess(operator.base_url, visitor_urls=True, refuse_private=True)
    with pytest.raises(EndpointRefused, match="private, loopback or link-local"):
        opted_in.parse("a dog on a sofa", spacy_parser, visitor.base_url, VISITOR_KEY)
    assert visitor.requests == [] and operator.requests == []


@pytest.mark.parametrize(
    ("url", "addresses", "allowed"),
    [
        ("https://llm.example.com/v1", ["93.184.216.34"], True),
        ("http://llm.example.com:8000/v1", ["2606:2800:220:1:248:1893:25c8:1946"], True),
        ("http://inside.example/v1", ["10.0.0.5"], False),
        ("http://inside.example/v1", ["93.184.216.34", "192.168.1.2"], False),  # one inside is enough
        ("http://metadata.example/v1", ["169.254.169.254"], False),
        ("http://localhost:8000/v1", ["127.0.0.1"], False),
        ("http://[::1]:8000/v1", ["::1"], False),
        ("http://[fd00::1]/v1", ["fd00::1"], False),
        ("http://0.0.0.0/v1", ["0.0.0.0"], False),
        ("file:///etc/passwd", [], False),
        ("ftp://llm.example.com", ["93.184.216.34"], False),
    ],
)
def test_public_url_check_resolves_before_judging(url, addresses, allowed):
    def resolve(host, port):
        return addresses

    if allowed:
        assert check_public_url(url, resolve) == url
    else:
        with pytest.raises(EndpointRefused):
            check_public_url(url, resolve)


def test_unresolvable_hosts_are_refused_with_one_line():
    def resolve(host, port):
        raise OSError("no such host")

    with pytest.raises(EndpointRefused, match="could not be resolved"):
        check_public_url("https://nowhere.invalid/v1", resolve)


def test_llm_failures_reach_the_visitor_as_one_generic_sentence(servers, spacy_parser):
    _, visitor = servers
    llm = LLMAccess(visitor_urls=True, refuse_private=False)
    for status in (401, 404, 500):
        visitor.reply = lambda body, headers, status=status: Reply(status=status)
        result, problem = llm.parse("a dog on a sofa", spacy_parser, visitor.base_url, VISITOR_KEY)
        assert (
            result.parser == "spacy"
            and problem == "The LLM parser could not be used; spaCy parsed the caption instead."
        )
    dead = "http://127.0.0.1:9/v1"  # nothing listens: same sentence, no port probing
    result, problem = llm.parse("a dog on a sofa", spacy_parser, dead, VISITOR_KEY)
    assert problem.startswith("The LLM parser could not be used") and "127.0.0.1" not in problem


def test_busy_llm_slots_never_hold_up_a_parse(servers, spacy_parser):
    operator, _ = servers
    release = threading.Event()

    def silent(body, headers):
        release.wait(30)
        return Reply(content=DOG_SOFA)

    operator.reply = silent
    llm = LLMAccess(operator.base_url, max_concurrent=1)
    slow = threading.Thread(target=llm.parse, args=("a dog on a sofa", spacy_parser, "", VISITOR_KEY))
    slow.start()
    while not operator.requests:  # the first LLM call holds the only slot
        threading.Event().wait(0.02)
    result, problem = llm.parse("a cat on a mat", spacy_parser, "", VISITOR_KEY)
    assert result.parser == "spacy" and "busy" in problem and slow.is_alive()
    release.set()
    slow.join(30)


# --- 3, 4, 5, 16: uploads -------------------------------------------------------------------------------------


def upload(path: Path) -> str:
    """What the page's image input hands its handler for an uploaded file."""
    return UploadedImage(type="filepath").preprocess(FileData(path=str(path), orig_name=path.name))


def test_a_huge_greyscale_upload_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge-grey.png"
    Image.new("L", (12000, 12000)).save(path, optimize=False, compress_level=1)
    assert path.stat().st_size < 1_000_000  # a small file for 144 MP

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the upload was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=r"12000x12000 pixels \(144 MP\); the limit is 40 MP"):
        h.set_image(Session(), upload(path))


def test_uploads_read_exactly_as_the_cli_reads_them(tmp_path):
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((30, 50), 32768, dtype=np.uint16)).save(grey16)
    palette = Image.new("P", (40, 20), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    palette.info["transparency"] = 0  # index 0 (red) is transparent: composited over white
    palette_path = tmp_path / "palette.png"
    palette.save(palette_path, transparency=0)
    for path, expected in ((grey16, 128), (palette_path, 255)):
        session, view = h.set_image(Session(), upload(path))
        np.testing.assert_array_equal(session.image, load_image(path))
        assert int(session.image.mean().round()) == expected and "ready" in view["notice"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable image"),
        (b"just some text\n", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),  # a forged header
    ],
)
def test_unreadable_uploads_get_specific_messages(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        h.set_image(Session(), upload(path))


@pytest.mark.slow
def test_parallel_uploads_of_one_16bit_image_through_the_server(demo_server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    path = tmp_path / "grey16.png"
    Image.fromarray(np.linspace(0, 65535, 64 * 96, dtype=np.uint16).reshape(64, 96)).save(path)

    def one(_):
        client = Client(demo_server, verbose=False)
        return client.predict(handle_file(str(path)), api_name="/set_image")  # the notice: its only output

    with ThreadPoolExecutor(8) as pool:
        notices = list(pool.map(one, range(8)))
    assert notices == ["Image 96x64 ready. Parse the caption next."] * 8


@pytest.mark.parametrize("seed", [-5, 2**70, 1.5, float("nan")])
def test_out_of_range_seeds_are_refused_by_name(seed):
    with pytest.raises(SettingsError, match=f"from 0 to {MAX_SEED}"):
        check_seed(seed)
    with pytest.raises(AnywordError, match="seed"):
        ComputeRequest("tiny", seed=seed).overrides()


# --- 6, 7: downloads and sessions -----------------------------------------------------------------------------


def owners(store: ExportStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.is_dir())


def test_exports_are_one_file_per_session_and_go_when_it_ends(tmp_path):
    store = ExportStore(tmp_path / "exports", max_bytes=10_000)
    first = store.write("aaa", "one.zip", b"x" * 3000)
    second = store.write("aaa", "two.zip", b"y" * 3000)
    assert not first.exists() and second.read_bytes() == b"y" * 3000 and owners(store) == ["aaa"]
    assert second.parent != first.parent  # a new URL for each export
    store.write("bbb", "b.zip", b"z" * 3000)
    store.write("ccc", "c.zip", b"z" * 3000)
    os.utime(store.root / "aaa", (1, 1))  # the oldest session
    store.write("ddd", "d.zip", b"z" * 3000)  # over 10,000 bytes: the oldest session's file goes
    assert owners(store) == ["bbb", "ccc", "ddd"] and store.total_bytes() <= 10_000
    store.release("bbb")
    assert owners(store) == ["ccc", "ddd"]
    with pytest.raises(ValueError):
        store.write("../escape", "x.zip", b"")


def test_the_page_deletes_a_sessions_state_and_download_when_it_ends(tmp_path, monkeypatch):
    import gradio as gr

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo = build_demo(DemoConfig(preset="tiny", check_availability=False, session_ttl_s=90))
    state = next(block for block in demo.blocks.values() if isinstance(block, gr.State))
    assert state.time_to_live == 90 and demo.delete_cache == (90, 90)
    store_root = tmp_path / "gradio" / "anyword-exports"
    assert store_root.is_dir()  # inside Gradio's cache: served in place, never copied
    (store_root / "abc123" / "1f2e").mkdir(parents=True)
    (store_root / "abc123" / "1f2e" / "result.zip").write_bytes(b"zip")
    state.delete_callback(Session(export_owner="abc123"))
    assert not (store_root / "abc123").exists()


# --- 8, 12: corrupt and huge images ---------------------------------------------------------------------------


def test_a_jpeg_with_flipped_bytes_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    load_image(bytes(data))  # intact: fine
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(bytes(data))


def test_giant_headers_raise_no_pillow_warning(tmp_path):
    from tests.test_images import huge_png_header

    path = tmp_path / "144mp.png"
    path.write_bytes(huge_png_header(12000, 12000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail here
        with pytest.raises(ImageError, match="144 MP"):
            load_image(path)


# --- 9: output folders ----------------------------------------------------------------------------------------


def test_output_folders_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(a_file)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match="not an earlier anyword result"):
        check_output_folder(foreign)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "result.json").write_text("{}")
    assert check_output_folder(earlier) == earlier and check_output_folder(tmp_path / "new" / "deep")


def test_a_new_result_replaces_the_earlier_one_whole(tmp_path):
    out = tmp_path / "out"
    replace_folder(out, {"result.json": b"1", "masks/0_cup.png": b"a", "masks/1_saucer.png": b"b"})
    (out / "overlay.png").mkdir()  # something in the way of the next run's file
    replace_folder(out, {"result.json": b"2", "overlay.png": b"o", "masks/0_dog.png": b"c"})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "masks/0_dog.png",
        "overlay.png",
        "result.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_cli_refuses_a_file_as_out_before_loading_models(tmp_path, capsys):
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 30)).save(image)
    assert main(["segment", str(image), "a dog", "--out", str(a_file), "--preset", "sd15"]) == 2
    assert capsys.readouterr().err == f"error: --out {a_file} is a file; give a folder (it is created if missing)\n"
    batch = tmp_path / "jobs.jsonl"
    batch.write_text(json.dumps({"image": str(image), "caption": "a dog"}) + "\n")
    assert main(["segment", "--batch", str(batch), "--out", str(a_file), "--preset", "sd15"]) == 2
    assert "is a file" in capsys.readouterr().err


# --- 10: pipes and folders as images --------------------------------------------------------------------------


def test_pipes_and_folders_are_not_images(tmp_path, capsys):
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    out = str(tmp_path / "out")
    assert main(["segment", str(pipe), "a dog", "--out", out]) == 2
    assert "not a regular file (a pipe, device or socket)" in capsys.readouterr().err
    assert main(["segment", str(tmp_path), "a dog", "--out", out]) == 2
    assert "is a folder, not an image file" in capsys.readouterr().err


# --- 11, 14: the CLI's edges ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_closed_pipe_ends_the_cli_quietly():
    process = subprocess.Popen(
        [ANYWORD, "parse", "a red cup on a saucer with a silver spoon", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before anything is written (`| head -c 0`)
    stderr = process.stderr.read().decode()
    assert process.wait(120) == 141 and stderr == ""


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "100000"])
def test_bad_llm_timeouts_are_usage_errors(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["parse", "a dog", "--parser", "openai", "--llm-timeout", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--llm-timeout" in err
    assert "must be greater than 0.0 and at most 600.0" in err or "expected a finite number" in err


@pytest.mark.parametrize("key", ["sk-caf\u00e9-123", "sk-abc\nX-Injected: 1", "sk abc", "sk-\u200babc"])
def test_malformed_keys_never_reach_http_nor_a_log(key, servers, monkeypatch, capsys):
    operator, _ = servers
    monkeypatch.setenv("OPENAI_API_KEY", key)
    code = main(["--debug", "parse", "a dog on a sofa", "--parser", "openai", "--base-url", operator.base_url])
    captured = capsys.readouterr()
    assert code == 0 and operator.requests == []  # refused before any request; spaCy parsed instead
    assert "API key is malformed" in captured.out
    assert key not in captured.out + captured.err and key.strip() not in captured.out + captured.err


def test_debug_logging_never_prints_a_valid_key(servers, monkeypatch, capsys):
    operator, _ = servers
    monkeypatch.setenv("OPENAI_API_KEY", OPERATOR_KEY)
    for reply in (Reply(content=DOG_SOFA), Reply(status=401)):
        operator.reply = lambda body, headers, reply=reply: reply
        main(["--debug", "parse", "a dog on a sofa", "--parser", "openai", "--base-url", operator.base_url])
        captured = capsys.readouterr()
        assert OPERATOR_KEY not in captured.out + captured.err
    assert keys_sent(operator) == [f"Bearer {OPERATOR_KEY}"] * 2


# --- 15: invisible characters ---------------------------------------------------------------------------------


def test_invisible_format_characters_are_removed_from_captions(nlp):
    assert normalize_caption("a c\u200bup on a \u202esaucer\ufeff") == "a cup on a saucer"
    assert normalize_caption("ﬁve ｃｕｐｓ") == "five cups"  # NFKC: ligatures and full-width letters
    result = SpacyParser(nlp=nlp).parse("a red c\u200bup")
    assert result.caption == "a red cup" and [c.noun for c in result.concepts] == ["cup"]


@pytest.mark.parametrize(
    ("argv", "space", "public"),
    [([], False, False), (["--host", "0.0.0.0"], False, True), (["--share"], False, True), ([], True, True)],
)
def test_public_servers_hide_the_base_url_field_unless_the_operator_opts_in(argv, space, public, monkeypatch):
    import gradio as gr

    from demo.app import is_public, parse_args

    monkeypatch.delenv("SPACE_ID", raising=False)
    if space:
        monkeypatch.setenv("SPACE_ID", "someone/segment-anyword")
    assert is_public(parse_args(argv)) is public
    for allowed in (not public, True):
        demo = build_demo(DemoConfig(preset="tiny", check_availability=False, visitor_llm_urls=allowed))
        field = next(b for b in demo.blocks.values() if isinstance(b, gr.Textbox) and b.label.startswith("Base URL"))
        assert field.visible is allowed


def test_the_server_keeps_at_most_max_sessions(monkeypatch, tmp_path):
    import gradio as gr

    from demo import app

    launched = {}
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    app.main(["--preset", "tiny", "--max-sessions", "50"])
    assert launched["state_session_capacity"] == 50  # Gradio drops the least recently used session past it
    assert app.parse_args([]).max_sessions == 1000
    with pytest.raises(SystemExit):
        app.parse_args(["--max-sessions", "0"])
