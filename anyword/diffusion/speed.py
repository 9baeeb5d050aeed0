"""How the UNet runs: switches that change speed, never results beyond float rounding (tested on CPU with
``tiny``: maps, points and learned embeddings agree with the eager path).

* ``channels_last``: the UNet's weights and inputs in NHWC layout (faster convolutions on GPUs with tensor cores).
* ``compile``: ``torch.compile`` of the UNet as prompt learning calls it (forward and backward; static shapes). The
  recorded denoising keeps the eager UNet: its processors change per image and would force recompiles. The first
  compiled step pays the compile (reported as warm-up by ``anyword bench --compiled``), once per process.
* ``sync_free``: prompt learning keeps its losses on the device and reads them once at the end, instead of one
  host sync per step (the gradient check for fp16's loss scaling stays per step).
* ``recording_batch``: with direct inversion the denoising path *is* the inversion trajectory, so the recorded
  steps do not depend on each other: they are evaluated straight on the trajectory, this many per UNet call, and
  the inversion stops at the highest recorded timestep (the steps above it are never used). 0 keeps the
  step-by-step denoising loop. Without direct inversion the loop runs whatever this says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
SpeedName = Literal["eager", "batched", "compiled", "custom"]


@dataclass(frozen=True)
class SpeedSettings:
    channels_last: bool = False
    compile: bool = False
    compile_mode: CompileMode = "default"
    sync_free: bool = False
    recording_batch: int = 0

    def __post_init__(self):
        if self.recording_batch < 0:
            raise ValueError(f"recording_batch must be 0 (step by step) or more, got {self.recording_batch}")
        if self.compile_mode not in get_args(CompileMode):
            modes = ", ".join(get_args(CompileMode))
            raise ValueError(f"compile_mode must be one of {modes}, got {self.compile_mode!r}")

    @property
    def name(self) -> SpeedName:
        """What results record: "eager", "batched" (:data:`BATCHED`), "compiled" (:data:`COMPILED`) or "custom" (any
        other combination)."""
        return next((name for name, speed in SPEEDS.items() if speed == self), "custom")


EAGER = SpeedSettings()
# Nothing to compile, so no warm-up; 10 recorded steps per call keeps a 512 px model's batch modest on a GPU. On
# 2 CPU cores the shapes preset's recorded steps cost ~30% less batched, and the inversion skips every step above
# its t <= 400 range (docs/performance.md).
BATCHED = SpeedSettings(recording_batch=10)
COMPILED = SpeedSettings(channels_last=True, compile=True, sync_free=True)
SPEEDS: dict[SpeedName, SpeedSettings] = {"eager": EAGER, "batched": BATCHED, "compiled": COMPILED}


def memory_format(speed: SpeedSettings) -> torch.memory_format:
    import torch  # the speed names are read without torch (command-line choices)

    return torch.channels_last if speed.channels_last else torch.contiguous_format


def compiled_unet(unet: torch.nn.Module, speed: SpeedSettings) -> torch.nn.Module:
    """``unet`` compiled for prompt learning (static shapes)."""
    import torch

    return torch.compile(unet, mode=speed.compile_mode, dynamic=False)
