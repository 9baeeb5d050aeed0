"""``anyword bench``: time and memory of the diffusion stage, printed as one JSON object.

Every ratio compares runs made in the same process on the same inputs; plain and recorded denoising are
interleaved and their medians compared, so machine noise affects both alike. Random-weight presets measure speed
and memory only (timing does not depend on weight values). Settings are the preset's, with the benchmark's step
counts applied through the one settings layer, so a learning step here is a learning step of the preset.
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from anyword.presets import TEST_PRESET, get_preset
from anyword.settings import Overrides, PipelineSettings

BENCH_CAPTION = "a brown dog and a red ball on green grass"
# Fixed concepts (no parser needed, so the benchmark runs where spaCy is not installed).
BENCH_CONCEPTS = [
    {"noun": "dog", "adjectives": ["brown"], "phrase": "brown dog"},
    {"noun": "ball", "adjectives": ["red"], "phrase": "red ball"},
    {"noun": "grass", "adjectives": ["green"], "phrase": "green grass"},
]


def bench_parse():
    from anyword.parsing import ParseResult, concepts_from_entries

    concepts = concepts_from_entries(BENCH_CAPTION, BENCH_CONCEPTS)
    return ParseResult(caption=BENCH_CAPTION, concepts=concepts, parser="fixed", requested_parser="fixed")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Bench:
    """One loaded model with the benchmark's inputs: a random image's latents, the fixed caption's tokens and
    text states, the run's settings (grids made explicit for this model)."""

    backbone: object
    settings: PipelineSettings
    latents: torch.Tensor
    alignment: object
    states: torch.Tensor

    @classmethod
    def prepare(cls, preset: str, overrides: Overrides, device, dtype, seed: int, square: bool = False) -> _Bench:
        from anyword.diffusion.extract import with_attention_grids
        from anyword.images import ImageFrame
        from anyword.tokens import align_tokens

        chosen = get_preset(preset)
        backbone = chosen.load(device=device, dtype=dtype, seed=seed)
        settings = chosen.settings(overrides)
        settings = dataclasses.replace(settings, diffusion=with_attention_grids(settings.diffusion, backbone))
        side = backbone.resolution
        image = np.random.default_rng(seed).random((side if square else side * 2 // 3, side, 3)) * 255
        image = image.astype(np.uint8)
        latents = backbone.encode_image(ImageFrame(image.shape[1], image.shape[0], side).to_model(image))
        alignment = align_tokens(BENCH_CAPTION, bench_parse().concepts, backbone.tokenizer, backbone.text_length)
        with torch.no_grad():
            states = backbone.text_states(alignment.input_ids)
        return cls(backbone, settings, latents, alignment, states)

    @property
    def grids(self) -> tuple[int, ...]:
        return self.settings.diffusion.attention_resolutions

    def predictor(self, backbone=None) -> Callable:
        backbone = backbone or self.backbone
        return lambda z, t: backbone.unet_forward(z, t, self.states)

    def timed(self, function: Callable) -> tuple[float, object]:
        _synchronize(self.backbone.device)
        start = time.perf_counter()
        value = function()
        _synchronize(self.backbone.device)
        return time.perf_counter() - start, value

    def learn(self, backbone=None, steps: int | None = None):
        from anyword.diffusion import learn_embeddings

        learning = self.settings.diffusion.learning
        if steps is not None:
            learning = dataclasses.replace(learning, steps=steps)
        seed = self.settings.diffusion.seed
        return learn_embeddings(backbone or self.backbone, self.latents, self.alignment, learning, seed=seed)


def run_benchmark(
    preset: str = TEST_PRESET,
    device: str | None = None,
    inversion_steps: int = 50,
    learning_steps: int = 5,
    repeats: int = 3,
    dtype: str | None = None,
    seed: int = 0,
    adapter: str | None = None,
) -> dict:
    """Measure one preset. ``inversion_steps``: DDIM steps per timed inversion/denoising; ``learning_steps``: timed
    prompt-learning steps (the preset's batch); ``repeats``: interleaved plain/recorded denoising runs (median
    taken); ``adapter``: also time prompt learning with it merged, against the same steps without it."""
    started = time.perf_counter()
    overrides = Overrides(learning_steps=learning_steps, inversion_steps=inversion_steps, seed=seed)
    bench = _Bench.prepare(preset, overrides, device, dtype, seed)
    _synchronize(bench.backbone.device)
    load_s = time.perf_counter() - started
    if bench.backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.backbone.device)
    denoising = _time_denoising(bench, inversion_steps, repeats)
    bench.learn(steps=1)  # warm-up (backward kernels)
    learning_s, _ = bench.timed(bench.learn)
    backbone = bench.backbone
    return {
        "preset": preset,
        "device": str(backbone.device),
        "device_name": torch.cuda.get_device_name(backbone.device)
        if backbone.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "random_weights": backbone.random_weights,
        "resolution": backbone.resolution,
        "latent_shape": list(bench.latents.shape),
        "unet_parameters": sum(p.numel() for p in backbone.unet.parameters()),
        "inversion_steps": inversion_steps,
        "load_s": round(load_s, 3),
        **denoising,
        "prompt_learning_s_per_step": learning_s / max(learning_steps, 1),
        "prompt_learning_batch": bench.settings.diffusion.learning.batch_size,
        **_peak_memory(backbone.device),
        "repeats": repeats,
        **_adapter_timing(preset, bench, adapter),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _time_denoising(bench: _Bench, steps: int, repeats: int) -> dict:
    """Inversion, then plain and attention-recording denoising interleaved ``repeats`` times (medians)."""
    from anyword.diffusion import ddim_denoise, ddim_invert, make_schedule, record_cross_attention

    backbone, predict = bench.backbone, bench.predictor()
    schedule = make_schedule(backbone.scheduler, steps)
    kind = backbone.prediction_type
    with torch.no_grad():
        predict(bench.latents, schedule.timesteps[0])  # warm-up (kernels, allocator)
    inversion_s, trajectory = bench.timed(lambda: ddim_invert(predict, bench.latents, schedule, kind))
    plain_times, recorded_times, direct_final = [], [], None
    for _ in range(repeats):
        seconds, (direct_final, _) = bench.timed(lambda: ddim_denoise(predict, trajectory, schedule, kind))
        plain_times.append(seconds)
        with record_cross_attention(backbone.unet, bench.grids) as recorder:
            recorder.active = True
            seconds, _ = bench.timed(lambda: ddim_denoise(predict, trajectory, schedule, kind))
            recorded_times.append(seconds)
            recorder.active = False
            grids = recorder.average()
    _, (plain_final, _) = bench.timed(lambda: ddim_denoise(predict, trajectory, schedule, kind, direct=False))

    def mse(a: torch.Tensor) -> float:
        return float(torch.mean((a.float() - bench.latents.float()) ** 2))

    plain, recorded = statistics.median(plain_times), statistics.median(recorded_times)
    return {
        "inversion_s_per_step": inversion_s / steps,
        "denoise_s_per_step": recorded / steps,
        "denoise_plain_s_per_step": plain / steps,
        "attention_overhead_ratio": recorded / plain,
        "attention_grids": list(bench.grids),
        "attention_map_shape": list(grids.shape),
        "direct_inversion_latent_mse": mse(direct_final),
        "ddim_reconstruction_mse": mse(plain_final),
    }


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "peak_memory_kind": "cuda_max_allocated"}  # fmt: skip
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": "process_max_rss"}


def _adapter_timing(preset: str, bench: _Bench, adapter: str | None) -> dict:
    """Prompt learning with ``adapter`` merged into the text encoder, against the same steps without it."""
    if adapter is None:
        return {}
    from anyword.adapters import apply_adapter, resolve_adapter

    chosen = resolve_adapter(get_preset(preset), adapter)
    merge_s, adapted = bench.timed(lambda: apply_adapter(bench.backbone, chosen))
    plain_s, _ = bench.timed(bench.learn)
    adapter_s, _ = bench.timed(lambda: bench.learn(adapted))
    steps = max(bench.settings.diffusion.learning.steps, 1)
    return {
        "adapter": chosen.ident,
        "adapter_merge_s": merge_s,
        "prompt_learning_s_per_step_no_adapter": plain_s / steps,
        "prompt_learning_s_per_step_adapter": adapter_s / steps,
        "adapter_time_ratio": adapter_s / plain_s,
    }


def run_edit_benchmark(
    preset: str = TEST_PRESET, device: str | None = None, dtype: str | None = None, seed: int = 0, repeats: int = 5
) -> dict:
    """First full run (models already loaded) versus re-segmenting after a point edit, same pipeline object."""
    from anyword.pipeline import SegmentAnyword

    pipeline = SegmentAnyword(preset, device=device, dtype=dtype)
    pipeline.backbone, pipeline.segmenter  # noqa: B018 (load the models before timing)
    rng = np.random.default_rng(seed)
    image = (rng.random((300, 451, 3)) * 255).astype(np.uint8)
    started = time.perf_counter()
    first = pipeline.run(image, bench_parse())
    first_s = time.perf_counter() - started
    edits = []
    prompts = first.prompts
    for index in range(repeats):
        prompts = prompts.add_point(0, float(10 + 20 * index), 20.0, 1)
        started = time.perf_counter()
        pipeline.run(image, bench_parse(), prompts=prompts)
        edits.append(time.perf_counter() - started)
    edit_s = statistics.median(edits)
    return {
        "edit_benchmark_preset": preset,
        "segmenter": pipeline.segmenter.key,
        "segmenter_model": pipeline.segmenter.label,
        "first_run_s": first_s,
        "resegment_after_edit_s": edit_s,
        "resegment_speedup": first_s / edit_s,
        "unet_calls_first_run": first.attention.unet_calls,
        "unet_calls_during_edits": pipeline.counters["unet_calls"] - first.attention.unet_calls,
    }


def run_segmenter_benchmark(
    preset: str = TEST_PRESET, device: str | None = None, repeats: int = 5, seed: int = 0, image_size=(768, 1024)
) -> dict:
    """Image-encoder (once per image) and mask-decoder (every point edit) time of every registered promptable
    segmenter, with the weights the preset gives them (toy size for ``tiny``, full size for ``sd15-random``)."""
    from anyword.segment import SEGMENTERS, MaskRequest

    weights = get_preset(preset).segmenter_weights
    height, width = image_size
    image = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    request = MaskRequest(
        points=np.array([[width * 0.5, height * 0.4], [width * 0.1, height * 0.1]], dtype=np.float32),
        labels=np.array([1, 0], dtype=np.int32),
        heatmap=np.zeros((height, width), np.float32),
    )
    rows = {}
    for key, spec in SEGMENTERS.items():
        if not spec.promptable:
            continue  # plain and GrabCut have no encoder to time
        segmenter = spec.load(weights=weights, device=device, seed=seed)
        segmenter.segment(segmenter.embed(image), request)  # warm-up
        embeds, decodes = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            embedding = segmenter.embed(image)
            embeds.append(time.perf_counter() - started)
            started = time.perf_counter()
            segmenter.segment(embedding, request)
            decodes.append(time.perf_counter() - started)
        rows[key] = {
            "model": segmenter.label,
            "parameters": segmenter.parameter_count(),
            "embed_s": statistics.median(embeds),
            "decode_s": statistics.median(decodes),
        }
    return {
        "segmenter_benchmark_preset": preset,
        "segmenter_weights": weights,
        "image": f"{width}x{height}",
        "torch_threads": torch.get_num_threads(),
        "segmenters": rows,
    }


def run_speed_benchmark(
    preset: str = TEST_PRESET,
    device: str | None = None,
    dtype: str | None = None,
    learning_steps: int = 5,
    inversion_steps: int = 10,
    seed: int = 0,
    compiled=None,
) -> dict:
    """The eager path against the compiled one (:data:`anyword.diffusion.speed.COMPILED`: compiled prompt
    learning, channels-last, no per-step host sync), same process and inputs: seconds per prompt-learning step
    (the preset's batch) and per batch-1 UNet step (inversion; denoising with the preset's grids recorded), their
    ratios (eager / compiled), the compiled path's one-time warm-up (compile), and how far its results are from the
    eager ones. ``compiled``: other :class:`~anyword.diffusion.speed.SpeedSettings` to compare instead."""
    from anyword.diffusion.speed import COMPILED, EAGER

    overrides = Overrides(learning_steps=learning_steps, inversion_steps=inversion_steps, seed=seed)
    bench = _Bench.prepare(preset, overrides, device, dtype, seed, square=True)
    rows, outputs, warmup = {}, {}, {}
    for name, speed in (("eager", EAGER), ("compiled", compiled or COMPILED)):
        warmup[name], rows[name], outputs[name] = _time_speed(bench, bench.backbone.with_speed(speed))
    bench.backbone.with_speed(EAGER)
    (eager_vectors, eager_grids), (compiled_vectors, compiled_grids) = outputs["eager"], outputs["compiled"]
    return {
        "speed_benchmark_preset": preset,
        "speed_compiled": dataclasses.asdict(compiled or COMPILED),
        "speed_eager_s": rows["eager"],
        "speed_compiled_s": rows["compiled"],
        "speed_ratio": {key: rows["eager"][key] / rows["compiled"][key] for key in rows["eager"]},
        "speed_warmup_s": warmup,
        "speed_parity": {
            "embeddings_max_abs_diff": float((eager_vectors - compiled_vectors).abs().max()),
            "maps_max_abs_diff": float(np.abs(eager_grids - compiled_grids).max()),
        },
        "torch_threads": torch.get_num_threads(),
    }


def _time_speed(bench: _Bench, backbone) -> tuple[float, dict, tuple]:
    """Warm-up, then timed prompt learning, inversion and recorded denoising on ``backbone`` (one speed)."""
    from anyword.diffusion import ddim_denoise, ddim_invert, make_schedule, record_cross_attention

    steps = bench.settings.diffusion.inversion_steps
    schedule, kind, predict = (
        make_schedule(backbone.scheduler, steps),
        backbone.prediction_type,
        bench.predictor(backbone),
    )
    warmup_s, _ = bench.timed(lambda: bench.learn(backbone, steps=1))
    learn_s, learned = bench.timed(lambda: bench.learn(backbone))
    with torch.no_grad():
        invert_s, trajectory = bench.timed(lambda: ddim_invert(predict, bench.latents, schedule, kind))
        with record_cross_attention(backbone.unet, bench.grids) as recorder:
            recorder.active = True
            denoise_s, _ = bench.timed(lambda: ddim_denoise(predict, trajectory, schedule, kind))
            grids = recorder.average()
    row = {
        "prompt_learning_s_per_step": learn_s / bench.settings.diffusion.learning.steps,
        "inversion_s_per_step": invert_s / steps,
        "denoise_recorded_s_per_step": denoise_s / steps,
    }
    return warmup_s, row, (learned.vectors.float().cpu(), grids)


def run_first_result_benchmark(
    preset: str = TEST_PRESET,
    image: np.ndarray | None = None,
    caption: str = BENCH_CAPTION,
    device: str | None = None,
    dtype: str | None = None,
    seed: int = 0,
    repeats: int = 3,
) -> dict:
    """A visitor's first result (parse + attention + masks, models loaded, server warmed up) on three paths in one
    process: the baseline (the preset's ``reference`` settings on the eager path: what it ran before its settings
    were chosen for speed), the preset's settings on the eager path, and the preset's own path (its settings and
    speed). Each path gets ``repeats`` new images (``image``, then its mirror images: no attention is cached
    between them), the paths interleaved in rotating order so that machine noise hits them alike. Medians are
    reported: seconds per stage, the speed-up over the baseline, the warm-up a server pays at start
    (:meth:`~anyword.pipeline.SegmentAnyword.warm_up`, model loading included), and parity: the preset's path
    against the eager path at the same settings on every image (points, masks, maps). ``image``: ``(H, W, 3)``
    uint8 (default: a seeded random 451x300 image)."""
    from anyword.pipeline import SegmentAnyword

    chosen = get_preset(preset)
    if image is None:
        image = (np.random.default_rng(seed).random((300, 451, 3)) * 255).astype(np.uint8)
    variants = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]][: max(repeats, 1)]
    paths = {
        "baseline": (chosen.reference_settings(), "eager"),
        "preset_eager": (chosen.settings(), "eager"),
        "preset": (chosen.settings(), chosen.speed),
    }
    pipelines = {
        name: SegmentAnyword(chosen, settings=settings, speed=speed, device=device, dtype=dtype)
        for name, (settings, speed) in paths.items()
    }
    warm_up = {name: pipeline.warm_up() for name, pipeline in pipelines.items()}
    runs: dict[str, list] = {name: [] for name in paths}
    names = list(pipelines)
    for index, variant in enumerate(variants):
        for name in names[index % len(names) :] + names[: index % len(names)]:  # each path goes first once
            pipeline = pipelines[name]
            started = time.perf_counter()
            result = pipeline.run(np.ascontiguousarray(variant), caption)
            runs[name].append((time.perf_counter() - started, result))
    rows = {name: _first_result_row(pipelines[name], warm_up[name], runs[name]) for name in paths}
    parities = [result_parity(a, b) for (_, a), (_, b) in zip(runs["preset_eager"], runs["preset"], strict=True)]
    return {
        "first_result_preset": preset,
        "first_result_caption": caption,
        "first_result_image": f"{image.shape[1]}x{image.shape[0]}",
        "first_result_repeats": len(variants),
        "first_result": rows,
        "first_result_speedup": rows["baseline"]["first_result_s"] / rows["preset"]["first_result_s"],
        "first_result_parity": {
            "points_identical": all(p["points_identical"] for p in parities),
            "masks_identical": all(p["masks_identical"] for p in parities),
            "masks_lowest_iou": min(p["masks_lowest_iou"] for p in parities),
            "maps_max_abs_diff": max(p["maps_max_abs_diff"] for p in parities),
            "maps_max_rel_diff": max(p["maps_max_rel_diff"] for p in parities),
        },
        "torch_threads": torch.get_num_threads(),
    }


