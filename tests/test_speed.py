"""The compiled path (compiled prompt learning, channels-last, no per-step host sync) gives the eager path's results:
same learned embeddings and maps up to float rounding, same points. On CPU with `tiny`; the speed itself is
measured by `anyword bench --compiled`, never asserted."""

from __future__ import annotations

import numpy as np
import pytest

from anyword.diffusion.speed import COMPILED, EAGER, SpeedSettings
from anyword.pipeline import SegmentAnyword
from anyword.settings import Overrides

QUICK = Overrides(learning_steps=2, inversion_steps=4)  # two steps: the sync-free loop's draws are compared


def _run(speed):
    pipeline = SegmentAnyword("tiny", speed=speed)
    settings = pipeline.preset.settings(QUICK)
    image = (np.random.default_rng(3).random((40, 62, 3)) * 255).astype(np.uint8)  # non-square
    return pipeline.run(image, "a red ball next to a blue box", settings=settings), pipeline


@pytest.mark.slow  # the compile itself takes a minute on 2 cores
def test_compiled_path_matches_eager_on_tiny():
    eager, _ = _run(EAGER)
    fast, pipeline = _run(COMPILED)
    assert pipeline.models()["speed"] == "compiled" and pipeline.backbone.speed == COMPILED
    assert pipeline.backbone._learning_unet is not None  # prompt learning went through the compiled UNet
    for concept in eager.concepts:
        difference = np.abs(eager.heatmap(concept.id) - fast.heatmap(concept.id)).max()
        assert difference < 1e-2, (concept.phrase, difference)
        assert eager.prompts.for_concept(concept.id) == fast.prompts.for_concept(concept.id)
        assert np.array_equal(eager.masks[concept.id], fast.masks[concept.id])
    np.testing.assert_allclose(
        eager.attention.embeddings.vectors.numpy(), fast.attention.embeddings.vectors.numpy(), atol=1e-5
    )
    assert eager.attention.embeddings.losses == pytest.approx(fast.attention.embeddings.losses, rel=1e-4)


def test_sync_free_learning_and_chunked_draws_change_nothing():
    no_sync = SpeedSettings(sync_free=True)  # same arithmetic as eager: equal bits
    eager, _ = _run(EAGER)
    fast, _ = _run(no_sync)
    assert np.array_equal(eager.attention.embeddings.vectors.numpy(), fast.attention.embeddings.vectors.numpy())
    assert len(fast.attention.embeddings.losses) == 2 and all(
        isinstance(v, float) for v in fast.attention.embeddings.losses
    )


def test_speed_benchmark_reports_both_paths_side_by_side():
    from anyword.bench import run_speed_benchmark

    report = run_speed_benchmark(
        "tiny", learning_steps=1, inversion_steps=2, compiled=SpeedSettings(channels_last=True, sync_free=True)
    )
    keys = {"prompt_learning_s_per_step", "inversion_s_per_step", "denoise_recorded_s_per_step"}
    assert set(report["speed_eager_s"]) == set(report["speed_compiled_s"]) == set(report["speed_ratio"]) == keys
    assert report["speed_ratio"]["inversion_s_per_step"] == pytest.approx(
        report["speed_eager_s"]["inversion_s_per_step"] / report["speed_compiled_s"]["inversion_s_per_step"]
    )
    assert report["speed_parity"]["embeddings_max_abs_diff"] < 1e-5
    assert report["speed_parity"]["maps_max_abs_diff"] < 1e-2
    assert set(report["speed_warmup_s"]) == {"eager", "compiled"}
    assert SpeedSettings(channels_last=True).name == "custom" and EAGER.name == "eager"


def test_bad_compile_mode_is_refused():
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        SpeedSettings(compile=True, compile_mode="fastest")


# --- the batched path: recorded steps evaluated straight on the inversion trajectory ---------------------------


def test_batched_recording_sees_the_same_unet_inputs_as_direct_denoising():
    """Direct-inversion denoising evaluates the UNet at trajectory[i + 1] and t_i: the batched path hands exactly
    those inputs over, a chunk at a time, and needs the trajectory only up to the highest recorded step."""
    import torch

    from anyword.diffusion.inversion import (
        DDIMSchedule,
        ddim_denoise,
        ddim_invert,
        predict_on_trajectory,
        recorded_steps,
    )

    schedule = DDIMSchedule(timesteps=(1, 201, 401, 601, 801), alphas=torch.linspace(0.99, 0.1, 6))
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 2, generator=generator) * 0.1

    def model(latents, timestep):
        return torch.einsum("ij,bjhw->bihw", weights, latents) + 1e-4 * torch.as_tensor(timestep).reshape(-1, 1, 1, 1)

    latents = torch.randn(1, 2, 3, 5, generator=generator)
    trajectory = ddim_invert(model, latents, schedule)
    assert len(ddim_invert(model, latents, schedule, steps=3)) == 4  # z_0 .. z_t3
    for got, want in zip(ddim_invert(model, latents, schedule, steps=3), trajectory, strict=False):
        assert torch.equal(got, want)

    steps = recorded_steps(schedule, (150, 650))
    assert steps == [1, 2, 3]
    stepwise, batched = [], []

    def wanted(timestep):
        return 150 <= timestep <= 650

    def record(store):
        return lambda z, t: store.extend(zip(z, torch.as_tensor(t).reshape(-1).tolist(), strict=True)) or model(z, t)

    ddim_denoise(record(stepwise), trajectory, schedule, before_step=wanted)
    predict_on_trajectory(record(batched), trajectory[: steps[-1] + 2], schedule, steps, batch=2)
    assert [t for _, t in batched] == [t for _, t in reversed(stepwise)] == [201, 401, 601]
    for (got, _), (want, _) in zip(batched, reversed(stepwise), strict=True):
        torch.testing.assert_close(got, want[0] if want.ndim == 4 else want, rtol=1e-6, atol=1e-6)


