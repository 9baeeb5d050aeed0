"""Published Hugging Face repositories (diffusers pipelines, transformers models): which of their files a loader
reads (:class:`Layout`), and where those files are: a local folder, the Hugging Face cache, or a download into it
(only the files the layout names). Offline (``HF_HUB_OFFLINE=1`` or no network) and not cached, :func:`resolve`
raises :class:`ModelUnavailableError` naming the model, the cache folder and how to get it; :func:`availability`
says the same without raising.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anyword.downloads import Availability, reachable
from anyword.errors import ModelUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """What a loader reads from a repository: ``configs`` (glob patterns) and, per component folder (``""``: the
    repository's top level), the weight file names it accepts (the first present is read). ``what`` names the
    weights in messages ("Stable Diffusion weights"); ``variant`` is the weight variant the names carry (``"fp16"``
    or ``None``); ``instead`` says what a user can do without them (a local folder's option, a stand-in)."""

    what: str
    configs: tuple[str, ...]
    weights: dict[str, tuple[str, ...]]
    variant: str | None = None
    instead: str = (
        "or pass a local diffusers folder with --model PATH. Without them, --preset tiny runs the whole pipeline "
        "with random weights."
    )

    def patterns(self) -> list[str]:
        return [
            *self.configs,
            *(f"{part}/{name}".lstrip("/") for part, names in self.weights.items() for name in names),
        ]

    def weight_file(self, folder: Path, component: str) -> Path | None:
        return next(
            (folder / component / n for n in self.weights[component] if (folder / component / n).is_file()), None
        )

    def complete(self, folder: Path) -> bool:
        return all(self.weight_file(folder, component) is not None for component in self.weights)


def resolve(model: str, layouts: Sequence[Layout]) -> tuple[Path, Layout]:
    """A local folder holding ``model``'s files in the first of ``layouts`` found complete: ``model`` itself if it
    is a folder, else its Hugging Face cache snapshot, downloaded if missing and allowed."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, next((layout for layout in layouts if layout.complete(path)), layouts[0])
    if model.startswith((".", "/", "~")) or model.count("/") > 1:  # a path, not an "org/name" hub id
        raise ModelUnavailableError(f"model folder not found: {model}")
    cached = [(folder, layout) for layout in layouts if (folder := _cached(model, layout)) is not None]
    if cached and cached[0][1].variant == layouts[0].variant:
        folder, layout = cached[0]  # the preferred precision is here (in one of its formats)
    elif (reason := unavailable_reason(model, layouts[0])) is None:
        folder, layout = _download(model, layouts)  # fetch the preferred files while the hub answers
    elif cached:
        folder, layout = cached[0]  # offline: what is cached (fp32 weights cast to fp16, say) still runs
    else:
        raise ModelUnavailableError(partial_cache_reason(model, layouts) or reason)
    check_weight_files(folder, layout)
    return folder, layout


def _cached(model: str, layout: Layout) -> Path | None:
    folder = _snapshot(model, layout, local_only=True)
    return folder if folder is not None and layout.complete(folder) else None


def check_weight_files(folder: Path, layout: Layout) -> None:
    """Refuse a snapshot whose safetensors file is cut short or damaged (its header promises more bytes than the
    file holds), naming the file and how to replace it, before any loader reads it."""
    for component in layout.weights:
        path = layout.weight_file(folder, component)
        if path is None or path.suffix != ".safetensors":
            continue
        problem = _safetensors_problem(path)
        if problem is not None:
            raise ModelUnavailableError(
                f"{path} is {problem}: delete it (and its blob {path.resolve()}) and download it again "
                "(`anyword download` or the first run with network)"
            )


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"truncated ({size} bytes, not even a header)"
        header_size = int.from_bytes(prefix, "little")
        if header_size > size - 8:
            return f"truncated ({size} bytes; its header alone needs {header_size + 8})"
        try:
            header = json.loads(handle.read(header_size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "not a safetensors file (its header does not parse)"
    expected = 8 + header_size + end
    return None if size == expected else f"truncated or damaged ({size} bytes where its header says {expected})"


def partial_cache_reason(model: str, layouts: Sequence[Layout]) -> str | None:
    """When ``model`` is partly in the Hugging Face cache (an interrupted or pruned download): which of the files
    the first layout needs are missing, and whether a download was cut short."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model, repo_type="model")
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    if not snapshots:
        return None
    layout, folder = layouts[0], snapshots[-1]
    missing = [
        f"{c}/{n}".lstrip("/") for c in layout.weights for n in layout.weights[c][:1] if not (folder / c / n).is_file()
    ]
    if not missing:
        return None
    cut = sorted(p.name for p in (repo / "blobs").glob("*.incomplete")) if (repo / "blobs").is_dir() else []
    interrupted = f"; a download was interrupted ({', '.join(cut)} in {repo / 'blobs'})" if cut else ""
    return (
        f"{layout.what} '{model}' are only partly in the Hugging Face cache ({folder}): missing "
        f"{', '.join(missing)}{interrupted}. Finish the download with `hf download {model}` (or `anyword download` "
        "with the preset) on a machine with network, then run again."
    )


def availability(model: str, layouts: Sequence[Layout]) -> Availability:
    """Whether ``model`` (hub id or local folder) can load here: found in a folder or the Hugging Face cache,
    downloadable, or missing (with the reason). Looks at the cache, ``HF_HUB_OFFLINE`` and whether the hub answers
    within seconds; downloads nothing."""
    from huggingface_hub import constants

    path = Path(model).expanduser()
    if path.is_dir():
        if any(layout.complete(path) for layout in layouts):
            return Availability("local", str(path))
        return Availability("missing", str(path), f"{path} holds no complete {layouts[0].what}")
    for layout in layouts:
        folder = _snapshot(model, layout, local_only=True)
        if folder is not None and layout.complete(folder):
            return Availability("cached", str(folder))
    reason = unavailable_reason(model, layouts[0])
    return Availability("missing" if reason else "downloadable", constants.HF_HUB_CACHE, reason)


def how_to_get(model: str, layout: Layout) -> str:
    return (
        f"To get them, run `hf download {model}` on a machine with network (or copy its Hugging Face cache "
        f"folder here), {layout.instead}"
    )


def unavailable_reason(model: str, layout: Layout) -> str | None:
    """Why ``model``, not in the cache, cannot be downloaded now (offline mode, hub unreachable), or ``None``."""
    from huggingface_hub import constants

    cache, what = constants.HF_HUB_CACHE, layout.what
    if constants.HF_HUB_OFFLINE:
        return (
            f"{what} '{model}' are not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set. "
            f"{how_to_get(model, layout)}"
        )
    if not reachable(constants.ENDPOINT):
        return (
            f"{what} '{model}' are not in the Hugging Face cache ({cache}) and {constants.ENDPOINT} cannot be "
            f"reached (offline?). {how_to_get(model, layout)}"
        )
    return None


def _snapshot(model: str, layout: Layout, local_only: bool) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, allow_patterns=layout.patterns(), local_files_only=local_only))
    except LocalEntryNotFoundError:
        return None


def _download(model: str, layouts: Sequence[Layout]) -> tuple[Path, Layout]:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    logger.warning("downloading %s into %s (first use only)", model, constants.HF_HUB_CACHE)
    last_error: Exception | None = None
    for layout in layouts:
        try:
            folder = _snapshot(model, layout, local_only=False)
        except (HfHubHTTPError, OSError) as error:
            last_error = error
            continue
        if folder is not None and layout.complete(folder):
            from anyword.downloads import verify_hub_snapshot

            verify_hub_snapshot(folder, layout.patterns())  # every LFS blob hashes to its published sha256
            return folder, layout
    raise ModelUnavailableError(
        f"could not download {layouts[0].what} '{model}' into {constants.HF_HUB_CACHE}: "
        f"{last_error or 'the files it needs are not there'}. {how_to_get(model, layouts[0])}"
    )
