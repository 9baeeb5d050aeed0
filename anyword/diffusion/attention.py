"""Recording cross-attention, and the averaged per-token maps (DAAM-style API).

:func:`record_cross_attention` installs :class:`RecordingCrossAttnProcessor` on the UNet's cross-attention layers
with ``set_attn_processor`` (self-attention keeps its fused SDPA processor) and restores the previous processors on
exit. While recording is on, each cross-attention layer whose query grid is one of the chosen resolutions adds
``softmax(Q K^T / sqrt(d))``, averaged over heads and batch, to a running sum for that resolution: memory is one
``(h*w, L)`` tensor per resolution, whatever the number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from anyword.images import ImageFrame
from anyword.parsing.concepts import find_word
from anyword.tokens import TokenAlignment


class CrossAttentionRecorder:
    """Running sums of cross-attention probabilities per query resolution.

    ``active`` switches recording on and off (e.g. only while denoising, only inside a timestep range).
    """

    def __init__(self, resolutions: Iterable[int]):
        self.resolutions = tuple(sorted(set(resolutions)))
        if not self.resolutions:
            raise ValueError("record at least one resolution")
        self.active = False
        self._sums: dict[int, torch.Tensor] = {}
        self._rows: dict[int, int] = {}
        self._counts: dict[int, int] = {}
        self.layers_seen: set[str] = set()

    def add(self, layer: str, resolution: int, probabilities: torch.Tensor) -> None:
        """``probabilities``: ``(batch*heads, h*w, L)``, each row summing to 1 over the L tokens.

        Every (sample, head) slice weighs the same, so one call with a batch of timesteps adds what that many
        calls of one would (the layers of one grid have the same number of heads in diffusers' UNet)."""
        total = probabilities.float().sum(dim=0)
        if resolution in self._sums:
            self._sums[resolution] += total
        else:
            self._sums[resolution] = total
        self._rows[resolution] = self._rows.get(resolution, 0) + probabilities.shape[0]
        self._counts[resolution] = self._counts.get(resolution, 0) + 1
        self.layers_seen.add(layer)

    @property
    def calls(self) -> dict[int, int]:
        """Number of layer evaluations (UNet calls x layers) summed per resolution."""
        return dict(self._counts)

    def average(self) -> np.ndarray:
        """Token maps ``(L, r, r)`` float32 at the finest recorded resolution ``r``: each resolution's mean over
        layers and steps, upsampled bilinearly to ``r`` and averaged with equal weight per resolution."""
        if not self._sums:
            raise RuntimeError(
                f"no cross-attention recorded at resolutions {self.resolutions}: the model has no cross-attention "
                "layer there, or no denoising step fell inside the timestep range"
            )
        finest = max(math.isqrt(s.shape[0]) for s in self._sums.values())
        maps = []
        for resolution in sorted(self._sums):
            mean = self._sums[resolution] / self._rows[resolution]  # (r*r, L)
            grid = mean.T.reshape(1, mean.shape[1], resolution, resolution)
            if resolution != finest:
                grid = torch.nn.functional.interpolate(
                    grid, size=(finest, finest), mode="bilinear", align_corners=False
                )
            maps.append(grid[0])
        return torch.stack(maps).mean(dim=0).cpu().numpy().astype(np.float32)


class RecordingCrossAttnProcessor:
    """Cross-attention that also hands its probabilities to a recorder (when active and at a chosen resolution).

    Computes attention explicitly (``softmax(QK^T * scale) V``) only when recording; otherwise it defers to
    ``AttnProcessor2_0`` (fused SDPA), so layers and steps that are not recorded cost nothing extra.
    """

    def __init__(self, recorder: Recorder, layer: str):
        self.recorder = recorder
        self.layer = layer
        self._fused = AttnProcessor2_0()

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        resolution = _query_resolution(hidden_states)
        if not self.recorder.active or resolution not in self.recorder.resolutions or encoder_hidden_states is None:
            return self._fused(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        def attend(query, key, value, mask):
            probabilities = attn.get_attention_scores(query, key, mask)  # (batch*heads, h*w, L)
            self.recorder.add(self.layer, resolution, probabilities)
            return torch.bmm(probabilities, value)

        return written_out_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, attend)


class CastAttnProcessor:
    """Attention written out (``softmax(Q K^T * scale) V``) with Q, K and V cast to ``dtype`` and the result cast
    back: prompt learning's attention in bf16. With 4-wide heads (the shapes models) attention's cost is its
    softmax and memory traffic, not its matmuls; in bf16 a learning step of the shapes model takes ~0.78x the time
    on a CPU with AVX-512 bf16 (docs/performance.md). Every attention layer, self and cross."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        def attend(query, key, value, mask):
            query, key, value = (tensor.to(self.dtype) for tensor in (query, key, value))
            scores = torch.bmm(query * attn.scale, key.transpose(1, 2))
            if mask is not None:
                scores = scores + mask.to(scores.dtype)
            return torch.bmm(scores.softmax(dim=-1), value).to(hidden_states.dtype)

        return written_out_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, attend)


def written_out_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, attend) -> torch.Tensor:
    """diffusers' ``Attention`` forward with the attention itself left to ``attend(query, key, value, mask)``
    (``(batch*heads, n, head size)`` tensors, ``mask`` ``None`` or additive) -> ``(batch*heads, n, head size)``.
    Self-attention when ``encoder_hidden_states`` is ``None``."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], context.shape[0])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key, value = attn.to_k(context), attn.to_v(context)
    query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
    hidden_states = attn.batch_to_head_dim(attend(query, key, value, attention_mask))
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


@contextmanager
def attention_dtype(unet: torch.nn.Module, processor: CastAttnProcessor | None) -> Iterator[None]:
    """Within the block every attention layer of ``unet`` computes through ``processor`` (in its dtype); ``None``
    or a processor in the UNet's own dtype changes nothing. The previous processors come back on exit."""
    if processor is None or processor.dtype == unet.dtype:
        yield
        return
    original = unet.attn_processors
    unet.set_attn_processor(processor)
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def _query_resolution(hidden_states: torch.Tensor) -> int:
    """Side of the (square) query grid: latents are square because model inputs are."""
    if hidden_states.ndim == 4:
        return int(hidden_states.shape[-1])
    return math.isqrt(hidden_states.shape[1])


def cross_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Processor names of the UNet's cross-attention layers (``attn.is_cross_attention``), in module order."""
    names = []
    for name in unet.attn_processors:
        module = unet.get_submodule(name.removesuffix(".processor"))
        if getattr(module, "is_cross_attention", False):
            names.append(name)
    return names


def cross_attention_grids(unet: torch.nn.Module, latent_side: int) -> tuple[int, ...]:
    """Query-grid sides of ``unet``'s cross-attention layers for a ``latent_side`` input, largest first: a layer in
    down block ``i`` sees ``latent_side / 2**i``, the middle block the coarsest level, up block ``j`` level
    ``levels - 1 - j`` (diffusers' ``UNet2DConditionModel`` layout)."""
    levels = len(unet.config.block_out_channels)
    grids = set()
    for name in cross_attention_layers(unet):
        part, _, rest = name.partition(".")
        if part == "mid_block":
            level = levels - 1
        else:
            index = int(rest.partition(".")[0])
            level = index if part == "down_blocks" else levels - 1 - index
        grids.add(latent_side // 2**level)
    return tuple(sorted(grids, reverse=True))


class Recorder(Protocol):
    """What the recording processors hand attention to: :class:`CrossAttentionRecorder` (running means, for maps)
    or any object that keeps them otherwise (e.g. with their graph, for a training loss)."""

    resolutions: tuple[int, ...]
    active: bool

    def add(self, layer: str, resolution: int, probabilities: torch.Tensor) -> None: ...


@contextmanager
def record_cross_attention(
    unet: torch.nn.Module, resolutions: Iterable[int] = (), recorder: Recorder | None = None
) -> Iterator[Recorder]:
    """Install recording processors on every cross-attention layer; restore the originals on exit. The processors
    hand probabilities to ``recorder`` (default: a new :class:`CrossAttentionRecorder` for ``resolutions``)."""
    recorder = recorder or CrossAttentionRecorder(resolutions)
    original = unet.attn_processors
    processors = dict(original)
    for name in cross_attention_layers(unet):
        processors[name] = RecordingCrossAttnProcessor(recorder, name.removesuffix(".processor"))
    unet.set_attn_processor(processors)
    try:
        yield recorder
    finally:
        unet.set_attn_processor(original)


@dataclass
class AttentionMaps:
    """Averaged cross-attention of one image and caption, per token, with per-word and per-concept views.

    ``token_grids`` is ``(L, r, r)`` float32: attention probability of each token position averaged over heads,
    layers and timesteps (not normalised), on the model's square grid. ``frame`` maps grids onto the original image;
    ``alignment`` says which positions hold which words. Every ``*_map`` method returns a map min-max normalised to
    [0, 1]: at the original image size ``(H, W)`` by default, or on the grid with ``size="grid"``.
    """

    token_grids: np.ndarray
    frame: ImageFrame
    alignment: TokenAlignment

    @property
    def grid_size(self) -> int:
        return int(self.token_grids.shape[-1])

    def positions_map(self, positions: Iterable[int], size: str = "image") -> np.ndarray:
        positions = sorted(set(positions))
        if not positions:
            raise ValueError("no token positions given")
        grid = self.token_grids[positions].mean(axis=0)
        if size == "grid":
            return normalize(grid)
        if size != "image":
            raise ValueError("size must be 'image' or 'grid'")
        # Normalised after resampling, so the map spans exactly [0, 1] on the pixels that thresholds see.
        return normalize(self.frame.grid_to_image(grid))

    def token_map(self, position: int, size: str = "image") -> np.ndarray:
        return self.positions_map([position], size)

    def concept_map(self, concept_id: int, size: str = "image") -> np.ndarray:
        """Mean over the concept's noun token positions (every piece, every mention)."""
        return self.positions_map(self.alignment.for_concept(concept_id).noun_positions, size)

    def adjective_map(self, concept_id: int, adjective: str, size: str = "image") -> np.ndarray:
        return self.positions_map(self.alignment.for_concept(concept_id).adjective_positions(adjective), size)

    def word_map(self, word: str, size: str = "image") -> np.ndarray:
        """Any word of the caption (all its occurrences inside the token window), DAAM's ``compute_word_heat_map``."""
        spans = find_word(self.alignment.caption, word)
        positions = [
            index + 1
            for start, end in spans
            for index, (token_start, token_end) in enumerate(self.alignment.offsets[: self.alignment.window])
            if token_start < end and token_end > start
        ]
        if not positions:
            raise KeyError(f"'{word}' is not in the caption's token window")
        return self.positions_map(positions, size)


def normalize(grid: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant map becomes all zeros)."""
    grid = np.asarray(grid, dtype=np.float32)
    low, high = float(grid.min()), float(grid.max())
    if not np.isfinite(low) or not np.isfinite(high) or high - low < 1e-12:
        return np.zeros_like(grid)
    return (grid - low) / (high - low)
