"""JSONL files a user hands the command line (``segment --batch``, ``adapt --pairs``): lines, comments, and paths
written relative to the file."""

from __future__ import annotations

from pathlib import Path

from anyword.errors import AnywordError


def jsonl_lines(file: Path, kind: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of a JSONL file's lines that are neither blank nor ``#`` comments."""
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is not line 1's
    except (OSError, UnicodeDecodeError) as error:
        raise AnywordError(f"cannot read {kind} file {file}: {error}") from None
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]


def beside(file: Path, path: str) -> Path:
    """``path`` as written in ``file``: absolute, or relative to the file's folder."""
    return Path(path) if Path(path).is_absolute() else file.parent / path
