"""DDIM inversion (paper Eq. 1) and denoising with direct inversion (Ju et al., ICLR 2024, "PnP inversion").

Noise levels come from the scheduler (``alphas_cumprod``, and ``final_alpha_cumprod`` before the first timestep),
never re-derived. Timesteps follow diffusers' DDIM conventions, so inversion steps exactly as
``DDIMInverseScheduler`` and denoising exactly as ``DDIMScheduler`` (tested): the UNet is evaluated at the current
latent with the timestep being moved *to* during inversion, and *from* during denoising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class DDIMSchedule:
    """``timesteps`` ascending (t_1 < ... < t_N, e.g. 1, 21, ..., 981 for 50 steps) and ``alphas`` (N+1,): the
    cumulative alpha of each latent in the trajectory, ``alphas[0]`` being the clean latent's level."""

    timesteps: tuple[int, ...]
    alphas: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def make_schedule(scheduler, steps: int) -> DDIMSchedule:
    """The ``steps``-step DDIM schedule of ``scheduler`` (a fresh copy is configured; the shared one is untouched)."""
    if steps < 1:
        raise ValueError("inversion needs at least one step")
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps)
    timesteps = tuple(sorted(int(t) for t in fresh.timesteps))
    alphas = [fresh.final_alpha_cumprod.float()] + [fresh.alphas_cumprod[t].float() for t in timesteps]
    return DDIMSchedule(timesteps=timesteps, alphas=torch.stack(alphas))


def ddim_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_from: torch.Tensor,
    alpha_to: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Deterministic DDIM move of ``sample`` from noise level ``alpha_from`` to ``alpha_to`` (either direction).

    For epsilon-prediction and ``alpha_to < alpha_from`` this is Eq. 1:
    ``z_to = sqrt(a_to / a_from) z_from + sqrt(a_to) (sqrt(1/a_to - 1) - sqrt(1/a_from - 1)) eps``.
    v- and sample-prediction outputs are converted to (x0, eps) first.
    """
    alpha_from = alpha_from.to(sample.device, torch.float32)
    alpha_to = alpha_to.to(sample.device, torch.float32)
    sample32, output32 = sample.float(), model_output.float()
    beta_from = 1 - alpha_from
    if prediction_type == "epsilon":
        original = (sample32 - beta_from.sqrt() * output32) / alpha_from.sqrt()
        epsilon = output32
    elif prediction_type == "v_prediction":
        original = alpha_from.sqrt() * sample32 - beta_from.sqrt() * output32
        epsilon = alpha_from.sqrt() * output32 + beta_from.sqrt() * sample32
    elif prediction_type == "sample":
        original = output32
        epsilon = (sample32 - alpha_from.sqrt() * original) / beta_from.sqrt()
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return (alpha_to.sqrt() * original + (1 - alpha_to).sqrt() * epsilon).to(sample.dtype)


Predict = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def ddim_invert(
    predict: Predict,
    latents: torch.Tensor,
    schedule: DDIMSchedule,
    prediction_type: str = "epsilon",
    progress: bool = False,
    steps: int | None = None,
) -> list[torch.Tensor]:
    """Invert clean ``latents`` into the noise trajectory ``[z_0, z_t1, ..., z_tN]`` (N+1 tensors).

    ``predict(z, t)`` returns the UNet's output for latent ``z`` at timestep ``t`` (conditional branch only, no
    guidance). ``steps``: stop after this many steps (``[z_0, ..., z_t_steps]``); default all N.
    """
    trajectory = [latents]
    current = latents
    timesteps = schedule.timesteps if steps is None else schedule.timesteps[:steps]
    for index, timestep in enumerate(tqdm(timesteps, desc="inversion", disable=not progress)):
        output = predict(current, timestep)
        current = ddim_step(current, output, schedule.alphas[index], schedule.alphas[index + 1], prediction_type)
        trajectory.append(current)
    return trajectory


@torch.no_grad()
def ddim_denoise(
    predict: Predict,
    trajectory: Sequence[torch.Tensor],
    schedule: DDIMSchedule,
    prediction_type: str = "epsilon",
    direct: bool = True,
    before_step: Callable[[int], bool | None] | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[float]]:
    """Denoise from ``trajectory[-1]`` back to a clean latent.

    With ``direct=True`` (direct inversion), after every step the gap between the inversion latent and the
    denoised latent is added, so the path reproduces the inversion trajectory and the input exactly.
    ``before_step(t)`` is called before each UNet evaluation (the attention recorder uses it to pick timesteps).
    With direct inversion, a step for which it returns ``False`` is not evaluated at all: its corrected result is
    the inversion latent whatever the UNet says, so only steps whose attention is wanted cost a UNet call.

    Returns the final latent and the mean absolute gap of each evaluated step (0 where ``direct`` is off).
    """
    current = trajectory[-1]
    gaps: list[float] = []
    for index in tqdm(range(schedule.steps, 0, -1), desc="denoising", disable=not progress):
        timestep = schedule.timesteps[index - 1]
        wanted = before_step(timestep) if before_step is not None else None
        if direct and wanted is False:
            current = trajectory[index - 1]
            continue
        output = predict(current, timestep)
        denoised = ddim_step(current, output, schedule.alphas[index], schedule.alphas[index - 1], prediction_type)
        if direct:
            gap = trajectory[index - 1] - denoised
            gaps.append(float(gap.float().abs().mean()))
            denoised = denoised + gap
        else:
            gaps.append(0.0)
        current = denoised
    return current, gaps


def recorded_steps(schedule: DDIMSchedule, timesteps: tuple[int, int] | None) -> list[int]:
    """Indices ``i`` of the schedule steps whose timestep lies in ``timesteps`` (``(low, high)``, inclusive; None:
    every step): the denoising steps whose attention is averaged."""
    low, high = timesteps or (min(schedule.timesteps), max(schedule.timesteps))
    return [index for index, timestep in enumerate(schedule.timesteps) if low <= timestep <= high]


@torch.no_grad()
def predict_on_trajectory(
    predict: Predict, trajectory: Sequence[torch.Tensor], schedule: DDIMSchedule, steps: Sequence[int], batch: int
) -> None:
    """The UNet calls of direct-inversion denoising at schedule steps ``steps``, ``batch`` per call.

    With direct inversion, denoising step ``i`` evaluates the UNet at the inversion latent ``trajectory[i + 1]``
    and timestep ``t_i`` (every corrected step lands back on the trajectory), so the steps do not depend on each
    other and their inputs are known once the image is inverted. Only the calls' side effects (the attention
    recorder) are wanted: the corrected path ends on ``trajectory[0]`` whatever the UNet says.
    """
    for first in range(0, len(steps), batch):
        chunk = steps[first : first + batch]
        latents = torch.cat([trajectory[index + 1] for index in chunk])
        timesteps = torch.tensor([schedule.timesteps[index] for index in chunk], device=latents.device)
        predict(latents, timesteps)
