"""Concept words -> CLIP token positions with the real Stable Diffusion tokenizer."""

from __future__ import annotations

import pytest

from anyword.errors import TokenWindowError
from anyword.tokens import align_tokens


def pieces_at(alignment, positions):
    return [alignment.pieces[p] for p in positions]


def test_reference_ids_match_stable_diffusion(tokenizer):
    # The ids Stable Diffusion's own tokenizer gives (see the tokenizer README).
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408


def test_split_words_numbered_nouns_case_and_punctuation(spacy_parser, tokenizer):
    caption = "A brown tabby Kittytoi, dog1 and dog2 on a catstatue!! The kittytoi sleeps."
    result = spacy_parser.parse(caption)
    alignment = align_tokens(caption, result.concepts, tokenizer)
    by_noun = {result.concept(c.concept_id).noun: c for c in alignment.concepts}

    kitty = by_noun["Kittytoi"]
    # Both mentions, each split into two pieces; position 0 is the start token.
    assert pieces_at(alignment, kitty.noun_positions) == ["kitty", "toi</w>", "kitty", "toi</w>"]
    assert kitty.noun_positions == (4, 5, 18, 19)
    assert pieces_at(alignment, kitty.adjective_positions("brown")) == ["brown</w>"]
    assert pieces_at(alignment, by_noun["dog1"].noun_positions) == ["dog</w>", "1</w>"]
    assert pieces_at(alignment, by_noun["dog2"].noun_positions) == ["dog</w>", "2</w>"]
    assert pieces_at(alignment, by_noun["catstatue"].noun_positions) == ["cat", "statue</w>"]
    assert alignment.pieces[0] == "<|startoftext|>" and alignment.pieces[-1] == "<|endoftext|>"
    assert len(alignment.input_ids) == 77
    assert alignment.input_ids[: len(alignment.pieces)] == tuple(tokenizer(caption)["input_ids"])
    assert alignment.caption_tokens <= alignment.window and alignment.warnings == ()


def test_coordinated_adjectives_each_get_their_token(spacy_parser, tokenizer):
    caption = "a red and blue bus"
    result = spacy_parser.parse(caption)
    bus = align_tokens(caption, result.concepts, tokenizer).concepts[0]
    assert bus.noun_positions == (5,)
    assert bus.adjective_positions("red") == (2,) and bus.adjective_positions("blue") == (4,)
    assert bus.all_positions == (2, 4, 5)


def test_concept_past_the_window_is_a_clear_error(spacy_parser, tokenizer):
    caption = "a cat " + "and a very long description of nothing at all " * 10 + "beside an umbrella"
    result = spacy_parser.parse(caption)
    with pytest.raises(TokenWindowError, match=r"'umbrella'.*reads only the first 75"):
        align_tokens(caption, result.concepts, tokenizer)


def test_mention_past_the_window_is_dropped_with_a_warning(spacy_parser, tokenizer):
    caption = "a cat " + "and a very long description of nothing at all " * 10 + "beside the cat"
    result = spacy_parser.parse(caption)
    cat = result.concepts[0]
    assert cat.noun == "cat" and len(cat.mentions) == 2
    alignment = align_tokens(caption, result.concepts, tokenizer)
    assert alignment.caption_tokens > alignment.window == 75
    assert alignment.for_concept(cat.id).noun_positions == (2,)
    assert any("past the 75-token window" in w for w in alignment.warnings)
