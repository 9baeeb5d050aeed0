"""The Gradio page: input -> parse -> attention -> point editing -> segmentation, all steps visible at once.

``layout.py`` places the components; this module wires each event to a handler from ``handlers.py`` and applies
the view it returns. Requests are built from the components named like their fields, so no input list is kept in
step with a handler's parameters by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from anyword.diffusion.speed import SpeedName
from anyword.errors import AnywordError
from anyword.parsing.llm_access import LLMAccess
from anyword.presets import DEFAULT_PRESET, OFFLINE_PRESET, get_preset
from demo import handlers as h
from demo.exports import DEFAULT_MAX_BYTES, ExportStore
from demo.layout import CSS, Page, build_page
from demo.models import ModelHub, demo_presets
from demo.requests import ComputeRequest, EditRequest, ParseRequest, PointSettings
from demo.state import Session

logger = logging.getLogger(__name__)

__all__ = ["CSS", "DemoConfig", "build_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """How the page is served. ``llm_base_url``: the operator's LLM endpoint (its key is ``OPENAI_API_KEY``);
    ``visitor_llm_urls``: visitors may type their own endpoint (with their own key); ``refuse_private_llm_urls``:
    such endpoints must resolve to public addresses (on for public servers); ``session_ttl_s``: an idle session's
    state and download are deleted after this long; ``speed``: a name of ``anyword.diffusion.speed.SPEEDS``
    (None: each preset's own); ``warm_up``: run one short analysis before serving (pays loading and the compile
    once)."""

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
    speed: SpeedName | None = None
    warm_up: bool = False
    export_max_bytes: int = DEFAULT_MAX_BYTES
    parse_concurrency: int = 8
    llm_concurrency: int = 2


def gpu_task(function: Callable, duration: Callable | int) -> Callable:
    """On Hugging Face Spaces (``spaces`` installed) reserve a GPU for the call; elsewhere, no change."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(duration=duration)(function)


def compute_duration(session, *values, **kwargs) -> int:
    """Seconds to reserve on a Spaces GPU for a compute request (the preset's estimate for its step budget);
    ``values`` are the compute event's inputs (and Gradio's progress tracker after them)."""
    try:
        request = ComputeRequest(*values[: len(dataclasses.fields(ComputeRequest))])
        preset = get_preset(request.preset)
        steps = preset.settings(request.overrides()).diffusion.learning.steps
    except (AnywordError, TypeError):
        return get_preset(DEFAULT_PRESET).gpu_reservation.seconds(0)  # the handler refuses the request itself
    return preset.gpu_reservation.seconds(steps)


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
        page = build_page(preset, status, hub.adapters, config.visitor_llm_urls)
        _wire(_Events(page, session), hub, llm, store, config)
    return demo


class _Events:
    """Turns handlers into Gradio events on one page: inputs from request fields, outputs from view parts."""

    def __init__(self, page: Page, session: gr.State):
        self.page, self.session = page, session

    def components(self, names) -> list:
        return [getattr(self.page, name) for name in names]

    def handler(self, handler: Callable, parts: tuple[str, ...]) -> tuple[Callable, list]:
        """The event function for ``handler(session, ...)`` and its outputs: the session and the page ``parts`` it
        may change (only those show a loading state while it runs). Bad input becomes a warning and a notice."""
        names = ("notice", *parts)

        @functools.wraps(handler)  # Gradio reads the signature to inject gr.SelectData and gr.Progress
        def run(session_value, *args, **kwargs):
            try:
                new_session, view = handler(session_value, *args, **kwargs)
            except AnywordError as error:
                return _refused(session_value, str(error), parts)
            except Exception as error:  # the page must keep serving; the log keeps the details
                logger.exception("handler %s failed", getattr(handler, "__name__", handler))
                message = f"Something went wrong ({type(error).__name__}); the server log has the details."
                return _refused(session_value, message, parts)
            return [new_session, *_updates(view, names)]

        return run, [self.session, *self.components(names)]

    def request(self, handler: Callable, request_type: type, parts: tuple[str, ...], progress=None):
        """Like :meth:`handler` for ``handler(session, request)``: the inputs are the components named like
        ``request_type``'s fields, in field order, and the event function's signature names them (the API shows
        them). ``progress(request)``, when given, is the first line of the progress bar Gradio shows (it then
        follows the pipeline's tqdm bars)."""
        fields = [field.name for field in dataclasses.fields(request_type)]

        def typed(session_value, *values):
            if progress is not None:  # Gradio passes its tracker last, where the signature puts it
                *values, tracker = values
                request = request_type(*values)
                tracker(0, desc=progress(request))
            else:
                request = request_type(*values)
            return handler(session_value, request)

        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        parameters = [inspect.Parameter(name, kind) for name in ("session", *fields)]
        if progress is not None:
            parameters.append(inspect.Parameter("progress", kind, default=gr.Progress(track_tqdm=True)))
        typed.__signature__ = inspect.Signature(parameters)
        typed.__name__ = getattr(handler, "__name__", "request")
        function, outputs = self.handler(typed, parts)
        return function, [self.session, *self.components(fields)], outputs


