"""Command line: ``anyword parse | segment | presets | bench | eval``.

Errors the user can fix (:class:`~anyword.errors.AnywordError`) print one ``error: ...`` line to stderr and exit
with status 2; anything else is a bug and exits with status 1 (``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from anyword.errors import AnywordError
from anyword.evaluation import DATASETS
from anyword.parsing.openai_parser import MAX_TIMEOUT_S
from anyword.seeds import MAX_SEED
from anyword.segment import SEGMENTERS
from anyword.steps import SHORT_LEARNING_STEPS

EXIT_OK, EXIT_BUG, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader closed the pipe
BATCH_MARKER = "summary.json"  # what makes a folder an earlier batch's output
BATCH_LINE_FOLDER = re.compile(r"\d{4,}_[A-Za-z0-9._-]*")

logger = logging.getLogger("anyword")


def _add_parser_options(parser: argparse.ArgumentParser) -> None:
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
    group.add_argument("--llm-model", default=None, help="LLM name for --parser openai (default gpt-4o)")
    group.add_argument(
        "--base-url", default=None, help="OpenAI-compatible server URL (default: OPENAI_BASE_URL, else OpenAI)"
    )
    group.add_argument(
        "--llm-timeout", type=_timeout, default=None, help="seconds to wait for the LLM (default 30, at most 600)"
    )


def _make_parser(args: argparse.Namespace):
    from anyword.parsing import DEFAULT_MODEL, DEFAULT_TIMEOUT_S, ParseSettings, make_parser

    settings = ParseSettings(predicates=args.predicates)
    if args.keep_frame_nouns:
        settings = ParseSettings(predicates=args.predicates, frame_nouns=frozenset(), location_nouns=frozenset())
    return make_parser(
        args.parser,
        settings,
        model=args.llm_model or DEFAULT_MODEL,
        base_url=args.base_url,
        timeout_s=args.llm_timeout or DEFAULT_TIMEOUT_S,
    )


# --- parse ---------------------------------------------------------------------------------------------------


def cmd_parse(args: argparse.Namespace) -> int:
    from anyword.tokens import align_tokens, load_tokenizer

    result = _make_parser(args).parse(args.caption)
    alignment = align_tokens(result.caption, result.concepts, load_tokenizer())
    data = result.to_dict()
    for concept in data["concepts"]:
        tokens = alignment.for_concept(concept["id"])
        concept["tokens"] = {
            "noun": list(tokens.noun_positions),
            "adjectives": {w: list(tokens.adjective_positions(w)) for w in tokens.adjective_words},
        }
    data["token_window"] = {"caption_tokens": alignment.caption_tokens, "window": alignment.window}
    if alignment.warnings:
        data["warnings"] = [*data.get("warnings", []), *alignment.warnings]
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
        return EXIT_OK
    _print_parse(data)
    return EXIT_OK


def _print_parse(data: dict) -> None:
    print(f"caption: {data['caption']}")
    parser = data["parser"]
    if data.get("fallback_reason"):
        parser += f" (fell back from {data['requested_parser']}: {data['fallback_reason']})"
    print(f"parser:  {parser}")
    rows = [("id", "kind", "phrase", "noun", "adjectives", "mentions", "tokens")]
    for c in data["concepts"]:
        rows.append(
            (
                str(c["id"]),
                c["kind"],
                c["phrase"],
                c["noun"],
                ", ".join(c["adjectives"]) or "-",
                " ".join(f"[{s},{e})" for s, e in c["mentions"]),
                " ".join(str(p) for p in c["tokens"]["noun"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for warning in data.get("warnings", []):
        print(f"warning: {warning}")


# --- segment -------------------------------------------------------------------------------------------------


def _make_pipeline(args: argparse.Namespace):
    from anyword.pipeline import SegmentAnyword
    from anyword.presets import DEFAULT_PRESET

    parser = _make_parser(args)
    return SegmentAnyword(
        args.preset or DEFAULT_PRESET,
        adapter=_adapter_choice(args),
        segmenter=args.segmenter,
        parser=parser,
        model=args.model,
        segmenter_model=args.segmenter_model,
        segmenter_checkpoint=args.segmenter_checkpoint,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
        embeddings_dir=args.embeddings_cache,
        speed="fast" if args.fast_path else "eager",
    )


def _adapter_choice(args: argparse.Namespace) -> str | None:
    """``--adapter``, or for ``--fast`` the preset's shipped adapter; ``--fast`` without any is refused plainly."""
    from anyword.presets import DEFAULT_PRESET, SHIPPED, get_preset

    if args.adapter or not getattr(args, "fast", False):
        return args.adapter
    preset = get_preset(getattr(args, "preset", None) or DEFAULT_PRESET)
    if args.model is None and preset.shipped_adapter_path() is not None:
        return SHIPPED
    raise AnywordError(
        f"--fast is Segment Anyword_f: {SHORT_LEARNING_STEPS} learning steps with a LoRA-adapted text encoder, and "
        f"there is no adapter for {args.model or preset.name} here; train one with `anyword adapt` and pass "
        f"--adapter DIR, or run {SHORT_LEARNING_STEPS} steps without an adapter with --steps {SHORT_LEARNING_STEPS}"
    )


