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
from anyword.pipeline import SegmentationResult
from anyword.presets import get_preset
from anyword.prompts import NEGATIVE, POSITIVE
from anyword.seeds import check_seed
from anyword.settings import SHORT_LEARNING_STEPS, Overrides
from demo.exports import ExportStore
from demo.state import Session

PARSER_SPACY = "spaCy (offline)"
PARSER_LLM = "GPT-4o / OpenAI-compatible LLM"
QUALITY_PRESET = "preset default"
QUALITY_PAPER = "paper (1100 steps)"
QUALITY_FAST = "fast: Segment Anyword_f (adapter + 50 steps)"
QUALITY_SHORT = "50 steps, no adapter"
QUALITY_CUSTOM = "custom"
QUALITIES = (QUALITY_PRESET, QUALITY_PAPER, QUALITY_FAST, QUALITY_SHORT, QUALITY_CUSTOM)
# page label -> anyword.settings.QUALITIES (a preset scales "paper" and "fast" to its model, e.g. 30 and 3 for shapes)
_QUALITY_NAMES = {QUALITY_PAPER: "paper", QUALITY_FAST: "fast", QUALITY_SHORT: "50-steps"}
SEGMENTER_PRESET = "preset default"
ADAPTER_NONE = ""  # the adapter dropdown's "none" value
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


def page_overrides(
    quality: str, steps: float | None, seed: float | None, threshold: float | None = None, r1=None, r2=None
) -> Overrides:
    """The page's choices as overrides of the preset's settings."""
    custom = None
    if quality == QUALITY_CUSTOM:
        if steps is None:
            raise AnywordError("Type the number of custom steps.")
        custom = int(steps)
    return Overrides(
        quality=_QUALITY_NAMES.get(quality),
        learning_steps=custom,
        seed=check_seed(0 if seed is None else seed),
        threshold=None if threshold is None else float(threshold),
        r1=None if r1 is None else bool(r1),
        r2=None if r2 is None else bool(r2),
    )


def preset_notice(preset: str, device: str | None = None) -> str:
    """What the chosen model is, and what its default run would cost on this machine (before it starts)."""
    chosen = get_preset(preset)
    notice = f"Model: **{chosen.description}**."
    if chosen.random_weights:
        notice += " Its maps and masks mean nothing."
    if chosen.shipped_adapter_path() is not None:
        fast = chosen.settings(Overrides(quality="fast")).diffusion.learning.steps
        notice += f" Fast mode: its shipped text-encoder adapter + {fast} learning steps."
    cost = chosen.cost_warning(chosen.settings().diffusion.learning.steps, device)
    if cost is not None:
        notice += f" Note: {cost}. Choose **{QUALITY_SHORT}** ({SHORT_LEARNING_STEPS} steps) to try it."
    return notice


def choose_preset(session: Session, preset: str, device: str | None = None) -> tuple[Session, dict]:
    return session, {"notice": preset_notice(preset, device)}


def compute(
    hub,
    session: Session,
    preset: str,
    segmenter: str | None,
    adapter: str | None,
    quality: str,
    steps: float | None,
    seed: float | None,
    threshold: float,
    r1: bool,
    r2: bool,
) -> tuple[Session, dict]:
    """Inversion, prompt learning and averaged attention (the slow step), the segmenter's image embedding, then
    sampled points: all kept in the session."""
    if session.image is None:
        raise AnywordError("Upload an image (or pick an example) first.")
    if session.parse is None:
        raise AnywordError("Parse the caption first.")
    overrides = page_overrides(quality, steps, seed, threshold, r1, r2)
    chosen_adapter = hub.adapter_for(preset, adapter or None, fast=quality == QUALITY_FAST)
    pipeline = hub.pipeline(preset, chosen_adapter)
    chosen = None if segmenter in (None, "", SEGMENTER_PRESET) else segmenter
    started = time.perf_counter()
    analysis = pipeline.analyze(
        session.image, session.parse, pipeline.preset.settings(overrides), segmenter=chosen, digest=session.digest
    )
    seconds = time.perf_counter() - started
    session = dataclasses.replace(
        session, preset=preset, adapter=chosen_adapter, analysis=analysis, prompts=analysis.sampled, history=[]
    )
    session.result = None
    session.concept_id = session.parse.concepts[0].id
    weights = "RANDOM WEIGHTS: maps and masks mean nothing. " if pipeline.random_weights(chosen) else ""
    attention = analysis.attention
    notice = (
        f"{weights}Attention {'reused' if analysis.attention_cached else 'computed'} in {seconds:.1f} s "
        f"({attention.settings.learning.steps} prompt-learning steps, seed {attention.settings.seed}, "
        f"{'adapter ' + chosen_adapter.ident if chosen_adapter else 'no adapter'}, "
        f"reconstruction MSE {attention.reconstruction_mse:.2g}). Click on the image to edit points, then Segment."
    )
    return session, {**points_view(session), "gallery": gallery(session), "notice": notice}


def resample(hub, session: Session, threshold: float, r1: bool, r2: bool, seed: float | None) -> tuple[Session, dict]:
    """New threshold / R1 / R2 / seed: re-sample points from the maps already computed (no model runs)."""
    if session.analysis is None:
        return session, {}
    overrides = Overrides(
        threshold=float(threshold), r1=bool(r1), r2=bool(r2), seed=check_seed(0 if seed is None else seed)
    )
    analysis = hub.pipeline(session.preset, session.adapter).resample(session.analysis, overrides)
    session = dataclasses.replace(session, analysis=analysis, prompts=analysis.sampled, history=[])
    return session, {
        **points_view(session),
        "gallery": gallery(session),
        "notice": f"Points re-sampled (threshold {threshold:.2f}, R1 {'on' if r1 else 'off'}, "
        f"R2 {'on' if r2 else 'off'}).",
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
