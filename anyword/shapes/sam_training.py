"""A promptable segmenter with SAM's architecture, trained in shapes world 2 with SAM's recipe, and its report.

``anyword shapes train-sam --out DIR`` (seeded, resumable from ``DIR/checkpoint.pt``, logged to ``train_log.jsonl``)
writes ``sam.safetensors`` (fp16) and ``sam.json`` (architecture, recipe, training record); the package ships them in
``anyword/data/shapes/sam/``, where the ``sam`` backend loads them as model ``shapes``.

The recipe follows SAM (Kirillov et al. 2023, section 3 and appendix A): each step draws training scenes and, per
scene, targets among every whole *and* every part; the first prompt is one point drawn uniformly from the target,
answered with three masks, and only the best of the three is penalised (so a point on a roof can mean the roof or
the house: ambiguity is learnt, not averaged away); then corrective clicks drawn from the error region of the
previous mask (positive in what was missed, negative in what leaked), with the previous mask's logits as the mask
prompt and the single-mask output; focal (x20) + dice loss, and the IoU head regressed on every output's true IoU.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anyword.segment.sam import SHAPES_SAM_ARCHITECTURE, build_sam
from anyword.shapes.parts import all_regions, make_parts_scene, region_masks, render_parts
from anyword.shapes.training.config import check_resumable, warmup_cosine

CHECKPOINT, LOG, INFO, WEIGHTS = "checkpoint.pt", "train_log.jsonl", "sam.json", "sam.safetensors"
# Fields a resumed run may change (how it runs, not what it learns).
RESUMABLE_CHANGES = ("steps", "threads", "log_every", "save_every", "max_seconds")


@dataclass(frozen=True)
class SamTrainConfig:
    """A training run of the shapes SAM; the defaults are the shipped recipe.

    ``steps`` of ``images`` scenes with ``targets`` prompts each (wholes and parts drawn uniformly among every region
    of the scene), ``corrections`` corrective clicks after the first point. Each corrective round gets the previous
    mask's logits as a mask prompt with probability ``mask_prompt`` (else the points alone, as the pipeline prompts)
    and, with probability ``extra_negative``, one more negative point anywhere outside the target (as R2's
    negatives). AdamW ``learning_rate`` with ``warmup`` linear steps then a cosine to a tenth; ``focal_weight`` : 1
    dice; seeded by ``seed``; ``threads`` torch CPU threads; ``max_seconds`` stops early (and saves).
    """

    steps: int = 2500
    images: int = 8
    targets: int = 4
    corrections: int = 2
    mask_prompt: float = 0.5
    extra_negative: float = 0.5
    learning_rate: float = 8e-4
    weight_decay: float = 0.01
    warmup: int = 200
    focal_weight: float = 20.0
    seed: int = 0
    threads: int | None = None
    max_seconds: float | None = None
    log_every: int = 50
    save_every: int = 250

    def identity(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_CHANGES}


def training_batch(step: int, config: SamTrainConfig, size: int):
    """Images ``(B, size, size, 3)`` uint8 and, per image, ``targets`` bool masks ``(T, size, size)``: scenes
    ``step * B ...`` of world 2's train split, targets drawn from every whole and part (a pure function of ``step``)."""
    rng = np.random.default_rng([config.seed, step, 5])
    images, targets = [], []
    for i in range(config.images):
        scene = make_parts_scene("train", 20_000_000 + step * config.images + i)  # apart from the diffusion model's
        image, _ = render_parts(scene, size)
        regions = all_regions(scene)
        chosen = rng.choice(len(regions), size=config.targets, replace=len(regions) < config.targets)
        images.append(image)
        targets.append(np.stack(region_masks(scene, [regions[j] for j in chosen], size)))
    return np.stack(images), targets