def test_one_call_with_a_batch_of_steps_records_what_separate_calls_do():
    import torch

    from anyword.diffusion.attention import CrossAttentionRecorder

    generator = torch.Generator().manual_seed(1)
    first, second = (torch.rand(2 * 3, 16, 5, generator=generator).softmax(-1) for _ in range(2))  # 3 heads
    separate, batched = CrossAttentionRecorder((4,)), CrossAttentionRecorder((4,))
    separate.add("layer", 4, first)
    separate.add("layer", 4, second)
    batched.add("layer", 4, torch.cat([first, second]))
    np.testing.assert_allclose(batched.average(), separate.average(), rtol=1e-6)
    assert separate.calls == {4: 2} and batched.calls == {4: 1}


@pytest.mark.parametrize("timesteps", [None, (0, 400)])
def test_batched_path_matches_eager_on_tiny(timesteps):
    """Same points and masks, maps within float rounding; with a timestep range the inversion stops early."""
    settings = Overrides(learning_steps=2, inversion_steps=6, attention_timesteps=timesteps)
    image = (np.random.default_rng(4).random((36, 58, 3)) * 255).astype(np.uint8)  # non-square
    runs = {}
    for speed in ("eager", "batched"):
        pipeline = SegmentAnyword("tiny", speed=speed, settings=None)
        runs[speed] = pipeline.run(image, "a red ball next to a blue box", settings=pipeline.preset.settings(settings))
        assert pipeline.models()["speed"] == speed
    eager, batched = runs["eager"], runs["batched"]
    assert eager.prompts == batched.prompts
    assert all(np.array_equal(eager.masks[k], batched.masks[k]) for k in eager.masks)
    np.testing.assert_allclose(batched.attention.maps.token_grids, eager.attention.maps.token_grids, rtol=1e-4,
                               atol=1e-7)  # fmt: skip
    assert batched.attention.recorded_layers == eager.attention.recorded_layers
    recorded = 6 if timesteps is None else 3  # 6 DDIM steps: t = 1, 167, 334 are <= 400
    assert eager.attention.unet_calls == 2 + 6 + recorded
    assert batched.attention.unet_calls == 2 + (6 if timesteps is None else 3) + recorded


def test_shapes_preset_runs_batched_and_its_baseline_is_recorded():
    from anyword.presets import get_preset

    shapes = get_preset("shapes")
    pipeline = SegmentAnyword(shapes)
    assert pipeline.speed.name == "batched" and pipeline.speed.recording_batch > 0
    assert SegmentAnyword(shapes, speed="eager").speed.name == "eager"
    reference = shapes.reference_settings()
    assert reference != shapes.settings() and reference.diffusion.learning.attention_dtype is None  # fp32 then
    assert (reference.diffusion.learning.steps, reference.diffusion.learning.batch_size) == (30, 4)
    assert get_preset("tiny").reference_settings() == get_preset("tiny").settings()
    with pytest.raises(ValueError, match="recording_batch"):
        SpeedSettings(recording_batch=-1)


@pytest.mark.slow  # two shapes-preset runs
def test_batched_path_matches_eager_on_shapes():
    from anyword.bench import result_parity
    from anyword.images import load_image

    image = load_image("assets/shapes/novel_1007.png")
    caption = "a big golden ring and an amber ring"
    results = [SegmentAnyword("shapes", speed=speed).run(image, caption) for speed in ("eager", "batched")]
    parity = result_parity(*results)
    assert parity["points_identical"] and parity["masks_identical"], parity
    assert parity["maps_max_rel_diff"] < 1e-4, parity


def test_rate_benchmark_counts_flops_and_compares_with_a_matmul():
    from anyword.bench import run_rate_benchmark

    report = run_rate_benchmark("tiny", repeats=1)
    learning, inversion = report["rates"]["learning_step"], report["rates"]["inversion_step"]
    assert learning["gflop"] > 2 * inversion["gflop"] > 0  # a batch, forward and backward, against one forward
    assert learning["gflop_per_s"] == pytest.approx(learning["gflop"] / learning["s"])
    assert report["learning_step_fraction_of_matmul"] == pytest.approx(
        learning["gflop_per_s"] / report["matmul_gflop_per_s"]
    )


