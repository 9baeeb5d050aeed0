"""What every dataset loader gives the evaluation: samples, their images and their ground truth.

Three kinds of task, as the paper's tables: ``referring`` (one expression -> one mask, possibly "no target":
gRefCOCO, RefCOCO family), ``grounded`` (a caption with several phrases, one mask each: GranDf, shapes) and
``semantic`` (class names -> a label map: PASCAL-Context 59). Masks are bool ``(H, W)`` at the image's size; label
maps are int ``(H, W)`` with :data:`IGNORE` where no class is scored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anyword.errors import AnywordError

REFERRING, GROUNDED, SEMANTIC = "referring", "grounded", "semantic"
IGNORE = 255


@dataclass(frozen=True)
class Sample:
    """One unit of evaluation (a sentence, a caption, an image).

    ``key`` is unique and stable within the dataset split (it keys resumed runs); ``ids`` carries the dataset's own
    ids (``sent_id``, ``ref_id``, ``image_id``); ``image`` the image file; ``caption`` the text the pipeline reads;
    ``phrases`` the concepts to segment when the dataset fixes them (semantic classes), else empty (the caption is
    parsed). ``problem`` says what is wrong with the dataset's record of it (a field missing or malformed): such a
    sample is recorded as failed, with that message, and the run goes on.
    """

    key: str
    ids: dict[str, Any]
    image: Path | None
    caption: str
    phrases: tuple[str, ...] = ()
    problem: str | None = None


@dataclass(frozen=True)
class ReferringTarget:
    """The merged mask of every object an expression refers to; ``empty`` when it refers to none (gRefCOCO)."""

    mask: np.ndarray
    empty: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape


@dataclass(frozen=True)
class GroundedTarget:
    """One mask per ground-truth phrase."""

    masks: tuple[np.ndarray, ...]
    phrases: tuple[str, ...]

    @property
    def size(self) -> tuple[int, int] | None:
        return self.masks[0].shape if self.masks else None


@dataclass(frozen=True)
class SemanticTarget:
    """A label map: class index per pixel, :data:`IGNORE` where unscored."""

    labels: np.ndarray
    class_names: tuple[str, ...] = field(default=())

    @property
    def size(self) -> tuple[int, int]:
        return self.labels.shape


class EvalDataset(ABC):
    """Base of the loaders: ``name``, ``split``, ``task``; :meth:`samples`, :meth:`image`, :meth:`target`."""

    name: str = ""
    task: str = REFERRING
    splits: tuple[str, ...] = ()
    # Why the dataset has no wordings to compare (``--stability``); ``None``: :meth:`wording_group` groups them.
    no_wordings: str | None = "it holds one caption per target"
    samples_per_item: int = 1  # samples per scene or record that --start and --n count (several wordings: more)

    def __init__(self, split: str):
        if self.splits and split not in self.splits:
            raise AnywordError(f"{self.name} has no split {split!r}: choose one of {', '.join(self.splits)}")
        self.split = split

    @abstractmethod
    def samples(self) -> list[Sample]:
        """Every sample of the split, in the dataset's order."""

    def wording_group(self, sample: Sample) -> str | None:
        """The group of samples that word the same targets (``--stability``): e.g. ``"ref 12"`` for a RefCOCO
        ref's sentences; ``None`` where the dataset has none (:attr:`no_wordings` says why)."""
        return None

    def concepts(self, sample: Sample) -> tuple[str, ...]:
        """The phrases to segment when the dataset fixes them (empty: parse the caption)."""
        return sample.phrases

    def image(self, sample: Sample) -> np.ndarray:
        from anyword.images import load_image

        return load_image(sample.image)

    def image_size(self, sample: Sample) -> tuple[int, int]:
        """``(height, width)`` of the sample's image without decoding it (what its masks must measure): here from
        the file's header; loaders that declare sizes (COCO) answer from their records."""
        from PIL import Image

        from anyword.images import check_image_path

        check_image_path(sample.image)
        try:
            with Image.open(sample.image) as image:
                width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise AnywordError(f"{sample.image} is not a readable image ({type(error).__name__})") from None
        return height, width

    @abstractmethod
    def target(self, sample: Sample):
        """The sample's ground truth (a :class:`ReferringTarget`, :class:`GroundedTarget` or
        :class:`SemanticTarget`, as :attr:`task` says)."""

    def pair_caption(self, sample: Sample) -> str:
        """The text of the sample as a training pair for ``anyword adapt`` (``anyword pairs``): its caption;
        datasets without captions say what stands in for one."""
        return sample.caption

    def target_at(self, sample: Sample, size: tuple[int, int]) -> ReferringTarget:
        """A referring sample's ground truth at ``size`` (``(height, width)``), as an evaluator that resizes
        images before scoring sees it: here its mask resized (nearest); COCO loaders rasterise polygons there."""
        target = self.target(sample)
        return ReferringTarget(resize_nearest(target.mask, size), target.empty)

    def describe(self) -> dict:
        """What the summary records about the data (name, split, where it was read)."""
        return {"dataset": self.name, "split": self.split, "task": self.task}


def image_path(root: Path, file_name: str) -> Path:
    """``root / file_name``, refusing names that leave ``root`` (a dataset file is data, not a path to trust)."""
    path = (root / file_name).resolve()
    if root.resolve() not in path.parents:
        raise AnywordError(f"image name {file_name!r} points outside {root}")
    return path


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool ``(H, W)`` mask resized to ``size`` (``(height, width)``) by nearest neighbour, as detectron2's
    ``ResizeTransform.apply_segmentation`` does (PIL, ``NEAREST``)."""
    from PIL import Image

    if mask.shape == tuple(size):
        return mask.copy()
    resized = Image.fromarray(mask.astype(np.uint8)).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(bool)
