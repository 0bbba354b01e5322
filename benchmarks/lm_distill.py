"""Distillation as recovery: a layer-removed SmolLM2 student fine-tuned with the LM recipe's distillation objective
vs plain LoRA fine-tuning at the same steps, and the teacher itself.

    python benchmarks/lm_distill.py                  # after benchmarks/lm_prune.py (~8 min more on 2 cores)
    python benchmarks/lm_distill.py --steps 2        # a smoke run

It reuses benchmarks/lm_prune.py's work directory and results: the student is its `--student` variant (default:
drop6, SmolLM2 with 6 of its 30 decoder layers removed by `finetune prune --method layers`), and the plain fine-tuning
row is that table's recovery run (same recipe, same steps). The teacher: the unpruned SmolLM2 with that table's
legal LoRA (its "unpruned" recovery run) merged in by `finetune export merge`, so it knows the domain the student
is recovered on. The distilled run is the same recipe run with distill.teacher=TEACHER (loss = (1 - alpha) CE +
alpha KL(teacher || student) per trained token; alpha, divergence and temperature: the recipe's defaults unless
given). Perplexity and forward tokens/s are measured as in benchmarks/lm_prune.py (fp32 as loaded; the students'
speed is the pruned base's, the LoRA adapter unmerged).

Results: benchmarks/results/lm_distill.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lm_prune import (  # noqa: E402  (after the path insert, as a script)
    EVAL_FILES,
    base_dir,
    data_commit_of_corpora,
    forward_tokens_per_second,
    load,
    perplexities,
    recover,
    run,
)

RESULTS = ROOT / "benchmarks" / "results" / "lm_distill.md"
PRUNE_RESULTS = ROOT / "benchmarks" / "results" / "lm_prune.json"


def merged_teacher(prune_rows: dict, work: Path) -> Path:
    """The unpruned model with the prune table's legal LoRA merged in (finetune export merge)."""
    out = work / "teacher_merged"
    if not (out / "config.json").is_file():
        adapter = prune_rows["dense"]["recovery"]["adapter"]
        cmd = [sys.executable, "-m", "finetune.cli", "export", "merge", "--model", str(base_dir())]
        run([*cmd, "--adapter", adapter, "--out", str(out)], "merging the teacher")
    return out


def scored(model_dir: Path, adapter: str | None = None) -> dict[str, float]:
    model, tokenizer = load(model_dir, adapter)
    return perplexities(model, tokenizer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="drop6", help="the lm_prune variant recovered (a layers-removed one)")
    p.add_argument("--alpha", type=float, default=0.5, help="distill.alpha")
    p.add_argument("--temperature", type=float, default=1.0, help="distill.temperature")
    p.add_argument("--divergence", default="forward", help="distill.divergence: forward, reverse or symmetric")
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes per model, round-robin")
    p.add_argument("--prune-results", default=str(PRUNE_RESULTS), help="benchmarks/lm_prune.py's .json")
    p.add_argument("--results", default=str(RESULTS), help="markdown results file (a .json beside it)")
    a = p.parse_args()
    from finetune.io import atomic_write_json, atomic_write_text
    from finetune.prune import parameter_counts
    from finetune.quiet import quiet_libraries

    quiet_libraries()
    pruned = json.loads(Path(a.prune_results).read_text())
    prune_rows, steps = pruned["rows"], pruned["steps"]
    if a.student not in prune_rows or "dense" not in prune_rows:
        raise SystemExit(f"{a.prune_results} lacks the dense and {a.student} rows; run benchmarks/lm_prune.py first")
    student_dir = Path(prune_rows[a.student]["model_dir"])
    work = student_dir.parent
    started = time.perf_counter()
    teacher = merged_teacher(prune_rows, work)
    distill = (
        f"distill.teacher={teacher}",
        f"distill.alpha={a.alpha}",
        f"distill.temperature={a.temperature}",
        f"distill.divergence={a.divergence}",
    )
    distilled = recover(student_dir, work, f"{a.student}_distill", steps, distill)
    plain = prune_rows[a.student]
    rows = {
        "teacher": {"model_dir": str(teacher), "parameters": parameter_counts(load(teacher)[0])},
        "student, no recovery": {"parameters": plain["parameters"], "perplexity": plain["perplexity_before"]},
        "student + LoRA, plain fine-tuning": {
            "parameters": plain["parameters"],
            "perplexity": plain["perplexity_after"],
        },
        "student + LoRA, distilled": {"parameters": plain["parameters"], "recovery": distilled},
    }
    rows["teacher"]["perplexity"] = scored(teacher)
    rows["student + LoRA, distilled"]["perplexity"] = scored(student_dir, distilled["adapter"])
    speed = forward_tokens_per_second(
        {"teacher": rows["teacher"], "student": {"model_dir": str(student_dir)}}, a.repeats
    )
    for name, r in rows.items():
        r["forward_tokens_per_second"] = speed["teacher" if name == "teacher" else "student"]
    data_commit = data_commit_of_corpora()
    raw = {
        "rows": rows,
        "student": a.student,
        "steps": steps,
        "distill": list(distill),
        "command": " ".join(["python"] + sys.argv),
        "prune_command": pruned["command"],
        "data_commit": data_commit,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(Path(a.results).with_suffix(".json"), raw)
    lines = [
        "| model | parameters | forward tokens/s: best / median | legal test ppl | general ppl |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        s = r["forward_tokens_per_second"]
        lines.append(
            f"| {name} | {r['parameters']['total'] / 1e6:.1f}M | {s['best']:.0f} / {s['median']:.0f} | "
            + " | ".join(f"{r['perplexity'][k]:.2f}" for k in EVAL_FILES)
            + " |"
        )
    removed = prune_rows[a.student].get("removed_layers")
    device = f"CPU ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    text = "\n".join(
        [
            "# Recovering a layer-removed SmolLM2: distillation vs plain fine-tuning",
            "",
            f"Student: SmolLM2-135M-Instruct with decoder layers {removed} removed (`finetune prune --method layers`, "
            f"benchmarks/lm_prune.py's {a.student}). Teacher: the unpruned model with that table's legal LoRA merged "
            f"in. Both recoveries: the LM recipe (recipes/configs/legal_lora.yaml, LoRA r=16) for {steps} steps of "
            f"batch 4 x 256 tokens; the distilled one adds {', '.join(distill[1:])} (teacher frozen, no grad). "
            "Perplexity on data/legal/test.jsonl and data/general/validation.jsonl as loaded in fp32; tokens/s: forward, "
            f"batch 4 x 256, fp32, round-robin over {a.repeats} rounds (students: the pruned base, adapter unmerged); on "
            f"{device}, data at commit {data_commit}.",
            "",
            f"Commands: `{pruned['command']}`, then `{raw['command']}`",
            "",
            *lines,
            "",
        ]
    )
    atomic_write_text(Path(a.results), text)
    print(text)


if __name__ == "__main__":
    main()
