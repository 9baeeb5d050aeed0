"""Write the small WordPiece vocabulary the ``ldm-tiny`` and ``ldm-random`` presets use (no package here ships
BERT's): ``python scripts/make_wordpiece_vocab.py`` -> ``anyword/data/wordpiece-test-vocab/vocab.txt``.

Whole words: the demo's example captions, the shapes world's words, the test fixtures' captions and common English
function words; pieces: every lower-case letter and digit, alone and as a continuation (``##x``), and a few
suffixes, so that any lower-case word can be split (words outside the list become several pieces: out of
vocabulary, as the paper's initialisation rule needs to be tested). Deterministic: the same file on every run.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "anyword" / "data" / "wordpiece-test-vocab"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FUNCTION_WORDS = """a an the and or of on in at to with without from by for is are was were be it its this that
these those there here above below left right next beside behind front near under over between top bottom middle
holding wearing sitting standing lying who which his her their one two three some all""".split()
SUFFIXES = ["##s", "##es", "##ed", "##ing", "##er", "##est", "##ly", "##y"]


def words() -> set[str]:
    from anyword.shapes.scenes import COLOURS, NOVEL_COLOURS, NOVEL_NOUNS, SHAPES

    found = set(FUNCTION_WORDS) | set(SHAPES) | set(COLOURS) | set(NOVEL_NOUNS.values()) | set(NOVEL_COLOURS.values())
    found |= {"small", "big", "ball", "box", "cup", "saucer", "spoon", "dog", "cat", "sofa", "shirt", "man", "woman"}
    captions = [row["caption"] for row in json.loads((ROOT / "assets" / "examples.json").read_text())]
    captions += [row["caption"] for row in json.loads((ROOT / "assets" / "shapes" / "examples.json").read_text())]
    for caption in captions:
        found |= set(re.findall(r"[a-z]+", caption.lower()))
    return found


def main() -> None:
    pieces = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    pieces += [f"##{c}" for c in string.ascii_lowercase + string.digits] + SUFFIXES
    vocabulary = SPECIALS + sorted(set(pieces)) + sorted(words() - set(pieces))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 77}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    print(f"{OUT / 'vocab.txt'}: {len(vocabulary)} entries")


if __name__ == "__main__":
    main()
