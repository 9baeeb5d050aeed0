"""SAM (Kirillov et al. 2023) through the ``segment-anything`` package, frozen, as the paper's mask generator.

Model ``shapes`` is SAM's architecture at toy size trained in the shapes world (:mod:`anyword.shapes.sam_training`),
shipped with the package as fp16 safetensors. The other checkpoints are the official ones, fetched on first use into
the user cache with a sha256 check and loaded with ``torch.load(weights_only=True)``. The image embedding is computed
once per image (:meth:`SamSegmenter.embed`) and kept on the CPU, so it can live in per-session state; each concept or
point edit only runs the prompt encoder and mask decoder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from anyword.devices import pick_device
from anyword.downloads import Availability, Checkpoint, checkpoint_availability, fetch, url_size
from anyword.errors import ModelUnavailableError
from anyword.segment import SAM_SHAPES
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


SHAPES_MODEL = SAM_SHAPES  # SAM trained in the shapes world; ships with the package
SHAPES_FILES = ("sam.safetensors", "sam.json")


def shapes_sam_dir() -> Path:
    return Path(str(resources.files("anyword") / "data" / "shapes" / "sam"))


@dataclass
class SamEmbedding:
    """SAM's image embedding ``(1, C, h, w)`` float32 on the CPU, with the sizes needed to map prompts and masks:
    ``original_size`` ``(H, W)`` of the image and ``input_size`` after resizing its long side to the encoder's."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamSegmenter:
    """Promptable masks from a frozen SAM.

    ``multimask=True`` follows SAM's advice: a lone point (ambiguous) gets three candidate masks and the one with
    the best predicted IoU is kept; several points get SAM's single-mask output. ``False``: always one mask.
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
        on first use) or a local ``checkpoint`` file; ``"shapes"``: the SAM trained in the shapes world (the
        package's, or a folder ``checkpoint`` holding ``sam.safetensors`` and ``sam.json``). ``weights="random"``:
        full size with seeded random weights (timing only); ``"tiny"``: SAM's classes at toy size with random
        weights (tests)."""
        torch_device = pick_device(device)
        if weights == "tiny":
            return cls(build_tiny_sam(seed), "tiny", torch_device, multimask, random_weights=True)
        if model_type == SHAPES_MODEL:
            if weights == "random":
                return cls(build_sam(SHAPES_SAM_ARCHITECTURE, seed), "shapes-random", torch_device, multimask, True)
            return cls(load_shapes_sam(checkpoint), SHAPES_MODEL, torch_device, multimask)
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
        candidates = self.candidates(embedding, request, self.multimask and request.points.shape[0] == 1)
        return max(candidates, key=lambda candidate: candidate.score)

    @torch.no_grad()
    def candidates(self, embedding: SamEmbedding, request: MaskRequest, multimask: bool = True) -> list[MaskPrediction]:
        """SAM's answers to ``request``'s points: three masks (``multimask``, in SAM's output order) or one, each
        with its predicted IoU as the score, bool ``(H, W)`` at the original image size."""
        coords = self.transform.apply_coords(request.points.astype(np.float64), embedding.original_size)
        coords = torch.as_tensor(coords, dtype=torch.float32, device=self.device)[None]
        labels = torch.as_tensor(request.labels, dtype=torch.int64, device=self.device)[None]
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding.features.to(self.device),
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        logits = self.sam.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        masks = (logits[0] > self.sam.mask_threshold).cpu().numpy()
        return [MaskPrediction(mask=m, score=float(s.clamp(0, 1))) for m, s in zip(masks, iou[0], strict=True)]


def load(model: str, weights: str, checkpoint: str | None, device: str | None, seed: int) -> SamSegmenter:
    """Registry entry point (:mod:`anyword.segment`)."""
    return SamSegmenter.load(model, checkpoint, device=device, weights=weights, seed=seed)


