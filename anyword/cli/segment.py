"""``anyword segment IMAGE CAPTION --out DIR`` (or ``--batch FILE.jsonl``): one mask per phrase, written as files."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from anyword.cli.jsonl import beside, jsonl_lines
from anyword.cli.options import (
    EXIT_OK,
    EXIT_USAGE,
    add_method_options,
    add_model_options,
    add_output_options,
    add_parser_options,
    add_segmenter_options,
)
from anyword.cli.runs import make_pipeline, warn_cost
from anyword.errors import AnywordError

NAME = "segment"
BATCH_MARKER = "summary.json"  # what makes a folder an earlier batch's output
BATCH_LINE_FOLDER = re.compile(r"\d{4,}_[A-Za-z0-9._-]*")


def register(commands) -> None:
    parser = commands.add_parser(NAME, help="image + caption -> one mask per phrase (files in --out)")
    parser.add_argument("image", nargs="?", help="image file (any common format)")
    parser.add_argument("caption", nargs="?", help="the caption, in English")
    parser.add_argument("--batch", help='JSONL file, one {"image": path, "caption": text} per line')
    add_output_options(parser, out_help="output folder (an earlier result there is replaced whole)")
    add_model_options(parser, preset_help="model setup (default sd15); `anyword presets` lists them")
    add_segmenter_options(parser)
    add_method_options(parser)
    parser.add_argument(
        "--embeddings-cache",
        default=None,
        metavar="DIR",
        help="save learned token embeddings here and reuse them for the same image and caption",
    )
    add_parser_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.batch:
        if args.image or args.caption:
            raise AnywordError("give either IMAGE and CAPTION, or --batch FILE.jsonl, not both")
        return _run_batch(args)
    if not args.image or args.caption is None:
        raise AnywordError("give an IMAGE and a CAPTION (or --batch FILE.jsonl)")
    from anyword.export import check_output_folder
    from anyword.images import check_image_path

    check_image_path(args.image)
    out = check_output_folder(args.out)
    pipeline = make_pipeline(args)
    warn_cost(pipeline, args)
    result = _segment_one(pipeline, args.image, args.caption, out)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        _print_summary(result, out)
    return EXIT_OK


def _segment_one(pipeline, image_path: str | Path, caption: str, out_dir: Path):
    from anyword.export import write_outputs
    from anyword.images import load_image

    image = load_image(image_path)
    result = pipeline.run(image, caption)
    write_outputs(result, image, out_dir, image_name=Path(image_path).name)
    return result


def _print_summary(result, out: Path) -> None:
    width, height = result.image_size
    print(f"{len(result.concepts)} concepts segmented in {result.timings['total_s']:.1f} s -> {out}/")
    if result.models["adapter"]:
        steps = result.settings.diffusion.learning.steps
        print(f"  text-encoder adapter {result.models['adapter']}, {steps} prompt-learning steps")
    for concept in result.concepts:
        area = result.masks[concept.id].sum() / (width * height)
        points = result.prompts.for_concept(concept.id)
        print(
            f"  {concept.id}: {concept.phrase:30s} mask {area:6.1%}  score {result.scores[concept.id]:.2f}  "
            f"points +{sum(p.label == 1 for p in points)}/-{sum(p.label == 0 for p in points)}"
        )


def _run_batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from anyword.export import check_output_folder

    batch = Path(args.batch)
    out = check_output_folder(args.out, BATCH_MARKER)
    jobs = jsonl_lines(batch, "batch")
    if not jobs:
        raise AnywordError(f"{batch} has no lines to run")
    pipeline = make_pipeline(args)
    warn_cost(pipeline, args)
    _clear_earlier_batch(out)
    done, failed = [], []
    for number, line in tqdm(jobs, desc="batch", unit="image", disable=args.quiet):
        try:
            done.append(_batch_line(pipeline, batch, number, line, out))
        except Exception as error:  # one bad line must not lose the others
            if args.debug and not isinstance(error, (AnywordError, json.JSONDecodeError)):
                raise
            failed.append({"line": number, "error": _line_error(error)})
            print(f"line {number}: error: {failed[-1]['error']}", file=sys.stderr)
    summary = {"batch": str(batch), "lines": len(jobs), "done": len(done), "failed": len(failed)}
    summary |= {"results": done, "errors": failed}
    (out / BATCH_MARKER).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"{len(done)} of {len(jobs)} lines done, {len(failed)} failed; summary in {out / BATCH_MARKER}")
    return EXIT_OK if not failed else EXIT_USAGE


def _batch_line(pipeline, batch: Path, number: int, line: str, out: Path) -> dict:
    """Run one line of the batch file into its own folder; raises for a bad line."""
    from anyword.images import check_image_path

    item = json.loads(line)
    if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(item.get("caption"), str):
        raise AnywordError('each line must be a JSON object with "image" and "caption" strings')
    image_path = beside(batch, item["image"])
    check_image_path(image_path)
    folder = out / f"{number:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', image_path.stem)[:40]}"
    result = _segment_one(pipeline, image_path, item["caption"], folder)
    return {
        "line": number,
        "image": str(image_path),
        "out": str(folder),
        "concepts": len(result.concepts),
        "seconds": round(result.timings["total_s"], 3),
    }


def _line_error(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON ({error.msg})"
    if isinstance(error, AnywordError):
        return str(error)
    return f"internal error: {type(error).__name__}: {error}"


def _clear_earlier_batch(out: Path) -> None:
    """Remove an earlier batch's summary and line folders, so none of them sits beside the new results."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BATCH_MARKER).unlink(missing_ok=True)
    for entry in out.iterdir():
        if entry.is_dir() and BATCH_LINE_FOLDER.fullmatch(entry.name):
            shutil.rmtree(entry)
