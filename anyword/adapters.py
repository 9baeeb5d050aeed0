"""Text-encoder adapters on disk (Segment Anyword_f, paper C.1): peft's own LoRA format plus a small record of
what the adapter was made for, found, matched to their base model and merged into the text encoder at load.

A folder holds ``adapter_model.safetensors`` + ``adapter_config.json`` (what ``PeftModel.from_pretrained`` reads)
and ``anyword_adapter.json`` (:class:`AdapterInfo`). Only safetensors are read; a folder with pickled weights
(``.bin``, ``.pt``) is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anyword.diffusion.adaptation import (
    CONFIG_FILE,
    INFO_FILE,
    WEIGHTS_FILE,
    AdapterError,
    AdapterInfo,
    text_encoder_fingerprint,
)
from anyword.diffusion.backbone import Backbone
from anyword.settings import FAST, Overrides, Quality

if TYPE_CHECKING:
    from anyword.presets import Preset

SHIPPED = "shipped"  # --adapter shipped: the preset's own adapter
ADAPTERS_ENV = "ANYWORD_ADAPTERS"  # a folder of adapter folders the demo lists beside the shipped ones


@dataclass(frozen=True)
class Adapter:
    """An adapter folder checked on disk: ``ident`` names it in results and cache keys (folder name + the first
    12 hex digits of its weights' sha256)."""

    path: Path
    info: AdapterInfo
    ident: str

    def to_dict(self) -> dict:
        return {"id": self.ident, "path": str(self.path), **self.info.to_dict()}


def read_adapter(path: str | Path) -> Adapter:
    """Check and describe the adapter in folder ``path`` (nothing is loaded into a model yet)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"adapter folder not found: {folder}")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    if pickles:
        raise AdapterError(f"{folder} holds pickled weights ({', '.join(pickles)}); only safetensors are read")
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE, INFO_FILE) if not (folder / name).is_file()]
    if missing:
        raise AdapterError(f"{folder} is not a Segment Anyword adapter: {', '.join(missing)} missing")
    try:
        info = AdapterInfo.from_dict(json.loads((folder / INFO_FILE).read_text()))
    except (ValueError, TypeError) as error:
        raise AdapterError(f"{folder / INFO_FILE} is unreadable: {error}") from None
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]
    return Adapter(path=folder, info=info, ident=f"{folder.name}@{digest}")


def resolve_adapter(preset: Preset, adapter: str | Path | Adapter | None) -> Adapter | None:
    """The adapter a run uses: ``None``, a folder, or "shipped" (the preset's own: an error if it has none)."""
    if adapter is None or isinstance(adapter, Adapter):
        return adapter
    if str(adapter) == SHIPPED:
        path = preset.shipped_adapter_path()
        if path is None:
            raise AdapterError(f"preset '{preset.name}' ships no text-encoder adapter; train one with `anyword adapt`")
        return read_adapter(path)
    return read_adapter(adapter)


def choose_adapter(
    preset: Preset, adapter: str | Path | Adapter | None, quality: Quality | None = None
) -> Adapter | None:
    """The adapter a run uses, for the command line and the demo alike: ``adapter`` when one is given (a folder,
    "shipped" or an :class:`Adapter`); else for the "fast" quality (Segment Anyword_f) the preset's shipped one;
    "fast" with no adapter for this model is refused in plain words (its steps alone are not Segment Anyword_f)."""
    if adapter is not None or quality != FAST:
        return resolve_adapter(preset, adapter)
    if preset.shipped_adapter_path() is not None:
        return resolve_adapter(preset, SHIPPED)
    steps = preset.settings(Overrides(quality=FAST)).diffusion.learning.steps
    raise AdapterError(
        f"Fast mode (Segment Anyword_f) needs a text-encoder adapter, and there is none for {preset.name} here: "
        f"train one with `anyword adapt`, or run the same {steps} prompt-learning steps without one."
    )


def apply_adapter(backbone: Backbone, adapter: Adapter | str | Path) -> Backbone:
    """``backbone`` with ``adapter`` merged into a copy of its text encoder (the UNet, VAE and the original text
    encoder are shared, untouched). Refuses an adapter made for another base model, naming both."""
    from peft import PeftModel

    adapter = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
    info = adapter.info
    if info.base != backbone.name:
        raise AdapterError(
            f"adapter {adapter.ident} was trained for '{info.base}' ({info.base_source}), not for '{backbone.name}' "
            f"({backbone.source})"
        )
    fingerprint = text_encoder_fingerprint(backbone.text_encoder)
    if fingerprint != info.base_fingerprint:
        raise AdapterError(
            f"adapter {adapter.ident} was trained on other '{info.base}' text-encoder weights ({info.base_source}, "
            f"fingerprint {info.base_fingerprint[:12]}) than these ({backbone.source}, fingerprint {fingerprint[:12]})"
        )
    encoder = copy.deepcopy(backbone.text_encoder)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        merged = PeftModel.from_pretrained(encoder, str(adapter.path), is_trainable=False).merge_and_unload()
    merged.to(device=backbone.device, dtype=backbone.dtype)
    return dataclasses.replace(
        backbone, text_encoder=merged, source=f"{backbone.source} + adapter {adapter.ident}", adapter=adapter.ident
    )


def find_adapters(
    shipped: Path | None = None, folder: str | Path | None = None, include_env: bool = True
) -> list[Adapter]:
    """The adapters that can be offered: ``shipped`` (a preset's) and every adapter folder inside ``folder``
    (default ``$ANYWORD_ADAPTERS`` unless ``include_env`` is off). Folders that are not adapters are left out."""
    candidates = [shipped] if shipped is not None else []
    root = folder or (os.environ.get(ADAPTERS_ENV) if include_env else None)
    if root and Path(root).is_dir():
        candidates += sorted(p for p in Path(root).iterdir() if p.is_dir())
    found = []
    for candidate in candidates:
        try:
            found.append(read_adapter(candidate))
        except AdapterError:
            continue
    return found
