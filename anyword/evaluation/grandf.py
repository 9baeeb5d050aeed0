"""GranDf's grounded-conversation evaluation set in GLaMM's layout (``eval/gcg/evaluate.py``):
``ROOT/annotations/val_test/{split}_gcg_coco_mask_gt.json`` (COCO: images and one RLE annotation per phrase) and
``{split}_gcg_coco_caption_gt.json`` (one annotation per image: ``caption`` and ``labels``, the phrases, in the
order of the image's masks). Images under ``ROOT/GranDf_HA_images/val_test`` unless ``image_root`` says otherwise.
The paper segments with the ground-truth caption (section F), so the caption is the sample's text.
"""

from __future__ import annotations

from pathlib import Path

from anyword.evaluation.base import GROUNDED, EvalDataset, GroundedTarget, Sample, image_path
from anyword.evaluation.coco import CocoIndex, DatasetError, read_json


class GranDf(EvalDataset):
    name = "grandf"
    task = GROUNDED
    splits = ("val", "test")

    def __init__(self, root: str | Path, split: str, image_root: str | Path | None = None):
        super().__init__(split)
        folder = Path(root) / "annotations" / "val_test"
        self.masks = CocoIndex.read(folder / f"{split}_gcg_coco_mask_gt.json")
        captions = read_json(folder / f"{split}_gcg_coco_caption_gt.json", "GranDf caption file")
        self.image_root = Path(image_root) if image_root else Path(root) / "GranDf_HA_images" / "val_test"
        self.captions = {ann["image_id"]: ann for ann in captions.get("annotations", [])}
        self.order = [image["id"] for image in captions.get("images", [])]
        self.by_image: dict = {}
        for annotation_id, annotation in self.masks.annotations.items():
            self.by_image.setdefault(annotation["image_id"], []).append(annotation_id)

    def samples(self) -> list[Sample]:
        samples = []
        for image_id in self.order:
            caption = self.captions.get(image_id)
            image = self.masks.images.get(image_id)
            if caption is None or image is None:
                raise DatasetError(f"GranDf image {image_id} has no caption or no entry in the mask file")
            samples.append(
                Sample(
                    key=f"image {image_id}",
                    ids={"image_id": image_id},
                    image=image_path(self.image_root, image.get("file_name", f"{image_id}.jpg")),
                    caption=caption["caption"],
                )
            )
        return samples

    def target(self, sample: Sample) -> GroundedTarget:
        image_id = sample.ids["image_id"]
        masks = tuple(self.masks.mask(annotation_id) for annotation_id in self.by_image.get(image_id, []))
        phrases = tuple(self.captions[image_id].get("labels", []))
        if len(phrases) != len(masks):
            raise DatasetError(f"GranDf image {image_id}: {len(masks)} masks but {len(phrases)} phrases")
        return GroundedTarget(masks, phrases)
