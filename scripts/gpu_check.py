"""One-shot CUDA check: full-size random-weight SD 1.5 + SAM ViT-H timing, and a CUDA smoke run of the pipeline.

Run on a GPU machine from the repository root: ``python scripts/gpu_check.py OUT.json``. Prints one JSON object
(and writes it to OUT.json). Random weights: timings and memory only, never quality.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from anyword.steps import PAPER_LEARNING_STEPS, SHORT_LEARNING_STEPS  # noqa: E402

ASTRONAUT = "An astronaut in an orange suit smiles beside an American flag. A black helmet rests in front of her."
ASTRONAUT_CONCEPTS = [
    {"noun": "astronaut", "adjectives": [], "phrase": "astronaut"},
    {"noun": "suit", "adjectives": ["orange"], "phrase": "orange suit"},
    {"noun": "flag", "adjectives": ["American"], "phrase": "American flag"},
    {"noun": "helmet", "adjectives": ["black"], "phrase": "black helmet"},
]


def timed(function, device="cuda"):
    torch.cuda.synchronize()
    start = time.perf_counter()
    value = function()
    torch.cuda.synchronize()
    return time.perf_counter() - start, value


def pipeline_smoke(preset: str, learning_steps: int) -> dict:
    from anyword.images import load_image
    from anyword.parsing import ParseResult, concepts_from_entries
    from anyword.pipeline import SegmentAnyword
    from anyword.settings import Overrides, apply_overrides

    torch.cuda.reset_peak_memory_stats()
    pipeline = SegmentAnyword(preset, device="cuda")
    load_s, _ = timed(lambda: (pipeline.backbone, pipeline.segmenter))
    settings = apply_overrides(pipeline.settings, Overrides(learning_steps=learning_steps))
    image = load_image(ROOT / "assets" / "astronaut.png")
    parse = ParseResult(ASTRONAUT, concepts_from_entries(ASTRONAUT, ASTRONAUT_CONCEPTS), "fixed", "fixed")
    first_s, result = timed(lambda: pipeline.run(image, parse, settings=settings))
    analysis = pipeline.analyze(image, parse, settings)  # attention cached: the image encoder alone runs
    edited = result.prompts.add_point(0, 200.0, 150.0, 1)
    edit_times = [timed(lambda: pipeline.run(image, parse, prompts=edited, analysis=analysis))[0] for _ in range(5)]
    losses = result.attention.embeddings.losses
    timings = result.timings
    learn_per_step = timings["attention_learn_s"] / max(learning_steps, 1)
    return {
        "preset": preset,
        "backbone": result.models["backbone"],
        "segmenter": result.models["segmenter_model"],
        "dtype": result.models["dtype"],
        "load_s": load_s,
        "first_run_s": first_s,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "prompt_learning_steps": learning_steps,
        "prompt_learning_s_per_step": learn_per_step,
        "estimated_paper_1100_steps_s": learn_per_step * PAPER_LEARNING_STEPS
        + timings["attention_invert_s"]
        + timings["attention_denoise_s"]
        + timings["segment_s"],
        "resegment_after_edit_s": statistics.median(edit_times),
        "resegment_speedup": first_s / statistics.median(edit_times),
        "losses_finite": bool(np.isfinite(losses).all()) if losses else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "embedding_drift": result.attention.embeddings.drift,
        "reconstruction_mse": result.attention.reconstruction_mse,
        "mask_shapes": sorted({tuple(m.shape) for m in result.masks.values()}),
        "maps_finite": bool(all(np.isfinite(result.heatmap(c.id)).all() for c in result.concepts)),
        "token_grid_sum": float(result.attention.maps.token_grids.sum(axis=0).mean()),
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
    }


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    report: dict = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
    }
    from anyword.bench import run_benchmark, run_edit_benchmark, run_segmenter_benchmark, run_speed_benchmark

    sections = {
        "tiny_cuda_pipeline": lambda: pipeline_smoke("tiny", 10),
        "bench_sd15_random": lambda: run_benchmark("sd15-random", device="cuda", inversion_steps=50, learning_steps=10),
        "segmenters_full_size_random": lambda: run_segmenter_benchmark("sd15-random", device="cuda"),
        "sd15_random_pipeline_50_steps": lambda: pipeline_smoke("sd15-random", SHORT_LEARNING_STEPS),
        "tiny_edit_benchmark": lambda: run_edit_benchmark("tiny", device="cuda"),
        "speed_sd15_random": lambda: run_speed_benchmark(
            "sd15-random", device="cuda", learning_steps=20, inversion_steps=50
        ),
    }
    for name, section in sections.items():
        started = time.perf_counter()
        try:
            report[name] = section()
        except Exception as error:  # keep going: one failing section must not hide the others
            report[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        report[name + "_wall_s"] = round(time.perf_counter() - started, 2)
        torch.cuda.empty_cache()
        print(f"[{name}] done in {report[name + '_wall_s']} s", file=sys.stderr, flush=True)
    text = json.dumps(report, indent=1, default=str)
    if out is not None:
        out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
