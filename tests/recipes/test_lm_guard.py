"""The forgetting guard and distillation (finetune/train/objectives.py) change the loss exactly as documented.

Direct computations use full logits, torch's cross_entropy and kl_div, and a separate copy of the base model; the
objectives under test use the chunked divergence and the adapter-disabled base (no second copy)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from finetune.data.text import TextDataConfig, make_collate
from finetune.metrics.perplexity import summed_nll
from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer
from finetune.train import objectives as ob
from tests.recipes.test_lm import tiny  # noqa: F401  (the tiny LLaMA and data the LM recipe tests share)

BATCH, ROWS = 4, 1


def _items(n, seed, length=12):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        ids = torch.randint(3, 259, (length - i % 3,), generator=g)  # ragged: padding inside a batch
        labels = ids.clone()
        labels[0] = -100
        items.append({"input_ids": ids, "labels": labels})
    return items


@pytest.fixture
def mixed():
    """A guard batch: 3 domain rows then 1 general row, collated as the recipe does."""
    collate = ob.mixed_collate(make_collate(TextDataConfig(train_file="unused.jsonl"), build_tiny_tokenizer()))
    split = ob.MixedSplit(_items(6, 0), _items(3, 1))
    return collate([split[i] for i in (0, 1, 2, 7)])


def _lora(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.3)
    return peft_model


def _shifted(labels):
    return F.pad(labels, (0, 1), value=-100)[:, 1:]


def _logits(model, batch, rows=None):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    if rows is not None:
        inputs = {k: v[rows] for k, v in inputs.items()}
    return model(**inputs).logits


def test_mixed_batches_put_the_general_rows_in_every_batch_and_replay_a_resumed_epoch_exactly():
    fn = ob.mixed_batches(n_domain=10, n_general=3, batch_size=4, n_rows=1, seed=0)
    epoch0 = fn(0)
    assert len(epoch0) == 10 // 3
    for b in epoch0:
        assert len(b) == 4 and sum(i >= 10 for i in b) == 1 and all(i < 13 for i in b)
    assert fn(0) == epoch0 and fn(1) != epoch0  # a pure function of (seed, epoch): resume sees the same rows
    assert ob.general_rows(ob.GuardConfig(method="replay", fraction=0.25), 4) == 1


def test_replay_rows_are_ordinary_trained_rows_mean_ce_over_every_trained_token(mixed):
    model = build_tiny_llama()
    count = int((_shifted(mixed["labels"]) != -100).sum())
    got = summed_nll(model, mixed) / count
    logits = _logits(model, mixed)
    want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), _shifted(mixed["labels"]).reshape(-1))
    assert mixed["general_rows"].tolist() == [False, False, False, True]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def _direct_guard(base, model, batch, beta):
    """mean CE over the domain rows' tokens + beta * mean KL(base || model) over the general rows' tokens."""
    general = batch["general_rows"]
    logits = _logits(model, batch)
    targets = _shifted(batch["labels"])
    ce = F.cross_entropy(logits[~general].reshape(-1, logits.shape[-1]), targets[~general].reshape(-1))
    keep = targets[general] != -100
    with torch.no_grad():
        log_p = F.log_softmax(_logits(base, batch, general)[keep], -1)
    log_q = F.log_softmax(logits[general][keep], -1)
    return ce + beta * F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


def test_kl_guard_loss_is_ce_plus_beta_kl_to_the_adapter_disabled_base_value_and_gradient(mixed):
    base = build_tiny_llama()
    model = _lora(copy.deepcopy(base))
    beta = 0.7
    got = ob.kl_guard_loss(model, mixed, beta, None) / ob.domain_tokens(mixed)
    got.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    want = _direct_guard(base, model, mixed, beta)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    ce_only = ob.kl_guard_loss(model, mixed, 0.0, None) / ob.domain_tokens(mixed)
    assert got.item() - ce_only.item() > 1e-4  # the penalty really adds the KL
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7)


def test_kl_guard_for_full_fine_tuning_uses_the_precomputed_base_exact_with_the_whole_vocabulary(mixed):
    base = build_tiny_llama()
    collate = make_collate(TextDataConfig(train_file="unused.jsonl"), build_tiny_tokenizer())
    general = _items(3, 1)
    ref = ob.general_top_k(base, general, collate, k=259, batch_size=2)  # every log-prob kept: the exact KL
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.model.layers[1].parameters():
            p.add_(torch.randn_like(p) * 0.2)
    got = ob.kl_guard_loss(tuned, mixed, 0.5, ref) / ob.domain_tokens(mixed)
    assert got.item() == pytest.approx(_direct_guard(base, tuned, mixed, 0.5).item(), rel=1e-5)
    bound = ob.kl_guard_loss(tuned, mixed, 0.5, ob.general_top_k(base, general, collate, k=5, batch_size=2))
    assert bound.item() / ob.domain_tokens(mixed) < got.item()  # top-5: a lower bound on the penalty


def _plain_batch():
    collate = make_collate(TextDataConfig(train_file="unused.jsonl"), build_tiny_tokenizer())
    return collate(_items(3, 4))


@pytest.mark.parametrize("kind", ["forward", "reverse", "symmetric"])
def test_distillation_loss_equals_a_direct_computation(kind):
    teacher, student = build_tiny_llama(seed=1), build_tiny_llama(seed=2)
    batch = _plain_batch()
    cfg = ob.DistillConfig(teacher="unused", alpha=0.3, divergence=kind, temperature=2.0)
    got = ob.distill_loss(student, teacher, batch, cfg)
    targets = _shifted(batch["labels"])
    keep = targets != -100
    zs, zt = _logits(student, batch), _logits(teacher, batch).detach()
    ce = F.cross_entropy(zs[keep], targets[keep], reduction="sum")
    log_q, log_p = F.log_softmax(zs[keep] / 2.0, -1), F.log_softmax(zt[keep] / 2.0, -1)
    fwd = F.kl_div(log_q, log_p, log_target=True, reduction="sum")
    rev = F.kl_div(log_p, log_q, log_target=True, reduction="sum")
    div = {"forward": fwd, "reverse": rev, "symmetric": (fwd + rev) / 2}[kind] * 2.0**2
    assert got.item() == pytest.approx((0.7 * ce + 0.3 * div).item(), rel=1e-5)


def test_distillation_divergence_is_zero_when_the_student_is_the_teacher():
    model = build_tiny_llama()
    batch = _plain_batch()
    pure = ob.distill_loss(model, copy.deepcopy(model), batch, ob.DistillConfig(teacher="t", alpha=1.0))
    assert abs(pure.item()) < 1e-5
    half = ob.distill_loss(model, model, batch, ob.DistillConfig(teacher="t", alpha=0.5, divergence="symmetric"))
    assert half.item() == pytest.approx(0.5 * summed_nll(model, batch).item(), rel=1e-5)


def test_teacher_with_another_vocabulary_is_refused_in_one_line_and_writes_nothing(tmp_path, capsys):
    import recipes.train_lm as recipe

    tok = build_tiny_tokenizer()
    build_tiny_llama().save_pretrained(tmp_path / "student", safe_serialization=True)
    tok.save_pretrained(tmp_path / "student")
    tok.add_tokens(["<|teacher_only|>"])
    build_tiny_llama(vocab_size=260).save_pretrained(tmp_path / "teacher", safe_serialization=True)
    tok.save_pretrained(tmp_path / "teacher")
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"text": f"case {i} the court held"}) + "\n" for i in range(20))
    )
    out = tmp_path / "run"
    capsys.readouterr()  # the fixture's own save bars
    with pytest.raises(SystemExit):
        recipe.main(
            [
                f"model.name_or_path={tmp_path / 'student'}",
                f"data.train_file={tmp_path / 'train.jsonl'}",
                f"distill.teacher={tmp_path / 'teacher'}",
                f"train.output_dir={out}",
                "train.max_steps=2",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: distill.teacher") and "different vocabulary" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "guard, distill",
    [
        (dict(method="replay", train_file=None), {}),
        (dict(method="replay", fraction=1.0), {}),
        (dict(method="kl", beta=0.0, source="base_samples"), {}),
        ({}, dict(teacher="t", alpha=1.5)),
    ],
)
def test_bad_objective_settings_are_refused_before_any_model_loads(guard, distill, tmp_path):
    from finetune.errors import UserError

    with pytest.raises(UserError):
        ob.check_objectives(ob.GuardConfig(**guard), ob.DistillConfig(**distill), batch_size=4)


def _recipe_run(tiny, tmp_path, name, *extra):
    """The LM recipe in-process on test_lm's tiny LLaMA: forgetting measured, base samples cached under tmp_path,
    the guard's general text the part of data/general/validation.jsonl the measure does not use."""
    import recipes.train_lm as recipe
    from tests.conftest import ROOT
    from tests.recipes.test_lm import args_for

    general_train = tmp_path / "general_train.jsonl"
    lines = (ROOT / "data" / "general" / "validation.jsonl").read_text().splitlines()[8:]  # test_lm measures [:8]
    general_train.write_text("\n".join(lines) + "\n")
    out = tmp_path / name
    common = ["train.max_steps=10", "optim.lr=5e-2", "forgetting.samples=4", "forgetting.sample_tokens=48"]
    recipe.main(
        args_for(tiny, out, f"model.cache_dir={tmp_path / 'cache'}", f"guard.train_file={general_train}", *common)
        + ["export.verify=false", *extra]
    )
    return json.loads((out / "summary.json").read_text())


