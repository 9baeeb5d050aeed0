"""Segment Anyword: open-set grounded segmentation by mask prompt inversion (Liu et al., ICML 2025).

The pipeline follows the data: ``parsing`` (caption -> concepts), ``tokens`` (words -> CLIP token positions),
``diffusion`` (inversion, prompt learning, averaged cross-attention), ``prompts`` (maps -> points with R1/R2),
``segment`` (SAM, SAM 2.1, HQ-SAM, plain, GrabCut), ``pipeline`` (``SegmentAnyword``: all of it, cached),
``export``. ``presets`` names every model setup once; ``settings`` applies overrides to a preset's settings.

``from anyword import SegmentAnyword`` works; heavy modules (torch, diffusers) load on first use, not on import.
"""

__version__ = "0.1.0"

_LAZY = {
    "SegmentAnyword": "anyword.pipeline",
    "Analysis": "anyword.pipeline",
    "PipelineSettings": "anyword.settings",
    "Overrides": "anyword.settings",
    "PRESETS": "anyword.presets",
    "SegmentationResult": "anyword.pipeline",
    "AnywordError": "anyword.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anyword' has no attribute {name!r}")


__all__ = sorted(_LAZY)
