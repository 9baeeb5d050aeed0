"""Small datasets in the official layouts, written by the tests from shapes scenes: gRefCOCO, RefCOCO, GranDf and
PASCAL-Context 59. Images are non-square (96 x 128) JPEGs; masks are stored as polygons, compressed RLE and
uncompressed RLE; gRefCOCO has a multi-target ref with a crowd annotation, a no-target ref and a train ref."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from anyword.rle import encode
from anyword.shapes.scenes import SHAPES, make_scene, render

TOP, HEIGHT, WIDTH = 16, 96, 128


@dataclass
class Fixture:
    root: Path
    masks: dict = field(default_factory=dict)  # annotation id -> bool (H, W)
    truth: dict = field(default_factory=dict)  # sample key -> what the loader must return


def scene_image(index: int):
    """Scene ``index`` of ``seen`` cropped to 96 x 128; its caption phrases and their masks (non-empty ones)."""
    scene = make_scene("seen", index)
    image, masks = render(scene, WIDTH)
    crop = slice(TOP, TOP + HEIGHT)
    phrases = [(p, masks[p.shape_index][crop]) for p in scene.phrases if masks[p.shape_index][crop].any()]
    return scene, image[crop], phrases


def multi_shape_scenes(count: int) -> list[int]:
    found, index = [], 0
    while len(found) < count:
        if len(scene_image(index)[2]) >= 2:
            found.append(index)
        index += 1
    return found


def polygon(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _coco(fixture: Fixture, image_dir: Path, scenes: list[int]):
    """COCO images and one annotation per visible phrase, cycling polygon / RLE / uncompressed RLE."""
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, phrases = [], [], {}
    formats = ("polygon", "rle", "raw")
    for image_id, index in enumerate(scenes, 1):
        _, image, visible = scene_image(index)
        name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(image).save(image_dir / name, quality=95)
        images.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for phrase, mask in visible:
            annotation_id = 100 * image_id + len([a for a in annotations if a["image_id"] == image_id])
            kind = formats[annotation_id % 3]
            if kind == "polygon":
                segmentation = polygon(mask)
                from anyword.evaluation.coco import segmentation_mask

                mask = segmentation_mask(segmentation, HEIGHT, WIDTH)  # what a polygon rasterises to
            else:
                segmentation = encode(mask) if kind == "rle" else uncompressed_rle(mask)
            annotations.append(
                {"id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                 "segmentation": segmentation, "area": float(mask.sum()), "bbox": [0, 0, 1, 1]}
            )  # fmt: skip
            fixture.masks[annotation_id] = mask
            phrases[annotation_id] = phrase.text
    return images, annotations, phrases


def write_grefcoco(root: Path) -> Fixture:
    fixture = Fixture(root)
    scenes = multi_shape_scenes(3)
    images, annotations, phrases = _coco(fixture, root / "images" / "train2014", scenes)
    crowd = np.zeros((HEIGHT, WIDTH), dtype=bool)
    crowd[:10, :10] = True
    annotations.append(
        {"id": 999, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": encode(crowd), "area": 100.0,
         "bbox": [0, 0, 10, 10]}
    )  # fmt: skip
    first = [a["id"] for a in annotations if a["image_id"] == 1 and a["id"] != 999]
    third = [a["id"] for a in annotations if a["image_id"] == 3]
    absent = next(s for s in SHAPES if all(s not in phrases[a] for a in first))
    refs = [
        {"ref_id": 10, "image_id": 1, "ann_id": [first[0]], "category_id": [1], "split": "val",
         "sentences": [{"sent_id": 100, "sent": phrases[first[0]]},
                       {"sent_id": 101, "sent": "the " + phrases[first[0]],
                        "raw": "The " + phrases[first[0]] + "."}]},
        {"ref_id": 11, "image_id": 1, "ann_id": [first[0], first[1], 999], "category_id": [1], "split": "val",
         "sentences": [{"sent_id": 110, "sent": f"{phrases[first[0]]} and {phrases[first[1]]}"}]},
        {"ref_id": 12, "image_id": 1, "ann_id": [-1], "category_id": [-1], "split": "val", "no_target": True,
         "sentences": [{"sent_id": 120, "sent": f"a {absent}"}]},
        {"ref_id": 13, "image_id": 3, "ann_id": [third[0]], "category_id": [1], "split": "train",
         "sentences": [{"sent_id": 130, "sent": phrases[third[0]]}]},
        {"ref_id": 14, "image_id": 2, "ann_id": [a["id"] for a in annotations if a["image_id"] == 2][:1],
         "category_id": [1], "split": "val", "sentences": [{"sent_id": 140, "sent": "the shape"}]},
    ]  # fmt: skip
    folder = root / "grefcoco"
    folder.mkdir(parents=True)
    (folder / "grefs(unc).json").write_text(json.dumps(refs))
    (folder / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]})
    )
    fixture.truth = {
        "sent 100": fixture.masks[first[0]],
        "sent 101": fixture.masks[first[0]],
        "sent 110": fixture.masks[first[0]] | fixture.masks[first[1]],  # crowd 999 left out
        "sent 120": None,
        "sent 140": fixture.masks[refs[4]["ann_id"][0]],
    }
    return fixture


def write_refcoco(
    root: Path, name: str = "refcoco", split_by: str = "unc", splits=("val", "testA"), wordings: int = 1
) -> Fixture:
    """RefCOCO's layout; each ref has ``wordings`` sentences (sent ids ``1000 + i`` for one; ``1000 + 10 i + k``
    for several: the phrase, "the" + phrase, "this" + phrase, ...)."""
    fixture = Fixture(root)
    images, annotations, phrases = _coco(fixture, root / "images" / "train2014", multi_shape_scenes(2))
    openers = ("", "the ", "this ", "that ")

    def sentences(i: int, phrase: str) -> list[dict]:
        ids = [1000 + i] if wordings == 1 else [1000 + 10 * i + k for k in range(wordings)]
        return [{"sent_id": s, "sent": openers[k] + phrase, "tokens": []} for k, s in enumerate(ids)]

    refs = [
        {"ref_id": i, "image_id": a["image_id"], "ann_id": a["id"], "category_id": 1, "split": splits[i % 2],
         "sentences": sentences(i, phrases[a["id"]])}
        for i, a in enumerate(annotations)
    ]  # fmt: skip
    for ref in refs:
        ref["sent_ids"] = [s["sent_id"] for s in ref["sentences"]]
    folder = root / name
    folder.mkdir(parents=True)
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    fixture.truth = {f"sent {s['sent_id']}": (r["split"], fixture.masks[r["ann_id"]])
                     for r in refs for s in r["sentences"]}  # fmt: skip
    return fixture


def write_grandf(root: Path, split: str = "val") -> Fixture:
    fixture = Fixture(root)
    image_dir = root / "GranDf_HA_images" / "val_test"
    image_dir.mkdir(parents=True)
    images, annotations, captions = [], [], []
    for number, index in enumerate(multi_shape_scenes(2)):
        scene, image, visible = scene_image(index)
        image_id = f"sa_{number}"
        Image.fromarray(image).save(image_dir / f"{image_id}.jpg", quality=95)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": HEIGHT, "width": WIDTH})
        for _, mask in visible:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "segmentation": encode(mask), "area": float(mask.sum()), "bbox": [0, 0, 1, 1],
                                "iscrowd": 0})  # fmt: skip
        labels = [p.text for p, _ in visible]
        captions.append({"id": number + 1, "image_id": image_id, "caption": scene.caption, "labels": labels})
        fixture.truth[f"image {image_id}"] = (scene.caption, labels, [m for _, m in visible])
    folder = root / "annotations" / "val_test"
    folder.mkdir(parents=True)
    (folder / f"{split}_gcg_coco_mask_gt.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]})
    )
    (folder / f"{split}_gcg_coco_caption_gt.json").write_text(json.dumps({"images": images, "annotations": captions}))
    return fixture


def write_pc59(root: Path) -> Fixture:
    """Two images; a shape of class k is drawn with label k + 1 (file values), the rest is background (0)."""
    fixture = Fixture(root)
    voc = root / "VOCdevkit" / "VOC2010"
    for folder in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (voc / folder).mkdir(parents=True)
    ids = []
    for number, index in enumerate(multi_shape_scenes(2)):
        _, image, visible = scene_image(index)
        image_id = f"2008_00000{number}"
        labels = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        expected = np.full((HEIGHT, WIDTH), 255, dtype=np.int64)
        for k, (_, mask) in enumerate(visible):
            class_index = 5 * k + 2 * number  # any of the 59
            labels[mask], expected[mask] = class_index + 1, class_index
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        Image.fromarray(labels, mode="L").save(voc / "SegmentationClassContext" / f"{image_id}.png")
        fixture.truth[f"image {image_id}"] = expected
        ids.append(image_id)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids) + "\n")
    return fixture
