"""Per task: turn one pipeline run into a prediction record (JSON, masks as COCO RLE at the image's size), check a
record read back from a run folder, and score records against the dataset's ground truth with the official metrics.

Records are what ``predictions.jsonl`` holds, so the metrics are a function of that file and the dataset alone. A
record that cannot be scored (its ground truth is malformed, its mask the wrong size) is left out of the metrics
and listed with the reason; the others are scored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np

from anyword.errors import AnywordError, ModelUnavailableError, NoConceptError
from anyword.evaluation.base import GROUNDED, IGNORE, REFERRING, SEMANTIC, EvalDataset, Sample, resize_nearest
from anyword.evaluation.coco import DatasetError
from anyword.evaluation.pascal_context import caption_chunks, caption_name
from anyword.evaluation.phrase_similarity import RECALL_MODEL, TEXT_SIMILARITY_THRESHOLD, load_phrase_embedder
from anyword.metrics import (
    ImageResult,
    ReferringScore,
    confusion_matrix,
    grandf_ap50,
    grandf_miou,
    grandf_recall,
    grefcoco_metrics,
    mask_iou,
    refcoco_metrics,
    semantic_miou,
    word_phrase_match,
)
from anyword.parsing.concepts import Concept, Mention, ParseResult
from anyword.rle import check_size as check_rle_size
from anyword.rle import decode as rle_mask
from anyword.rle import encode as coco_rle

# How a referring expression's mask is chosen among the parsed concepts' masks (see :class:`Referring`).
REFERENT_CHOICES = ("match", "subject", "first", "all")
# Where referring masks are scored: at the image's own size, or as ReLA and LAVT score them (both resize image and
# ground truth to 480x480: ReLA's INPUT.IMAGE_SIZE, LAVT's --img_size; the prediction is made at that size).
SCORING_CHOICES = ("native", "official")
OFFICIAL_SIZE = (480, 480)
# What the rule can read, and which way "present" lies: +1 when a higher value means present.
NO_TARGET_SIGNALS = {"concentration": +1, "region_share": -1}
# Chosen on shapes validation scenes 10000-10019 of seen and novel (scripts/no_target_rule.py ->
# docs/results/no-target.json): region share beat concentration there (balanced accuracy 0.66 against 0.54); on test
# scenes 0-19 it reaches 0.54 (N-acc 0.73, T-acc 0.35): a weak rule, to be chosen again per model.
CALIBRATED_SIGNAL, CALIBRATED_THRESHOLD = "region_share", 0.0469


@dataclass(frozen=True)
class NoTargetRule:
    """Says "nothing here" for a referring expression whose referent's attention does not gather in one place.

    Signals, read from the referent's 16x16 concept map (min-max normalised): ``concentration``, the share of the
    map's mass at or above the prompt threshold (a present object gathers its attention, an absent one spreads
    it), and ``region_share``, the share of the grid at or above it (small for a present object). The rule says
    "no target" (and the mask is empty) when the signal lies on the absent side of ``threshold``.
    """

    enabled: bool = False
    threshold: float = CALIBRATED_THRESHOLD
    signal: str = CALIBRATED_SIGNAL

    def __post_init__(self):
        if self.signal not in NO_TARGET_SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(NO_TARGET_SIGNALS)}, got {self.signal!r}")

    def decide(self, signals: dict[str, float]) -> bool:
        direction = NO_TARGET_SIGNALS[self.signal]
        return self.enabled and direction * signals[self.signal] < direction * self.threshold


def concentration(grid_map: np.ndarray, threshold: float) -> float:
    """Share of a normalised map's mass at or above ``threshold`` (0 for an empty map)."""
    total = float(grid_map.sum())
    return float(grid_map[grid_map >= threshold].sum() / total) if total > 0 else 0.0


def _concepts_record(result) -> list[dict]:
    return [
        {
            "id": concept.id,
            "phrase": concept.phrase,
            "points": [p.to_dict() for p in result.prompts.for_concept(concept.id)],
            "score": result.scores.get(concept.id),
        }
        for concept in result.concepts
    ]


