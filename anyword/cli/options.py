"""What the subcommands share: exit codes, option groups (models, segmenter, method settings, caption parser,
output) declared once, and the one translation of options into the library's settings (:func:`overrides_from`;
:mod:`anyword.cli.runs` builds the pipeline from them).

One word, one meaning: ``--steps`` is always prompt-learning steps, ``--inversion-steps`` DDIM steps, ``--fast``
Segment Anyword_f (an adapter and the preset's fast budget), ``--compile`` the compiled UNet.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from anyword.cli.values import fraction, non_negative_int, number, positive_float, positive_int, preset_name, seed
from anyword.errors import AnywordError
from anyword.flags import DTYPE_CHOICES, DeprecatedFlag
from anyword.parsing.openai_parser import MAX_TIMEOUT_S
from anyword.seeds import MAX_SEED
from anyword.segment import SEGMENTERS, models_help

if TYPE_CHECKING:
    from anyword.settings import Overrides

EXIT_OK, EXIT_BUG, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader closed the pipe
EXIT_INTERRUPTED = 130  # 128 + SIGINT


# --- option groups -------------------------------------------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser, preset_help: str, model: bool = True) -> None:
    """--preset, --model, --device, --dtype, --speed, --compile."""
    group = parser.add_argument_group("models")
    group.add_argument("--preset", default=None, type=preset_name, help=preset_help)
    if model:
        group.add_argument(
            "--model", default=None, help="hub id or local folder of the preset's kind of weights (sd15, ldm ...)"
        )
    add_device_options(group)
    add_speed_options(group)
    group.add_argument("--fast-path", action=DeprecatedFlag, nargs=0, dest="compile", help=argparse.SUPPRESS)


def add_dataset_options(parser: argparse.ArgumentParser, dataset_default: str | None, split_help: str):
    """--dataset, --data-root, --image-root, --split, --image-size (the group, for a command's own additions)."""
    from anyword.evaluation import DATASETS

    group = parser.add_argument_group("dataset")
    group.add_argument(
        "--dataset",
        default=dataset_default,
        required=dataset_default is None,
        choices=list(DATASETS),
        help="the benchmark" + (" (default: the shapes world)" if dataset_default else ""),
    )
    group.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's folder (official layout)")
    group.add_argument(
        "--image-root",
        default=None,
        metavar="DIR",
        help="images elsewhere (default: the layout's, e.g. DATA_ROOT/images/train2014 for the COCO-based sets)",
    )
    group.add_argument("--split", default=None, help=split_help)
    group.add_argument("--image-size", type=positive_int, default=128, help="shapes datasets: scene size (pixels)")
    return group


def add_speed_options(group) -> None:
    """--speed and --compile (how the UNet runs; results are the same up to float rounding)."""
    from anyword.diffusion.speed import SPEEDS

    group.add_argument(
        "--speed",
        default=None,
        choices=list(SPEEDS),
        help="how the UNet runs, the same results up to float rounding: eager; batched (recorded steps batched "
        "straight on the inversion trajectory); compiled (compiled prompt learning, channels-last, no per-step "
        "host sync: sooner on a GPU after a one-time compile). Default: the preset's (`anyword presets`)",
    )
    group.add_argument("--compile", action="store_true", help="the same as --speed compiled")


def speed_from(args: argparse.Namespace) -> str | None:
    """The speed the options ask for (``None``: the preset's); refuses --compile beside another --speed."""
    if args.compile and args.speed not in (None, "compiled"):
        raise AnywordError(f"--compile means --speed compiled; it cannot go with --speed {args.speed}")
    return "compiled" if args.compile else args.speed


def add_device_options(group) -> None:
    group.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    group.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="default: fp16 on CUDA, else fp32")


