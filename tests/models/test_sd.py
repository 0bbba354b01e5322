"""Stable Diffusion parts: tiny builder, offline tokenizer, loading from a diffusers dir, clear load errors."""

import random

import huggingface_hub.constants
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from finetune.errors import UserError
from finetune.models.sd import (
    TINY_WORDS,
    SDModelConfig,
    _learn_merges,
    build_pipeline,
    build_tiny_sd,
    build_tiny_tokenizer,
    load_sd_components,
    sd15_configs,
    tokenize_prompts,
)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sd(seed=0)


@pytest.fixture(scope="module")
def saved_dir(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_sd")
    build_pipeline(tiny).save_pretrained(path)
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_tokenizer_words_are_single_tokens_and_any_text_tokenizes():
    tok = build_tiny_tokenizer()
    ids = tok("A photo of sks dog, a drawing of the digit 7").input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "sks</w>",
        "dog</w>",
        ",</w>",
        "a</w>",
        "drawing</w>",
        "of</w>",
        "the</w>",
        "digit</w>",
        "7</w>",
        "<|endoftext|>",
    ]
    text = "zébra über 42!"  # unknown words and non-ASCII fall back to byte-level pieces
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == "zébra über 4 2 !"


def test_tiny_tokenizer_supports_textual_inversion_tokens():
    parts = build_tiny_sd(seed=0)
    tok = parts.tokenizer
    before = len(tok)
    assert parts.text_encoder.config.vocab_size == before
    assert tok.add_tokens(["<my-digit>"]) == 1
    ids = tok("a drawing of <my-digit>").input_ids
    assert tok.convert_tokens_to_ids("<my-digit>") == before
    assert ids.count(before) == 1 and len(ids) == 6
    parts.text_encoder.resize_token_embeddings(len(tok))
    with torch.no_grad():
        hidden = parts.text_encoder(tokenize_prompts(tok, ["a drawing of <my-digit>"]))[0]
    assert hidden.shape == (1, 77, 32) and torch.isfinite(hidden).all()


def test_tiny_tokenizer_is_deterministic_whatever_the_word_order():
    shuffled = list(TINY_WORDS)
    random.Random(1).shuffle(shuffled)
    assert _learn_merges(shuffled) == _learn_merges(TINY_WORDS)
    assert build_tiny_tokenizer().get_vocab() == build_tiny_tokenizer().get_vocab()


def test_tiny_sd_is_seeded_and_shapes_fit_together(tiny):
    assert _same_weights(tiny.unet, build_tiny_sd(seed=0).unet)
    assert not _same_weights(tiny.unet, build_tiny_sd(seed=1).unet)
    with torch.no_grad():
        latents = tiny.vae.encode(torch.zeros(1, 3, 16, 16)).latent_dist.mean
        ids = tokenize_prompts(tiny.tokenizer, ["a photo of sks dog", "a dog"])
        hidden = tiny.text_encoder(ids)[0]
        out = tiny.unet(latents.repeat(2, 1, 1, 1), torch.tensor([1, 999]), hidden).sample
    assert latents.shape == (1, 4, 8, 8) and tiny.vae_scale_factor == 2
    assert ids.shape == (2, 77) and hidden.shape == (2, 77, tiny.unet.config.cross_attention_dim)
    assert out.shape == (2, 4, 8, 8)


def test_schedulers_follow_sd_and_never_clip_latents(tiny):
    config = tiny.noise_scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert config.clip_sample is False and tiny.prediction_type == "epsilon"
    pipe = build_pipeline(tiny)
    assert pipe.scheduler.config.clip_sample is False and pipe.safety_checker is None


