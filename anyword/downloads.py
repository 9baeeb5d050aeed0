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


def hub_availability(repo: str, cached_folder: Path | str | None, what: str) -> Availability:
    """Availability of Hugging Face repo ``repo`` whose usable snapshot in the cache is ``cached_folder`` (``None``:
    not cached). ``what`` names the weights in messages ("SAM 2.1 weights")."""
    from huggingface_hub import constants

    if cached_folder is not None:
        return Availability("cached", str(cached_folder))
    reason = hub_download_blocker(repo, what)
    return Availability("missing" if reason else "downloadable", constants.HF_HUB_CACHE, reason)


def hub_download_blocker(repo: str, what: str) -> str | None:
    """Why ``repo``, not in the Hugging Face cache, cannot be downloaded now (offline mode, hub unreachable)."""
    from huggingface_hub import constants

    get = (
        f"To get them, run `hf download {repo}` on a machine with network (or copy its Hugging Face cache folder here)."
    )
    if constants.HF_HUB_OFFLINE or offline():
        return (
            f"{what} '{repo}' are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and downloads are off. {get}"
        )
    if not reachable(constants.ENDPOINT):
        return (
            f"{what} '{repo}' are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"{constants.ENDPOINT} cannot be reached (offline?). {get}"
        )
    return None


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

    A cached file is hashed once; a marker beside it (size and mtime) spares later loads the re-hash.
    """
    root = folder or cache_dir()
    folder = root / checkpoint.subfolder
    path = folder / checkpoint.filename
    if path.is_file():
        _verify(path, checkpoint)
        return path

    where = f"Put {checkpoint.filename} (from {checkpoint.url}) into {folder}"
    reason = unavailable_reason(checkpoint, root)
    if reason is not None:
        raise ModelUnavailableError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    logger.warning("downloading %s into %s (first use only)", checkpoint.url, folder)
    try:
        with urllib.request.urlopen(checkpoint.url, timeout=timeout_s) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=checkpoint.filename, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        partial.unlink(missing_ok=True)
        raise ModelUnavailableError(f"downloading {checkpoint.url} failed ({error}). {where}.") from None
    if digest.hexdigest() != checkpoint.sha256:
        partial.unlink(missing_ok=True)
        raise ModelUnavailableError(
            f"{checkpoint.filename} from {checkpoint.url} has sha256 {digest.hexdigest()}, expected "
            f"{checkpoint.sha256}: the download is corrupt or was tampered with, and was deleted."
        )
    partial.replace(path)
    _write_marker(path)
    return path


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
    actual = sha256_file(path)
    if actual != checkpoint.sha256:
        raise ModelUnavailableError(
            f"{path} has sha256 {actual}, expected {checkpoint.sha256}: delete it and it will be downloaded again "
            f"from {checkpoint.url}."
        )
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
