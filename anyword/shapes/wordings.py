"""Paraphrases of a world-1 scene for the stability study (``anyword eval --dataset shapes --stability``): the same
shapes described with training words and with their novel synonyms (circle / disk, red / crimson), in the three
caption styles. Every wording names every shape, in the scene's shape order, so phrase ``k`` of each wording is
shape ``k``."""

from __future__ import annotations

import numpy as np

from anyword.shapes.scenes import NOVEL_COLOURS, NOVEL_NOUNS, Phrase, Scene, caption_from_words

# (vocabulary, style) of each wording; "relation" needs two shapes and falls back to "description" for one.
WORDINGS = (("seen", "list"), ("novel", "list"), ("seen", "description"), ("novel", "relation"))


def paraphrases(scene: Scene) -> list[tuple[str, tuple[Phrase, ...]]]:
    """``(caption, phrases)`` per entry of :data:`WORDINGS`, a pure function of the scene."""
    result = []
    for number, (vocabulary, style) in enumerate(WORDINGS):
        words = []
        for shape in scene.shapes:
            noun, colour = shape.kind, shape.colour
            if vocabulary == "novel":
                noun, colour = NOVEL_NOUNS[noun], NOVEL_COLOURS[colour]
            words.append(((shape.size, colour) if shape.size else (colour,), noun))
        chosen = style if style != "relation" or len(scene.shapes) > 1 else "description"
        rng = np.random.default_rng([scene.index, number, 17])
        caption, phrases = caption_from_words(scene.shapes, words, chosen, rng)
        result.append((caption, tuple(phrases)))
    return result
