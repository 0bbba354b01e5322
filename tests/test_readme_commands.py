"""Every command in README.md's ```bash blocks runs and exits 0, so the documentation cannot drift from the code.

Each README command needs a row in COMMANDS: `Tiny` runs the README's own command line with a few arguments swapped
(the real model -> a tiny one, output paths -> a temporary folder) and overrides appended (a 60-step job -> 2 steps);
`NotRun` says why a command is not run here. A README command without a row fails the test, and so does a row whose
command left the README. Commands run in README order, so later ones use what earlier ones wrote (the main job's
adapter), as a reader following the README would.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, subprocess_env
from tests.recipes.test_lm import tiny  # noqa: F401  (fixture: tiny LLaMA dir + small JSONL files)


@dataclass
class Tiny:
    """Run the README command with whole arguments swapped (`replace`) and arguments appended (`extra`).
    "{tiny}" is the tiny LLaMA directory, "{tmp}" this test's folder."""

    replace: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)


@dataclass
class NotRun:
    reason: str


TINY_LM = {"smollm2-135m-instruct": "{tiny}/model", "outputs/legal_lora/adapter": "{tmp}/outputs/legal_lora/adapter"}
# the main job (legal_lora.yaml: SmolLM2, 60 steps, compiled layers) on the tiny LLaMA for 2 steps, same code path
# (overwrite: the README shows the main job twice, through accelerate launch and finetune train; the last one wins)
MAIN_JOB_TINY = [
    "model.name_or_path={tiny}/model",
    "model.compile_layers=false",
    "train.max_steps=2",
    "train.output_dir={tmp}/outputs/legal_lora",
    "train.overwrite_output_dir=true",
    "export.gguf=none",  # the tiny tokenizer is bytes-only: see the gguf row
    "train.tensorboard=false",
    "train.progress_bar=false",
    "eval.max_batches=1",
]

# the walkthrough's folders of documents: written by the `inputs` fixture from the shipped legal train / test splits
MY_CORPUS = {
    "data.train_file=my_corpus/": "data.train_file={tmp}/my_corpus/",
    "data.test_file=my_corpus_test/": "data.test_file={tmp}/my_corpus_test/",
    "my_corpus_test/": "{tmp}/my_corpus_test/",
}

