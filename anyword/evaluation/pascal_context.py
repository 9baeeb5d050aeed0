"""PASCAL-Context 59 in mmsegmentation's layout: ``ROOT/VOCdevkit/VOC2010/JPEGImages/<id>.jpg``, label maps
``SegmentationClassContext/<id>.png`` (0 = background, 1..59 = the classes) and the split lists
``ImageSets/SegmentationContext/<split>.txt``. As mmsegmentation's ``PascalContextDataset59`` (``reduce_zero_label``),
background becomes :data:`~anyword.evaluation.base.IGNORE` and class ``k`` becomes ``k - 1``.

Captions follow OVDiff's protocol (Karazija et al., 2024): every image is segmented against the names of all 59
classes, whatever it shows. Stable Diffusion reads 75 tokens, so the names are split into captions of at most
:data:`NAMES_PER_CAPTION`, each run on its own; a pixel takes the class whose mask covers it with the highest
attention. OVDiff's image-level CLIP pre-filter is part of its method, not of the protocol, and is not reproduced.
``classes="present"`` instead names only the classes of the image's ground truth: an oracle upper bound, recorded
as such in the summary.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from anyword.evaluation.base import IGNORE, SEMANTIC, EvalDataset, Sample, SemanticTarget, image_path
from anyword.evaluation.coco import DatasetError

PC59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip
# How a class is written in a caption (the dataset's names joined words together).
CAPTION_NAMES = {"pottedplant": "potted plant", "tvmonitor": "tv monitor", "bedclothes": "bed clothes"}
NAMES_PER_CAPTION = 15
CLASS_CHOICES = ("all", "present")


def caption_name(class_name: str) -> str:
    return CAPTION_NAMES.get(class_name, class_name)


class PascalContext59(EvalDataset):
    name = "pc59"
    task = SEMANTIC
    splits = ("train", "val")
    class_names = PC59_CLASSES

    def __init__(
        self, root: str | Path, split: str, image_root: str | Path | None = None, classes: str = "all"
    ) -> None:
        super().__init__(split)
        if classes not in CLASS_CHOICES:
            raise DatasetError(f"classes must be one of {', '.join(CLASS_CHOICES)}, got {classes!r}")
        voc = Path(root) / "VOCdevkit" / "VOC2010"
        self.labels_root = voc / "SegmentationClassContext"
        self.image_root = Path(image_root) if image_root else voc / "JPEGImages"
        listing = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not listing.is_file():
            raise DatasetError(f"PASCAL-Context split list not found: {listing}")
        self.ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        self.classes = classes

    def samples(self) -> list[Sample]:
        return [
            Sample(
                key=f"image {image_id}",
                ids={"image_id": image_id},
                image=image_path(self.image_root, f"{image_id}.jpg"),
                caption="",
                phrases=PC59_CLASSES if self.classes == "all" else (),
            )
            for image_id in self.ids
        ]

    def concepts(self, sample: Sample) -> tuple[str, ...]:
        """The class names this sample is segmented against (all 59, or the present ones for the oracle)."""
        if self.classes == "all":
            return PC59_CLASSES
        present = np.unique(self.target(sample).labels)
        return tuple(PC59_CLASSES[k] for k in present if k != IGNORE)

    def pair_caption(self, sample: Sample) -> str:
        """PASCAL-Context has no captions: a training pair's text is the names of the classes its label map holds
        (ascending class index, in the spelling and comma-separated form the evaluation's captions use); empty when
        it holds none of the 59."""
        present = [k for k in np.unique(self.target(sample).labels) if k != IGNORE]
        return ", ".join(caption_name(PC59_CLASSES[k]) for k in present)

    def target(self, sample: Sample) -> SemanticTarget:
        path = image_path(self.labels_root, f"{sample.ids['image_id']}.png")
        raw = read_label_map(path)
        labels = np.where((raw >= 1) & (raw <= len(PC59_CLASSES)), raw - 1, IGNORE)
        return SemanticTarget(labels.astype(np.int64), PC59_CLASSES)

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.classes, "names_per_caption": NAMES_PER_CAPTION}


def read_label_map(path: Path) -> np.ndarray:
    """A label map PNG as ``(H, W)`` int64, its size checked from the header (the image limit) before decoding."""
    from PIL import Image

    from anyword.images import MAX_IMAGE_PIXELS, check_image_path

    if not path.is_file():
        raise DatasetError(f"label map not found: {path}")
    check_image_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower; checked next
            label_image = Image.open(path)
        with label_image:
            width, height = label_image.size
            if width * height > MAX_IMAGE_PIXELS:
                limit = f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP"
                raise DatasetError(f"label map {path.name} is {width}x{height}, over the {limit} limit")
            raw = np.array(label_image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"label map {path.name} is not a readable PNG ({type(error).__name__})") from None
    if raw.ndim != 2:
        raise DatasetError(f"label map {path.name} has {raw.ndim} dimensions; a label map has one channel")
    return raw.astype(np.int64)


def caption_chunks(class_names: tuple[str, ...], size: int = NAMES_PER_CAPTION) -> list[tuple[str, ...]]:
    """The names split into captions of at most ``size`` names, in order."""
    return [class_names[i : i + size] for i in range(0, len(class_names), size)]
