"""The frozen diffusion model: UNet, text encoder, tokenizer, DDIM scheduler, and a VAE or pixel space.

All parameters are frozen at construction (``requires_grad=False``); test-time prompt learning trains a separate
tensor that replaces rows of the token-embedding output through a forward hook, so the shared embedding table is
never written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from anyword.devices import DTYPES
from anyword.diffusion.attention import CastAttnProcessor, attention_dtype, cross_attention_grids
from anyword.diffusion.speed import EAGER, SpeedSettings, compiled_unet, memory_format

PAPER_GRID = 16  # the paper averages cross-attention on the 16x16 layers (appendix C.1)


@dataclass
class Backbone:
    """A text-to-image diffusion model ready for inversion and attention recording.

    Attributes:
        name: preset name or model id, for reports.
        unet: ``diffusers.UNet2DConditionModel`` (epsilon- or v-prediction, as the scheduler says).
        text_encoder: ``transformers.CLIPTextModel`` (Stable Diffusion) or diffusers' ``LDMBertModel`` (LDM).
        tokenizer: the matching tokenizer (CLIP's BPE, BERT's WordPiece).
        scheduler: ``diffusers.DDIMScheduler``; its ``alphas_cumprod`` drive inversion and denoising.
        vae: ``diffusers.AutoencoderKL``, or ``None`` for a pixel-space model (latents = pixels scaled to [-1, 1]).
        resolution: side of the square model input in pixels.
        device, dtype: where and in which precision the models run.
        random_weights: True for presets built from configs with random weights (outputs mean nothing).
        source: where the weights came from (hub id, folder, "random"; "+ adapter ID" once one is merged).
        adapter: the id of the text-encoder adapter merged into ``text_encoder``, or ``None``.
        speed: how the UNet runs (:mod:`anyword.diffusion.speed`; eager by default).
        out_of_vocabulary: how prompt learning starts a word that is not one token of the vocabulary: "pieces"
            (from its pieces' embeddings, as for CLIP's BPE) or "random" (a seeded random vector: the paper's rule
            for BERT, appendix C.1).
    """

    name: str
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    vae: torch.nn.Module | None
    resolution: int
    device: torch.device
    dtype: torch.dtype
    random_weights: bool = False
    source: str = ""
    adapter: str | None = None
    speed: SpeedSettings = EAGER
    out_of_vocabulary: str = "pieces"
    _learning_unet: torch.nn.Module | None = field(default=None, init=False, repr=False, compare=False)
    _cast_processors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        for module in self.modules():
            module.requires_grad_(False)
            module.eval()

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.text_encoder, self.vae) if m is not None]

    @property
    def text_length(self) -> int:
        """Tokens the text encoder reads (77 for CLIP and LDM's BERT: start, 75 caption tokens, end)."""
        return int(self.text_encoder.config.max_position_embeddings)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell along each axis (8 for Stable Diffusion, 1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def attention_grids(self) -> tuple[int, ...]:
        """Sides of the query grids of the UNet's cross-attention layers at this model's input size, largest first
        (64, 32, 16, 8 for Stable Diffusion 1.x at 512 px)."""
        return cross_attention_grids(self.unet, self.resolution // self.latent_factor)

    @property
    def default_attention_grid(self) -> int:
        """The grid the paper's averaging uses on this model: its 16x16 layers where it has them (Stable Diffusion
        1.x at 512 px, the LDM at 256 px: the paper's, after MCPL and Prompt-to-Prompt); elsewhere the grid nearest
        a quarter of the latent side (24 for a 768 px Stable Diffusion; the larger one on a tie)."""
        if PAPER_GRID in self.attention_grids:
            return PAPER_GRID
        quarter = self.resolution // self.latent_factor / 4
        return min(self.attention_grids, key=lambda side: (abs(side - quarter), -side))

    @property
    def description(self) -> str:
        weights = "random weights" if self.random_weights else "pretrained weights"
        return f"{self.name} ({weights}, {self.resolution}px, {self.prediction_type}, {self.device}, {self.dtype})"

    @torch.no_grad()
    def encode_image(self, pixels: np.ndarray) -> torch.Tensor:
        """``(S, S, 3)`` uint8 model input -> latents ``(1, C, S/f, S/f)`` in ``self.dtype`` on ``self.device``.

        Uses the VAE posterior mean (deterministic), scaled by the VAE's ``scaling_factor``.
        """
        if pixels.shape != (self.resolution, self.resolution, 3):
            raise ValueError(f"expected a {self.resolution}x{self.resolution} RGB input, got {pixels.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        tensor = tensor.to(self.device, self.dtype)
        if self.vae is None:
            return tensor
        latents = self.vae.encode(tensor).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    def text_states(self, input_ids: torch.Tensor | list[int], embeddings=None) -> torch.Tensor:
        """Text-encoder hidden states ``(1, L, D)`` for ``input_ids``, with learned embeddings swapped in.

        ``embeddings`` is a :class:`~anyword.diffusion.prompt_learning.LearnedEmbeddings` (or ``None``); gradients
        flow to its vectors when grad mode is on.
        """
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device).reshape(1, -1)
        if embeddings is None:
            return self.text_encoder(ids, return_dict=True)[0]
        with override_token_embeddings(self.text_encoder, embeddings.positions, embeddings.position_vectors()):
            return self.text_encoder(ids, return_dict=True)[0]

    def unet_forward(
        self, latents: torch.Tensor, timesteps, text_states: torch.Tensor, learning: bool = False
    ) -> torch.Tensor:
        """The UNet's prediction (epsilon or v, per the scheduler) for a batch of latents; ``learning``: the call
        comes from prompt learning (the compiled UNet serves it when :attr:`speed` asks)."""
        if text_states.shape[0] != latents.shape[0]:
            text_states = text_states.expand(latents.shape[0], -1, -1)
        unet = self.unet
        if learning and self.speed.compile:
            if self._learning_unet is None:
                self._learning_unet = compiled_unet(self.unet, self.speed)
            unet = self._learning_unet
        latents = latents.contiguous(memory_format=memory_format(self.speed))
        return unet(latents, timesteps, encoder_hidden_states=text_states).sample

    def learning_attention(self, dtype: str | None):
        """Context in which the UNet's attention computes in ``dtype`` ("fp16", "bf16", "fp32"; ``None``: its
        own), for prompt learning. One processor object per dtype for the model's life, so a compiled UNet meets
        the same processors on every run instead of recompiling."""
        if dtype is not None and dtype not in self._cast_processors:
            self._cast_processors[dtype] = CastAttnProcessor(DTYPES[dtype])
        return attention_dtype(self.unet, self._cast_processors.get(dtype))

    def with_speed(self, speed: SpeedSettings) -> Backbone:
        """This model running as ``speed`` says (the modules are shared; the UNet's memory layout follows the
        latest call)."""
        self.unet.to(memory_format=memory_format(speed))
        return dataclasses.replace(self, speed=speed)

    def to(self, device: str | torch.device) -> Backbone:
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        return self


@contextmanager
def override_token_embeddings(
    text_encoder: torch.nn.Module, positions: torch.Tensor, vectors: torch.Tensor
) -> Iterator[None]:
    """Within the block, the token-embedding layer's output at ``positions`` (of every sequence) is ``vectors``.

    A forward hook on ``text_encoder.get_input_embeddings()`` replaces those rows in a copy of the output; the
    embedding table itself is untouched, so concurrent runs on one shared model never see each other's vectors.

    Args:
        positions: ``(k,)`` long, token positions in the input sequence.
        vectors: ``(k, D)``, one embedding per position (any float dtype; cast to the layer's).
    """

    def replace(module, args, output):
        output = output.clone()
        output[:, positions.to(output.device)] = vectors.to(device=output.device, dtype=output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
