"""bf16 LoRA vs NF4 QLoRA vs int8 LoRA on the main job, then what the quantized exports cost, in one run.

    python benchmarks/lm_quantization.py             # the main job's 60 steps, three runs + exports (~15 min, 2 cores)
    python benchmarks/lm_quantization.py --steps 2   # a smoke run of the whole pipeline

Training: recipes/configs/legal_lora.yaml (SmolLM2-135M-Instruct, the legal corpus, batch 4 x 256-token packed
blocks, LoRA r=16 on every linear layer, 60 steps, bf16 autocast from accelerate_config.yaml), each variant in its own
`accelerate launch ... recipes/train_lm.py` process as a user runs it, with model.quantization=none | nf4 | int8.
All three run eager (model.compile_layers=false: torch.compile cannot trace bitsandbytes' NF4 layers), so the bf16
row is the main job without its compile. Peak memory, tokens/s and the before/after perplexities on the
template-disjoint legal test split (domain), general text and the base model's own samples (forgetting) come from
each run's summary.json (evaluated at the end only; no checkpoints or GGUF written).

Exports: the bf16 LoRA run's merged model (fp32, merged/) as it is, saved in bf16, and through
`finetune export quantized --bits 8` and `--bits 4`; each directory reloaded with a plain
`AutoModelForCausalLM.from_pretrained(DIR)` and scored on the legal test split (data/legal/test.jsonl) and general
text (data/general/validation.jsonl), one document per sequence (up to 256 tokens), as loaded (no autocast).

Results: benchmarks/results/lm_quantization.md (and .json with the raw numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import lm_recipe_command  # noqa: E402  (after the path insert, as a script)

RESULTS = ROOT / "benchmarks" / "results" / "lm_quantization.md"
CONFIG = ROOT / "recipes" / "configs" / "legal_lora.yaml"
COMMON = ["train.progress_bar=false", "train.tensorboard=false", "model.compile_layers=false", "export.merged=true"]
COMMON += ["train.eval_every=0", "train.save_every=0", "export.gguf=none"]  # evaluate at the end only; no GGUF
RUNS = {
    "none": "bf16 LoRA (full-precision base, bf16 autocast)",
    "nf4": "NF4 QLoRA (bitsandbytes 4-bit base)",
    "int8": "int8 LoRA (torchao int8 weight-only base)",
}
EVAL_FILES = {
    "legal test": ROOT / "data" / "legal" / "test.jsonl",
    "general": ROOT / "data" / "general" / "validation.jsonl",
}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def train(kind: str, work: Path, steps: int | None) -> dict:
    """One recipe run in its own process; its summary.json, less the per-step times."""
    out = work / f"train_{kind}"
    cmd = [
        *lm_recipe_command(CONFIG),
        f"train.output_dir={out}",
        f"model.quantization={kind}",
        *COMMON,
        *([f"train.max_steps={steps}"] if steps else []),
    ]
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("step_seconds", None)
    return {"wall_seconds": round(time.perf_counter() - started, 1), "out": str(out), "summary": summary}


def export_variants(merged: Path, work: Path) -> dict[str, Path]:
    """The merged fp32 model, a bf16 copy, and the two quantized exports, each a directory from_pretrained reads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16 = work / "merged_bf16"
    AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(merged).save_pretrained(bf16)
    dirs = {"merged fp32": merged, "merged bf16": bf16}
    for bits in (8, 4):
        out = work / f"export_{bits}bit"
        cmd = [
            sys.executable,
            "-m",
            "finetune.cli",
            "export",
            "quantized",
            "--bits",
            str(bits),
            "--model",
            str(merged),
            "--out",
            str(out),
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"export --bits {bits} failed:\n{proc.stderr[-3000:]}")
        print(proc.stdout.strip(), flush=True)
        dirs[f"--bits {bits}"] = out
    return dirs


