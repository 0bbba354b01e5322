"""LM artifacts that work on another machine: the adapter names its base by hub id, the run has one complete model
card with the measured figures, and the card's loading snippets run (tiny LLaMA recipe runs, offline)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from tests.recipes.test_lm import args_for, run, tiny  # noqa: F401  (tiny: the module-scoped model fixture)

HUB_ID = "finetune-tests/tiny-llama"  # what transformers 4.x wrote as config.json's _name_or_path on save


def train(tiny, out, model_dir):
    run(
        args_for(
            tiny,
            out,
            f"model.name_or_path={model_dir}",
            "train.max_steps=4",
            "train.eval_every=2",
            "optim.lr=5e-2",
            "lora.dropout=0.0",
            "export.merged=true",
        )
    )
    return json.loads((out / "summary.json").read_text())


def load_snippets(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card.split("## Load", 1)[1].split("## Config", 1)[0], re.S)


def run_snippet(code: str, where, monkeypatch):
    """Run a card snippet as a user would, from the card's directory; returns the model it builds."""
    monkeypatch.chdir(where)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the project's own generated card, checked here
    return scope["model"].eval()


def logits(model, ids=None):
    ids = torch.arange(3, 40)[None] if ids is None else ids
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def hub_named_run(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_named")
    model_dir = shutil.copytree(tiny / "model", root / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "_name_or_path": HUB_ID}))
    return root / "out", model_dir, train(tiny, root / "out", model_dir)


def test_the_adapter_records_the_hub_id_not_this_machines_path(hub_named_run):
    out, model_dir, _ = hub_named_run
    for adapter in (out / "adapter", out / "best" / "adapter"):
        assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID


def test_one_complete_card_with_the_measured_figures_and_no_peft_template(hub_named_run):
    out, model_dir, summary = hub_named_run
    card = (out / "README.md").read_text()
    for readme in out.rglob("README.md"):
        assert "[More Information Needed]" not in readme.read_text(), readme
    pointer = (out / "adapter" / "README.md").read_text()
    assert "README.md of the run directory" in pointer and f"base_model: {HUB_ID}" in pointer
    assert f"base_model: {HUB_ID}" in card and str(model_dir.resolve()) in card  # hub id, and the local fallback
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert "r=8" in card and "lr 0.05" in card and f"train: `{data['train_file']}`" in card
    for split, after in summary["perplexity_after"].items():
        assert f"| {split} | {summary['perplexity_before'][split]:.2f} | {after:.2f} |" in card


def test_the_adapter_loads_on_a_given_base_and_the_offline_snippet_runs(hub_named_run, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, model_dir, _ = hub_named_run
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    base_logits = logits(base)
    adapted = logits(PeftModel.from_pretrained(base, out / "adapter").eval())
    assert (adapted - base_logits).abs().max() > 1e-3
    online, offline = load_snippets((out / "README.md").read_text())
    assert f'from_pretrained("{model_dir.resolve()}")' in offline and "AutoPeftModelForCausalLM" in online
    torch.testing.assert_close(logits(run_snippet(offline, out, monkeypatch)), adapted, atol=1e-5, rtol=1e-5)


def test_a_base_without_a_hub_id_is_recorded_by_its_directory_and_the_snippet_runs(tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    train(tiny, out, tiny / "model")
    recorded = json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((tiny / "model").resolve())
    card = (out / "README.md").read_text()
    assert "base_model:" not in card and "No hub id is known" in card
    (snippet,) = load_snippets(card)
    model = run_snippet(snippet, out, monkeypatch)  # AutoPeftModelForCausalLM through the recorded directory
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    torch.testing.assert_close(logits(model), logits(merged), atol=1e-4, rtol=1e-4)
