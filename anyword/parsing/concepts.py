"""The parsing stage's data: a caption's concepts, their mentions, and caption checks shared by every parser.

Conventions: character spans are ``(start, end)`` half-open offsets into the caption string as given (no
normalisation), so ``caption[start:end]`` is the mentioned text.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from anyword.errors import CaptionError, NoConceptError

Span = tuple[int, int]

OBJECT = "object"
PREDICATE = "predicate"

# Nouns that name the picture itself, not something in it ("In this image, ...").
FRAME_NOUNS = frozenset(
    {"image", "picture", "photo", "photograph", "pic", "scene", "shot", "snapshot", "frame", "view", "illustration"}
)
# Nouns that name a place in the frame rather than an object ("man on the left", "trees in the background").
LOCATION_NOUNS = frozenset(
    {
        "left",
        "right",
        "top",
        "bottom",
        "middle",
        "center",
        "centre",
        "front",
        "side",
        "corner",
        "foreground",
        "background",
        "back",
        "distance",
        "rear",
        "upper",
        "lower",
    }
)

DEFAULT_MAX_CAPTION_CHARS = 2000


@dataclass(frozen=True)
class ParseSettings:
    """What counts as a concept.

    ``frame_nouns``/``location_nouns`` are skipped (lower-case lemmas); ``predicates`` adds verbs such as "holding"
    as concepts of kind "predicate" (paper section 3.3); ``max_caption_chars`` refuses longer captions (Stable
    Diffusion reads at most 75 tokens, about 300 characters, so a longer caption can only be partly used).
    """

    frame_nouns: frozenset[str] = FRAME_NOUNS
    location_nouns: frozenset[str] = LOCATION_NOUNS
    predicates: bool = False
    max_caption_chars: int = DEFAULT_MAX_CAPTION_CHARS


@dataclass(frozen=True)
class Mention:
    """One occurrence of a concept in the caption.

    ``span`` covers the phrase as written here (modifiers + noun), ``noun`` the root noun alone, ``adjectives`` the
    adjectives bound to the noun in this occurrence as ``(word, span)``.
    """

    span: Span
    noun: Span
    adjectives: tuple[tuple[str, Span], ...] = ()


@dataclass(frozen=True)
class Concept:
    """One thing to segment: a root noun (or a predicate verb), its bound adjectives, and all its mentions."""

    id: int
    phrase: str
    noun: str
    adjectives: tuple[str, ...]
    mentions: tuple[Mention, ...]
    kind: str = OBJECT

    def adjective_spans(self) -> dict[str, list[Span]]:
        """Every occurrence of each bound adjective, keyed by the adjective as listed in :attr:`adjectives`."""
        spans: dict[str, list[Span]] = {adjective: [] for adjective in self.adjectives}
        for mention in self.mentions:
            for word, span in mention.adjectives:
                key = _match_key(word, self.adjectives)
                if key is not None and span not in spans[key]:
                    spans[key].append(span)
        return spans

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "phrase": self.phrase,
            "noun": self.noun,
            "adjectives": list(self.adjectives),
            "kind": self.kind,
            "mentions": [list(m.span) for m in self.mentions],
            "noun_spans": [list(m.noun) for m in self.mentions],
            "adjective_spans": {word: [list(s) for s in spans] for word, spans in self.adjective_spans().items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Concept:
        """Inverse of :meth:`to_dict` (adjective spans are re-attached to the mention that contains them)."""
        mentions = []
        adjective_spans = {w: [tuple(s) for s in spans] for w, spans in data.get("adjective_spans", {}).items()}
        for span, noun in zip(data["mentions"], data.get("noun_spans", data["mentions"]), strict=True):
            span, noun = tuple(span), tuple(noun)
            bound = tuple((word, s) for word, spans in adjective_spans.items() for s in spans if _inside(s, span))
            mentions.append(Mention(span=span, noun=noun, adjectives=bound))
        return cls(
            id=int(data["id"]),
            phrase=data["phrase"],
            noun=data["noun"],
            adjectives=tuple(data.get("adjectives", ())),
            mentions=tuple(mentions),
            kind=data.get("kind", OBJECT),
        )


@dataclass(frozen=True)
class ParseResult:
    """The concepts of a caption and which parser produced them.

    ``requested_parser`` is what the caller asked for; when it failed, ``parser`` names the backend that produced
    the result instead and ``fallback_reason`` says why (never containing secrets). ``rejected_words`` lists words an
    LLM returned that do not occur in the caption. ``subject`` is the character span of the noun the sentence is
    about (spaCy: its grammatical subject; an LLM asked for the one referred object: that object), when the parser
    found one: :meth:`subject_concept` is the concept a referring expression refers to.
    """

    caption: str
    concepts: tuple[Concept, ...]
    parser: str
    requested_parser: str
    fallback_reason: str | None = None
    rejected_words: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    subject: Span | None = None

    def concept(self, concept_id: int) -> Concept:
        for concept in self.concepts:
            if concept.id == concept_id:
                return concept
        raise KeyError(f"no concept with id {concept_id}")

    def subject_concept(self) -> Concept | None:
        """The concept whose mention holds :attr:`subject`, or ``None``."""
        if self.subject is None:
            return None
        start, end = self.subject
        return next(
            (c for c in self.concepts if any(m.noun[0] <= start and end <= m.noun[1] for m in c.mentions)), None
        )

    def to_dict(self) -> dict:
        data = {
            "caption": self.caption,
            "parser": self.parser,
            "concepts": [c.to_dict() for c in self.concepts],
        }
        if self.subject is not None:
            data["subject"] = list(self.subject)
        if self.requested_parser != self.parser or self.fallback_reason:
            data["requested_parser"] = self.requested_parser
            data["fallback_reason"] = self.fallback_reason
        if self.rejected_words:
            data["rejected_words"] = list(self.rejected_words)
        if self.warnings:
            data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ParseResult:
        return cls(
            caption=data["caption"],
            concepts=tuple(Concept.from_dict(c) for c in data["concepts"]),
            parser=data["parser"],
            requested_parser=data.get("requested_parser", data["parser"]),
            fallback_reason=data.get("fallback_reason"),
            rejected_words=tuple(data.get("rejected_words", ())),
            warnings=tuple(data.get("warnings", ())),
            subject=tuple(data["subject"]) if data.get("subject") else None,
        )

    # --- edits (the demo lets users correct the parse) -------------------------------------------------------

    def replace_concepts(self, concepts: Iterable[Concept]) -> ParseResult:
        """A copy with these concepts, renumbered 0..n-1 in order of first mention. Raises if none is left."""
        ordered = sorted(concepts, key=lambda c: min(m.span[0] for m in c.mentions))
        if not ordered:
            raise NoConceptError("no concept left to segment: add at least one word of the caption as a concept")
        renumbered = tuple(dataclasses.replace(c, id=i) for i, c in enumerate(ordered))
        return dataclasses.replace(self, concepts=renumbered)

    def drop_concept(self, concept_id: int) -> ParseResult:
        self.concept(concept_id)
        return self.replace_concepts(c for c in self.concepts if c.id != concept_id)

    def add_word_as_concept(self, span: Span) -> ParseResult:
        """Make the caption word at ``span`` (or the word containing that offset range) a new object concept."""
        span = word_span_at(self.caption, span)
        word = self.caption[span[0] : span[1]]
        for concept in self.concepts:
            if any(_overlaps(m.noun, span) for m in concept.mentions):
                raise CaptionError(f"'{word}' is already the noun of concept {concept.id} ('{concept.phrase}')")
        mentions = tuple(Mention(span=s, noun=s) for s in find_word(self.caption, word))
        new = Concept(id=len(self.concepts), phrase=word, noun=word, adjectives=(), mentions=mentions)
        return self.replace_concepts((*self.concepts, new))

    def bind_adjective(self, concept_id: int, span: Span) -> ParseResult:
        """Bind the caption word at ``span`` to a concept as an adjective (its R1 positive prompt)."""
        concept = self.concept(concept_id)
        span = word_span_at(self.caption, span)
        word = self.caption[span[0] : span[1]]
        if _match_key(word, concept.adjectives) is not None:
            return self
        if any(_overlaps(m.noun, span) for m in concept.mentions):
            raise CaptionError(f"'{word}' is the noun of concept {concept.id}; it cannot also be its adjective")
        # Attach the adjective to the mention nearest to it (the one it describes).
        nearest = min(range(len(concept.mentions)), key=lambda i: _distance(concept.mentions[i].span, span))
        mentions = list(concept.mentions)
        target = mentions[nearest]
        mentions[nearest] = dataclasses.replace(target, adjectives=(*target.adjectives, (word, span)))
        updated = dataclasses.replace(concept, adjectives=(*concept.adjectives, word), mentions=tuple(mentions))
        return self.replace_concepts(updated if c.id == concept_id else c for c in self.concepts)

    def unbind_adjective(self, concept_id: int, adjective: str) -> ParseResult:
        concept = self.concept(concept_id)
        key = _match_key(adjective, concept.adjectives)
        if key is None:
            raise CaptionError(f"concept {concept_id} ('{concept.phrase}') has no adjective '{adjective}'")
        mentions = tuple(
            dataclasses.replace(m, adjectives=tuple(a for a in m.adjectives if a[0].lower() != key.lower()))
            for m in concept.mentions
        )
        adjectives = tuple(a for a in concept.adjectives if a != key)
        updated = dataclasses.replace(concept, adjectives=adjectives, mentions=mentions)
        return self.replace_concepts(updated if c.id == concept_id else c for c in self.concepts)


class CaptionParser(Protocol):
    """A parsing backend: caption text in, concepts out. Raises :class:`CaptionError` for unusable captions."""

    name: str

    def parse(self, caption: str) -> ParseResult: ...

    def describe(self) -> dict:
        """What decides its parses (backend, model, prompt), as run records name the parser; never a secret."""
        ...


# --- caption checks ------------------------------------------------------------------------------------------

# A handful of English function words: any English sentence of a few words has one. Used only to tell English
# from other Latin-script languages; keyword captions ("cat dog grass") pass because they trip no foreign word.
ENGLISH_FUNCTION_WORDS = frozenset(
    "a an the of in on at with and or is are was were to for by near next from behind under over above below "
    "his her its their this that these those there it he she they while into onto beside between".split()
)
_FOREIGN_FUNCTION_WORDS = frozenset(
    # French, Spanish, Italian, Portuguese, German, Dutch articles and prepositions not used in English.
    "le la les un une des du et est sur dans avec au aux ce cette el los las y con una del por para "
    "il lo gli di che della sul uma os um das dos na no em der die das und ist mit ein eine auf im dem den "
    "het een op naast zijn".split()
)
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def normalize_caption(caption: str) -> str:
    """NFKC-normalise a caption and drop invisible format characters (Unicode category Cf: zero-width spaces and
    joiners, bidirectional overrides, byte-order marks), which would otherwise split a word into extra tokens
    ("c\u200bup" is three CLIP tokens) or reorder what a user sees. Every parser applies it through
    :func:`check_caption`."""
    text = unicodedata.normalize("NFKC", caption)
    return "".join(char for char in text if unicodedata.category(char) != "Cf")


def check_caption(caption: object, settings: ParseSettings = ParseSettings()) -> str:
    """Return the caption, normalised by :func:`normalize_caption`, if a parser can work on it, else raise a
    :class:`CaptionError` saying why.

    Refuses: non-strings, empty or whitespace-only text, text longer than ``settings.max_caption_chars``, binary or
    control characters (including undecodable command-line bytes), text without letters (emoji, digits), and text
    that is clearly not English (mostly non-Latin letters, or only foreign function words).
    """
    if not isinstance(caption, str):
        raise CaptionError(f"the caption must be text, not {type(caption).__name__}")
    caption = normalize_caption(caption)
    if not caption.strip():
        raise CaptionError("the caption is empty: describe what is in the image, e.g. 'a brown dog on a red sofa'")
    if len(caption) > settings.max_caption_chars:
        raise CaptionError(
            f"the caption has {len(caption):,} characters; the limit is {settings.max_caption_chars:,}. Stable "
            "Diffusion reads at most 75 tokens (about 60 words), so shorten it to the objects you want segmented."
        )
    for position, char in enumerate(caption):
        if _is_binary(char):
            raise CaptionError(
                f"the caption contains binary or control characters (U+{ord(char):04X} at position {position}); "
                "pass plain text"
            )
    letters = [c for c in caption if c.isalpha()]
    if not letters:
        raise NoConceptError(
            f"the caption {_preview(caption)} has no words, so there is nothing to segment; "
            "describe the objects in English, e.g. 'a brown dog on a red sofa'"
        )
    scripts = [_script(c) for c in letters]
    latin = sum(s == "LATIN" for s in scripts)
    if latin * 2 < len(letters):
        others = sorted({s for s in scripts if s != "LATIN"}, key=scripts.count, reverse=True)
        raise CaptionError(
            f"the caption looks like {others[0].title()}-script text; the parsers and Stable Diffusion's text "
            "encoder expect English captions"
        )
    words = [w.lower() for w in _WORD_RE.findall(caption)]
    foreign = [w for w in words if w in _FOREIGN_FUNCTION_WORDS]
    if len(foreign) >= 2 and not any(w in ENGLISH_FUNCTION_WORDS for w in words):
        raise CaptionError(
            f"the caption does not look like English (it has {', '.join(repr(w) for w in dict.fromkeys(foreign))} "
            "and no English function words); the parsers and Stable Diffusion's text encoder expect English"
        )
    return caption


def _is_binary(char: str) -> bool:
    if char in "\t\n\r":
        return False
    category = unicodedata.category(char)
    # Cc: control, Cs: lone surrogates (undecodable argv bytes), Co/Cn: private or unassigned, U+FFFD: decode error.
    return category in {"Cc", "Cs", "Co", "Cn"} or char == "\ufffd"


def _script(char: str) -> str:
    try:
        return unicodedata.name(char).split(" ")[0]
    except ValueError:
        return "UNKNOWN"


def _preview(text: str, limit: int = 40) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


# --- locating words in the caption ---------------------------------------------------------------------------


def find_word(caption: str, word: str) -> list[Span]:
    """All whole-word, case-insensitive occurrences of ``word`` (which may contain spaces) in ``caption``."""
    if not word.strip():
        return []
    pattern = r"\s+".join(re.escape(part) for part in word.split())
    return [m.span() for m in re.finditer(rf"(?<!\w){pattern}(?!\w)", caption, flags=re.IGNORECASE)]


def word_span_at(caption: str, span: Span) -> Span:
    """Widen ``span`` to whole words of the caption; raise if it covers no word."""
    start, end = max(0, span[0]), min(len(caption), span[1])
    if start >= end:
        raise CaptionError(f"character range {span} lies outside the caption")
    while start > 0 and caption[start - 1].isalnum():
        start -= 1
    while end < len(caption) and caption[end].isalnum():
        end += 1
    while start < end and not caption[start].isalnum():
        start += 1
    while end > start and not caption[end - 1].isalnum():
        end -= 1
    if start >= end:
        raise CaptionError(f"character range {span} of the caption holds no word")
    return start, end


def _inside(inner: Span, outer: Span) -> bool:
    return outer[0] <= inner[0] and inner[1] <= outer[1]


def _overlaps(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _distance(a: Span, b: Span) -> int:
    return 0 if _overlaps(a, b) else min(abs(a[0] - b[1]), abs(b[0] - a[1]))


def _match_key(word: str, candidates: Sequence[str]) -> str | None:
    lowered = word.lower()
    return next((c for c in candidates if c.lower() == lowered), None)


def concepts_from_entries(caption: str, entries: Sequence[Mapping]) -> tuple[Concept, ...]:
    """Place ``{noun, adjectives, phrase, kind}`` entries (words of the caption) on the caption.

    Each occurrence of an entry's phrase containing its noun is a mention; if the phrase does not occur literally,
    the first unclaimed occurrence of the noun is. Used for LLM answers and for hand-written concept lists.
    """
    claimed: set[Span] = set()
    concepts = []
    # Longer phrases claim their noun occurrences first, so "black dog" and "dog" do not both take "black dog".
    for entry in sorted(entries, key=lambda e: -len(e.get("phrase", e["noun"]))):
        mentions = []
        for phrase_span in find_word(caption, entry.get("phrase", entry["noun"])):
            noun_span = _find_within(caption, entry["noun"], phrase_span)
            if noun_span is None or noun_span in claimed:
                continue
            adjectives = tuple(
                (adjective, span)
                for adjective in entry.get("adjectives", [])
                if (span := _find_within(caption, adjective, phrase_span)) is not None
            )
            mentions.append(Mention(span=phrase_span, noun=noun_span, adjectives=adjectives))
            claimed.add(noun_span)
        if not mentions:  # the phrase is not literal: fall back to the noun's unclaimed occurrences
            for noun_span in find_word(caption, entry["noun"]):
                if noun_span not in claimed:
                    mentions.append(Mention(span=noun_span, noun=noun_span))
                    claimed.add(noun_span)
                    break
        if mentions:
            concepts.append((entry, tuple(sorted(mentions, key=lambda m: m.span))))
    concepts.sort(key=lambda item: item[1][0].span[0])
    return tuple(
        Concept(
            id=index,
            phrase=entry.get("phrase", entry["noun"]),
            noun=caption[mentions[0].noun[0] : mentions[0].noun[1]],
            adjectives=tuple(dict.fromkeys(entry.get("adjectives", []))),
            mentions=mentions,
            kind=entry.get("kind", OBJECT),
        )
        for index, (entry, mentions) in enumerate(concepts)
    )


def _find_within(caption: str, word: str, span: Span) -> Span | None:
    for found in find_word(caption, word):
        if span[0] <= found[0] and found[1] <= span[1]:
            return found
    return None