def _overrides(args: argparse.Namespace):
    """The command line's changes to the preset's settings."""
    from anyword.settings import Overrides

    return Overrides(
        quality="fast" if getattr(args, "fast", False) else None,
        learning_steps=args.steps,
        learning_rate=getattr(args, "learning_rate", None),
        inversion_steps=args.inversion_steps,
        attention_resolutions=tuple(args.attention_res) if getattr(args, "attention_res", None) else None,
        resize=getattr(args, "resize", None),
        seed=getattr(args, "seed", None),
        threshold=getattr(args, "threshold", None),
        r1=False if getattr(args, "no_r1", False) else None,
        r2=False if getattr(args, "no_r2", False) else None,
        noun_points=getattr(args, "points", None),
        sampling=getattr(args, "sampling", None),
    )


def _run_settings(pipeline, args: argparse.Namespace):
    """The pipeline's (its preset's) settings with the command line's overrides."""
    from anyword.settings import apply_overrides

    return apply_overrides(pipeline.settings, _overrides(args), pipeline.preset.budgets)


def _warn_cost(pipeline, settings, args: argparse.Namespace) -> None:
    """Say before a long CPU run what it will cost (measured figures from the preset registry)."""
    steps = settings.diffusion.learning.steps
    cost = pipeline.preset.cost_warning(steps, args.device)
    if cost is not None and not args.quiet:
        hint = f"; --fast runs {SHORT_LEARNING_STEPS} steps" if steps > SHORT_LEARNING_STEPS else ""
        print(f"warning: {pipeline.preset.name}: {cost}{hint}", file=sys.stderr)


def _segment_one(pipeline, settings, image_path: str, caption: str, out_dir: Path):
    from anyword.export import write_outputs
    from anyword.images import load_image

    image = load_image(image_path)
    result = pipeline.run(image, caption, settings=settings)
    write_outputs(result, image, out_dir, image_name=Path(image_path).name)
    return result


def cmd_segment(args: argparse.Namespace) -> int:
    if args.batch:
        if args.image or args.caption:
            raise AnywordError("give either IMAGE and CAPTION, or --batch FILE.jsonl, not both")
        return _segment_batch(args)
    if not args.image or args.caption is None:
        raise AnywordError("give an IMAGE and a CAPTION (or --batch FILE.jsonl)")
    from anyword.export import check_output_folder
    from anyword.images import check_image_path

    check_image_path(args.image)
    out = check_output_folder(args.out)
    pipeline = _make_pipeline(args)
    settings = _run_settings(pipeline, args)
    _warn_cost(pipeline, settings, args)
    result = _segment_one(pipeline, settings, args.image, args.caption, out)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return EXIT_OK
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
    return EXIT_OK


