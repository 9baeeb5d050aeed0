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
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anyword import environment
from anyword.diffusion.adaptation import (
    ATTENTION_TARGETS,
    CONFIG_FILE,
    INFO_FILE,
    MLP_TARGETS,
    WEIGHTS_FILE,
    AdapterError,
    AdapterInfo,
    read_json_file,
    text_encoder_fingerprint,
)
from anyword.diffusion.backbone import Backbone
from anyword.settings import FAST, Overrides, Quality

if TYPE_CHECKING:
    from anyword.presets import Preset

SHIPPED = "shipped"  # --adapter shipped: the preset's own adapter
logger = logging.getLogger(__name__)

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


MAX_RANK = 1024  # LoRA ranks above this are no low-rank adapter (the paper's is 16); bounds what a file makes us build


def read_adapter(path: str | Path) -> Adapter:
    """Check and describe the adapter in folder ``path`` (nothing is loaded into a model yet): the three files are
    regular files (no links, no pickles), the record and peft's config are what this project writes (LoRA, a rank
    up to :data:`MAX_RANK`, target modules named, not patterns), and the weights are a safetensors file whose
    tensors are the config's LoRA matrices, of its rank, with finite values. Each problem is one
    :class:`AdapterError` naming the file and the field or tensor."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"adapter folder not found: {folder}")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
    if pickles:
        raise AdapterError(f"{folder} holds pickled weights ({', '.join(pickles)}); only safetensors are read")
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE, INFO_FILE) if not (folder / name).is_file()]
    if missing:
        raise AdapterError(f"{folder} is not a Segment Anyword adapter: {', '.join(missing)} missing")
    links = [name for name in (WEIGHTS_FILE, CONFIG_FILE, INFO_FILE) if (folder / name).is_symlink()]
    if links:
        raise AdapterError(f"{folder}: {', '.join(links)} is a link; an adapter's files are read only as files")
    info = AdapterInfo.from_dict(read_json_file(folder / INFO_FILE), str(folder / INFO_FILE))
    rank, targets = _check_config(folder / CONFIG_FILE)
    _check_weights(folder / WEIGHTS_FILE, rank, targets)
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]
    return Adapter(path=folder, info=info, ident=f"{folder.name}@{digest}")


def _check_config(path: Path) -> tuple[int, tuple[str, ...]]:
    """peft's ``adapter_config.json``: a LoRA of rank 1..MAX_RANK on named modules this project adapts."""
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: peft's adapter config is a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: 'peft_type' must be 'LORA', not {config.get('peft_type')!r}")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise AdapterError(f"{path}: 'r' (the LoRA rank) must be a whole number from 1 to {MAX_RANK}, not {rank!r}")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise AdapterError(f"{path}: 'lora_alpha' must be a positive number, not {alpha!r}")
    targets = config.get("target_modules")
    allowed = ATTENTION_TARGETS + MLP_TARGETS
    if not isinstance(targets, list) or not targets or not all(t in allowed for t in targets):
        raise AdapterError(
            f"{path}: 'target_modules' must be a list of module names from {', '.join(allowed)} (a pattern such as "
            f"'.*' would adapt every layer), not {targets!r}"
        )
    return rank, tuple(targets)


def _check_weights(path: Path, rank: int, targets: tuple[str, ...]) -> None:
    """Every tensor a LoRA matrix of one of ``targets``: ``lora_A`` ``(rank, in)``, ``lora_B`` ``(out, rank)``,
    finite (read from the safetensors header first, then the values)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            names = list(weights.keys())
            if not names:
                raise AdapterError(f"{path} holds no tensors")
            for name in names:
                _check_tensor(path, name, weights.get_slice(name).get_shape(), rank, targets)
            for name in names:
                if not bool(weights.get_tensor(name).float().isfinite().all()):
                    raise AdapterError(f"{path}: tensor {name} holds values that are not finite (NaN or infinity)")
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"{path} is not a readable safetensors file ({error})") from None


def _check_tensor(path: Path, name: str, shape: list[int], rank: int, targets: tuple[str, ...]) -> None:
    parts = name.split(".")
    if len(parts) < 4 or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B") or parts[-3] not in targets:
        raise AdapterError(f"{path}: tensor {name} is not a LoRA matrix of {', '.join(targets)}")
    expected_axis = 0 if parts[-2] == "lora_A" else 1
    if len(shape) != 2 or shape[expected_axis] != rank:
        raise AdapterError(f"{path}: tensor {name} has shape {list(shape)}; a rank-{rank} {parts[-2]} has {rank} "
                           f"{'rows' if expected_axis == 0 else 'columns'}")  # fmt: skip


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
        try:
            merged = PeftModel.from_pretrained(encoder, str(adapter.path), is_trainable=False).merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as error:  # tensors that do not fit this text encoder
            first = str(error).strip().splitlines()
            reason = next((line.strip() for line in first if "size mismatch" in line), first[0] if first else "")
            raise AdapterError(
                f"adapter {adapter.ident} does not fit {backbone.name}'s text encoder: {reason}"
            ) from None
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
    root = folder or (environment.read(ADAPTERS_ENV, environment.folder, None) if include_env else None)
    if root and not Path(root).is_dir():
        logger.warning("%s %s is not a folder; no adapters read from it", ADAPTERS_ENV, root)
    elif root:
        candidates += sorted(p for p in Path(root).iterdir() if p.is_dir())
    found = []
    for candidate in candidates:
        try:
            found.append(read_adapter(candidate))
        except AdapterError as error:
            logger.warning("left out adapter folder %s: %s", candidate, error)
    return found
