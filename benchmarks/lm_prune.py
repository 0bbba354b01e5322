"""What pruning SmolLM2-135M-Instruct costs and saves: masks (Wanda / magnitude, unstructured and 2:4) and whole
decoder layers removed, each before and after the same short LoRA recovery, in one run.

    python benchmarks/lm_prune.py               # the table (~25 min on 2 cores): run it under the shared CPU lock
    python benchmarks/lm_prune.py --steps 2 --only dense,wanda50,drop2   # a smoke run of the pipeline

Each variant is made by the `finetune prune` command, as a user runs it, from the shipped SmolLM2 (GGUF, converted
once to fp32 safetensors). Calibration (Wanda's input norms, the layer scores): the first 8,192 tokens of the legal
training file (data/legal/train.jsonl), 32 sequences of 256 tokens; the scored files share nothing with it.
Recovery: the LM recipe (recipes/configs/legal_lora.yaml: LoRA r=16 on every linear layer, lr 1e-3, cosine, batch
4 x 256-token packed blocks of the legal training file, bf16 autocast) from the pruned directory
(model.name_or_path=DIR), the same --steps for every variant, eager (no compiled layers), no evaluation during the run.
The LoRA adapter is kept beside the pruned base (not merged): merging would make the masked weights dense again.

Measured per variant, on the model as loaded in fp32 (no autocast): parameters (all, and those not zero), forward
tokens/s (batch 4 x 256 tokens, no grad; all models timed round-robin at the end over --repeats rounds after a warm-up
round; the best pass and the median), and perplexity on the legal test split (data/legal/test.jsonl: domain) and general text (data/general/validation.jsonl), one document
per sequence up to 256 tokens, before and after recovery.

Results: benchmarks/results/lm_prune.md (and .json with the raw numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import lm_recipe_command  # noqa: E402  (after the path insert, as a script)

RESULTS = ROOT / "benchmarks" / "results" / "lm_prune.md"
CONFIG = ROOT / "recipes" / "configs" / "legal_lora.yaml"
CALIBRATION = ROOT / "data" / "legal" / "train.jsonl"
EVAL_FILES = {
    "legal test": ROOT / "data" / "legal" / "test.jsonl",
    "general": ROOT / "data" / "general" / "validation.jsonl",
}
# name: (what the table calls it, `finetune prune` arguments; None: the unpruned model itself)
VARIANTS: dict[str, tuple[str, list[str] | None]] = {
    "dense": ("unpruned", None),
    "wanda25": ("Wanda 25% unstructured", ["--method", "wanda", "--sparsity", "0.25"]),
    "wanda50": ("Wanda 50% unstructured", ["--method", "wanda", "--sparsity", "0.5"]),
    "magnitude50": ("magnitude 50% unstructured", ["--method", "magnitude", "--sparsity", "0.5"]),  # --only
    "wanda24": ("Wanda 2:4", ["--method", "wanda", "--n-m", "2:4"]),
    "drop2": ("2 layers removed", ["--method", "layers", "--drop", "2"]),
    "drop4": ("4 layers removed", ["--method", "layers", "--drop", "4"]),
    "drop6": ("6 layers removed", ["--method", "layers", "--drop", "6"]),
}
OPTIONAL = {"magnitude50"}  # left out of the default run (time); `--only ...,magnitude50` adds it
RECOVERY = [
    "optim.lr=1e-3",  # the recovery measured in benchmarks/results/lm_prune.md: plain LoRA at lr 1e-3, no guard
    "guard.method=none",  # (the main job's config since moved to lr 3e-4 with the KL guard)
    "model.compile_layers=false",
    "export.merged=false",
    "export.gguf=none",
    "data.validation_file=null",
    "data.general_validation_file=null",
    "data.test_file=null",
    "train.save_every=0",
    "train.progress_bar=false",
    "train.tensorboard=false",
]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def data_commit_of_corpora() -> str:
    """The last commit that changed the scored and trained corpora: the table says which data it measured."""
    cmd = ["git", "log", "-1", "--format=%h", "--", "data/legal", "data/general"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout.strip()


def base_dir() -> Path:
    """The shipped SmolLM2's safetensors conversion (made on first use), the directory every variant starts from."""
    from finetune.models.causal_lm import LMModelConfig, cache_root, convert_gguf, smollm2_gguf_path

    return convert_gguf(smollm2_gguf_path(), cache_root(LMModelConfig()))


def prune(name: str, args: list[str] | None, work: Path) -> tuple[Path, float]:
    """The variant's model directory (made with `finetune prune`) and the command's wall seconds."""
    if args is None:
        return base_dir(), 0.0
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "finetune.cli", "prune", "--model", str(base_dir()), *args, "--out", str(out)]
    if "magnitude" not in args:
        cmd += ["--calibration", str(CALIBRATION), "--calibration-tokens", "8192"]
    print(run(cmd, f"prune {name}").stdout.strip(), flush=True)
    return out, time.perf_counter() - started