def _first_result_row(pipeline, warm_up_s: float, runs: list) -> dict:
    """One path's medians over its runs (``(seconds, result)`` pairs), with its settings as they ran."""
    learning = pipeline.settings.diffusion.learning
    stages = {key: statistics.median(result.timings[key] for _, result in runs) for key in runs[0][1].timings}
    return {
        "speed": pipeline.speed.name,
        "learning": f"{learning.steps} x {learning.batch_size}",
        "learning_attention_dtype": learning.attention_dtype,
        "inversion_steps": pipeline.settings.diffusion.inversion_steps,
        "warm_up_s": warm_up_s,
        "first_result_s": statistics.median(seconds for seconds, _ in runs),
        "first_result_runs_s": [round(seconds, 4) for seconds, _ in runs],
        "stages_s": {key: round(value, 4) for key, value in stages.items()},
        "unet_calls": runs[0][1].attention.unet_calls,
    }


def result_parity(expected, actual) -> dict:
    """How far ``actual`` (a :class:`~anyword.pipeline.SegmentationResult`) is from ``expected`` (the same
    settings on another path): whether points and masks are identical, the masks' lowest IoU, the token maps'
    largest absolute and relative difference."""
    from anyword.metrics import mask_iou

    maps_a, maps_b = expected.attention.maps.token_grids, actual.attention.maps.token_grids
    largest = float(np.abs(maps_a - maps_b).max())
    pairs = [(expected.masks[k], actual.masks.get(k)) for k in expected.masks]
    same_keys = expected.masks.keys() == actual.masks.keys()
    return {
        "points_identical": expected.prompts == actual.prompts,
        "masks_identical": same_keys and all(np.array_equal(a, b) for a, b in pairs),
        "masks_lowest_iou": min((mask_iou(a, b) for a, b in pairs), default=1.0) if same_keys else 0.0,
        "maps_max_abs_diff": largest,
        "maps_max_rel_diff": largest / max(float(np.abs(maps_a).max()), 1e-30),
    }


