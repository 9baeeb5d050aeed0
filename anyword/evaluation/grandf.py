"""GranDf's grounded-conversation evaluation set in GLaMM's layout (``eval/gcg/evaluate.py``):
``ROOT/annotations/val_test/{split}_gcg_coco_mask_gt.json`` (COCO: images and one RLE annotation per phrase) and
``{split}_gcg_coco_caption_gt.json`` (one annotation per image: ``caption`` and ``labels``, the phrases, in the
order of the image's masks). Images under ``ROOT/GranDf_HA_images/val_test`` unless ``image_root`` says otherwise.
The paper segments with the ground-truth caption (section F), so the caption is the sample's text.

The training split (what ``anyword pairs`` samples for Segment Anyword_f) is GLaMM's
``ROOT/annotations/train/GranDf_HA_GCG_train.json``: a list of ``{"file_name", "caption", "groundings": {phrase:
{"token_positives", "rle_masks"}}}``, images under ``ROOT/GranDf_HA_images/train`` (GLaMM's ``GranDfDataset``,
which strips quotes and spaces around the caption and merges a phrase's RLE masks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyword.errors import AnywordError
from anyword.evaluation.base import GROUNDED, EvalDataset, GroundedTarget, Sample, image_path
from anyword.evaluation.coco import CocoIndex, DatasetError, is_id, read_json
from anyword.rle import RleError
from anyword.rle import decode as decode_rle

TRAIN_FILE = "GranDf_HA_GCG_train.json"


class GranDf(EvalDataset):
    """GranDf's images in the caption file's order; an image whose caption, mask file entry or phrases are missing
    or malformed fails with a message naming the file, the record and the field, and the others run."""

    name = "grandf"
    task = GROUNDED
    splits = ("val", "test")

    def __init__(self, root: str | Path, split: str, image_root: str | Path | None = None):
        super().__init__(split)
        folder = Path(root) / "annotations" / "val_test"
        self.masks = CocoIndex.read(folder / f"{split}_gcg_coco_mask_gt.json")
        self.captions_file = folder / f"{split}_gcg_coco_caption_gt.json"
        captions = read_json(self.captions_file, "GranDf caption file")
        if not isinstance(captions, dict) or not all(
            isinstance(captions.get(key, []), list) for key in ("images", "annotations")
        ):
            raise DatasetError(f"{self.captions_file}: not a GranDf caption file (an object with 'images' and "
                               f"'annotations' lists)")  # fmt: skip
        self.image_root = Path(image_root) if image_root else Path(root) / "GranDf_HA_images" / "val_test"
        records = [a for a in captions.get("annotations", []) if isinstance(a, dict) and is_id(a.get("image_id"))]
        self.captions = {a["image_id"]: a for a in records}
        self.order = [image.get("id") for image in captions.get("images", []) if isinstance(image, dict)]
        self.by_image: dict = {}
        for annotation_id, annotation in self.masks.annotations.items():
            if is_id(annotation.get("image_id")):
                self.by_image.setdefault(annotation["image_id"], []).append(annotation_id)

    def samples(self) -> list[Sample]:
        return [self._sample(image_id) for image_id in self.order]

    def _sample(self, image_id) -> Sample:
        ids = {"image_id": image_id}
        where = f"{self.captions_file.name} image {image_id}"
        caption = self.captions.get(image_id) if is_id(image_id) else None
        if caption is None or not isinstance(caption.get("caption"), str):
            return Sample(f"image {image_id}", ids, None, "", problem=f"{where}: no 'caption' text")
        try:
            file_name = self.masks.image(image_id).get("file_name", f"{image_id}.jpg")
            image = image_path(self.image_root, file_name if isinstance(file_name, str) else "")
        except AnywordError as error:
            return Sample(f"image {image_id}", ids, None, caption["caption"], problem=str(error))
        return Sample(f"image {image_id}", ids, image, caption["caption"])

    def image_size(self, sample: Sample) -> tuple[int, int]:
        return self.masks.image_size(sample.ids["image_id"])

    def target(self, sample: Sample) -> GroundedTarget:
        image_id = sample.ids["image_id"]
        size = self.image_size(sample)
        masks = tuple(self.masks.mask(annotation_id, size) for annotation_id in self.by_image.get(image_id, []))
        phrases = self.captions[image_id].get("labels", [])
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise DatasetError(f"{self.captions_file.name} image {image_id}: 'labels' must be a list of phrases")
        return GroundedTarget(masks, tuple(phrases))  # counts may differ: scored as GLaMM does (tasks.Grounded)


class GranDfTrain(EvalDataset):
    """GranDf's training split in GLaMM's layout (see the module's text): one sample per record, keyed by its index
    and file name; a record without a file name or caption text fails alone."""

    name = "grandf"
    task = GROUNDED
    splits = ("train",)

    def __init__(self, root: str | Path, split: str = "train", image_root: str | Path | None = None):
        super().__init__(split)
        self.file = Path(root) / "annotations" / "train" / TRAIN_FILE
        records = read_json(self.file, "GranDf training file")
        if not isinstance(records, list):
            raise DatasetError(f"{self.file}: not a GranDf training file (a list of records)")
        self.records = records
        self.image_root = Path(image_root) if image_root else Path(root) / "GranDf_HA_images" / "train"

    def samples(self) -> list[Sample]:
        return [self._sample(index, record) for index, record in enumerate(self.records)]

    def _sample(self, index: int, record) -> Sample:
        where = f"{self.file.name} record {index}"
        if not isinstance(record, dict) or not isinstance(record.get("caption"), str):
            return Sample(f"record {index}", {"index": index}, None, "", problem=f"{where}: no 'caption' text")
        caption = record["caption"].strip('"').strip()
        file_name = record.get("file_name")
        if not isinstance(file_name, str):
            return Sample(f"record {index}", {"index": index}, None, caption, problem=f"{where}: no 'file_name'")
        try:
            image = image_path(self.image_root, file_name)
        except AnywordError as error:
            return Sample(f"record {index}", {"index": index}, None, caption, problem=f"{where}: {error}")
        return Sample(f"record {index} {file_name}", {"index": index, "file_name": file_name}, image, caption)

    def target(self, sample: Sample) -> GroundedTarget:
        where = f"{self.file.name} record {sample.ids['index']}"
        groundings = self.records[sample.ids["index"]].get("groundings")
        if not isinstance(groundings, dict):
            raise DatasetError(f"{where}: 'groundings' must be an object of phrases")
        size = self.image_size(sample)
        phrases, masks = [], []
        for phrase, grounding in groundings.items():
            rles = grounding.get("rle_masks") if isinstance(grounding, dict) else None
            if not isinstance(rles, list):
                raise DatasetError(f"{where} phrase {phrase!r}: 'rle_masks' must be a list")
            try:
                merged = np.zeros(size, dtype=bool)
                for rle in rles:
                    merged |= decode_rle(rle, size)
            except RleError as error:
                raise DatasetError(f"{where} phrase {phrase!r}: {error}") from None
            phrases.append(phrase)
            masks.append(merged)
        return GroundedTarget(tuple(masks), tuple(phrases))

    def describe(self) -> dict:
        return {**super().describe(), "file": str(self.file), "image_root": str(self.image_root)}
