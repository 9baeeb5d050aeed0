"""`anyword parse`: one JSON object on stdout, clear errors with exit status 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from anyword.cli import main
from tests.conftest import ANYWORD, run_anyword
from tests.fake_openai import Reply, concepts_json


@pytest.mark.slow
def test_console_script_prints_exactly_one_json_object():
    caption = "A brown tabby kitten sits on a red and blue bus. Later the kitten sleeps on a rug."
    done = run_anyword("parse", caption, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert data["caption"] == caption and data["parser"] == "spacy"
    kitten, bus, rug = data["concepts"]
    assert kitten == {
        **kitten,
        "id": 0,
        "phrase": "brown tabby kitten",
        "noun": "kitten",
        "adjectives": ["brown"],
        "kind": "object",
        "mentions": [[2, 20], [59, 65]],
    }
    assert (bus["noun"], bus["adjectives"], rug["noun"]) == ("bus", ["red", "blue"], "rug")
    assert kitten["tokens"]["noun"] == [4, 15] and kitten["tokens"]["adjectives"] == {"brown": [2]}


def test_human_readable_table(capsys):
    assert main(["parse", "man on left in blue shirt"]) == 0
    out = capsys.readouterr().out
    assert "parser:  spacy" in out
    assert "blue shirt" in out and "shirt" in out and "blue" in out


@pytest.mark.parametrize(
    ("caption", "message"),
    [
        ("", "empty"),
        ("hello!!", "no nouns"),
        ("x" * 10_000, "10,000 characters"),
        ("un chien noir sur la plage", "English"),
        ("一只狗在草地上跑", "English"),
        ("🐶🐱🎉", "no words"),
        ("a \x00\x01 dog", "binary"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(capsys, caption, message):
    assert main(["parse", caption, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1


@pytest.mark.slow
def test_binary_garbage_from_the_shell():
    command = [ANYWORD, "parse", b"\xff\xfe\x80\x81garbage\xc3", "--json"]
    done = subprocess.run(command, capture_output=True, env=os.environ, timeout=120)
    assert done.returncode == 2
    assert b"binary" in done.stderr and b"Traceback" not in done.stderr and done.stdout == b""


def test_openai_parser_from_the_cli(run_cli, openai_server, monkeypatch):
    openai_server.reply = lambda body, headers: Reply(content=concepts_json(("dog", ["brown"], "brown dog")))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cli")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    done = run_cli("parse", "a brown dog", "--parser", "openai", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["parser"] == "openai" and data["concepts"][0]["adjectives"] == ["brown"]

    openai_server.reply = lambda body, headers: Reply(status=401)
    done = run_cli("parse", "a brown dog", "--parser", "openai", "--json")
    data = json.loads(done.stdout)
    assert done.returncode == 0
    assert data["parser"] == "spacy" and data["requested_parser"] == "openai"
    assert "401" in data["fallback_reason"] and "sk-test-cli" not in done.stdout + done.stderr
