"""The paper's backbone: the latent diffusion model (LDM) with a BERT text encoder that MCPL uses (appendix C.1),
published in diffusers' layout as ``CompVis/ldm-text2im-large-256``: ``bert/`` (``LDMBertModel``), ``tokenizer/``
(BERT's WordPiece), ``unet/`` (``UNet2DConditionModel``, cross-attention at 32x32, 16x16 and 8x8 for a 256 px
input), ``vqvae/`` (an ``AutoencoderKL``) and ``scheduler/``. Random-weight stand-ins of the same classes:
:func:`build_ldm_tiny` (toy size, for tests) and :func:`build_ldm_random` (full size, for timing).

Weights are read as safetensors when the repository has them; otherwise from its PyTorch ``.bin`` files with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers (never a full unpickle).
A word of BERT's vocabulary starts prompt learning from its pretrained embedding, any other word (several pieces)
from a seeded random one (``Backbone.out_of_vocabulary = "random"``, the paper's rule).
"""

from __future__ import annotations

import json
import logging
import pickle
from importlib import resources
from pathlib import Path

import torch

from anyword.devices import pick_device, pick_dtype
from anyword.diffusion.backbone import Backbone
from anyword.diffusion.loading import DDIM_OVERRIDES, cast_modules, input_resolution, write_json
from anyword.downloads import Availability
from anyword.errors import ModelUnavailableError
from anyword.repository import Layout, availability, resolve

logger = logging.getLogger(__name__)

LDM_MODEL = "CompVis/ldm-text2im-large-256"
_CONFIGS = ("model_index.json", "unet/config.json", "vqvae/config.json", "bert/config.json",
            "scheduler/scheduler_config.json", "tokenizer/*")  # fmt: skip


def ldm_layouts() -> list[Layout]:
    """The repository's files the loader reads: safetensors when there, else the PyTorch ``.bin`` files."""
    diffusers_names = {"safetensors": "diffusion_pytorch_model.safetensors", "bin": "diffusion_pytorch_model.bin"}
    transformers_names = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}
    layouts = []
    for kind in ("safetensors", "bin"):
        weights = {
            "unet": (diffusers_names[kind],),
            "vqvae": (diffusers_names[kind],),
            "bert": (transformers_names[kind],),
        }
        instead = (
            "or pass a local folder with --model PATH. Without them, --preset ldm-tiny runs it with random weights."
        )
        layouts.append(Layout("LDM weights", _CONFIGS, weights, instead=instead))
    return layouts


def ldm_availability(model: str = LDM_MODEL) -> Availability:
    return availability(model, ldm_layouts())


def packaged_dir(name: str) -> Path:
    return Path(str(resources.files("anyword") / "data" / name))


