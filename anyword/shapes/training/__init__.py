"""Training the ``shapes`` model on synthetic scenes (CPU is enough: about 2.5 s per step of 32 images on 2 cores):
``anyword shapes train --out anyword/data/shapes``.

The defaults (:class:`TrainConfig`) are the shipped recipe: 1,000 steps of the diffusion loss plus TokenCompose's
grounding losses on the cross-attention (:func:`grounding_loss`), with half the captions also naming a shape the
scene lacks. Seeded end to end (scene ``i`` of the train split is a pure function of ``i``; model init and noise
come from the seed). ``config`` says what a run is, ``data`` what it sees, ``losses`` what it minimises, ``loop``
how it runs.
"""

from anyword.shapes.training.config import TrainConfig
from anyword.shapes.training.data import GROUNDING_SLOTS, batch, grounding_targets
from anyword.shapes.training.loop import sharpen_cross_attention, train
from anyword.shapes.training.losses import grounding_loss, text_gain, v_loss

__all__ = [
    "GROUNDING_SLOTS",
    "TrainConfig",
    "batch",
    "grounding_loss",
    "grounding_targets",
    "sharpen_cross_attention",
    "text_gain",
    "train",
    "v_loss",
]
