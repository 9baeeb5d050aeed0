"""Demo handlers: plain functions from (session, request) to (session, view), testable without a browser.

A request is a typed value (:mod:`demo.requests`) or, for one-control actions, the control's value; a *view* is a
dict naming the page parts to update (``highlight``, ``concepts``, ``gallery``, ``editor``, ...); parts not named
stay as they are. Bad input raises :class:`~anyword.errors.AnywordError` with a message for the user; the UI layer
shows it as a warning and the app keeps serving. Handlers call the pipeline and turn its results into pictures and
words; the method itself is in ``anyword``.
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
from anyword.pipeline import SegmentationResult
from anyword.presets import get_preset
from anyword.prompts import NEGATIVE, POSITIVE
from anyword.settings import FAST, Overrides
from demo import choices
from demo.exports import ExportStore
from demo.requests import ComputeRequest, EditRequest, ParseRequest, PointSettings
from demo.state import Session

THUMBNAIL_SIDE = 320
HIGHLIGHT_COLOURS = {"noun": "#3b82f6", "adjective": "#f59e0b", "predicate": "#a855f7"}


def concept_label(concept) -> str:
    return f"{concept.id}: {concept.phrase}"


def concept_choices(result: ParseResult) -> list[tuple[str, int]]:
    """The concept pickers' choices: the page shows ``"id: phrase"``, sends the id."""
    return [(concept_label(c), c.id) for c in result.concepts]