def run_rate_benchmark(preset: str = TEST_PRESET, device=None, dtype=None, seed: int = 0, repeats: int = 5) -> dict:
    """How close the preset's UNet runs to the machine: GFLOP/s achieved by a prompt-learning step (the preset's
    batch, forward + backward) and by an inversion step (batch 1, forward), each FLOP-counted with
    ``torch.utils.flop_counter`` (matmuls and convolutions; softmax and elementwise work count nothing), against a
    1024x1024 matmul in the backbone's dtype on the same device (median of ``repeats``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from anyword.diffusion import make_schedule

    bench = _Bench.prepare(preset, Overrides(learning_steps=1, seed=seed), device, dtype, seed)
    backbone, predict = bench.backbone, bench.predictor()
    timestep = make_schedule(backbone.scheduler, 50).timesteps[10]

    def invert_step():
        with torch.no_grad():
            predict(bench.latents, timestep)

    def learning_step():
        bench.learn(steps=1)

    rates = {}
    for name, function in (("learning_step", learning_step), ("inversion_step", invert_step)):
        function()  # warm-up
        with FlopCounterMode(display=False) as counter:
            function()
        seconds = statistics.median(bench.timed(function)[0] for _ in range(repeats))
        rates[name] = {"gflop": counter.get_total_flops() / 1e9, "s": seconds}
        rates[name]["gflop_per_s"] = rates[name]["gflop"] / seconds
    side = 1024
    a = torch.randn(side, side, device=backbone.device, dtype=backbone.dtype)
    a @ a  # warm-up
    matmul_s = statistics.median(bench.timed(lambda: a @ a)[0] for _ in range(repeats))
    matmul_rate = 2 * side**3 / matmul_s / 1e9
    return {
        "rates": rates,
        "matmul_gflop_per_s": matmul_rate,
        "learning_step_fraction_of_matmul": rates["learning_step"]["gflop_per_s"] / matmul_rate,
        "inversion_step_fraction_of_matmul": rates["inversion_step"]["gflop_per_s"] / matmul_rate,
        "torch_threads": torch.get_num_threads(),
    }
