"""The synthetic shapes worlds as evaluation datasets (grounded task, GranDf's metrics): scene ``i`` of a split
is sample ``scene i``, rendered at ``image_size`` pixels; its phrases' visible masks are the truth (world 2: every
named whole and part)."""

from __future__ import annotations

import numpy as np

from anyword.evaluation.base import GROUNDED, REFERRING, EvalDataset, GroundedTarget, ReferringTarget, Sample
from anyword.shapes.parts import PARTS_DATASET
from anyword.shapes.scenes import NOVEL_NOUNS, SHAPES, SHAPES_DATASET, SPLITS, make_scene, render
from anyword.shapes.worlds import get_world


class _ShapesWorld(EvalDataset):
    """Scenes ``0 .. count-1`` of a split, rendered at ``image_size`` pixels."""

    def __init__(self, split: str, count: int, image_size: int = 128):
        super().__init__(split)
        self.count, self.side = count, image_size

    def image(self, sample: Sample) -> np.ndarray:
        return render(make_scene(self.split, sample.ids["scene"]), self.side)[0]

    def image_size(self, sample: Sample) -> tuple[int, int]:  # every scene has the one size
        return self.side, self.side

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.side}


class ShapesScenes(_ShapesWorld):
    """Scenes of a world; with ``wordings`` (world 1), each scene in every paraphrase of
    :data:`~anyword.shapes.wordings.WORDINGS` (samples ``scene i wording w``, grouped by scene for ``--stability``)."""

    name = SHAPES_DATASET
    task = GROUNDED
    splits = SPLITS

    def __init__(self, split: str, count: int, image_size: int = 128, wordings: bool = False):
        super().__init__(split, count, image_size)
        self.wordings = wordings
        if wordings:
            from anyword.shapes.wordings import WORDINGS

            self.no_wordings, self.samples_per_item = None, len(WORDINGS)

    def wording_group(self, sample: Sample) -> str | None:
        return f"scene {sample.ids['scene']}" if self.wordings else None

    def describe(self) -> dict:
        return {**super().describe(), "wordings": self.wordings}

    def image(self, sample: Sample) -> np.ndarray:
        world = get_world(self.name)
        return world.render(world.make_scene(self.split, sample.ids["scene"]), self.side)[0]

    def samples(self) -> list[Sample]:
        world = get_world(self.name)
        if not self.wordings:
            return [
                Sample(key=f"scene {i}", ids={"scene": i}, image=None, caption=world.make_scene(self.split, i).caption)
                for i in range(self.count)
            ]
        from anyword.shapes.wordings import paraphrases

        return [
            Sample(key=f"scene {i} wording {w}", ids={"scene": i, "wording": w}, image=None, caption=caption)
            for i in range(self.count)
            for w, (caption, _) in enumerate(paraphrases(world.make_scene(self.split, i)))
        ]

    def target(self, sample: Sample) -> GroundedTarget:
        world = get_world(self.name)
        scene = world.make_scene(self.split, sample.ids["scene"])
        _, masks = world.render(scene, self.side)
        phrases = scene.phrases
        if "wording" in sample.ids:
            from anyword.shapes.wordings import paraphrases

            phrases = paraphrases(scene)[sample.ids["wording"]][1]
        return GroundedTarget(tuple(masks[p.shape_index] for p in phrases), tuple(p.text for p in phrases))


class PartsScenes(ShapesScenes):
    """Shapes world 2: objects with named parts."""

    name = PARTS_DATASET


class ShapesReferring(_ShapesWorld):
    """Referring expressions in the shapes world, half of them naming nothing: scene ``i`` gives ``scene i
    present`` (its first phrase; the truth is that shape's mask) and ``scene i absent`` (a shape the scene does not
    hold, in the split's vocabulary; no target). Scored with gRefCOCO's metrics; the no-target rule is chosen on
    these (validation scenes 10000+)."""

    name = "shapes-referring"
    task = REFERRING
    splits = ("seen", "novel")
    metric_set = "grefcoco"

    def samples(self) -> list[Sample]:
        samples = []
        for i in range(self.count):
            scene = make_scene(self.split, i)
            nouns = [NOVEL_NOUNS[s] if self.split == "novel" else s for s in SHAPES]
            named = {p.noun for p in scene.phrases}
            absent = [noun for noun in nouns if noun not in named][i % (len(nouns) - len(named))]
            for kind, caption in (("present", scene.phrases[0].text), ("absent", f"a {absent}")):
                samples.append(Sample(key=f"scene {i} {kind}", ids={"scene": i}, image=None, caption=caption))
        return samples

    def target(self, sample: Sample) -> ReferringTarget:
        scene = make_scene(self.split, sample.ids["scene"])
        _, masks = render(scene, self.side)
        if sample.key.endswith("absent"):
            return ReferringTarget(np.zeros_like(masks[0]), empty=True)
        return ReferringTarget(masks[scene.phrases[0].shape_index], empty=False)
