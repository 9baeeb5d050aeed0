"""Attention maps -> point prompts, with the paper's linguistic regularisation (section 2.4).

Per concept: threshold its normalised map (0.7), keep the largest connected region, sample a point in it.
R1 (positive adjective clustering): each bound adjective adds a positive point from its own map; a noun without
adjectives gets a second point from its own map. R2 (negative mutual-exclusive binding): the positive points of
every other concept become the target's negatives; a lone concept gets 1-3 background points instead.

Points are plain data: ``(x, y)`` in original-image pixels (column ``x``, row ``y``), label 1 (positive) or 0
(negative), and where they came from ("noun", "adjective:<word>", "negative:<phrase>", "background", "user").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from anyword.parsing.concepts import Concept
from anyword.seeds import MAX_SEED

SAMPLING_MODES = ("random", "peak")
ADJECTIVE_REGIONS = ("largest", "noun_support")
POSITIVE, NEGATIVE = 1, 0


@dataclass(frozen=True)
class PromptSettings:
    """Prompt-sampling settings (each can be switched for the paper's ablation).

    Attributes:
        threshold: fraction of the normalised map kept as the concept's region (0.7 in the paper).
        r1: positive adjective clustering.
        r2: negative mutual-exclusive binding (background points for a lone concept).
        noun_points: points sampled from the noun's own map (with R1 on, a noun without adjectives gets at
            least 2, as in the paper).
        sampling: "random" (uniform in the region, seeded; the paper) or "peak" (deterministic: the map's maximum,
            then points that are both hot and far from those already chosen).
        background_points: ``(low, high)``: a lone concept gets a random number of background points in this range.
        background_max: background points are drawn where the map is below this value (outside the object).
        seed: seed of the random sampling.
        adjective_region: which thresholded region of an adjective's map its point comes from: "largest" (the
            paper's pipeline, as for nouns) or "noun_support" (the region holding most of the noun map's mass, so
            the adjective point clusters with its own noun when the adjective also fits other objects).
    """

    threshold: float = 0.7
    r1: bool = True
    r2: bool = True
    noun_points: int = 1
    sampling: str = "random"
    background_points: tuple[int, int] = (1, 3)
    background_max: float = 0.35
    seed: int = 0
    adjective_region: str = "largest"

    def __post_init__(self):
        if self.adjective_region not in ADJECTIVE_REGIONS:
            raise ValueError(f"adjective_region must be one of {ADJECTIVE_REGIONS}, got {self.adjective_region!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be from 0 to {MAX_SEED}, got {self.seed}")
        if self.noun_points < 1:
            raise ValueError("noun_points must be at least 1")
        low, high = self.background_points
        if not 0 <= low <= high:
            raise ValueError(f"background_points must be (low, high) with 0 <= low <= high, got {(low, high)}")


@dataclass(frozen=True)
class PointPrompt:
    """One point: ``(x, y)`` in original-image pixels, ``label`` 1 positive / 0 negative, and its ``source``."""

    x: float
    y: float
    label: int
    source: str

    def to_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "label": self.label, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping) -> PointPrompt:
        label = int(data["label"])
        if label not in (POSITIVE, NEGATIVE):
            raise ValueError(f"a point's label must be 1 or 0, got {label}")
        return cls(x=float(data["x"]), y=float(data["y"]), label=label, source=str(data.get("source", "user")))


@dataclass(frozen=True)
class PromptSet:
    """The points of every concept of one image, plus each concept's thresholded region (bool ``(H, W)``).

    Immutable: edits return a new set, so an undo history is a list of sets.
    """

    width: int
    height: int
    points: Mapping[int, tuple[PointPrompt, ...]]
    regions: Mapping[int, np.ndarray] = field(default_factory=dict, compare=False)
    settings: PromptSettings = field(default_factory=PromptSettings)

    def for_concept(self, concept_id: int) -> tuple[PointPrompt, ...]:
        return tuple(self.points.get(concept_id, ()))

    def arrays(self, concept_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 2)`` float32 ``(x, y)`` coordinates and ``(N,)`` int32 labels, as SAM takes them."""
        points = self.for_concept(concept_id)
        coords = np.array([[p.x, p.y] for p in points], dtype=np.float32).reshape(-1, 2)
        labels = np.array([p.label for p in points], dtype=np.int32)
        return coords, labels

    def _replace_points(self, concept_id: int, points: Iterable[PointPrompt]) -> PromptSet:
        updated = dict(self.points)
        updated[concept_id] = tuple(points)
        return dataclasses.replace(self, points=updated)

    def add_point(self, concept_id: int, x: float, y: float, label: int = POSITIVE, source: str = "user") -> PromptSet:
        """Add a point (clicks come in image pixels); points outside the image are refused."""
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise ValueError(f"point ({x:g}, {y:g}) lies outside the {self.width}x{self.height} image")
        if label not in (POSITIVE, NEGATIVE):
            raise ValueError(f"label must be 1 (positive) or 0 (negative), got {label}")
        return self._replace_points(concept_id, (*self.for_concept(concept_id), PointPrompt(x, y, label, source)))

    def clear(self, concept_id: int) -> PromptSet:
        return self._replace_points(concept_id, ())

    def to_dict(self) -> dict:
        return {str(cid): [p.to_dict() for p in points] for cid, points in sorted(self.points.items())}

    @classmethod
    def from_dict(cls, data: Mapping, width: int, height: int) -> PromptSet:
        points = {int(cid): tuple(PointPrompt.from_dict(p) for p in pts) for cid, pts in data.items()}
        return cls(width=width, height=height, points=points)