def availability(model: str) -> Availability:
    if model == SHAPES_MODEL:
        folder = shapes_sam_dir()
        missing = [name for name in SHAPES_FILES if not (folder / name).is_file()]
        if missing:
            return Availability("missing", str(folder), f"the shapes SAM is missing ({', '.join(missing)}): train it "
                                "with `anyword shapes train-sam` (docs/benchmarks.md)")  # fmt: skip
        return Availability("shipped", str(folder))
    return checkpoint_availability(SAM_CHECKPOINTS[model])


def load_shapes_sam(folder: str | Path | None = None):
    """The SAM trained in the shapes world from ``folder`` (default: the package's): its architecture from
    ``sam.json``, fp16 weights from ``sam.safetensors`` read as fp32."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder else shapes_sam_dir()
    missing = [name for name in SHAPES_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelUnavailableError(
            f"the shapes SAM is missing {', '.join(missing)} in {folder}: train it with `anyword shapes train-sam`"
        )
    architecture = json.loads((folder / "sam.json").read_text())["architecture"]
    sam = build_sam(architecture)
    try:
        sam.load_state_dict({k: v.float() for k, v in load_file(str(folder / "sam.safetensors")).items()})
    except RuntimeError as error:
        raise ModelUnavailableError(f"{folder / 'sam.safetensors'} does not fit its sam.json: {error}") from None
    return sam


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


# SAM's classes at toy sizes: ``image`` (input side), ``patch``, encoder ``width``/``depth``/``heads``/``window``/
# ``global_blocks``/``mlp_ratio``, ``out`` (embedding channels, also the decoder's width), decoder
# ``decoder_depth``/``decoder_heads``/``decoder_mlp``/``iou_depth``, ``mask_channels`` (mask prompt encoder).
TINY_SAM_ARCHITECTURE = {"image": 256, "patch": 16, "width": 32, "depth": 2, "heads": 2, "window": 4,
                         "global_blocks": [1], "out": 32, "decoder_depth": 2, "decoder_heads": 2, "decoder_mlp": 64,
                         "mask_channels": 4, "mlp_ratio": 2.0, "iou_depth": 2}  # fmt: skip
# The SAM trained in shapes world 2 (anyword.shapes.sam_training): 128 px input, a 16x16 embedding, 64x64 masks.
SHAPES_SAM_ARCHITECTURE = {"image": 128, "patch": 8, "width": 96, "depth": 4, "heads": 4, "window": 8,
                           "global_blocks": [1, 3], "out": 64, "decoder_depth": 2, "decoder_heads": 4,
                           "decoder_mlp": 256, "mask_channels": 16, "mlp_ratio": 4.0, "iou_depth": 3}  # fmt: skip


def build_sam(architecture: dict, seed: int = 0):
    """SAM's classes (segment-anything) at the size ``architecture`` gives, with seeded random weights."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = architecture
    side = a["image"] // a["patch"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Sam(
            image_encoder=ImageEncoderViT(
                img_size=a["image"], patch_size=a["patch"], embed_dim=a["width"], depth=a["depth"],
                num_heads=a["heads"], mlp_ratio=a["mlp_ratio"], out_chans=a["out"], qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=a["window"],
                global_attn_indexes=tuple(a["global_blocks"]),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=a["out"], image_embedding_size=(side, side), input_image_size=(a["image"], a["image"]),
                mask_in_chans=a["mask_channels"],
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=a["decoder_depth"], embedding_dim=a["out"], mlp_dim=a["decoder_mlp"],
                    num_heads=a["decoder_heads"],
                ),
                transformer_dim=a["out"], iou_head_depth=a["iou_depth"], iou_head_hidden_dim=a["out"],
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )  # fmt: skip


def build_tiny_sam(seed: int = 0):
    """SAM's classes at toy size (256 px input, 16x16 embedding, width 32) with seeded random weights."""
    return build_sam(TINY_SAM_ARCHITECTURE, seed)
