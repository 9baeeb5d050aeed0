"""Backbone loading: pretrained Stable Diffusion v1.x (hub id or local folder), and random-weight models built from
configs for tests (``tiny``) and for timing the real architecture (``sd15-random``). Which preset uses which
loader is declared once, in :mod:`anyword.presets`.

Pretrained weights load from the Hugging Face cache, downloading only the safetensors the pipeline needs (UNet,
VAE, text encoder, tokenizer, scheduler; no safety checker: :func:`sd_layouts`, :mod:`anyword.repository`).
Offline (``HF_HUB_OFFLINE=1`` or no network) and not cached, loading raises :class:`ModelUnavailableError` naming
the model, the cache folder and how to get it.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import torch

from anyword.devices import pick_device, pick_dtype
from anyword.diffusion.backbone import Backbone
from anyword.downloads import Availability
from anyword.errors import ModelUnavailableError
from anyword.repository import Layout, availability, resolve

logger = logging.getLogger(__name__)

# DDIM settings of null-text inversion (Mokady et al. 2023), on top of each model's own beta schedule.
DDIM_OVERRIDES = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    **DDIM_OVERRIDES,
}
_WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_CONFIGS = [
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
]


def clip_text_config(hidden_size: int, intermediate_size: int, layers: int, heads: int) -> dict:
    """A ``CLIPTextConfig`` for Stable Diffusion's CLIP tokenizer (its vocabulary and special tokens) at any size."""
    return {
        "vocab_size": 49408,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
        "hidden_act": "quick_gelu",
        "projection_dim": hidden_size,
    }


def cast_modules(modules, device: torch.device, dtype: torch.dtype) -> None:
    """Move modules to ``device`` and ``dtype`` in place. diffusers warns on every ``.to(dtype)`` of a model built
    from a config ("modules that should be kept in float32: []"); these models keep none, so that log is silenced."""
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        for module in modules:
            module.to(device=device, dtype=dtype)
    finally:
        diffusers_logger.setLevel(level)


def packaged_config_dir(name: str) -> Path:
    return Path(str(resources.files("anyword") / "data" / name))


# --- loaders: each takes name=, device=, dtype=, seed= (the preset registry names what they build) -------------


