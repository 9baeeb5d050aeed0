"""Diffusion core on the tiny random-weight backbone: inversion parity, direct inversion, gradient isolation,
attention recording, geometry on non-square images, loading errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor2_0

from anyword.diffusion import (
    DiffusionSettings,
    LearnedEmbeddings,
    LearningSettings,
    ddim_denoise,
    ddim_invert,
    extract_attention,
    learn_embeddings,
    make_schedule,
    record_cross_attention,
)
from anyword.diffusion.attention import CrossAttentionRecorder, RecordingCrossAttnProcessor, cross_attention_layers
from anyword.diffusion.loading import build_tiny, load_pretrained
from anyword.errors import ModelUnavailableError, SettingsError
from anyword.tokens import align_tokens
from tests.conftest import run_anyword

CAPTION = "a brown dog chases a red ball"
FAST = DiffusionSettings(inversion_steps=8, learning=LearningSettings(steps=2, batch_size=2))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(device="cpu")


@pytest.fixture(scope="module")
def alignment(tiny, spacy_parser):
    result = spacy_parser.parse(CAPTION)
    return align_tokens(CAPTION, result.concepts, tiny.tokenizer)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return (rng.random((40, 96, 3)) * 255).astype(np.uint8)  # non-square: W = 96, H = 40


def latents_and_states(backbone, alignment, image):
    from anyword.images import ImageFrame

    frame = ImageFrame(image.shape[1], image.shape[0], backbone.resolution)
    latents = backbone.encode_image(frame.to_model(image))
    with torch.no_grad():
        states = backbone.text_states(alignment.input_ids)
    return latents, states


def with_prediction(backbone, prediction_type):
    scheduler = DDIMScheduler.from_config(backbone.scheduler.config, prediction_type=prediction_type)
    return dataclasses.replace(backbone, scheduler=scheduler)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inversion_matches_diffusers_inverse_scheduler(tiny, alignment, image, prediction_type):
    backbone = with_prediction(tiny, prediction_type)
    latents, states = latents_and_states(backbone, alignment, image)

    def predict(z, t):
        return backbone.unet_forward(z, t, states)

    schedule = make_schedule(backbone.scheduler, 10)
    assert schedule.timesteps == (1, 101, 201, 301, 401, 501, 601, 701, 801, 901)
    ours = ddim_invert(predict, latents, schedule, backbone.prediction_type)

    reference = DDIMInverseScheduler.from_config(backbone.scheduler.config)
    reference.set_timesteps(10)
    assert [int(t) for t in reference.timesteps] == list(schedule.timesteps)
    z = latents
    with torch.no_grad():
        for index, t in enumerate(reference.timesteps):
            z = reference.step(predict(z, int(t)), t, z).prev_sample
            torch.testing.assert_close(ours[index + 1], z, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_plain_denoising_matches_diffusers_ddim_and_direct_inversion_is_exact(tiny, alignment, image, prediction_type):
    backbone = with_prediction(tiny, prediction_type)
    latents, states = latents_and_states(backbone, alignment, image)

    def predict(z, t):
        return backbone.unet_forward(z, t, states)

    schedule = make_schedule(backbone.scheduler, 10)
    trajectory = ddim_invert(predict, latents, schedule, backbone.prediction_type)
    plain, gaps = ddim_denoise(predict, trajectory, schedule, backbone.prediction_type, direct=False)
    assert gaps == [0.0] * 10

    reference = DDIMScheduler.from_config(backbone.scheduler.config)
    reference.set_timesteps(10)
    z = trajectory[-1]
    with torch.no_grad():
        for t in reference.timesteps:
            z = reference.step(predict(z, int(t)), t, z).prev_sample
    torch.testing.assert_close(plain, z, rtol=1e-5, atol=1e-5)

    direct, direct_gaps = ddim_denoise(predict, trajectory, schedule, backbone.prediction_type, direct=True)
    direct_mse = float(((direct - latents) ** 2).mean())
    plain_mse = float(((plain - latents) ** 2).mean())
    assert direct_mse < 1e-12  # direct inversion reproduces the input to float precision
    assert plain_mse > 1e-4  # plain DDIM drifts (random weights make it obvious)
    assert len(direct_gaps) == 10 and max(direct_gaps) > 0


def test_prompt_learning_trains_only_the_concept_embeddings(tiny, alignment, image):
    latents, _ = latents_and_states(tiny, alignment, image)
    before = {name: p.detach().clone() for m in tiny.modules() for name, p in m.named_parameters()}
    table_before = tiny.text_encoder.get_input_embeddings().weight.detach().clone()

    learned = learn_embeddings(tiny, latents, alignment, LearningSettings(steps=3, batch_size=2), seed=0)

    for module in tiny.modules():
        for name, parameter in module.named_parameters():
            assert parameter.grad is None, name
            assert not parameter.requires_grad, name
            assert torch.equal(parameter, before[name]), name
    assert torch.equal(tiny.text_encoder.get_input_embeddings().weight, table_before)

    # One slot per concept word piece: dog, brown, ball, red.
    assert sorted((s.role, s.word) for s in learned.slots) == [
        ("adjective", "brown"),
        ("adjective", "red"),
        ("noun", "ball"),
        ("noun", "dog"),
    ]
    concept_positions = {p for c in alignment.concepts for p in c.all_positions}
    assert set(learned.positions.tolist()) == concept_positions
    assert learned.drift > 0 and len(learned.losses) == 3
    assert torch.equal(learned.initial, table_before[[s.token_id for s in learned.slots]])

    # Same seed, same result; other seed, other result.
    again = learn_embeddings(tiny, latents, alignment, LearningSettings(steps=3, batch_size=2), seed=0)
    other = learn_embeddings(tiny, latents, alignment, LearningSettings(steps=3, batch_size=2), seed=1)
    torch.testing.assert_close(again.vectors, learned.vectors)
    assert not torch.allclose(other.vectors, learned.vectors)


def test_learned_embeddings_change_only_their_positions(tiny, alignment, image):
    latents, _ = latents_and_states(tiny, alignment, image)
    learned = learn_embeddings(tiny, latents, alignment, LearningSettings(steps=2, batch_size=2), seed=0)
    with torch.no_grad():
        base = tiny.text_encoder.get_input_embeddings()(torch.tensor([alignment.input_ids]))
        hooked_states = tiny.text_states(alignment.input_ids, learned)
        plain_states = tiny.text_states(alignment.input_ids)
    assert not torch.allclose(hooked_states, plain_states)
    # The hook leaves the layer as it was once the block exits.
    torch.testing.assert_close(tiny.text_encoder.get_input_embeddings()(torch.tensor([alignment.input_ids])), base)
    first_concept = min(learned.positions.tolist())
    torch.testing.assert_close(hooked_states[:, :first_concept], plain_states[:, :first_concept])  # causal encoder


def test_contrastive_term_separates_concepts():
    from anyword.diffusion.prompt_learning import prompt_contrastive_loss

    torch.manual_seed(0)
    groups = [[0, 1], [2, 3], [4, 5]]
    together = torch.randn(1, 8).repeat(6, 1) + 0.01 * torch.randn(6, 8)  # every concept alike
    apart = torch.eye(3, 8).repeat_interleave(2, dim=0)  # each concept's tokens alike, concepts orthogonal
    mixed = torch.eye(6, 8)  # all tokens orthogonal: nothing binds a concept's noun to its adjective
    assert prompt_contrastive_loss(apart, groups) < prompt_contrastive_loss(mixed, groups)
    assert prompt_contrastive_loss(apart, groups) < prompt_contrastive_loss(together, groups)


def test_saved_embeddings_reload_and_guard_their_key(tiny, alignment, image, tmp_path):
    latents, _ = latents_and_states(tiny, alignment, image)
    learned = learn_embeddings(tiny, latents, alignment, LearningSettings(steps=1, batch_size=2), key="k1")
    path = learned.save(tmp_path / "emb.safetensors")
    assert path.stat().st_size < 20_000
    loaded = LearnedEmbeddings.load(path, expected_key="k1")
    torch.testing.assert_close(loaded.vectors, learned.vectors.cpu())
    assert loaded.slots == learned.slots and loaded.losses == pytest.approx(learned.losses)
    from anyword.errors import AnywordError

    with pytest.raises(AnywordError, match="another image"):
        LearnedEmbeddings.load(path, expected_key="other")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(AnywordError, match="cannot read"):
        LearnedEmbeddings.load(tmp_path / "junk.safetensors")


def test_recorded_probabilities_equal_explicit_softmax(tiny):
    torch.manual_seed(0)
    name = cross_attention_layers(tiny.unet)[0].removesuffix(".processor")
    attn = tiny.unet.get_submodule(name)
    hidden = torch.randn(2, 16 * 16, attn.to_q.in_features)
    context = torch.randn(2, 77, attn.to_k.in_features)

    recorder = CrossAttentionRecorder([16])
    recorder.active = True
    with torch.no_grad():
        output = RecordingCrossAttnProcessor(recorder, name)(attn, hidden, context)
        expected_output = AttnProcessor2_0()(attn, hidden, context)
        q = attn.to_q(hidden).view(2, -1, attn.heads, attn.to_q.out_features // attn.heads).transpose(1, 2)
        k = attn.to_k(context).view(2, -1, attn.heads, attn.to_k.out_features // attn.heads).transpose(1, 2)
        explicit = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # (B, heads, 256, 77)
    torch.testing.assert_close(output, expected_output, rtol=1e-4, atol=1e-5)
    grids = recorder.average()  # (77, 16, 16) after the mean over batch and heads
    expected = explicit.mean(dim=(0, 1)).T.reshape(77, 16, 16).numpy()
    np.testing.assert_allclose(grids, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(explicit.sum(dim=-1).numpy(), 1.0, rtol=1e-5)


def test_recording_keeps_outputs_and_self_attention_and_restores_processors(tiny, alignment, image):
    latents, states = latents_and_states(tiny, alignment, image)
    with torch.no_grad():
        expected = tiny.unet_forward(latents, 501, states)
        with record_cross_attention(tiny.unet, (16,)) as recorder:
            processors = tiny.unet.attn_processors
            self_attention = [n for n in processors if n.endswith("attn1.processor")]
            assert all(isinstance(processors[n], AttnProcessor2_0) for n in self_attention)
            assert all(
                isinstance(processors[n], RecordingCrossAttnProcessor) for n in cross_attention_layers(tiny.unet)
            )
            recorder.active = True
            recorded = tiny.unet_forward(latents, 501, states)
            recorder.active = False
    torch.testing.assert_close(recorded, expected, rtol=1e-4, atol=1e-5)
    # The tiny UNet has four cross-attention layers on its 16x16 grid (down 1, mid, up 0 twice).
    assert recorder.calls == {16: 4}
    np.testing.assert_allclose(recorder.average().sum(axis=0), 1.0, rtol=1e-5)
    assert all(isinstance(p, AttnProcessor2_0) for p in tiny.unet.attn_processors.values())


def test_extract_attention_maps_on_a_non_square_image(tiny, alignment, image):
    result = extract_attention(tiny, image, alignment, FAST)
    maps = result.maps
    assert maps.token_grids.shape == (77, 16, 16)
    np.testing.assert_allclose(maps.token_grids.sum(axis=0), 1.0, rtol=1e-4)  # sums over tokens survive averaging
    dog = maps.concept_map(0)
    assert dog.shape == (40, 96) and dog.dtype == np.float32  # (H, W) of the original image
    assert dog.min() >= 0.0 and dog.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(maps.word_map("dog"), dog)
    np.testing.assert_allclose(maps.adjective_map(0, "brown"), maps.word_map("brown"))
    assert maps.concept_map(0, size="grid").shape == (16, 16)
    assert result.reconstruction_mse < 1e-12
    assert result.random_weights and result.unet_calls == 2 + 8 + 8
    assert set(result.timings) == {"encode", "learn", "invert", "denoise"}
    assert len(result.recorded_layers) == 4

    # Embeddings learned once can be reused (same key) to skip prompt learning.
    again = extract_attention(tiny, image, alignment, FAST, embeddings=result.embeddings)
    np.testing.assert_allclose(again.maps.token_grids, maps.token_grids, rtol=1e-5, atol=1e-7)
    assert again.unet_calls == 16
    with pytest.raises(ValueError, match="another image"):
        extract_attention(tiny, image[:, :90], alignment, FAST, embeddings=result.embeddings)


def test_timestep_range_and_multiple_resolutions(tiny, alignment, image):
    settings = dataclasses.replace(FAST, attention_resolutions=(16, 32), attention_timesteps=(0, 400))
    result = extract_attention(tiny, image, alignment, settings)
    assert result.maps.token_grids.shape == (77, 32, 32)
    # 8 DDIM steps at t = 876, 751, ..., 1: denoising evaluates only the 4 inside [0, 400] (direct inversion makes
    # the others the inversion latents anyway), and the reconstruction stays exact.
    assert result.unet_calls == 2 + 8 + 4
    assert result.reconstruction_mse < 1e-12
    assert any(".attentions." in layer and layer.startswith("down_blocks.0") for layer in result.recorded_layers)
    assert result.settings.attention_resolutions == (16, 32)
    # No grid set: the paper's 16x16 (tiny has it), recorded in the result.
    default = extract_attention(tiny, image, alignment, dataclasses.replace(FAST, attention_resolutions=None))
    assert tiny.attention_grids == (32, 16) and default.settings.attention_resolutions == (16,)
    assert default.maps.token_grids.shape == (77, 16, 16)
    with pytest.raises(SettingsError, match="no cross-attention on a 8 grid at 64 px; its grids are 32, 16"):
        extract_attention(tiny, image, alignment, dataclasses.replace(FAST, attention_resolutions=(8,)))


def test_random_presets_are_reproducible(tiny):
    again = build_tiny(device="cpu")
    for a, b in zip(tiny.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    other = build_tiny(device="cpu", seed=1)
    assert not torch.equal(next(tiny.unet.parameters()), next(other.unet.parameters()))
    assert tiny.random_weights and "random weights" in tiny.description


def test_sd15_random_has_the_real_architecture():
    from anyword.diffusion.loading import _sd15_configs

    configs = _sd15_configs()
    assert configs["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert configs["unet"]["cross_attention_dim"] == configs["text_encoder"]["hidden_size"] == 768
    assert configs["scheduler"]["beta_schedule"] == "scaled_linear" and configs["scheduler"]["steps_offset"] == 1


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError, match="model folder not found"):
        load_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="incomplete or not a diffusers"):
        load_pretrained(str(tmp_path / "empty"), device="cpu")


@pytest.mark.slow
def test_default_preset_offline_exits_2_without_traceback(tmp_path):
    done = run_anyword("bench", "--preset", "sd15", "--json", env={"HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 2 and done.stdout == ""
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in done.stderr
    assert str(tmp_path / "hf") in done.stderr and "HF_HUB_OFFLINE" in done.stderr
    assert "--preset tiny" in done.stderr and "Traceback" not in done.stderr
