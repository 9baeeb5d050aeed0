"""GranDf's phrase test, as GLaMM's ``eval/gcg/evaluate.py`` makes it: a predicted phrase answers a ground-truth
phrase when their BERT sentence embeddings have cosine similarity >= 0.5. The embedding is ``bert-base-uncased``'s
last hidden state averaged over every token of the phrase, ``[CLS]`` and ``[SEP]`` included (the tokenizer's
defaults, at most 512 tokens). The model comes from a local folder or the Hugging Face cache (downloaded when allowed);
offline and not cached, :func:`load_phrase_embedder` raises :class:`ModelUnavailableError` saying how to get it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from anyword.repository import Layout, resolve

RECALL_MODEL = "bert-base-uncased"
TEXT_SIMILARITY_THRESHOLD = 0.5  # GLaMM's text_sim_threshold
MAX_TOKENS = 512  # GLaMM's tokenizer max_length


def bert_layouts() -> list[Layout]:
    """A transformers BERT repository's files: config, WordPiece vocabulary, weights (safetensors, else ``.bin``
    read with ``weights_only``)."""
    configs = ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
    instead = (
        "or pass a local folder with --recall-model PATH. Without it, GranDf's recall is reported as null (AP50 "
        "and mIoU do not need it)."
    )
    return [
        Layout("the BERT model of GranDf's recall", configs, {"": (name,)}, instead=instead)
        for name in ("model.safetensors", "pytorch_model.bin")
    ]


@dataclass
class PhraseEmbedder:
    """Embeds phrases as GLaMM does (mean of BERT's last hidden state over all tokens); ``name`` is what results
    record. Embeddings are cached per phrase."""

    tokenizer: object
    model: object
    name: str
    _cache: dict[str, np.ndarray] = field(default_factory=dict)

    def embed(self, text: str) -> np.ndarray:
        if text not in self._cache:
            import torch

            inputs = self.tokenizer(text, return_tensors="pt", max_length=MAX_TOKENS, truncation=True)
            with torch.no_grad():
                hidden = self.model(**inputs).last_hidden_state[0]
            self._cache[text] = hidden.mean(dim=0).double().numpy()
        return self._cache[text]

    def similarity(self, first: str, second: str) -> float:
        """Cosine similarity of the two phrases' embeddings (0 when either is the zero vector)."""
        a, b = self.embed(first), self.embed(second)
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(a @ b / norms) if norms > 0 else 0.0

    def phrase_match(self, threshold: float = TEXT_SIMILARITY_THRESHOLD) -> Callable[[str, str], bool]:
        """GLaMM's test as a ``(target, prediction) -> bool`` for :func:`anyword.metrics.grandf_recall`."""
        return lambda target, prediction: self.similarity(target, prediction) >= threshold


def load_phrase_embedder(model: str = RECALL_MODEL) -> PhraseEmbedder:
    """BERT ``model`` (hub id or local folder) in eval mode on the CPU, as GLaMM loads it (``AutoModel``)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from anyword.errors import ModelUnavailableError

    root, _ = resolve(model, bert_layouts())
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(root))
        network = AutoModel.from_pretrained(str(root), dtype=torch.float32).eval()
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(f"'{model}' at {root} is not a BERT model transformers can load: {error}") from None
    return PhraseEmbedder(tokenizer, network, model)