def fixed_parse(caption_names: tuple[str, ...]) -> ParseResult:
    """A parse whose concepts are given names (no parser): the caption lists them, comma-separated."""
    concepts, caption = [], ""
    for index, name in enumerate(caption_names):
        start = len(caption)
        caption += name
        span = (start, len(caption))
        concepts.append(Concept(index, name, name, (), (Mention(span=span, noun=span),)))
        caption += ", "
    return ParseResult(caption.rstrip(", "), tuple(concepts), parser="given", requested_parser="given")


class Task(ABC):
    name: str
    fields: tuple[str, ...] = ()  # what a successful record of this task holds

    @abstractmethod
    def predict(self, pipeline, settings, dataset: EvalDataset, sample: Sample, image: np.ndarray, parses) -> dict:
        """Run the pipeline on one sample; the record's prediction fields. ``parses`` (a
        :class:`~anyword.evaluation.parses.ParseStore`) answers the sample's parse."""

    def check(self, record: dict, size: tuple[int, int]) -> None:
        """:class:`DatasetError` unless ``record`` is a well-formed prediction for an image of ``size``
        (``(height, width)``): what a record read back from a run folder must be to be reused."""
        missing = [field for field in self.fields if field not in record]
        if missing:
            raise DatasetError(f"record {record.get('key')!r} has no {', '.join(missing)}")
        for rle in self.record_masks(record):
            check_rle_size(rle, size)

    @abstractmethod
    def record_masks(self, record: dict) -> list:
        """The record's masks as RLE (what :meth:`check` measures); malformed containers raise DatasetError."""

    @abstractmethod
    def entry(self, dataset: EvalDataset, sample: Sample, record: dict):
        """One record's contribution to the metrics, against its ground truth (raises :class:`AnywordError` when
        either cannot be scored)."""

    @abstractmethod
    def combine(self, dataset: EvalDataset, entries: list) -> dict:
        """The official metrics of the entries."""

    def metrics(self, dataset: EvalDataset, samples: dict[str, Sample], records: list[dict]) -> tuple[dict, list]:
        """The official metrics of ``records`` (successful predictions) against the dataset's truth, and the
        records that could not be scored (``{"key", "error"}``)."""
        entries, unscored = [], []
        for record in records:
            try:
                entries.append(self.entry(dataset, samples[record["key"]], record))
            except AnywordError as error:
                unscored.append({"key": record["key"], "error": str(error)})
        return self.combine(dataset, entries), unscored

    def describe(self) -> dict:
        """The task's options, as run summaries record them."""
        return {}

    def targets(self, dataset: EvalDataset, sample: Sample, record: dict) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per ground-truth target of the sample: ``(index, predicted mask, true mask)`` at the image's size (what
        ``--stability`` compares across wordings). Tasks without per-target masks have none."""
        raise AnywordError(f"the {self.name} task has no per-target masks to compare across wordings")


def _list_of(record: dict, field: str, keys: tuple[str, ...]) -> list[dict]:
    items = record.get(field)
    if not isinstance(items, list) or not all(isinstance(i, dict) and all(k in i for k in keys) for i in items):
        raise DatasetError(f"record {record.get('key')!r}: {field!r} must be a list of objects with {', '.join(keys)}")
    return items


def _same_size(mask: np.ndarray, size: tuple[int, int], key: str) -> np.ndarray:
    """``mask``, when it measures ``size`` (``(height, width)``) as its ground truth does."""
    if mask.shape != tuple(size):
        raise DatasetError(f"record {key!r}: a {mask.shape[1]}x{mask.shape[0]} mask for a "
                           f"{size[1]}x{size[0]} ground truth")  # fmt: skip
    return mask


def choose_referent(
    referent: str, ids: list[int], masks: dict[int, np.ndarray], parse: ParseResult, truth: np.ndarray | None
) -> tuple[list[int], dict]:
    """The concepts (ids, in the parse's order) whose merged mask answers a referring expression under rule
    ``referent`` (see :class:`Referring`), and what the choice saw, recorded beside it. ``masks`` are bool
    ``(H, W)`` per concept id; ``truth`` the ground truth (``match`` only)."""
    if referent == "first":
        return ids[:1], {}
    if referent == "all":
        return list(ids), {}
    if referent == "subject":
        subject = parse.subject_concept()
        return ([subject.id], {}) if subject is not None else (ids[:1], {"subject_found": False})
    ious = {concept_id: mask_iou(masks[concept_id], truth) for concept_id in ids}
    best = max(ids, key=lambda concept_id: ious[concept_id])  # the first of equals, as np.argmax
    return ([best] if ious[best] > 0 else []), {"match_iou": [round(ious[i], 6) for i in ids]}


@dataclass(frozen=True)
class Referring(Task):
    """One expression -> one mask, chosen among the masks of the parsed concepts by ``referent``:

    * ``match``: the mask with the highest IoU with the ground truth, none when no mask overlaps it (section 3.1:
      "following GLaMM, cross-matching between predictions and ground truths based on IoU"; GLaMM pairs greedily by
      the highest IoU above 0 and leaves unpaired predictions out). It reads the ground truth, as the paper's
      protocol does: it scores the best of the method's masks, not the method's own choice;
    * ``subject``: the parser's subject (spaCy: the ``nsubj`` noun, else the root noun; an LLM asked for the one
      referred object: that object; appendix F), the first concept when the parser names none (recorded);
    * ``first``: the first concept; ``all``: every concept merged.

    The no-target rule (off unless asked: the paper describes none) empties the mask when it says "nothing here";
    it reads the chosen concepts' maps, or under ``match`` (which consults the ground truth) the first concept's.
    ``score_at``: ``native`` scores at the image's size, ``official`` as ReLA and LAVT do at 480x480 (both masks
    resized; COCO polygons rasterised at that size, as detectron2's transforms do).
    """

    referent: str = "match"
    no_target: NoTargetRule = NoTargetRule()
    score_at: str = "native"
    name: str = REFERRING
    fields: tuple[str, ...] = ("mask", "no_target")

    def __post_init__(self):
        if self.referent not in REFERENT_CHOICES:
            raise ValueError(f"referent must be one of {', '.join(REFERENT_CHOICES)}, got {self.referent!r}")
        if self.score_at not in SCORING_CHOICES:
            raise ValueError(f"score_at must be one of {', '.join(SCORING_CHOICES)}, got {self.score_at!r}")

    def predict(self, pipeline, settings, dataset, sample, image, parses) -> dict:
        try:
            parse = parses.parse(sample)
            result = pipeline.run(image, parse, settings=settings)
        except NoConceptError as error:  # nothing to segment: an empty answer, scored like any other
            return {"mask": coco_rle(np.zeros(image.shape[:2], dtype=bool)), "no_target": self.no_target.enabled,
                    "referent": [], "concepts": [], "note": str(error)}  # fmt: skip
        truth = dataset.target(sample).mask if self.referent == "match" else None
        chosen, choice = choose_referent(self.referent, [c.id for c in result.concepts], result.masks, parse, truth)
        mask = np.zeros(image.shape[:2], dtype=bool)
        for concept_id in chosen:
            mask |= result.masks[concept_id]
        # The rule never sees the ground truth: under `match` it reads the first concept, as it would under `first`.
        readable = chosen if self.referent != "match" and chosen else [result.concepts[0].id]
        signals = self._signals(result, readable, settings.prompts.threshold)
        no_target = self.no_target.decide(signals)
        if no_target:
            mask[:] = False
        return {
            "mask": coco_rle(mask),
            "no_target": no_target,
            **signals,
            "referent": chosen,
            **choice,
            "concepts": _concepts_record(result),
            "timings": {k: round(v, 4) for k, v in result.timings.items()},
        }

    @staticmethod
    def _signals(result, chosen: list[int], threshold: float) -> dict[str, float]:
        grids = [result.attention.maps.concept_map(c, size="grid") for c in chosen]
        return {
            "concentration": max(concentration(grid, threshold) for grid in grids),
            "region_share": min(float((grid >= threshold).mean()) for grid in grids),
        }

    def record_masks(self, record: dict) -> list:
        if not isinstance(record.get("no_target"), bool):
            raise DatasetError(f"record {record.get('key')!r}: 'no_target' must be true or false")
        return [record["mask"]]

    def targets(self, dataset, sample, record) -> list[tuple[int, np.ndarray, np.ndarray]]:
        mask = _same_size(rle_mask(record["mask"]), dataset.image_size(sample), record["key"])
        return [(0, mask, _same_size(dataset.target(sample).mask, mask.shape, record["key"]))]

    def entry(self, dataset, sample, record) -> ReferringScore:
        mask = _same_size(rle_mask(record["mask"]), dataset.image_size(sample), record["key"])
        if self.score_at == "official":
            target = dataset.target_at(sample, OFFICIAL_SIZE)
            mask = resize_nearest(mask, OFFICIAL_SIZE)
        else:
            target = dataset.target(sample)
        return ReferringScore.of(
            mask, _same_size(target.mask, mask.shape, record["key"]), record["no_target"], target.empty
        )

    def combine(self, dataset, entries) -> dict:
        if getattr(dataset, "metric_set", "refcoco") == "grefcoco":
            return grefcoco_metrics(entries)
        return refcoco_metrics(entries)

    def describe(self) -> dict:
        return {
            "referent": self.referent,
            "referent_reads_truth": self.referent == "match",
            "no_target": asdict(self.no_target),
            "score_at": self.score_at,
            "score_size": list(OFFICIAL_SIZE) if self.score_at == "official" else "image",
        }


@dataclass(frozen=True)
class Grounded(Task):
    """A caption with several phrases -> one mask per parsed concept; GranDf's AP50, mIoU and recall as GLaMM
    computes them (recall's phrase test: BERT similarity with ``recall_model``; ``null`` with the reason when that
    model cannot load, and ``recall_words``, the word rule, as a diagnostic beside it). An image whose ground truth
    has more or fewer phrases than masks counts its phrases in recall's denominator and matches none, as GLaMM's
    evaluator (which skips it on the error) does; its masks still count for AP50 and mIoU."""

    recall_model: str = RECALL_MODEL
    name: str = GROUNDED
    fields: tuple[str, ...] = ("masks",)

    def predict(self, pipeline, settings, dataset, sample, image, parses) -> dict:
        try:
            result = pipeline.run(image, parses.parse(sample), settings=settings)
        except NoConceptError as error:  # nothing to segment: no masks, scored like any other answer
            return {"masks": [], "concepts": [], "note": str(error)}
        masks = [{"phrase": c.phrase, "rle": coco_rle(result.masks[c.id])} for c in result.concepts]
        return {
            "masks": masks,
            "concepts": _concepts_record(result),
            "timings": {k: round(v, 4) for k, v in result.timings.items()},
        }

    def record_masks(self, record: dict) -> list:
        return [m["rle"] for m in _list_of(record, "masks", ("phrase", "rle"))]

    def targets(self, dataset, sample, record) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Each true phrase against the first predicted mask whose phrase names it (GranDf's word test); an empty
        mask when none does."""
        result = self.entry(dataset, sample, record)
        rows = []
        for index, (truth, phrase) in enumerate(zip(result.targets, result.target_phrases, strict=True)):
            named = [p for p, text in zip(result.predictions, result.predicted_phrases, strict=True)
                     if word_phrase_match(phrase, text)]  # fmt: skip
            rows.append((index, named[0] if named else np.zeros_like(truth), truth))
        return rows

    def entry(self, dataset, sample, record) -> ImageResult:
        target = dataset.target(sample)
        size = dataset.image_size(sample)
        return ImageResult(
            predictions=[rle_mask(m["rle"], size) for m in record["masks"]],
            predicted_phrases=[str(m["phrase"]) for m in record["masks"]],
            targets=list(target.masks),
            target_phrases=list(target.phrases),
        )

    def combine(self, dataset, entries) -> dict:
        metrics = {"AP50": grandf_ap50(entries), "mIoU": grandf_miou(entries)}
        try:
            embedder = load_phrase_embedder(self.recall_model)
        except ModelUnavailableError as error:
            metrics.update(recall=None, recall_unavailable=str(error))
        else:
            metrics["recall"] = grandf_recall(entries, embedder.phrase_match(TEXT_SIMILARITY_THRESHOLD))
        metrics["recall_words"] = grandf_recall(entries, word_phrase_match)
        metrics["phrase_mask_mismatches"] = sum(len(e.targets) != len(e.target_phrases) for e in entries)
        return metrics

    def describe(self) -> dict:
        return {"recall": {"model": self.recall_model, "text_similarity": TEXT_SIMILARITY_THRESHOLD, "iou": 0.5}}


