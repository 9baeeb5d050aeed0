"""Test-time prompt learning (paper Algorithm 1, lines 3-8).

Only the input token embeddings at the concept words' positions are trained (nouns and their bound adjectives;
one vector per word piece, shared by all mentions of that word in the concept), initialised from the tokenizer's
vocabulary embeddings. Loss: ``L_DM = ||target - unet(z_t, t, V)||^2`` on the image's latent with random timesteps,
a batch of timesteps per step (target = epsilon, or v for v-prediction models), plus the optional MCPL PromptCL
term (InfoNCE on the text-encoder outputs of the concept tokens, temperature 0.3, weight 7.5e-4). Adam, lr 5e-3.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from anyword.errors import AnywordError
from anyword.flags import DTYPE_CHOICES
from anyword.steps import PAPER_LEARNING_STEPS
from anyword.tokens import TokenAlignment

logger = logging.getLogger(__name__)

FORMAT = "anyword-learned-embeddings-v1"


@dataclass(frozen=True)
class LearningSettings:
    """Prompt-learning hyperparameters; defaults are the paper's (C.1). ``steps=0`` disables learning.

    ``timestep_range``: ``(low, high)`` inclusive range of training timesteps (``None``: all of them).
    ``loss_scale``: static loss scaling used only when the model runs in fp16, so small gradients survive.
    ``attention_dtype``: the UNet's attention computes in this dtype ("fp16", "bf16", "fp32") while prompt
    learning runs (``None``: the model's own); what the maps are averaged from is never affected.
    """

    steps: int = PAPER_LEARNING_STEPS
    batch_size: int = 8
    learning_rate: float = 5e-3
    contrastive_weight: float = 7.5e-4
    temperature: float = 0.3
    timestep_range: tuple[int, int] | None = None
    loss_scale: float = 1024.0
    attention_dtype: str | None = None

    def __post_init__(self):
        if self.attention_dtype not in (None, *DTYPE_CHOICES):
            choices = ", ".join(DTYPE_CHOICES)
            raise ValueError(f"attention_dtype must be one of {choices} or None, got {self.attention_dtype!r}")


@dataclass(frozen=True)
class EmbeddingSlot:
    """One learned vector: piece ``piece`` of ``word`` in concept ``concept_id`` (noun or adjective), used at
    ``positions`` and initialised from vocabulary token ``token_id``; ``in_vocabulary``: the word is one token of
    the vocabulary (not several pieces, not the unknown token)."""

    concept_id: int
    role: str
    word: str
    piece: int
    token_id: int
    positions: tuple[int, ...]
    in_vocabulary: bool = True


@dataclass
class LearnedEmbeddings:
    """The learned token embeddings of one (image, caption): ``vectors`` is ``(n_slots, D)`` float32."""

    slots: tuple[EmbeddingSlot, ...]
    vectors: torch.Tensor
    initial: torch.Tensor
    losses: list[float] = field(default_factory=list)
    key: str = ""

    @property
    def positions(self) -> torch.Tensor:
        return torch.tensor([p for slot in self.slots for p in slot.positions], dtype=torch.long)

    def position_vectors(self) -> torch.Tensor:
        """``(k, D)``: the vector of each position in :attr:`positions` (differentiable w.r.t. ``vectors``)."""
        index = torch.tensor([i for i, slot in enumerate(self.slots) for _ in slot.positions], dtype=torch.long)
        return self.vectors[index.to(self.vectors.device)]

    @property
    def drift(self) -> float:
        """Mean L2 distance of the learned vectors from their initialisation."""
        return float((self.vectors.detach().cpu() - self.initial.cpu()).norm(dim=1).mean())

    def save(self, path: str | Path) -> Path:
        """Write a small safetensors file (vectors + metadata, a few KB per word)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": FORMAT,
            "key": self.key,
            "slots": json.dumps([asdict(s) for s in self.slots]),
            "losses": json.dumps(self.losses),
        }
        save_file(
            {"vectors": self.vectors.detach().cpu().contiguous(), "initial": self.initial.cpu().contiguous()},
            str(path),
            metadata=metadata,
        )
        return path

    @classmethod
    def load(cls, path: str | Path, expected_key: str | None = None) -> LearnedEmbeddings:
        """Read embeddings saved by :meth:`save`; ``expected_key`` guards against another image or caption."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (OSError, ValueError, RuntimeError, SafetensorError) as error:
            raise AnywordError(f"cannot read learned embeddings from {path}: {error}") from None
        if metadata.get("format") != FORMAT:
            raise AnywordError(f"{path} is not a Segment Anyword embeddings file")
        if expected_key is not None and metadata.get("key") != expected_key:
            raise AnywordError(f"{path} holds embeddings learned for another image, caption or model")
        slots = tuple(EmbeddingSlot(**{**s, "positions": tuple(s["positions"])}) for s in json.loads(metadata["slots"]))
        return cls(
            slots=slots,
            vectors=tensors["vectors"].float(),
            initial=tensors["initial"].float(),
            losses=json.loads(metadata.get("losses", "[]")),
            key=metadata.get("key", ""),
        )


def embedding_slots(alignment: TokenAlignment, unknown_id: int | None = None) -> tuple[EmbeddingSlot, ...]:
    """One slot per word piece of each concept's noun and adjectives; mentions of the same word share it. A word
    is in the vocabulary when it is one token other than ``unknown_id``."""
    slots: dict[tuple, list] = {}
    in_vocabulary: dict[tuple, bool] = {}
    for concept in alignment.concepts:
        words = [("noun", w) for w in concept.noun]
        words += [("adjective", w) for _, occurrences in concept.adjectives for w in occurrences]
        for role, word in words:
            single = len(word.positions) == 1 and alignment.input_ids[word.positions[0]] != unknown_id
            for piece, position in enumerate(word.positions):
                key = (concept.concept_id, role, word.word.lower(), piece)
                slots.setdefault(key, []).append(position)
                in_vocabulary[key] = in_vocabulary.get(key, True) and single
    taken: set[int] = set()
    result = []
    for (concept_id, role, word, piece), positions in slots.items():
        positions = tuple(p for p in sorted(set(positions)) if p not in taken)
        taken.update(positions)
        if positions:
            token_id = alignment.input_ids[positions[0]]
            known = in_vocabulary[(concept_id, role, word, piece)]
            result.append(EmbeddingSlot(concept_id, role, word, piece, token_id, positions, known))
    return tuple(result)


def initial_embeddings(backbone, alignment: TokenAlignment, key: str = "", seed: int = 0) -> LearnedEmbeddings:
    """Slots initialised from the (frozen) vocabulary embeddings: a per-run copy, float32. Where the backbone says
    so (``out_of_vocabulary == "random"``: BERT, the paper's rule), a word that is not one vocabulary token starts
    from a random vector instead: normal, with the embedding table's standard deviation, drawn from a generator
    seeded by ``seed`` and the word (the same word starts from the same vector in every run)."""
    slots = embedding_slots(alignment, getattr(backbone.tokenizer, "unk_token_id", None))
    table = backbone.text_encoder.get_input_embeddings().weight
    ids = torch.tensor([s.token_id for s in slots], dtype=torch.long, device=table.device)
    vectors = table[ids].detach().float().clone()
    if getattr(backbone, "out_of_vocabulary", "pieces") == "random":
        scale = float(table.detach().float().std())
        for index, slot in enumerate(slots):
            if not slot.in_vocabulary:
                generator = torch.Generator().manual_seed(_word_seed(seed, slot))
                vectors[index] = (torch.randn(vectors.shape[1], generator=generator) * scale).to(vectors.device)
    return LearnedEmbeddings(slots=slots, vectors=vectors, initial=vectors.detach().cpu().clone(), key=key)


def _word_seed(seed: int, slot: EmbeddingSlot) -> int:
    """A seed for one piece of one word, the same in every process (Python's ``hash`` of text is not)."""
    text = f"{seed}:{slot.role}:{slot.word}:{slot.piece}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def learn_embeddings(
    backbone,
    latents: torch.Tensor,
    alignment: TokenAlignment,
    settings: LearningSettings = LearningSettings(),
    seed: int = 0,
    key: str = "",
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> LearnedEmbeddings:
    """Optimise the concept-word embeddings to reconstruct ``latents`` (``(1, C, h, w)``, the image's latent).

    Random timesteps and noise come from a CPU generator seeded with ``seed``, so runs are reproducible on any
    device. The backbone's parameters stay frozen and unchanged.
    """
    learned = initial_embeddings(backbone, alignment, key, seed)
    if settings.steps <= 0 or not learned.slots:
        return learned
    scheduler = backbone.scheduler
    low, high = settings.timestep_range or (0, scheduler.config.num_train_timesteps - 1)
    generator = torch.Generator().manual_seed(seed)
    vectors = learned.vectors.requires_grad_(True)
    optimizer = torch.optim.Adam([vectors], lr=settings.learning_rate)
    ids = torch.tensor(alignment.input_ids, dtype=torch.long, device=backbone.device)[None]
    groups = _concept_groups(learned)
    scale = settings.loss_scale if backbone.dtype == torch.float16 else 1.0
    clean = latents.detach()
    sync_free = backbone.speed.sync_free and on_step is None
    losses: list = []  # tensors when sync-free (read once at the end), floats otherwise (one sync per step)

    draws = _random_draws(generator, settings.steps, settings.batch_size, clean, (low, high), 64 if sync_free else 1)
    with backbone.learning_attention(settings.attention_dtype):
        for step in tqdm(range(settings.steps), desc="prompt learning", disable=not progress):
            loss = _learning_loss(backbone, learned, ids, clean, groups, settings, *next(draws))
            optimizer.zero_grad(set_to_none=True)
            (loss * scale).backward()
            if scale != 1.0:
                vectors.grad /= scale
            if (sync_free and scale == 1.0) or torch.isfinite(vectors.grad).all():
                optimizer.step()
            else:
                logger.warning("prompt learning step %d: non-finite gradient skipped", step)
            losses.append(loss.detach() if sync_free else float(loss.detach()))
            if on_step is not None:
                on_step(step, float(losses[-1]))
    learned.losses = torch.stack(losses).float().cpu().tolist() if sync_free and losses else losses
    if sync_free and not torch.isfinite(vectors).all():  # an unscaled step went non-finite: keep the start
        logger.warning("prompt learning diverged (non-finite embeddings); the initial embeddings are kept")
        return initial_embeddings(backbone, alignment, key, seed)
    learned.vectors = vectors.detach()
    return learned


def _learning_loss(backbone, learned, ids, clean, groups, settings, timesteps, noise) -> torch.Tensor:
    """One step's loss: the diffusion loss on ``clean`` noised at ``timesteps`` with ``noise`` (the batch), plus
    PromptCL between concepts when it is on."""
    scheduler = backbone.scheduler
    batch = clean.expand(settings.batch_size, -1, -1, -1)
    noisy = scheduler.add_noise(batch, noise, timesteps)
    target = training_target(scheduler, batch, noise, timesteps)
    states = backbone.text_states(ids, learned)
    prediction = backbone.unet_forward(noisy, timesteps, states, learning=True)
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
    if settings.contrastive_weight > 0 and len(groups) > 1:
        loss = loss + settings.contrastive_weight * prompt_contrastive_loss(states[0], groups, settings.temperature)
    return loss


def _random_draws(generator, steps: int, batch: int, clean: torch.Tensor, bounds: tuple[int, int], chunk: int):
    """Each step's timesteps and noise, drawn on the CPU in step order (so every device and every ``chunk`` gives
    the same numbers) and moved to the device ``chunk`` steps at a time (one transfer per chunk, not per step)."""
    low, high = bounds
    for first in range(0, steps, chunk):
        count = min(chunk, steps - first)
        drawn = [
            (
                torch.randint(low, high + 1, (batch,), generator=generator),
                torch.randn((batch, *clean.shape[1:]), generator=generator),
            )
            for _ in range(count)
        ]
        timesteps = torch.stack([t for t, _ in drawn]).to(clean.device)
        noise = torch.stack([n for _, n in drawn]).to(clean.device, clean.dtype)
        yield from zip(timesteps, noise, strict=True)


def training_target(scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict for ``add_noise(clean, noise, t)``: the noise (epsilon-prediction, SD 1.x) or
    the velocity ``sqrt(a) noise - sqrt(1 - a) clean`` (v-prediction, SD 2.x and the shapes model)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def _concept_groups(learned: LearnedEmbeddings) -> list[list[int]]:
    """Token positions of each concept (noun and adjectives together: MCPL binds adjectives to their noun)."""
    groups: dict[int, list[int]] = {}
    for slot in learned.slots:
        groups.setdefault(slot.concept_id, []).extend(slot.positions)
    return list(groups.values())


def prompt_contrastive_loss(states: torch.Tensor, groups: list[list[int]], temperature: float = 0.3) -> torch.Tensor:
    """MCPL's PromptCL on one caption: InfoNCE over the text-encoder outputs ``states`` (``(L, D)``) of concept
    tokens, where tokens of the same concept (noun and its adjectives) are positives and tokens of other concepts
    negatives. Pushes concepts apart in embedding space so their attention maps separate."""
    positions = [p for group in groups for p in group]
    labels = torch.tensor([g for g, group in enumerate(groups) for _ in group], device=states.device)
    features = torch.nn.functional.normalize(states[positions].float(), dim=-1)
    logits = features @ features.T / temperature
    log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]).float()
    return -((log_probability * positive).sum(dim=1) / positive.sum(dim=1)).mean()


def embedding_key(*parts: object) -> str:
    """Stable key for learned embeddings: hash of the image digest, caption, slots, model and settings."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]