def add_segmenter_options(parser: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """--segmenter, --segmenter-model, --segmenter-checkpoint (every choice and size read from the registry)."""
    group = parser.add_argument_group("segmenter")
    group.add_argument(
        "--segmenter", default=None, choices=list(SEGMENTERS), help="mask generator (default: the preset's)"
    )
    group.add_argument("--segmenter-model", "--sam-model", default=None, help=f"segmenter size: {models_help()}")
    if checkpoint:
        group.add_argument(
            "--segmenter-checkpoint",
            "--sam-checkpoint",
            default=None,
            help="local weights instead of the download (sam: a .pth file; the others: a hub-layout folder)",
        )


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """The run's settings: prompt learning, inversion, attention, points, R1/R2, seed, adapter."""
    group = parser.add_argument_group("method (default: the preset's settings)")
    group.add_argument("--steps", type=non_negative_int, default=None, help="prompt-learning steps (0 disables)")
    group.add_argument(
        "--fast",
        action="store_true",
        help="Segment Anyword_f: the preset's fast step budget (50 for Stable Diffusion) with a LoRA-adapted text "
        "encoder (--adapter, else the preset's shipped one; refused when there is none)",
    )
    add_adapter_option(group)
    group.add_argument("--learning-rate", type=positive_float, default=None, help="prompt-learning rate")
    group.add_argument(
        "--learning-batch", type=positive_int, default=None, help="timesteps per prompt-learning step (paper: 8)"
    )
    group.add_argument(
        "--learning-attention-dtype",
        choices=DTYPE_CHOICES,
        default=None,
        help="the UNet's attention computes in this dtype during prompt learning (default: the preset's; the "
        "model's own where it sets none)",
    )
    group.add_argument("--inversion-steps", type=positive_int, default=None, help="DDIM steps (paper: 50)")
    group.add_argument(
        "--attention-res",
        type=positive_int,
        nargs="+",
        default=None,
        help="attention grids to average (default: the paper's 16x16 where the model has it, else the grid nearest a "
        "quarter of its latent side)",
    )
    group.add_argument("--resize", choices=("stretch", "pad"), default=None, help="image -> square model input")
    group.add_argument("--threshold", type=fraction, default=None, help="attention threshold (paper: 0.7)")
    group.add_argument("--points", type=positive_int, default=None, help="points per noun map (paper: 1)")
    group.add_argument("--sampling", choices=("random", "peak"), default=None, help="point sampling")
    group.add_argument("--no-r1", action="store_true", help="no positive adjective clustering")
    group.add_argument("--no-r2", action="store_true", help="no negative mutual-exclusive binding")
    group.add_argument("--seed", type=seed, default=None, help=f"seed of prompt learning and sampling, 0 to {MAX_SEED}")


def add_adapter_option(group) -> None:
    group.add_argument(
        "--adapter",
        default=None,
        metavar="DIR|shipped",
        help="text-encoder adapter folder made by `anyword adapt` (or 'shipped': the preset's own), merged at load",
    )


def add_parser_options(parser: argparse.ArgumentParser) -> None:
    """--parser and the LLM's model, endpoint and timeout; what counts as a concept."""
    group = parser.add_argument_group("caption parsing")
    group.add_argument(
        "--parser",
        choices=("spacy", "openai"),
        default="spacy",
        help="spaCy (offline, default) or an OpenAI-compatible LLM (key from OPENAI_API_KEY)",
    )
    group.add_argument("--predicates", action="store_true", help="also segment verbs such as 'holding' (sec. 3.3)")
    group.add_argument(
        "--keep-frame-nouns",
        action="store_true",
        help="treat 'image', 'photo', 'scene', 'left', 'background' ... as concepts too",
    )
    group.add_argument(
        "--spacy-model",
        default=None,
        metavar="NAME",
        help="spaCy pipeline for --parser spacy (and the LLM's fallback), e.g. the paper's en_core_web_trf "
        "(default: en_core_web_sm)",
    )
    group.add_argument(
        "--llm-model", default=None, help="LLM name for --parser openai, e.g. a Vicuna served by vLLM (default gpt-4o)"
    )
    group.add_argument(
        "--base-url", default=None, help="OpenAI-compatible server URL (default: OPENAI_BASE_URL, else OpenAI)"
    )
    group.add_argument(
        "--llm-timeout",
        type=number(float, 0.0, MAX_TIMEOUT_S, low_inclusive=False),
        default=None,
        help=f"seconds to wait for the LLM (default 30, at most {MAX_TIMEOUT_S:g})",
    )


def add_output_options(
    parser: argparse.ArgumentParser, out_help: str | None, required: bool = True, progress: bool = True
) -> None:
    """--out (when ``out_help``), --json, --quiet."""
    if out_help is not None:
        parser.add_argument("--out", required=required, default=None, metavar="DIR", help=out_help)
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    if progress:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


def report(args: argparse.Namespace, summary: dict, line: str) -> int:
    """A command's outcome: ``summary`` as one JSON object with --json, else the sentence ``line``."""
    print(json.dumps(summary, ensure_ascii=False) if args.json else line)
    return EXIT_OK


def add_renamed_option(parser: argparse.ArgumentParser, old: str, new: str, why: str = "") -> None:
    """``old`` is refused with one line naming ``new`` (for a word that meant something else here before)."""
    message = f"{old} is {new} here{why}"

    class Refuse(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(message)

    dest = "renamed_" + old.lstrip("-").replace("-", "_")  # never shares a destination with a real option
    parser.add_argument(old, action=Refuse, nargs="?", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# --- options -> library --------------------------------------------------------------------------------------


def overrides_from(args: argparse.Namespace) -> Overrides:
    """The command line's changes to the preset's settings (options a command lacks count as not given)."""
    from anyword.settings import FAST, Overrides

    def given(name: str):
        return getattr(args, name, None)

    return Overrides(
        quality=FAST if given("fast") else None,
        learning_steps=given("steps"),
        learning_rate=given("learning_rate"),
        learning_batch=given("learning_batch"),
        learning_attention_dtype=given("learning_attention_dtype"),
        inversion_steps=given("inversion_steps"),
        attention_resolutions=tuple(given("attention_res")) if given("attention_res") else None,
        resize=given("resize"),
        seed=given("seed"),
        threshold=given("threshold"),
        r1=False if given("no_r1") else None,
        r2=False if given("no_r2") else None,
        noun_points=given("points"),
        sampling=given("sampling"),
        predicates=True if given("predicates") else None,
        keep_frame_nouns=True if given("keep_frame_nouns") else None,
    )
