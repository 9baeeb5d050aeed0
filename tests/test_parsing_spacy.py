"""The spaCy backend on the caption styles the paper targets (GranDf, RefCOCO, gRefCOCO) and on bad input."""

from __future__ import annotations

import pytest

from anyword.errors import CaptionError, NoConceptError
from anyword.parsing import ParseResult, ParseSettings, SpacyParser


def summary(result: ParseResult) -> list[tuple[str, tuple[str, ...]]]:
    return [(c.noun, c.adjectives) for c in result.concepts]


def test_grandf_description_binds_adjectives_and_merges_repeated_mentions(spacy_parser):
    caption = (
        "A brown tabby kitten sits on a red and blue bus next to a coffee mug. The kitten looks at a parking meter."
    )
    result = spacy_parser.parse(caption)
    assert summary(result) == [("kitten", ("brown",)), ("bus", ("red", "blue")), ("mug", ()), ("meter", ())]
    kitten = result.concepts[0]
    assert kitten.phrase == "brown tabby kitten"
    assert [caption[s:e] for s, e in (m.span for m in kitten.mentions)] == ["brown tabby kitten", "kitten"]
    assert [caption[s:e] for s, e in (m.noun for m in kitten.mentions)] == ["kitten", "kitten"]
    assert kitten.adjective_spans() == {"brown": [(2, 7)]}
    assert [c.phrase for c in result.concepts[2:]] == ["coffee mug", "parking meter"]
    assert [c.id for c in result.concepts] == [0, 1, 2, 3]
    assert result.parser == result.requested_parser == "spacy" and result.fallback_reason is None


def test_multi_sentence_grandf_caption(spacy_parser):
    caption = (
        "In the image, there is a young woman wearing a white shirt and black pants, standing on a sidewalk. "
        "She is holding a red umbrella, and a bicycle is parked beside her."
    )
    result = spacy_parser.parse(caption)
    assert summary(result) == [
        ("woman", ("young",)),
        ("shirt", ("white",)),
        ("pants", ("black",)),
        ("sidewalk", ()),
        ("umbrella", ("red",)),
        ("bicycle", ()),
    ]


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("man on left in blue shirt", [("man", ()), ("shirt", ("blue",))]),
        ("woman in red", [("woman", ("red",))]),
        ("left zebra", [("zebra", ())]),
        ("guy in the back wearing a hat", [("guy", ()), ("hat", ())]),
        ("bottom right pizza slice", [("slice", ())]),
        ("the other dog next to a red car", [("dog", ()), ("car", ("red",))]),
    ],
)
def test_refcoco_expressions(spacy_parser, caption, expected):
    assert summary(spacy_parser.parse(caption)) == expected


def test_predicative_and_relative_clause_adjectives(spacy_parser):
    assert summary(spacy_parser.parse("the car is yellow")) == [("car", ("yellow",))]
    assert summary(spacy_parser.parse("The dog, which is brown, chases a ball.")) == [("dog", ("brown",)), ("ball", ())]


def test_coordination_and_conflicting_adjectives_make_separate_concepts(spacy_parser):
    caption = "A man's striped shirt and a black dog and a white dog."
    result = spacy_parser.parse(caption)
    assert summary(result) == [("man", ()), ("shirt", ("striped",)), ("dog", ("black",)), ("dog", ("white",))]
    assert [c.phrase for c in result.concepts[2:]] == ["black dog", "white dog"]


def test_numbered_instances_are_separate_and_keep_their_spelling(spacy_parser):
    result = spacy_parser.parse("dog1 and dog2 play with Person2 near the fence")
    assert [c.noun for c in result.concepts] == ["dog1", "dog2", "Person2", "fence"]


def test_typos_and_novel_words_are_still_concepts(spacy_parser):
    # The paper's stress test (G.2): unknown words are exactly what prompt learning adapts to.
    assert [c.noun for c in spacy_parser.parse("a kittytoi on a catstatue").concepts] == ["kittytoi", "catstatue"]
    assert [c.noun for c in spacy_parser.parse("a dgo chasing a frisbe in the parc").concepts] == [
        "dgo",
        "frisbe",
        "parc",
    ]


