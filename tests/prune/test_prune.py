"""Pruning: masks zero exactly what was asked and survive save + stock reload with no mask buffers; a removed layer
is gone from the saved config and the reloaded model computes what the pruned one did; Wanda is not magnitude;
`finetune prune` refuses bad input in one line and writes nothing; the LM recipe recovers from a pruned directory."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from finetune.cli import main
from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer
from finetune.prune import (
    REPORT,
    PruneRequest,
    n_m_mask,
    prunable_linears,
    prune_model,
    save_pruned,
    unstructured_mask,
    wanda_score,
)
from tests.recipes.test_lm import args_for, run, tiny  # noqa: F401  (fixture: tiny LLaMA dir + legal/general JSONL)


def pruned(req: PruneRequest, **overrides):
    model = build_tiny_llama(**overrides)
    report = prune_model(model, build_tiny_tokenizer(), req)
    return model, report


def reload(model, report, path):
    save_pruned(model, build_tiny_tokenizer(), path, report)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def zeros_per_row(w: torch.Tensor) -> torch.Tensor:
    return (w == 0).sum(dim=1)


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_magnitude_zeroes_exactly_the_fraction_of_each_layer_and_survives_reload(sparsity, tmp_path):
    model, report = pruned(PruneRequest("magnitude", sparsity=sparsity))
    for name, linear in prunable_linears(model).items():
        assert int((linear.weight == 0).sum()) == round(sparsity * linear.weight.numel()), name
        assert report["layer_sparsity"][name] == pytest.approx(sparsity)
    again = reload(model, report, tmp_path / "m")
    for name, linear in prunable_linears(again).items():
        assert torch.equal(linear.weight, prunable_linears(model)[name].weight)
    assert torch.count_nonzero(again.model.embed_tokens.weight) == torch.count_nonzero(
        build_tiny_llama().model.embed_tokens.weight
    )  # embeddings (and the tied head) are never pruned


def test_wanda_zeroes_the_fraction_in_every_output_row(tiny, tmp_path):  # noqa: F811
    req = PruneRequest("wanda", sparsity=0.5, calibration=str(tiny / "train.jsonl"), calibration_tokens=1024)
    model, report = pruned(req)
    assert report["calibration_tokens_used"] == 1024
    for linear in prunable_linears(model).values():
        assert (zeros_per_row(linear.weight) == linear.in_features // 2).all()
    again = reload(model, report, tmp_path / "w")
    for linear in prunable_linears(again).values():
        assert (zeros_per_row(linear.weight) == linear.in_features // 2).all()


def test_two_four_leaves_exactly_two_zeros_in_every_group_of_four_after_reload(tiny, tmp_path):  # noqa: F811
    for method in ("magnitude", "wanda"):
        req = PruneRequest(method, n_m="2:4", calibration=str(tiny / "train.jsonl"), calibration_tokens=512)
        model, report = pruned(req)
        again = reload(model, report, tmp_path / method)
        for linear in prunable_linears(again).values():
            groups = linear.weight.reshape(linear.out_features, -1, 4)
            assert ((groups == 0).sum(dim=2) == 2).all()


def test_saved_weights_are_plain_no_mask_buffers_no_hooks(tmp_path):
    model, report = pruned(PruneRequest("magnitude", sparsity=0.5))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    save_pruned(model, build_tiny_tokenizer(), tmp_path / "m", report)
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any("weight_orig" in k or "weight_mask" in k for k in keys)
    assert keys == set(build_tiny_llama().state_dict()) - {"lm_head.weight"}  # tied head: saved once, as usual
    assert json.loads((tmp_path / "m" / REPORT).read_text())["request"]["sparsity"] == 0.5


def test_unstructured_and_n_m_masks_are_exact_even_with_ties():
    score = torch.ones(3, 8)  # all tied: a threshold would keep all or none
    assert (unstructured_mask(score, 0.25, per_row=True).sum(dim=1) == 6).all()
    assert unstructured_mask(score, 0.5, per_row=False).sum() == 12
    assert (n_m_mask(score, 1, 4).reshape(3, 2, 4).sum(dim=2) == 1).all()


def test_wanda_keeps_a_small_weight_on_a_loud_input_that_magnitude_drops():
    weight = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    loud_first = torch.tensor([10.0, 1.0, 1.0, 1.0])
    magnitude_keep = unstructured_mask(weight.abs(), 0.5, per_row=True)
    wanda_keep = unstructured_mask(wanda_score(weight, loud_first), 0.5, per_row=True)
    assert magnitude_keep.tolist() == [[False, False, True, True]]
    assert wanda_keep.tolist() == [[True, False, False, True]]


def test_wanda_differs_from_magnitude_on_a_model_with_uneven_activations(tiny):  # noqa: F811
    def loud(model):
        with torch.no_grad():  # channels 0-7 of every normed layer input 20x louder: uneven input norms
            for layer in model.model.layers:
                layer.input_layernorm.weight[:8] *= 20
        return model

    calib = dict(calibration=str(tiny / "train.jsonl"), calibration_tokens=512)
    by_magnitude, by_wanda = loud(build_tiny_llama()), loud(build_tiny_llama())
    prune_model(by_magnitude, build_tiny_tokenizer(), PruneRequest("magnitude", sparsity=0.5, **calib))
    prune_model(by_wanda, build_tiny_tokenizer(), PruneRequest("wanda", sparsity=0.5, **calib))
    q_m = by_magnitude.model.layers[0].self_attn.q_proj.weight
    q_w = by_wanda.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_m == 0, q_w == 0)
    # Wanda keeps more of the weights that read the loud channels
    assert (q_w[:, :8] != 0).sum() > (q_m[:, :8] != 0).sum()


def test_removing_layers_fixes_the_config_and_the_reload_computes_the_same_logits(tiny, tmp_path):  # noqa: F811
    base = build_tiny_llama()
    with torch.no_grad():  # layer 2 made a no-op (its residual branches write zeros): it must be the one removed
        base.model.layers[2].self_attn.o_proj.weight.zero_()
        base.model.layers[2].mlp.down_proj.weight.zero_()
    req = PruneRequest("layers", drop=2, calibration=str(tiny / "train.jsonl"), calibration_tokens=512)
    report = prune_model(base, build_tiny_tokenizer(), req)
    assert 2 in report["removed_layers"] and report["layer_scores"][2] == pytest.approx(0.0, abs=1e-6)
    assert len(report["kept_layers"]) == 2 and base.config.num_hidden_layers == 2
    again = reload(base, report, tmp_path / "l")
    saved = json.loads((tmp_path / "l" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2 and len(again.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in again.model.layers] == [0, 1]
    ids = torch.randint(3, 250, (2, 24))
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, base(ids).logits, atol=1e-6)
        greedy = again.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)  # the KV cache has 2 slots now
        by_hand = ids[:1, :8]
        for _ in range(6):
            by_hand = torch.cat([by_hand, again(by_hand).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(greedy, by_hand)


def prune_cli(tiny, out, *args):  # noqa: F811
    main(["prune", "--model", str(tiny / "model"), "--out", str(out), *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "magnitude", "--sparsity", "1.0"], "outside [0, 1)"),
        (["--method", "magnitude", "--sparsity", "-0.1"], "outside [0, 1)"),
        (["--method", "magnitude", "--n-m", "1:3"], "do not divide the input width 32"),
        (["--method", "magnitude", "--n-m", "4:4"], "must be at least 1 and below M"),
        (["--method", "magnitude", "--n-m", "two:four"], "is not N:M"),
        (["--method", "magnitude"], "exactly one of --sparsity S or --n-m"),
        (["--method", "layers", "--drop", "4"], "would remove every decoder layer (the model has 4)"),
        (["--method", "layers", "--drop", "9"], "would remove every decoder layer"),
        (["--method", "layers", "--drop", "0"], "at least 1"),
        (["--method", "wanda", "--sparsity", "0.5"], "pass --calibration"),
        (["--method", "layers", "--drop", "1", "--calibration", "/nonexistent.jsonl"], "does not exist"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(tiny, tmp_path, capsys, args, message):  # noqa: F811
    if args[1] == "layers" and "--calibration" not in args:
        args = [*args, "--calibration", str(tiny / "train.jsonl"), "--calibration-tokens", "256"]
    with pytest.raises(SystemExit) as e:
        prune_cli(tiny, tmp_path / "out", *args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and message in err, err
    assert list(tmp_path.iterdir()) == []  # no output directory, no temporary beside it


def test_an_out_that_holds_files_is_refused_and_left_alone(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        prune_cli(tiny, out, "--method", "magnitude", "--sparsity", "0.5")
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_the_lm_recipe_recovers_with_lora_from_a_pruned_directory(tiny, tmp_path, capsys):  # noqa: F811
    pruned_dir = tmp_path / "pruned"
    prune_cli(tiny, pruned_dir, "--method", "layers", "--drop", "1", "--calibration", str(tiny / "train.jsonl"))
    assert "pruned model written" in capsys.readouterr().out
    assert json.loads((pruned_dir / "config.json").read_text())["num_hidden_layers"] == 3
    run_dir = tmp_path / "recovered"
    run(
        [
            *args_for(tiny, run_dir, "method=lora", "optim.lr=5e-2", "train.max_steps=12", "train.eval_every=12"),
            f"model.name_or_path={pruned_dir}",
        ]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["perplexity_after"]["validation"] < summary["perplexity_before"]["validation"]
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