def recover(model_dir: Path, work: Path, name: str, steps: int, extra: tuple[str, ...] = ()) -> dict:
    """The LM recipe's LoRA run from `model_dir` (plus `extra` overrides), in its own process as a user runs it;
    its summary.json."""
    out = work / f"{name}_lora"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        *lm_recipe_command(CONFIG),
        f"model.name_or_path={model_dir}",
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        f"scheduler.warmup_steps={min(5, steps - 1)}",
        *RECOVERY,
        *extra,
    ]
    started = time.perf_counter()
    run(cmd, f"recovery of {name}")
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("step_seconds", None)
    return {"adapter": str(out / "adapter"), "wall_seconds": round(time.perf_counter() - started, 1), **summary}


def load(model_dir: Path, adapter: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.models.causal_lm import configure_pad_token

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    configure_pad_token(tokenizer, model)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), tokenizer


def perplexities(model, tokenizer) -> dict[str, float]:
    import torch

    from finetune.data.text import TextDataConfig, build_text_datasets, make_collate
    from finetune.metrics.perplexity import dataset_batches, nll_and_tokens, perplexity_of

    ppl = {}
    for name, path in EVAL_FILES.items():
        cfg = TextDataConfig(train_file=str(path), max_length=256, pack=False)
        ds = build_text_datasets(cfg, tokenizer)["train"]
        with torch.no_grad():
            total, count = nll_and_tokens(model, dataset_batches(ds, make_collate(cfg, tokenizer), 8))
        ppl[name] = round(perplexity_of(total, count), 3)
    return ppl


def forward_tokens_per_second(rows: dict, repeats: int) -> dict[str, dict]:
    """Forward tokens/s of every variant's model as loaded (fp32, no grad, batch 4 x 256 random tokens), timed
    round-robin: one pass of each model per round, `repeats` rounds; best and median per model. Interleaved so that load
    from other processes on this shared machine falls on every variant alike rather than on whichever ran then."""
    import torch

    models = {name: load(Path(r["model_dir"]))[0] for name, r in rows.items()}
    vocab = next(iter(models.values())).config.vocab_size
    ids = torch.randint(0, vocab, (4, 256), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for name, model in models.items():
                started = time.perf_counter()
                model(input_ids=ids, use_cache=False)
                if round_:  # the first round warms the allocator and the kernels up
                    times[name].append(time.perf_counter() - started)
    return {
        name: {
            "best": round(ids.numel() / min(t), 1),  # the least disturbed pass on this shared machine
            "median": round(ids.numel() / statistics.median(t), 1),
            "seconds": [round(x, 4) for x in t],
        }
        for name, t in times.items()
    }


def measure(name: str, args: list[str] | None, work: Path, steps: int) -> dict:
    from finetune.prune import parameter_counts

    model_dir, prune_seconds = prune(name, args, work)
    model, tokenizer = load(model_dir)
    row = {
        "model_dir": str(model_dir),
        "prune_seconds": round(prune_seconds, 1),
        "parameters": parameter_counts(model),
        "perplexity_before": perplexities(model, tokenizer),
    }
    if (model_dir / "prune_report.json").is_file():
        report = json.loads((model_dir / "prune_report.json").read_text())
        row["removed_layers"] = report.get("removed_layers")
        row["layer_scores"] = report.get("layer_scores")
    del model
    row["recovery"] = recover(model_dir, work, name, steps)
    model, tokenizer = load(model_dir, row["recovery"]["adapter"])
    row["perplexity_after"] = perplexities(model, tokenizer)
    print(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'layer_scores'})}", flush=True)
    return row


