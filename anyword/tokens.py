"""Concept words -> token positions of the diffusion model's text encoder (Stable Diffusion's CLIP BPE, LDM's BERT
WordPiece).

A word may be several pieces ("kittytoi" -> kitty + toi in CLIP's BPE, "running" -> r + ##un + ##ning in a WordPiece
vocabulary); all its pieces belong to it.
Positions index the encoder's input sequence, so position 0 is the start token and the caption's first piece is
at position 1. The encoder reads ``model_max_length`` tokens (77: start + 75 caption tokens + end).

Window policy: a mention or adjective occurrence whose pieces do not all fit in the window is dropped and reported
in :attr:`TokenAlignment.warnings`; a concept with no noun occurrence inside the window raises
:class:`TokenWindowError` naming it. Nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from anyword.errors import TokenWindowError
from anyword.parsing.concepts import Concept, Span


def packaged_tokenizer_dir() -> Path:
    """The Stable Diffusion v1.x CLIP tokenizer files shipped with the package (see their README for provenance)."""
    return Path(str(resources.files("anyword") / "data" / "clip-tokenizer"))


def load_tokenizer(path: str | Path | None = None):
    """Load a CLIP tokenizer from ``path`` (default: the packaged one). Uses ``from_pretrained``: with transformers
    5, the ``vocab_file=``/``merges_file=`` constructor silently builds a 3-token vocabulary."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path or packaged_tokenizer_dir()))


@dataclass(frozen=True)
class WordTokens:
    """One occurrence of a word: its text, character span, and the token positions of its pieces."""

    word: str
    span: Span
    positions: tuple[int, ...]


@dataclass(frozen=True)
class ConceptTokens:
    """Token positions of a concept's noun (every mention in the window) and of each bound adjective."""

    concept_id: int
    noun: tuple[WordTokens, ...]
    adjectives: tuple[tuple[str, tuple[WordTokens, ...]], ...]

    @property
    def noun_positions(self) -> tuple[int, ...]:
        return tuple(sorted({p for w in self.noun for p in w.positions}))

    def adjective_positions(self, adjective: str) -> tuple[int, ...]:
        for word, occurrences in self.adjectives:
            if word.lower() == adjective.lower():
                return tuple(sorted({p for w in occurrences for p in w.positions}))
        raise KeyError(f"concept {self.concept_id} has no adjective {adjective!r}")

    @property
    def adjective_words(self) -> tuple[str, ...]:
        return tuple(word for word, occurrences in self.adjectives if occurrences)

    @property
    def all_positions(self) -> tuple[int, ...]:
        positions = set(self.noun_positions)
        for word in self.adjective_words:
            positions.update(self.adjective_positions(word))
        return tuple(sorted(positions))


@dataclass(frozen=True)
class TokenAlignment:
    """The caption as the text encoder sees it, and where each concept's words are.

    ``input_ids`` has exactly ``max_length`` ids (start, caption tokens cut to the window, end, padding).
    ``pieces`` are the readable token strings of the kept tokens, start and end included. ``offsets`` are the
    character spans of all the caption's tokens (window or not): caption token ``i`` is at position ``i + 1``.
    """

    caption: str
    input_ids: tuple[int, ...]
    pieces: tuple[str, ...]
    offsets: tuple[Span, ...]
    caption_tokens: int
    window: int
    concepts: tuple[ConceptTokens, ...]
    warnings: tuple[str, ...] = ()

    def for_concept(self, concept_id: int) -> ConceptTokens:
        for concept in self.concepts:
            if concept.concept_id == concept_id:
                return concept
        raise KeyError(f"no concept with id {concept_id}")

    def to_dict(self) -> dict:
        return {
            "caption_tokens": self.caption_tokens,
            "window": self.window,
            "pieces": list(self.pieces),
            "concepts": {
                c.concept_id: {
                    "noun": list(c.noun_positions),
                    "adjectives": {w: list(c.adjective_positions(w)) for w in c.adjective_words},
                }
                for c in self.concepts
            },
            "warnings": list(self.warnings),
        }


def _frame_ids(tokenizer) -> tuple[int, int]:
    """The ids that open and close a sequence: CLIP's start/end of text, BERT's [CLS]/[SEP]."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return start, end


def align_tokens(caption: str, concepts: Sequence[Concept], tokenizer, max_length: int | None = None) -> TokenAlignment:
    """Find the token positions of every concept's noun and adjectives in ``caption``.

    Args:
        caption: the caption the concepts were parsed from (their spans index it).
        concepts: the parsed concepts.
        tokenizer: a fast (offset-tracking) CLIP or BERT tokenizer, e.g. :func:`load_tokenizer`.
        max_length: the encoder's sequence length (``Backbone.text_length``); default ``tokenizer.model_max_length``.

    Raises:
        TokenWindowError: a concept has no noun occurrence inside the window.
    """
    max_length = max_length or tokenizer.model_max_length
    window = max_length - 2
    # The backend tokenizer gives character offsets and, unlike the wrapper, does not warn about long captions.
    encoding = tokenizer.backend_tokenizer.encode(caption, add_special_tokens=False)
    ids, offsets = encoding.ids, encoding.offsets
    kept = ids[:window]
    start, end = _frame_ids(tokenizer)
    input_ids = [start, *kept, end]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    input_ids += [pad] * (max_length - len(input_ids))
    pieces = tuple(tokenizer.convert_ids_to_tokens([start, *kept, end]))

    warnings: list[str] = []

    def locate(word: str, span: Span) -> WordTokens | None:
        # +1: position 0 is the start token.
        indices = [i for i, (start, end) in enumerate(offsets) if start < span[1] and end > span[0]]
        if not indices:
            warnings.append(f"'{word}' at characters {span[0]}-{span[1]} has no token")
            return None
        if indices[-1] >= window:
            warnings.append(
                f"'{word}' at characters {span[0]}-{span[1]} lies past the {window}-token window and is ignored"
            )
            return None
        return WordTokens(word=word, span=span, positions=tuple(i + 1 for i in indices))

    aligned = []
    for concept in concepts:
        nouns = []
        for mention in concept.mentions:
            found = locate(caption[mention.noun[0] : mention.noun[1]], mention.noun)
            if found is not None:
                nouns.append(found)
        if not nouns:
            raise TokenWindowError(
                f"concept {concept.id} ('{concept.phrase}', characters {concept.mentions[0].noun[0]}-"
                f"{concept.mentions[0].noun[1]}) lies past the text encoder's window: the caption needs "
                f"{len(ids)} tokens and the text encoder reads only the first {window}. Shorten the caption or "
                f"mention '{concept.noun}' earlier."
            )
        adjectives = []
        for adjective, spans in concept.adjective_spans().items():
            occurrences = tuple(w for s in spans if (w := locate(adjective, s)) is not None)
            adjectives.append((adjective, occurrences))
        aligned.append(ConceptTokens(concept_id=concept.id, noun=tuple(nouns), adjectives=tuple(adjectives)))

    return TokenAlignment(
        caption=caption,
        input_ids=tuple(input_ids),
        pieces=pieces,
        offsets=tuple(tuple(o) for o in offsets),
        caption_tokens=len(ids),
        window=window,
        concepts=tuple(aligned),
        warnings=tuple(warnings),
    )