def _refused(session_value, message: str, parts: tuple[str, ...]) -> list:
    gr.Warning(message)
    return [session_value, f"**⚠ {message}**", *[gr.skip()] * len(parts)]


def _updates(view: dict, names: tuple[str, ...]) -> list:
    """The values for ``names`` from a handler's view (parts it does not name stay as they are)."""
    if view.get("warning"):
        gr.Warning(view["notice"])
    updates = {name: gr.skip() for name in names}
    for key, value in view.items():
        if key == "concept_choices":
            updates["edit_concept"] = gr.update(choices=value, value=None)
            updates["concept_choice"] = gr.update(choices=value, value=value[0][1] if value else None)
        elif key == "quality_choices" and "quality" in updates:
            updates["quality"] = gr.update(choices=value)
        elif key == "concept_choice" and "concept_choice" in updates:
            updates["concept_choice"] = gr.update(value=value)
        elif key in updates:
            updates[key] = value
    return [updates[name] for name in names]


CONCEPT_PARTS = ("highlight", "concepts", "edit_concept", "concept_choice")
MAP_PARTS = ("gallery", "editor", "concept_choice", "points_text")
POINT_PARTS = ("editor", "points_text")
PRESET_PARTS = ("quality", "steps", "threshold", "r1", "r2")  # the seed stays the user's


def _wire(events: _Events, hub: ModelHub, llm: LLMAccess, store: ExportStore, config: DemoConfig) -> None:
    page, session = events.page, events.session
    gpu = {"concurrency_id": "gpu", "concurrency_limit": config.gpu_concurrency}
    hidden = {"api_visibility": "private"}

    function, outputs = events.handler(h.set_image, ())
    page.image.change(function, [session, page.image], outputs, api_name="set_image")

    def on_parse(session_value, request: ParseRequest):
        return h.parse_caption(session_value, request, nlp=hub.nlp, llm=llm)

    function, inputs, outputs = events.request(on_parse, ParseRequest, CONCEPT_PARTS)
    # Parses have their own workers; LLM calls take at most llm_concurrency of them (see LLMAccess).
    page.parse_button.click(function, inputs, outputs, api_name="parse", concurrency_id="parse",
                            concurrency_limit=config.parse_concurrency)  # fmt: skip
    function, inputs, outputs = events.request(h.edit_concepts, EditRequest, CONCEPT_PARTS)
    page.edit_button.click(function, inputs, outputs, api_name="edit_concepts")

    def on_compute(session_value, request: ComputeRequest):
        return h.compute(hub, session_value, request)

    function, inputs, outputs = events.request(
        on_compute, ComputeRequest, MAP_PARTS, progress=lambda r: f"loading {r.preset} (first use only)…"
    )
    page.compute_button.click(gpu_task(function, compute_duration), inputs, outputs, api_name="compute", **gpu)

    function, outputs = events.handler(lambda s, preset: h.choose_preset(s, preset, config.device), PRESET_PARTS)
    page.preset.change(function, [session, page.preset], outputs, **hidden)

    def on_resample(session_value, request: PointSettings):
        return h.resample(hub, session_value, request)

    function, inputs, outputs = events.request(on_resample, PointSettings, MAP_PARTS)
    for control in (page.threshold, page.r1, page.r2):
        control.input(function, inputs, outputs, **hidden)  # a user's change (not the preset's defaults arriving)
    _wire_points(events, hub, store, gpu)


def _wire_points(events: _Events, hub: ModelHub, store: ExportStore, gpu: dict) -> None:
    page, session = events.page, events.session
    hidden = {"api_visibility": "private"}
    function, outputs = events.handler(h.choose_concept, POINT_PARTS)
    page.concept_choice.change(function, [session, page.concept_choice], outputs, show_progress="hidden", **hidden)

    def on_click(session_value, mode: str, evt: gr.SelectData):
        return h.select_point(session_value, mode, evt)

    function, outputs = events.handler(on_click, POINT_PARTS)
    page.editor.select(function, [session, page.mode], outputs, show_progress="hidden", **hidden)
    for button, handler, name in (
        (page.undo_button, h.undo, "undo"),
        (page.clear_button, h.clear, "clear"),
        (page.reset_button, h.reset, "reset"),
    ):
        function, outputs = events.handler(handler, POINT_PARTS)
        button.click(function, [session], outputs, api_name=name, show_progress="hidden")
    segment_function, segment_outputs = events.handler(lambda s: h.segment(hub, s), ("annotated",))

    def export_after_segment(session_value):
        if session_value.result is None:  # Segment was refused and its notice says why: leave that on screen
            return session_value, {}
        return h.export(session_value, store)

    export_function, export_outputs = events.handler(export_after_segment, ("download", "result_json"))
    page.segment_button.click(
        gpu_task(segment_function, 60), [session], segment_outputs, api_name="segment", **gpu
    ).then(export_function, [session], export_outputs, api_name="export", show_progress="hidden")


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
