"""The page's choices: what each control shows (words) and what it sends (the library's names), in one place.

Every choice is a ``(label, value)`` pair; handlers and API callers only ever see values ("spacy", "custom",
"sam2", "positive"), so a label can change without touching the logic. Labels that depend on the model (step
budgets) are made from the preset registry, never written down.
"""

from __future__ import annotations

from anyword.parsing import PARSERS as PARSER_NAMES
from anyword.presets import Preset
from anyword.segment import SEGMENTERS
from anyword.settings import FAST, QUALITIES, Overrides

Choice = tuple[str, str]

SPACY, LLM = PARSER_NAMES  # anyword.parsing's "spacy" and "openai"
PARSERS: list[Choice] = [("spaCy (offline)", SPACY), ("GPT-4o / OpenAI-compatible LLM", LLM)]

PRESET_DEFAULT = "preset"  # quality and segmenter: what the chosen preset uses
CUSTOM = "custom"  # quality: the "Custom steps" number
NO_ADAPTER = ""  # the adapter dropdown's "none"

SEGMENTER_CHOICES: list[Choice] = [("preset default", PRESET_DEFAULT)] + [
    (f"{key}: {spec.description}", key) for key, spec in SEGMENTERS.items()
]

POSITIVE, NEGATIVE = "positive", "negative"
MODES: list[Choice] = [("positive (+)", POSITIVE), ("negative (−)", NEGATIVE)]

DROP, ADD, BIND, UNBIND = "drop", "add", "bind", "unbind"
ACTIONS: list[Choice] = [
    ("drop concept", DROP),
    ("add word as concept", ADD),
    ("bind adjective", BIND),
    ("unbind adjective", UNBIND),
]


def quality_choices(preset: Preset) -> list[Choice]:
    """The prompt-learning choices with ``preset``'s own step counts in their labels."""

    def steps(quality: str | None = None) -> int:
        return preset.settings(Overrides(quality=quality)).diffusion.learning.steps

    return [
        (f"preset default ({steps()} steps)", PRESET_DEFAULT),
        (f"paper ({steps('paper')} steps)", "paper"),
        (f"fast: Segment Anyword_f (adapter + {steps(FAST)} steps)", FAST),
        (f"{steps('50-steps')} steps, no adapter", "50-steps"),
        ("custom", CUSTOM),
    ]


QUALITY_VALUES = (PRESET_DEFAULT, *QUALITIES, CUSTOM)


def label_of(choices: list[Choice], value: str) -> str:
    """The words a choice shows for ``value`` (for messages)."""
    return next(label for label, choice in choices if choice == value)
