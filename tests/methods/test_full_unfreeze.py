"""Full fine-tuning: layer groups, discriminative lrs, static freezing and scheduled gradual unfreezing."""

from __future__ import annotations

import pytest
import torch

from finetune.errors import UserError
from finetune.methods.full import (
    FullMethodConfig,
    GradualUnfreezer,
    apply_static_freeze,
    build_param_groups,
    describe_layer_groups,
    layer_groups,
)
from finetune.models.causal_lm import build_tiny_llama

IDS = torch.randint(3, 259, (2, 10), generator=torch.Generator().manual_seed(0))


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def moved(model, before, names) -> list[bool]:
    params = dict(model.named_parameters())
    return [not torch.equal(params[n], before[n]) for n in names]


def train_step(model, optimizer, unfreezer, step: int, epoch: int = 0) -> None:
    """The loop's order: update the schedule, forward/backward, mask frozen grads, clip, step."""
    unfreezer.update(step, epoch)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    unfreezer.mask_grads(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()


# --------------------------------------------------------------------------------------------------------
# Layer groups and param groups


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("per_group", [1, 2, 3])
def test_every_parameter_is_in_exactly_one_group(tied, per_group):
    model = build_tiny_llama(tie_word_embeddings=tied)
    groups = layer_groups(model, per_group)
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each once, none missing
    layer_count = -(-4 // per_group)
    assert len(groups) == layer_count + (1 if tied else 2)  # [embeddings] + layer groups + head
    assert "model.norm.weight" in groups[-1]
    if tied:  # the shared embedding/lm_head matrix trains with the head (fastai's LM splitter)
        assert "model.embed_tokens.weight" in groups[-1]
    else:
        assert groups[0] == ["model.embed_tokens.weight"] and "lm_head.weight" in groups[-1]


def test_groups_are_ordered_bottom_to_top():
    labels = [g.label for g in describe_layer_groups(build_tiny_llama(tie_word_embeddings=False), 3)]
    assert labels == ["embeddings", "layers 0-2", "layer 3", "head"]


def test_param_groups_cover_all_params_even_frozen_ones_with_discriminative_lrs():
    model = build_tiny_llama(tie_word_embeddings=False)
    for p in model.model.layers[0].parameters():  # the trap: a frozen group must still be in the optimizer
        p.requires_grad_(False)
    groups = build_param_groups(model, FullMethodConfig(discriminative_factor=2.6), base_lr=1e-3, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert [g["group_index"] for g in groups] == list(range(6))
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 / 2.6 ** (5 - g["group_index"]))
        assert g["weight_decay"] == 0.1
    assert groups[-1]["lr"] == 1e-3 and groups[1]["group_name"] == "layer 0"
    torch.optim.AdamW(groups)  # a valid optimizer spec, extra keys included


# --------------------------------------------------------------------------------------------------------
# Gradual unfreezing in training


@pytest.mark.parametrize("set_requires_grad", [False, True])
def test_frozen_groups_stay_bit_identical_and_unfrozen_ones_train(set_requires_grad):
    model = build_tiny_llama(seed=1)  # tied: groups = layer 0..3, head
    cfg = FullMethodConfig(unfreeze="steps", unfreeze_every=2, start_unfrozen_groups=1)
    optimizer = torch.optim.AdamW(build_param_groups(model, cfg, base_lr=1e-2, weight_decay=0.1))
    unfreezer = GradualUnfreezer(model, cfg, set_requires_grad=set_requires_grad, log=lambda _: None)
    groups = layer_groups(model)
    for step in range(8):
        before = snapshot(model)
        train_step(model, optimizer, unfreezer, step)
        frozen = unfreezer.frozen_groups()
        assert frozen == list(range(len(groups) - 1 - step // 2))
        for index, names in enumerate(groups):
            changed = moved(model, before, names)
            if index in frozen:  # weights and weight decay untouched, no optimizer state either
                assert not any(changed), (step, index)
                assert all(not optimizer.state[p] for p in _params(model, names))
            else:
                assert any(changed), (step, index)
    # Layer 2 started frozen, unfroze at step 4, and then trained: the optimizer had it from step 0.
    assert unfreezer.frozen_groups() == [0]


def test_set_requires_grad_toggles_and_default_keeps_all_trainable():
    model = build_tiny_llama()
    cfg = FullMethodConfig(unfreeze="steps", unfreeze_every=1, start_unfrozen_groups=2)
    GradualUnfreezer(model, cfg, log=lambda _: None)
    assert all(p.requires_grad for p in model.parameters())  # DDP-safe default: enforcement by grad masking
    unfreezer = GradualUnfreezer(model, cfg, set_requires_grad=True, log=lambda _: None)
    grads = [all(p.requires_grad for p in _params(model, names)) for names in layer_groups(model)]
    assert grads == [False, False, False, True, True]
    unfreezer.update(step=1)  # 2 + 1 groups: head, layer 3, layer 2
    assert model.model.layers[2].mlp.up_proj.weight.requires_grad
    assert not model.model.layers[1].mlp.up_proj.weight.requires_grad


def test_unfreeze_logs_one_line_per_group():
    lines = []
    model = build_tiny_llama()
    unfreezer = GradualUnfreezer(model, FullMethodConfig(unfreeze="steps", unfreeze_every=10), log=lines.append)
    assert not unfreezer.update(step=9) and lines == []
    assert unfreezer.update(step=25)  # two intervals at once: two groups, two lines
    assert lines == [
        "unfreeze: group 3 (layer 3) now trains; 2/5 groups trainable",
        "unfreeze: group 2 (layer 2) now trains; 3/5 groups trainable",
    ]
    assert unfreezer.update(step=10_000) and not unfreezer.update(step=20_000)  # capped at all groups
    assert unfreezer.frozen_groups() == [] and len(lines) == 4  # the head started unfrozen


def test_epoch_schedule():
    unfreezer = GradualUnfreezer(
        build_tiny_llama(), FullMethodConfig(unfreeze="epochs", unfreeze_every=2), log=lambda _: None
    )
    unfreezer.update(step=500, epoch=1)
    assert unfreezer.frozen_groups() == [0, 1, 2, 3]  # steps do not count in epoch mode
    unfreezer.update(step=501, epoch=2)
    assert unfreezer.frozen_groups() == [0, 1, 2]


def test_plateau_mode_unfreezes_after_patience():
    model = build_tiny_llama()
    unfreezer = GradualUnfreezer(model, FullMethodConfig(unfreeze="plateau", plateau_patience=2), log=lambda _: None)
    assert not unfreezer.update(step=10_000)  # steps do nothing in plateau mode
    assert not unfreezer.on_eval(improved=False)
    assert not unfreezer.on_eval(improved=True)  # improvement resets the count
    assert not unfreezer.on_eval(improved=False)
    assert unfreezer.on_eval(improved=False)
    assert unfreezer.frozen_groups() == [0, 1, 2]
    for _ in range(20):
        unfreezer.on_eval(improved=False)
    assert unfreezer.frozen_groups() == []


def test_state_dict_round_trip_resumes_exactly():
    model = build_tiny_llama()
    cfg = FullMethodConfig(unfreeze="plateau", plateau_patience=3)
    first = GradualUnfreezer(model, cfg, log=lambda _: None)
    for improved in (False, False, False, False):
        first.on_eval(improved)
    state = first.state_dict()
    resumed = GradualUnfreezer(build_tiny_llama(), cfg, set_requires_grad=True, log=lambda _: None)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state == {"unfrozen_groups": 2, "bad_evals": 1, "num_groups": 5}
    assert resumed.frozen_groups() == first.frozen_groups() == [0, 1, 2]
    assert not resumed.on_eval(False) and resumed.on_eval(False)  # the pending bad eval carried over
    other = GradualUnfreezer(build_tiny_llama(), FullMethodConfig(unfreeze="plateau", layers_per_group=2), log=print)
    with pytest.raises(UserError, match="same layers_per_group"):
        other.load_state_dict(state)


# --------------------------------------------------------------------------------------------------------
# Static freezing


def test_static_freeze_keeps_bottom_layers_exact_forever():
    model = build_tiny_llama(tie_word_embeddings=False, seed=2)
    cfg = FullMethodConfig(freeze_first_n_layers=2)
    frozen_names = apply_static_freeze(model, cfg)
    assert frozen_names == [n for g in layer_groups(model)[:3] for n in g]  # embeddings, layer 0, layer 1
    optimizer = torch.optim.AdamW(build_param_groups(model, cfg, base_lr=1e-2, weight_decay=0.1))
    unfreezer = GradualUnfreezer(model, cfg, log=lambda _: None)
    assert unfreezer.frozen_groups() == [0, 1, 2]
    before = snapshot(model)
    for step in range(3):
        train_step(model, optimizer, unfreezer, step)
    assert not any(moved(model, before, frozen_names))
    assert all(moved(model, before, ["model.layers.2.mlp.up_proj.weight", "lm_head.weight"]))


def test_gradual_unfreezing_never_reaches_statically_frozen_groups():
    model = build_tiny_llama()
    cfg = FullMethodConfig(freeze_first_n_layers=2, unfreeze="steps", unfreeze_every=1)
    unfreezer = GradualUnfreezer(model, cfg, set_requires_grad=True, log=lambda _: None)
    unfreezer.update(step=100)
    assert unfreezer.frozen_groups() == [0, 1]
    assert not model.model.layers[1].self_attn.q_proj.weight.requires_grad


# --------------------------------------------------------------------------------------------------------
# User errors


def test_mask_grads_refuses_another_models_optimizer():
    unfreezer = GradualUnfreezer(build_tiny_llama(), FullMethodConfig(unfreeze="steps"), log=lambda _: None)
    stranger = torch.optim.SGD(build_tiny_llama().parameters(), lr=0.1)
    with pytest.raises(UserError, match="not this model's"):
        unfreezer.mask_grads(stranger)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (FullMethodConfig(freeze_first_n_layers=5), "has 4 layers"),
        (FullMethodConfig(freeze_first_n_layers=1, layers_per_group=2), "multiple of"),
        (FullMethodConfig(layers_per_group=0), "layers_per_group"),
        (FullMethodConfig(discriminative_factor=0.0), "discriminative_factor"),
        (FullMethodConfig(unfreeze="steps", unfreeze_every=0), "unfreeze_every"),
        (FullMethodConfig(unfreeze="plateau", start_unfrozen_groups=0), "start_unfrozen_groups"),
        (FullMethodConfig(unfreeze="sometimes"), "unfreeze"),
    ],
)
def test_bad_full_settings_are_user_errors(cfg, match):
    with pytest.raises(UserError, match=match):
        GradualUnfreezer(build_tiny_llama(), cfg, log=lambda _: None)


def _params(model, names):
    params = dict(model.named_parameters())
    return [params[n] for n in names]
