"""SAM (Kirillov et al. 2023) through the ``segment-anything`` package, frozen, as the paper's mask generator.

Checkpoints are the official ones, fetched on first use into the user cache with a sha256 check and loaded with
``torch.load(weights_only=True)``. The image embedding is computed once per image (:meth:`SamSegmenter.embed`) and
kept on the CPU, so it can live in per-session state; each concept or point edit only runs the prompt encoder and
mask decoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from anyword.devices import pick_device
from anyword.downloads import Availability, Checkpoint, checkpoint_availability, fetch, url_size
from anyword.errors import ModelUnavailableError
from anyword.segment.base import MaskPrediction, MaskRequest, empty_prediction

logger = logging.getLogger(__name__)

_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_CHECKPOINTS = {
    "vit_h": Checkpoint(
        "sam_vit_h_4b8939.pth",
        _BASE + "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "sam",
    ),
    "vit_l": Checkpoint(
        "sam_vit_l_0b3195.pth",
        _BASE + "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "sam",
    ),
    "vit_b": Checkpoint(
        "sam_vit_b_01ec64.pth",
        _BASE + "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "sam",
    ),
}


@dataclass
class SamEmbedding:
    """SAM's image embedding ``(1, C, h, w)`` float32 on the CPU, with the sizes needed to map prompts and masks:
    ``original_size`` ``(H, W)`` of the image and ``input_size`` after resizing its long side to the encoder's."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamSegmenter:
    """Promptable masks from a frozen SAM.

    ``multimask=True`` asks SAM for three candidate masks and keeps the one with the best predicted IoU (SAM's
    advice for ambiguous prompts); ``False`` asks for a single mask.
    """

    def __init__(
        self, sam, model_type: str, device: torch.device, multimask: bool = True, random_weights: bool = False
    ):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = sam.to(device).eval().requires_grad_(False)
        self.model_type = model_type
        self.device = device
        self.multimask = multimask
        self.random_weights = random_weights
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    key = "sam"

    @property
    def label(self) -> str:
        return f"sam-{self.model_type}"

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.sam.parameters())

    @classmethod
    def load(
        cls,
        model_type: str = "vit_h",
        checkpoint: str | Path | None = None,
        device: str | None = None,
        multimask: bool = True,
        weights: str = "pretrained",
        seed: int = 0,
    ) -> SamSegmenter:
        """Build SAM ``model_type`` ("vit_h", "vit_l", "vit_b") with the official checkpoint (fetched and verified
        on first use) or a local ``checkpoint`` file. ``weights="random"``: full size with seeded random weights
        (timing only); ``"tiny"``: SAM's classes at toy size with random weights (tests)."""
        torch_device = pick_device(device)
        if weights == "tiny":
            return cls(build_tiny_sam(seed), "tiny", torch_device, multimask, random_weights=True)
        if model_type not in SAM_CHECKPOINTS:
            raise ValueError(f"unknown SAM model {model_type!r}: choose one of {', '.join(SAM_CHECKPOINTS)}")
        from segment_anything import sam_model_registry

        if weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                sam = sam_model_registry[model_type](checkpoint=None)
            return cls(sam, f"{model_type}-random", torch_device, multimask, random_weights=True)

        path = Path(checkpoint) if checkpoint else fetch(SAM_CHECKPOINTS[model_type])
        if not path.is_file():
            raise ModelUnavailableError(f"SAM checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle errors come in many types
            raise ModelUnavailableError(f"{path} is not a loadable SAM checkpoint ({type(error).__name__})") from None
        sam = sam_model_registry[model_type](checkpoint=None)
        try:
            sam.load_state_dict(state)
        except RuntimeError as error:
            raise ModelUnavailableError(f"{path} does not hold SAM {model_type} weights: {error}") from None
        logger.info("loaded SAM %s from %s", model_type, path)
        return cls(sam, model_type, torch_device, multimask)

    @torch.no_grad()
    def embed(self, image: np.ndarray) -> SamEmbedding:
        """Run the image encoder once: ``image`` is ``(H, W, 3)`` uint8 RGB."""
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
        features = self.sam.image_encoder(self.sam.preprocess(tensor))
        return SamEmbedding(
            features=features.float().cpu(), original_size=image.shape[:2], input_size=tuple(resized.shape[:2])
        )

    @torch.no_grad()
    def segment(self, embedding: SamEmbedding, request: MaskRequest) -> MaskPrediction:
        if request.points.shape[0] == 0 or not (request.labels == 1).any():
            return empty_prediction(embedding.original_size)  # no positive point: nothing to segment
        coords = self.transform.apply_coords(request.points.astype(np.float64), embedding.original_size)
        coords = torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None]
        labels = torch.as_tensor(request.labels, dtype=torch.int64, device=self.device)[None]
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding.features.to(self.device),
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
        )
        best = int(torch.argmax(iou[0]))
        logits = self.sam.postprocess_masks(low_res[:, best : best + 1], embedding.input_size, embedding.original_size)
        mask = (logits[0, 0] > self.sam.mask_threshold).cpu().numpy()
        return MaskPrediction(mask=mask, score=float(iou[0, best].clamp(0, 1)))


def load(model: str, weights: str, checkpoint: str | None, device: str | None, seed: int) -> SamSegmenter:
    """Registry entry point (:mod:`anyword.segment`)."""
    return SamSegmenter.load(model, checkpoint, device=device, weights=weights, seed=seed)


def availability(model: str) -> Availability:
    return checkpoint_availability(SAM_CHECKPOINTS[model])


class CheckpointWeights:
    """SAM's published checkpoints (files on Meta's server, not the hub): where they live, how they are fetched
    (resumable, sha256-checked), listed before a download, and stood in for in rehearsals."""

    kind = "url"

    def source(self, model: str) -> str:
        return SAM_CHECKPOINTS[model].url

    def fetch(self, model: str, progress: bool = True) -> Path:
        return fetch(SAM_CHECKPOINTS[model], progress=progress)

    def files(self, model: str) -> list[tuple[str, int | None]]:
        checkpoint = SAM_CHECKPOINTS[model]
        return [(checkpoint.filename, url_size(checkpoint.url))]

    def write_stand_in(self, folder: Path, model: str, seed: int = 0) -> Path:
        """A toy SAM (``build_tiny_sam``) saved as the official checkpoints are: a ``torch.save``d state dict
        with segment-anything's key names, under the official file name."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SAM_CHECKPOINTS[model].filename
        torch.save(build_tiny_sam(seed).state_dict(), path)
        return path


PUBLISHED = CheckpointWeights()


def build_tiny_sam(seed: int = 0):
    """SAM's classes at toy size (256 px input, 16x16 embedding, width 32) with seeded random weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Sam(
            image_encoder=ImageEncoderViT(
                img_size=256,
                patch_size=16,
                embed_dim=32,
                depth=2,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=32,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=4,
                global_attn_indexes=(1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=4
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
                transformer_dim=32,
                iou_head_depth=2,
                iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
