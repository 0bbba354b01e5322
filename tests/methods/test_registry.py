"""The LM method table: every entry is wired into the recipe's config, and applying it trains exactly its part."""

from __future__ import annotations

import dataclasses
import typing
from types import SimpleNamespace

import pytest
import torch

from finetune.config import load_config, to_dict
from finetune.errors import UserError
from finetune.methods.registry import LM_METHODS, LMMethodName
from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer
from recipes.train_lm import LMRecipeConfig, check_combination

ONE_PROCESS = SimpleNamespace(num_processes=1, mixed_precision="no")  # what apply reads of the accelerator


def recipe_config(*overrides: str) -> LMRecipeConfig:
    return load_config(LMRecipeConfig, None, ["data.train_file=unused.jsonl", *overrides])


def test_the_method_names_the_config_accepts_are_the_table_entries():
    assert set(typing.get_args(LMMethodName)) == set(LM_METHODS)
    assert typing.get_type_hints(LMRecipeConfig)["method"] == LMMethodName


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
