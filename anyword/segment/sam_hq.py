"""HQ-SAM (Ke et al. 2023) through transformers' ``SamHQModel``, frozen.

Weights come from the Hugging Face hub (``syscv-community/sam-hq-vit-*``) through its cache. As for SAM, the image's
long side is resized to the encoder's input and the rest padded, so a point ``(x, y)`` maps to ``(x * w / W,
y * h / H)`` with ``(h, w)`` the resized size; the embedding holds the final and the early ViT features the HQ
decoder fuses.
"""

from __future__ import annotations

import torch

from anyword.devices import pick_device
from anyword.downloads import Availability
from anyword.segment.hub import HubEmbedding, HubSegmenter, HubWeights, load_from_hub, repo_availability, seeded

REPOS = {
    "vit_h": "syscv-community/sam-hq-vit-huge",
    "vit_l": "syscv-community/sam-hq-vit-large",
    "vit_b": "syscv-community/sam-hq-vit-base",
}
WHAT = "HQ-SAM weights"
TINY_INPUT = 128  # toy input side (pixels) of the random-weight test model
# ViT sizes of the official checkpoints (width, depth, heads, global-attention blocks): for random-weight timing.
VIT = {
    "vit_h": (1280, 32, 16, [7, 15, 23, 31]),
    "vit_l": (1024, 24, 16, [5, 11, 17, 23]),
    "vit_b": (768, 12, 12, [2, 5, 8, 11]),
}


class SamHQSegmenter(HubSegmenter):
    key = "sam-hq"

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        final, intermediate = self.model.get_image_embeddings(pixels)
        return (final, *intermediate)

    def decode(self, features, points, labels):
        output = self.model(
            image_embeddings=features[0],
            intermediate_embeddings=list(features[1:]),
            input_points=points,
            input_labels=labels,
            multimask_output=self.multimask,
        )
        return output.pred_masks, output.iou_scores

    def postprocess(self, low_res: torch.Tensor, embedding: HubEmbedding) -> torch.Tensor:
        masks = self.image_processor.post_process_masks(
            low_res[None], [list(embedding.original_size)], [list(embedding.input_size)], binarize=False
        )
        return masks[0][0, 0]


def load(model: str, weights: str, checkpoint: str | None, device: str | None, seed: int) -> SamHQSegmenter:
    """Registry entry point (:mod:`anyword.segment`): ``model`` is a key of :data:`REPOS` (or, with
    ``checkpoint``, a local folder in the hub's layout)."""
    from transformers import SamHQModel, SamImageProcessor

    torch_device = pick_device(device)
    if weights == "tiny":
        processor = SamImageProcessor(
            size={"longest_edge": TINY_INPUT}, pad_size={"height": TINY_INPUT, "width": TINY_INPUT}
        )
        network = seeded(seed, lambda: SamHQModel(tiny_config()))
        return SamHQSegmenter(network, processor, "tiny-random", torch_device, random_weights=True)
    if weights == "random":
        network = seeded(seed, lambda: SamHQModel(full_config(model)))
        return SamHQSegmenter(network, SamImageProcessor(), f"{model}-random", torch_device, random_weights=True)
    network, processor = load_from_hub(SamHQModel, SamImageProcessor, checkpoint or REPOS[model], WHAT)
    return SamHQSegmenter(network, processor, model, torch_device)


def availability(model: str) -> Availability:
    return repo_availability(REPOS[model], WHAT)


PUBLISHED = HubWeights(REPOS, WHAT, load)  # where the weights live, and their stand-ins


def full_config(model: str):
    """A full-size SamHQConfig of ``model`` (1024 px input)."""
    from transformers import SamHQConfig, SamHQMaskDecoderConfig, SamHQVisionConfig

    width, depth, heads, global_blocks = VIT[model]
    vision = SamHQVisionConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, global_attn_indexes=global_blocks
    )
    return SamHQConfig(vision_config=vision, mask_decoder_config=SamHQMaskDecoderConfig(vit_dim=width))


def tiny_config():
    """SamHQModel's classes at toy size: 128 px input, a 2-block ViT of width 32, 32-channel decoder."""
    from transformers import SamHQConfig, SamHQMaskDecoderConfig, SamHQPromptEncoderConfig, SamHQVisionConfig

    side = TINY_INPUT
    vision = SamHQVisionConfig(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=side,
        patch_size=16,
        window_size=4,
        global_attn_indexes=[1],
        mlp_dim=64,
        num_pos_feats=16,  # the prompt encoder's positional features: half its width
    )
    return SamHQConfig(
        vision_config=vision,
        prompt_encoder_config=SamHQPromptEncoderConfig(
            hidden_size=32, image_size=side, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=SamHQMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, vit_dim=32
        ),
    )
