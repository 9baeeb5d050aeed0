"""The parses of an evaluation run, kept beside its predictions so that a resumed run never parses a sentence twice.

``RUN_DIR/parses.jsonl`` holds one line per parsed sample: ``{"key", "parser_key", "parse"}`` (the
:class:`~anyword.parsing.ParseResult` as a dict) or ``{"key", "parser_key", "no_concept"}`` when the parser found
nothing to segment. ``parser_key`` is a digest of what decides a parse (backend, model, prompt: the parser's
``describe()`` without where it runs), so a line made by another parser is never reused. With several processes
each writes ``parts/<invocation>-rank<r>.parses`` and the main process merges them into ``parses.jsonl``, as it
does the predictions. A line that is not a usable parse of its sample's caption (cut short, edited, spans outside the
caption) is ignored and the sentence parsed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from anyword.errors import NoConceptError
from anyword.evaluation.base import Sample
from anyword.parsing.concepts import ParseResult

PARSES = "parses.jsonl"
PARSE_PART = ".parses"


def parser_key(description: dict) -> str:
    """A digest of a parser's ``describe()`` (its ``base_url`` left out: where it runs, not what it is)."""
    what = {k: v for k, v in description.items() if k != "base_url"}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()[:16]


class ParseStore:
    """The parses of one run: those the run folder holds (``read_from``) and those this process makes, appended
    to ``write_to`` as they are made. :meth:`parse` answers a sample's parse from the store or the pipeline's
    parser."""

    def __init__(self, pipeline, read_from: list[Path], write_to: Path | None):
        self.pipeline = pipeline
        self.key = parser_key(pipeline.parser.describe())
        self.write_to = write_to
        self.known = {}
        for file in read_from:
            self.known.update(read_parse_lines(file, self.key))
        self.asked = 0  # sentences this process sent to the parser

    def parse(self, sample: Sample) -> ParseResult:
        """The sample's caption parsed (raises :class:`NoConceptError` when it names nothing, stored or new)."""
        line = self.known.get(sample.key)
        if line is not None and _usable(line, sample.caption):
            if "no_concept" in line:
                raise NoConceptError(line["no_concept"])
            return ParseResult.from_dict(line["parse"])
        self.asked += 1
        try:
            parse = self.pipeline.parse(sample.caption)
        except NoConceptError as error:
            self._keep({"key": sample.key, "parser_key": self.key, "caption": sample.caption, "no_concept": str(error)})
            raise
        self._keep({"key": sample.key, "parser_key": self.key, "parse": parse.to_dict()})
        return parse

    def _keep(self, line: dict) -> None:
        self.known[line["key"]] = line
        if self.write_to is not None:
            with self.write_to.open("a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")
                file.flush()


def read_parse_lines(file: Path, key: str) -> dict[str, dict]:
    """The lines of ``file`` made by the parser with digest ``key``, by sample key (later lines win)."""
    return {line["key"]: line for line in _lines(file) if line["parser_key"] == key}


def merge_parse_files(out: Path, parts: list[Path]) -> None:
    """Fold the parts' lines into ``out/parses.jsonl`` (one line per sample and parser, later lines win)."""
    lines = {(line["key"], line["parser_key"]): line for file in [out / PARSES, *parts] for line in _lines(file)}
    if lines:
        staging = out / f".{PARSES}.tmp"
        staging.write_text("".join(json.dumps(line) + "\n" for line in lines.values()), encoding="utf-8")
        staging.replace(out / PARSES)


def _lines(file: Path):
    """The JSON objects of ``file`` with a text ``key`` and ``parser_key``; other lines (cut short, not UTF-8 or
    JSON) are skipped."""
    if not file.is_file():
        return
    for raw in file.read_bytes().splitlines():
        try:
            line = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(line, dict) and isinstance(line.get("key"), str) and isinstance(line.get("parser_key"), str):
            yield line


def _usable(line: dict, caption: str) -> bool:
    """Whether a stored line is a parse of ``caption`` this code can use (well-formed, spans inside it)."""
    if "no_concept" in line:
        return line.get("caption") == caption and isinstance(line["no_concept"], str)
    data = line.get("parse")
    if not isinstance(data, dict) or data.get("caption") != caption:
        return False
    try:
        parse = ParseResult.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return False
    spans = [s for c in parse.concepts for m in c.mentions for s in (m.span, m.noun, *(a for _, a in m.adjectives))]
    spans += [parse.subject] if parse.subject is not None else []
    return bool(parse.concepts) and all(_inside(span, len(caption)) for span in spans)


def _inside(span, length: int) -> bool:
    return (
        isinstance(span, tuple)
        and len(span) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        and 0 <= span[0] < span[1] <= length
    )


def parse_counts(file: Path, key: str, samples: list[Sample]) -> dict:
    """What the run's parses were: how many samples have one from this parser, how many of those came from a
    fallback (an LLM that failed, spaCy instead; their keys, at most 50), how many named nothing."""
    lines = read_parse_lines(file, key)
    stored = [lines[s.key] for s in samples if s.key in lines]
    fallbacks = [
        line["key"]
        for line in stored
        if isinstance(line.get("parse"), dict)
        and line["parse"].get("requested_parser", line["parse"].get("parser")) != line["parse"].get("parser")
    ]
    return {
        "file": PARSES,
        "stored": len(stored),
        "no_concept": sum("no_concept" in line for line in stored),
        "fallbacks": len(fallbacks),
        "fallback_keys": fallbacks[:50],
    }
