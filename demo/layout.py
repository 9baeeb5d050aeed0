"""The page's layout: every component, in reading order, returned as a :class:`Page` (no events here; ``ui.py`` wires
them). Components that feed a request are named like the request's fields (:mod:`demo.requests`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from anyword import environment
from anyword.adapters import Adapter
from anyword.presets import get_preset
from demo import choices
from demo.handlers import HIGHLIGHT_COLOURS, preset_view
from demo.models import demo_presets

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CSS = """
#notice {min-height: 1.5em}
#status {font-size: 0.9em; opacity: 0.85}
.warning-banner {background: #fff4e5; border-left: 4px solid #f59e0b; padding: 0.5em 0.8em}
"""
INTRO = (
    "# Segment Anyword\nSegment every object a caption names: a frozen Stable Diffusion learns the caption's words for "
    "this image, its cross-attention becomes point prompts (R1: adjectives add positives, R2: other objects are "
    "negatives), and a promptable segmenter turns points into masks. "
    "[Paper (ICML 2025)](https://zhihualiuved.github.io/segment_anyword)"
)
EXAMPLE_GROUPS = {
    "photos": ("Photos (pretrained models)", 5),
    "shapes": ("Shape scenes (the shapes model)", 4),
    "parts": ("Objects with parts (the parts model)", 4),
}


class UploadedImage(gr.Image):
    """An image input that hands the handler the uploaded file as it is.

    ``gr.Image`` decodes every upload and, for anything but 8-bit RGB, converts it and writes the copy to a path
    named by its content: that skipped the library's size check (a 140 KB greyscale PNG of 144 MP was decoded
    before being refused), whitened 16-bit images, dropped palette transparency, and let parallel uploads of the
    same file read each other's half-written copy. Here the file goes straight to ``anyword.images.load_image``,
    the CLI's own loader, which checks the size from the header before decoding.
    """

    def get_block_name(self) -> str:
        return "image"  # the front end is gr.Image's

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.path is None:  # a pasted data: URL
            return super().preprocess(payload)
        return str(payload.path)


@dataclass
class Page:
    """Every component of the page. Inputs of a request carry the request's field names."""

    notice: gr.Markdown
    image: gr.Image
    caption: gr.Textbox
    parser: gr.Radio
    api_key: gr.Textbox
    llm_model: gr.Textbox
    base_url: gr.Textbox
    parse_button: gr.Button
    highlight: gr.HighlightedText
    concepts: gr.Dataframe
    action: gr.Radio
    edit_concept: gr.Dropdown
    edit_word: gr.Textbox
    edit_button: gr.Button
    preset: gr.Dropdown
    segmenter: gr.Dropdown
    adapter: gr.Dropdown
    quality: gr.Radio
    steps: gr.Number
    seed: gr.Number
    threshold: gr.Slider
    r1: gr.Checkbox
    r2: gr.Checkbox
    compute_button: gr.Button
    gallery: gr.Gallery
    editor: gr.Image
    concept_choice: gr.Radio
    mode: gr.Radio
    points_text: gr.Markdown
    undo_button: gr.Button
    clear_button: gr.Button
    reset_button: gr.Button
    segment_button: gr.Button
    annotated: gr.AnnotatedImage
    download: gr.File
    result_json: gr.JSON


def examples(group: str) -> list[list[str]]:
    """``[image path, caption]`` rows from ``assets/examples.json`` ("photos"), ``assets/shapes`` ("shapes") or
    ``assets/parts`` ("parts")."""
    folder = ASSETS if group == "photos" else ASSETS / group
    index = json.loads((folder / "examples.json").read_text())
    return [[str(folder / row["image"]), row["caption"]] for row in index]


def build_page(preset: str, status: str, adapters: dict[str, Adapter], visitor_llm_urls: bool) -> Page:
    """Lay the page out (inside a ``gr.Blocks`` context) starting on ``preset``, with the startup ``status`` line,
    the ``adapters`` the server offers (path -> adapter) and, if allowed, the visitor's LLM endpoint field."""
    gr.Markdown(INTRO)
    gr.Markdown(status, elem_id="status", elem_classes=["warning-banner"] if "offline" in status else [])
    parts = {"notice": gr.Markdown("", elem_id="notice")}
    gr.Markdown("### 1 · Image and caption")
    with gr.Row():
        with gr.Column():
            parts |= _input_column(preset, visitor_llm_urls)
        with gr.Column():
            parts |= _concept_column()
    gr.Markdown("### 2 · Attention")
    parts |= _attention_controls(preset, adapters)
    gr.Markdown("### 3 · Edit points (click on the map)")
    parts |= _point_editor()
    gr.Markdown("### 4 · Masks")
    with gr.Row():
        parts["annotated"] = gr.AnnotatedImage(label="One mask per phrase", elem_id="annotated")
        with gr.Column():
            parts["download"] = gr.File(label="Masks (PNG), result.json, COCO RLE", elem_id="download")
            with gr.Accordion("Result JSON", open=False):
                parts["result_json"] = gr.JSON(elem_id="result-json")
    return Page(**parts)


