"""Train the ``shapes`` model on synthetic scenes (CPU is enough: about 2.5 s per step of 32 images on 2 cores).

    python -m anyword.shapes.train --out anyword/data/shapes

The defaults are the shipped recipe: 1,000 steps of the diffusion loss plus TokenCompose's grounding losses on the
cross-attention (:func:`grounding_loss`), with half the captions also naming a shape the scene lacks. Seeded end to
end (scene ``i`` of the train split is a pure function of ``i``; model init and noise come from the
seed). Writes fp16 safetensors (``unet.safetensors``, ``text_encoder.safetensors``) and ``model.json`` with the
configs and the training record; ``checkpoint.pt`` (resumable, loaded with ``weights_only=True``) and
``train_log.jsonl`` go next to them while training.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anyword.diffusion.attention import RecordingCrossAttnProcessor, cross_attention_layers
from anyword.diffusion.prompt_learning import training_target
from anyword.diffusion.shapes_model import SCHEDULER_CONFIG, TEXT_CONFIG, UNET_CONFIG, build_models, make_scheduler
from anyword.shapes.scenes import SHAPES, Scene, make_scene, render, true_concepts
from anyword.tokens import align_tokens

# Training-distribution knobs (see make_scene); the shipped model used neither. docs/benchmarks.md lists the runs
# that tried them.
COLOUR_DROPOUT = 0.0
SAME_COLOUR = 0.0
# The shipped recipe (docs/benchmarks.md lists the runs that led to it).
STEPS = 1000
GROUNDING_WEIGHT = 0.1
PIXEL_WEIGHT = 0.2
GROUNDING_MAX_T = 600
ABSENT_WORDS = 0.5


# Caption words that name a shape, per scene, that the grounding loss can supervise (4 shapes x 2 mentions x 3
# words at most: 24).
GROUNDING_SLOTS = 32
# How a caption names an absent shape kind (``absent_words`` in :func:`batch`).
ABSENT_FORMS = ("{noun}", "a {noun}", "A {noun}.")


def batch(
    step: int,
    size: int,
    tokenizer,
    colour_dropout: float = COLOUR_DROPOUT,
    same_colour: float = SAME_COLOUR,
    absent_words: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training scenes ``step*B ... +B-1``: images ``(B, 3, 64, 64)`` in [-1, 1], caption ids ``(B, 77)`` and the
    grounding targets of :func:`grounding_targets` (positions ``(B, K)``, masks ``(B, K, 64, 64)``, absent
    ``(B, K)``).

    ``absent_words``: probability that a caption also names a shape kind the scene lacks (one of
    :data:`ABSENT_FORMS` appended, drawn from the scene's own stream): real captions name things the image does not
    show, and the grounding targets send such a word's attention to the background.
    """
    scenes = [
        make_scene("train", step * size + i, colour_dropout=colour_dropout, same_colour=same_colour)
        for i in range(size)
    ]
    captions, absent = [], []
    for scene in scenes:
        draw = np.random.default_rng([scene.index, 91])
        missing = [kind for kind in SHAPES if all(shape.kind != kind for shape in scene.shapes)]
        noun = str(draw.choice(missing)) if draw.random() < absent_words else None
        form = ABSENT_FORMS[int(draw.integers(len(ABSENT_FORMS)))]
        captions.append(f"{scene.caption} {form.format(noun=noun)}" if noun else scene.caption)
        absent.append(noun)
    rendered = [render(scene, 64) for scene in scenes]
    pixels = torch.from_numpy(np.stack([image for image, _ in rendered])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    return pixels, ids, *grounding_targets(captions, scenes, [m for _, m in rendered], absent, tokenizer)


def grounding_targets(
    captions: list[str],
    scenes: list[Scene],
    shape_masks: list[list[np.ndarray]],
    absent: list[str | None],
    tokenizer,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each supervised caption token's attention belongs: every token that names a shape (each mention's
    noun, colour and size words) -> that shape's visible mask; the absent noun (if any) -> the background (no
    shape). Positions ``(B, K)`` int64 into the 77-token sequence (0, the start token, marks an unused slot), masks
    ``(B, K, 64, 64)`` bool and absent ``(B, K)`` bool (the slot is a word for what the scene lacks),
    ``K = GROUNDING_SLOTS``."""
    positions = torch.zeros(len(scenes), GROUNDING_SLOTS, dtype=torch.long)
    masks = torch.zeros(len(scenes), GROUNDING_SLOTS, 64, 64, dtype=torch.bool)
    absent_slots = torch.zeros(len(scenes), GROUNDING_SLOTS, dtype=torch.bool)
    for row, (caption, scene, visible, noun) in enumerate(zip(captions, scenes, shape_masks, absent, strict=True)):
        concepts = true_concepts(scene, caption, (noun,) if noun else ())
        alignment = align_tokens(caption, concepts, tokenizer, max_length=77)
        shape_of = {p.text: p.shape_index for p in scene.phrases}
        background = torch.from_numpy(~np.any(visible, axis=0))
        slot = 0
        for concept in concepts:
            shape = shape_of.get(concept.phrase)
            for position in alignment.for_concept(concept.id).all_positions:
                positions[row, slot] = position
                masks[row, slot] = background if shape is None else torch.from_numpy(visible[shape])
                absent_slots[row, slot] = shape is None
                slot += 1
    return positions, masks, absent_slots


class Batches(torch.utils.data.IterableDataset):
    """Training batches ``first .. last-1`` (each a pure function of its step), for DataLoader workers."""

    def __init__(self, first: int, last: int, size: int, same_colour: float = SAME_COLOUR, absent_words: float = 0.0):
        self.first, self.last, self.size = first, last, size
        self.same_colour, self.absent_words = same_colour, absent_words
        self.tokenizer = None

    def __iter__(self):
        from anyword.tokens import load_tokenizer

        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        self.tokenizer = self.tokenizer or load_tokenizer()
        for step in range(self.first + worker, self.last, workers):
            yield step, *batch(step, self.size, self.tokenizer, COLOUR_DROPOUT, self.same_colour, self.absent_words)


def v_loss(unet, text_encoder, scheduler, pixels, ids, generator, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The diffusion loss against the scheduler's target (v for this model), and the timesteps drawn ``(B,)``;
    random timesteps and noise come from a CPU generator (same draws on any device)."""
    device = next(unet.parameters()).device
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (pixels.shape[0],), generator=generator)
    noise = torch.randn(pixels.shape, generator=generator)
    pixels, noise, timesteps, ids = pixels.to(device), noise.to(device), timesteps.to(device), ids.to(device)
    noisy = scheduler.add_noise(pixels, noise, timesteps)
    target = training_target(scheduler, pixels, noise, timesteps)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        states = text_encoder(ids)[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample
    return torch.nn.functional.mse_loss(prediction.float(), target), timesteps


class AttentionCollector:
    """Keeps the cross-attention probabilities of one forward pass, with their graph, for the grounding loss (the
    recorder interface of :class:`RecordingCrossAttnProcessor`)."""

    def __init__(self, resolutions=(16, 32)):
        self.resolutions = tuple(resolutions)
        self.active = False
        self.collected: list[tuple[int, torch.Tensor]] = []

    def add(self, layer: str, resolution: int, probabilities: torch.Tensor) -> None:
        self.collected.append((resolution, probabilities))


def grounding_loss(
    collected: list[tuple[int, torch.Tensor]],
    positions: torch.Tensor,
    masks: torch.Tensor,
    absent: torch.Tensor,
    keep: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenCompose's grounding losses (Wang et al., CVPR 2024, sec. 3.2), per supervised token and cross-attention
    layer, with the attention averaged over heads and the token's shape mask area-averaged to the layer's grid:

    * token loss: ``(1 - attention inside the shape / attention over the grid) ** 2`` (where the token looks);
    * pixel loss: binary cross-entropy between the token's attention at each cell and the mask (how much of each
      cell's attention the token takes: all of it inside its shape, none outside).

    Both are means over tokens and layers (the pixel loss also over cells). A word for something the scene lacks
    (``absent``; its mask is the background) extends them the way gRefCOCO's no-target expressions extend referring:
    its attention share should come from the background (token loss) and be nowhere large (pixel loss, target 0).

    ``collected``: ``(resolution, probabilities (B*heads, r*r, 77))`` per layer; ``positions`` ``(B, K)`` (0: unused
    slot), ``masks`` ``(B, K, 64, 64)``, ``absent`` ``(B, K)`` bool; ``keep`` ``(B,)`` bool: the samples whose
    timestep is supervised.
    """
    keep = keep.to(positions.device)
    valid = (positions[keep] > 0)[:, None, :]  # (b, 1, K) over the kept samples
    if not collected or not valid.any():
        zero = torch.zeros((), device=positions.device)
        return zero, zero
    rows, positions = positions.shape[0], positions[keep][:, None, :]
    present = ~absent[keep][:, None, :]  # (b, 1, K): the pixel target is the mask for present words, 0 for absent
    small_masks = {}  # per grid: (b, K, r, r), computed once for all layers at that grid
    token_losses, pixel_losses = [], []
    for resolution, probabilities in collected:
        if resolution not in small_masks:
            small_masks[resolution] = torch.nn.functional.adaptive_avg_pool2d(masks[keep].float(), resolution)
        small = small_masks[resolution].flatten(2).transpose(1, 2)  # (b, r*r, K)
        per_sample = probabilities.reshape(rows, -1, *probabilities.shape[1:])[keep]  # (b, heads, r*r, 77)
        selected = per_sample.float().mean(dim=1).gather(2, positions.expand(-1, small.shape[1], -1))  # (b, r*r, K)
        inside = (selected * small).sum(1, keepdim=True) / selected.sum(1, keepdim=True).clamp_min(1e-12)
        token_losses.append((1 - inside)[valid] ** 2)
        cells = torch.nn.functional.binary_cross_entropy(
            selected.clamp(1e-6, 1 - 1e-6), small * present, reduction="none"
        )
        pixel_losses.append(cells.mean(1, keepdim=True)[valid])
    return torch.cat(token_losses).mean(), torch.cat(pixel_losses).mean()


@torch.no_grad()
def sharpen_cross_attention(unet, text_encoder, qk_gain: float, text_norm_gain: float) -> None:
    """Scale the initial cross-attention logits: query/key weights by ``qk_gain`` each, text states by
    ``text_norm_gain`` (1.0 and 1.0 leave diffusers' and transformers' init untouched)."""
    text_encoder.final_layer_norm.weight.mul_(text_norm_gain)
    for module in unet.modules():
        if getattr(module, "is_cross_attention", False):
            module.to_q.weight.mul_(qk_gain)
            module.to_k.weight.mul_(qk_gain)


@torch.no_grad()
def text_gain(unet, text_encoder, scheduler, tokenizer, autocast: bool, scenes: int = 64) -> dict:
    """Loss on fixed held-in scenes with the right, shuffled and empty captions (same noise): if the text helps,
    right < shuffled < empty."""
    pixels, ids, *_ = batch(10**6, scenes, tokenizer, colour_dropout=0.0, same_colour=0.0)
    empty = tokenizer([""] * ids.shape[0], padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    result = {}
    for name, captions in (("right", ids), ("shuffled", ids.roll(1, dims=0)), ("empty", empty)):
        generator = torch.Generator().manual_seed(7)
        result[name] = float(v_loss(unet, text_encoder, scheduler, pixels, captions, generator, autocast)[0])
    return result


def train(
    out: Path,
    steps: int = STEPS,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: int = 100,
    seed: int = 0,
    threads: int | None = None,
    autocast: bool = True,
    log_every: int = 25,
    save_every: int = 250,
    device: str = "cpu",
    workers: int = 0,
    max_seconds: float | None = None,
    same_colour: float = SAME_COLOUR,
    qk_gain: float = 1.0,
    text_norm_gain: float = 1.0,
    gain_scenes: int = 64,
    grounding_weight: float = GROUNDING_WEIGHT,
    pixel_weight: float = PIXEL_WEIGHT,
    grounding_max_t: int = GROUNDING_MAX_T,
    absent_words: float = ABSENT_WORDS,
) -> dict:
    """Train from scratch (or resume from ``out/checkpoint.pt``) and write the weights and ``model.json``.

    ``qk_gain`` multiplies the initial query/key weights of every cross-attention layer and ``text_norm_gain`` the
    text encoder's final layer-norm scale: both start the cross-attention sharper than diffusers' default init (1.0).
    ``gain_scenes``: how many fixed scenes :func:`text_gain` scores (at every 20th log and at the end).
    ``grounding_weight`` and ``pixel_weight``: weights of the token and pixel losses of :func:`grounding_loss` on
    the 16x16 and 32x32 cross-attention of samples with timestep below ``grounding_max_t`` (both 0: the diffusion
    loss alone).
    """
    from diffusers.models.attention_processor import AttnProcessor
    from safetensors.torch import save_file

    from anyword.tokens import load_tokenizer

    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer()
    unet, text_encoder = build_models(seed)
    sharpen_cross_attention(unet, text_encoder, qk_gain, text_norm_gain)
    if device == "cpu":
        unet.set_attn_processor(AttnProcessor())  # plain matmul beats SDPA for these tiny heads on CPU
    collector = AttentionCollector()
    grounding = grounding_weight > 0 or pixel_weight > 0
    if grounding:
        processors = dict(unet.attn_processors)
        for name in cross_attention_layers(unet):
            processors[name] = RecordingCrossAttnProcessor(collector, name.removesuffix(".processor"))
        unet.set_attn_processor(processors)
    unet.to(device)
    text_encoder.to(device)
    scheduler = make_scheduler()
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(seed)
    start_step, elapsed, ema = 0, 0.0, None
    # What a resumed run must share with the run that wrote the checkpoint (steps may grow: it only stretches the
    # schedule's tail).
    settings = {
        "batch_size": batch_size,
        "learning_rate": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "seed": seed,
        "same_colour": same_colour,
        "qk_gain": qk_gain,
        "text_norm_gain": text_norm_gain,
        "grounding_weight": grounding_weight,
        "pixel_weight": pixel_weight,
        "grounding_max_t": grounding_max_t,
        "absent_words": absent_words,
    }
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        changed = {k: (v, settings[k]) for k, v in state.get("settings", {}).items() if settings.get(k) != v}
        if changed:
            listed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ValueError(f"{checkpoint} was written with other settings ({listed}); resume with the same ones")
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        generator.set_state(state["generator"])
        start_step, elapsed, ema = state["step"], state["elapsed"], state["ema"]
        print(f"resumed at step {start_step}", file=sys.stderr)

    log = (out / "train_log.jsonl").open("a")
    unet.train()
    text_encoder.train()
    loader = torch.utils.data.DataLoader(
        Batches(start_step, steps, batch_size, same_colour, absent_words),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    last_step = start_step
    for step, pixels, ids, positions, masks, absent in loader:
        step = int(step)
        if max_seconds is not None and elapsed > max_seconds:
            print(f"stopping at step {step}: time limit", file=sys.stderr)
            break
        started = time.perf_counter()
        collector.active, collector.collected = grounding, []
        diffusion, timesteps = v_loss(unet, text_encoder, scheduler, pixels, ids, generator, autocast)
        collector.active = False
        token, pixel = grounding_loss(
            collector.collected, positions.to(device), masks.to(device), absent.to(device), timesteps < grounding_max_t
        )
        loss = diffusion + grounding_weight * token + pixel_weight * pixel
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        lr_schedule.step()
        if device != "cpu":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - started
        value = float(diffusion.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        done = last_step = step + 1
        if done % log_every == 0 or done == steps:
            record = {
                "step": done,
                "loss": value,
                "loss_ema": ema,
                "grounding_token": float(token.detach()),
                "grounding_pixel": float(pixel.detach()),
                "lr": lr_schedule.get_last_lr()[0],
                "elapsed_s": round(elapsed, 1),
                "s_per_step": round(elapsed / done, 3),
            }
            if done % (log_every * 20) == 0 or done == steps:
                record["text_gain"] = text_gain(unet, text_encoder, scheduler, tokenizer, autocast, gain_scenes)
            print(json.dumps(record), file=log, flush=True)
            print(json.dumps(record), file=sys.stderr, flush=True)
        if done % save_every == 0 or done == steps:
            torch.save(
                {
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                    "generator": generator.get_state(),
                    "step": done,
                    "elapsed": elapsed,
                    "ema": ema,
                    "settings": settings,
                },
                checkpoint,
            )

    unet.eval()
    text_encoder.eval()
    gain = text_gain(unet, text_encoder, scheduler, tokenizer, autocast, gain_scenes)
    for name, module in (("unet", unet), ("text_encoder", text_encoder)):
        save_file(
            {k: v.half().cpu().contiguous() for k, v in module.state_dict().items()}, str(out / f"{name}.safetensors")
        )
    info = {
        "steps": last_step,
        "planned_steps": steps,
        "device": torch.cuda.get_device_name() if device != "cpu" else "cpu",
        **settings,
        "colour_dropout": COLOUR_DROPOUT,
        "train_seconds": round(elapsed, 1),
        "final_loss_ema": ema,
        "text_gain": gain,
        "unet": UNET_CONFIG,
        "text_encoder": TEXT_CONFIG,
        "scheduler": SCHEDULER_CONFIG,
        "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "autocast_bf16": autocast,
    }
    (out / "model.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-autocast", action="store_true", help="train in fp32 instead of bf16 autocast")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (scenes are drawn on the CPU)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop early (and save) after this long")
    parser.add_argument("--same-colour", type=float, default=SAME_COLOUR, help="share of one-colour training scenes")
    parser.add_argument("--qk-gain", type=float, default=1.0, help="initial cross-attention query/key weight scale")
    parser.add_argument("--text-norm-gain", type=float, default=1.0, help="initial text final layer-norm scale")
    parser.add_argument(
        "--grounding-weight", type=float, default=GROUNDING_WEIGHT, help="weight of the token-grounding loss (0: off)"
    )
    parser.add_argument("--pixel-weight", type=float, default=PIXEL_WEIGHT, help="weight of the pixel-grounding loss")
    parser.add_argument(
        "--absent-words", type=float, default=ABSENT_WORDS, help="share of captions naming an absent shape"
    )
    parser.add_argument(
        "--grounding-max-t", type=int, default=GROUNDING_MAX_T, help="supervise attention only below this t"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.same_colour <= 1:
        parser.error(f"--same-colour is a probability in [0, 1], got {args.same_colour}")
    if not 0 <= args.absent_words <= 1:
        parser.error(f"--absent-words is a probability in [0, 1], got {args.absent_words}")
    if args.qk_gain <= 0 or args.text_norm_gain <= 0:
        parser.error("--qk-gain and --text-norm-gain must be positive")
    if args.grounding_weight < 0 or args.pixel_weight < 0:
        parser.error("--grounding-weight and --pixel-weight must be >= 0")
    if not 0 < args.grounding_max_t <= 1000:
        parser.error(f"--grounding-max-t is a timestep in 1..1000, got {args.grounding_max_t}")
    try:
        info = train(
            args.out,
            args.steps,
            args.batch_size,
            args.lr,
            seed=args.seed,
            threads=args.threads,
            autocast=not args.no_autocast,
            device=args.device,
            workers=args.workers,
            max_seconds=args.max_seconds,
            same_colour=args.same_colour,
            qk_gain=args.qk_gain,
            text_norm_gain=args.text_norm_gain,
            grounding_weight=args.grounding_weight,
            pixel_weight=args.pixel_weight,
            absent_words=args.absent_words,
            grounding_max_t=args.grounding_max_t,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({k: info[k] for k in ("steps", "train_seconds", "final_loss_ema", "text_gain")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
