"""What the transformers-backed promptable segmenters (SAM 2.1, HQ-SAM) share: loading from the Hugging Face cache
with the library's offline message, embed-once / decode-per-point-set, and point and mask coordinates.

Each backend (``sam2.py``, ``sam_hq.py``) says how to build its model and processor, how to run its encoder and
decoder, and how to post-process masks (with the official image processor's own method).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anyword.downloads import Availability
from anyword.errors import ModelUnavailableError
from anyword.repository import Layout, availability, resolve
from anyword.segment.base import MaskPrediction, MaskRequest, empty_prediction

logger = logging.getLogger(__name__)


@dataclass
class HubEmbedding:
    """The image encoder's outputs for one image (float32 CPU tensors, batch 1; kept per session), the image's
    ``original_size`` ``(H, W)`` and ``input_size`` ``(h, w)`` of the resized image inside the encoder's input."""

    features: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class HubSegmenter(ABC):
    """A frozen transformers promptable segmenter. ``multimask=True`` asks for three candidate masks and keeps the
    one with the best predicted IoU (as for SAM); points are ``(x, y)`` in original-image pixels."""

    key: str  # each backend's registry key

    def __init__(
        self, model, image_processor, size: str, device: torch.device, multimask: bool = True, random_weights=False
    ):
        self.model = model.to(device).eval().requires_grad_(False)
        self.image_processor = image_processor
        self.size = size
        self.device = device
        self.multimask = multimask
        self.random_weights = random_weights

    @property
    def label(self) -> str:
        return f"{self.key}-{self.size}"

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def embed(self, image: np.ndarray) -> HubEmbedding:
        """Run the image encoder once: ``image`` is ``(H, W, 3)`` uint8 RGB."""
        inputs = self.image_processor(images=np.array(image), return_tensors="pt")  # a writable copy for torch
        pixels = inputs["pixel_values"].to(self.device)
        features = self.encode(pixels)
        reshaped = inputs.get("reshaped_input_sizes")
        input_size = tuple(int(v) for v in reshaped[0]) if reshaped is not None else tuple(pixels.shape[-2:])
        return HubEmbedding(
            features=tuple(f.float().cpu() for f in features),
            original_size=tuple(image.shape[:2]),
            input_size=input_size,
        )

    @torch.no_grad()
    def segment(self, embedding: HubEmbedding, request: MaskRequest) -> MaskPrediction:
        if request.points.shape[0] == 0 or not (request.labels == 1).any():
            return empty_prediction(embedding.original_size)  # no positive point: nothing to segment
        (height, width), (input_h, input_w) = embedding.original_size, embedding.input_size
        scale = np.array([input_w / width, input_h / height], dtype=np.float32)
        points = torch.as_tensor(request.points.astype(np.float32) * scale, device=self.device)[None, None]
        labels = torch.as_tensor(request.labels, dtype=torch.int64, device=self.device)[None, None]
        features = tuple(f.to(self.device) for f in embedding.features)
        low_res, iou = self.decode(features, points, labels)  # (1, 1, K, h, w), (1, 1, K)
        best = int(torch.argmax(iou[0, 0]))
        logits = self.postprocess(low_res[:, 0, best : best + 1].float().cpu(), embedding)
        return MaskPrediction(mask=(logits > 0).numpy(), score=float(iou[0, 0, best].clamp(0, 1)))

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The image encoder's outputs for ``pixels`` ``(1, 3, S, S)``."""

    @abstractmethod
    def decode(self, features, points, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits ``(1, 1, K, h, w)`` and predicted IoUs ``(1, 1, K)`` for ``points``
        ``(1, 1, N, 2)`` (in the encoder's input pixels) and ``labels`` ``(1, 1, N)``."""

    @abstractmethod
    def postprocess(self, low_res: torch.Tensor, embedding: HubEmbedding) -> torch.Tensor:
        """``(1, 1, h, w)`` low-resolution logits -> ``(H, W)`` logits at the original size."""


def hub_layout(what: str) -> Layout:
    """The files of a transformers segmenter repository the loader reads (``config.json``, the image processor's
    config, ``model.safetensors``): nothing else of the repository is downloaded."""
    instead = "or pass a local folder in the hub's layout with --segmenter-checkpoint DIR."
    return Layout(what, ("config.json", "preprocessor_config.json"), {"": ("model.safetensors",)}, instead=instead)


def load_from_hub(model_class, processor_class, repo: str, what: str):
    """``(model, image_processor)`` of ``repo`` (hub id or local folder) from the Hugging Face cache, downloaded
    (and verified) if missing and allowed; :class:`ModelUnavailableError` with how to get them otherwise."""
    folder, _ = resolve(repo, [hub_layout(what)])
    try:
        return model_class.from_pretrained(str(folder)), processor_class.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(f"{what} at {folder} do not load: {error}") from None


def repo_availability(repo: str, what: str) -> Availability:
    """Whether ``repo``'s weights are in the Hugging Face cache, downloadable, or missing."""
    return availability(repo, [hub_layout(what)])


@dataclass(frozen=True)
class HubWeights:
    """Where a transformers segmenter's published weights live (``repos``: size -> hub id), how they are fetched,
    listed before a download, and stood in for in rehearsals (``load`` builds the toy-size model)."""

    repos: dict[str, str]
    what: str
    load: object
    extras: dict[str, tuple[str, ...]] = field(default_factory=dict)  # size -> files the loader never reads

    kind = "hub"

    def source(self, model: str) -> str:
        return self.repos[model]

    def fetch(self, model: str, progress: bool = True) -> Path:
        return resolve(self.repos[model], [hub_layout(self.what)])[0]

    def files(self, model: str) -> list[tuple[str, int]]:
        from anyword.downloads import hub_file_sizes, matching

        return matching(hub_file_sizes(self.repos[model]), hub_layout(self.what).patterns())

    def write_stand_in(self, folder: Path, model: str, seed: int = 0) -> Path:
        """The toy-size model saved as transformers publishes it: ``config.json``, ``model.safetensors``,
        ``preprocessor_config.json``."""
        segmenter = self.load(model, "tiny", None, "cpu", seed)
        segmenter.model.save_pretrained(folder)
        segmenter.image_processor.save_pretrained(folder)
        for name in (".gitattributes", "README.md", *self.extras.get(model, ())):
            (folder / name).write_bytes(f"stand-in of {self.repos[model]}/{name}: never read by the loader\n".encode())
        return folder


def seeded(seed: int, build):
    """``build()`` under a forked, seeded CPU RNG (the caller's random state is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