def concept_id_from(value: int | str | None) -> int | None:
    """A concept id as a picker sends it (an API caller may send it as text), ``None`` if nothing usable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
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
    session: Session, request: ParseRequest, nlp=None, llm: LLMAccess | None = None
) -> tuple[Session, dict]:
    """Caption -> concepts with the chosen parser. ``llm`` decides which endpoint and key the LLM parser may use
    (the visitor's key serves this call only and is never kept or shown)."""
    caption = request.caption
    if not caption or not caption.strip():
        raise AnywordError("Type a caption first: describe the objects to segment, e.g. 'a brown dog on a red sofa'.")
    spacy_parser = SpacyParser(nlp=nlp)
    if request.parser == choices.LLM:
        llm = llm or LLMAccess()
        result, problem = llm.parse(caption, spacy_parser, request.base_url, request.api_key, request.llm_model)
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
        "concept_choices": concept_choices(result),
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


def edit_concepts(session: Session, request: EditRequest) -> tuple[Session, dict]:
    """Correct the parse: drop a concept, add a caption word as a concept, bind or unbind an adjective."""
    if session.parse is None:
        raise AnywordError("Parse the caption first.")
    parse, action = session.parse, request.action
    concept_id = concept_id_from(request.edit_concept)
    word = (request.edit_word or "").strip()
    if action != choices.ADD and concept_id is None:
        raise AnywordError("Pick a concept to edit.")
    if action != choices.DROP and not word:
        raise AnywordError("Type the word of the caption to use.")
    if action == choices.DROP:
        parse = parse.drop_concept(concept_id)
    elif action == choices.UNBIND:
        parse = parse.unbind_adjective(concept_id, word)
    else:
        span = _word_span(parse.caption, word)
        parse = parse.add_word_as_concept(span) if action == choices.ADD else parse.bind_adjective(concept_id, span)
    session = dataclasses.replace(session)
    session.forget_from_parse()
    session.parse = parse
    label = choices.label_of(choices.ACTIONS, action)
    return session, {**parse_view(parse), "notice": f"Concepts updated ({label}). Compute attention again."}


def _word_span(caption: str, word: str) -> tuple[int, int]:
    from anyword.parsing import find_word

    spans = find_word(caption, word)
    if not spans:
        raise AnywordError(f"'{word}' is not a word of the caption.")
    return spans[0]


# --- attention -----------------------------------------------------------------------------------------------


def preset_notice(preset: str, device: str | None = None) -> str:
    """What the chosen model is, and what its default run would cost on this machine (before it starts)."""
    chosen = get_preset(preset)
    notice = f"Model: **{chosen.description}**."
    if chosen.random_weights:
        notice += " Its maps and masks mean nothing."
    if chosen.shipped_adapter_path() is not None:
        fast = chosen.settings(Overrides(quality=FAST)).diffusion.learning.steps
        notice += f" Fast mode: its shipped text-encoder adapter + {fast} learning steps."
    cost = chosen.cost_warning(chosen.settings().diffusion.learning.steps, device)
    if cost is not None:
        short = choices.label_of(choices.quality_choices(chosen), "50-steps")
        notice += f" Note: {cost}. Choose **{short}** to try it."
    return notice


def preset_view(preset: str) -> dict:
    """The controls whose defaults are the preset's: prompt-learning choices (with its step counts), custom steps,
    threshold, R1, R2, seed."""
    chosen = get_preset(preset)
    settings = chosen.settings()
    prompts = settings.prompts
    return {
        "quality_choices": choices.quality_choices(chosen),
        "steps": settings.diffusion.learning.steps,
        "threshold": prompts.threshold,
        "r1": prompts.r1,
        "r2": prompts.r2,
        "seed": prompts.seed,
    }


def choose_preset(session: Session, preset: str, device: str | None = None) -> tuple[Session, dict]:
    return session, {**preset_view(preset), "notice": preset_notice(preset, device)}


def compute(hub, session: Session, request: ComputeRequest) -> tuple[Session, dict]:
    """Inversion, prompt learning and averaged attention (the slow step), the segmenter's image embedding, then
    sampled points: all kept in the session."""
    if session.image is None:
        raise AnywordError("Upload an image (or pick an example) first.")
    if session.parse is None:
        raise AnywordError("Parse the caption first.")
    overrides = request.overrides()
    adapter = hub.adapter_for(request.preset, request.adapter_path, overrides.quality)
    pipeline = hub.pipeline(request.preset, adapter)
    started = time.perf_counter()
    analysis = pipeline.analyze(
        session.image,
        session.parse,
        pipeline.preset.settings(overrides),
        segmenter=request.segmenter_key,
        digest=session.digest,
    )
    seconds = time.perf_counter() - started
    session = dataclasses.replace(
        session, preset=request.preset, adapter=adapter, analysis=analysis, prompts=analysis.sampled, history=[]
    )
    session.result = None
    session.concept_id = session.parse.concepts[0].id
    weights = "RANDOM WEIGHTS: maps and masks mean nothing. " if pipeline.random_weights(analysis.segmenter) else ""
    attention = analysis.attention
    notice = (
        f"{weights}Attention {'reused' if analysis.attention_cached else 'computed'} in {seconds:.1f} s "
        f"({attention.settings.learning.steps} prompt-learning steps, seed {attention.settings.seed}, "
        f"{'adapter ' + adapter.ident if adapter else 'no adapter'}, "
        f"reconstruction MSE {attention.reconstruction_mse:.2g}). Click on the image to edit points, then Segment."
    )
    return session, {**points_view(session), "gallery": gallery(session), "notice": notice}


def resample(hub, session: Session, request: PointSettings) -> tuple[Session, dict]:
    """New threshold / R1 / R2 / seed: re-sample points from the maps already computed (no model runs)."""
    if session.analysis is None:
        return session, {}
    analysis = hub.pipeline(session.preset, session.adapter).resample(session.analysis, request.overrides())
    session = dataclasses.replace(session, analysis=analysis, prompts=analysis.sampled, history=[])
    settings = analysis.sampled.settings
    return session, {
        **points_view(session),
        "gallery": gallery(session),
        "notice": f"Points re-sampled (threshold {settings.threshold:.2f}, R1 {'on' if settings.r1 else 'off'}, "
        f"R2 {'on' if settings.r2 else 'off'}).",
    }


def gallery(session: Session) -> list[tuple[np.ndarray, str]]:
    """One panel per concept and per bound adjective: heatmap over the image, with the points."""
    result = SegmentationResult.preview(session.analysis, session.prompts)
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
        "concept_choice": concept.id,
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
    if mode not in (choices.POSITIVE, choices.NEGATIVE):
        raise AnywordError("Choose whether a click adds a positive or a negative point.")
    label = NEGATIVE if mode == choices.NEGATIVE else POSITIVE
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
    if session.analysis is None:
        raise AnywordError("Compute attention first.")
    session = dataclasses.replace(session, prompts=session.sampled, history=[*session.history, session.prompts])
    return session, points_view(session)


# --- segmentation --------------------------------------------------------------------------------------------


def segment(hub, session: Session) -> tuple[Session, dict]:
    """Masks from the current points: the mask decoder only (the session keeps attention and image embedding)."""
    if session.analysis is None or session.prompts is None:
        raise AnywordError("Compute attention first.")
    pipeline = hub.pipeline(session.preset, session.adapter)
    started = time.perf_counter()
    result = pipeline.run(session.image, session.parse, prompts=session.prompts, analysis=session.analysis)
    seconds = time.perf_counter() - started
    session = dataclasses.replace(session, result=result)
    annotations = [(result.masks[c.id], concept_label(c)) for c in result.concepts]
    weights = " RANDOM WEIGHTS: masks mean nothing." if pipeline.random_weights(session.analysis.segmenter) else ""
    return session, {
        "annotated": (session.image, annotations),
        "notice": f"Segmented {len(result.concepts)} concepts in {seconds * 1000:.0f} ms "
        f"(segmenter {result.models['segmenter_model']}).{weights}",
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