def test_pipeline_samples_deterministically(tiny):
    pipe = build_pipeline(tiny)
    run = lambda: (
        pipe(
            "a photo of sks dog", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images
    )
    first = run()
    assert first.shape == (1, 16, 16, 3)
    assert (first >= 0).all() and (first <= 1).all()
    assert (first == run()).all()


def test_tiny_from_config_uses_resolution():
    parts = load_sd_components(SDModelConfig(tiny=True, resolution=32, prediction_type="v_prediction"))
    assert parts.unet.config.sample_size == 16 and parts.prediction_type == "v_prediction"


def test_diffusers_dir_round_trip_keeps_weights_and_tokenizer(tiny, saved_dir):
    parts = load_sd_components(SDModelConfig(pretrained=str(saved_dir)))
    assert _same_weights(parts.unet, tiny.unet) and _same_weights(parts.vae, tiny.vae)
    assert _same_weights(parts.text_encoder, tiny.text_encoder)
    prompt = "a photo of sks dog"
    assert parts.tokenizer(prompt).input_ids == tiny.tokenizer(prompt).input_ids
    assert parts.noise_scheduler.config.clip_sample is False and parts.prediction_type == "epsilon"


def test_prediction_type_override_reaches_training_and_sampling(saved_dir):
    parts = load_sd_components(SDModelConfig(pretrained=str(saved_dir), prediction_type="v_prediction"))
    assert parts.noise_scheduler.config.prediction_type == "v_prediction"
    assert build_pipeline(parts).scheduler.config.prediction_type == "v_prediction"


def test_sd15_configs_have_sd15_sizes():
    configs = sd15_configs()
    with torch.device("meta"):  # real-size shapes without allocating ~4 GB
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # SD1.5's published component sizes


@pytest.mark.parametrize(
    "pretrained, message",
    [
        ("/no/such/dir", "does not exist"),
        ("./models/sd", "does not exist"),
        ("weights.safetensors", "does not exist"),
        ("", "pretrained is empty"),
    ],
)
def test_bad_paths_raise_user_error(pretrained, message):
    with pytest.raises(UserError, match=message):
        load_sd_components(SDModelConfig(pretrained=pretrained))


def test_bad_settings_raise_user_error(saved_dir):
    with pytest.raises(UserError, match="multiple of 8"):
        load_sd_components(SDModelConfig(pretrained=str(saved_dir), resolution=500))
    with pytest.raises(UserError, match="prediction_type"):
        load_sd_components(SDModelConfig(pretrained=str(saved_dir), prediction_type="sample_x0"))


def test_pickle_single_file_is_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not loaded")
    with pytest.raises(UserError, match="not a .safetensors checkpoint"):
        load_sd_components(SDModelConfig(pretrained=str(ckpt)))


def test_unrecognised_single_file_raises_user_error(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"some.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(UserError, match="could not load single-file checkpoint"):
        load_sd_components(SDModelConfig(pretrained=str(path)))


def test_non_diffusers_dir_and_missing_parts_raise_user_error(tmp_path, saved_dir):
    with pytest.raises(UserError, match="not a diffusers Stable Diffusion directory"):
        load_sd_components(SDModelConfig(pretrained=str(tmp_path)))
    broken = tmp_path / "broken"
    build_pipeline(build_tiny_sd()).save_pretrained(broken)
    for f in (broken / "tokenizer").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="tokenizer of .* has no vocabulary"):
        load_sd_components(SDModelConfig(pretrained=str(broken)))


def test_pickle_weights_in_dir_are_refused(tmp_path, tiny):
    path = tmp_path / "bin_weights"
    build_pipeline(tiny).save_pretrained(path, safe_serialization=False)
    with pytest.raises(UserError, match=r"no file named diffusion_pytorch_model\.safetensors"):
        load_sd_components(SDModelConfig(pretrained=str(path)))


def test_unreachable_hub_id_raises_user_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    with pytest.raises(UserError, match="could not load Stable Diffusion from 'someorg/no-such-model'"):
        load_sd_components(SDModelConfig(pretrained="someorg/no-such-model"))


def test_tiny_sdxl_is_sdxl_in_miniature_and_deterministic():
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    from finetune.models.sd import build_tiny_sdxl

    pipe, again = build_tiny_sdxl(seed=0), build_tiny_sdxl(seed=0)
    assert isinstance(pipe, StableDiffusionXLPipeline) and isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert pipe.unet.config.addition_embed_type == "text_time"
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == width  # conditioned on both encoders side by side
    assert _same_weights(pipe.unet, again.unet) and _same_weights(pipe.text_encoder_2, again.text_encoder_2)
    latents = pipe("a photo of sks dog", num_inference_steps=2, height=16, width=16, output_type="latent").images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


@pytest.mark.parametrize("kind", ["sdpa", "classic"])
def test_attention_processor_is_diffusers_own_with_its_signature_precomputed(kind, monkeypatch):
    import inspect

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from finetune.models.sd_denoiser import attention_processor

    base = AttnProcessor2_0 if kind == "sdpa" else AttnProcessor
    unet = build_tiny_sd(seed=0).unet
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 77, unet.config.cross_attention_dim)
    unet.set_attn_processor(base())
    expected = unet(x, t, cond).sample
    unet.set_attn_processor(attention_processor(kind))
    proc = next(iter(unet.attn_processors.values()))
    assert isinstance(proc, base) and inspect.signature(proc.__call__) == inspect.signature(base().__call__)
    # diffusers asks for the processor's signature on every attention call; it must come precomputed
    computed = []
    real = inspect._signature_from_function
    monkeypatch.setattr(inspect, "_signature_from_function", lambda *a, **k: computed.append(1) or real(*a, **k))
    assert torch.equal(unet(x, t, cond).sample, expected) and computed == []