def load_ldm(
    model: str = LDM_MODEL,
    *,
    name: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> Backbone:
    """The pretrained LDM from hub id or local folder ``model`` (``seed`` is unused: trained weights)."""
    from transformers import BertTokenizer

    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    root, layout = resolve(model, ldm_layouts())
    try:
        tokenizer = BertTokenizer.from_pretrained(str(root / "tokenizer"))
        modules = {part: _module(root, part, _read_weights(layout, root, part)) for part in ("unet", "vqvae", "bert")}
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelUnavailableError(
            f"'{model}' at {root} is incomplete or not the LDM text-to-image layout (bert/, tokenizer/, unet/, vqvae/, "
            f"scheduler/): {error}"
        ) from None
    return _backbone(name or model, modules, tokenizer, scheduler_config, torch_device, torch_dtype, False, str(model))


def _read_weights(layout: Layout, root: Path, part: str) -> dict[str, torch.Tensor]:
    path = layout.weight_file(root, part)
    if path is None:
        raise ModelUnavailableError(f"{root / part} holds no weights ({', '.join(layout.weights[part])})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only
    except pickle.UnpicklingError as error:
        raise ModelUnavailableError(
            f"{path} was refused: it holds objects other than tensors ({str(error).splitlines()[0]}); it was read "
            "with torch.load(weights_only=True) and nothing in it ran"
        ) from None


def _module(root: Path, part: str, state: dict | None):
    """Component ``part`` built from its config in ``root``, with ``state`` loaded (strictly) when given."""
    config = {k: v for k, v in json.loads((root / part / "config.json").read_text()).items() if not k.startswith("_")}
    if part == "bert":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

        config.pop("model_type", None)
        module = LDMBertModel(LDMBertConfig(**config))
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        module = (UNet2DConditionModel if part == "unet" else AutoencoderKL).from_config(config)
    if state is not None:
        module.load_state_dict(state)
    return module


def _backbone(name, modules, tokenizer, scheduler_config, device, dtype, random_weights, source) -> Backbone:
    from diffusers import DDIMScheduler

    cast_modules(modules.values(), device, dtype)
    backbone = Backbone(
        name=name,
        unet=modules["unet"],
        text_encoder=modules["bert"],
        tokenizer=tokenizer,
        scheduler=DDIMScheduler.from_config({**scheduler_config, **DDIM_OVERRIDES}),
        vae=modules["vqvae"],
        resolution=input_resolution(modules["unet"], modules["vqvae"]),
        device=device,
        dtype=dtype,
        random_weights=random_weights,
        source=source,
        out_of_vocabulary="random",
    )
    logger.info("loaded %s", backbone.description)
    return backbone


def _random(root: Path, name: str, device, dtype, seed: int, tokenizer_dir: Path) -> Backbone:
    from transformers import BertTokenizer

    torch_device = pick_device(device)
    with torch.random.fork_rng(devices=[torch_device] if torch_device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(torch_device):
            modules = {part: _module(root, part, None) for part in ("unet", "vqvae", "bert")}
    tokenizer = BertTokenizer.from_pretrained(str(tokenizer_dir))
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    source = f"random weights (seed {seed})"
    return _backbone(name, modules, tokenizer, scheduler_config, torch_device, pick_dtype(torch_device, dtype),
                     True, source)  # fmt: skip


def build_ldm_random(
    *, name: str = "ldm-architecture-random", device: str | None = None, dtype=None, seed: int = 0
) -> Backbone:
    """The full LDM architecture (BERT 32 layers, UNet 256 px) with seeded random weights: timing and memory only.
    Tokenizes with the small test vocabulary (BERT's is not shipped; the text encoder's table keeps BERT's size)."""
    return _random(packaged_dir("ldm-config"), name, device, dtype, seed, packaged_dir("wordpiece-test-vocab"))


def build_ldm_tiny(*, name: str = "ldm-tiny-random", device: str | None = None, dtype=None, seed: int = 0) -> Backbone:
    """The LDM classes at toy size with seeded random weights and the small test WordPiece vocabulary: 64 px input,
    a 32x32 latent, cross-attention at 32x32 and 16x16 (tests)."""
    return _random(packaged_dir("ldm-tiny-config"), name, device, dtype, seed, packaged_dir("wordpiece-test-vocab"))


# model_index.json of CompVis/ldm-text2im-large-256, as published.
LDM_MODEL_INDEX = {
    "_class_name": "LDMTextToImagePipeline",
    "_diffusers_version": "0.0.4",
    "bert": ["latent_diffusion", "LDMBertModel"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "tokenizer": ["transformers", "BertTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vqvae": ["diffusers", "AutoencoderKL"],
}


def write_ldm_stand_in(folder: Path, seed: int = 0) -> None:
    """A toy ``CompVis/ldm-text2im-large-256`` in its published layout: ``model_index.json``; ``bert/``, ``unet/``
    and ``vqvae/`` with a config and PyTorch ``.bin`` weights only (the repository has no safetensors); ``tokenizer/``
    (WordPiece: the small test vocabulary), ``scheduler/``; ``images/`` (sample pictures the loader skips). Weights
    are ``ldm-tiny``'s (seeded, random)."""
    import shutil

    config = packaged_dir("ldm-tiny-config")
    backbone = build_ldm_tiny(device="cpu", dtype="fp32", seed=seed)
    modules = {"bert": backbone.text_encoder, "unet": backbone.unet, "vqvae": backbone.vae}
    for part, module in modules.items():
        (folder / part).mkdir(parents=True, exist_ok=True)
        shutil.copy(config / part / "config.json", folder / part / "config.json")
        name = "pytorch_model.bin" if part == "bert" else "diffusion_pytorch_model.bin"
        torch.save({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, folder / part / name)
    shutil.copytree(config / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    vocabulary = packaged_dir("wordpiece-test-vocab")
    shutil.copytree(vocabulary, folder / "tokenizer", ignore=shutil.ignore_patterns("*.md"), dirs_exist_ok=True)
    write_json(folder / "model_index.json", LDM_MODEL_INDEX)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "images" / "sample.png").write_bytes(b"\x89PNG\r\n\x1a\n stand-in: never read by the loader")
