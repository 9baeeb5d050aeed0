"""Demo handlers: plain functions from (session, inputs) to (session, view), testable without a browser.

A *view* is a dict naming the page parts to update (``highlight``, ``concepts``, ``gallery``, ``editor``, ...);
parts not named stay as they are. Bad input raises :class:`~anyword.errors.AnywordError` with a message for the
user; the UI layer shows it as a warning and the app keeps serving. All method logic is in ``anyword``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import cv2
import numpy as np

from anyword import viz
from anyword.errors import AnywordError
from anyword.export import heatmap_items, zip_outputs
from anyword.images import image_digest, load_image
from anyword.parsing import OBJECT, ParseResult, SpacyParser
from anyword.parsing.llm_access import LLMAccess
from anyword.pipeline import PipelineSettings, SegmentationResult
from anyword.prompts import NEGATIVE, POSITIVE, PromptSettings
from anyword.seeds import check_seed
from demo.exports import ExportStore
from demo.state import Session

PARSER_SPACY = "spaCy (offline)"
PARSER_LLM = "GPT-4o / OpenAI-compatible LLM"
QUALITY_PRESET = "preset default"
QUALITY_PAPER = "paper (1100 steps)"
QUALITY_FAST = "fast (50 steps)"
QUALITY_CUSTOM = "custom"
QUALITIES = (QUALITY_PRESET, QUALITY_PAPER, QUALITY_FAST, QUALITY_CUSTOM)
ACTION_DROP = "drop concept"
ACTION_ADD = "add word as concept"
ACTION_BIND = "bind adjective"
ACTION_UNBIND = "unbind adjective"
ACTIONS = (ACTION_DROP, ACTION_ADD, ACTION_BIND, ACTION_UNBIND)
MODE_POSITIVE = "positive (+)"
MODE_NEGATIVE = "negative (−)"
HIGHLIGHT_COLOURS = {"noun": "#3b82f6", "adjective": "#f59e0b", "predicate": "#a855f7"}
THUMBNAIL_SIDE = 320


def concept_label(concept) -> str:
    return f"{concept.id}: {concept.phrase}"


def concept_id_from(label: str | None) -> int | None:
    if not label:
        return None
    try:
        return int(str(label).split(":", 1)[0])
    except ValueError:
        return None


# --- input ---------------------------------------------------------------------------------------------------


def set_image(session: Session, path: str | None) -> tuple[Session, dict]:
    """A new upload (or example): read it upright as RGB, or refuse it with the reason."""
    session = dataclasses.replace(session)
    if not path:
        session.image = None
        session.forget_from_image()
        return session, {"notice": ""}
    image = load_image(path)
    session.image = image
    session.image_name = Path(path).name
    digest = image_digest(image)
    if digest != session.digest:
        session.forget_from_image()
        session.digest = digest
    height, width = image.shape[:2]
    return session, {"notice": f"Image {width}x{height} ready. Parse the caption next."}


def parse_caption(
    session: Session,
    caption: str,
    parser_choice: str,
    api_key: str = "",
    llm_model: str = "",
    base_url: str = "",
    nlp=None,
    llm: LLMAccess | None = None,
) -> tuple[Session, dict]:
    """Caption -> concepts with the chosen parser. ``llm`` decides which endpoint and key the LLM parser may use
    (the visitor's key serves this call only and is never kept or shown)."""
    if not caption or not caption.strip():
        raise AnywordError("Type a caption first: describe the objects to segment, e.g. 'a brown dog on a red sofa'.")
    spacy_parser = SpacyParser(nlp=nlp)
    if parser_choice == PARSER_LLM:
        result, problem = (llm or LLMAccess()).parse(caption, spacy_parser, base_url, api_key, llm_model)
    else:
        result, problem = spacy_parser.parse(caption), None
    session = dataclasses.replace(session)
    session.forget_from_parse()
    session.parse = result
    notice = f"{len(result.concepts)} concepts found by {result.parser}."
    if problem:
        notice = f"{problem} {notice}"
    return session, {**parse_view(result), "notice": notice, "warning": bool(problem)}


def parse_view(result: ParseResult) -> dict:
    return {
        "highlight": highlight(result),
        "concepts": concept_rows(result),
        "concept_choices": [concept_label(c) for c in result.concepts],
    }


def highlight(result: ParseResult) -> list[tuple[str, str | None]]:
    """The caption as ``(text, label)`` segments: nouns, their adjectives and predicates highlighted."""
    marks: list[tuple[int, int, str]] = []
    for concept in result.concepts:
        role = "noun" if concept.kind == OBJECT else "predicate"
        marks += [(m.noun[0], m.noun[1], role) for m in concept.mentions]
        marks += [(s, e, "adjective") for spans in concept.adjective_spans().values() for s, e in spans]
    marks.sort()
    segments, cursor = [], 0
    for start, end, label in marks:
        if start < cursor:
            continue
        if start > cursor:
            segments.append((result.caption[cursor:start], None))
        segments.append((result.caption[start:end], label))
        cursor = end
    if cursor < len(result.caption):
        segments.append((result.caption[cursor:], None))
    return segments


def concept_rows(result: ParseResult) -> list[list]:
    return [[c.id, c.phrase, c.noun, ", ".join(c.adjectives) or "—", c.kind, len(c.mentions)] for c in result.concepts]


def edit_concepts(session: Session, action: str, concept: str | None, word: str) -> tuple[Session, dict]:
    """Correct the parse: drop a concept, add a caption word as a concept, bind or unbind an adjective."""
    if session.parse is None:
        raise AnywordError("Parse the caption first.")
    parse = session.parse
    concept_id = concept_id_from(concept)
    word = (word or "").strip()
    if action in (ACTION_DROP, ACTION_BIND, ACTION_UNBIND) and concept_id is None:
        raise AnywordError("Pick a concept to edit.")
    if action in (ACTION_ADD, ACTION_BIND, ACTION_UNBIND) and not word:
        raise AnywordError("Type the word of the caption to use.")
    if action == ACTION_DROP:
        parse = parse.drop_concept(concept_id)
    elif action == ACTION_UNBIND:
        parse = parse.unbind_adjective(concept_id, word)
    else:
        span = _word_span(parse.caption, word)
        parse = parse.add_word_as_concept(span) if action == ACTION_ADD else parse.bind_adjective(concept_id, span)
    session = dataclasses.replace(session)
    session.forget_from_parse()
    session.parse = parse
    return session, {**parse_view(parse), "notice": f"Concepts updated ({action}). Compute attention again."}


def _word_span(caption: str, word: str) -> tuple[int, int]:
    from anyword.parsing import find_word

    spans = find_word(caption, word)
    if not spans:
        raise AnywordError(f"'{word}' is not a word of the caption.")
    return spans[0]


# --- attention -----------------------------------------------------------------------------------------------


def run_settings(
    pipeline, quality: str, steps: float | None, seed: float | None, threshold: float, r1: bool, r2: bool
) -> PipelineSettings:
    """The preset's settings with the page's choices."""
    settings = pipeline.settings
    learning = settings.diffusion.learning
    if quality == QUALITY_PAPER:
        learning = dataclasses.replace(learning, steps=1100)
    elif quality == QUALITY_FAST:
        learning = dataclasses.replace(learning, steps=50)
    elif quality == QUALITY_CUSTOM:
        if steps is None or steps < 0 or steps > 5000:
            raise AnywordError("Custom steps must be between 0 and 5000.")
        learning = dataclasses.replace(learning, steps=int(steps))
    settings = dataclasses.replace(
        settings,
        diffusion=dataclasses.replace(settings.diffusion, learning=learning),
        prompts=dataclasses.replace(settings.prompts, threshold=float(threshold), r1=bool(r1), r2=bool(r2)),
    )
    return settings.with_seed(check_seed(0 if seed is None else seed))


def learning_steps(pipeline, quality: str, steps: float | None) -> int:
    """Prompt-learning steps a compute request implies (sizes the GPU reservation on Spaces)."""
    return {QUALITY_PAPER: 1100, QUALITY_FAST: 50}.get(
        quality, int(steps or 0) if quality == QUALITY_CUSTOM else pipeline.settings.diffusion.learning.steps
    )


def compute(
    hub,
    session: Session,
    preset: str,
    quality: str,
    steps: float | None,
    seed: float | None,
    threshold: float,
    r1: bool,
    r2: bool,
) -> tuple[Session, dict]:
    """Inversion, prompt learning and averaged attention (the slow step), then sampled points."""
    if session.image is None:
        raise AnywordError("Upload an image (or pick an example) first.")
    if session.parse is None:
        raise AnywordError("Parse the caption first.")
    pipeline = hub.pipeline(preset)
    settings = run_settings(pipeline, quality, steps, seed, threshold, r1, r2)
    started = time.perf_counter()
    attention, cached = pipeline.attend(session.image, session.parse, settings.diffusion, session.digest)
    seconds = time.perf_counter() - started
    session = dataclasses.replace(session, preset=preset, attention=attention, result=None)
    session.concept_id = session.parse.concepts[0].id
    session = _resample(pipeline, session, settings.prompts)
    weights = "RANDOM WEIGHTS: maps and masks mean nothing. " if pipeline.random_weights else ""
    notice = (
        f"{weights}Attention {'reused' if cached else 'computed'} in {seconds:.1f} s "
        f"({settings.diffusion.learning.steps} prompt-learning steps, reconstruction MSE "
        f"{attention.reconstruction_mse:.2g}). Click on the image to edit points, then Segment."
    )
    return session, {**points_view(session), "gallery": gallery(session), "notice": notice}


def _resample(pipeline, session: Session, prompt_settings: PromptSettings) -> Session:
    prompts = pipeline.sample_prompts(session.attention, session.parse, prompt_settings)
    return dataclasses.replace(session, sampled=prompts, prompts=prompts, history=[])


def resample(hub, session: Session, threshold: float, r1: bool, r2: bool, seed: float | None) -> tuple[Session, dict]:
    """New threshold / R1 / R2: re-sample points from the maps already computed (no diffusion work)."""
    if session.attention is None:
        return session, {}
    pipeline = hub.pipeline(session.preset)
    settings = dataclasses.replace(
        pipeline.settings.prompts,
        threshold=float(threshold),
        r1=bool(r1),
        r2=bool(r2),
        seed=check_seed(0 if seed is None else seed),
    )
    session = _resample(pipeline, session, settings)
    return session, {
        **points_view(session),
        "gallery": gallery(session),
        "notice": f"Points re-sampled (threshold {threshold:.2f}, R1 {'on' if r1 else 'off'}, "
        f"R2 {'on' if r2 else 'off'}).",
    }


def gallery(session: Session) -> list[tuple[np.ndarray, str]]:
    """One panel per concept and per bound adjective: heatmap over the image, with the points."""
    result = _partial_result(session)
    return [(_thumbnail(picture), title) for title, picture in heatmap_items(result, session.image, adjectives=True)]


def _thumbnail(picture: np.ndarray) -> np.ndarray:
    scale = min(1.0, THUMBNAIL_SIDE / max(picture.shape[:2]))
    if scale == 1.0:
        return picture
    size = (round(picture.shape[1] * scale), round(picture.shape[0] * scale))
    return cv2.resize(picture, size, interpolation=cv2.INTER_AREA)


# --- point editing -------------------------------------------------------------------------------------------


def points_view(session: Session) -> dict:
    """The point editor: the selected concept's heatmap with its points, at display size."""
    if session.attention is None or session.concept_id is None:
        return {"editor": None}
    heatmap = session.attention.maps.concept_map(session.concept_id)
    picture = viz.draw_points(
        viz.heatmap_overlay(session.image, heatmap), session.prompts.for_concept(session.concept_id)
    )
    scale = session.display_scale
    if scale < 1.0:
        size = (round(session.image.shape[1] * scale), round(session.image.shape[0] * scale))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    concept = session.parse.concept(session.concept_id)
    points = session.prompts.for_concept(session.concept_id)
    return {
        "editor": picture,
        "concept_choice": concept_label(concept),
        "points_text": f"'{concept.phrase}': {sum(p.label == POSITIVE for p in points)} positive, "
        f"{sum(p.label == NEGATIVE for p in points)} negative points",
    }


def choose_concept(session: Session, label: str | None) -> tuple[Session, dict]:
    concept_id = concept_id_from(label)
    if session.attention is None or concept_id is None:
        return session, {}
    session = dataclasses.replace(session, concept_id=concept_id)
    return session, points_view(session)


def click(session: Session, x: float, y: float, mode: str) -> tuple[Session, dict]:
    """A click at ``(x, y)`` in the editor's pixels adds a point to the selected concept."""
    if session.attention is None or session.prompts is None:
        raise AnywordError("Compute attention first: points are edited on the concept's attention map.")
    scale = session.display_scale
    height, width = session.image.shape[:2]
    image_x = min(width - 1.0, max(0.0, round(x / scale)))
    image_y = min(height - 1.0, max(0.0, round(y / scale)))
    label = NEGATIVE if mode == MODE_NEGATIVE else POSITIVE
    prompts = session.prompts.add_point(session.concept_id, image_x, image_y, label)
    session = dataclasses.replace(session, prompts=prompts, history=[*session.history, session.prompts])
    kind = "negative" if label == NEGATIVE else "positive"
    return session, {**points_view(session), "notice": f"Added a {kind} point at ({image_x:g}, {image_y:g})."}


def select_point(session: Session, mode: str, event) -> tuple[Session, dict]:
    """The editor's ``select`` event: ``event.index`` is ``[x, y]`` in the displayed image's pixels."""
    index = getattr(event, "index", None)
    if not isinstance(index, (list, tuple)) or len(index) != 2:
        raise AnywordError("Click inside the image to add a point.")
    return click(session, float(index[0]), float(index[1]), mode)


def undo(session: Session) -> tuple[Session, dict]:
    if not session.history:
        raise AnywordError("Nothing to undo.")
    session = dataclasses.replace(session, prompts=session.history[-1], history=session.history[:-1])
    return session, points_view(session)


def clear(session: Session) -> tuple[Session, dict]:
    if session.prompts is None or session.concept_id is None:
        raise AnywordError("Compute attention first.")
    session = dataclasses.replace(
        session, prompts=session.prompts.clear(session.concept_id), history=[*session.history, session.prompts]
    )
    return session, points_view(session)


def reset(session: Session) -> tuple[Session, dict]:
    if session.sampled is None:
        raise AnywordError("Compute attention first.")
    session = dataclasses.replace(session, prompts=session.sampled, history=[*session.history, session.prompts])
    return session, points_view(session)


# --- segmentation --------------------------------------------------------------------------------------------


def segment(hub, session: Session, threshold: float) -> tuple[Session, dict]:
    """Masks from the current points (the segmenter only: attention and image embedding are reused)."""
    if session.attention is None or session.prompts is None:
        raise AnywordError("Compute attention first.")
    pipeline = hub.pipeline(session.preset)
    started = time.perf_counter()
    settings = dataclasses.replace(
        pipeline.settings, prompts=dataclasses.replace(session.prompts.settings, threshold=float(threshold))
    )
    result = pipeline.run(
        session.image, session.parse, prompts=session.prompts, settings=settings, attention=session.attention
    )
    seconds = time.perf_counter() - started
    session = dataclasses.replace(session, result=result)
    annotations = [(result.masks[c.id], concept_label(c)) for c in result.concepts]
    weights = " RANDOM WEIGHTS: masks mean nothing." if result.attention.random_weights else ""
    return session, {
        "annotated": (session.image, annotations),
        "notice": f"Segmented {len(result.concepts)} concepts in {seconds * 1000:.0f} ms "
        f"(segmenter {result.models['segmenter']}).{weights}",
    }


def export(session: Session, store: ExportStore) -> tuple[Session, dict]:
    """The download (zip of mask PNGs, overlay, heatmaps, result.json, COCO RLE) and the result JSON, made after
    the masks are on screen so that segmenting stays instant. The zip replaces the session's previous one in
    ``store``, which deletes it when the session ends."""
    if session.result is None:
        raise AnywordError("Segment first.")
    result = session.result
    session = dataclasses.replace(session, export_owner=session.export_owner or store.new_owner())
    name = f"segment-anyword-{Path(session.image_name).stem or 'image'}.zip"
    archive = store.write(session.export_owner, name, zip_outputs(result, session.image, session.image_name))
    summary = result.to_dict()
    summary["concepts"] = [
        {k: c[k] for k in ("id", "phrase", "noun", "adjectives", "points", "score", "mask_area")}
        for c in summary["concepts"]
    ]
    return session, {"download": str(archive), "result_json": json.loads(json.dumps(summary))}


def _partial_result(session: Session) -> SegmentationResult:
    """A result view of the session for the picture helpers (masks may not exist yet)."""
    return SegmentationResult(
        image_size=(session.image.shape[1], session.image.shape[0]),
        parse=session.parse,
        alignment=session.attention.maps.alignment,
        attention=session.attention,
        prompts=session.prompts,
        masks={},
        scores={},
        timings={},
        models={},
        settings=PipelineSettings(),
        warnings=[],
    )