def _segment_batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from anyword.export import check_output_folder
    from anyword.images import check_image_path

    batch = Path(args.batch)
    out = check_output_folder(args.out, BATCH_MARKER)
    jobs = _jsonl_lines(batch, "batch")
    if not jobs:
        raise AnywordError(f"{batch} has no lines to run")
    pipeline = _make_pipeline(args)
    settings = _run_settings(pipeline, args)
    _warn_cost(pipeline, settings, args)
    _clear_earlier_batch(out)
    done, failed = [], []
    for number, line in tqdm(jobs, desc="batch", unit="image", disable=args.quiet):
        try:
            item = json.loads(line)
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("image"), str)
                or not isinstance(item.get("caption"), str)
            ):
                raise AnywordError('each line must be a JSON object with "image" and "caption" strings')
            image_path = _beside(batch, item["image"])
            check_image_path(image_path)
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", image_path.stem)[:40]
            folder = out / f"{number:04d}_{slug}"
            result = _segment_one(pipeline, settings, str(image_path), item["caption"], folder)
            done.append(
                {
                    "line": number,
                    "image": str(image_path),
                    "out": str(folder),
                    "concepts": len(result.concepts),
                    "seconds": round(result.timings["total_s"], 3),
                }
            )
        except json.JSONDecodeError as error:
            failed.append({"line": number, "error": f"not valid JSON ({error.msg})"})
        except AnywordError as error:
            failed.append({"line": number, "error": str(error)})
        except Exception as error:  # a bug on one line must not lose the others
            if args.debug:
                raise
            failed.append({"line": number, "error": f"internal error: {type(error).__name__}: {error}"})
        if failed and failed[-1]["line"] == number:
            print(f"line {number}: error: {failed[-1]['error']}", file=sys.stderr)
    summary = {
        "batch": str(batch),
        "lines": len(jobs),
        "done": len(done),
        "failed": len(failed),
        "results": done,
        "errors": failed,
    }
    (out / BATCH_MARKER).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"{len(done)} of {len(jobs)} lines done, {len(failed)} failed; summary in {out / 'summary.json'}")
    return EXIT_OK if not failed else EXIT_USAGE


def _jsonl_lines(file: Path, kind: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of a JSONL file's lines that are neither blank nor ``#`` comments."""
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is not line 1's
    except (OSError, UnicodeDecodeError) as error:
        raise AnywordError(f"cannot read {kind} file {file}: {error}") from None
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]


def _beside(file: Path, path: str) -> Path:
    """``path`` as written in ``file``: absolute, or relative to the file's folder."""
    return Path(path) if Path(path).is_absolute() else file.parent / path


