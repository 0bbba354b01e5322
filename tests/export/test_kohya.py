"""kohya/A1111 LoRA format: exact round trips, and the stock diffusers loader reproduces the trained model."""

import re
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from finetune.errors import UserError
from finetune.export.kohya import _unflatten, from_kohya, load_kohya, save_kohya, to_kohya
from finetune.export.lora_check import check_lora_state_dict
from finetune.models.sd import build_pipeline, build_tiny_sd, build_tiny_sdxl, tokenize_prompts

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
    assert torch.equal(
        kohya[f"{name}.lora_down.weight"],
        state["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"],
    )
    assert torch.equal(
        kohya[f"{name}.lora_up.weight"],
        state["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"],
    )
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
        tmp_path,
        unet_lora_layers=unet_state,
        text_encoder_lora_layers=te_state,
        unet_lora_adapter_metadata=parts.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=parts.text_encoder.peft_config["default"].to_dict(),
    )
    pipe = build_pipeline(build_tiny_sd(seed=0))
    pipe.load_lora_weights(tmp_path)
    for g, e in zip(
        outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer), outputs(parts.unet, parts.text_encoder, parts.tokenizer)
    ):
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
    kohya = {
        "lora_unet_conv_in.lora_down.weight": torch.ones(3, 4),
        "lora_unet_conv_in.lora_up.weight": torch.ones(4, 3),
    }
    state, alpha = from_kohya(kohya)
    assert alpha == 3.0 and set(state) == {"unet.conv_in.lora_A.weight", "unet.conv_in.lora_B.weight"}


