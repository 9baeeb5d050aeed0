"""The demo in a real browser: headless Debian Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COFFEE = "a red espresso cup on a red saucer with a silver spoon on a wooden table"
CAT = "A tabby cat with big green eyes and a pink nose. Its long white whiskers spread across its face."
SLOW = 180_000  # ms: computing attention on a busy 2-core CPU

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/install-chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


def open_page(browser, url: str) -> Page:
    context = browser.new_context(viewport={"width": 1400, "height": 2200})
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#parse-button")).to_be_visible(timeout=60_000)
    return page


NOTICE = "#notice [data-testid=markdown]"  # the text itself, not the progress overlay


def notice(page: Page) -> str:
    return page.locator(NOTICE).inner_text()


def pick_example_and_parse(page: Page, caption: str) -> None:
    page.get_by_text(caption[:40]).first.click()
    expect(page.locator("#caption textarea")).to_have_value(caption, timeout=30_000)
    expect(page.locator(NOTICE)).to_contain_text("ready", timeout=60_000)  # the image has been read
    page.locator("#parse-button").click()
    expect(page.locator(NOTICE)).to_contain_text("concepts found", timeout=60_000)


def compute(page: Page, steps: int = 2, seed: int = 0) -> None:
    page.get_by_label("custom", exact=True).check()
    page.get_by_label("Custom steps").fill(str(steps))
    page.get_by_label("Seed").fill(str(seed))
    page.locator("#compute-button").click()
    expect(page.locator(NOTICE)).to_contain_text("Click on the image", timeout=SLOW)
    expect(page.locator("#gallery img").first).to_be_visible()


def click_editor(page: Page, fx: float, fy: float) -> tuple[int, int]:
    """Click at a fraction of the point editor's image; returns the point the page reports (image pixels)."""
    image = page.locator("#point-editor img").first
    expect(image).to_be_visible()
    box = image.bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    expect(page.locator(NOTICE)).to_contain_text("positive point at", timeout=30_000)
    found = re.search(r"positive point at \((\d+), (\d+)\)", notice(page))
    assert found, notice(page)
    return int(found.group(1)), int(found.group(2))


def segment(page: Page) -> float:
    """Press Segment; seconds until the page shows the new masks."""
    before = notice(page)
    started = time.perf_counter()
    page.locator("#segment-button").click()
    expect(page.locator(NOTICE)).not_to_have_text(before, timeout=60_000)
    seconds = time.perf_counter() - started
    assert "Segmented" in notice(page), notice(page)
    expect(page.locator("#annotated img").first).to_be_visible()
    return seconds


def download_link(page: Page) -> str | None:
    link = page.locator("#download a").first
    return link.get_attribute("href") if link.count() else None


def downloaded_result(page: Page, previous: str | None = None) -> dict:
    """result.json from the zip the page offers for download (waiting for a newer one than ``previous``)."""
    expect(page.locator("#download a").first).to_be_visible(timeout=60_000)
    deadline = time.monotonic() + 60
    while download_link(page) == previous and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    href = download_link(page)
    assert href and href != previous, "the download was not refreshed"
    response = page.request.get(href)
    assert response.ok
    with zipfile.ZipFile(io.BytesIO(response.body())) as archive:
        return json.loads(archive.read("result.json"))


def test_full_flow_with_a_click(browser, demo_server, tmp_path):
    page = open_page(browser, demo_server)
    pick_example_and_parse(page, COFFEE)
    expect(page.locator("#highlight")).to_contain_text("espresso")
    expect(page.locator("#concepts")).to_contain_text("silver spoon")
    compute(page, steps=2, seed=7)
    first = segment(page)
    before_edit = downloaded_result(page)
    assert before_edit["caption"] == COFFEE
    # The settings the attention was computed with (the tiny preset's defaults are 10 steps, seed 0).
    diffusion = before_edit["settings"]["diffusion"]
    assert diffusion["learning"]["steps"] == 2 and diffusion["seed"] == 7
    assert before_edit["settings"]["prompts"]["seed"] == 7

    first_download = download_link(page)
    x, y = click_editor(page, 0.20, 0.70)  # a point on the first concept ("red espresso cup")
    assert 0 <= x < 600 and 0 <= y < 400
    assert abs(x - 0.20 * 600) <= 3 and abs(y - 0.70 * 400) <= 3
    resegment = segment(page)
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

    result = downloaded_result(page, previous=first_download)
    assert result["caption"] == COFFEE
    assert {"x": x, "y": y, "label": 1, "source": "user"} in result["concepts"][0]["points"]
    timings = {"first_segment_s": first, "resegment_after_edit_s": resegment}
    (tmp_path / "timings.json").write_text(json.dumps(timings))
    print(
        f"\nbrowser: first Segment {first:.2f} s, re-segment after a point edit {resegment:.2f} s "
        f"(screenshot {tmp_path / 'demo.png'})"
    )


