"""The method tables (LM and SD): every entry is wired into its recipe's config, applying it trains exactly its part,
and (SD) saving it writes the artifact its users load."""

from __future__ import annotations

import dataclasses
import typing
from types import SimpleNamespace

import pytest
import torch

from finetune.config import load_config, to_dict
from finetune.errors import UserError
from finetune.methods.registry import LM_METHODS, LMMethodName
from finetune.methods.sd_registry import SD_METHODS, SDMethodName
from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer
from finetune.models.sd import build_tiny_sd
from recipes.train_lm import LMRecipeConfig, check_combination
from recipes.train_sd import SDRecipeConfig
from recipes.train_sd import check_combination as check_sd_combination

ONE_PROCESS = SimpleNamespace(num_processes=1, mixed_precision="no")  # what apply reads of the accelerator


def recipe_config(*overrides: str) -> LMRecipeConfig:
    return load_config(LMRecipeConfig, None, ["data.train_file=unused.jsonl", *overrides])


@pytest.mark.parametrize(
    "table,names,config",
    [(LM_METHODS, LMMethodName, LMRecipeConfig), (SD_METHODS, SDMethodName, SDRecipeConfig)],
    ids=["lm", "sd"],
)
def test_the_method_names_the_config_accepts_are_the_table_entries(table, names, config):
    assert set(typing.get_args(names)) == set(table)
    assert typing.get_type_hints(config)["method"] == names


@pytest.mark.parametrize("name", sorted(LM_METHODS))
def test_each_method_has_its_config_section_in_the_recipe(name):
    method = LM_METHODS[name]
    hints = typing.get_type_hints(LMRecipeConfig)
    assert hints.get(method.section) is method.config, (
        f"LMRecipeConfig needs `{method.section}: {method.config.__name__}`"
    )
    assert method.export in ("adapter", "model")
    # the model card describes the method from the config it saved (plain dicts)
    assert method.describe(to_dict(recipe_config(f"method={name}"))[method.section])


def trained_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("lora", ["lora.target_modules=[q_proj,v_proj]"]),
        ("prompt", ["prompt.num_virtual_tokens=4", "prompt.init=random"]),
        ("full", ["full.freeze_first_n_layers=2"]),
        ("full", ["full.unfreeze=steps", "full.unfreeze_every=2"]),
    ],
)
def test_apply_hands_the_optimizer_exactly_the_parameters_that_train(name, overrides):
    cfg = recipe_config(f"method={name}", *overrides)
    torch.manual_seed(0)
    trained = LM_METHODS[name].apply(build_tiny_llama(), build_tiny_tokenizer(), cfg, ONE_PROCESS)
    in_groups = {id(p) for g in trained.groups for p in g["params"]}
    names = trained_names(trained.model)
    assert names and {id(p) for n, p in trained.model.named_parameters() if n in names} <= in_groups
    total = sum(p.numel() for p in trained.model.parameters())
    if name == "lora":
        assert all("lora_" in n for n in names) and trained.unfreezer is None
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"}
    elif name == "prompt":
        assert all("prompt_encoder" in n for n in names)
    elif cfg.full.unfreeze == "none":  # two static-frozen layers (and the embeddings below them) never train
        assert trained.unfreezer is None and not any(".layers.0." in n or ".layers.1." in n for n in names)
    else:  # gradual unfreezing: the groups held back are in the optimizer and in the count, and train later
        assert trained.unfreezer is not None and len(trained.groups) == len(trained.unfreezer.groups)
        assert (
            trained.trainable == total and sum(p.numel() for p in trained.model.parameters() if p.requires_grad) < total
        )
    if name != "full" or cfg.full.unfreeze == "none":
        assert trained.trainable == sum(p.numel() for n, p in trained.model.named_parameters() if n in names) < total


def test_lora_under_mixed_precision_stores_frozen_weights_once_in_that_dtype():
    cfg = recipe_config("method=lora")
    trained = LM_METHODS["lora"].apply(
        build_tiny_llama(), build_tiny_tokenizer(), cfg, SimpleNamespace(num_processes=1, mixed_precision="bf16")
    )
    dtypes = {p.dtype for n, p in trained.model.named_parameters() if "base_layer" in n and n.endswith("weight")}
    assert trained.cast_frozen and dtypes == {torch.bfloat16}
    assert {p.dtype for p in trained.model.parameters() if p.requires_grad} == {torch.float32}


