"""gRefCOCO and the RefCOCO family in their official layouts (``grefer.py``, ``refer.py``).

gRefCOCO: ``ROOT/grefcoco/grefs(unc).json`` (or ``.p``) + ``ROOT/grefcoco/instances.json``; a ref's ``ann_id`` is a
list, ``[-1]`` meaning "no target"; the masks of several targets are merged and crowd annotations skipped, as
``G_REFER.getMaskByRef(merge=True)`` does. RefCOCO / RefCOCO+ / RefCOCOg: ``ROOT/<name>/refs(<split_by>).p`` +
``ROOT/<name>/instances.json``; the refs pickle is read with :func:`~anyword.evaluation.safe_pickle.load_plain_pickle`
(plain data only). One sample per sentence, its text the sentence as written
(``raw``); images under ``ROOT/images/train2014`` unless ``image_root`` says otherwise (the ReLA / LAVT arrangement).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyword.errors import AnywordError
from anyword.evaluation.base import REFERRING, EvalDataset, ReferringTarget, Sample, image_path
from anyword.evaluation.coco import CocoIndex, DatasetError, is_id, read_json
from anyword.evaluation.safe_pickle import load_plain_pickle

NO_TARGET = -1


class ReferringDataset(EvalDataset):
    """Refs + COCO instances: the shared part of gRefCOCO and the RefCOCO family. A ref, sentence or image record
    with a missing or malformed field makes its samples fail with a message naming the file, the record and the
    field; the other samples run."""

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
        if not isinstance(refs, list) or not all(isinstance(ref, dict) and is_id(ref.get("ref_id")) for ref in refs):
            raise DatasetError(f"{folder}: the refs file is not a list of refs with a ref_id each")
        return refs

    @property
    def refs_name(self) -> str:
        return f"refs({self.split_by})"

    def samples(self) -> list[Sample]:
        return [s for ref in self.refs.values() if ref.get("split") == self.split for s in self._ref_samples(ref)]

    def _ref_samples(self, ref: dict) -> list[Sample]:
        """One sample per sentence of ``ref`` (a failing one, naming the field, where the record is malformed)."""
        where = f"{self.refs_name} ref {ref['ref_id']}"
        image_id = ref.get("image_id")
        ids = {"ref_id": ref["ref_id"], "image_id": image_id}
        sentences = ref.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            return [Sample(f"ref {ref['ref_id']}", ids, None, "", problem=f"{where}: no 'sentences' list")]
        try:
            image, problem = image_path(self.image_root, self.coco.file_name(image_id)), None
        except AnywordError as error:
            image, problem = None, f"{where}: {error}"
        samples = []
        for index, sentence in enumerate(sentences):
            if (
                not isinstance(sentence, dict)
                or not is_id(sentence.get("sent_id"))
                or not isinstance(sentence.get("sent"), str)
            ):
                reason = f"{where} sentence {index}: needs a 'sent_id' and a 'sent' text"
                samples.append(Sample(f"ref {ref['ref_id']} sentence {index}", ids, None, "", problem=reason))
                continue
            sent_id = sentence["sent_id"]
            sample_ids = {"sent_id": sent_id, **ids}
            samples.append(Sample(f"sent {sent_id}", sample_ids, image, _text(sentence), problem=problem))
        return samples

    no_wordings = None  # a ref's sentences word one target

    def wording_group(self, sample: Sample) -> str:
        return f"ref {sample.ids['ref_id']}"

    def image_size(self, sample: Sample) -> tuple[int, int]:
        return self.coco.image_size(self.refs[sample.ids["ref_id"]].get("image_id"))

    def target(self, sample: Sample) -> ReferringTarget:
        return self.target_at(sample, self.image_size(sample))

    def target_at(self, sample: Sample, size: tuple[int, int]) -> ReferringTarget:
        """The merged mask on the image resized to ``size`` (polygons rasterised there, as ReLA's mapper does)."""
        ref = self.refs[sample.ids["ref_id"]]
        image_size = self.image_size(sample)
        annotation_ids = ref.get("ann_id") if isinstance(ref.get("ann_id"), list) else [ref.get("ann_id")]
        if annotation_ids == [NO_TARGET]:
            return ReferringTarget(np.zeros(size, dtype=bool), empty=True)
        merged = np.zeros(size, dtype=bool)
        for annotation_id in annotation_ids:
            if self._skip(self.coco.annotation(annotation_id)):
                continue
            merged |= self.coco.mask(annotation_id, image_size, at=None if size == image_size else size)
        return ReferringTarget(merged, empty=False)

    def _skip(self, annotation: dict) -> bool:
        return False

    def describe(self) -> dict:
        return {**super().describe(), "refs": self.refs_name, "image_root": str(self.image_root)}


def _text(sentence: dict) -> str:
    """What the model reads: the sentence as written (``raw``, as ReLA's and LAVT's loaders feed it), else the
    lower-cased tokenised ``sent`` when a file has no ``raw``."""
    raw = sentence.get("raw")
    return raw if isinstance(raw, str) and raw.strip() else sentence["sent"]


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
