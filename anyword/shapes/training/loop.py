"""The training loop of the shapes model: seeded end to end, resumable from ``checkpoint.pt`` (loaded with
``weights_only=True``), logging to ``train_log.jsonl``; writes fp16 safetensors (``unet.safetensors``,
``text_encoder.safetensors``) and ``model.json`` with the configs and the training record."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from anyword.diffusion.attention import record_cross_attention
from anyword.diffusion.shapes_model import (
    SCHEDULER_CONFIG,
    TEXT_CONFIG,
    UNET_CONFIG,
    build_models,
    load_weights,
    make_scheduler,
)
from anyword.shapes.training.config import TrainConfig, check_resumable, warmup_cosine
from anyword.shapes.training.data import Batches
from anyword.shapes.training.losses import AttentionCollector, grounding_loss, text_gain, v_loss

CHECKPOINT, LOG, INFO = "checkpoint.pt", "train_log.jsonl", "model.json"


@torch.no_grad()
def sharpen_cross_attention(unet, text_encoder, qk_gain: float, text_norm_gain: float) -> None:
    """Scale the initial cross-attention logits: query/key weights by ``qk_gain`` each, text states by
    ``text_norm_gain`` (1.0 and 1.0 leave diffusers' and transformers' init untouched)."""
    text_encoder.final_layer_norm.weight.mul_(text_norm_gain)
    for module in unet.modules():
        if getattr(module, "is_cross_attention", False):
            module.to_q.weight.mul_(qk_gain)
            module.to_k.weight.mul_(qk_gain)


@dataclass
class _Run:
    """The state of a training run: models, optimiser, schedule, noise generator, and how far it got."""

    config: TrainConfig
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    scheduler: object
    tokenizer: object
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    step: int = 0
    elapsed: float = 0.0
    ema: float | None = None

    @classmethod
    def start(cls, config: TrainConfig) -> _Run:
        from diffusers.models.attention_processor import AttnProcessor

        from anyword.tokens import load_tokenizer

        tokenizer = load_tokenizer()
        unet, text_encoder = build_models(config.seed)
        if config.init:
            load_weights(unet, text_encoder, Path(config.init))
        else:
            sharpen_cross_attention(unet, text_encoder, config.qk_gain, config.text_norm_gain)
        if config.device == "cpu":
            unet.set_attn_processor(AttnProcessor())  # plain matmul beats SDPA for these tiny heads on CPU
        unet.to(config.device)
        text_encoder.to(config.device)
        parameters = [*unet.parameters(), *text_encoder.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
        generator = torch.Generator().manual_seed(config.seed)
        return cls(config, unet, text_encoder, make_scheduler(), tokenizer, optimizer, schedule, generator)

    def resume(self, checkpoint: Path) -> None:
        """Go on from ``checkpoint`` if it exists; one refused with the changed settings named otherwise."""
        if not checkpoint.is_file():
            return
        state = torch.load(checkpoint, map_location=self.config.device, weights_only=True)
        check_resumable(checkpoint, state.get("settings", {}), self.config.identity())
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.generator.set_state(state["generator"])
        self.step, self.elapsed, self.ema = state["step"], state["elapsed"], state["ema"]
        print(f"resumed at step {self.step}", file=sys.stderr)

    def save(self, checkpoint: Path) -> None:
        torch.save(
            {
                "unet": self.unet.state_dict(),
                "text_encoder": self.text_encoder.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
                "generator": self.generator.get_state(),
                "step": self.step,
                "elapsed": self.elapsed,
                "ema": self.ema,
                "settings": self.config.identity(),
            },
            checkpoint,
        )

    def text_gain(self) -> dict:
        config = self.config
        return text_gain(
            self.unet,
            self.text_encoder,
            self.scheduler,
            self.tokenizer,
            config.autocast,
            config.gain_scenes,
            config.world,
        )


def _lr_factor(step: int, config: TrainConfig) -> float:
    return warmup_cosine(step, config.warmup, config.steps)


def train(out: Path, config: TrainConfig = TrainConfig()) -> dict:
    """Train from scratch (or resume from ``out/checkpoint.pt``) and write the weights and ``model.json``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run.start(config)
    run.resume(out / CHECKPOINT)
    collector = AttentionCollector()
    recording = record_cross_attention(run.unet, recorder=collector) if config.grounding else contextlib.nullcontext()
    run.unet.train()
    run.text_encoder.train()
    with recording, (out / LOG).open("a") as log:
        _loop(run, collector, log, out / CHECKPOINT)
        run.unet.eval()
        run.text_encoder.eval()
        gain = run.text_gain()
    return _write_model(out, run, gain)