COMMANDS: dict[str, Tiny | NotRun] = {
    "make demo": NotRun("sets up .venv and runs the main job for minutes; the main job's own command is the next row"),
    "make test": NotRun("runs this test suite"),
    "accelerate launch --config_file accelerate_config.yaml recipes/train_lm.py --config recipes/configs/legal_lora.yaml": Tiny(
        extra=MAIN_JOB_TINY
    ),
    "finetune train lm --config recipes/configs/legal_lora.yaml": Tiny(extra=MAIN_JOB_TINY),
    "finetune inspect-data recipes/configs/legal_lora.yaml": Tiny(extra=["model.name_or_path={tiny}/model"]),
    "finetune eval --model smollm2-135m-instruct --adapter outputs/legal_lora/adapter --data data/legal/test.jsonl": Tiny(
        replace=TINY_LM
    ),
    "finetune generate --model smollm2-135m-instruct --adapter outputs/legal_lora/adapter --prompt 'The Licensee shall'": Tiny(
        replace=TINY_LM, extra=["--max-new-tokens", "8"]
    ),
    "finetune export merge --model smollm2-135m-instruct --adapter outputs/legal_lora/adapter --out merged/": Tiny(
        replace={**TINY_LM, "merged/": "{tmp}/merged/"}
    ),
    # the tiny LLaMA's tokenizer is bytes-only (no BPE merges), which GGUF's gpt2 tokenizer model cannot hold
    "finetune export gguf --model smollm2-135m-instruct --adapter outputs/legal_lora/adapter --out legal.q8_0.gguf --type q8_0": NotRun(
        "the tiny LLaMA's bytes-only tokenizer has no GGUF form; tests/export/test_gguf.py runs this command on a tiny "
        "model with a BPE tokenizer and reads the file back with transformers' GGUF loader"
    ),
    "finetune export quantized --bits 8 --model smollm2-135m-instruct --adapter outputs/legal_lora/adapter --out legal-int8/": Tiny(
        replace={**TINY_LM, "legal-int8/": "{tmp}/legal-int8/"}
    ),
    "finetune inspect-data recipes/configs/legal_lora.yaml data.train_file=my_corpus/ data.validation_file=null "
    "data.validation_fraction=0.1 data.test_file=my_corpus_test/": Tiny(
        replace=MY_CORPUS, extra=["model.name_or_path={tiny}/model"]
    ),
    "finetune train lm --config recipes/configs/legal_lora.yaml data.train_file=my_corpus/ data.validation_file=null "
    "data.validation_fraction=0.1 data.test_file=my_corpus_test/ train.output_dir=outputs/my_corpus": Tiny(
        replace={**MY_CORPUS, "train.output_dir=outputs/my_corpus": "train.output_dir={tmp}/outputs/my_corpus"},
        extra=[a for a in MAIN_JOB_TINY if not a.startswith("train.output_dir")],
    ),
    "finetune eval --model smollm2-135m-instruct --adapter outputs/my_corpus/adapter --data my_corpus_test/": Tiny(
        replace={**TINY_LM, **MY_CORPUS, "outputs/my_corpus/adapter": "{tmp}/outputs/my_corpus/adapter"}
    ),
    "finetune export gguf --model smollm2-135m-instruct --adapter outputs/my_corpus/adapter --out my_corpus.q8_0.gguf --type q8_0": NotRun(
        "as the main job's gguf row: the tiny LLaMA's bytes-only tokenizer has no GGUF form"
    ),
    "finetune prune --model smollm2-135m-instruct --method layers --drop 4 --calibration data/legal/train.jsonl "
    "--out smollm2-drop4/": Tiny(
        replace={**TINY_LM, "4": "2", "smollm2-drop4/": "{tmp}/smollm2-drop4/"}
    ),  # tiny: 4 layers
    "finetune prune --model smollm2-135m-instruct --method wanda --n-m 2:4 --calibration data/legal/train.jsonl "
    "--out smollm2-2of4/": Tiny(replace={**TINY_LM, "smollm2-2of4/": "{tmp}/smollm2-2of4/"}),
    "finetune export kohya --lora out/pytorch_lora_weights.safetensors --out lora_kohya.safetensors": Tiny(
        replace={
            "out/pytorch_lora_weights.safetensors": "{tmp}/out/pytorch_lora_weights.safetensors",
            "lora_kohya.safetensors": "{tmp}/lora_kohya.safetensors",
        }
    ),
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks as shell words re-joined (comments dropped, `\\` continuations joined,
    quoting normalised by shlex: README's "The Licensee shall" is the key's 'The Licensee shall')."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def argv_for(command: str, row: Tiny, ctx: dict[str, str]) -> list[str]:
    words = [row.replace.get(w, w) for w in shlex.split(command)] + row.extra
    words = [w.format(**ctx) for w in words]
    program = Path(sys.executable).with_name(words[0])  # the venv's console scripts: finetune, accelerate
    return [str(program) if program.is_file() else words[0], *words[1:]]


@pytest.fixture(scope="module")
def readme() -> list[str]:
    return readme_commands((ROOT / "README.md").read_text())


def test_every_readme_command_has_a_row_and_every_row_is_in_the_readme(readme):
    missing = [c for c in readme if c not in COMMANDS]
    assert not missing, f"README commands with no row in COMMANDS (add a Tiny or NotRun row): {missing}"
    stale = [c for c in COMMANDS if c not in readme]
    assert not stale, f"rows for commands the README no longer shows (remove or update them): {stale}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny):  # noqa: F811
    """What the README's commands expect to exist before they run, on tiny models: an SD LoRA in out/."""
    from finetune.export.sd import save_sd_lora
    from finetune.methods.sd_lora import SDLoraConfig, add_lora, lora_layers
    from finetune.models.sd import build_tiny_sd

    tmp = tmp_path_factory.mktemp("readme")
    unet, cfg = build_tiny_sd().unet, SDLoraConfig(rank=4, alpha=8)
    add_lora(unet, cfg, cfg.target_modules, "UNet")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # as if trained: an all-zero LoRA is refused
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    save_sd_lora(tmp / "out", *lora_layers(unet))
    for folder, split, n in (("my_corpus", "train", 40), ("my_corpus_test", "test", 6)):  # one .txt per document
        (tmp / folder).mkdir()
        for i, line in enumerate((ROOT / "data" / "legal" / f"{split}.jsonl").read_text().splitlines()[:n]):
            (tmp / folder / f"doc_{i:03d}.txt").write_text(json.loads(line)["text"], encoding="utf-8")
    return {"tiny": str(tiny), "tmp": str(tmp)}


def test_readme_commands_run_and_exit_0(readme, inputs):
    failures = []
    for command in dict.fromkeys(readme):  # a command shown twice runs once
        row = COMMANDS.get(command)
        if not isinstance(row, Tiny):
            continue  # NotRun rows say why; a missing row fails the test above
        argv = argv_for(command, row, inputs)
        proc = subprocess.run(argv, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            failures.append(f"{command}\n  ran: {shlex.join(argv)}\n  exit {proc.returncode}: {proc.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    tmp = Path(inputs["tmp"])
    assert (tmp / "outputs" / "legal_lora" / "adapter" / "adapter_config.json").is_file()  # the commands really ran
    assert (tmp / "merged" / "config.json").is_file() and (tmp / "lora_kohya.safetensors").is_file()
    assert (tmp / "smollm2-drop4" / "prune_report.json").is_file() and (tmp / "smollm2-2of4" / "config.json").is_file()
    summary = json.loads((tmp / "outputs" / "my_corpus" / "summary.json").read_text())
    assert {"validation", "test"} <= set(summary["perplexity_after"])  # the folder run measured its held-out splits
