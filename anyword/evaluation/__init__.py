"""Evaluation on the paper's benchmarks: dataset loaders in their official layouts, the official metrics, and a
resumable run sharded over processes (``anyword eval --dataset ... --out RUN_DIR``).

:data:`DATASETS` is the one registry of datasets; a new one is a loader module plus an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anyword.errors import AnywordError
from anyword.evaluation.base import GROUNDED, REFERRING, SEMANTIC, EvalDataset, Sample
from anyword.evaluation.grandf import GranDf, GranDfTrain
from anyword.evaluation.pascal_context import PascalContext59
from anyword.evaluation.phrase_similarity import RECALL_MODEL
from anyword.evaluation.referring import GRefCoco, RefCoco, RefCocoG, RefCocoPlus
from anyword.evaluation.run import print_table, run_evaluation
from anyword.evaluation.shapes_scenes import SHAPES_DATASET, PartsScenes, ShapesReferring, ShapesScenes
from anyword.evaluation.tasks import (
    REFERENT_CHOICES,
    SCORING_CHOICES,
    Grounded,
    NoTargetRule,
    Referring,
    Semantic,
    Task,
)
from anyword.presets import LDM_PRESET, PARTS_PRESET, SHAPES_PRESET


@dataclass(frozen=True)
class DatasetOptions:
    """Where and how to open a dataset: its folder and split; ``image_root`` for other image layouts; ``count``
    and ``image_size`` the shapes world's (how many scenes exist, their size); ``classes`` PASCAL-Context's caption
    protocol ("all" or the oracle "present"); ``wordings``: each shapes scene in several paraphrases
    (``--stability``)."""

    split: str
    root: Path | None = None
    image_root: Path | None = None
    count: int = 100
    image_size: int = 128
    classes: str = "all"
    wordings: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the harness knows: how to open it, its splits, whether it has a data root, the preset that
    evaluates it by default (the paper's LDM for the benchmarks, the shapes model for the shapes world) and, for
    referring data, where masks are scored by default (``official``: as the benchmark's evaluator does)."""

    name: str
    description: str
    opener: Callable[[DatasetOptions], EvalDataset]
    splits: tuple[str, ...]
    default_split: str
    needs_root: bool = True
    preset: str = LDM_PRESET
    score_at: str = "native"


def _coco_opener(kind):
    return lambda o: kind(o.root, o.split, o.image_root)


def _grandf_opener(options: DatasetOptions) -> EvalDataset:
    kind = GranDfTrain if options.split in GranDfTrain.splits else GranDf  # the training split has its own layout
    return kind(options.root, options.split, options.image_root)


DATASETS = {
    "grefcoco": DatasetSpec(
        "grefcoco", "gRefCOCO (ReLA): multi-target and no-target expressions", _coco_opener(GRefCoco),
        GRefCoco.splits, "val", score_at="official",
    ),
    "refcoco": DatasetSpec(
        "refcoco", "RefCOCO (unc)", _coco_opener(RefCoco), RefCoco.splits, "val", score_at="official"
    ),
    "refcoco+": DatasetSpec(
        "refcoco+", "RefCOCO+ (unc)", _coco_opener(RefCocoPlus), RefCocoPlus.splits, "val", score_at="official"
    ),
    "refcocog": DatasetSpec(
        "refcocog", "RefCOCOg (umd)", _coco_opener(RefCocoG), RefCocoG.splits, "val", score_at="official"
    ),
    "grandf": DatasetSpec(
        "grandf", "GranDf grounded conversation (GLaMM)", _grandf_opener, (*GranDfTrain.splits, *GranDf.splits), "val"
    ),
    "pc59": DatasetSpec(
        "pc59", "PASCAL-Context 59 classes", lambda o: PascalContext59(o.root, o.split, o.image_root, o.classes),
        PascalContext59.splits, "val",
    ),
    SHAPES_DATASET: DatasetSpec(
        SHAPES_DATASET, "synthetic shape scenes (ships with the package)",
        lambda o: ShapesScenes(o.split, o.count, o.image_size, o.wordings), ShapesScenes.splits, "seen",
        needs_root=False,
        preset=SHAPES_PRESET,
    ),
    PartsScenes.name: DatasetSpec(
        PartsScenes.name, "synthetic scenes of objects with named parts, shapes world 2 (ships with the package)",
        lambda o: PartsScenes(o.split, o.count, o.image_size), PartsScenes.splits, "seen", needs_root=False,
        preset=PARTS_PRESET,
    ),
    "shapes-referring": DatasetSpec(
        "shapes-referring", "shape scenes with referring expressions, half naming an absent shape",
        lambda o: ShapesReferring(o.split, o.count, o.image_size), ShapesReferring.splits, "seen",
        needs_root=False, preset=SHAPES_PRESET,
    ),
}  # fmt: skip


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise AnywordError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def open_dataset(name: str, options: DatasetOptions) -> EvalDataset:
    """The dataset ``name`` (a key of :data:`DATASETS`) as ``options`` say."""
    spec = get_dataset_spec(name)
    if spec.needs_root:
        if options.root is None:
            raise AnywordError(f"--data-root is required for {name}: the folder holding it in its official layout")
        if not Path(options.root).is_dir():
            raise AnywordError(f"--data-root {options.root} is not a folder")
    return spec.opener(options)


def make_task(
    dataset: EvalDataset,
    referent: str = "match",
    no_target: bool = False,
    threshold: float | None = None,
    score_at: str | None = None,
    recall_model: str = RECALL_MODEL,
) -> Task:
    """The task that scores ``dataset``: for referring data the referent rule, the no-target rule (off unless
    asked: the paper describes none) and where masks are scored (default: the dataset's); for grounded data the
    model of GranDf's recall."""
    if dataset.task == REFERRING:
        rule = NoTargetRule(no_target) if threshold is None else NoTargetRule(no_target, threshold)
        where = score_at or get_dataset_spec(dataset.name).score_at
        return Referring(referent=referent, no_target=rule, score_at=where)
    return Grounded(recall_model=recall_model) if dataset.task == GROUNDED else Semantic()


__all__ = [
    "DATASETS",
    "GROUNDED",
    "RECALL_MODEL",
    "REFERENT_CHOICES",
    "REFERRING",
    "SCORING_CHOICES",
    "SEMANTIC",
    "SHAPES_DATASET",
    "DatasetOptions",
    "DatasetSpec",
    "EvalDataset",
    "NoTargetRule",
    "Sample",
    "Task",
    "get_dataset_spec",
    "make_task",
    "open_dataset",
    "print_table",
    "run_evaluation",
]
