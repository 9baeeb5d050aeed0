"""Shared fixtures. Everything runs offline: tiny random-weight models, the packaged CLIP tokenizer, local servers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def nlp():
    from anyword.parsing import load_spacy_model

    return load_spacy_model()


@pytest.fixture(scope="session")
def spacy_parser(nlp):
    from anyword.parsing import SpacyParser

    return SpacyParser(nlp=nlp)


@pytest.fixture(scope="session")
def tokenizer():
    from anyword.tokens import load_tokenizer

    return load_tokenizer()


@pytest.fixture()
def openai_server():
    from tests.fake_openai import FakeOpenAIServer

    server = FakeOpenAIServer().start()
    yield server
    server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_demo(*args: str, env: dict | None = None, timeout_s: float = 180.0):
    """Run ``python app.py ARGS --port P`` and wait until the page answers; returns (process, url, seconds)."""
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    port = free_port()
    root = Path(__file__).resolve().parent.parent
    log_dir = root / ".pytest_cache"
    log_dir.mkdir(exist_ok=True)
    log = open(log_dir / f"demo-{port}.log", "w")  # noqa: SIM115 (the server outlives this function)
    process = subprocess.Popen(
        [sys.executable, str(root / "app.py"), *args, "--port", str(port)],
        cwd=root,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with status {process.returncode} (see {log.name})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, url, time.monotonic() - started
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"the demo did not answer on {url} within {timeout_s:.0f} s")


OPERATOR_KEY = "sk-operator-SECRET-demo"


@pytest.fixture(scope="session")
def operator_llm():
    """The LLM endpoint the demo's operator configured (its key: ``OPERATOR_KEY``); tests set its reply."""
    from tests.fake_openai import FakeOpenAIServer

    server = FakeOpenAIServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_server(operator_llm):
    """The demo on the tiny preset, shared by the API and browser tests; its operator has an LLM key and endpoint."""
    env = {"OPENAI_API_KEY": OPERATOR_KEY, "ANYWORD_LLM_BASE_URL": operator_llm.base_url}
    process, url, seconds = start_demo("--preset", "tiny", env=env)
    print(f"\ndemo served {url} {seconds:.1f} s after launch")
    yield url
    process.terminate()
    process.wait(timeout=30)
