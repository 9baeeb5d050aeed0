"""``anyword stability IMAGE --captions FILE --out DIR``: one image described in several wordings; do the masks agree?

Each wording runs through the pipeline; the referred mask of each (``--referent``: the parser's subject by default)
is written to ``DIR/masks/wording_K.png``; ``DIR/grid.png`` shows the wordings (rows) with their masks beside the
mask-agreement matrix; ``DIR/stability.json`` holds the wordings, the pairwise IoU matrix and its mean (the paper's
motivational study measures this spread, section 2.2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anyword.cli.options import (
    EXIT_OK,
    add_method_options,
    add_model_options,
    add_output_options,
    add_parser_options,
    add_segmenter_options,
)
from anyword.cli.runs import make_pipeline, warn_cost
from anyword.errors import AnywordError

NAME = "stability"
REFERENTS = ("subject", "first", "all")  # the ways to pick a wording's mask without ground truth


def register(commands) -> None:
    parser = commands.add_parser(NAME, help="one image in several wordings: masks, a grid and their agreement")
    parser.add_argument("image", help="image file (any common format)")
    parser.add_argument("--captions", default=None, metavar="FILE", help="wordings, one per line (blank lines skipped)")
    parser.add_argument("--caption", action="append", default=[], help="a wording (repeat for more)")
    parser.add_argument(
        "--referent", default="subject", choices=REFERENTS,
        help="which concept's mask answers a wording: the parser's subject (default), the first, or all merged",
    )  # fmt: skip
    add_output_options(parser, out_help="output folder: masks/, grid.png, stability.json")
    add_model_options(parser, preset_help="model setup (default sd15); `anyword presets` lists them")
    add_segmenter_options(parser)
    add_method_options(parser)
    add_parser_options(parser)
    parser.set_defaults(run=run)


def wordings_from(args: argparse.Namespace) -> list[str]:
    """The wordings of ``--captions`` then ``--caption``; at least two, none empty."""
    wordings = []
    if args.captions:
        path = Path(args.captions)
        if not path.is_file():
            raise AnywordError(f"--captions {path} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise AnywordError(f"--captions {path} is not UTF-8 text") from None
        wordings += [line.strip() for line in text.splitlines() if line.strip()]
    wordings += [caption.strip() for caption in args.caption]
    if any(not wording for wording in wordings):
        raise AnywordError("a --caption is empty")
    if len(wordings) < 2:
        raise AnywordError(f"give at least two wordings (--captions FILE or repeated --caption); got {len(wordings)}")
    return wordings


def run(args: argparse.Namespace) -> int:
    from anyword.evaluation.stability import agreement
    from anyword.evaluation.tasks import choose_referent
    from anyword.export import check_output_folder
    from anyword.images import check_image_path, load_image
    from anyword.metrics import mask_iou

    wordings = wordings_from(args)
    check_image_path(args.image)
    out = check_output_folder(args.out, marker="stability.json")
    pipeline = make_pipeline(args)
    warn_cost(pipeline, args)
    image = load_image(args.image)
    masks, rows = [], []
    for number, wording in enumerate(wordings):
        parse = pipeline.parse(wording)
        result = pipeline.run(image, parse)
        chosen, _ = choose_referent(args.referent, [c.id for c in result.concepts], result.masks, parse, None)
        mask = sum_masks([result.masks[i] for i in chosen], image.shape[:2])
        masks.append(mask)
        names = [c.phrase for c in result.concepts if c.id in chosen]
        file = f"masks/wording_{number}.png"
        rows.append({"wording": wording, "referent": names, "area": int(mask.sum()), "file": file})
    matrix = [[mask_iou(a, b) for b in masks] for a in masks]
    report = {"image": str(args.image), "referent_rule": args.referent, "wordings": rows, "agreement_matrix": matrix,
              "agreement": agreement(masks), "models": pipeline.models(),
              "settings": pipeline.settings.to_dict()}  # fmt: skip
    _write(out, image, masks, rows, matrix, report)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for number, row in enumerate(rows):
            shown = " ".join(f"{value:.2f}" for value in matrix[number])
            print(f"{number}: {row['wording'][:60]:<60} [{', '.join(row['referent'])}]  {shown}")
        print(f"mean agreement (pairwise IoU) {report['agreement']:.3f}; files in {out}")
    return EXIT_OK


def sum_masks(masks: list, shape: tuple[int, int]):
    """The union of bool ``(H, W)`` masks; all False when there are none."""
    import numpy as np

    return np.logical_or.reduce([np.zeros(shape, dtype=bool), *masks])


def _write(out: Path, image, masks: list, rows: list[dict], matrix: list[list[float]], report: dict) -> None:
    """Every file at once (an earlier result in ``out`` is replaced whole, never mixed with this one)."""
    import io

    from PIL import Image

    from anyword.export import replace_folder

    files = {"stability.json": json.dumps(report, indent=1, ensure_ascii=False).encode()}
    for mask, row in zip(masks, rows, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(mask.astype("uint8") * 255).save(buffer, format="PNG")
        files[row["file"]] = buffer.getvalue()
    files["grid.png"] = _grid(image, masks, [row["wording"] for row in rows], matrix)
    replace_folder(out, files)


def _grid(image, masks: list, wordings: list[str], matrix: list[list[float]]) -> bytes:
    """PNG: each wording's mask over the image (rows), the agreement matrix on the right."""
    import io
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(masks)
    figure = plt.figure(figsize=(7.5, 2.0 * count))
    grid = figure.add_gridspec(count, 2, width_ratios=(1, 1.3))
    for row, (mask, wording) in enumerate(zip(masks, wordings, strict=True)):
        axis = figure.add_subplot(grid[row, 0])
        shown = (image * 0.3).astype("uint8")
        shown[mask] = image[mask]
        axis.imshow(shown)
        axis.set_title("\n".join(textwrap.wrap(f"{row}: {wording}", 48)), fontsize=7)
        axis.axis("off")
    axis = figure.add_subplot(grid[:, 1])
    axis.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i in range(count):
        for j in range(count):
            axis.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=8, color="white")
    axis.set_xticks(range(count))
    axis.set_yticks(range(count))
    axis.set_title("mask agreement (IoU)", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
