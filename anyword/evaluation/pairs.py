"""Training pairs for ``anyword adapt`` drawn at random from a dataset's training split: appendix C.1 fine-tunes the
text encoder of Segment Anyword_f on "500 randomly sampled image-text pairs" of each dataset's training set.

The draw is ``random.Random(seed).sample`` over the split's usable samples in the dataset's order, so the same seed
gives the same pairs and another seed other ones. A pair's text is :meth:`EvalDataset.pair_caption` (the caption or
referring sentence as written; PASCAL-Context: the names of the classes its label map holds). Samples whose record
is malformed or whose text is empty are left out and counted. Images the dataset renders instead of reading (the
shapes world) are written as PNG files beside the pairs file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from anyword.errors import AnywordError
from anyword.evaluation.base import EvalDataset, Sample


@dataclass(frozen=True)
class PairDraw:
    """What ``anyword pairs`` drew: the pairs (``{"image", "caption", "key"}``), how many samples the split
    offered, and which were left out with the reason."""

    pairs: list[dict]
    candidates: int
    left_out: list[dict]


def draw_pairs(dataset: EvalDataset, n: int, seed: int) -> tuple[list[Sample], int, list[dict]]:
    """``n`` samples drawn at random (seeded) from the split's samples whose records are usable; with fewer, all of
    them in a seeded random order. Also the number of usable samples and the unusable ones."""
    samples = dataset.samples()
    usable = [s for s in samples if s.problem is None]
    left_out = [{"key": s.key, "reason": s.problem} for s in samples if s.problem is not None]
    if not usable:
        raise AnywordError(f"{dataset.name} {dataset.split} has no usable sample to draw pairs from")
    return random.Random(seed).sample(usable, min(n, len(usable))), len(usable), left_out


def write_pairs(dataset: EvalDataset, n: int, seed: int, out: Path) -> PairDraw:
    """Draw the pairs and write them to ``out`` (JSONL, image paths as given by the dataset; rendered images in
    ``<out stem>-images/``, named relative to ``out``'s folder)."""
    chosen, candidates, left_out = draw_pairs(dataset, n, seed)
    pairs = []
    for sample in chosen:
        try:
            caption = dataset.pair_caption(sample).strip()
        except AnywordError as error:
            left_out.append({"key": sample.key, "reason": str(error)})
            continue
        if not caption:
            left_out.append({"key": sample.key, "reason": "no text (no class of the 59 in its label map)"})
            continue
        image = str(sample.image) if sample.image is not None else _rendered(dataset, sample, out)
        pairs.append({"image": image, "caption": caption, "key": sample.key})
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp")
    staging.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    staging.replace(out)
    return PairDraw(pairs, candidates, left_out)


def _rendered(dataset: EvalDataset, sample: Sample, out: Path) -> str:
    from PIL import Image

    folder = out.with_name(f"{out.stem}-images")
    folder.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() else "-" for c in sample.key) + ".png"
    Image.fromarray(dataset.image(sample)).save(folder / name)
    return f"{folder.name}/{name}"
