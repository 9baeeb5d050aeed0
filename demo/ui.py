"""The Gradio page: input -> parse -> attention -> point editing -> segmentation, all steps visible at once.

Only layout and wiring live here; each event calls a handler from ``handlers.py`` and applies its view.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from anyword.errors import AnywordError
from anyword.parsing.llm_access import LLMAccess
from anyword.presets import DEFAULT_PRESET, OFFLINE_PRESET, get_preset
from anyword.segment import SEGMENTERS
from demo import handlers as h
from demo.exports import DEFAULT_MAX_BYTES, ExportStore
from demo.models import ModelHub, demo_presets
from demo.state import Session

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CSS = """
#notice {min-height: 1.5em}
#status {font-size: 0.9em; opacity: 0.85}
.warning-banner {background: #fff4e5; border-left: 4px solid #f59e0b; padding: 0.5em 0.8em}
"""


@dataclass(frozen=True)
class DemoConfig:
    """How the page is served. ``llm_base_url``: the operator's LLM endpoint (its key is ``OPENAI_API_KEY``);
    ``visitor_llm_urls``: visitors may type their own endpoint (with their own key); ``refuse_private_llm_urls``:
    such endpoints must resolve to public addresses (on for public servers); ``session_ttl_s``: an idle session's
    state and download are deleted after this long; ``speed``: "eager" or "fast" (compiled prompt learning);
    ``warm_up``: run one short analysis before serving (pays loading and the compile once)."""

    preset: str = DEFAULT_PRESET
    device: str | None = None
    dtype: str | None = None
    segmenter_model: str | None = None
    gpu_concurrency: int = 1
    check_availability: bool = True
    llm_base_url: str | None = None
    visitor_llm_urls: bool = False
    refuse_private_llm_urls: bool = True
    session_ttl_s: float = 3600.0
    speed: str = "eager"
    warm_up: bool = False
    export_max_bytes: int = DEFAULT_MAX_BYTES
    parse_concurrency: int = 8
    llm_concurrency: int = 2


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


def examples(group: str) -> list[list[str]]:
    """``[image path, caption]`` rows from ``assets/examples.json`` ("photos") or ``assets/shapes`` ("shapes")."""
    if group == "shapes":
        index = json.loads((ASSETS / "shapes" / "examples.json").read_text())
        return [[str(ASSETS / "shapes" / row["image"]), row["caption"]] for row in index]
    index = json.loads((ASSETS / "examples.json").read_text())
    return [[str(ASSETS / row["image"]), row["caption"]] for row in index]


def gpu_task(function: Callable, duration: Callable | int) -> Callable:
    """On Hugging Face Spaces (``spaces`` installed) reserve a GPU for the call; elsewhere, no change."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(duration=duration)(function)


def compute_duration(session, preset, segmenter, adapter, quality, steps, *args, **kwargs) -> int:
    """Seconds to reserve on a Spaces GPU: load + inversion + prompt learning at ~0.25 s per step on an A10G."""
    try:
        planned = get_preset(preset).settings(h.page_overrides(quality, steps, 0)).diffusion.learning.steps
    except AnywordError:
        planned = 0  # the handler refuses the request itself
    return int(min(1500, 60 + 0.25 * planned))


def build_demo(config: DemoConfig = DemoConfig(), hub: ModelHub | None = None) -> gr.Blocks:
    hub = hub or ModelHub(
        device=config.device, dtype=config.dtype, segmenter_model=config.segmenter_model, speed=config.speed
    )
    preset, status = _startup_preset(config)
    if config.warm_up:
        logger.info("warm-up on %s: %.1f s", preset, hub.warm_up(preset))
    llm = LLMAccess(
        config.llm_base_url,
        visitor_urls=config.visitor_llm_urls,
        refuse_private=config.refuse_private_llm_urls,
        max_concurrent=config.llm_concurrency,
    )
    store = ExportStore(Path(gradio_cache_folder()) / "anyword-exports", max_bytes=config.export_max_bytes)

    def end_session(value) -> None:
        store.release(getattr(value, "export_owner", None))

    # Gradio's own cache (uploads, pictures sent to the page) is swept of files older than the session TTL.
    sweep = max(60, int(config.session_ttl_s))
    with gr.Blocks(title="Segment Anyword", delete_cache=(sweep, sweep)) as demo:
        session = gr.State(Session(preset=preset), time_to_live=config.session_ttl_s, delete_callback=end_session)
        gr.Markdown(
            "# Segment Anyword\nSegment every object a caption names: a frozen Stable Diffusion learns the caption's "
            "words for this image, its cross-attention becomes point prompts (R1: adjectives add positives, R2: other "
            "objects are negatives), and a promptable segmenter turns points into masks. "
            "[Paper (ICML 2025)](https://zhihualiuved.github.io/segment_anyword)"
        )
        gr.Markdown(status, elem_id="status", elem_classes=["warning-banner"] if "offline" in status else [])
        notice = gr.Markdown("", elem_id="notice")

        gr.Markdown("### 1 · Image and caption")
        with gr.Row():
            with gr.Column():
                image = UploadedImage(
                    type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="input-image"
                )
                caption = gr.Textbox(
                    label="Caption",
                    lines=3,
                    elem_id="caption",
                    placeholder="A brown tabby cat sleeps on a red sofa next to a blue pillow.",
                )
                parser_choice = gr.Radio([h.PARSER_SPACY, h.PARSER_LLM], value=h.PARSER_SPACY, label="Parser")
                with gr.Accordion("LLM parser settings", open=False):
                    key_hint = "set in OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else "sk-..."
                    api_key = gr.Textbox(
                        type="password",
                        label="API key (used for this request only, never stored)",
                        placeholder=key_hint,
                    )
                    llm_model = gr.Textbox(value="gpt-4o", label="Model")
                    base_url = gr.Textbox(
                        label="Base URL of an OpenAI-compatible server (empty: this server's; yours needs your key)",
                        visible=config.visitor_llm_urls,
                    )
                parse_button = gr.Button("Parse", variant="primary", elem_id="parse-button")
                groups = {
                    "photos": ("Photos (pretrained models)", 5),
                    "shapes": ("Shape scenes (the shapes model)", 4),
                }
                first = get_preset(preset).examples  # the examples that suit the starting model come first
                for group in sorted(groups, key=lambda name: name != first):
                    label, per_page = groups[group]
                    gr.Examples(examples(group), inputs=[image, caption], label=label, examples_per_page=per_page)
            with gr.Column():
                highlight = gr.HighlightedText(
                    label="Caption: nouns and their adjectives",
                    combine_adjacent=False,
                    color_map=h.HIGHLIGHT_COLOURS,
                    elem_id="highlight",
                )
                concepts = gr.Dataframe(
                    headers=["id", "phrase", "noun", "adjectives", "kind", "mentions"],
                    interactive=False,
                    label="Concepts",
                    elem_id="concepts",
                )
                with gr.Accordion("Edit concepts", open=False):
                    action = gr.Radio(list(h.ACTIONS), value=h.ACTION_DROP, label="Action")
                    edit_concept = gr.Dropdown(choices=[], label="Concept")
                    edit_word = gr.Textbox(label="Word of the caption (for add / bind / unbind)")
                    edit_button = gr.Button("Apply")

        gr.Markdown("### 2 · Attention")
        with gr.Row():
            preset_choice = gr.Dropdown(
                [(get_preset(name).description, name) for name in demo_presets()],
                value=preset,
                label="Model",
                elem_id="preset",
            )
            segmenter_choice = gr.Dropdown(
                [h.SEGMENTER_PRESET, *SEGMENTERS],
                value=h.SEGMENTER_PRESET,
                label="Segmenter",
                elem_id="segmenter",
            )
            adapter_choice = gr.Dropdown(
                [("none (fast mode: the model's shipped adapter)", h.ADAPTER_NONE)]
                + [(f"{a.ident} (for {a.info.base})", path) for path, a in hub.adapters.items()],
                value=h.ADAPTER_NONE,
                label="Text-encoder adapter",
                elem_id="adapter",
            )
            quality = gr.Radio(list(h.QUALITIES), value=h.QUALITY_PRESET, label="Prompt learning")
            steps = gr.Number(value=50, precision=0, minimum=0, maximum=5000, label="Custom steps")
            seed = gr.Number(value=0, precision=0, label="Seed")
        with gr.Row():
            threshold = gr.Slider(0.05, 0.95, value=0.7, step=0.05, label="Threshold (region of each map)")
            r1 = gr.Checkbox(value=True, label="R1: adjectives add positive points")
            r2 = gr.Checkbox(value=True, label="R2: other concepts' points are negatives")
            compute_button = gr.Button("Compute attention", variant="primary", elem_id="compute-button")
        gallery = gr.Gallery(
            label="Averaged cross-attention per concept and adjective (points: green +, red −)",
            columns=4,
            height="auto",
            elem_id="gallery",
        )

        gr.Markdown("### 3 · Edit points (click on the map)")
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
                mode = gr.Radio(
                    [h.MODE_POSITIVE, h.MODE_NEGATIVE],
                    value=h.MODE_POSITIVE,
                    label="A click adds",
                    elem_id="click-mode",
                )
                points_text = gr.Markdown(elem_id="points-text")
                with gr.Row():
                    undo_button = gr.Button("Undo")
                    clear_button = gr.Button("Clear")
                    reset_button = gr.Button("Reset")
                segment_button = gr.Button("Segment", variant="primary", elem_id="segment-button")

        gr.Markdown("### 4 · Masks")
        with gr.Row():
            annotated = gr.AnnotatedImage(label="One mask per phrase", elem_id="annotated")
            with gr.Column():
                download = gr.File(label="Masks (PNG), result.json, COCO RLE", elem_id="download")
                with gr.Accordion("Result JSON", open=False):
                    result_json = gr.JSON(elem_id="result-json")

        components = {
            "notice": notice,
            "highlight": highlight,
            "concepts": concepts,
            "edit_concept": edit_concept,
            "gallery": gallery,
            "editor": editor,
            "concept_choice": concept_choice,
            "points_text": points_text,
            "annotated": annotated,
            "download": download,
            "result_json": result_json,
        }

        def event(handler: Callable, parts: tuple[str, ...]) -> tuple[Callable, list]:
            """The event function for ``handler`` and its outputs: the session and the page ``parts`` it may change
            (only those show a loading state while it runs). Bad input becomes a warning and a notice line."""
            names = ("notice", *parts)

            def apply(session_value, view: dict) -> list:
                if view.get("warning"):
                    gr.Warning(view["notice"])
                updates = {name: gr.skip() for name in names}
                for key, value in view.items():
                    if key == "concept_choices":
                        updates["edit_concept"] = gr.update(choices=value, value=None)
                        updates["concept_choice"] = gr.update(choices=value, value=value[0] if value else None)
                    elif key == "concept_choice" and "concept_choice" in updates:
                        updates["concept_choice"] = gr.update(value=value)
                    elif key in updates:
                        updates[key] = value
                return [session_value, *(updates[name] for name in names)]

            def refused(session_value, message: str) -> list:
                gr.Warning(message)
                return [session_value, f"**⚠ {message}**", *[gr.skip()] * len(parts)]

            # wraps: Gradio reads the handler's signature to inject gr.SelectData and gr.Progress.
            @functools.wraps(handler)
            def run(session_value, *args):
                try:
                    new_session, view = handler(session_value, *args)
                except AnywordError as error:
                    return refused(session_value, str(error))
                except Exception as error:  # the page must keep serving; the log keeps the details
                    logger.exception("handler %s failed", getattr(handler, "__name__", handler))
                    return refused(
                        session_value, f"Something went wrong ({type(error).__name__}); the server log has the details."
                    )
                return apply(new_session, view)

            return run, [session, *(components[name] for name in names)]

        def on_parse(session_value, text, parser, key, model, url):
            return h.parse_caption(session_value, text, parser, key, model, url, nlp=hub.nlp, llm=llm)

        def on_export(session_value):
            return h.export(session_value, store)

        def on_compute(session_value, preset_key, *page_values, progress=gr.Progress(track_tqdm=True)):
            """``page_values``: segmenter, adapter, quality, steps, seed, threshold, R1, R2 (``handlers.compute``)."""
            progress(0, desc=f"loading {preset_key} (first use only)…")
            return h.compute(hub, session_value, preset_key, *page_values)

        def on_click(session_value, mode_value, evt: gr.SelectData):
            return h.select_point(session_value, mode_value, evt)

        def on_resample(session_value, threshold_value, r1_on, r2_on, seed_value):
            return h.resample(hub, session_value, threshold_value, r1_on, r2_on, seed_value)

        def on_segment(session_value):
            return h.segment(hub, session_value)

        def on_preset(session_value, preset_key):
            return h.choose_preset(session_value, preset_key, config.device)

        gpu = {"concurrency_id": "gpu", "concurrency_limit": config.gpu_concurrency}
        hidden = {"api_visibility": "private"}
        concept_parts = ("highlight", "concepts", "edit_concept", "concept_choice")
        map_parts = ("gallery", "editor", "concept_choice", "points_text")
        point_parts = ("editor", "points_text")

        function, outputs = event(h.set_image, ())
        image.change(function, [session, image], outputs, api_name="set_image")
        function, outputs = event(on_parse, concept_parts)
        # Parses have their own workers; LLM calls take at most llm_concurrency of them (see LLMAccess).
        parse_button.click(
            function,
            [session, caption, parser_choice, api_key, llm_model, base_url],
            outputs,
            api_name="parse",
            concurrency_id="parse",
            concurrency_limit=config.parse_concurrency,
        )
        function, outputs = event(h.edit_concepts, concept_parts)
        edit_button.click(function, [session, action, edit_concept, edit_word], outputs, api_name="edit_concepts")
        function, outputs = event(gpu_task(on_compute, compute_duration), map_parts)
        compute_button.click(
            function,
            [session, preset_choice, segmenter_choice, adapter_choice, quality, steps, seed, threshold, r1, r2],
            outputs,
            api_name="compute",
            **gpu,
        )
        function, outputs = event(on_preset, ())
        preset_choice.change(function, [session, preset_choice], outputs, **hidden)
        function, outputs = event(on_resample, map_parts)
        for control in (threshold, r1, r2):
            control.change(function, [session, threshold, r1, r2, seed], outputs, **hidden)
        function, outputs = event(h.choose_concept, point_parts)
        concept_choice.change(function, [session, concept_choice], outputs, show_progress="hidden", **hidden)
        function, outputs = event(on_click, point_parts)
        editor.select(function, [session, mode], outputs, show_progress="hidden", **hidden)
        for button, handler, name in (
            (undo_button, h.undo, "undo"),
            (clear_button, h.clear, "clear"),
            (reset_button, h.reset, "reset"),
        ):
            function, outputs = event(handler, point_parts)
            button.click(function, [session], outputs, api_name=name, show_progress="hidden")
        segment_function, segment_outputs = event(gpu_task(on_segment, 60), ("annotated",))
        export_function, export_outputs = event(on_export, ("download", "result_json"))
        segment_button.click(segment_function, [session], segment_outputs, api_name="segment", **gpu).then(
            export_function, [session], export_outputs, api_name="export", show_progress="hidden"
        )
    return demo


def gradio_cache_folder() -> str:
    """The folder Gradio serves files from without copying them (``GRADIO_TEMP_DIR``, else the system's)."""
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def _startup_preset(config: DemoConfig) -> tuple[str, str]:
    """The preset the page starts with, and a status line saying which and why (and what a CPU run costs)."""
    if config.preset not in demo_presets():
        raise AnywordError(f"unknown preset {config.preset!r}: choose one of {', '.join(demo_presets())}")
    if config.check_availability:
        availability = get_preset(config.preset).availability()
        if not availability.ready:
            return OFFLINE_PRESET, (
                f"**{get_preset(config.preset).description} cannot run here (offline):** {availability.reason}  \n"
                f"The page starts on **{get_preset(OFFLINE_PRESET).description}**; its shape-scene examples come "
                f"first. **tiny** (random weights) stays selectable to try the flow on photos."
            )
    return config.preset, h.preset_notice(config.preset, config.device) + " It loads on first use."
