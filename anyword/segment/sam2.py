"""SAM 2.1 (Ravi et al. 2024) through transformers' ``Sam2Model``, frozen, image mode.

Weights come from the Hugging Face hub (``facebook/sam2.1-hiera-*``) through its cache. The image is resized to
the encoder's square input (no padding), so a point ``(x, y)`` maps to ``(x * S / W, y * S / H)``; the embedding
holds the three feature levels the mask decoder uses.
"""

from __future__ import annotations

import torch

from anyword.devices import pick_device
from anyword.downloads import Availability
from anyword.segment.hub import HubEmbedding, HubSegmenter, HubWeights, load_from_hub, repo_availability, seeded

REPOS = {
    "large": "facebook/sam2.1-hiera-large",
    "base-plus": "facebook/sam2.1-hiera-base-plus",
    "small": "facebook/sam2.1-hiera-small",
    "tiny": "facebook/sam2.1-hiera-tiny",
}
WHAT = "SAM 2.1 weights"
TINY_INPUT = 128  # toy input side (pixels) of the random-weight test model


class Sam2Segmenter(HubSegmenter):
    key = "sam2"

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.get_image_embeddings(pixels))

    def decode(self, features, points, labels):
        output = self.model(
            image_embeddings=list(features),
            input_points=points,
            input_labels=labels,
            multimask_output=self.multimask,
        )
        return output.pred_masks, output.iou_scores

    def postprocess(self, low_res: torch.Tensor, embedding: HubEmbedding) -> torch.Tensor:
        masks = self.image_processor.post_process_masks(low_res[None], [list(embedding.original_size)], binarize=False)
        return masks[0][0, 0]


def load(model: str, weights: str, checkpoint: str | None, device: str | None, seed: int) -> Sam2Segmenter:
    """Registry entry point (:mod:`anyword.segment`): ``model`` is a key of :data:`REPOS` (or, with
    ``checkpoint``, a local folder in the hub's layout)."""
    from transformers import Sam2ImageProcessor, Sam2Model

    torch_device = pick_device(device)
    if weights == "tiny":
        model_object = seeded(seed, lambda: Sam2Model(tiny_config()))
        processor = Sam2ImageProcessor(size={"height": TINY_INPUT, "width": TINY_INPUT})
        return Sam2Segmenter(model_object, processor, "tiny-random", torch_device, random_weights=True)
    if weights == "random":
        config = full_config(model)
        return Sam2Segmenter(
            seeded(seed, lambda: Sam2Model(config)), Sam2ImageProcessor(), f"{model}-random", torch_device, True
        )
    network, processor = load_from_hub(Sam2Model, Sam2ImageProcessor, checkpoint or REPOS[model], WHAT)
    return Sam2Segmenter(network, processor, model, torch_device)


def availability(model: str) -> Availability:
    return repo_availability(REPOS[model], WHAT)


# The original checkpoint and config beside the transformers files in each repository (the loader never reads them).
ORIGINAL_FILES = {
    size: (f"sam2.1_hiera_{size.replace('-', '_')}.pt", f"sam2.1_hiera_{short}.yaml", "processor_config.json")
    for size, short in (("large", "l"), ("base-plus", "b+"), ("small", "s"), ("tiny", "t"))
}
PUBLISHED = HubWeights(REPOS, WHAT, load, ORIGINAL_FILES)  # where the weights live, and their stand-ins


# Hiera sizes of the official SAM 2.1 configs (sam2.1_hiera_{t,s,b+,l}.yaml): for random-weight timing runs.
HIERA = {
    "tiny": {"width": 96, "stages": [1, 2, 7, 2], "global": [5, 7, 9], "background": [7, 7]},
    "small": {"width": 96, "stages": [1, 2, 11, 2], "global": [7, 10, 13], "background": [7, 7]},
    "base-plus": {"width": 112, "stages": [2, 3, 16, 3], "global": [12, 16, 20], "background": [14, 14]},
    "large": {"width": 144, "stages": [2, 6, 36, 4], "global": [23, 33, 43], "background": [7, 7]},
}


def full_config(model: str):
    """A full-size Sam2Config of ``model`` (1024 px input) from the official Hiera sizes."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    hiera = HIERA[model]
    widths = [hiera["width"] * 2**stage for stage in range(4)]
    backbone = Sam2HieraDetConfig(
        hidden_size=hiera["width"],
        num_attention_heads=1 if hiera["width"] == 96 else 2,
        blocks_per_stage=hiera["stages"],
        embed_dim_per_stage=widths,
        num_attention_heads_per_stage=[h * (1 if hiera["width"] == 96 else 2) for h in (1, 2, 4, 8)],
        window_size_per_stage=[8, 4, 16, 8] if model == "large" else [8, 4, 14, 7],
        global_attention_blocks=hiera["global"],
        window_positional_embedding_background_size=hiera["background"],
    )
    return Sam2Config(vision_config=Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=widths[::-1]))


def tiny_config():
    """Sam2Model's classes at toy size: 128 px input, Hiera with 4 stages of width 16..128, 32-channel decoder."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    side = TINY_INPUT
    hiera = Sam2HieraDetConfig(
        hidden_size=16,
        image_size=[side, side],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
        fpn_hidden_size=32,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=32, image_size=side, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