def _loop(run: _Run, collector: AttentionCollector, log, checkpoint: Path) -> None:
    config = run.config
    loader = torch.utils.data.DataLoader(
        Batches(run.step, config.steps, config.batch_size, config.same_colour, config.absent_words, config.world),
        batch_size=None,
        num_workers=config.workers,
        prefetch_factor=4 if config.workers else None,
    )
    for step, pixels, ids, positions, masks, absent in loader:
        if config.max_seconds is not None and run.elapsed > config.max_seconds:
            print(f"stopping at step {int(step)}: time limit", file=sys.stderr)
            break
        started = time.perf_counter()
        diffusion, token, pixel = _step(run, collector, pixels, ids, positions, masks, absent)
        run.elapsed += time.perf_counter() - started
        value = float(diffusion.detach())
        run.ema = value if run.ema is None else 0.98 * run.ema + 0.02 * value
        run.step = int(step) + 1
        if run.step % config.log_every == 0 or run.step == config.steps:
            _log(run, log, value, token, pixel)
        if run.step % config.save_every == 0 or run.step == config.steps:
            run.save(checkpoint)


def _step(run: _Run, collector: AttentionCollector, pixels, ids, positions, masks, absent):
    """One optimiser step on the diffusion loss plus the weighted grounding losses; returns the three losses."""
    config, device = run.config, run.config.device
    collector.active, collector.collected = config.grounding, []
    diffusion, timesteps = v_loss(
        run.unet, run.text_encoder, run.scheduler, pixels, ids, run.generator, config.autocast
    )
    collector.active = False
    token, pixel = grounding_loss(
        collector.collected,
        positions.to(device),
        masks.to(device),
        absent.to(device),
        timesteps < config.grounding_max_t,
    )
    loss = diffusion + config.grounding_weight * token + config.pixel_weight * pixel
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([*run.unet.parameters(), *run.text_encoder.parameters()], 1.0)
    run.optimizer.step()
    run.lr_schedule.step()
    if config.device != "cpu":
        torch.cuda.synchronize()
    return diffusion, token, pixel


def _log(run: _Run, log, value: float, token: torch.Tensor, pixel: torch.Tensor) -> None:
    done, config = run.step, run.config
    record = {
        "step": done,
        "loss": value,
        "loss_ema": run.ema,
        "grounding_token": float(token.detach()),
        "grounding_pixel": float(pixel.detach()),
        "lr": run.lr_schedule.get_last_lr()[0],
        "elapsed_s": round(run.elapsed, 1),
        "s_per_step": round(run.elapsed / done, 3),
    }
    if done % (config.log_every * 20) == 0 or done == config.steps:
        record["text_gain"] = run.text_gain()
    print(json.dumps(record), file=log, flush=True)
    print(json.dumps(record), file=sys.stderr, flush=True)


def _write_model(out: Path, run: _Run, gain: dict) -> dict:
    from safetensors.torch import save_file

    config = run.config
    for name, module in (("unet", run.unet), ("text_encoder", run.text_encoder)):
        weights = {k: v.half().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(weights, str(out / f"{name}.safetensors"))
    info = {
        "steps": run.step,
        "planned_steps": config.steps,
        "device": torch.cuda.get_device_name() if config.device != "cpu" else "cpu",
        **config.identity(),
        "train_seconds": round(run.elapsed, 1),
        "final_loss_ema": run.ema,
        "text_gain": gain,
        "unet": UNET_CONFIG,
        "text_encoder": TEXT_CONFIG,
        "scheduler": SCHEDULER_CONFIG,
        "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "autocast_bf16": config.autocast,
    }
    (out / INFO).write_text(json.dumps(info, indent=2))
    return info
