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
