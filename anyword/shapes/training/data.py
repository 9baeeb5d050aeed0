"""Training batches of the shapes model: rendered scenes, their captions and the grounding targets (where each
caption word's attention belongs). Batch ``step`` is a pure function of ``step``."""

from __future__ import annotations

import numpy as np
import torch

from anyword.shapes.scenes import SHAPES_DATASET, true_concepts
from anyword.shapes.worlds import get_world
from anyword.tokens import align_tokens

# Caption words that name a shape, per scene, that the grounding loss can supervise (4 shapes x 2 mentions x 3
# words at most: 24).
GROUNDING_SLOTS = 32
# How a caption names an absent shape kind (``absent_words`` in :func:`batch`).
ABSENT_FORMS = ("{noun}", "a {noun}", "A {noun}.")
SIDE = 64  # the model's input size (pixels)


def batch(
    step: int, size: int, tokenizer, same_colour: float = 0.0, absent_words: float = 0.0, world: str = SHAPES_DATASET
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training scenes ``step*B ... +B-1`` of ``world`` (a key of :data:`~anyword.shapes.worlds.WORLDS`): images
    ``(B, 3, 64, 64)`` in [-1, 1], caption ids ``(B, 77)`` and the
    grounding targets of :func:`grounding_targets` (positions ``(B, K)``, masks ``(B, K, 64, 64)``, absent
    ``(B, K)``).

    ``absent_words``: probability that a caption also names a shape kind the scene lacks (one of
    :data:`ABSENT_FORMS` appended, drawn from the scene's own stream): real captions name things the image does not
    show, and the grounding targets send such a word's attention to the background.
    """
    chosen = get_world(world)
    extra = {"same_colour": same_colour} if same_colour else {}  # world 1's option; 0 draws the default scenes
    scenes = [chosen.make_scene("train", i, **extra) for i in range(step * size, step * size + size)]
    captions, absent = [], []
    for scene in scenes:
        draw = np.random.default_rng([scene.index, 91])
        missing = chosen.absent_nouns(scene)
        noun = str(draw.choice(missing)) if draw.random() < absent_words else None
        form = ABSENT_FORMS[int(draw.integers(len(ABSENT_FORMS)))]
        captions.append(f"{scene.caption} {form.format(noun=noun)}" if noun else scene.caption)
        absent.append(noun)
    rendered = [chosen.render(scene, SIDE) for scene in scenes]
    pixels = torch.from_numpy(np.stack([image for image, _ in rendered])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    return pixels, ids, *grounding_targets(captions, scenes, [m for _, m in rendered], absent, tokenizer)


def grounding_targets(
    captions: list[str],
    scenes: list,
    shape_masks: list[list[np.ndarray]],
    absent: list[str | None],
    tokenizer,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each supervised caption token's attention belongs: every token that names a shape (each mention's
    noun, colour and size words) -> that shape's visible mask; the absent noun (if any) -> the background (no
    shape). Positions ``(B, K)`` int64 into the 77-token sequence (0, the start token, marks an unused slot), masks
    ``(B, K, 64, 64)`` bool and absent ``(B, K)`` bool (the slot is a word for what the scene lacks),
    ``K = GROUNDING_SLOTS``."""
    positions = torch.zeros(len(scenes), GROUNDING_SLOTS, dtype=torch.long)
    masks = torch.zeros(len(scenes), GROUNDING_SLOTS, SIDE, SIDE, dtype=torch.bool)
    absent_slots = torch.zeros(len(scenes), GROUNDING_SLOTS, dtype=torch.bool)
    for row, (caption, scene, visible, noun) in enumerate(zip(captions, scenes, shape_masks, absent, strict=True)):
        concepts = true_concepts(scene, caption, (noun,) if noun else ())
        alignment = align_tokens(caption, concepts, tokenizer, max_length=77)
        shape_of = {p.text: p.shape_index for p in scene.phrases}
        background = torch.from_numpy(~np.any(visible, axis=0))
        slot = 0
        for concept in concepts:
            shape = shape_of.get(concept.phrase)
            for position in alignment.for_concept(concept.id).all_positions:
                positions[row, slot] = position
                masks[row, slot] = background if shape is None else torch.from_numpy(visible[shape])
                absent_slots[row, slot] = shape is None
                slot += 1
    return positions, masks, absent_slots


class Batches(torch.utils.data.IterableDataset):
    """Training batches ``first .. last-1`` of ``world`` (each a pure function of its step), for DataLoader
    workers."""

    def __init__(
        self,
        first: int,
        last: int,
        size: int,
        same_colour: float = 0.0,
        absent_words: float = 0.0,
        world: str = SHAPES_DATASET,
    ):
        self.first, self.last, self.size = first, last, size
        self.same_colour, self.absent_words, self.world = same_colour, absent_words, world
        self.tokenizer = None

    def __iter__(self):
        from anyword.tokens import load_tokenizer

        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        self.tokenizer = self.tokenizer or load_tokenizer()
        for step in range(self.first + worker, self.last, workers):
            yield step, *batch(step, self.size, self.tokenizer, self.same_colour, self.absent_words, self.world)
