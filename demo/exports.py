"""Download files of the demo: one folder per session, one zip per folder, deleted when the session ends.

The store lives inside Gradio's cache folder, so Gradio serves the zip from where it is instead of copying it
(a copy would outlive the session). A new export replaces the session's previous one; when the store holds more
than ``max_bytes``, the oldest sessions' files go first (their owners can export again).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 512 * 1024 * 1024


class ExportStore:
    """Per-session export files under ``root`` (created if missing), at most ``max_bytes`` in all."""

    def __init__(self, root: str | Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def new_owner() -> str:
        """A fresh, unguessable folder name for one session."""
        return secrets.token_hex(12)

    def write(self, owner: str, name: str, data: bytes) -> Path:
        """Write ``data`` as ``name`` in ``owner``'s folder, replacing what that folder held. Each export gets a
        new sub-folder, so its URL differs from the previous one (a browser never shows a cached older zip)."""
        folder = self._folder(owner)
        with self._lock:
            shutil.rmtree(folder, ignore_errors=True)
            path = folder / secrets.token_hex(4) / Path(name).name
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
            self._evict(keep=folder)
        return path

    def release(self, owner: str | None) -> None:
        """Delete ``owner``'s files (the session ended)."""
        if owner:
            with self._lock:
                shutil.rmtree(self._folder(owner), ignore_errors=True)

    def total_bytes(self) -> int:
        return sum(_size(folder) for folder in self.root.iterdir() if folder.is_dir())

    def _folder(self, owner: str) -> Path:
        if not owner.isalnum():
            raise ValueError(f"not an export owner: {owner!r}")
        return self.root / owner

    def _evict(self, keep: Path) -> None:
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime)
        total = self.total_bytes()
        for folder in folders:
            if total <= self.max_bytes:
                break
            total -= _size(folder)
            shutil.rmtree(folder, ignore_errors=True)
            logger.info("export store over %d bytes: removed an older session's download", self.max_bytes)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
