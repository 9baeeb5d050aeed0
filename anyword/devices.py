"""Where models run: the device and dtype helpers every stage with a model shares (diffusion and segmenters)."""

from __future__ import annotations

import torch

DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA, else Apple MPS, else CPU."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere; ``dtype`` ("fp16", "bf16", "fp32" or a torch dtype) overrides."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose fp16, bf16 or fp32")
        return DTYPES[dtype]
    return torch.float16 if device.type == "cuda" else torch.float32


def has_accelerator(device: str | None = None) -> bool:
    """Whether models would run on a GPU (CUDA or MPS) rather than the CPU."""
    return pick_device(device).type != "cpu"
