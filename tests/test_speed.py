"""The compiled path (compiled prompt learning, channels-last, no per-step host sync) gives the eager path's results:
same learned embeddings and maps up to float rounding, same points. On CPU with `tiny`; the speed itself is
measured by `anyword bench --speed`, never asserted."""

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