@dataclass(frozen=True)
class Semantic(Task):
    """Class names -> a label map: each caption of names is run on its own; a pixel takes the class whose mask
    covers it with the highest attention, or none."""

    name: str = SEMANTIC
    fields: tuple[str, ...] = ("labels",)

    def predict(self, pipeline, settings, dataset, sample, image, parses) -> dict:
        names = dataset.concepts(sample)  # the class names are the concepts: nothing to parse
        height, width = image.shape[:2]
        best = np.full((height, width), -1.0, dtype=np.float32)
        labels = np.full((height, width), IGNORE, dtype=np.int64)
        concepts, timings = [], {}
        for chunk in caption_chunks(names):
            parse = fixed_parse(tuple(caption_name(n) for n in chunk))
            result = pipeline.run(image, parse, settings=settings)
            for concept, name in zip(result.concepts, chunk, strict=True):
                heat = np.where(result.masks[concept.id], result.heatmap(concept.id), -1.0)
                better = heat > best
                best[better], labels[better] = heat[better], dataset.class_names.index(name)
            concepts += _concepts_record(result)
            for key, value in result.timings.items():
                timings[key] = round(timings.get(key, 0.0) + value, 4)
        present = [int(k) for k in np.unique(labels) if k != IGNORE]
        return {
            "labels": [{"class": k, "name": dataset.class_names[k], "rle": coco_rle(labels == k)} for k in present],
            "classes_named": list(names),
            "concepts": concepts,
            "timings": timings,
        }

    def record_masks(self, record: dict) -> list:
        entries = _list_of(record, "labels", ("class", "rle"))
        if not all(
            isinstance(e["class"], int) and not isinstance(e["class"], bool) and e["class"] >= 0 for e in entries
        ):
            raise DatasetError(f"record {record.get('key')!r}: a label's 'class' must be a class index")
        return [e["rle"] for e in entries]

    def entry(self, dataset, sample, record) -> np.ndarray:
        target = dataset.target(sample)
        classes = len(dataset.class_names)
        predicted = np.full(target.labels.shape, IGNORE, dtype=np.int64)
        for entry in record["labels"]:
            if entry["class"] >= classes:
                raise DatasetError(f"record {record['key']!r}: class {entry['class']} is not one of the {classes}")
            predicted[_same_size(rle_mask(entry["rle"]), target.labels.shape, record["key"])] = entry["class"]
        return confusion_matrix(predicted, target.labels, classes)

    def combine(self, dataset, entries) -> dict:
        classes = len(dataset.class_names)
        matrix = sum(entries, np.zeros((classes, classes + 1), dtype=np.int64))
        metrics = semantic_miou(matrix)
        metrics["per_class_iou"] = dict(zip(dataset.class_names, metrics["per_class_iou"], strict=True))
        return metrics
