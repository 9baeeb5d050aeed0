"""The shapes model's training losses: the diffusion loss against the scheduler's target, and TokenCompose's
grounding losses on the cross-attention (collected with :func:`anyword.diffusion.attention.record_cross_attention`)."""

from __future__ import annotations

import torch

from anyword.diffusion.prompt_learning import training_target
from anyword.shapes.training.data import batch


def v_loss(unet, text_encoder, scheduler, pixels, ids, generator, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The diffusion loss against the scheduler's target (v for this model), and the timesteps drawn ``(B,)``;
    random timesteps and noise come from a CPU generator (same draws on any device)."""
    device = next(unet.parameters()).device
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (pixels.shape[0],), generator=generator)
    noise = torch.randn(pixels.shape, generator=generator)
    pixels, noise, timesteps, ids = pixels.to(device), noise.to(device), timesteps.to(device), ids.to(device)
    noisy = scheduler.add_noise(pixels, noise, timesteps)
    target = training_target(scheduler, pixels, noise, timesteps)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        states = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample
    return torch.nn.functional.mse_loss(prediction.float(), target), timesteps


class AttentionCollector:
    """Keeps the cross-attention probabilities of one forward pass, with their graph, for the grounding loss (a
    :class:`~anyword.diffusion.attention.Recorder`)."""

    def __init__(self, resolutions=(16, 32)):
        self.resolutions = tuple(resolutions)
        self.active = False
        self.collected: list[tuple[int, torch.Tensor]] = []

    def add(self, layer: str, resolution: int, probabilities: torch.Tensor) -> None:
        self.collected.append((resolution, probabilities))


def grounding_loss(
    collected: list[tuple[int, torch.Tensor]],
    positions: torch.Tensor,
    masks: torch.Tensor,
    absent: torch.Tensor,
    keep: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenCompose's grounding losses (Wang et al., CVPR 2024, sec. 3.2), per supervised token and cross-attention
    layer, with the attention averaged over heads and the token's shape mask area-averaged to the layer's grid:

    * token loss: ``(1 - attention inside the shape / attention over the grid) ** 2`` (where the token looks);
    * pixel loss: binary cross-entropy between the token's attention at each cell and the mask (how much of each
      cell's attention the token takes: all of it inside its shape, none outside).

    Both are means over tokens and layers (the pixel loss also over cells). A word for something the scene lacks
    (``absent``; its mask is the background) extends them the way gRefCOCO's no-target expressions extend referring:
    its attention share should come from the background (token loss) and be nowhere large (pixel loss, target 0).

    ``collected``: ``(resolution, probabilities (B*heads, r*r, 77))`` per layer; ``positions`` ``(B, K)`` (0: unused
    slot), ``masks`` ``(B, K, 64, 64)``, ``absent`` ``(B, K)`` bool; ``keep`` ``(B,)`` bool: the samples whose
    timestep is supervised.
    """
    keep = keep.to(positions.device)
    valid = (positions[keep] > 0)[:, None, :]  # (b, 1, K) over the kept samples
    if not collected or not valid.any():
        zero = torch.zeros((), device=positions.device)
        return zero, zero
    rows, positions = positions.shape[0], positions[keep][:, None, :]
    present = ~absent[keep][:, None, :]  # (b, 1, K): the pixel target is the mask for present words, 0 for absent
    small_masks = {}  # per grid: (b, K, r, r), computed once for all layers at that grid
    token_losses, pixel_losses = [], []
    for resolution, probabilities in collected:
        if resolution not in small_masks:
            small_masks[resolution] = torch.nn.functional.adaptive_avg_pool2d(masks[keep].float(), resolution)
        small = small_masks[resolution].flatten(2).transpose(1, 2)  # (b, r*r, K)
        per_sample = probabilities.reshape(rows, -1, *probabilities.shape[1:])[keep]  # (b, heads, r*r, 77)
        selected = per_sample.float().mean(dim=1).gather(2, positions.expand(-1, small.shape[1], -1))  # (b, r*r, K)
        inside = (selected * small).sum(1, keepdim=True) / selected.sum(1, keepdim=True).clamp_min(1e-12)
        token_losses.append((1 - inside)[valid] ** 2)
        cells = torch.nn.functional.binary_cross_entropy(
            selected.clamp(1e-6, 1 - 1e-6), small * present, reduction="none"
        )
        pixel_losses.append(cells.mean(1, keepdim=True)[valid])
    return torch.cat(token_losses).mean(), torch.cat(pixel_losses).mean()


@torch.no_grad()
def text_gain(
    unet, text_encoder, scheduler, tokenizer, autocast: bool, scenes: int = 64, world: str = "shapes"
) -> dict:
    """Loss on fixed held-in scenes with the right, shuffled and empty captions (same noise): if the text helps,
    right < shuffled < empty."""
    pixels, ids, *_ = batch(10**6, scenes, tokenizer, world=world)
    empty = tokenizer([""] * ids.shape[0], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    result = {}
    for name, captions in (("right", ids), ("shuffled", ids.roll(1, dims=0)), ("empty", empty)):
        generator = torch.Generator().manual_seed(7)
        result[name] = float(v_loss(unet, text_encoder, scheduler, pixels, captions, generator, autocast)[0])
    return result