def test_method_checks_run_from_the_recipe_check(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a short document"}\n')
    with pytest.raises(UserError, match="prompt methods only accept a 2D attention mask"):
        check_combination(recipe_config(f"data.train_file={data}", "method=prompt", "data.pack=true"))
    check_combination(recipe_config(f"data.train_file={data}", "method=prompt", "data.packed_attention=none"))
    with pytest.raises(UserError, match=r"^export.merged only applies to method=lora; unset it or switch method$"):
        check_combination(recipe_config(f"data.train_file={data}", "method=full", "export.merged=true"))


def test_only_methods_that_prepend_tokens_spend_context():
    cfg = recipe_config("prompt.num_virtual_tokens=7")
    spent = {name: m.virtual_tokens(getattr(cfg, m.section)) for name, m in LM_METHODS.items()}
    assert spent == {"lora": 0, "prompt": 7, "full": 0}
    assert all(dataclasses.is_dataclass(m.config) for m in LM_METHODS.values())


# ---------------------------------------------------------------------------------------------
# The SD table (finetune/methods/sd_registry.py, recipes/train_sd.py)
# ---------------------------------------------------------------------------------------------

PROMPT = "a photo of sks dog"


def sd_config(*overrides: str) -> SDRecipeConfig:
    return load_config(
        SDRecipeConfig,
        None,
        ["model.tiny=true", "data.instance_dir=unused", f"data.instance_prompt={PROMPT}", *overrides],
    )


@pytest.mark.parametrize("name", sorted(SD_METHODS))
def test_each_sd_method_has_its_config_section_in_the_recipe_and_its_defaults_pass(name):
    method = SD_METHODS[name]
    if method.section is None:  # a method without settings (full) names no section
        assert method.config is None
    else:
        assert dataclasses.is_dataclass(method.config)
        assert typing.get_type_hints(SDRecipeConfig).get(method.section) is method.config, (
            f"SDRecipeConfig needs `{method.section}: {method.config.__name__}`"
        )
    check_sd_combination(sd_config(f"method={name}"))


def apply_sd(name: str, *overrides: str):
    """The recipe's order: the concept's tokens first, then everything frozen and the method's part unfrozen."""
    # the tiny tokenizer's words: "toy" is one of them, the default initializer ("object") is not
    cfg, method = sd_config(f"method={name}", "textual_inversion.initializer_token=toy", *overrides), SD_METHODS[name]
    parts = build_tiny_sd()
    concept = method.concept(parts.tokenizer, parts.text_encoder, cfg) if method.concept else None
    for module in (parts.vae, parts.text_encoder, parts.unet):
        module.requires_grad_(False)
    unet_params, te_params = method.trainable(parts.unet, parts.text_encoder, cfg)
    return cfg, method, parts, concept, unet_params, te_params


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("lora", []),
        ("lora", ["text_encoder.train=true"]),
        ("full", []),
        ("full", ["text_encoder.train=true"]),
        ("textual_inversion", ["textual_inversion.num_vectors=2", "textual_inversion.placeholder_token=<toy>"]),
    ],
)
def test_sd_trainable_hands_the_optimizer_exactly_the_parameters_that_train(name, overrides):
    cfg, method, parts, concept, unet_params, te_params = apply_sd(name, *overrides)
    modules = {"vae": parts.vae, "text_encoder": parts.text_encoder, "unet": parts.unet}
    trains = {k: [n for n, p in m.named_parameters() if p.requires_grad] for k, m in modules.items()}
    assert {id(p) for m in modules.values() for p in m.parameters() if p.requires_grad} == {
        id(p) for p in unet_params + te_params
    }
    assert not trains["vae"] and bool(te_params) == (cfg.text_encoder.train or name == "textual_inversion")
    count = method.trained_count(cfg, unet_params, te_params)
    if name == "lora":
        assert trains["unet"] and all("lora_" in n for n in trains["unet"] + trains["text_encoder"])
        assert count == sum(p.numel() for p in unet_params + te_params)
    elif name == "full":
        assert len(unet_params) == len(list(parts.unet.parameters()))
        assert count == sum(p.numel() for p in unet_params + te_params)
    else:  # the whole token table is handed over, but only the concept's rows count (the rest is put back)
        embedding = parts.text_encoder.get_input_embeddings().weight
        assert unet_params == [] and te_params == [embedding] and method.text_encoder_fp32
        assert concept is not None and len(concept.token_ids) == 2 and count == 2 * embedding.shape[1]
        assert "<toy> <toy>_1" in concept.instance_prompt and concept.training_prompt("any caption") != "any caption"
        assert "<toy>" in concept.sample_prompt and "<toy>_1" not in concept.sample_prompt
    if name != "textual_inversion":
        assert concept is None and not method.text_encoder_fp32


@pytest.mark.parametrize(
    "name,artifact",
    [
        ("lora", "pytorch_lora_weights.safetensors"),
        ("full", "pipeline"),
        ("textual_inversion", "learned_embeds.safetensors"),
    ],
)
def test_each_sd_method_saves_the_weights_it_trained(name, artifact, tmp_path):
    from safetensors.torch import load_file

    cfg, method, parts, concept, unet_params, te_params = apply_sd(name)
    with torch.no_grad():  # "training": an untrained LoRA would be refused, and the saved numbers must be these
        for p in unet_params + te_params:
            p.add_(0.01 * torch.randn_like(p))
    paths = method.save(tmp_path, parts, cfg, torch.float32)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [artifact] and paths[0].exists()
    if name == "lora":
        saved = load_file(paths[0])
        assert saved and all(k.startswith("unet.") for k in saved)  # the text encoder did not train
    elif name == "full":
        from diffusers import UNet2DConditionModel

        reloaded = UNet2DConditionModel.from_pretrained(paths[0] / "unet")
        assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), parts.unet.parameters()))
    else:
        embedding = parts.text_encoder.get_input_embeddings().weight
        assert concept is not None
        assert torch.equal(load_file(paths[0])["<concept>"], embedding[concept.token_ids].detach())


def test_sd_method_checks_run_from_the_recipe_check():
    with pytest.raises(UserError, match="already trains only the new embeddings"):
        check_sd_combination(sd_config("method=textual_inversion", "text_encoder.train=true"))
    prior = ["prior.enabled=true", "prior.class_dir=unused", "prior.class_prompt=a photo of a dog"]
    # the methods DreamBooth's prior can join are named from the table
    with pytest.raises(UserError, match=r"^prior.enabled is DreamBooth's: .* with method=lora or method=full$"):
        check_sd_combination(sd_config("method=textual_inversion", *prior))
    check_sd_combination(sd_config("method=full", *prior))
    with pytest.raises(UserError, match="lora.rank must be >= 1"):
        check_sd_combination(sd_config("method=lora", "lora.rank=0"))
    check_sd_combination(sd_config("method=full", "lora.rank=0"))  # another method's section is not its business
