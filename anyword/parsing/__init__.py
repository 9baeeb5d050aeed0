"""Caption -> concepts: one interface (:class:`CaptionParser`), two backends (spaCy offline, OpenAI-compatible LLMs)."""

from anyword.parsing.concepts import (
    FRAME_NOUNS,
    LOCATION_NOUNS,
    OBJECT,
    PREDICATE,
    CaptionParser,
    Concept,
    Mention,
    ParseResult,
    ParseSettings,
    check_caption,
    concepts_from_entries,
    find_word,
    normalize_caption,
)
from anyword.parsing.openai_parser import DEFAULT_MODEL, DEFAULT_TIMEOUT_S, OpenAIParser
from anyword.parsing.spacy_parser import SpacyParser, load_spacy_model

PARSERS = ("spacy", "openai")


def make_parser(
    name: str = "spacy",
    settings: ParseSettings = ParseSettings(),
    *,
    model: str = DEFAULT_MODEL,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    nlp=None,
    prompt: str = "concepts",
    spacy_model: str | None = None,
) -> CaptionParser:
    """Build a parser by name: "spacy", or "openai" (which falls back to spaCy and says why); ``prompt`` is the
    LLM's task ("concepts": every thing to segment; "referring": the one referred object, appendix F.1)."""
    if name == "spacy":
        return SpacyParser(settings, nlp=nlp, model=spacy_model)
    if name == "openai":
        return OpenAIParser(
            model=model,
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            settings=settings,
            fallback=SpacyParser(settings, nlp=nlp, model=spacy_model),
            prompt=prompt,
        )
    raise ValueError(f"unknown parser {name!r}: choose one of {', '.join(PARSERS)}")


__all__ = [
    "FRAME_NOUNS",
    "LOCATION_NOUNS",
    "OBJECT",
    "PARSERS",
    "PREDICATE",
    "CaptionParser",
    "Concept",
    "Mention",
    "OpenAIParser",
    "ParseResult",
    "ParseSettings",
    "SpacyParser",
    "check_caption",
    "concepts_from_entries",
    "find_word",
    "load_spacy_model",
    "make_parser",
    "normalize_caption",
]
