"""How the UNet runs: switches that change speed, never results beyond float rounding (tested on CPU with
``tiny``: maps, points and learned embeddings agree with the eager path).

* ``channels_last``: the UNet's weights and inputs in NHWC layout (faster convolutions on GPUs with tensor cores).
* ``compile``: ``torch.compile`` of the UNet as prompt learning calls it (forward and backward; static shapes). The
  recorded denoising keeps the eager UNet: its processors change per image and would force recompiles. The first
  compiled step pays the compile (reported as warm-up by ``anyword bench --speed``), once per process.
* ``sync_free``: prompt learning keeps its losses on the device and reads them once at the end, instead of one
  host sync per step (the gradient check for fp16's loss scaling stays per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class SpeedSettings:
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    sync_free: bool = False

    def __post_init__(self):
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")

    @property
    def name(self) -> str:
        return "eager" if self == EAGER else "fast"


EAGER = SpeedSettings()
FAST = SpeedSettings(channels_last=True, compile=True, sync_free=True)
SPEEDS = {"eager": EAGER, "fast": FAST}


def memory_format(speed: SpeedSettings) -> torch.memory_format:
    return torch.channels_last if speed.channels_last else torch.contiguous_format


def compiled_unet(unet: torch.nn.Module, speed: SpeedSettings) -> torch.nn.Module:
    """``unet`` compiled for prompt learning (static shapes)."""
    return torch.compile(unet, mode=speed.compile_mode, dynamic=False)