def test_frame_location_and_quantity_nouns_are_skipped(spacy_parser):
    result = spacy_parser.parse("A group of people standing near a pair of shoes in the image.")
    assert [c.noun for c in result.concepts] == ["people", "shoes"]
    assert [c.noun for c in spacy_parser.parse("trees in the background").concepts] == ["trees"]


def test_frame_nouns_are_configurable(nlp):
    keep = SpacyParser(ParseSettings(frame_nouns=frozenset(), location_nouns=frozenset()), nlp=nlp)
    assert [c.noun for c in keep.parse("trees in the background of the photo").concepts] == [
        "trees",
        "background",
        "photo",
    ]


def test_predicates_only_when_asked(nlp, spacy_parser):
    caption = "a horse pulling a trailer while a man is holding a racket"
    assert [c.kind for c in spacy_parser.parse(caption).concepts] == ["object"] * 4
    with_predicates = SpacyParser(ParseSettings(predicates=True), nlp=nlp).parse(caption)
    assert [(c.noun, c.kind) for c in with_predicates.concepts] == [
        ("horse", "object"),
        ("pulling", "predicate"),
        ("trailer", "object"),
        ("man", "object"),
        ("holding", "predicate"),
        ("racket", "object"),
    ]


@pytest.mark.parametrize(
    ("caption", "error", "fragment"),
    [
        ("", CaptionError, "empty"),
        ("   \n ", CaptionError, "empty"),
        ("hello!!", NoConceptError, "no nouns"),
        ("the the of and", NoConceptError, "no nouns"),
        ("In this picture", NoConceptError, "name the picture"),
        ("🐶🐱🎉", NoConceptError, "no words"),
        ("12345 !!! ???", NoConceptError, "no words"),
        ("a dog" * 1000, CaptionError, "limit is 2,000"),
        ("un chien noir sur la plage", CaptionError, "not look like English"),
        ("一只狗在草地上跑", CaptionError, "Cjk-script"),
        ("собака на траве", CaptionError, "Cyrillic-script"),
        ("a dog\x00\x01\x02", CaptionError, "binary"),
        ("a \udcff\udcfe dog", CaptionError, "binary"),
    ],
)
def test_bad_captions_have_specific_errors(spacy_parser, caption, error, fragment):
    with pytest.raises(error, match=fragment):
        spacy_parser.parse(caption)


def test_emoji_beside_words_is_fine(spacy_parser):
    assert [c.noun for c in spacy_parser.parse("a 🐶 dog and a cat 😺").concepts] == ["dog", "cat"]


def test_round_trip_and_edits(spacy_parser):
    caption = "a red car next to a tree and a small house"
    result = spacy_parser.parse(caption)
    assert ParseResult.from_dict(result.to_dict()) == result

    without_tree = result.drop_concept(1)
    assert [c.noun for c in without_tree.concepts] == ["car", "house"]
    assert [c.id for c in without_tree.concepts] == [0, 1]

    start = caption.index("next")
    with pytest.raises(CaptionError, match="already the noun"):
        result.add_word_as_concept((caption.index("tree"), caption.index("tree") + 2))
    added = result.add_word_as_concept((start, start + 4))
    assert [c.noun for c in added.concepts] == ["car", "next", "tree", "house"]

    small = caption.index("small")
    unbound = result.unbind_adjective(2, "small")
    assert unbound.concept(2).adjectives == () and unbound.concept(2).adjective_spans() == {}
    rebound = unbound.bind_adjective(2, (small, small + 5))
    assert rebound.concept(2).adjectives == ("small",)
    assert rebound.concept(2).adjective_spans() == {"small": [(small, small + 5)]}
    with pytest.raises(CaptionError, match="no concept left"):
        result.drop_concept(0).drop_concept(0).drop_concept(0)