@pytest.mark.slow  # three shapes-preset first results, each after a warm-up
def test_first_result_benchmark_times_baseline_and_preset_paths_with_parity():
    from anyword.bench import run_first_result_benchmark
    from anyword.images import load_image

    image = load_image("assets/shapes/seen_1002.png")
    report = run_first_result_benchmark("shapes", image, "a small purple star and a small blue square")
    rows = report["first_result"]
    assert [rows[name]["speed"] for name in ("baseline", "preset_eager", "preset")] == ["eager", "eager", "batched"]
    assert rows["baseline"]["learning"] == "30 x 4" and rows["preset"]["learning"] == "20 x 2"
    assert rows["baseline"]["learning_attention_dtype"] is None and rows["preset"]["learning_attention_dtype"] == "bf16"
    assert rows["preset"]["unet_calls"] < rows["preset_eager"]["unet_calls"] < rows["baseline"]["unet_calls"]
    assert report["first_result_speedup"] == pytest.approx(
        rows["baseline"]["first_result_s"] / rows["preset"]["first_result_s"]
    )
    assert report["first_result_parity"]["points_identical"] and report["first_result_parity"]["masks_identical"]
    assert report["first_result_parity"]["maps_max_rel_diff"] < 1e-4
    assert all(row["warm_up_s"] > 0 and "attention_learn_s" in row["stages_s"] for row in rows.values())


# --- prompt learning's attention in another dtype --------------------------------------------------------------


def test_cast_attention_matches_the_fused_processor_and_is_restored():
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from anyword.diffusion.attention import CastAttnProcessor, attention_dtype
    from anyword.presets import get_preset

    backbone = get_preset("shapes").load()
    unet = backbone.unet
    latents = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    states = torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([100, 700])
    with torch.no_grad():
        fused = unet(latents, timesteps, encoder_hidden_states=states).sample
        unet.set_attn_processor(CastAttnProcessor(torch.float32))  # self and cross attention, written out
        written = unet(latents, timesteps, encoder_hidden_states=states).sample
        unet.set_attn_processor(AttnProcessor2_0())
        with attention_dtype(unet, CastAttnProcessor(torch.bfloat16)):
            assert all(isinstance(p, CastAttnProcessor) for p in unet.attn_processors.values())
            low = unet(latents, timesteps, encoder_hidden_states=states).sample
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    torch.testing.assert_close(written, fused, rtol=1e-4, atol=1e-5)
    relative = float((low - fused).norm() / fused.norm())
    assert 0 < relative < 0.02, relative  # bf16 rounding: not bit-equal, close
    with attention_dtype(unet, CastAttnProcessor(torch.float32)):  # the model's own dtype: nothing swapped
        assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())


def test_learning_in_bf16_attention_stays_near_fp32_and_is_recorded():
    from anyword.diffusion.prompt_learning import LearningSettings

    settings = Overrides(learning_steps=3, inversion_steps=4)
    image = (np.random.default_rng(5).random((30, 52, 3)) * 255).astype(np.uint8)
    pipeline = SegmentAnyword("tiny")
    runs = {}
    for dtype in (None, "bf16"):
        chosen = pipeline.preset.settings(settings.then(Overrides(learning_attention_dtype=dtype)))
        runs[dtype] = pipeline.run(image, "a red ball", settings=chosen)
    full, low = (runs[key].attention.embeddings for key in (None, "bf16"))
    moved = (full.vectors - full.initial).norm()
    assert 0 < float((low.vectors - full.vectors).norm()) < 0.25 * float(moved)  # same direction, bf16 noise
    assert runs["bf16"].settings.diffusion.learning.attention_dtype == "bf16"
    assert runs["bf16"].to_dict()["settings"]["diffusion"]["learning"]["attention_dtype"] == "bf16"
    with pytest.raises(ValueError, match="attention_dtype must be one of"):
        LearningSettings(attention_dtype="int8")
    backbone = pipeline.backbone  # one processor per dtype for the model's life (a compiled UNet keeps its graph)
    seen = []
    for _ in range(2):
        with backbone.learning_attention("bf16"):
            seen.append(next(iter(backbone.unet.attn_processors.values())))
    assert seen[0] is seen[1] and len(backbone._cast_processors) == 1


def test_bench_compares_the_compiled_path_under_its_own_name(capsys):
    from anyword.cli import build_argument_parser

    parser = build_argument_parser()
    assert parser.parse_args(["bench", "--compiled"]).compiled
    old = parser.parse_args(["bench", "--speed"])  # the old name: same meaning, says the new one
    assert old.compiled and "use --compiled" in capsys.readouterr().err
    assert parser.parse_args(["segment", "--speed", "batched", "--out", "x"]).speed == "batched"