def largest_region(heatmap: np.ndarray, threshold: float, support: np.ndarray | None = None) -> np.ndarray:
    """The largest 8-connected region of ``heatmap >= threshold`` (bool, same shape). If nothing passes the
    threshold (a flat map), the region is the map's maximum pixel.

    With ``support`` (an ``(H, W)`` map), the region is instead the one holding the most ``support`` mass: how an
    adjective's region is chosen next to its noun's map when adjective regions are ``"noun_support"``.
    """
    mask = (heatmap >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        region = np.zeros(heatmap.shape, dtype=bool)
        region[np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)] = True
        return region
    if support is None:
        return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mass = np.bincount(labels.ravel(), weights=support.astype(np.float64).ravel(), minlength=count)
    return labels == 1 + int(np.argmax(mass[1:]))


def sample_points(
    heatmap: np.ndarray, region: np.ndarray, count: int, mode: str, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """``count`` distinct ``(x, y)`` pixels inside ``region`` (fewer if the region is smaller)."""
    rows, cols = np.nonzero(region)
    if rows.size == 0 or count <= 0:
        return []
    count = min(count, rows.size)
    if mode == "random":
        # A prefix of one permutation: asking for more points keeps the first ones.
        chosen = rng.permutation(rows.size)[:count]
        return [(float(cols[i]), float(rows[i])) for i in chosen]
    values = heatmap[rows, cols].astype(np.float64)
    scale = max(np.sqrt(rows.size) / 2.0, 1.0)
    picked: list[int] = [int(np.argmax(values))]
    while len(picked) < count:
        distance = np.min(np.hypot(rows[:, None] - rows[picked][None], cols[:, None] - cols[picked][None]), axis=1)
        score = values * distance / (distance + scale)
        score[picked] = -1.0
        picked.append(int(np.argmax(score)))
    return [(float(cols[i]), float(rows[i])) for i in picked]


def _background_points(
    heatmap: np.ndarray, region: np.ndarray, settings: PromptSettings, rng: np.random.Generator
) -> list[tuple[float, float]]:
    low, high = settings.background_points
    count = int(rng.integers(low, high + 1))
    candidates = (heatmap < settings.background_max) & ~region
    if not candidates.any():
        candidates = ~region
    return sample_points(heatmap, candidates, count, "random", rng)


def _stream(settings: PromptSettings, concept_id: int, word: int) -> np.random.Generator:
    """The random stream of one concept's word (0: noun, i: i-th adjective, -1: background points): switching R1
    or R2 never moves the other points, so ablation rows differ only by the component they switch."""
    return np.random.default_rng([settings.seed, concept_id, word + 1])


def make_prompts(
    concepts: Iterable[Concept],
    concept_map: Callable[[int], np.ndarray],
    adjective_map: Callable[[int, str], np.ndarray | None],
    settings: PromptSettings = PromptSettings(),
) -> PromptSet:
    """Point prompts for every concept.

    Args:
        concepts: the parsed concepts.
        concept_map: ``id -> (H, W)`` float map in [0, 1] (the noun's averaged attention at image size).
        adjective_map: ``(id, adjective) -> (H, W)`` map, or ``None`` when the adjective has no tokens.
        settings: threshold, R1, R2, counts, sampling mode, seed.
    """
    concepts = list(concepts)
    positives: dict[int, list[PointPrompt]] = {}
    regions: dict[int, np.ndarray] = {}
    maps: dict[int, np.ndarray] = {}
    height = width = 0
    for concept in concepts:
        heatmap = concept_map(concept.id)
        height, width = heatmap.shape
        maps[concept.id] = heatmap
        region = largest_region(heatmap, settings.threshold)
        regions[concept.id] = region
        adjective_points: list[PointPrompt] = []
        if settings.r1:
            for word_index, adjective in enumerate(concept.adjectives, start=1):
                adjective_heatmap = adjective_map(concept.id, adjective)
                if adjective_heatmap is None:
                    continue
                support = heatmap if settings.adjective_region == "noun_support" else None
                adjective_region = largest_region(adjective_heatmap, settings.threshold, support)
                rng = _stream(settings, concept.id, word_index)
                for x, y in sample_points(adjective_heatmap, adjective_region, 1, settings.sampling, rng):
                    adjective_points.append(PointPrompt(x, y, POSITIVE, f"adjective:{adjective}"))
        noun_count = settings.noun_points
        if settings.r1 and not adjective_points:
            noun_count = max(noun_count, 2)  # "we sample points twice from the same noun word map"
        noun_points = [
            PointPrompt(x, y, POSITIVE, "noun")
            for x, y in sample_points(heatmap, region, noun_count, settings.sampling, _stream(settings, concept.id, 0))
        ]
        positives[concept.id] = noun_points + adjective_points

    points: dict[int, tuple[PointPrompt, ...]] = {}
    for concept in concepts:
        own = list(positives[concept.id])
        if settings.r2:
            others = [c for c in concepts if c.id != concept.id]
            if others:
                for other in others:
                    own += [PointPrompt(p.x, p.y, NEGATIVE, f"negative:{other.phrase}") for p in positives[other.id]]
            else:
                own += [
                    PointPrompt(x, y, NEGATIVE, "background")
                    for x, y in _background_points(
                        maps[concept.id], regions[concept.id], settings, _stream(settings, concept.id, -1)
                    )
                ]
        points[concept.id] = tuple(own)
    return PromptSet(width=width, height=height, points=points, regions=regions, settings=settings)
