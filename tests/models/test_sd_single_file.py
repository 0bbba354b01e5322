"""Loading Stable Diffusion from one A1111/LDM-style .safetensors checkpoint, offline.

The tiny SD is saved twice: as a diffusers directory (it serves as `model.single_file_config`, the component
configs that offline single-file loading needs) and as ONE .safetensors file in the original LDM (SD1) key
layout, written by the small diffusers -> LDM key renamer below. `load_sd_components` must read the file back
into exactly the same weights and the same UNet output.
"""

import re

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from finetune.errors import UserError
from finetune.models.sd import SDModelConfig, build_pipeline, build_sd_from_configs, load_sd_components, tiny_sd_configs

SAMPLE_SIZE, VAE_SCALE = 8, 2  # latents 8x8, images 16x16
UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."


# ---------------------------------------------------------------------------------------------
# diffusers -> LDM (SD1) key layout, test-local
# ---------------------------------------------------------------------------------------------

_UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _unet_resnet(rest: str) -> str:
    for new, old in _UNET_RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise KeyError(rest)


def unet_to_ldm(state: dict, layers_per_block: int) -> dict:
    """UNet2DConditionModel names -> LDM openaimodel UNet names (input_blocks / middle_block / output_blocks)."""
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_FIXED:
            new = f"{_UNET_FIXED[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            i = 1 + block * (layers_per_block + 1) + layer
            new = f"input_blocks.{i}.0.{_unet_resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            i = 1 + int(m[1]) * (layers_per_block + 1) + layers_per_block
            new = f"input_blocks.{i}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_unet_resnet(m[2])}"  # resnet, attention, resnet
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            i = block * (layers_per_block + 1) + layer  # up blocks have layers_per_block + 1 layers
            new = f"output_blocks.{i}.0.{_unet_resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            block = int(m[1])
            i = block * (layers_per_block + 1) + layers_per_block  # the block's last layer carries the upsampler
            has_attn = any(k.startswith(f"up_blocks.{block}.attentions.") for k in state)
            new = f"output_blocks.{i}.{2 if has_attn else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
        out[UNET_PREFIX + new] = value
    return out


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_FIXED = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def vae_to_ldm(state: dict, n_blocks: int) -> dict:
    """AutoencoderKL names -> LDM Encoder/Decoder names; decoder up blocks are numbered in reverse, attention
    q/k/v/proj_out are 1x1 convs ([out, in, 1, 1]) where diffusers has linears ([out, in])."""
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(quant_conv|post_quant_conv)\.(.+)", key):
            new = key
        elif m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.+)", key):
            new = f"{m[1]}.{_VAE_FIXED[m[2]]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_vae_resnet(m[3])}"
        elif m := re.fullmatch(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key
        ):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]  # linear [out, in] -> 1x1 conv [out, in, 1, 1]
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state: dict) -> dict:
    """HF CLIPTextModel names -> SD1 `cond_stage_model.transformer.text_model.*` (the original CLIP layout)."""
    return {CLIP_PREFIX + "text_model." + k.removeprefix("text_model."): v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Any hub access fails at once (module scope, so it already holds while the module fixtures load)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def tiny():
    return build_sd_from_configs(tiny_sd_configs(sample_size=SAMPLE_SIZE, vae_scale_factor=VAE_SCALE), seed=0)


@pytest.fixture(scope="module")
def config_dir(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("sd_config")
    build_pipeline(tiny).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def ldm_state(tiny):
    unet = unet_to_ldm(tiny.unet.state_dict(), tiny.unet.config.layers_per_block)
    vae = vae_to_ldm(tiny.vae.state_dict(), len(tiny.vae.config.block_out_channels))
    clip = clip_to_ldm(tiny.text_encoder.state_dict())
    state = {**unet, **vae, **clip}
    assert len(state) == len(unet) + len(vae) + len(clip)  # the renaming is one-to-one
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def single_file(ldm_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("sd_single") / "tiny-sd1.safetensors"
    save_file(ldm_state, str(path))
    return path


@pytest.fixture(scope="module")
def loaded(single_file, config_dir):
    return load_sd_components(
        SDModelConfig(
            pretrained=str(single_file), single_file_config=str(config_dir), resolution=SAMPLE_SIZE * VAE_SCALE
        )
    )


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_checkpoint_has_the_ldm_sd1_layout(ldm_state):
    keys = set(ldm_state)
    for key in [  # names that every SD1 A1111 checkpoint has, and that diffusers keys its detection on
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.emb_layers.1.weight",
        "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
        "model.diffusion_model.output_blocks.1.2.conv.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "first_stage_model.encoder.norm_out.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ]:
        assert key in keys, key
    assert ldm_state["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (32, 32, 1, 1)
    assert not any(
        k.startswith(("model.diffusion_model.down_blocks", "first_stage_model.encoder.down_blocks")) for k in keys
    )


def _assert_same_weights(name, original: torch.nn.Module, loaded: torch.nn.Module):
    a, b = original.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys(), f"{name}: key sets differ"
    for k in a:
        assert b[k].device.type == "cpu", f"{name}.{k} was not loaded (on {b[k].device})"
        assert b[k].dtype == a[k].dtype and torch.equal(a[k], b[k]), f"{name}.{k} differs"


def test_single_file_loads_every_weight_exactly(tiny, loaded):
    _assert_same_weights("unet", tiny.unet, loaded.unet)
    _assert_same_weights("vae", tiny.vae, loaded.vae)
    _assert_same_weights("text_encoder", tiny.text_encoder, loaded.text_encoder)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.unet.config) == public(tiny.unet.config)
    assert loaded.vae.config.block_out_channels == tiny.vae.config.block_out_channels
    assert loaded.vae_scale_factor == VAE_SCALE
    assert loaded.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
    assert loaded.prediction_type == "epsilon"
    assert loaded.noise_scheduler.config.num_train_timesteps == tiny.noise_scheduler.config.num_train_timesteps
    assert loaded.sample_scheduler_config["_class_name"] == "DDIMScheduler"


def test_single_file_model_gives_the_same_outputs(tiny, loaded):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, SAMPLE_SIZE, SAMPLE_SIZE, generator=g)
    ids = loaded.tokenizer(
        ["a photo of sks dog", "a drawing of the digit 7"],
        padding="max_length",
        max_length=loaded.tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    t = torch.tensor([10, 500])
    images = torch.rand(1, 3, SAMPLE_SIZE * VAE_SCALE, SAMPLE_SIZE * VAE_SCALE, generator=g) * 2 - 1
    with torch.no_grad():
        text_ref = tiny.text_encoder(ids)[0]
        text_got = loaded.text_encoder(ids)[0]
        torch.testing.assert_close(text_got, text_ref, rtol=0, atol=1e-6)
        ref = tiny.unet(latents, t, encoder_hidden_states=text_ref).sample
        got = loaded.unet(latents, t, encoder_hidden_states=text_got).sample
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        vae_ref = tiny.vae.decode(tiny.vae.encode(images).latent_dist.mean).sample
        vae_got = loaded.vae.decode(loaded.vae.encode(images).latent_dist.mean).sample
        torch.testing.assert_close(vae_got, vae_ref, rtol=0, atol=1e-6)
    assert ref.abs().sum() > 0


def test_pickle_single_file_is_refused_with_a_clear_message(tmp_path, config_dir):
    ckpt = tmp_path / "tiny-sd1.ckpt"
    ckpt.write_bytes(b"never unpickled")
    with pytest.raises(UserError, match=r"is not a \.safetensors checkpoint.*can run code when loaded"):
        load_sd_components(SDModelConfig(pretrained=str(ckpt), single_file_config=str(config_dir)))


@pytest.mark.parametrize("content", ["unrelated", "no_vae"])
def test_single_file_missing_sd_parts_raises_user_error(tmp_path, config_dir, ldm_state, content):
    if content == "unrelated":  # no SD weights at all: the first part diffusers loads (the text encoder) is missing
        state, missing = {"some.weight": torch.zeros(2, 2)}, "CLIPTextModel"
    else:  # UNet and text encoder, but no first_stage_model.*
        state, missing = {k: v for k, v in ldm_state.items() if not k.startswith(VAE_PREFIX)}, "AutoencoderKL"
    path = tmp_path / f"{content}.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match=rf"could not load single-file checkpoint .*Failed to load {missing}"):
        load_sd_components(SDModelConfig(pretrained=str(path), single_file_config=str(config_dir)))