def load_pretrained(
    model: str,
    *,
    name: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> Backbone:
    """Stable Diffusion v1.x from hub id or local diffusers folder ``model`` (reported as ``name``, default the
    model itself). ``seed`` is unused: trained weights are not drawn."""
    torch_device = pick_device(device)
    backbone = _load_pretrained(name or model, model, torch_device, pick_dtype(torch_device, dtype))
    logger.info("loaded %s", backbone.description)
    return backbone


def build_tiny(
    *, name: str = "tiny-sd-random", device: str | None = None, dtype: str | torch.dtype | None = None, seed: int = 0
) -> Backbone:
    """A tiny random-weight model with Stable Diffusion's classes and CLIP tokenizer (64 px input)."""
    return _build_random(name, _tiny_configs(), 64, device, dtype, seed)


def build_sd15_random(
    *,
    name: str = "sd15-architecture-random",
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
) -> Backbone:
    """The full SD 1.5 architecture with seeded random weights: for timing and memory only."""
    return _build_random(name, _sd15_configs(), 512, device, dtype, seed)


def _tiny_configs() -> dict:
    """Small configs with the same classes as Stable Diffusion; 64 px input, 32x32 latent, attention at 32 and 16."""
    from anyword.tokens import packaged_tokenizer_dir

    return {
        "unet": {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": [32, 64],
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "block_out_channels": [32, 64],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "sample_size": 64,
            "scaling_factor": 0.18215,
        },
        "text_encoder": clip_text_config(hidden_size=32, intermediate_size=64, layers=2, heads=4),
        "scheduler": SD_SCHEDULER,
        "tokenizer": str(packaged_tokenizer_dir()),
    }


def _sd15_configs() -> dict:
    from anyword.tokens import packaged_tokenizer_dir

    root = packaged_config_dir("sd15-config")
    configs = {part: json.loads((root / part / "config.json").read_text()) for part in ("unet", "vae", "text_encoder")}
    configs["scheduler"] = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    configs["tokenizer"] = str(packaged_tokenizer_dir())
    return configs


def _build_random(
    name: str, configs: dict, resolution: int, device: str | None, dtype: str | torch.dtype | None, seed: int
) -> Backbone:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from anyword.tokens import load_tokenizer

    def clean(config: dict) -> dict:
        return {k: v for k, v in config.items() if not k.startswith("_")}

    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    # Seed without touching the caller's global RNG state; build on the target device (fast for 1B parameters).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(clean(configs["unet"]))
            vae = AutoencoderKL.from_config(clean(configs["vae"]))
            text_config = {k: v for k, v in clean(configs["text_encoder"]).items() if k != "architectures"}
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = DDIMScheduler.from_config({**clean(configs["scheduler"]), **DDIM_OVERRIDES})
    cast_modules((unet, vae, text_encoder), device, dtype)
    backbone = Backbone(
        name=name,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(configs["tokenizer"]),
        scheduler=scheduler,
        vae=vae,
        resolution=resolution,
        device=device,
        dtype=dtype,
        random_weights=True,
        source=f"random weights (seed {seed})",
    )
    logger.info("loaded %s", backbone.description)
    return backbone


# --- pretrained models ---------------------------------------------------------------------------------------


def sd_layouts(variant: str | None) -> list[Layout]:
    """The files of a Stable Diffusion v1.x repository the pipeline reads, the ``variant`` (fp16) first when asked:
    UNet, VAE, text encoder, tokenizer, scheduler; safetensors only; no safety checker."""

    def layout(chosen: str | None) -> Layout:
        suffix = f".{chosen}.safetensors" if chosen else ".safetensors"
        weights = {part: (f"{stem}{suffix}",) for part, stem in _WEIGHTS.items()}
        return Layout("Stable Diffusion weights", tuple(_CONFIGS), weights, chosen)

    return [layout(chosen) for chosen in dict.fromkeys([variant, None])]


def _load_pretrained(name: str, model: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root, layout = resolve(model, sd_layouts("fp16" if dtype == torch.float16 else None))
    variant = layout.variant if layout.complete(root) else None
    try:
        unet = UNet2DConditionModel.from_pretrained(
            root, subfolder="unet", torch_dtype=dtype, variant=variant, use_safetensors=True
        )
        vae = AutoencoderKL.from_pretrained(
            root, subfolder="vae", torch_dtype=dtype, variant=variant, use_safetensors=True
        )
        text_encoder = CLIPTextModel.from_pretrained(
            root, subfolder="text_encoder", dtype=dtype, variant=variant, use_safetensors=True
        )
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        scheduler_config = DDIMScheduler.load_config(root, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"'{model}' at {root} is incomplete or not a diffusers Stable Diffusion folder "
            f"(unet/, vae/, text_encoder/, tokenizer/, scheduler/ with safetensors weights): {error}"
        ) from None
    scheduler = DDIMScheduler.from_config({**scheduler_config, **DDIM_OVERRIDES})
    unet.to(device)
    vae.to(device)
    text_encoder.to(device)
    return Backbone(
        name=name,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        vae=vae,
        resolution=input_resolution(unet, vae),
        device=device,
        dtype=dtype,
        random_weights=False,
        source=str(model),
    )


def input_resolution(unet, vae) -> int:
    """The square input side a UNet and autoencoder are made for (latent side x the autoencoder's factor)."""
    sample = unet.config.sample_size
    return (sample if isinstance(sample, int) else sample[0]) * 2 ** (len(vae.config.block_out_channels) - 1)


def sd_availability(model: str) -> Availability:
    """Whether Stable Diffusion ``model`` (hub id or local folder) can load here (see :func:`availability`)."""
    return availability(model, sd_layouts("fp16"))


# --- stand-ins of the published repositories (rehearsals of the loading path; anyword.rehearsal) ---------------

# model_index.json of the Stable Diffusion v1.x repositories, as published.
SD_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# scheduler/scheduler_config.json as published (the pipeline's PNDM; the loader keeps only its beta schedule).
SD_PUBLISHED_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def write_sd_stand_in(folder: Path, seed: int = 0) -> None:
    """A toy Stable Diffusion v1.x repository in the published diffusers layout: ``model_index.json``; ``unet/``,
    ``vae/`` and ``text_encoder/`` each with fp32 and fp16 weights as safetensors and PyTorch ``.bin`` (the UNet
    also its ``non_ema`` variant), ``tokenizer/`` (the real CLIP tokenizer files), ``scheduler/`` (PNDM, as
    published) and the folders the loader must skip (``safety_checker/``, ``feature_extractor/``). Weights are
    ``tiny``'s (seeded, random); file names, config keys and formats are the published ones."""
    import shutil

    from anyword.tokens import packaged_tokenizer_dir

    backbone = build_tiny(device="cpu", dtype="fp32", seed=seed)
    for part, module in (("unet", backbone.unet), ("vae", backbone.vae), ("text_encoder", backbone.text_encoder)):
        save_published_weights(module, folder / part, diffusers=part != "text_encoder")
    for suffix in (".safetensors", ".bin"):
        unet = folder / "unet" / "diffusion_pytorch_model"
        shutil.copy(f"{unet}{suffix}", f"{unet}.non_ema{suffix}")
    shutil.copytree(
        packaged_tokenizer_dir(), folder / "tokenizer", ignore=shutil.ignore_patterns("*.md"), dirs_exist_ok=True
    )
    write_json(folder / "scheduler" / "scheduler_config.json", SD_PUBLISHED_SCHEDULER)
    write_json(folder / "model_index.json", SD_MODEL_INDEX)
    write_json(folder / "feature_extractor" / "preprocessor_config.json",
                {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                 "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224})  # fmt: skip
    write_json(folder / "safety_checker" / "config.json",
                {"_name_or_path": "CompVis/stable-diffusion-safety-checker",
                 "architectures": ["StableDiffusionSafetyChecker"], "model_type": "clip"})  # fmt: skip
    marker = {"concept_embeds": torch.zeros(2, 4)}  # the loader never reads it: a stand-in only by name and format
    for dtype, variant in ((torch.float32, ""), (torch.float16, ".fp16")):
        cast = {k: v.to(dtype) for k, v in marker.items()}
        _save_state(cast, folder / "safety_checker", f"model{variant}", f"pytorch_model{variant}")


def save_published_weights(module, folder: Path, diffusers: bool) -> None:
    """``module``'s config and its weights in fp32 and fp16, as safetensors and PyTorch ``.bin`` files, under the
    names diffusers (``diffusion_pytorch_model``) or transformers (``model`` / ``pytorch_model``) publish."""
    module.save_pretrained(folder)  # config.json and the fp32 safetensors
    stem, bin_stem = ("diffusion_pytorch_model", "diffusion_pytorch_model") if diffusers else ("model", "pytorch_model")
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    for dtype, variant in ((torch.float32, ""), (torch.float16, ".fp16")):
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        _save_state(cast, folder, f"{stem}{variant}", f"{bin_stem}{variant}")


def _save_state(state: dict, folder: Path, name: str, bin_name: str) -> None:
    """``state`` as ``name.safetensors`` and as the pickled ``bin_name.bin`` beside it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / f"{name}.safetensors"), metadata={"format": "pt"})
    torch.save(state, folder / f"{bin_name}.bin")


def write_json(path: Path, data: dict) -> None:
    """``data`` as an indented JSON file, its folder made (configs of the stand-in repositories)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
