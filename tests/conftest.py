"""Shared fixtures. Everything runs offline: tiny random-weight models, the packaged CLIP tokenizer, local servers.

* ``ASSETS``; ``QUICK`` (quick settings for the tiny model) and ``QUICK_ARGS`` (the same on the command line);
* ``run_cli(*args)``: the command line in this process (exit status, stdout, stderr): refusals and small runs;
* ``run_anyword(*args)``: the installed console script in a subprocess, as a user runs it (tests using it are
  ``slow``);
* ``tiny_backbone`` (session-wide), ``nlp``, ``spacy_parser``, ``tokenizer``, the fake LLM servers, the demo server.

Lanes: ``pytest -m "not slow"`` (the quick lane) runs what takes at most a few seconds on a 2-core CPU; ``pytest``
also runs the subprocess, browser and long-run tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from anyword.settings import Overrides

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
ANYWORD = str(Path(sys.executable).parent / "anyword")  # the console script the README's install puts here
QUICK = Overrides(learning_steps=1, inversion_steps=4)  # enough of every stage to test it, on the tiny model
QUICK_ARGS = ["--preset", "tiny", "--steps", "1", "--inversion-steps", "4", "--quiet"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "ANYWORD_OFFLINE": "1"}


@dataclass(frozen=True)
class CliRun:
    """What a command printed and returned (the shape of ``subprocess.CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def run_cli(capsys):
    """``run_cli(*args)``: ``anyword ARGS`` in this process; argparse's refusals (SystemExit) become exit statuses."""
    from anyword.cli import main

    def run(*args: str) -> CliRun:
        capsys.readouterr()  # what the test printed before is not the command's
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        out, err = capsys.readouterr()
        return CliRun(code, out, err)

    return run


def run_anyword(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """The console script in a subprocess, offline, one torch thread per process (``slow`` tests only)."""
    environment = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1", **(env or {})}
    command = [ANYWORD, *(str(arg) for arg in args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=cwd)


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No network for the Hugging Face hub (nothing downloads), an empty segmenter cache in ``tmp_path``."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ANYWORD_OFFLINE", "1")
    monkeypatch.setenv("ANYWORD_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_backbone():
    from anyword.presets import TEST_PRESET, get_preset

    return get_preset(TEST_PRESET).load(device="cpu")


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


OPERATOR_KEY = "sk-operator-SECRET-demo"


@pytest.fixture(scope="session")
def operator_llm():
    """The LLM endpoint the demo's operator configured (its key: ``OPERATOR_KEY``); tests set its reply."""
    from tests.fake_openai import FakeOpenAIServer

    server = FakeOpenAIServer().start()
    yield server
    server.stop()


# --- rehearsals with stand-ins of the published weights (anyword.rehearsal) --------------------------------------

REHEARSE = [sys.executable, str(ROOT / "scripts" / "rehearse.py")]


@dataclass
class Rehearsal:
    """Stand-ins of the published weights served by a hub on 127.0.0.1 (``hub``; ``written`` says what is where)."""

    hub: object
    written: object

    def env(self, home: Path, offline: bool = False) -> dict:
        """The environment of a user whose caches are under ``home``: the hub at ``HF_ENDPOINT``, the stand-in SAM
        checkpoints' digests injected, ``HF_HUB_OFFLINE=1`` when ``offline``."""
        kept = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ANYWORD_"))}
        return {
            **kept,
            "HF_ENDPOINT": self.hub.url,
            "HF_HOME": str(home / "hf"),
            "ANYWORD_CACHE": str(home / "anyword"),
            "ANYWORD_REHEARSAL_SAM": self.written.sam_rehearsal(self.hub.url),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "OMP_NUM_THREADS": "1",
            **({"HF_HUB_OFFLINE": "1", "ANYWORD_OFFLINE": "1"} if offline else {}),
        }

    def run(self, *args: str, home: Path, offline: bool = False, timeout: float = 600):
        """``anyword ARGS`` with the stand-ins (``scripts/rehearse.py cli``) in a subprocess."""
        command = [*REHEARSE, "cli", *(str(a) for a in args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env(home, offline))


@pytest.fixture(scope="session")
def rehearsal(tmp_path_factory):
    from anyword.rehearsal.hub import LocalHub
    from anyword.rehearsal.standins import write_stand_ins

    written = write_stand_ins(tmp_path_factory.mktemp("standins"), presets=["sd15", "ldm"])
    hub = LocalHub(written.repos, written.files).start()
    yield Rehearsal(hub, written)
    hub.stop()


@pytest.fixture(scope="session")
def sd15_home(rehearsal, tmp_path_factory):
    """A user's caches after `anyword download sd15` (backbone and SAM ViT-H) from the stand-in hub."""
    home = tmp_path_factory.mktemp("home")
    done = rehearsal.run("download", "sd15", "--json", "--quiet", home=home)
    assert done.returncode == 0, done.stderr
    return home


@pytest.fixture(scope="session")
def demo_server(operator_llm):
    """The demo on the tiny preset, shared by the API and browser tests; its operator has an LLM key and endpoint."""
    from demo.process import start_demo

    env = {"OPENAI_API_KEY": OPERATOR_KEY, "ANYWORD_LLM_BASE_URL": operator_llm.base_url}
    process, url, seconds = start_demo("--preset", "tiny", env=env)
    print(f"\ndemo served {url} {seconds:.1f} s after launch")
    yield url
    process.terminate()
    process.wait(timeout=30)
