"""gRefCOCO and the RefCOCO family in their official layouts (``grefer.py``, ``refer.py``).

gRefCOCO: ``ROOT/grefcoco/grefs(unc).json`` (or ``.p``) + ``ROOT/grefcoco/instances.json``; a ref's ``ann_id`` is a
list, ``[-1]`` meaning "no target"; the masks of several targets are merged and crowd annotations skipped, as
``G_REFER.getMaskByRef(merge=True)`` does. RefCOCO / RefCOCO+ / RefCOCOg: ``ROOT/<name>/refs(<split_by>).p`` +
``ROOT/<name>/instances.json``; the refs pickle is read with :func:`~anyword.evaluation.safe_pickle.load_plain_pickle`
(plain data only). One sample per sentence; images under ``ROOT/images/train2014`` unless ``image_root`` says
otherwise (the ReLA / LAVT arrangement).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyword.evaluation.base import REFERRING, EvalDataset, ReferringTarget, Sample, image_path
from anyword.evaluation.coco import CocoIndex, DatasetError, read_json
from anyword.evaluation.safe_pickle import load_plain_pickle

NO_TARGET = -1


class ReferringDataset(EvalDataset):
    """Refs + COCO instances: the shared part of gRefCOCO and the RefCOCO family."""

    task = REFERRING
    folder: str = ""
    split_by: str = "unc"
    metric_set: str = "refcoco"

    def __init__(self, root: str | Path, split: str, image_root: str | Path | None = None):
        super().__init__(split)
        self.root = Path(root)
        folder = self.root / self.folder
        self.coco = CocoIndex.read(folder / "instances.json")
        self.image_root = Path(image_root) if image_root else self.root / "images" / "train2014"
        self.refs = {ref["ref_id"]: ref for ref in self._read_refs(folder)}

    def _read_refs(self, folder: Path) -> list[dict]:
        pickled = folder / f"{self.refs_name}.p"
        refs = load_plain_pickle(pickled) if pickled.is_file() else read_json(folder / f"{self.refs_name}.json", "refs")
        if not isinstance(refs, list) or not all(isinstance(ref, dict) and "ref_id" in ref for ref in refs):
            raise DatasetError(f"{folder}: the refs file is not a list of refs with ref_id")
        return refs

    @property
    def refs_name(self) -> str:
        return f"refs({self.split_by})"

    def samples(self) -> list[Sample]:
        samples = []
        for ref in self.refs.values():
            if ref.get("split") != self.split:
                continue
            image = self.coco.images.get(ref["image_id"])
            if image is None:
                raise DatasetError(f"ref {ref['ref_id']} names image {ref['image_id']}, absent from instances.json")
            for sentence in ref["sentences"]:
                samples.append(
                    Sample(
                        key=f"sent {sentence['sent_id']}",
                        ids={"sent_id": sentence["sent_id"], "ref_id": ref["ref_id"], "image_id": ref["image_id"]},
                        image=image_path(self.image_root, image["file_name"]),
                        caption=sentence["sent"],
                    )
                )
        return samples

    def target(self, sample: Sample) -> ReferringTarget:
        ref = self.refs[sample.ids["ref_id"]]
        height, width = self.coco.image_size(ref["image_id"])
        annotation_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        if annotation_ids == [NO_TARGET]:
            return ReferringTarget(np.zeros((height, width), dtype=bool), empty=True)
        merged = np.zeros((height, width), dtype=bool)
        for annotation_id in annotation_ids:
            if annotation_id not in self.coco.annotations:
                raise DatasetError(f"ref {ref['ref_id']} names annotation {annotation_id}, absent from instances.json")
            if self._skip(self.coco.annotations[annotation_id]):
                continue
            merged |= self.coco.mask(annotation_id)
        return ReferringTarget(merged, empty=False)

    def _skip(self, annotation: dict) -> bool:
        return False

    def describe(self) -> dict:
        return {**super().describe(), "refs": self.refs_name, "image_root": str(self.image_root)}


class GRefCoco(ReferringDataset):
    name = "grefcoco"
    folder = "grefcoco"
    splits = ("train", "val", "testA", "testB")
    metric_set = "grefcoco"

    @property
    def refs_name(self) -> str:
        return f"grefs({self.split_by})"

    def _skip(self, annotation: dict) -> bool:
        return bool(annotation.get("iscrowd", 0))  # G_REFER.getMaskByRef drops crowd annotations


class RefCoco(ReferringDataset):
    name = folder = "refcoco"
    splits = ("train", "val", "testA", "testB")


class RefCocoPlus(ReferringDataset):
    name = folder = "refcoco+"
    splits = ("train", "val", "testA", "testB")


class RefCocoG(ReferringDataset):
    name = folder = "refcocog"
    split_by = "umd"
    splits = ("train", "val", "test")
