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
from typing import Literal, get_args

import torch

CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
SpeedName = Literal["eager", "compiled", "custom"]


@dataclass(frozen=True)
class SpeedSettings:
    channels_last: bool = False
    compile: bool = False
    compile_mode: CompileMode = "default"
    sync_free: bool = False

    def __post_init__(self):
        if self.compile_mode not in get_args(CompileMode):
            modes = ", ".join(get_args(CompileMode))
            raise ValueError(f"compile_mode must be one of {modes}, got {self.compile_mode!r}")

    @property
    def name(self) -> SpeedName:
        """What results record: "eager", "compiled" (:data:`COMPILED`) or "custom" (any other combination)."""
        return next((name for name, speed in SPEEDS.items() if speed == self), "custom")


EAGER = SpeedSettings()
COMPILED = SpeedSettings(channels_last=True, compile=True, sync_free=True)
SPEEDS: dict[SpeedName, SpeedSettings] = {"eager": EAGER, "compiled": COMPILED}


def memory_format(speed: SpeedSettings) -> torch.memory_format:
    return torch.channels_last if speed.channels_last else torch.contiguous_format


def compiled_unet(unet: torch.nn.Module, speed: SpeedSettings) -> torch.nn.Module:
    """``unet`` compiled for prompt learning (static shapes)."""
    return torch.compile(unet, mode=speed.compile_mode, dynamic=False)