@pytest.mark.parametrize(
    "flat, dotted",
    [
        ("down_blocks_1_resnets_0_time_emb_proj", "down_blocks.1.resnets.0.time_emb_proj"),
        (
            "mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
        ),
        (
            "up_blocks_2_attentions_1_transformer_blocks_0_attn2_to_out_0",
            "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_out.0",
        ),
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
        from_kohya(
            {
                "lora_unet_not_a_block_to_q.lora_down.weight": torch.zeros(2, 2),
                "lora_unet_not_a_block_to_q.lora_up.weight": torch.zeros(2, 2),
            },
            {"unet": parts.unet},
        )
    with pytest.raises(UserError, match=r"must end in \.safetensors"):
        save_kohya("lora.pt", state, alpha=ALPHA)


def test_lora_check_accepts_both_clip_spellings(trained):
    parts, state = trained
    n_modules = len(state) // 2
    assert check_lora_state_dict(state, parts) == n_modules
    assert check_lora_state_dict(to_kohya(state, alpha=ALPHA), parts) == n_modules
    old_spelling = {k.replace("text_encoder.", "text_encoder.text_model.", 1): v for k, v in state.items()}
    assert check_lora_state_dict(old_spelling, parts) == n_modules


def lora_modules(*models) -> int:
    """How many modules of `models` carry a LoRA layer (what the loader injected)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for model in models for m in model.modules())


def export_cli(capsys, *args: str) -> tuple[int, str]:
    from finetune.cli import main

    try:
        main(["export", "kohya", *args])
        return 0, capsys.readouterr().err
    except SystemExit as e:
        return e.code, capsys.readouterr().err


def test_cli_exports_a_recipe_lora_with_the_alpha_it_records_and_diffusers_loads_all_of_it(tmp_path, capsys):
    from accelerate.state import AcceleratorState, GradientState

    from recipes.train_sd import main as train_sd
    from tests.recipes.test_sd_recipe import BASE, PROMPT, write_images

    AcceleratorState._reset_state(reset_partial_state=True)  # an in-process recipe run builds its own Accelerator
    GradientState._reset_state()
    out, kohya = tmp_path / "run", tmp_path / "lora_kohya.safetensors"
    train_sd(
        [
            *BASE,
            f"train.output_dir={out}",
            f"data.instance_dir={write_images(tmp_path / 'inst', 2)}",
            f"data.instance_prompt={PROMPT}",
            "train.max_steps=2",
            "train.batch_size=1",
            "lora.rank=4",
            "lora.alpha=8",
            "text_encoder.train=true",
            "optim.lr=5e-3",
            "validation.grids=false",
        ]
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    code, err = export_cli(capsys, "--lora", str(out / "pytorch_lora_weights.safetensors"), "--out", str(kohya))
    assert code == 0, err  # no --rank/--alpha: both come from the file's lora_adapter_metadata
    with safe_open(str(kohya), framework="pt") as f:
        alphas = {f.get_tensor(k).item() for k in f.keys() if k.endswith(".alpha")}
        n_modules = sum(k.endswith(".lora_down.weight") for k in f.keys())
        assert f.metadata()["ss_network_alpha"] == "8.0" and f.metadata()["ss_network_dim"] == "4"
    assert alphas == {8.0}  # the recipe's lora.alpha, not the rank

    reference, loaded = build_pipeline(build_tiny_sd(sample_size=16)), build_pipeline(build_tiny_sd(sample_size=16))
    base = outputs(loaded.unet, loaded.text_encoder, loaded.tokenizer)
    reference.load_lora_weights(str(out))  # the diffusers file, as trained
    loaded.load_lora_weights(str(kohya))  # diffusers' own kohya loader
    assert (
        lora_modules(loaded.unet, loaded.text_encoder)
        == n_modules
        == lora_modules(reference.unet, reference.text_encoder)
    )
    got, expected = (
        outputs(loaded.unet, loaded.text_encoder, loaded.tokenizer),
        outputs(reference.unet, reference.text_encoder, reference.tokenizer),
    )
    assert not torch.allclose(base[0], expected[0]) and not torch.allclose(base[1], expected[1])  # both LoRAs trained
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "unet_extra",
    [{"rank_pattern": {"to_k": 2}, "alpha_pattern": {"to_q": 2.0}}, {"use_rslora": True}],
    ids=["patterns", "rslora"],
)
def test_per_module_rank_and_alpha_from_the_metadata_reproduce_the_model_in_kohya(tmp_path, unet_extra):
    from finetune.export.kohya import module_alphas, read_diffusers_lora

    parts = build_tiny_sd(seed=0)
    parts.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS, **unet_extra))
    parts.text_encoder.add_adapter(LoraConfig(r=RANK, lora_alpha=1.0, target_modules=TE_TARGETS))  # a second alpha
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in [*parts.unet.named_parameters(), *parts.text_encoder.named_parameters()]:
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=get_peft_model_state_dict(parts.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(parts.text_encoder),
        unet_lora_adapter_metadata=parts.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=parts.text_encoder.peft_config["default"].to_dict(),
    )
    state, metadata = read_diffusers_lora(tmp_path / "pytorch_lora_weights.safetensors")
    path = save_kohya(tmp_path / "kohya.safetensors", state, module_alphas(state, metadata))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["ss_network_dim"] == ("Dynamic" if "rank_pattern" in unet_extra else str(RANK))
    pipe = build_pipeline(build_tiny_sd(seed=0))
    pipe.load_lora_weights(str(path))
    for g, e in zip(
        outputs(pipe.unet, pipe.text_encoder, pipe.tokenizer), outputs(parts.unet, parts.text_encoder, parts.tokenizer)
    ):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_cli_asks_for_rank_and_alpha_only_when_the_file_does_not_record_them(trained, tmp_path, capsys):
    from safetensors.torch import save_file

    _, state = trained
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bare))  # another tool's file: no metadata
    out = tmp_path / "k.safetensors"
    code, err = export_cli(capsys, "--lora", str(bare), "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "pass --rank and --alpha" in err and not out.exists()
    code, err = export_cli(capsys, "--lora", str(bare), "--out", str(out), "--rank", str(RANK), "--alpha", str(ALPHA))
    assert code == 0, err
    assert load_kohya(out)[1] == ALPHA
    code, err = export_cli(capsys, "--lora", str(bare), "--out", str(out), "--rank", "8", "--alpha", str(ALPHA))
    assert code == 2 and "rank=8 does not match" in err


def test_a_pickle_named_safetensors_is_refused_in_one_line_and_never_unpickled(tmp_path):
    import pickle

    from finetune.export.kohya import read_diffusers_lora

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    fake = tmp_path / "pytorch_lora_weights.safetensors"
    fake.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        read_diffusers_lora(fake)
    assert not marker.exists()


def test_the_sd_export_temporary_is_one_the_next_run_cleans(tmp_path):
    """A kill inside save_sd_lora leaves its temporary directory: its name is one remove_io_leftovers removes."""
    import tempfile

    from finetune.export.sd import LORA_FILE
    from finetune.train.checkpoint import remove_io_leftovers

    left = Path(tempfile.mkdtemp(dir=tmp_path, prefix=f".{LORA_FILE}.", suffix=".tmp"))  # as save_sd_lora names it
    remove_io_leftovers(tmp_path)
    assert not left.exists()


# ---------------------------------------------------------------------------------------------
# SDXL: two text encoders, diffusers' SDXL loader, ComfyUI's SDXL key rules
# ---------------------------------------------------------------------------------------------

SDXL_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "time_emb_proj"]
SDXL_TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # all six of ComfyUI's LORA_CLIP_MAP
# ComfyUI's comfy/lora.py rules, written out: model_lora_keys_clip names SDXL's CLIP-L "lora_te1_" and CLIP-G
# "lora_te2_" + text_model_encoder_layers_{i}_{LORA_CLIP_MAP value}; model_lora_keys_unet names a UNet module
# "lora_unet_" + its diffusers name with "." -> "_"
COMFY_CLIP_SDXL = re.compile(
    r"^lora_te[12]_text_model_encoder_layers_\d+_(self_attn_q_proj|self_attn_k_proj|self_attn_v_proj"
    r"|self_attn_out_proj|mlp_fc1|mlp_fc2)$"
)


def _randomize_lora_b(*models):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in models:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def sdxl_with_lora(encoders=("text_encoder", "text_encoder_2")):
    """Tiny SDXL with LoRA on its UNet and the given text encoders, B set as if trained; (pipe, diffusers state)."""
    pipe = build_tiny_sdxl(seed=0)
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=SDXL_UNET_TARGETS))
    for name in encoders:
        getattr(pipe, name).add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=SDXL_TE_TARGETS))
    _randomize_lora_b(pipe.unet, *(getattr(pipe, n) for n in encoders))
    state = {}
    for name in ("unet", *encoders):
        state.update({f"{name}.{k}": v for k, v in get_peft_model_state_dict(getattr(pipe, name)).items()})
    return pipe, state


@pytest.fixture(scope="module")
def trained_sdxl():
    return sdxl_with_lora()


def sdxl_outputs(pipe):
    """Both encoders' hidden states, the pooled projection, and a UNet prediction conditioned on them."""
    ids = tokenize_prompts(pipe.tokenizer, ["a photo of sks dog"])
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        h1 = pipe.text_encoder(ids)[0]
        second = pipe.text_encoder_2(ids)
        added = {"text_embeds": second.text_embeds, "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]])}
        sample = pipe.unet(latents, torch.tensor([500]), torch.cat([h1, second[1]], -1), added_cond_kwargs=added)
        return h1, second[1], second.text_embeds, sample.sample


def test_sdxl_kohya_keys_follow_comfyui_rules(trained_sdxl):
    pipe, state = trained_sdxl
    kohya = to_kohya(state, alpha=ALPHA, rank=RANK)
    unet_names = {"lora_unet_" + n.replace(".", "_") for n, _ in pipe.unet.named_modules() if n}
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in kohya}
    assert len(modules) == len(state) // 2 and len(kohya) == 3 * len(modules)  # down + up + alpha each
    for name in modules:
        assert name in unet_names or COMFY_CLIP_SDXL.match(name), name
        assert kohya[f"{name}.alpha"].dim() == 0 and kohya[f"{name}.alpha"].item() == ALPHA
    assert {n[:9] for n in modules if n.startswith("lora_te")} == {"lora_te1_", "lora_te2_"}


@pytest.mark.parametrize("encoder, prefix", [("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")])
def test_sdxl_lora_on_either_text_encoder_alone_keeps_its_sdxl_prefix(tmp_path, encoder, prefix):
    pipe, state = sdxl_with_lora((encoder,))
    path = save_kohya(tmp_path / "lora.safetensors", state, alpha=ALPHA, sdxl=True)
    with safe_open(str(path), framework="pt") as f:
        te_prefixes = {k[:9] for k in f.keys() if k.startswith("lora_te")}
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    assert te_prefixes == {prefix}
    fresh = build_tiny_sdxl(seed=0)
    fresh.load_lora_weights(str(path))
    for g, e in zip(sdxl_outputs(fresh), sdxl_outputs(pipe)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_stock_sdxl_loader_consumes_every_kohya_key_like_the_diffusers_file(trained_sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    pipe, state = trained_sdxl
    path = save_kohya(tmp_path / "kohya.safetensors", state, alpha=ALPHA)
    layers = {n: {k[len(n) + 1 :]: v for k, v in state.items() if k.split(".")[0] == n} for n in ("unet",)}
    te1 = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    te2 = {k.removeprefix("text_encoder_2."): v for k, v in state.items() if k.startswith("text_encoder_2.")}
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "diffusers",
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=te1,
        text_encoder_2_lora_layers=te2,
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["default"].to_dict(),
        text_encoder_2_lora_adapter_metadata=pipe.text_encoder_2.peft_config["default"].to_dict(),
    )
    from_kohya_file, from_diffusers_file, base = build_tiny_sdxl(seed=0), build_tiny_sdxl(seed=0), build_tiny_sdxl(0)
    from_kohya_file.load_lora_weights(str(path))
    from_diffusers_file.load_lora_weights(str(tmp_path / "diffusers"))
    parts = ("unet", "text_encoder", "text_encoder_2")
    n_modules = len(state) // 2
    # every module of the file was injected (none missing, none left over), in each part as in the diffusers file
    for name in parts:
        assert lora_modules(getattr(from_kohya_file, name)) == lora_modules(getattr(from_diffusers_file, name)) > 0
    assert sum(lora_modules(getattr(from_kohya_file, n)) for n in parts) == n_modules
    got, reference, untouched = (sdxl_outputs(p) for p in (from_kohya_file, from_diffusers_file, base))
    for g, r, e, u in zip(got, reference, sdxl_outputs(pipe), untouched):
        assert not torch.allclose(u, e)  # each output is changed by the LoRA...
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)  # ...the same way from both files
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)  # ...as trained
    back, alpha = load_kohya(path, {n: getattr(pipe, n) for n in parts})
    assert alpha == ALPHA and back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_a_kohya_file_of_the_other_architecture_is_refused_in_one_line(trained, trained_sdxl, tmp_path):
    sd_parts, sd_state = trained
    sdxl, sdxl_state = trained_sdxl
    sdxl_components = {n: getattr(sdxl, n) for n in ("unet", "text_encoder", "text_encoder_2")}
    sd_components = {"unet": sd_parts.unet, "text_encoder": sd_parts.text_encoder}
    cases = [
        (to_kohya(sd_state, alpha=ALPHA), sdxl_components, "is an SD1.x/2.x LoRA"),
        (to_kohya(sdxl_state, alpha=ALPHA), sd_components, "is an SDXL LoRA"),
        # UNet-only files carry no text-encoder prefix: the modules' names or widths tell
        (to_kohya({k: v for k, v in sd_state.items() if k.startswith("unet.")}, ALPHA), sdxl_components, "another"),
        (to_kohya({k: v for k, v in sdxl_state.items() if k.startswith("unet.")}, ALPHA), sd_components, "another"),
    ]
    for kohya, components, message in cases:
        with pytest.raises(UserError, match=message) as info:
            from_kohya(kohya, components)
        assert "\n" not in str(info.value)  # one line: the CLI prints it as `error: ...`