def test_recipe_reports_forgetting_and_the_kl_guard_keeps_the_model_closer_to_its_base(tiny, tmp_path, capsys):
    plain = _recipe_run(tiny, tmp_path, "plain", "method=lora")
    assert "drawn now" in capsys.readouterr().out
    guarded = _recipe_run(
        tiny, tmp_path, "kl", "method=lora", "guard.method=kl", "guard.beta=100", "guard.fraction=0.5"
    )
    assert "reused" in capsys.readouterr().out  # the base samples are drawn once per model and settings
    for summary in (plain, guarded):
        assert {"validation", "general_validation", "base_samples"} <= set(summary["perplexity_before"])
        assert set(summary["perplexity_after"]) == set(summary["perplexity_before"])
    kl_plain, kl_guarded = plain["forgetting"]["general_kl_to_base"], guarded["forgetting"]["general_kl_to_base"]
    assert 0 < kl_guarded < 0.8 * kl_plain, (kl_plain, kl_guarded)
    metrics = [json.loads(line) for line in (tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()]
    assert any("general_kl_to_base" in m and "base_samples_ppl" in m for m in metrics if m.get("split") == "eval")
    full = _recipe_run(tiny, tmp_path, "full", "method=full", "optim.lr=1e-3", "train.max_steps=2")
    assert set(full["forgetting"]) == {"general_kl_to_base_top64_lower_bound"}  # named as the bound it is