def _input_column(preset: str, visitor_llm_urls: bool) -> dict:
    image = UploadedImage(type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="input-image")
    caption = gr.Textbox(
        label="Caption",
        lines=3,
        elem_id="caption",
        placeholder="A brown tabby cat sleeps on a red sofa next to a blue pillow.",
    )
    parser = gr.Radio(choices.PARSERS, value=choices.SPACY, label="Parser")
    with gr.Accordion("LLM parser settings", open=False):
        key_hint = "set in OPENAI_API_KEY" if environment.read("OPENAI_API_KEY", environment.text, "") else "sk-..."
        api_key = gr.Textbox(
            type="password", label="API key (used for this request only, never stored)", placeholder=key_hint
        )
        llm_model = gr.Textbox(value="gpt-4o", label="Model")
        base_url = gr.Textbox(
            label="Base URL of an OpenAI-compatible server (empty: this server's; yours needs your key)",
            visible=visitor_llm_urls,
        )
    parse_button = gr.Button("Parse", variant="primary", elem_id="parse-button")
    first = get_preset(preset).examples  # the examples that suit the starting model come first
    for group in sorted(EXAMPLE_GROUPS, key=lambda name: name != first):
        label, per_page = EXAMPLE_GROUPS[group]
        gr.Examples(examples(group), inputs=[image, caption], label=label, examples_per_page=per_page)
    return {"image": image, "caption": caption, "parser": parser, "api_key": api_key, "llm_model": llm_model,
            "base_url": base_url, "parse_button": parse_button}  # fmt: skip


def _concept_column() -> dict:
    highlight = gr.HighlightedText(
        label="Caption: nouns and their adjectives",
        combine_adjacent=False,
        color_map=HIGHLIGHT_COLOURS,
        elem_id="highlight",
    )
    concepts = gr.Dataframe(
        headers=["id", "phrase", "noun", "adjectives", "kind", "mentions"],
        interactive=False,
        label="Concepts",
        elem_id="concepts",
    )
    with gr.Accordion("Edit concepts", open=False):
        action = gr.Radio(choices.ACTIONS, value=choices.DROP, label="Action")
        edit_concept = gr.Dropdown(choices=[], label="Concept")
        edit_word = gr.Textbox(label="Word of the caption (for add / bind / unbind)")
        edit_button = gr.Button("Apply")
    return {"highlight": highlight, "concepts": concepts, "action": action, "edit_concept": edit_concept,
            "edit_word": edit_word, "edit_button": edit_button}  # fmt: skip


def _attention_controls(preset: str, adapters: dict[str, Adapter]) -> dict:
    defaults = preset_view(preset)  # the page starts with the preset's own settings, as a preset change does
    with gr.Row():
        preset_choice = gr.Dropdown(
            [(get_preset(name).description, name) for name in demo_presets()],
            value=preset,
            label="Model",
            elem_id="preset",
        )
        segmenter = gr.Dropdown(
            choices.SEGMENTER_CHOICES, value=choices.PRESET_DEFAULT, label="Segmenter", elem_id="segmenter"
        )
        adapter = gr.Dropdown(
            [("none (fast mode: the model's shipped adapter)", choices.NO_ADAPTER)]
            + [(f"{a.ident} (for {a.info.base})", path) for path, a in adapters.items()],
            value=choices.NO_ADAPTER,
            label="Text-encoder adapter",
            elem_id="adapter",
        )
        quality = gr.Radio(defaults["quality_choices"], value=choices.PRESET_DEFAULT, label="Prompt learning")
        steps = gr.Number(value=defaults["steps"], minimum=0, maximum=5000, label="Custom steps")
        seed = gr.Number(value=defaults["seed"], label="Seed")
    with gr.Row():
        threshold = gr.Slider(
            0.05, 0.95, value=defaults["threshold"], step=0.05, label="Threshold (region of each map)"
        )
        r1 = gr.Checkbox(value=defaults["r1"], label="R1: adjectives add positive points")
        r2 = gr.Checkbox(value=defaults["r2"], label="R2: other concepts' points are negatives")
        compute_button = gr.Button("Compute attention", variant="primary", elem_id="compute-button")
    gallery = gr.Gallery(
        label="Averaged cross-attention per concept and adjective (points: green +, red −)",
        columns=4,
        height="auto",
        elem_id="gallery",
    )
    return {"preset": preset_choice, "segmenter": segmenter, "adapter": adapter, "quality": quality, "steps": steps,
            "seed": seed, "threshold": threshold, "r1": r1, "r2": r2, "compute_button": compute_button,
            "gallery": gallery}  # fmt: skip


def _point_editor() -> dict:
    with gr.Row():
        with gr.Column(scale=2):
            editor = gr.Image(
                type="numpy",
                interactive=False,
                label="Selected concept: click to add a point",
                elem_id="point-editor",
                buttons=[],
            )
        with gr.Column(scale=1):
            concept_choice = gr.Radio([], label="Concept", elem_id="concept-choice")
            mode = gr.Radio(choices.MODES, value=choices.POSITIVE, label="A click adds", elem_id="click-mode")
            points_text = gr.Markdown(elem_id="points-text")
            with gr.Row():
                undo_button = gr.Button("Undo")
                clear_button = gr.Button("Clear")
                reset_button = gr.Button("Reset")
            segment_button = gr.Button("Segment", variant="primary", elem_id="segment-button")
    return {"editor": editor, "concept_choice": concept_choice, "mode": mode, "points_text": points_text,
            "undo_button": undo_button, "clear_button": clear_button, "reset_button": reset_button,
            "segment_button": segment_button}  # fmt: skip
