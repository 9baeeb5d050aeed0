"""The demo as a server, driven through its API with gradio_client (tiny preset). API callers send the library's
names ("spacy", "custom"), never the page's words."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.conftest import ASSETS, OPERATOR_KEY
from tests.fake_openai import Reply, concepts_json

pytestmark = pytest.mark.slow  # a demo server in its own process
CAPTION = "a red espresso cup on a red saucer with a silver spoon"
# Each event returns the notice line, then the page parts it owns (see demo/ui.py): parse -> highlight, concepts,
# ...; compute -> gallery, editor, ...; segment -> annotated masks; export -> download, result JSON.
NOTICE, CONCEPTS, GALLERY, ANNOTATED, DOWNLOAD, RESULT = 0, 2, 1, 1, 1, 2


def test_parse_compute_segment_through_the_api(demo_server, tmp_path):
    client = Client(demo_server, verbose=False, download_files=str(tmp_path))
    client.predict(handle_file(str(ASSETS / "coffee.png")), api_name="/set_image")
    parsed = client.predict(CAPTION, "spacy", "", "gpt-4o", "", api_name="/parse")
    assert "3 concepts found by spacy" in parsed[NOTICE]
    assert [row[1] for row in parsed[CONCEPTS]["data"]] == ["red espresso cup", "red saucer", "silver spoon"]

    computed = client.predict("tiny", "preset", "", "custom", 2, 7, 0.7, True, True, api_name="/compute")
    assert "RANDOM WEIGHTS" in computed[NOTICE] and "2 prompt-learning steps, seed 7" in computed[NOTICE]
    assert len(computed[GALLERY]) == 6  # 3 concepts + 3 bound adjectives

    segmented = client.predict(api_name="/segment")
    assert "Segmented 3 concepts" in segmented[NOTICE]
    assert len(segmented[ANNOTATED]["annotations"]) == 3
    exported = client.predict(api_name="/export")
    result = exported[RESULT]
    assert result["caption"] == CAPTION and result["image"] == {"width": 600, "height": 400}
    assert [c["phrase"] for c in result["concepts"]] == ["red espresso cup", "red saucer", "silver spoon"]
    assert result["settings"]["diffusion"]["learning"]["steps"] == 2 and result["settings"]["diffusion"]["seed"] == 7
    assert Path(exported[DOWNLOAD]).suffix == ".zip" and Path(exported[DOWNLOAD]).stat().st_size > 1000


def test_errors_come_back_as_messages_and_the_server_keeps_serving(demo_server):
    client = Client(demo_server, verbose=False)
    # No image, no parse: the warning is shown, nothing changes, and the next request is served normally.
    unchanged = client.predict(api_name="/segment")
    assert "Compute attention first" in unchanged[NOTICE]
    assert unchanged[ANNOTATED] == {"__type__": "update"}  # left as it was
    refused = client.predict("hello!!", "spacy", "", "gpt-4o", "", api_name="/parse")
    assert "no nouns found" in refused[NOTICE] and refused[CONCEPTS] == {"__type__": "update"}
    parsed = client.predict("a dog on a sofa", "spacy", "", "gpt-4o", "", api_name="/parse")
    assert "2 concepts found" in parsed[NOTICE]


def test_the_operators_key_never_goes_to_a_visitors_server(demo_server, operator_llm, openai_server):
    answer = concepts_json(("dog", [], "dog"), ("sofa", [], "sofa"))
    operator_llm.reply = openai_server.reply = lambda body, headers: Reply(content=answer)
    operator_llm.requests.clear()
    client = Client(demo_server, verbose=False)
    llm = "openai"
    refused = client.predict("a dog on a sofa", llm, "", "gpt-4o", openai_server.base_url, api_name="/parse")
    assert "needs your own API key" in refused[NOTICE] and openai_server.requests == []
    own = client.predict("a dog on a sofa", llm, "sk-visitor-1", "gpt-4o", openai_server.base_url, api_name="/parse")
    assert "2 concepts found by openai" in own[NOTICE]
    assert [r.headers["authorization"] for r in openai_server.requests] == ["Bearer sk-visitor-1"]
    operators = client.predict("a dog on a sofa", llm, "", "gpt-4o", "", api_name="/parse")
    assert "2 concepts found by openai" in operators[NOTICE]
    assert [r.headers["authorization"] for r in operator_llm.requests] == [f"Bearer {OPERATOR_KEY}"]


def test_silent_llm_servers_never_hold_up_spacy_parses(demo_server, operator_llm):
    release = threading.Event()

    def silent(body, headers):
        release.wait(60)
        return Reply(status=500)

    operator_llm.reply = silent
    operator_llm.requests.clear()
    llm = "openai"
    try:
        stuck = [
            Client(demo_server, verbose=False).submit("a dog on a sofa", llm, "", "gpt-4o", "", api_name="/parse")
            for _ in range(4)
        ]
        while len(operator_llm.requests) < 2:  # both LLM slots taken by the silent server
            time.sleep(0.05)
        parsed = Client(demo_server, verbose=False).predict(
            "a cat on a mat", "spacy", "", "gpt-4o", "", api_name="/parse"
        )
        assert "2 concepts found by spacy" in parsed[NOTICE]
        assert sum(not job.done() for job in stuck) >= 2  # the LLM parses are still waiting
    finally:
        release.set()
    notices = [job.result()[NOTICE] for job in stuck]
    assert sum("could not be used" in n for n in notices) == 2 and sum("busy" in n for n in notices) == 2
