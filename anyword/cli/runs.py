"""What a command runs, built from its options: the preset (or ``--model``), the caption parser, the pipeline with
the preset's settings and the options' overrides, the adapter, and the cost warning for long CPU runs."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from anyword.cli.options import overrides_from, speed_from

if TYPE_CHECKING:
    from anyword.pipeline import SegmentAnyword
    from anyword.presets import Preset
    from anyword.settings import Overrides


def preset_from(args: argparse.Namespace, default: str | None = None) -> Preset:
    """``--preset`` (else ``default``, else the default preset), with ``--model``'s weights when given."""
    from anyword.presets import DEFAULT_PRESET, get_preset

    preset = get_preset(args.preset or default or DEFAULT_PRESET)
    return preset.with_model(args.model) if getattr(args, "model", None) else preset


def dataset_from(args: argparse.Namespace, split: str, count: int, wordings: bool = False):
    """The dataset the dataset options name (:func:`~anyword.cli.options.add_dataset_options`), opened at
    ``split``; ``count`` scenes for the shapes world, each in several wordings with ``wordings``."""
    from pathlib import Path

    from anyword.evaluation import DatasetOptions, open_dataset

    options = DatasetOptions(
        split=split,
        root=Path(args.data_root) if args.data_root else None,
        image_root=Path(args.image_root) if args.image_root else None,
        count=count,
        image_size=args.image_size,
        classes=getattr(args, "classes", None) or "all",
        wordings=wordings,
    )
    return open_dataset(args.dataset, options)


def make_caption_parser(args: argparse.Namespace, overrides: Overrides, prompt: str = "concepts"):
    """The caption parser the options ask for (``--parser``, ``--spacy-model``, the LLM options, what counts as a
    concept); ``prompt`` is the LLM's task ("concepts", or "referring": the one referred object)."""
    from anyword.parsing import DEFAULT_MODEL, DEFAULT_TIMEOUT_S, make_parser
    from anyword.settings import parse_settings

    return make_parser(
        getattr(args, "parser", "spacy"),
        parse_settings(overrides),
        model=getattr(args, "llm_model", None) or DEFAULT_MODEL,
        base_url=getattr(args, "base_url", None),
        timeout_s=getattr(args, "llm_timeout", None) or DEFAULT_TIMEOUT_S,
        prompt=prompt,
        spacy_model=getattr(args, "spacy_model", None),
    )


def make_pipeline(
    args: argparse.Namespace,
    default_preset: str | None = None,
    device: str | None = None,
    progress: bool = True,
    prompt: str = "concepts",
) -> SegmentAnyword:
    """The pipeline the options describe: preset (or --model), its settings with the options' overrides, the
    adapter (:func:`~anyword.adapters.choose_adapter`), segmenter, parser (asked ``prompt``), device, speed."""
    from anyword.adapters import choose_adapter
    from anyword.pipeline import SegmentAnyword

    preset = preset_from(args, default_preset)
    overrides = overrides_from(args)
    return SegmentAnyword(
        preset,
        segmenter=args.segmenter,
        parser=make_caption_parser(args, overrides, prompt),
        settings=preset.settings(overrides),
        segmenter_model=args.segmenter_model,
        segmenter_checkpoint=getattr(args, "segmenter_checkpoint", None),
        device=device or args.device,
        dtype=args.dtype,
        progress=progress and not args.quiet,
        embeddings_dir=getattr(args, "embeddings_cache", None),
        adapter=choose_adapter(preset, args.adapter, overrides.quality),
        speed=speed_from(args),
    )


def warn_cost(pipeline: SegmentAnyword, args: argparse.Namespace) -> None:
    """Say before a long CPU run what it will cost (measured figures from the preset registry)."""
    from anyword.settings import FAST, Overrides

    steps = pipeline.settings.diffusion.learning.steps
    cost = pipeline.preset.cost_warning(steps, args.device)
    if cost is not None and not args.quiet:
        fast = pipeline.preset.settings(Overrides(quality=FAST)).diffusion.learning.steps
        hint = f"; --fast runs {fast} steps" if steps > fast else ""
        print(f"warning: {pipeline.preset.name}: {cost}{hint}", file=sys.stderr)
