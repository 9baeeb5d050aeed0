"""``anyword download PRESET``: fetch exactly the files a preset needs before going offline (a machine, a Space's
build step): the diffusion weights the loader reads (into the Hugging Face cache) and the segmenter's weights (SAM's
checkpoint into ``~/.cache/anyword`` with its sha256, SAM 2.1 / HQ-SAM into the Hugging Face cache), resumable;
``--dry-run`` lists files and sizes."""

from __future__ import annotations

import argparse

from anyword.cli.options import add_output_options, add_segmenter_options, report
from anyword.cli.values import preset_name
from anyword.errors import AnywordError
from anyword.flags import DTYPE_CHOICES

NAME = "download"


def register(commands) -> None:
    parser = commands.add_parser(
        NAME, help="fetch the weights a preset needs (then it runs offline); --dry-run lists files and sizes"
    )
    parser.add_argument("preset", type=preset_name, help="the model setup (`anyword presets` lists them)")
    add_segmenter_options(parser, checkpoint=False)
    parser.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_CHOICES,
        help="the precision it will run in: fp16 fetches the fp16 weights where published (default: fp16 when a "
        "CUDA GPU is here, else fp32, as the run would choose)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the files and their sizes; download nothing")
    add_output_options(parser, out_help=None)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from anyword.presets import get_preset
    from anyword.segment import PRETRAINED, segmenter_spec

    preset = get_preset(args.preset)
    spec = segmenter_spec(args.segmenter or preset.segmenter)
    model = spec.check_model(args.segmenter_model or preset.default_segmenter_model(spec.key))
    sources = [(preset.published, _variant(args.dtype))] if preset.published is not None else []
    shipped = spec.availability(model).state == "shipped"
    if spec.published() is not None and preset.segmenter_weights == PRETRAINED and not shipped:
        sources.append((spec.published(), model))
    if not sources:
        return report(args, {"preset": preset.name, "files": [], "ready": True}, f"{preset.name}: nothing to "
                      "download (its weights ship with the package or are built from a config)")  # fmt: skip
    if args.dry_run:
        return _dry_run(args, preset.name, sources)
    where = [str(published.fetch(choice, not args.quiet)) for published, choice in sources]
    ready = _ready_line(preset, spec.key, model)
    return report(args, {"preset": preset.name, "where": where, "ready": True}, ready)


def _variant(dtype: str | None) -> str | None:
    import torch

    from anyword.devices import pick_device, pick_dtype

    return "fp16" if pick_dtype(pick_device(None), dtype) == torch.float16 else None


def _dry_run(args: argparse.Namespace, name: str, sources: list) -> int:
    rows = []
    for published, choice in sources:
        source = published.source(choice)
        try:
            listing = published.files(choice)
        except Exception as error:  # the hub or the server could not be asked: one line, no traceback
            raise AnywordError(f"cannot list the files of {source} ({type(error).__name__}: {error})") from None
        rows += [{"source": source, "path": path, "bytes": size} for path, size in listing]
    total = sum(row["bytes"] or 0 for row in rows)
    lines = [f"{row['source']}: {row['path']} ({_size(row['bytes'])})" for row in rows]
    lines.append(f"{name}: {len(rows)} files, {_size(total)} in all (nothing downloaded: --dry-run)")
    return report(args, {"preset": name, "files": rows, "total_bytes": total}, "\n".join(lines))


def _size(count: int | None) -> str:
    if count is None:
        return "size unknown"
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count} B"


def _ready_line(preset, segmenter: str, model: str | None) -> str:
    backbone = preset.backbone_availability()
    weights = preset.segmenter_availability(segmenter, model)
    state = "ready" if backbone.ready and weights.ready else "NOT READY"
    return (
        f"{preset.name}: {state} offline (backbone {backbone.state} in {backbone.where}; segmenter {segmenter}"
        f"{' ' + model if model else ''} {weights.state} in {weights.where})"
    )
