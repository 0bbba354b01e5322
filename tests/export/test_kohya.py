"""kohya/A1111 LoRA format: exact round trips, and the stock diffusers loader reproduces the trained model."""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from finetune.errors import UserError
from finetune.export.kohya import _unflatten, from_kohya, load_kohya, save_kohya, to_kohya
from finetune.export.lora_check import check_lora_state_dict
from finetune.models.sd import build_pipeline, build_tiny_sd, tokenize_prompts

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.0.proj", "ff.net.2", "conv1", "time_emb_proj"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]
RANK, ALPHA = 4, 8.0  # alpha != rank so a lost alpha changes the outputs


@pytest.fixture(scope="module")
def trained():
    """Tiny SD with LoRA on unet and text encoder, B matrices set as if trained."""
    parts = build_tiny_sd(seed=0)
    parts.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS))
    parts.text_encoder.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TE_TARGETS))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in [*parts.unet.named_parameters(), *parts.text_encoder.named_parameters()]:
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    state = {f"unet.{k}": v for k, v in get_peft_model_state_dict(parts.unet).items()}
    state.update({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(parts.text_encoder).items()})
    return parts, state


def outputs(unet, text_encoder, tokenizer):
    """Text embeddings and a UNet prediction on fixed inputs."""
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        hidden = text_encoder(tokenize_prompts(tokenizer, ["a photo of sks dog"]))[0]
        return hidden, unet(latents, torch.tensor([500]), hidden).sample


def test_kohya_keys_alpha_and_exact_round_trip(trained):
    parts, state = trained
    kohya = to_kohya(state, alpha=ALPHA, rank=RANK)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert torch.equal(kohya[f"{name}.lora_down.weight"], state["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"])
    assert torch.equal(kohya[f"{name}.lora_up.weight"], state["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"])
    assert kohya[f"{name}.alpha"].item() == ALPHA and kohya[f"{name}.alpha"].dim() == 0
    # A1111 spells CLIP modules with transformers 4's "text_model." level, which transformers 5 dropped
    assert "lora_te_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight" in kohya
    assert len(kohya) == len(state) * 3 // 2  # down + up + alpha per module
    for components in (None, {"unet": parts.unet, "text_encoder": parts.text_encoder}):
        back, alpha = from_kohya(kohya, components)
        assert alpha == ALPHA and back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state)


def test_kohya_file_round_trip_with_metadata(trained, tmp_path):
    _, state = trained
    path = save_kohya(tmp_path / "lora.safetensors", state, alpha=ALPHA)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == str(RANK) and float(meta["ss_network_alpha"]) == ALPHA
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    back, alpha = load_kohya(path)
    assert alpha == ALPHA and all(torch.equal(back[k], state[k]) for k in state)


def test_stock_diffusers_loads_kohya_file_and_reproduces_the_model(trained, tmp_path):
    parts, state = trained
    expected = outputs(parts.unet, parts.text_encoder, parts.tokenizer)
    fresh = build_tiny_sd(seed=0)
    base = outputs(fresh.unet, fresh.text_encoder, fresh.tokenizer)
    pipe = build_pipeline(fresh)
    pipe.load_lora_weights(str(save_kohya(tmp_path / "lora.safetensors", state, alpha=ALPHA)))
    got = outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    assert not torch.allclose(base[1], expected[1])  # the LoRA matters...
    for g, e in zip(got, expected):  # ...and diffusers' own kohya loader reproduces it, alpha included
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_save_lora_weights_loads_back_with_load_lora_weights(trained, tmp_path):
    parts, state = trained
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    te_state = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=unet_state, text_encoder_lora_layers=te_state,
        unet_lora_adapter_metadata=parts.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=parts.text_encoder.peft_config["default"].to_dict(),
    )
    pipe = build_pipeline(build_tiny_sd(seed=0))
    pipe.load_lora_weights(tmp_path)
    for g, e in zip(outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer), outputs(parts.unet, parts.text_encoder, parts.tokenizer)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_differing_alphas_are_folded_into_up_weights():
    down, up = torch.randn(2, 6), torch.randn(6, 2)
    kohya = {}
    for i, alpha in enumerate([1.0, 4.0, 1.0]):
        kohya[f"lora_unet_mid_block_attentions_0_proj_in_{i}.lora_down.weight"] = down
        kohya[f"lora_unet_mid_block_attentions_0_proj_in_{i}.lora_up.weight"] = up
        kohya[f"lora_unet_mid_block_attentions_0_proj_in_{i}.alpha"] = torch.tensor(alpha)
    state, alpha = from_kohya(kohya)
    assert alpha == 1.0  # the most common one
    rank = 2
    for i, module_alpha in enumerate([1.0, 4.0, 1.0]):
        key = f"unet.mid_block.attentions.0.proj_in.{i}"
        delta = state[f"{key}.lora_B.weight"] @ state[f"{key}.lora_A.weight"] * alpha / rank
        torch.testing.assert_close(delta, up @ down * module_alpha / rank)


def test_missing_alpha_means_alpha_equals_rank():
    kohya = {"lora_unet_conv_in.lora_down.weight": torch.ones(3, 4), "lora_unet_conv_in.lora_up.weight": torch.ones(4, 3)}
    state, alpha = from_kohya(kohya)
    assert alpha == 3.0 and set(state) == {"unet.conv_in.lora_A.weight", "unet.conv_in.lora_B.weight"}


@pytest.mark.parametrize(
    "flat, dotted",
    [
        ("down_blocks_1_resnets_0_time_emb_proj", "down_blocks.1.resnets.0.time_emb_proj"),
        ("mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"),
        ("up_blocks_2_attentions_1_transformer_blocks_0_attn2_to_out_0", "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_out.0"),
        ("text_model_encoder_layers_11_self_attn_out_proj", "text_model.encoder.layers.11.self_attn.out_proj"),
        ("down_blocks_0_downsamplers_0_conv", "down_blocks.0.downsamplers.0.conv"),
        ("time_embedding_linear_1", "time_embedding.linear_1"),
    ],
)
def test_kohya_names_unflatten_to_sd_module_names(flat, dotted):
    assert _unflatten(flat) == dotted


def test_format_errors_are_user_errors(trained):
    parts, state = trained
    with pytest.raises(UserError, match="not in diffusers format"):
        to_kohya({"down_blocks.0.to_q.lora_A.weight": torch.zeros(2, 2)}, alpha=1)
    with pytest.raises(UserError, match="rank=8 does not match"):
        to_kohya(state, alpha=ALPHA, rank=8)
    with pytest.raises(UserError, match="LoHa"):
        from_kohya({"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)})
    with pytest.raises(UserError, match="lacks its lora_down or lora_up"):
        from_kohya({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 2)})
    with pytest.raises(UserError, match="matches no module"):
        from_kohya({"lora_unet_not_a_block_to_q.lora_down.weight": torch.zeros(2, 2),
                    "lora_unet_not_a_block_to_q.lora_up.weight": torch.zeros(2, 2)}, {"unet": parts.unet})
    with pytest.raises(UserError, match=r"must end in \.safetensors"):
        save_kohya("lora.pt", state, alpha=ALPHA)


def test_lora_check_accepts_both_clip_spellings(trained):
    parts, state = trained
    n_modules = len(state) // 2
    assert check_lora_state_dict(state, parts) == n_modules
    assert check_lora_state_dict(to_kohya(state, alpha=ALPHA), parts) == n_modules
    old_spelling = {k.replace("text_encoder.", "text_encoder.text_model.", 1): v for k, v in state.items()}
    assert check_lora_state_dict(old_spelling, parts) == n_modules