def _clear_earlier_batch(out: Path) -> None:
    """Remove an earlier batch's summary and line folders, so none of them sits beside the new results."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BATCH_MARKER).unlink(missing_ok=True)
    for entry in out.iterdir():
        if entry.is_dir() and BATCH_LINE_FOLDER.fullmatch(entry.name):
            shutil.rmtree(entry)


# --- adapt ---------------------------------------------------------------------------------------------------


def cmd_adapt(args: argparse.Namespace) -> int:
    from anyword.diffusion.adaptation import ATTENTION_TARGETS, MLP_TARGETS, AdaptSettings, train_adapter
    from anyword.presets import DEFAULT_PRESET, get_preset

    if bool(args.pairs) == bool(args.dataset):
        raise AnywordError("give either --pairs FILE.jsonl or --dataset shapes")
    pairs, source, unreadable = _pairs_file(args.pairs) if args.pairs else _shapes_pairs(args)
    pairs = pairs[: args.n]
    settings = AdaptSettings(
        steps=args.steps,
        rank=args.rank,
        alpha=float(args.alpha or args.rank),
        learning_rate=args.learning_rate,
        batch_size=args.batch,
        targets=ATTENTION_TARGETS + (MLP_TARGETS if args.mlp else ()),
        seed=args.seed,
    )
    preset = get_preset(args.preset or DEFAULT_PRESET)
    backbone = preset.load(device=args.device, dtype=args.dtype)
    info = train_adapter(backbone, pairs, args.out, settings, pairs_source=source, progress=not args.quiet)
    summary = {**info.to_dict(), "pairs_unreadable_lines": unreadable, "out": str(args.out)}
    summary.pop("extra")
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(
            f"adapter for {info.base} in {args.out}: {info.steps} steps on {info.pairs_used} pairs "
            f"({info.pairs_skipped + unreadable} skipped), final loss {info.final_loss:.4f}, {info.seconds:.0f} s"
        )
    return EXIT_OK


def _pairs_file(path: str):
    """Training pairs from a JSONL file (``{"image": path, "caption": text}``, paths relative to the file); lines
    that are not such objects are counted, not fatal (unreadable images are skipped later, also counted)."""
    from anyword.diffusion.adaptation import TrainingPair
    from anyword.images import load_image

    file = Path(path)
    pairs, unreadable = [], 0
    for number, line in _jsonl_lines(file, "pairs"):
        try:
            item = json.loads(line)
            image, caption = item["image"], item["caption"]
            if not isinstance(image, str) or not isinstance(caption, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        image_path = _beside(file, image)
        pairs.append(TrainingPair(f"line {number}", caption, lambda p=image_path: load_image(p)))
    if not pairs:
        raise AnywordError(f"{file} has no usable image-caption pair ({unreadable} unreadable lines)")
    return pairs, str(file), unreadable


def _shapes_pairs(args: argparse.Namespace):
    """Pairs from the shapes world: scenes ``--start``.. of each ``--split`` in turn (rendered at 64 px)."""
    from anyword.diffusion.adaptation import TrainingPair
    from anyword.shapes.scenes import make_scene, render

    if args.dataset != "shapes":
        raise AnywordError(f"unknown dataset {args.dataset!r}: only 'shapes' ships with the package")
    pairs = []
    for offset in range(args.n):
        split = args.split[offset % len(args.split)]
        scene = make_scene(split, args.start + offset // len(args.split))
        pairs.append(TrainingPair(f"{split}:{scene.index}", scene.caption, lambda s=scene: render(s, 64)[0]))
    source = f"shapes {'+'.join(args.split)} scenes {args.start}..{args.start + (args.n - 1) // len(args.split)}"
    return pairs, source, 0


# --- presets -------------------------------------------------------------------------------------------------


def cmd_presets(args: argparse.Namespace) -> int:
    from anyword.presets import PRESETS

    rows = [preset.to_dict() for preset in PRESETS.values()]
    segmenters = [spec.to_dict() for spec in SEGMENTERS.values()]
    if args.json:
        print(json.dumps({"presets": rows, "segmenters": segmenters}, ensure_ascii=False))
        return EXIT_OK
    for row in rows:
        weights = row["weights"]["backbone"]
        state = "available" if row["available"] else "NOT AVAILABLE"
        random = ", random weights" if row["random_weights"] else ""
        print(f"{row['name']:12s} {state} ({weights['state']}{random}) - {row['description']}")
        print(f"{'':12s} backbone {row['backbone']}; segmenter {row['segmenter']}; {row['learning_steps']} steps")
        where = weights["reason"] or weights["where"]
        segmenter = row["weights"]["segmenter"]
        if where:
            print(f"{'':12s} weights: {where}")
        if not segmenter["ready"]:
            print(f"{'':12s} segmenter: {segmenter['reason']}")
    print("segmenters: " + ", ".join(spec["name"] for spec in segmenters))
    return EXIT_OK


# --- bench ---------------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from anyword.bench import run_benchmark
    from anyword.presets import TEST_PRESET

    args.preset = args.preset or TEST_PRESET
    result = run_benchmark(
        preset=args.preset,
        device=args.device,
        steps=args.steps,
        learning_steps=args.learning_steps,
        repeats=args.repeats,
        dtype=args.dtype,
        seed=args.seed,
        adapter=args.adapter,
    )
    if args.segmenters:
        from anyword.bench import run_segmenter_benchmark

        result.update(run_segmenter_benchmark(args.preset, device=args.device, seed=args.seed))
    if args.speed:
        from anyword.bench import run_speed_benchmark

        result.update(
            run_speed_benchmark(
                args.preset, device=args.device, dtype=args.dtype, learning_steps=args.learning_steps, seed=args.seed
            )
        )
    if args.edit:
        from anyword.bench import run_edit_benchmark

        result.update(run_edit_benchmark(args.preset, device=args.device, dtype=args.dtype, seed=args.seed))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    return EXIT_OK


# --- eval ----------------------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from anyword.shapes.evaluate import ABLATION, SHAPES_PRESET, evaluate, localization
    from anyword.shapes.scenes import SPLITS

    if args.out is not None or args.dataset != SHAPES_PRESET:
        return _benchmark_run(args)
    _refuse_benchmark_options(args)
    args.preset = args.preset or SHAPES_PRESET
    split = args.split or "seen"
    if split not in SPLITS:
        raise AnywordError(f"the shapes world has no split {split!r}: choose one of {', '.join(SPLITS)}")
    n = args.n or 100

    if args.localization:
        ignored = [
            flag
            for flag, value in (
                ("--ablation", args.ablation),
                ("--steps", args.steps),
                ("--learning-rate", args.learning_rate),
                ("--inversion-steps", args.inversion_steps),
            )
            if value not in (None, False)
        ]
        if ignored:
            raise AnywordError(
                f"{', '.join(ignored)} cannot be combined with --localization (no segmentation, no learning)"
            )
        from anyword.presets import get_preset

        preset = get_preset(SHAPES_PRESET)
        backbone = preset.load(device=args.device)
        diffusion = preset.settings().diffusion
        settings = {
            "paper": ((16,), None),
            "preset": (diffusion.attention_resolutions, diffusion.attention_timesteps),
        }
        result = {
            "dataset": "shapes",
            "localization": {
                name: localization(
                    split,
                    n,
                    resolutions,
                    timesteps,
                    start=args.start,
                    progress=not args.quiet,
                    backbone=backbone,
                )
                for name, (resolutions, timesteps) in settings.items()
            },
        }
    else:
        from anyword.pipeline import SegmentAnyword

        pipeline = SegmentAnyword(
            args.preset or SHAPES_PRESET, segmenter=args.segmenter, device=args.device, adapter=_adapter_choice(args)
        )
        pipeline.settings = _run_settings(pipeline, args)
        variants = ABLATION if args.ablation else {"full": ABLATION["full"]}
        result = evaluate(
            split,
            n,
            variants,
            image_size=args.image_size,
            start=args.start,
            progress=not args.quiet,
            pipeline=pipeline,
        )
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return EXIT_OK


# Options only the benchmark harness (--out) reads.
_BENCHMARK_OPTIONS = ("data_root", "image_root", "referent", "no_target", "no_target_threshold", "classes")


def _refuse_benchmark_options(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in _BENCHMARK_OPTIONS if getattr(args, name) is not None]
    if given:
        raise AnywordError(f"{', '.join(given)} need --out RUN_DIR (a benchmark run)")


def _benchmark_run(args: argparse.Namespace) -> int:
    """A dataset evaluation into --out: resumable, sharded when started by `accelerate launch`."""
    from anyword.evaluation import DatasetOptions, get_dataset_spec, make_task, open_dataset, print_table
    from anyword.evaluation.run import current_processes, preflight, run_evaluation
    from anyword.pipeline import SegmentAnyword

    if args.out is None:
        raise AnywordError(
            f"--dataset {args.dataset} needs --out RUN_DIR (predictions.jsonl and summary.json go there)"
        )
    if args.ablation or args.localization:
        raise AnywordError("--ablation and --localization are shapes reports; they cannot be combined with --out")
    spec = get_dataset_spec(args.dataset)
    preflight(Path(args.out))
    options = DatasetOptions(
        split=args.split or spec.default_split,
        root=Path(args.data_root) if args.data_root else None,
        image_root=Path(args.image_root) if args.image_root else None,
        count=args.start + (args.n or 100),
        image_size=args.image_size,
        classes=args.classes or "all",
    )
    dataset = open_dataset(args.dataset, options)
    task = make_task(
        dataset,
        referent=args.referent or "first",
        no_target=None if args.no_target is None else args.no_target == "on",
        threshold=args.no_target_threshold,
    )
    _, state = current_processes()
    device = args.device or (str(state.device) if state is not None else None)
    args.preset = args.preset or spec.preset
    pipeline = SegmentAnyword(
        args.preset,
        segmenter=args.segmenter,
        device=device,
        dtype=args.dtype,
        adapter=_adapter_choice(args),
        progress=False,
    )
    settings = _run_settings(pipeline, args)
    _warn_cost(pipeline, settings, args)
    summary = run_evaluation(
        pipeline, settings, dataset, task, args.out, start=args.start, n=args.n, progress=not args.quiet
    )
    if summary is None:  # another process of the run: the main one reports
        return EXIT_OK
    print_table(summary)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return EXIT_OK


# --- entry point ---------------------------------------------------------------------------------------------


def _number(
    kind: type,
    low: float | None = None,
    high: float | None = None,
    inclusive: bool = True,
    low_inclusive: bool | None = None,
):
    """An argparse type: a number of ``kind`` within ``[low, high]`` (open bounds when not ``inclusive``;
    ``low_inclusive`` overrides it for the lower bound alone, e.g. ``(0, 600]``)."""
    low_closed = inclusive if low_inclusive is None else low_inclusive

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {'whole number' if kind is int else 'number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        below = low is not None and (value < low if low_closed else value <= low)
        above = high is not None and (value > high if inclusive else value >= high)
        if below or above:
            if high is None:
                bounds = f"at least {low}" if low_closed else f"greater than {low}"
            elif low_closed != inclusive:
                lower = f"{'at least' if low_closed else 'greater than'} {low}"
                bounds = f"{lower} and {'at most' if inclusive else 'less than'} {high}"
            else:
                bounds = f"between {low} and {high}" + ("" if inclusive else " (exclusive)")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return convert


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_fraction = _number(float, 0.0, 1.0, inclusive=False)
_positive_float = _number(float, 0.0, inclusive=False)
_seed = _number(int, 0, MAX_SEED)
_timeout = _number(float, 0.0, MAX_TIMEOUT_S, low_inclusive=False)


def _preset(name: str) -> str:
    """An argparse type: a name from the preset registry (read only when a command takes a preset)."""
    from anyword.presets import PRESETS

    if name not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return name


def _adapter_option(group) -> None:
    group.add_argument(
        "--adapter",
        default=None,
        metavar="DIR|shipped",
        help="text-encoder adapter folder made by `anyword adapt` (or 'shipped': the preset's own), merged at load",
    )


def _fast_path_option(group) -> None:
    group.add_argument(
        "--fast-path",
        action="store_true",
        help="compiled prompt learning, channels-last, no per-step host sync: the same results, sooner on a GPU "
        "after a one-time compile (`anyword bench --speed` measures it)",
    )


def _segmenter_options(group) -> None:
    group.add_argument(
        "--segmenter",
        default=None,
        choices=list(SEGMENTERS),
        help="mask generator (default: the preset's; see `anyword presets`)",
    )
    group.add_argument(
        "--segmenter-model",
        "--sam-model",
        default=None,
        help="segmenter size: vit_h (default), vit_l, vit_b for sam and sam-hq; large (default), base-plus, small, "
        "tiny for sam2",
    )


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anyword",
        description="Segment Anyword: segment every object a caption names, with a frozen Stable Diffusion and SAM.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parse = commands.add_parser("parse", help="caption -> concepts (nouns, bound adjectives, mentions, tokens)")
    parse.add_argument("caption", help="the caption, in English")
    parse.add_argument("--json", action="store_true", help="print exactly one JSON object")
    _add_parser_options(parse)
    parse.set_defaults(handler=cmd_parse)

    segment = commands.add_parser("segment", help="image + caption -> one mask per phrase (files in --out)")
    segment.add_argument("image", nargs="?", help="image file (any common format)")
    segment.add_argument("caption", nargs="?", help="the caption, in English")
    segment.add_argument("--out", required=True, help="output folder")
    segment.add_argument("--batch", help='JSONL file, one {"image": path, "caption": text} per line')
    segment.add_argument("--json", action="store_true", help="print result.json (or the batch summary) to stdout")
    segment.add_argument("--quiet", action="store_true", help="no progress bars")
    models = segment.add_argument_group("models")
    models.add_argument(
        "--preset", default=None, type=_preset, help="model setup (default sd15); `anyword presets` lists them"
    )
    models.add_argument("--model", default=None, help="hub id or local diffusers folder overriding the preset")
    _segmenter_options(models)
    models.add_argument(
        "--segmenter-checkpoint",
        "--sam-checkpoint",
        default=None,
        help="local weights instead of the download (SAM: .pth file; sam2, sam-hq: a hub-layout folder)",
    )
    models.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    models.add_argument("--dtype", default=None, choices=("fp16", "bf16", "fp32"), help="default: fp16 on CUDA")
    _fast_path_option(models)
    method = segment.add_argument_group("method")
    method.add_argument(
        "--steps", type=_non_negative_int, default=None, help="prompt-learning steps (paper: 1100; 0 disables)"
    )
    method.add_argument(
        "--fast",
        action="store_true",
        help=f"Segment Anyword_f: the preset's fast step budget ({SHORT_LEARNING_STEPS} for Stable Diffusion) with "
        "a LoRA-adapted text encoder (--adapter, else the preset's shipped one; refused when there is none)",
    )
    _adapter_option(method)
    method.add_argument("--inversion-steps", type=_positive_int, default=None, help="DDIM steps (default 50)")
    method.add_argument(
        "--attention-res", type=_positive_int, nargs="+", default=None, help="attention grids to average (default 16)"
    )
    method.add_argument("--resize", choices=("stretch", "pad"), default=None, help="image -> square model input")
    method.add_argument("--threshold", type=_fraction, default=None, help="attention threshold (default 0.7)")
    method.add_argument("--points", type=_positive_int, default=None, help="points per noun map (default 1)")
    method.add_argument("--sampling", choices=("random", "peak"), default=None, help="point sampling")
    method.add_argument("--no-r1", action="store_true", help="no positive adjective clustering")
    method.add_argument("--no-r2", action="store_true", help="no negative mutual-exclusive binding")
    method.add_argument(
        "--seed", type=_seed, default=None, help=f"seed of prompt learning and sampling, 0 to {MAX_SEED} (default 0)"
    )
    method.add_argument(
        "--embeddings-cache",
        default=None,
        metavar="DIR",
        help="save learned token embeddings here and reuse them for the same image and caption",
    )
    _add_parser_options(segment)
    segment.set_defaults(handler=cmd_segment)

    evaluation = commands.add_parser(
        "eval",
        help="quality: the paper's benchmarks (--out RUN_DIR; resumable, `accelerate launch` shards it) or the "
        "shapes world's ablation and localisation reports",
    )
    evaluation.add_argument(
        "--dataset", default="shapes", choices=list(DATASETS), help="benchmark (shapes ships with the package)"
    )
    evaluation.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's folder (official layout)")
    evaluation.add_argument(
        "--image-root",
        default=None,
        metavar="DIR",
        help="images elsewhere (default: the layout's, e.g. DATA_ROOT/images/train2014 for the COCO-based sets)",
    )
    evaluation.add_argument("--split", default=None, help="dataset split (default val; shapes: seen)")
    evaluation.add_argument("--n", type=_positive_int, default=None, help="number of samples (default all; shapes 100)")
    evaluation.add_argument("--start", type=_non_negative_int, default=0, help="first sample index")
    evaluation.add_argument(
        "--out", default=None, metavar="RUN_DIR", help="predictions.jsonl + summary.json; rerun to resume"
    )
    evaluation.add_argument(
        "--referent",
        default=None,
        choices=("first", "all"),
        help="referring sets: the referred object is the first concept (default) or all concepts merged",
    )
    evaluation.add_argument(
        "--no-target",
        default=None,
        choices=("on", "off"),
        help="the rule that can answer 'nothing here' (default: on for grefcoco only)",
    )
    evaluation.add_argument(
        "--no-target-threshold",
        type=_fraction,
        default=None,
        help="the no-target rule's threshold on its signal (default: the value chosen on validation scenes)",
    )
    evaluation.add_argument(
        "--classes",
        default=None,
        choices=("all", "present"),
        help="pc59 captions: all 59 class names (default, OVDiff's protocol) or only the image's (an oracle)",
    )
    evaluation.add_argument(
        "--ablation", action="store_true", help="one row per configuration of the paper's Table 6 (plain ... full)"
    )
    evaluation.add_argument(
        "--localization", action="store_true", help="does each word's attention point at its shape? (no segmentation)"
    )
    evaluation.add_argument("--image-size", type=_positive_int, default=128, help="rendered scene size (pixels)")
    evaluation.add_argument(
        "--preset", default=None, type=_preset, help="model setup (default: shapes for shapes, else sd15)"
    )
    evaluation.add_argument(
        "--steps", type=_non_negative_int, default=None, help="prompt-learning steps (default: the preset's)"
    )
    evaluation.add_argument(
        "--fast", action="store_true", help="Segment Anyword_f: the adapter and the preset's fast step budget"
    )
    evaluation.add_argument(
        "--learning-rate", type=_positive_float, default=None, help="prompt-learning rate (default: the preset's)"
    )
    evaluation.add_argument(
        "--inversion-steps", type=_positive_int, default=None, help="DDIM steps (default: the preset's)"
    )
    evaluation.add_argument(
        "--seed", type=_seed, default=None, help=f"seed of prompt learning and sampling, 0 to {MAX_SEED}"
    )
    evaluation.add_argument("--no-r1", action="store_true", help="no positive adjective clustering (Table 6 rows)")
    evaluation.add_argument("--no-r2", action="store_true", help="no negative mutual-exclusive binding")
    _segmenter_options(evaluation)
    _adapter_option(evaluation)
    evaluation.add_argument("--device", default=None, help="default: each process's accelerator, else the best one")
    evaluation.add_argument("--dtype", default=None, choices=("fp16", "bf16", "fp32"), help="default: fp16 on CUDA")
    _fast_path_option(evaluation)
    evaluation.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluation.add_argument("--json", action="store_true", help="print exactly one JSON object")
    evaluation.set_defaults(handler=cmd_eval, model=None)

    bench = commands.add_parser("bench", help="time and memory of inversion, denoising, attention, prompt learning")
    bench.add_argument("--preset", default=None, type=_preset, help="model setup (default tiny)")
    bench.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    bench.add_argument("--dtype", default=None, choices=("fp16", "bf16", "fp32"), help="default: fp16 on CUDA")
    bench.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps per timed phase (default 50)")
    bench.add_argument("--learning-steps", type=_positive_int, default=5, help="timed prompt-learning steps")
    bench.add_argument("--repeats", type=_positive_int, default=3, help="interleaved denoising runs (median)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--edit", action="store_true", help="also time a full pipeline run against re-segmenting after a point edit"
    )
    _adapter_option(bench)
    bench.add_argument(
        "--segmenters",
        action="store_true",
        help="also time each promptable segmenter's image encoder and mask decoder (sizes as the preset gives)",
    )
    bench.add_argument(
        "--speed",
        action="store_true",
        help="also time the fast path (compiled prompt learning, channels-last, no per-step sync) against eager, "
        "with ratios, its warm-up and its distance from the eager results",
    )
    bench.add_argument("--json", action="store_true", help="print exactly one JSON object")
    bench.set_defaults(handler=cmd_bench)

    adapt = commands.add_parser(
        "adapt", help="train a LoRA text-encoder adapter (Segment Anyword_f) on image-caption pairs"
    )
    adapt.add_argument("--preset", default=None, type=_preset, help="the model to adapt (default sd15)")
    adapt.add_argument("--pairs", default=None, help='JSONL, one {"image": path, "caption": text} per line')
    adapt.add_argument("--dataset", default=None, help="shapes: pairs from the synthetic world")
    adapt.add_argument("--split", nargs="+", default=["train"], help="shapes splits, drawn in turn (default train)")
    adapt.add_argument("--start", type=_non_negative_int, default=20000, help="first shapes scene index")
    adapt.add_argument("--n", type=_positive_int, default=500, help="pairs to use (default 500, the paper's)")
    adapt.add_argument("--steps", type=_positive_int, default=1100, help="training steps (default 1100)")
    adapt.add_argument("--rank", type=_positive_int, default=16, help="LoRA rank (default 16)")
    adapt.add_argument("--alpha", type=_positive_float, default=None, help="LoRA alpha (default: the rank)")
    adapt.add_argument("--learning-rate", type=_positive_float, default=1e-4, help="AdamW rate (default 1e-4)")
    adapt.add_argument("--batch", type=_positive_int, default=4, help="pairs per step (default 4)")
    adapt.add_argument("--mlp", action="store_true", help="also adapt the MLP layers (default: attention only)")
    adapt.add_argument("--seed", type=_seed, default=0)
    adapt.add_argument("--out", required=True, help="adapter folder (rerun the same command to resume)")
    adapt.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    adapt.add_argument("--dtype", default=None, choices=("fp16", "bf16", "fp32"), help="default: fp16 on CUDA")
    adapt.add_argument("--quiet", action="store_true", help="no progress bar")
    adapt.add_argument("--json", action="store_true", help="print exactly one JSON object")
    adapt.set_defaults(handler=cmd_adapt)

    presets = commands.add_parser(
        "presets", help="the model setups, their segmenters and whether their weights are here"
    )
    presets.add_argument("--json", action="store_true", help="print exactly one JSON object")
    presets.set_defaults(handler=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "openai"):  # their debug lines carry request details, even with --debug
        logging.getLogger(noisy).setLevel(logging.INFO)
    try:
        return args.handler(args)
    except BrokenPipeError:
        return _closed_pipe()
    except AnywordError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(
            f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_BUG


def _closed_pipe() -> int:
    """The reader of our output went away (``anyword ... | head``): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit cannot fail again
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
