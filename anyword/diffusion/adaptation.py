"""Training a text-encoder adapter (Segment Anyword_f, paper C.1): LoRA on the text encoder alone, with the same
denoising objective as test-time prompt learning (UNet and VAE frozen), over a set of image-caption pairs.

Choices where the paper is silent (recorded in each adapter's ``anyword_adapter.json``): LoRA on the attention
projections (q, k, v, out) of every CLIP layer, alpha = rank (scale 1), AdamW at 1e-4, batch 4, timesteps uniform
over the schedule (as prompt learning's default), no contrastive term (pairs have no concept split). Every step's
batch, timesteps and noise come from a generator seeded by (seed, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from anyword.diffusion.backbone import Backbone
from anyword.diffusion.prompt_learning import training_target
from anyword.errors import AnywordError
from anyword.images import ImageFrame

logger = logging.getLogger(__name__)

INFO_FILE = "anyword_adapter.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "anyword-text-encoder-adapter/1"


class AdapterError(AnywordError):
    """An adapter folder that cannot be used (missing files, pickles, another base model)."""


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter was made for and how: written beside peft's files as ``anyword_adapter.json``."""

    base: str  # the preset (or model id) whose text encoder it adapts
    base_source: str  # where that model's weights came from (hub id, folder, "random weights (seed 0)")
    base_fingerprint: str  # text_encoder_fingerprint() of the base text encoder
    rank: int
    alpha: float
    targets: tuple[str, ...]
    steps: int
    batch_size: int
    learning_rate: float
    seed: int
    pairs_source: str
    pairs_used: int
    pairs_skipped: int
    final_loss: float | None = None
    seconds: float | None = None
    timestep_range: tuple[int, int] | None = None
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = INFO_FILE) -> AdapterInfo:
        """The record as read from ``where``; :class:`AdapterError` naming the file and the field otherwise."""
        if not isinstance(data, dict):
            raise AdapterError(f"{where}: an adapter record is a JSON object, not {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise AdapterError(f"{where}: not a Segment Anyword adapter record (format {data.get('format')!r})")
        for name, kinds in _INFO_FIELDS.items():
            if name in data and not _is(data[name], kinds):
                expected = " or ".join(k.__name__ for k in kinds)
                raise AdapterError(f"{where}: {name!r} must be {expected}, not {data[name]!r}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]  # fmt: skip
        if missing:
            raise AdapterError(f"{where}: {', '.join(repr(m) for m in missing)} missing")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["targets"] = tuple(values.get("targets", ()))
        if values.get("timestep_range") is not None:
            values["timestep_range"] = tuple(values["timestep_range"])
        return cls(**values)


def read_json_file(path: Path) -> object:
    """The JSON in an adapter folder's file; :class:`AdapterError` naming it when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterError(f"{path} is unreadable: {error}") from None


def _is(value, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False
    if isinstance(value, list) and list in kinds:
        return all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
    return isinstance(value, kinds)


# The record's fields and what each may hold (JSON types).
_INFO_FIELDS = {
    "base": (str,), "base_source": (str,), "base_fingerprint": (str,), "rank": (int,), "alpha": (int, float),
    "targets": (list,), "steps": (int,), "batch_size": (int,), "learning_rate": (int, float), "seed": (int,),
    "pairs_source": (str,), "pairs_used": (int,), "pairs_skipped": (int,), "final_loss": (int, float, type(None)),
    "seconds": (int, float, type(None)), "timestep_range": (list, type(None)), "extra": (dict,),
}  # fmt: skip


def text_encoder_fingerprint(text_encoder) -> str:
    """A sha256 of the text encoder's parameters (names, shapes, values rounded to fp16), so an adapter is never
    merged into weights it was not trained on. The same in fp32 and fp16; weights loaded in bf16 differ."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(text_encoder.state_dict().items()):
        values = tensor.detach().to(device="cpu", dtype=torch.float16).contiguous()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(values.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


CHECKPOINT_DIR = "checkpoint"
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_TARGETS = ("fc1", "fc2")


@dataclass(frozen=True)
class AdaptSettings:
    """LoRA training settings; ``steps`` 1100 and ``rank`` 16 are the paper's."""

    steps: int = 1100
    rank: int = 16
    alpha: float = 16.0
    learning_rate: float = 1e-4
    batch_size: int = 4
    targets: tuple[str, ...] = ATTENTION_TARGETS
    seed: int = 0
    timestep_range: tuple[int, int] | None = None
    checkpoint_every: int = 100

    def __post_init__(self):
        if self.steps < 1 or self.rank < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise AnywordError("adapter training needs steps, rank and batch of at least 1 and a positive rate")


@dataclass(frozen=True)
class TrainingPair:
    """One image-caption pair: ``load()`` returns the image ``(H, W, 3)`` uint8; ``source`` names it in reports."""

    source: str
    caption: str
    load: Callable[[], np.ndarray]


@dataclass
class _Prepared:
    latents: torch.Tensor  # (N, C, h, w) on the device
    input_ids: torch.Tensor  # (N, 77) long on the device
    skipped: list[dict]


def prepare_pairs(backbone: Backbone, pairs: Sequence[TrainingPair], progress: bool = True) -> _Prepared:
    """Latents and token ids of every usable pair; a pair that fails (unreadable image, empty caption) is
    skipped and recorded; no usable pair at all is an error."""
    latents, ids, skipped = [], [], []
    tokenizer = backbone.tokenizer
    for pair in tqdm(pairs, desc="encoding pairs", disable=not progress):
        try:
            if not pair.caption or not pair.caption.strip():
                raise AnywordError("empty caption")
            image = pair.load()
            frame = ImageFrame(width=image.shape[1], height=image.shape[0], size=backbone.resolution)
            latents.append(backbone.encode_image(frame.to_model(image)))
            tokens = tokenizer(
                pair.caption, padding="max_length", truncation=True, max_length=tokenizer.model_max_length
            )
            ids.append(tokens["input_ids"])
        except (AnywordError, OSError, ValueError) as error:
            skipped.append({"pair": pair.source, "error": str(error)})
    if not latents:
        reasons = "; ".join(f"{s['pair']}: {s['error']}" for s in skipped[:3])
        raise AnywordError(f"no usable image-caption pair among {len(pairs)} ({reasons})")
    return _Prepared(
        latents=torch.cat(latents),
        input_ids=torch.tensor(ids, dtype=torch.long, device=backbone.device),
        skipped=skipped,
    )


def train_adapter(
    backbone: Backbone,
    pairs: Sequence[TrainingPair],
    out_dir: str | Path,
    settings: AdaptSettings = AdaptSettings(),
    *,
    pairs_source: str = "",
    progress: bool = True,
) -> AdapterInfo:
    """Train a LoRA adapter of ``backbone``'s text encoder on ``pairs`` and write it to ``out_dir`` (peft format
    + ``anyword_adapter.json``). Resumes from ``out_dir/checkpoint`` when an earlier run with the same settings
    stopped; a finished adapter with the same settings is returned as it is."""
    out = Path(out_dir)
    record = {"settings": _settings_record(settings), "pairs_source": pairs_source, "pairs": len(pairs)}
    finished = _finished(out, record)
    if finished is not None:
        return finished
    prepared = prepare_pairs(backbone, pairs, progress)
    encoder = _lora_encoder(backbone, settings)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    start, losses, seconds = _resume(out, record, encoder, optimizer)
    scaler = torch.amp.GradScaler("cuda", enabled=backbone.dtype == torch.float16 and backbone.device.type == "cuda")
    started = time.perf_counter()
    bar = tqdm(range(start, settings.steps), desc="adapter", initial=start, total=settings.steps, disable=not progress)
    for step in bar:
        loss = _step(backbone, encoder, prepared, settings, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
            _checkpoint(out, record, encoder, optimizer, step + 1, losses, seconds + time.perf_counter() - started)
    seconds += time.perf_counter() - started
    info = _adapter_info(backbone, settings, prepared, losses, seconds, pairs_source, record)
    encoder.save_pretrained(str(out), safe_serialization=True)
    (out / INFO_FILE).write_text(json.dumps(info.to_dict(), indent=1))
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return info


def _lora_encoder(backbone: Backbone, settings: AdaptSettings):
    """A copy of the text encoder wrapped by peft with trainable LoRA layers (fp32, seeded initialisation)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets))
    # LoRA's A matrices start random: seeded, without touching the caller's random state.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(settings.seed)
        encoder = get_peft_model(copy.deepcopy(backbone.text_encoder), config)
    for parameter in encoder.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()  # adapter weights train in fp32 whatever the base dtype
    return encoder


def _adapter_info(backbone, settings, prepared, losses, seconds, pairs_source, record) -> AdapterInfo:
    return AdapterInfo(
        base=backbone.name,
        base_source=backbone.source,
        base_fingerprint=text_encoder_fingerprint(backbone.text_encoder),
        rank=settings.rank,
        alpha=settings.alpha,
        targets=tuple(settings.targets),
        steps=settings.steps,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        pairs_source=pairs_source,
        pairs_used=int(prepared.latents.shape[0]),
        pairs_skipped=len(prepared.skipped),
        final_loss=float(np.mean(losses[-20:])) if losses else None,
        seconds=round(seconds, 2),
        timestep_range=settings.timestep_range,
        extra={"record": record, "skipped": prepared.skipped[:20], "loss_curve": _curve(losses)},
    )


def _step(backbone: Backbone, encoder, prepared: _Prepared, settings: AdaptSettings, step: int) -> torch.Tensor:
    """The denoising loss of one batch; batch, timesteps and noise from a generator seeded by (seed, step)."""
    scheduler = backbone.scheduler
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    count = prepared.latents.shape[0]
    index = torch.randint(0, count, (settings.batch_size,), generator=generator)
    low, high = settings.timestep_range or (0, scheduler.config.num_train_timesteps - 1)
    timesteps = torch.randint(low, high + 1, (settings.batch_size,), generator=generator)
    clean = prepared.latents[index.to(prepared.latents.device)]
    noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
    timesteps = timesteps.to(clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = training_target(scheduler, clean, noise, timesteps)
    autocast = backbone.device.type == "cuda" and backbone.dtype != torch.float32
    with torch.autocast(backbone.device.type, dtype=backbone.dtype, enabled=autocast):
        states = encoder(prepared.input_ids[index.to(prepared.input_ids.device)], return_dict=True)[0]
        prediction = backbone.unet(noisy, timesteps, encoder_hidden_states=states.to(backbone.dtype)).sample
    return torch.nn.functional.mse_loss(prediction.float(), target.float())


def _settings_record(settings: AdaptSettings) -> dict:
    return {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.__dict__.items() if k != "checkpoint_every"
    }


def _finished(out: Path, record: dict) -> AdapterInfo | None:
    """The adapter already in ``out`` if it was made with ``record``; an error if ``out`` holds something else."""
    info_path = out / INFO_FILE
    if not info_path.is_file():
        if out.is_dir() and any(p.name != CHECKPOINT_DIR for p in out.iterdir()):
            raise AdapterError(f"{out} holds files that are not an adapter; choose an empty or new folder")
        return None
    info = AdapterInfo.from_dict(read_json_file(info_path), str(info_path))
    if info.extra.get("record") != record:
        raise AdapterError(f"{out} holds an adapter trained with other settings or pairs; choose another folder")
    return info


def _checkpoint(out: Path, record: dict, encoder, optimizer, step: int, losses: list[float], seconds: float) -> None:
    """Adapter weights and optimizer moments as safetensors, the step and losses as JSON (no pickles)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = out / CHECKPOINT_DIR
    staging = out / f".{CHECKPOINT_DIR}-new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(encoder).items()}, str(staging / WEIGHTS_FILE))
    moments = {}
    for index, parameter in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        state = optimizer.state.get(parameter, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                moments[f"{index}.{name}"] = state[name].contiguous()
    save_file(moments, str(staging / "optimizer.safetensors"))
    (staging / "state.json").write_text(
        json.dumps({"record": record, "step": step, "losses": losses, "seconds": seconds})
    )
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)


def _resume(out: Path, record: dict, encoder, optimizer) -> tuple[int, list[float], float]:
    """``(next step, losses so far, seconds so far)``, restoring weights and optimizer from the last checkpoint."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = out / CHECKPOINT_DIR
    if not (folder / "state.json").is_file():
        return 0, [], 0.0
    state = json.loads((folder / "state.json").read_text())
    if state.get("record") != record:
        raise AdapterError(f"{folder} is a checkpoint of another training run; choose another folder")
    set_peft_model_state_dict(encoder, load_file(str(folder / WEIGHTS_FILE)))
    moments = load_file(str(folder / "optimizer.safetensors"))
    step = int(state["step"])
    for index, parameter in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        if f"{index}.exp_avg" in moments:
            optimizer.state[parameter] = {
                "step": torch.tensor(float(step)),
                "exp_avg": moments[f"{index}.exp_avg"].to(parameter.device),
                "exp_avg_sq": moments[f"{index}.exp_avg_sq"].to(parameter.device),
            }
    logger.info("resuming adapter training at step %d", step)
    return step, list(state["losses"]), float(state["seconds"])


def _curve(losses: list[float], points: int = 50) -> list[float]:
    """The loss curve averaged into at most ``points`` values (for reports)."""
    if not losses:
        return []
    chunks = np.array_split(np.array(losses), min(points, len(losses)))
    return [round(float(chunk.mean()), 6) for chunk in chunks]
