"""The ``shapes`` backbone: a tiny text-to-image diffusion model trained in this repository on synthetic scenes
(:mod:`anyword.shapes` renders them and trains it; this module only defines and loads the model).

Same component classes as Stable Diffusion (diffusers ``UNet2DConditionModel`` with cross-attention, DDIM, a
transformers ``CLIPTextModel`` with the real CLIP tokenizer), except that it works in pixel space: there is no VAE,
the "latent" is the 64x64 RGB image scaled to [-1, 1] (``Backbone.vae = None``). It predicts v rather than epsilon
(with epsilon-prediction the same budget did not bind words to objects), so inversion, direct inversion and the
prompt-learning loss honour ``prediction_type``. Besides the diffusion loss it was trained with TokenCompose's
grounding losses on the training scenes' masks (:mod:`anyword.shapes.train`): with the diffusion loss alone its
cross-attention stayed nearly uniform over the tokens (docs/benchmarks.md). The novel split's words are never seen
in training, so prompt learning alone must bind them.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from anyword.devices import pick_device, pick_dtype
from anyword.diffusion.loading import cast_modules, clip_text_config
from anyword.errors import ModelUnavailableError

RESOLUTION = 64

UNET_CONFIG = {
    "sample_size": RESOLUTION,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [16, 32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    # 32x32 layers attend to the text only (no 1024-token self-attention: cheap enough for a CPU).
    "only_cross_attention": [False, True, False],
    "cross_attention_dim": 64,
    "attention_head_dim": [4, 8, 16],  # diffusers' legacy name for the number of heads: head size 4
    "norm_num_groups": 8,
}
TEXT_CONFIG = clip_text_config(hidden_size=64, intermediate_size=256, layers=2, heads=4)
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
WEIGHT_FILES = ("unet.safetensors", "text_encoder.safetensors", "model.json")


def weights_dir(world: str = "shapes") -> Path:
    """The package folder of a world's model: ``shapes`` (world 1) or ``parts`` (world 2)."""
    return Path(str(resources.files("anyword") / "data" / world))


def missing_weight_files(folder: Path | None = None) -> list[str]:
    """Which of the model's files are not in ``folder`` (default: the package's)."""
    folder = folder or weights_dir()
    return [name for name in WEIGHT_FILES if not (folder / name).is_file()]


def build_models(seed: int = 0):
    """Fresh (untrained) UNet and text encoder with the preset's configs, seeded."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return unet, text_encoder


def load_weights(unet, text_encoder, folder: Path) -> None:
    """Load a shapes model's fp16 safetensors from ``folder`` into ``unet`` and ``text_encoder`` (as fp32)."""
    from safetensors.torch import load_file

    for name, module in (("unet", unet), ("text_encoder", text_encoder)):
        module.load_state_dict({k: v.float() for k, v in load_file(str(folder / f"{name}.safetensors")).items()})


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def load_shapes_backbone(
    *,
    name: str = "shapes-model",
    device: torch.device | str | None = "cpu",
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    folder: str | Path | None = None,
    world: str = "shapes",
):
    """A world's trained shapes model from the package's safetensors (or ``folder``'s; no network; ``seed`` is
    unused: trained weights). ``dtype`` defaults to fp32 (the model is small and was trained in fp32)."""

    from anyword.diffusion.backbone import Backbone
    from anyword.tokens import load_tokenizer

    folder = Path(folder) if folder else weights_dir(world)
    missing = missing_weight_files(folder)
    if missing:
        raise ModelUnavailableError(
            f"the shapes model is missing {', '.join(missing)} in {folder}; train it with "
            "`anyword shapes train` (see docs/benchmarks.md)"
        )
    unet, text_encoder = build_models()
    load_weights(unet, text_encoder, folder)
    info = json.loads((folder / "model.json").read_text())
    device = pick_device(device)
    dtype = pick_dtype(device, dtype or torch.float32)
    cast_modules((unet, text_encoder), device, dtype)
    return Backbone(
        name=name,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer(),
        scheduler=make_scheduler(),
        vae=None,
        resolution=RESOLUTION,
        device=device,
        dtype=dtype,
        random_weights=False,
        source=f"anyword/data/{folder.name} (trained {info.get('steps', '?')} steps, seed {info.get('seed', '?')})",
    )