def sample_points(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One pixel drawn uniformly from each bool mask ``(N, H, W)``: ``(N, 2)`` float ``(x, y)`` pixel centres.
    An empty mask gives its centre pixel."""
    n, h, w = masks.shape
    weights = masks.reshape(n, -1).float()
    weights[weights.sum(1) == 0, (h // 2) * w + w // 2] = 1.0
    flat = torch.multinomial(weights, 1, generator=generator)[:, 0]
    return torch.stack([flat % w, flat // w], dim=1).float() + 0.5


def mask_loss(logits: torch.Tensor, target: torch.Tensor, focal_weight: float) -> torch.Tensor:
    """Focal (gamma 2, alpha 0.25) x ``focal_weight`` + dice, per mask: logits and float targets ``(N, M, H, W)``
    -> ``(N, M)``."""
    probability = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = probability * target + (1 - probability) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    focal = (alpha * ce * (1 - p_t) ** 2).flatten(2).mean(2)
    intersection = (probability * target).flatten(2).sum(2)
    dice = 1 - (2 * intersection + 1) / (probability.flatten(2).sum(2) + target.flatten(2).sum(2) + 1)
    return focal_weight * focal + dice


def binary_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks ``(..., H, W)``; two empty masks score 1."""
    intersection = (predicted & target).flatten(-2).sum(-1).float()
    union = (predicted | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def _decode(sam, features, image_pe, points, labels, mask_input, multimask: bool):
    sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=mask_input)
    return sam.mask_decoder(
        image_embeddings=features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask,
    )  # fmt: skip


def image_losses(sam, features, target, config: SamTrainConfig, generator: torch.Generator) -> tuple:
    """SAM's interactive loss for one image: ``features`` ``(1, C, h, w)``, ``target`` bool ``(T, S, S)`` at the
    encoder's input size. Returns (mask loss, IoU loss), each summed over rounds and averaged over targets."""
    size = target.shape[-1]
    image_pe = sam.prompt_encoder.get_dense_pe()
    points = sample_points(target, generator)[:, None]
    labels = torch.ones(points.shape[:2], dtype=torch.int64)
    mask_input, mask_total, iou_total = None, 0.0, 0.0
    for round_index in range(1 + config.corrections):
        low_res, iou_pred = _decode(sam, features, image_pe, points, labels, mask_input, round_index == 0)
        small = F.interpolate(target[:, None].float(), low_res.shape[-2:], mode="area").expand_as(low_res)
        losses = mask_loss(low_res, small, config.focal_weight)  # (T, M)
        best = losses.argmin(dim=1)  # the loss goes to the best of the three for a lone point
        full = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False) > 0
        true_iou = binary_iou(full, target[:, None]).detach()
        mask_total = mask_total + losses.gather(1, best[:, None]).mean()
        iou_total = iou_total + F.mse_loss(iou_pred, true_iou)
        if round_index == config.corrections:
            break
        chosen = full[torch.arange(len(best)), best].detach()
        new_points = sample_points(chosen ^ target, generator)[:, None]  # a click in the error region
        x, y = new_points[:, 0, 0].long(), new_points[:, 0, 1].long()
        new_labels = target[torch.arange(len(best)), y.clamp(max=size - 1), x.clamp(max=size - 1)].long()[:, None]
        points, labels = torch.cat([points, new_points], 1), torch.cat([labels, new_labels], 1)
        if float(torch.rand((), generator=generator)) < config.extra_negative:
            outside = sample_points(~target, generator)[:, None]
            points = torch.cat([points, outside], 1)
            labels = torch.cat([labels, torch.zeros(outside.shape[:2], dtype=torch.int64)], 1)
        prompted = float(torch.rand((), generator=generator)) < config.mask_prompt
        mask_input = low_res[torch.arange(len(best)), best][:, None].detach() if prompted else None
    return mask_total, iou_total


class _Run:
    def __init__(self, config: SamTrainConfig):
        self.config = config
        self.sam = build_sam(SHAPES_SAM_ARCHITECTURE, seed=config.seed)
        self.optimizer = torch.optim.AdamW(
            self.sam.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step, self.elapsed = 0, 0.0

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine(step, self.config.warmup, self.config.steps)

    def resume(self, path: Path) -> None:
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        check_resumable(path, state["settings"], self.config.identity())
        self.sam.load_state_dict(state["sam"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        print(f"resumed at step {self.step}", file=sys.stderr)

    def save(self, path: Path) -> None:
        torch.save({"sam": self.sam.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(), "step": self.step, "elapsed": self.elapsed,
                    "settings": self.config.identity()}, path)  # fmt: skip

    def train_step(self) -> dict:
        """One optimiser step (a pure function of the step number and the weights)."""
        config, sam = self.config, self.sam
        size = sam.image_encoder.img_size
        images, targets = training_batch(self.step, config, size)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.step)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        features = sam.image_encoder(sam.preprocess(pixels))
        mask_total, iou_total = 0.0, 0.0
        for index, target in enumerate(targets):
            mask_loss_, iou_loss_ = image_losses(
                sam, features[index : index + 1], torch.from_numpy(target), config, generator
            )
            mask_total, iou_total = mask_total + mask_loss_, iou_total + iou_loss_
        loss = (mask_total + iou_total) / len(targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        count = len(targets)
        return {"mask_loss": float(mask_total.detach()) / count, "iou_loss": float(iou_total.detach()) / count}


def train_sam(out: Path, config: SamTrainConfig = SamTrainConfig()) -> dict:
    """Train (or resume from ``out/checkpoint.pt``) and write ``sam.safetensors`` and ``sam.json``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(config)
    run.resume(out / CHECKPOINT)
    run.sam.train()
    with (out / LOG).open("a") as log:
        while run.step < config.steps:
            if config.max_seconds is not None and run.elapsed > config.max_seconds:
                print(f"stopping at step {run.step}: time limit", file=sys.stderr)
                break
            started = time.perf_counter()
            losses = run.train_step()
            run.elapsed += time.perf_counter() - started
            if run.step % config.log_every == 0 or run.step == config.steps:
                record = {"step": run.step, **losses, "lr": run.schedule.get_last_lr()[0],
                          "elapsed_s": round(run.elapsed, 1),
                          "s_per_step": round(run.elapsed / run.step, 3)}  # fmt: skip
                print(json.dumps(record), file=log, flush=True)
                print(json.dumps(record), file=sys.stderr, flush=True)
            if run.step % config.save_every == 0 or run.step == config.steps:
                run.save(out / CHECKPOINT)
    run.save(out / CHECKPOINT)
    return write_sam(out, run)


def write_sam(out: Path, run: _Run) -> dict:
    from safetensors.torch import save_file

    weights = {k: v.half().contiguous() for k, v in run.sam.state_dict().items()}
    save_file(weights, str(out / WEIGHTS))
    info = {
        "architecture": SHAPES_SAM_ARCHITECTURE,
        **run.config.identity(),
        "steps_done": run.step,
        "train_seconds": round(run.elapsed, 1),
        "parameters": sum(p.numel() for p in run.sam.parameters()),
        "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    (out / INFO).write_text(json.dumps(info, indent=2))
    return info
