"""Checkpoint files fetched on first use into the user cache, verified by sha256.

Cache folder: ``$ANYWORD_CACHE`` if set, else ``$XDG_CACHE_HOME/anyword`` or ``~/.cache/anyword``. Offline
(``ANYWORD_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, or the host unreachable) a missing file raises
:class:`ModelUnavailableError` naming the file, its URL and where to put it.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from anyword import environment
from anyword.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """A downloadable file: its name in the cache, its URL and its sha256."""

    filename: str
    url: str
    sha256: str
    subfolder: str = ""


@dataclass(frozen=True)
class Availability:
    """Whether a model's weights can be used here now.

    ``state``: "shipped" (inside the package), "random" (built from a config: nothing to fetch), "local" (a folder
    the user named), "cached", "downloadable" (not here, the host answers) or "missing"; ``where``: the folder
    they are in or would go to; ``reason``: why they are missing and how to get them.
    """

    state: str
    where: str = ""
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.state != "missing"

    def to_dict(self) -> dict:
        return {"state": self.state, "ready": self.ready, "where": self.where, "reason": self.reason}


def checkpoint_availability(checkpoint: Checkpoint, root: Path | None = None) -> Availability:
    """Where ``checkpoint`` is (or would be downloaded to), and whether it can be had now."""
    folder = (root or cache_dir()) / checkpoint.subfolder
    if (folder / checkpoint.filename).is_file():
        return Availability("cached", str(folder / checkpoint.filename))
    reason = unavailable_reason(checkpoint, root)
    return Availability("missing" if reason else "downloadable", str(folder), reason)


def cache_dir() -> Path:
    chosen = environment.read("ANYWORD_CACHE", environment.folder, None)
    if chosen is not None:
        return chosen
    base = environment.read("XDG_CACHE_HOME", environment.folder, Path.home() / ".cache")
    return base / "anyword"


def offline() -> bool:
    return any(environment.read(name, environment.flag, False) for name in ("ANYWORD_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(checkpoint: Checkpoint, folder: Path | None = None, timeout_s: float = 30.0, progress: bool = True) -> Path:
    """Path of the verified checkpoint in the cache, downloading it on first use.

    An interrupted download leaves ``FILE.part``; the next call asks the server for the rest (an HTTP ``Range``
    request) and hashes the whole file. A file whose sha256 differs from the published one is deleted and refused.
    A cached file is hashed once; a marker beside it (size and mtime) spares later loads the re-hash.
    """
    root = folder or cache_dir()
    folder = root / checkpoint.subfolder
    path = folder / checkpoint.filename
    if path.is_file():
        _verify(path, checkpoint)
        return path
    reason = unavailable_reason(checkpoint, root)
    if reason is not None:
        raise ModelUnavailableError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    logger.warning("downloading %s into %s (first use only)", checkpoint.url, folder)
    try:
        _download_rest(checkpoint.url, partial, timeout_s, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        where = f"Put {checkpoint.filename} (from {checkpoint.url}) into {folder}"
        kept = (
            f"; the {partial.stat().st_size} bytes received are kept and the next run resumes"
            if partial.is_file()
            else ""
        )
        raise ModelUnavailableError(f"downloading {checkpoint.url} failed ({error}){kept}. {where}.") from None
    verify_sha256(partial, checkpoint.sha256, f"{checkpoint.filename} from {checkpoint.url}")
    partial.replace(path)
    _write_marker(path)
    return path


def _download_rest(url: str, partial: Path, timeout_s: float, progress: bool) -> None:
    """Append to ``partial`` what the server still has of ``url`` (all of it when ``partial`` is empty)."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"
        rest = int(response.headers.get("Content-Length") or 0) or None
        total = (have if resumed else 0) + rest if rest else None
        with (
            open(partial, mode) as out,
            progress_bar(total, partial.name.removesuffix(".part"), have if resumed else 0, progress) as bar,
        ):
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and partial.stat().st_size < total:
        raise OSError(f"the connection closed after {partial.stat().st_size} of {total} bytes")


def progress_bar(total: int | None, name: str, initial: int = 0, enabled: bool = True):
    """The download progress bar every fetch shows (bytes, scaled units)."""
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, disable=not enabled)


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Refuse (and delete) ``path`` unless its sha256 is ``expected``: one check for every downloaded file."""
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise ModelUnavailableError(
            f"{what} has sha256 {actual}, expected {expected}: the download is corrupt or was tampered with, and "
            "was deleted; run the command again to download it anew."
        )


def verify_hub_snapshot(folder: Path, patterns: list[str]) -> None:
    """Check every file of a Hugging Face cache snapshot that ``patterns`` select and that the hub stores in LFS:
    its blob is named by its sha256, so the content must hash to its name. A mismatch deletes the blob and the link
    (the next download fetches it again) and raises naming the file."""
    from fnmatch import fnmatch

    for link in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = link.relative_to(folder).as_posix()
        blob = link.resolve()
        if not any(fnmatch(name, pattern) for pattern in patterns) or not _is_sha256(blob.name):
            continue
        try:
            verify_sha256(blob, blob.name, f"{name} (in {folder})")
        except ModelUnavailableError:
            link.unlink(missing_ok=True)
            raise


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def hub_file_sizes(repo: str) -> list[tuple[str, int]]:
    """``(path, bytes)`` of every file of hub repository ``repo`` (one listing request)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    return [(e.path, e.size) for e in HfApi().list_repo_tree(repo, recursive=True) if isinstance(e, RepoFile)]


def matching(listing: list[tuple[str, int]], patterns: list[str]) -> list[tuple[str, int]]:
    """The entries of ``listing`` whose path one of the glob ``patterns`` selects."""
    from fnmatch import fnmatch

    return [(path, size) for path, size in listing if any(fnmatch(path, pattern) for pattern in patterns)]


def url_size(url: str, timeout_s: float = 30.0) -> int | None:
    """The size the server announces for ``url`` (a HEAD request), or ``None``."""
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
    return int(length) if length else None


def unavailable_reason(checkpoint: Checkpoint, root: Path | None = None) -> str | None:
    """Why ``checkpoint`` cannot be had here (not cached, and downloads off or impossible), or ``None``."""
    folder = (root or cache_dir()) / checkpoint.subfolder
    if (folder / checkpoint.filename).is_file():
        return None
    where = f"Put {checkpoint.filename} (from {checkpoint.url}) into {folder}"
    if offline():
        return f"{checkpoint.filename} is not in {folder} and downloads are off (offline). {where}."
    if not reachable(checkpoint.url):
        host = urlparse(checkpoint.url).netloc
        return f"{checkpoint.filename} is not in {folder} and {host} cannot be reached (offline?). {where}."
    return None


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_marker(path: Path) -> None:
    stat = path.stat()
    _marker(path).write_text(f"{stat.st_size} {stat.st_mtime_ns}\n")


def _verify(path: Path, checkpoint: Checkpoint) -> None:
    stat = path.stat()
    marker = _marker(path)
    if marker.is_file() and marker.read_text().strip() == f"{stat.st_size} {stat.st_mtime_ns}":
        return
    verify_sha256(path, checkpoint.sha256, f"{path} (from {checkpoint.url})")
    _write_marker(path)


def reachable(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout_s`` (fails fast when offline)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