def score(directory: Path) -> dict:
    """Size of the weight files and perplexity per eval file of `from_pretrained(directory)` as loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.data.text import TextDataConfig, build_text_datasets, make_collate
    from finetune.metrics.perplexity import dataset_batches, nll_and_tokens, perplexity_of
    from finetune.models.causal_lm import configure_pad_token

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    configure_pad_token(tokenizer, model)
    ppl = {}
    for name, path in EVAL_FILES.items():
        cfg = TextDataConfig(train_file=str(path), max_length=256, pack=False)
        ds = build_text_datasets(cfg, tokenizer)["train"]
        with torch.no_grad():
            total, count = nll_and_tokens(model, dataset_batches(ds, make_collate(cfg, tokenizer), 8))
        ppl[name] = perplexity_of(total, count)
    size = sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))
    return {"bytes": size, "perplexity": ppl}


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def train_table(runs: dict) -> list[str]:
    lines = [
        "| base | peak memory | tokens/s | train s | legal test ppl before -> after | general ppl before -> after "
        "| base-sample ppl before -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, label in RUNS.items():
        s = runs[kind]["summary"]
        b, a = s["perplexity_before"], s["perplexity_after"]
        memory = (s.get("train_peak_memory") or {}).get("bytes")
        label = label + (" (re-timed alone, `--retime`)" if runs[kind].get("retimed") else "")
        lines.append(
            f"| {label} | {mib(memory) if memory else 'n/a'} | {s['tokens_per_second']} | "
            f"{s['train_seconds']} | {b['test']:.2f} -> {a['test']:.2f} | "
            f"{b['general_validation']:.2f} -> {a['general_validation']:.2f} | "
            f"{b['base_samples']:.2f} -> {a['base_samples']:.2f} |"
        )
    return lines


def export_table(exports: dict) -> list[str]:
    reference = exports["merged fp32"]["perplexity"]
    lines = ["| merged model | weights on disk | legal test ppl | general ppl |", "|---|---|---|---|"]
    for name, r in sorted(exports.items(), key=lambda kv: -kv[1]["bytes"]):  # largest first (the .json sorts by name)
        cells = [
            f"{r['perplexity'][k]:.2f} ({100 * (r['perplexity'][k] / reference[k] - 1):+.1f}%)" for k in EVAL_FILES
        ]
        lines.append(f"| {name} | {mib(r['bytes'])} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="override the config's 60 steps (smoke runs)")
    p.add_argument("--work", default=str(ROOT / "outputs" / "lm_quantization"), help="where runs and exports go")
    p.add_argument("--results", default=str(RESULTS), help="markdown results file (a .json with raw numbers beside it)")
    p.add_argument(
        "--retime",
        choices=list(RUNS),
        action="append",
        default=[],
        help="train only this variant again (alone on the machine) and replace its row in the results' "
        ".json, keeping the other rows and the exports; the table says which rows were re-timed",
    )
    a = p.parse_args()
    from finetune.io import atomic_write_json, atomic_write_text
    from finetune.models.quantize import check_quantization
    from finetune.quiet import quiet_libraries

    quiet_libraries()  # the recipe runs are quiet already; this quiets the exports' reloads here
    for kind in ("nf4", "int8"):
        check_quantization(kind)  # a missing quant extra fails now, not after the first run
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(Path(a.results).with_suffix(".json").read_text()) if a.retime else {}
    runs = dict(previous.get("runs", {}))
    for kind in a.retime or RUNS:
        runs[kind] = train(kind, work, a.steps)
        runs[kind]["retimed"] = bool(a.retime)
        s = runs[kind]["summary"]
        print(
            f"{kind}: {s['tokens_per_second']} tokens/s, {s['relative_change']} (job {runs[kind]['wall_seconds']} s)",
            flush=True,
        )
    if a.retime:
        exports = previous["exports"]
        command = previous["command"] + "`, then `" + " ".join(["python"] + sys.argv)
    else:
        dirs = export_variants(Path(runs["none"]["out"]) / "merged", work)
        exports = {name: score(d) for name, d in dirs.items()}
        command = " ".join(["python"] + sys.argv)
    raw = {"runs": runs, "exports": exports, "command": command}
    atomic_write_json(Path(a.results).with_suffix(".json"), raw)

    device = f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    steps = runs["none"]["summary"]["steps"]
    text = "\n".join(
        [
            "# LoRA on a bf16, NF4 or int8 base, and quantized exports",
            "",
            f"SmolLM2-135M-Instruct on the legal corpus, {steps} optimizer steps of batch 4 x 256-token packed blocks, LoRA "
            f"r=16 on every linear layer, bf16 autocast, eager (no compiled layers); on {device}. Peak memory is the "
            "process's peak RSS on a CPU (max_memory_allocated on a GPU) at the last optimizer step. Perplexities on the "
            "template-disjoint legal test split, general text and the base model's own samples, before and after "
            "training (the recipe's packed bf16 evaluation, at the end only), from each run's summary.json.",
            "",
            f"Command: `{raw['command']}`",
            "",
            *train_table(runs),
            "",
            "Exports of the bf16 LoRA run's merged model, each reloaded with a plain `AutoModelForCausalLM.from_pretrained"
            "(DIR)` and scored as loaded on data/legal/test.jsonl and data/general/validation.jsonl (one document per "
            "sequence, up to 256 tokens); change against merged fp32. `--bits 8`: torchao int8 weight-only; `--bits 4`: "
            "bitsandbytes NF4 (double quant); embeddings, norms and the tied head stay bf16.",
            "",
            *export_table(exports),
            "",
        ]
    )
    atomic_write_text(Path(a.results), text)
    print(text)


if __name__ == "__main__":
    main()
