"""Point prompts on constructed maps with known regions (non-square images): R1/R2 counts, positions, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from anyword.parsing import Concept, Mention
from anyword.prompts import PromptSet, PromptSettings, largest_region, make_prompts, sample_points

H, W = 60, 150  # non-square: rows, columns


def blob(y0, y1, x0, x1, base=0.0):
    heatmap = np.full((H, W), base, dtype=np.float32)
    heatmap[y0:y1, x0:x1] = 1.0
    return heatmap


def concept(cid, noun, adjectives=()):
    return Concept(
        id=cid,
        phrase=" ".join([*adjectives, noun]),
        noun=noun,
        adjectives=tuple(adjectives),
        mentions=(Mention(span=(0, 1), noun=(0, 1)),),
    )


# Three objects in different places; the adjective "red" of the car lights the car's top half.
MAPS = {0: blob(5, 25, 100, 140), 1: blob(35, 55, 10, 40), 2: blob(30, 50, 60, 90)}
ADJECTIVES = {(0, "red"): blob(5, 15, 100, 140)}
CONCEPTS = [concept(0, "car", ("red",)), concept(1, "dog"), concept(2, "tree")]


def prompts(settings=PromptSettings(), concepts=CONCEPTS):
    return make_prompts(concepts, MAPS.__getitem__, lambda cid, adj: ADJECTIVES.get((cid, adj)), settings)


def inside(point, heatmap):
    return heatmap[int(point.y), int(point.x)] >= 0.7


def test_points_are_xy_in_image_pixels_inside_their_regions():
    result = prompts()
    assert (result.width, result.height) == (W, H)
    for cid, heatmap in MAPS.items():
        positives = [p for p in result.for_concept(cid) if p.label == 1]
        assert positives and all(inside(p, heatmap) for p in positives)
        assert all(0 <= p.x < W and 0 <= p.y < H for p in positives)
    # x is the column: the car lies right of x = 100 although the image is only 60 rows high.
    car_points = [p for p in result.for_concept(0) if p.source == "noun"]
    assert all(p.x >= 100 for p in car_points)
    red = [p for p in result.for_concept(0) if p.source == "adjective:red"]
    assert len(red) == 1 and inside(red[0], ADJECTIVES[(0, "red")])


def test_r1_counts():
    result = prompts()
    sources = {cid: [p.source for p in result.for_concept(cid) if p.label == 1] for cid in MAPS}
    assert sorted(sources[0]) == ["adjective:red", "noun"]  # noun + its adjective
    assert sources[1] == ["noun", "noun"] and sources[2] == ["noun", "noun"]  # no adjective: two noun points
    without = prompts(PromptSettings(r1=False))
    assert all([p.source for p in without.for_concept(cid) if p.label == 1] == ["noun"] for cid in MAPS)
    more = prompts(PromptSettings(r1=False, noun_points=3))
    assert all(sum(p.label for p in more.for_concept(cid)) == 3 for cid in MAPS)


def test_r2_negatives_are_the_other_concepts_positives():
    result = prompts()
    for cid in MAPS:
        negatives = [p for p in result.for_concept(cid) if p.label == 0]
        others = [p for other in MAPS if other != cid for p in result.for_concept(other) if p.label == 1]
        assert sorted((p.x, p.y) for p in negatives) == sorted((p.x, p.y) for p in others)
        assert all(not inside(p, MAPS[cid]) for p in negatives)  # outside the target here
        assert all(p.source.startswith("negative:") for p in negatives)
    assert all(p.label == 1 for cid in MAPS for p in prompts(PromptSettings(r2=False)).for_concept(cid))


def test_lone_concept_gets_one_to_three_background_points():
    counts = set()
    for seed in range(12):
        result = prompts(PromptSettings(seed=seed), concepts=[CONCEPTS[1]])
        background = [p for p in result.for_concept(1) if p.label == 0]
        assert all(p.source == "background" for p in background)
        assert all(MAPS[1][int(p.y), int(p.x)] < 0.35 for p in background)
        counts.add(len(background))
    assert counts <= {1, 2, 3} and len(counts) > 1


def test_seeds_make_sampling_reproducible():
    assert prompts(PromptSettings(seed=3)).points == prompts(PromptSettings(seed=3)).points
    assert prompts(PromptSettings(seed=3)).points != prompts(PromptSettings(seed=4)).points


def test_threshold_and_largest_region():
    heatmap = np.zeros((H, W), dtype=np.float32)
    heatmap[10:20, 10:20] = 0.9  # 100 px
    heatmap[30:50, 100:130] = 0.8  # 600 px: the largest region
    heatmap[40:45, 40:45] = 1.0  # the maximum, but small
    region = largest_region(heatmap, 0.7)
    assert region.sum() == 600 and region[35, 110]
    assert largest_region(heatmap, 0.95).sum() == 25
    flat = largest_region(np.zeros((H, W), dtype=np.float32), 0.7)
    assert flat.sum() == 1  # a flat map still yields one point


def test_peak_sampling_is_deterministic_and_spread():
    heatmap = blob(10, 50, 20, 130) * np.linspace(0.8, 1.0, W, dtype=np.float32)[None]
    region = largest_region(heatmap, 0.7)
    rng = np.random.default_rng(0)
    first = sample_points(heatmap, region, 3, "peak", rng)
    assert first == sample_points(heatmap, region, 3, "peak", np.random.default_rng(99))
    assert first[0][0] == 129  # the hottest column
    xs = sorted(x for x, _ in first)
    assert xs[-1] - xs[0] > 30  # later points move away from the first


def test_editing_points():
    result = prompts(PromptSettings(r2=False))
    edited = result.add_point(1, 12.0, 40.0, 0)
    assert edited.for_concept(1)[-1].source == "user" and edited.for_concept(1)[-1].label == 0
    assert result.for_concept(1) != edited.for_concept(1)  # the original is unchanged
    assert edited.for_concept(1)[:-1] == result.for_concept(1)  # appended after the sampled points
    assert edited.clear(1).for_concept(1) == () and edited.clear(1).for_concept(0) == edited.for_concept(0)
    with pytest.raises(ValueError, match="outside"):
        result.add_point(1, W, 10)
    coords, labels = edited.arrays(1)
    assert coords.shape == (len(labels), 2) and coords.dtype == np.float32 and labels.dtype == np.int32
    assert PromptSet.from_dict(edited.to_dict(), W, H).points == edited.points


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 1.0}, {"threshold": 0.0}, {"sampling": "grid"}, {"noun_points": 0}, {"background_points": (3, 1)}],
)
def test_settings_are_validated(kwargs):
    with pytest.raises(ValueError):
        PromptSettings(**kwargs)


def test_switching_r1_or_r2_never_moves_the_other_points():
    def positions(settings, source):
        return {cid: [(p.x, p.y) for p in prompts(settings).for_concept(cid) if p.source == source][:1] for cid in MAPS}

    nouns = positions(PromptSettings(r1=False, r2=False), "noun")
    assert nouns == positions(PromptSettings(r1=True, r2=False), "noun")  # R1 adds points, keeps the first
    assert nouns == positions(PromptSettings(r1=True, r2=True), "noun")
    assert nouns != positions(PromptSettings(r1=False, r2=False, seed=1), "noun")  # the seed still matters


def test_adjective_region_can_follow_its_noun():
    # "red" lights two objects: a bigger red blob far from the car and a smaller one on the car.
    red = blob(35, 55, 10, 60)
    red[5:12, 100:120] = 1.0
    maps = {(0, "red"): red}
    on_car = MAPS[0]
    for mode, expected_on_car in (("largest", False), ("noun_support", True)):
        result = make_prompts(
            CONCEPTS,
            MAPS.__getitem__,
            lambda cid, adj: maps.get((cid, adj)),
            PromptSettings(adjective_region=mode),
        )
        (point,) = [p for p in result.for_concept(0) if p.source == "adjective:red"]
        assert inside(point, red) and inside(point, on_car) == expected_on_car, mode
    with pytest.raises(ValueError, match="adjective_region"):
        PromptSettings(adjective_region="nearest")