def test_sessions_do_not_see_each_other(browser, demo_server):
    cup_page = open_page(browser, demo_server)
    cat_page = open_page(browser, demo_server)
    pick_example_and_parse(cup_page, COFFEE)
    pick_example_and_parse(cat_page, CAT)
    compute(cup_page)
    # The cat session has computed nothing: its Segment is refused, it does not get the cup's results.
    cat_page.locator("#segment-button").click()
    expect(cat_page.locator(NOTICE)).to_contain_text("Compute attention first", timeout=30_000)
    compute(cat_page)
    segment(cup_page)
    segment(cat_page)
    assert downloaded_result(cup_page)["caption"] == COFFEE
    assert downloaded_result(cat_page)["caption"] == CAT
    expect(cup_page.locator("#concepts")).to_contain_text("silver spoon")
    expect(cat_page.locator("#concepts")).to_contain_text("pink nose")


# --- the offline product: world 2 on the parts model and the SAM trained there ---------------------------------


@pytest.fixture(scope="module")
def demo_on_parts():
    from demo.process import start_demo

    process, url, seconds = start_demo("--preset", "parts", "--device", "cpu")
    print(f"\ndemo on parts served {url} {seconds:.1f} s after launch")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_a_world_two_example_with_a_corrective_click_resegments_with_the_trained_sam(browser, demo_on_parts):
    rows = json.loads((Path(__file__).parent.parent / "assets" / "parts" / "examples.json").read_text())
    caption = rows[1]["caption"]  # "A snowman is to the left of a target. The target is ... a house with a blue door."
    page = open_page(browser, demo_on_parts)
    pick_example_and_parse(page, caption)
    compute(page, steps=2, seed=0)
    segment(page)
    first = downloaded_result(page)
    assert first["models"]["segmenter"] == "sam" and first["models"]["segmenter_model"] == "sam-shapes"
    previous = download_link(page)
    x, y = click_editor(page, 0.5, 0.5)  # a corrective point on the first concept
    seconds = segment(page)
    server_ms = float(re.search(r"in (\d+) ms", notice(page)).group(1))
    result = downloaded_result(page, previous=previous)
    assert {"x": x, "y": y, "label": 1, "source": "user"} in result["concepts"][0]["points"]
    print(f"\nbrowser (parts): re-segment after a click {seconds:.2f} s in the page, {server_ms:.0f} ms on the server")


# --- the demo on the paper's alternative backbone, weights from the (stand-in) Hugging Face cache -----------------


@pytest.fixture(scope="module")
def space_on_sd15(rehearsal, sd15_home):
    """The demo started as a Hugging Face Space starts it (``SPACE_ID`` set, ``spaces`` installed), on sd15 whose
    weights (stand-ins) are in the caches, offline."""
    from demo.process import start_demo
    from tests.conftest import REHEARSE

    env = {**rehearsal.env(sd15_home, offline=True), "SPACE_ID": "anyword/rehearsal"}
    process, url, seconds = start_demo("--preset", "sd15", "--device", "cpu", env=env, launcher=[*REHEARSE, "app"])
    print(f"\nSpace-like demo on sd15 served {url} {seconds:.1f} s after launch")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_the_demo_starts_on_sd15_and_walks_the_flow_on_it(browser, space_on_sd15, rehearsal):
    page = open_page(browser, space_on_sd15)
    status = page.locator("#status")
    expect(status).to_contain_text("Stable Diffusion 1.5")  # not the offline banner: it starts on sd15
    assert "cannot run here" not in status.inner_text()
    pick_example_and_parse(page, COFFEE)
    compute(page, steps=2, seed=3)
    segment(page)
    assert downloaded_result(page)["models"]["preset"] == "sd15"  # waits for the first export
    first_download = download_link(page)
    x, y = click_editor(page, 0.20, 0.70)
    segment(page)
    result = downloaded_result(page, previous=first_download)
    models = result["models"]
    assert models["preset"] == "sd15" and models["backbone_source"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert models["segmenter_model"] == "sam-vit_h" and not models["backbone_random_weights"]
    assert {"x": x, "y": y, "label": 1, "source": "user"} in [p for c in result["concepts"] for p in c["points"]]
