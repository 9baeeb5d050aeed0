"""``anyword bench``: time and memory of the diffusion stage, printed as one JSON object.

Every ratio compares runs made in the same process on the same inputs; plain and recorded denoising are
interleaved and their medians compared, so machine noise affects both alike. Random-weight presets measure speed
and memory only (timing does not depend on weight values).
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time

import numpy as np
import torch

from anyword.presets import TEST_PRESET

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


def run_benchmark(
    preset: str = TEST_PRESET,
    device: str | None = None,
    steps: int = 50,
    learning_steps: int = 5,
    repeats: int = 3,
    dtype: str | None = None,
    seed: int = 0,
    adapter: str | None = None,
) -> dict:
    """Measure one preset. ``steps``: DDIM steps per timed inversion/denoising; ``learning_steps``: timed
    prompt-learning steps (batch 8); ``repeats``: interleaved plain/recorded denoising runs (median taken);
    ``adapter``: also time prompt learning with it merged, against the same steps without it."""
    from anyword.diffusion import (
        LearningSettings,
        ddim_denoise,
        ddim_invert,
        learn_embeddings,
        make_schedule,
        record_cross_attention,
    )
    from anyword.images import ImageFrame
    from anyword.presets import get_preset
    from anyword.tokens import align_tokens

    started = time.perf_counter()
    backbone = get_preset(preset).load(device=device, dtype=dtype, seed=seed)
    torch_device = backbone.device
    _synchronize(torch_device)
    load_s = time.perf_counter() - started
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)

    rng = np.random.default_rng(seed)
    image = (rng.random((backbone.resolution * 2 // 3, backbone.resolution, 3)) * 255).astype(np.uint8)
    frame = ImageFrame(image.shape[1], image.shape[0], backbone.resolution)
    parse = bench_parse()
    alignment = align_tokens(parse.caption, parse.concepts, backbone.tokenizer)
    latents = backbone.encode_image(frame.to_model(image))
    with torch.no_grad():
        states = backbone.text_states(alignment.input_ids)

    def predict(z, t):
        return backbone.unet_forward(z, t, states)

    def timed(function):
        _synchronize(torch_device)
        start = time.perf_counter()
        value = function()
        _synchronize(torch_device)
        return time.perf_counter() - start, value

    schedule = make_schedule(backbone.scheduler, steps)
    with torch.no_grad():
        predict(latents, schedule.timesteps[0])  # warm-up (kernels, allocator)
    inversion_s, trajectory = timed(lambda: ddim_invert(predict, latents, schedule, backbone.prediction_type))

    plain_times, recorded_times = [], []
    direct_final = plain_final = None
    for _ in range(repeats):
        seconds, (direct_final, _) = timed(
            lambda: ddim_denoise(predict, trajectory, schedule, backbone.prediction_type, direct=True)
        )
        plain_times.append(seconds)
        with record_cross_attention(backbone.unet, (16,)) as recorder:
            recorder.active = True
            seconds, _ = timed(
                lambda: ddim_denoise(predict, trajectory, schedule, backbone.prediction_type, direct=True)
            )
            recorded_times.append(seconds)
            recorder.active = False
            grids = recorder.average()
    _, (plain_final, _) = timed(
        lambda: ddim_denoise(predict, trajectory, schedule, backbone.prediction_type, direct=False)
    )

    learning = LearningSettings(steps=learning_steps)
    learn_embeddings(backbone, latents, alignment, LearningSettings(steps=1), seed=seed)  # warm-up (backward kernels)
    learning_s, _ = timed(lambda: learn_embeddings(backbone, latents, alignment, learning, seed=seed))
    adapted = _adapter_timing(preset, backbone, adapter, latents, alignment, learning, seed, timed)

    def mse(a: torch.Tensor) -> float:
        return float(torch.mean((a.float() - latents.float()) ** 2))

    if torch_device.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated(torch_device) / 2**20, "cuda_max_allocated"
    else:
        peak_mb, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
    plain, recorded = statistics.median(plain_times), statistics.median(recorded_times)
    return {
        "preset": preset,
        "device": str(torch_device),
        "device_name": torch.cuda.get_device_name(torch_device)
        if torch_device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "random_weights": backbone.random_weights,
        "resolution": backbone.resolution,
        "latent_shape": list(latents.shape),
        "unet_parameters": sum(p.numel() for p in backbone.unet.parameters()),
        "steps": steps,
        "load_s": round(load_s, 3),
        "inversion_s_per_step": inversion_s / steps,
        "denoise_s_per_step": recorded / steps,
        "denoise_plain_s_per_step": plain / steps,
        "attention_overhead_ratio": recorded / plain,
        "attention_map_shape": list(grids.shape),
        "prompt_learning_s_per_step": learning_s / max(learning_steps, 1),
        "prompt_learning_batch": learning.batch_size,
        "direct_inversion_latent_mse": mse(direct_final),
        "ddim_reconstruction_mse": mse(plain_final),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "repeats": repeats,
        **adapted,
        "torch": torch.__version__,
    }


def _adapter_timing(preset, backbone, adapter, latents, alignment, learning, seed, timed) -> dict:
    """Prompt learning with ``adapter`` merged into the text encoder, against the same steps without it."""
    if adapter is None:
        return {}
    from anyword.adapters import apply_adapter
    from anyword.diffusion import learn_embeddings
    from anyword.pipeline import resolve_adapter
    from anyword.presets import get_preset

    chosen = resolve_adapter(get_preset(preset), adapter)
    merge_s, adapted = timed(lambda: apply_adapter(backbone, chosen))
    plain_s, _ = timed(lambda: learn_embeddings(backbone, latents, alignment, learning, seed=seed))
    adapter_s, _ = timed(lambda: learn_embeddings(adapted, latents, alignment, learning, seed=seed))
    steps = max(learning.steps, 1)
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
        "segmenter": pipeline.segmenter.name,
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
    from anyword.presets import get_preset
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
    for name, spec in SEGMENTERS.items():
        if not spec.models:
            continue  # plain and GrabCut have no encoder to time
        segmenter = spec.load(weights=weights, device=device, seed=seed)
        network = getattr(segmenter, "sam", None) or segmenter.model
        segmenter.segment(segmenter.embed(image), request)  # warm-up
        embeds, decodes = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            embedding = segmenter.embed(image)
            embeds.append(time.perf_counter() - started)
            started = time.perf_counter()
            segmenter.segment(embedding, request)
            decodes.append(time.perf_counter() - started)
        rows[name] = {
            "model": segmenter.name,
            "parameters": sum(p.numel() for p in network.parameters()),
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
    steps: int = 10,
    seed: int = 0,
    fast=None,
) -> dict:
    """The eager path against the fast one (:data:`anyword.diffusion.speed.FAST`: compiled prompt learning,
    channels-last, no per-step host sync), same process and inputs: seconds per prompt-learning step (batch 8) and
    per batch-1 UNet step (inversion; denoising with 16x16 recording), their ratios (eager / fast), the fast path's
    one-time warm-up (compile), and how far its results are from the eager ones. ``fast``: another
    :class:`~anyword.diffusion.speed.SpeedSettings` to compare instead."""
    from anyword.diffusion import LearningSettings, ddim_denoise, ddim_invert, learn_embeddings, make_schedule
    from anyword.diffusion.attention import record_cross_attention
    from anyword.diffusion.speed import EAGER, FAST

    fast = fast or FAST
    from anyword.images import ImageFrame
    from anyword.presets import get_preset
    from anyword.tokens import align_tokens

    base = get_preset(preset).load(device=device, dtype=dtype, seed=seed)
    image = (np.random.default_rng(seed).random((base.resolution, base.resolution, 3)) * 255).astype(np.uint8)
    latents = base.encode_image(ImageFrame(image.shape[1], image.shape[0], base.resolution).to_model(image))
    parse = bench_parse()
    alignment = align_tokens(parse.caption, parse.concepts, base.tokenizer)
    learning = LearningSettings(steps=learning_steps)
    schedule = make_schedule(base.scheduler, steps)
    with torch.no_grad():
        states = base.text_states(alignment.input_ids)

    def timed(function):
        _synchronize(base.device)
        start = time.perf_counter()
        value = function()
        _synchronize(base.device)
        return time.perf_counter() - start, value

    rows, outputs, warmup = {}, {}, {}
    kind = base.prediction_type
    for name, speed in (("eager", EAGER), ("fast", fast)):
        backbone = base.with_speed(speed)

        def predict(z, t, backbone=backbone):
            return backbone.unet_forward(z, t, states)

        warmup[name], _ = timed(lambda b=backbone: learn_embeddings(b, latents, alignment, LearningSettings(1)))
        learn_s, learned = timed(lambda b=backbone: learn_embeddings(b, latents, alignment, learning, seed=seed))
        with torch.no_grad():
            invert_s, trajectory = timed(lambda p=predict: ddim_invert(p, latents, schedule, kind))
            with record_cross_attention(backbone.unet, (16,)) as recorder:
                recorder.active = True
                denoise_s, _ = timed(lambda p=predict, tr=trajectory: ddim_denoise(p, tr, schedule, kind))
                grids = recorder.average()
        rows[name] = {
            "prompt_learning_s_per_step": learn_s / learning_steps,
            "inversion_s_per_step": invert_s / steps,
            "denoise_recorded_s_per_step": denoise_s / steps,
        }
        outputs[name] = (learned.vectors.float().cpu(), grids)
    base.with_speed(EAGER)
    (eager_vectors, eager_grids), (fast_vectors, fast_grids) = outputs["eager"], outputs["fast"]
    return {
        "speed_benchmark_preset": preset,
        "speed_fast": dataclasses.asdict(fast),
        "speed_eager": rows["eager"],
        "speed_fast_path": rows["fast"],
        "speed_ratio": {key: rows["eager"][key] / rows["fast"][key] for key in rows["eager"]},
        "speed_warmup_s": {"eager": warmup["eager"], "fast": warmup["fast"]},
        "speed_parity": {
            "embeddings_max_abs_diff": float((eager_vectors - fast_vectors).abs().max()),
            "maps_max_abs_diff": float(np.abs(eager_grids - fast_grids).max()),
        },
        "torch_threads": torch.get_num_threads(),
    }