def table(rows: dict) -> list[str]:
    dense = rows.get("dense")
    lines = [
        "| variant | parameters (nonzero / total) | forward tokens/s: best / median | legal test ppl: pruned -> recovered | "
        "general ppl: pruned -> recovered |",
        "|---|---|---|---|---|",
    ]
    for name in [n for n in VARIANTS if n in rows]:  # the .json stores rows sorted by name; the table keeps this order
        r = rows[name]
        p, b, a = r["parameters"], r["perplexity_before"], r["perplexity_after"]
        best, median = r["forward_tokens_per_second"]["best"], r["forward_tokens_per_second"]["median"]
        speed = f"{best:.0f} / {median:.0f}"
        if dense and name != "dense":
            ref = dense["forward_tokens_per_second"]
            speed += f" ({100 * (best / ref['best'] - 1):+.0f}% / {100 * (median / ref['median'] - 1):+.0f}%)"
        removed = f" (layers {', '.join(map(str, r['removed_layers']))})" if r.get("removed_layers") else ""
        lines.append(
            f"| {VARIANTS[name][0]}{removed} | {p['nonzero'] / 1e6:.1f}M / {p['total'] / 1e6:.1f}M | {speed} | "
            + " | ".join(f"{b[k]:.2f} -> {a[k]:.2f}" for k in EVAL_FILES)
            + " |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="LoRA recovery steps, the same for every variant")
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes per variant, round-robin")
    p.add_argument("--only", default="", help="comma-separated variants (default: all): " + ", ".join(VARIANTS))
    p.add_argument("--work", default=str(ROOT / "outputs" / "lm_prune"), help="where pruned models and runs go")
    p.add_argument("--results", default=str(RESULTS), help="markdown results file (a .json with raw numbers beside it)")
    p.add_argument("--rewrite", action="store_true", help="only rebuild the markdown from the results' .json")
    a = p.parse_args()
    if a.rewrite:
        write_markdown(json.loads(Path(a.results).with_suffix(".json").read_text()), Path(a.results))
        return
    from finetune.io import atomic_write_json
    from finetune.quiet import quiet_libraries

    quiet_libraries()
    names = [n.strip() for n in a.only.split(",") if n.strip()] or [n for n in VARIANTS if n not in OPTIONAL]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = {name: measure(name, VARIANTS[name][1], work, a.steps) for name in names}
    for name, speed in forward_tokens_per_second(rows, a.repeats).items():
        rows[name]["forward_tokens_per_second"] = speed
    data_commit = data_commit_of_corpora()
    raw = {
        "rows": rows,
        "command": " ".join(["python"] + sys.argv),
        "steps": a.steps,
        "data_commit": data_commit,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    atomic_write_json(Path(a.results).with_suffix(".json"), raw)
    write_markdown(raw, Path(a.results))


def mask_spread(rows: dict) -> str:
    """How far the masked rows' speeds land from the unpruned one's, best and median: the machine's noise."""
    dense = rows["dense"]["forward_tokens_per_second"]
    masked = [r["forward_tokens_per_second"] for n, r in rows.items() if n != "dense" and not r.get("removed_layers")]
    if not masked:
        return ""
    change = {k: [100 * (m[k] / dense[k] - 1) for m in masked] for k in ("best", "median")}
    return (
        f" The masked rows land {min(change['best']):+.0f}% to {max(change['best']):+.0f}% from the unpruned model "
        f"by their best pass and {min(change['median']):+.0f}% to {max(change['median']):+.0f}% by their median: "
        "the spread of this shared machine, not a speed-up."
    )


def write_markdown(raw: dict, results: Path) -> None:
    from finetune.io import atomic_write_text

    rows = raw["rows"]
    repeats = len(next(iter(rows.values()))["forward_tokens_per_second"]["seconds"])
    device = f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={raw['threads']})"
    text = "\n".join(
        [
            "# Pruning SmolLM2-135M-Instruct: masks and removed layers, before and after a LoRA recovery",
            "",
            f"Each variant made by `finetune prune` from SmolLM2-135M-Instruct (fp32); recovery: the LM recipe "
            f"(recipes/configs/legal_lora.yaml, LoRA r=16 on every linear layer) for {raw['steps']} steps of batch "
            "4 x 256 tokens from the pruned directory, the same for every row, adapter kept unmerged. Calibration for "
            "Wanda and the layer scores: the first 8,192 tokens of data/legal/train.jsonl. Perplexity on "
            "data/legal/test.jsonl and data/general/validation.jsonl (one document per sequence, up to 256 tokens) as "
            f"loaded in fp32; forward tokens/s: batch 4 x 256, no grad, fp32, models timed round-robin over {repeats} "
            "rounds (best: the least disturbed pass on this shared machine; the change is against the unpruned model's "
            f"best / median); on {device}, data at commit {raw['data_commit']}. Whole run: "
            f"{raw['wall_seconds'] / 60:.0f} min.",
            "",
            f"Command: `{raw['command']}`",
            "",
            *table(rows),
            "",
            "Unstructured and 2:4 masks save no CPU time here: the zeros are stored and multiplied like any other "
            "weight (dense kernels, the same parameter count on disk and in memory); 2:4 only pays on GPUs with sparse "
            "tensor cores and a sparse kernel, which this CPU run does not have." + mask_spread(rows) + " Removing "
            "layers is the only kind that stores less and runs faster.",
            "",
        ]
    )
    atomic_write_text(results, text)
    print(text)


if __name__ == "__main__":
    main()
