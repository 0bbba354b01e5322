"""Reliability suite: SIGKILLs at random moments and mid-write, and bad inputs, through the commands a user runs.

    python benchmarks/reliability.py [--kills N] [--quick] [--jobs J] [--seed S]

Everything runs as a user runs it, in subprocesses (`python recipes/train_lm.py`, `python recipes/train_sd.py`,
`finetune train lm|sd`, `accelerate launch`, `finetune export ...`), on a tiny LLaMA and the tiny Stable Diffusion
the project builds itself, inside a temporary directory.

1. Kills: LoRA (LM) and DreamBooth-LoRA (SD) runs checkpointing every step are SIGKILLed (the whole process
   group, as the OOM killer or a lost machine would) at random moments, while a `.tmp-checkpoint-*` directory
   exists, and during the final export; then resumed with train.resume=latest until they finish. A kill survived
   when (a) every visible checkpoint-N was complete and loads, (b) no temporary file is left after the resumed
   run, (c) the final artifacts are bit-identical to an uninterrupted run with the same seed, and (d) summary.json
   is present with the uninterrupted run's keys and figures.
2. Bad inputs: each case expects either a refusal (exit 2, exactly one stderr line starting `error:`, last, and no
   traceback) or success, and "nothing lost": a refused run leaves a pre-existing output byte-identical and
   creates no directory where there was none; a planted pickle payload never runs.

Prints a markdown table and writes it to benchmarks/results/reliability.md. Not part of `make test` (minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reliability.md"
PYTHON = sys.executable
FINETUNE = str(Path(sys.executable).with_name("finetune"))
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
LM_RECIPE, SD_RECIPE = str(ROOT / "recipes" / "train_lm.py"), str(ROOT / "recipes" / "train_sd.py")
PROMPT = "a photo of sks dog"
# half-written names: finetune/io.py's `.name.XXXXXXXX.tmp` / `.name.old`, `.tmp-checkpoint-N`, export's `.tmp-lora-XXXX`
TEMP = re.compile(r"^\..+\.tmp$|^\..+\.old$|^\.tmp-")
QUIET = ["train.progress_bar=false", "train.tensorboard=false", "train.log_every=1"]


# ---------------------------------------------------------------- workspace: tiny models and data, made here


@dataclass
class Workspace:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "tiny_lm"

    def lm_args(self, out: Path, *extra: str) -> list[str]:
        """The tiny LLaMA recipe arguments of tests/recipes/test_lm.py, plus `extra`."""
        d = self.root / "lm_data"
        return [
            f"model.name_or_path={self.model}",
            f"data.train_file={d / 'train.jsonl'}",
            f"data.validation_file={d / 'val.jsonl'}",
            f"data.general_validation_file={d / 'general.jsonl'}",
            "data.max_length=128",
            f"train.output_dir={out}",
            "train.batch_size=4",
            "scheduler.warmup_steps=1",
            "eval.batch_size=16",
            "method=lora",
            "lora.r=4",
            *QUIET,
            *extra,
        ]

    def sd_args(self, out: Path, *extra: str, images: Path | None = None) -> list[str]:
        """DreamBooth-LoRA on the tiny SD at 32 px; fixed conv kernels so every run computes the same numbers."""
        return [
            "model.tiny=true",
            "model.resolution=32",
            *QUIET,
            "validation.steps=2",
            "train.batch_size=1",
            f"data.instance_dir={images or self.root / 'instance'}",
            f"data.instance_prompt={PROMPT}",
            "lora.rank=4",
            "efficiency.conv_backend=onednn",
            f"train.output_dir={out}",
            *extra,
        ]


def build_workspace(root: Path) -> Workspace:
    """A tiny LLaMA + tokenizer saved as a user's model directory, short JSONL splits, three instance images."""
    from finetune.models.causal_lm import build_tiny_llama, build_tiny_tokenizer
    from finetune.quiet import quiet_libraries

    quiet_libraries()  # no "Writing model shards" bar in the suite's own output
    ws = Workspace(root)
    build_tiny_llama(num_hidden_layers=2).save_pretrained(ws.model, safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(ws.model)
    (root / "lm_data").mkdir()
    for name, src, n in (
        ("train", "legal/train", 48),
        ("val", "legal/validation", 8),
        ("general", "general/validation", 8),
    ):
        lines = (ROOT / "data" / f"{src}.jsonl").read_text().splitlines()[:n]
        (root / "lm_data" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    write_images(root / "instance", 3)
    return ws


def write_images(folder: Path, n: int, seed: int = 0, size: int = 40) -> Path:
    """Flat-coloured squares on a coloured background (as tests/recipes/test_sd_recipe.py)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = np.zeros((size, size, 3), np.uint8)
        a[...] = rng.integers(0, 255, 3)
        a[8:32, 8:32] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(folder / f"img{i}.png")
    return folder


# ---------------------------------------------------------------- running commands


def child_env(extra: dict | None = None) -> dict:
    """One thread per process (deterministic and fair on a shared CPU); fp32 unless a case sets a precision."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra or {})
    return env


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float


def run(cmd: list[str], env: dict | None = None, timeout: float = 600) -> Result:
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            cmd, env=child_env(env), capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
        )
        return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
    except subprocess.TimeoutExpired as e:
        return Result(-9, str(e.stdout or ""), f"timed out after {timeout} s\n{e.stderr or ''}", time.monotonic() - t0)


def recipe_cmd(recipe: str, launcher: str, args: list[str]) -> list[str]:
    """`python recipes/<recipe>.py ARGS` or the README's `finetune train lm|sd ARGS` (shipped accelerate config)."""
    if launcher == "python":
        return [PYTHON, LM_RECIPE if recipe == "lm" else SD_RECIPE, *args]
    return [FINETUNE, "train", recipe, *args]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def tail(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# ---------------------------------------------------------------- checks shared by both parts


def leftovers(out: Path) -> list[str]:
    """Half-written files and directories a kill can leave, anywhere under `out`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            if TEMP.match(name):
                found.append(str(Path(dirpath, name).relative_to(out)))
    return sorted(found)


def checkpoint_problems(out: Path) -> list[str]:
    """Every visible checkpoint-N must be whole: trainer_state.json at step N, and every safetensors file loads."""
    from safetensors.torch import load_file

    problems = []
    for ckpt in sorted(out.glob("checkpoint-*")) if out.is_dir() else []:
        state = ckpt / "trainer_state.json"
        try:
            step = json.loads(state.read_text())["global_step"]
            if f"checkpoint-{step}" != ckpt.name:
                problems.append(f"{ckpt.name}: trainer_state.json says step {step}")
            for f in ("model.safetensors", "optimizer.safetensors", "rng_0.safetensors"):
                if not (ckpt / f).is_file():
                    problems.append(f"{ckpt.name}: no {f}")
            for f in ckpt.glob("*.safetensors"):
                load_file(str(f))
        except Exception as e:  # noqa: BLE001  (any unreadable file is the finding)
            problems.append(f"{ckpt.name}: {type(e).__name__}: {e}")
    return problems


def snapshot(path: Path) -> dict | None:
    """Every file's bytes (hashed) and every directory under `path`; None when `path` does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    snap = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for d in dirnames:
            snap[str(Path(dirpath, d).relative_to(path))] = "dir"
        for f in filenames:
            p = Path(dirpath, f)
            snap[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def snapshot_diff(before: dict | None, after: dict | None) -> str:
    if before is None:
        return (
            ""
            if after is None
            else f"created {'a file' if after.keys() == {'.'} else 'a directory'} where the run was refused"
        )
    if after is None:
        return "deleted the pre-existing output"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return f"changed {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}" if changed else ""


# ---------------------------------------------------------------- 1. kills


KILL_MODES = ("random moment", "checkpoint write", "final export")
KILL_STEPS = 24  # steps of a killed run, each one checkpointed


@dataclass
class Timeline:
    first_checkpoint: float  # seconds from start to the first checkpoint (training under way)
    end: float  # seconds from start to exit


@dataclass
class Reference:
    out: Path
    timeline: Timeline
    artifacts: dict  # relative path -> safetensors_digest
    summary: dict


@dataclass
class Kill:
    recipe: str
    launcher: str
    mode: str
    at: str  # what the output directory held when the kill landed
    temps: list  # half-written names it left at the top of the output dir
    visible_problems: list  # (a) problems with the checkpoints visible right after the kill
    scenario: int
    survived: bool | None = None
    why: str = ""  # what went wrong, when it was not survived


@dataclass
class Scenario:
    index: int
    recipe: str
    launcher: str
    out: Path
    started: bool = False
    finished: bool = False
    problems: list = field(default_factory=list)  # of the run as a whole (a failed resume, different artifacts)
    left: list = field(default_factory=list)  # (b) temporary names still there after the last run


ARTIFACTS = {
    "lm": ["adapter/adapter_model.safetensors", "best/adapter/adapter_model.safetensors"],
    "sd": ["pytorch_lora_weights.safetensors", "lora_kohya.safetensors"],
}
FIGURES = {
    "lm": ["steps", "best_step", "trainable_parameters", "perplexity_before", "perplexity_after"],
    "sd": ["steps", "artifacts", "trained_parameters", "val_loss_before", "val_loss_after"],
}


def kill_run_args(ws: Workspace, recipe: str, out: Path, steps: int) -> list[str]:
    extra = [f"train.max_steps={steps}", "train.save_every=1", f"train.eval_every={steps // 4}"]
    if recipe == "lm":
        return ws.lm_args(out, "optim.lr=5e-2", "lora.dropout=0.0", *extra)
    return ws.sd_args(out, "optim.lr=5e-3", "kohya=true", *extra)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A new session, so one killpg takes the launcher and every process it started, as a lost machine would."""
    with open(log, "ab") as fh:
        return subprocess.Popen(
            cmd, env=child_env(), cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def listing(out: Path) -> list[str]:
    try:
        return os.listdir(out)
    except OSError:
        return []


def export_temps_in(names: list[str]) -> list[str]:
    """Atomic writes of the final export under way (not a checkpoint, nor the config or kernel choice written at start)."""
    return [
        n
        for n in names
        if TEMP.match(n) and not n.startswith((".tmp-checkpoint-", ".config.yaml.", ".conv_backend.json."))
    ]


def moment(
    mode: str, out: Path, steps: int, timeline: Timeline, rng: random.Random
) -> Callable[[list[str], float], bool]:
    """For `mode`, a test of (names in the output dir, seconds since start): is this the moment to kill?"""
    at_start = set(listing(out))  # what an earlier kill left is no moment of this run
    last = f"checkpoint-{steps}"
    if mode == "random moment":
        delay = rng.uniform(max(0.5, timeline.first_checkpoint - 1.0), 0.9 * timeline.end)  # mostly while training
        return lambda names, now: now >= delay
    if mode == "checkpoint write":
        done = max((int(n.split("-")[1]) for n in at_start if re.fullmatch(r"checkpoint-\d+", n)), default=0)
        skip = rng.randint(0, max(0, (steps - done) // 2))  # which of the remaining writes to hit
        seen: set[str] = set()

        def in_checkpoint_write(names, now):
            seen.update(n for n in names if n.startswith(".tmp-checkpoint-") and n not in at_start)
            return len(seen) > skip or f".tmp-checkpoint-{steps}" in seen  # at the latest, the final write

        return in_checkpoint_write
    # final export: the checkpoint at max_steps exists; hit one of the export's atomic writes (loss curve, artifacts,
    # summary, card), or, if none is caught, a moment of the export (~0.4-1.5 s after the last checkpoint)
    skip, delay = rng.randint(0, 3), rng.uniform(0.3, 2.0)
    seen, since = set(), []

    def in_export(names, now):
        if last not in names:
            return False
        since.append(now)
        seen.update(n for n in export_temps_in(names) if n not in at_start)
        return len(seen) > skip or (last not in at_start and now - since[0] >= delay)

    return in_export


def watch(proc: subprocess.Popen, out: Path, fire: Callable[[list[str], float], bool]) -> str | None:
    """Kill `proc` when `fire` says so; return what the output dir held then, or None if the run finished first."""
    t0 = time.monotonic()
    while proc.poll() is None:
        now = time.monotonic() - t0
        if fire(listing(out), now):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            held = listing(out)
            ckpts = sorted((n for n in held if n.startswith("checkpoint-")), key=lambda n: int(n.split("-")[1]))
            temps = sorted(n for n in held if TEMP.match(n))
            return f"{now:.2f} s; {ckpts[-1] if ckpts else 'no checkpoint'}" + (
                f"; {', '.join(temps)}" if temps else ""
            )
        time.sleep(0.0005)
    return None


def safetensors_digest(f: Path) -> str | None:
    """A hash of every tensor's name, dtype, shape and bytes, and of the metadata: equal iff bit-identical content.

    Not the file's bytes: two uninterrupted runs of the SD recipe already differ there, as safetensors writes the
    header's metadata map in an arbitrary order and PEFT's target_modules is a set (listed in hash-seed order).
    """
    import torch
    from safetensors import safe_open

    if not f.is_file():
        return None
    h = hashlib.sha256()
    with safe_open(str(f), framework="pt") as fh:
        h.update(json.dumps(canonical(fh.metadata() or {}), sort_keys=True).encode())
        for k in sorted(fh.keys()):
            t = fh.get_tensor(k).contiguous()
            h.update(f"{k}|{t.dtype}|{list(t.shape)}|".encode() + t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def canonical(meta):
    """Metadata with JSON strings parsed and set-valued entries (target_modules) sorted."""
    if isinstance(meta, str):
        try:
            return canonical(json.loads(meta)) if meta[:1] in "[{" else meta
        except ValueError:
            return meta
    if isinstance(meta, dict):
        return {
            k: sorted(v) if k.endswith("target_modules") and isinstance(v, list) else canonical(v)
            for k, v in meta.items()
        }
    return [canonical(v) for v in meta] if isinstance(meta, list) else meta


def artifact_hashes(out: Path, recipe: str) -> dict:
    return {a: safetensors_digest(out / a) for a in ARTIFACTS[recipe]}


def reference_run(ws: Workspace, recipe: str, launcher: str, steps: int) -> Reference:
    """The uninterrupted run every killed-and-resumed one must equal; also times where training starts."""
    out = ws.root / "kills" / f"reference-{recipe}-{launcher}"
    proc = start(recipe_cmd(recipe, launcher, kill_run_args(ws, recipe, out, steps)), out.with_suffix(".log"))
    t0, first = time.monotonic(), None
    while proc.poll() is None:
        if first is None and any(n.startswith(("checkpoint-", ".tmp-checkpoint-")) for n in listing(out)):
            first = time.monotonic() - t0
        time.sleep(0.002)
    end = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"reference {recipe} run ({launcher}) failed:\n{tail(out.with_suffix('.log').read_text(), 20)}"
        )
    summary = json.loads((out / "summary.json").read_text())
    return Reference(out, Timeline(first or end / 2, end), artifact_hashes(out, recipe), summary)


def final_problems(sc: Scenario, ref: Reference) -> list[str]:
    """(c) bit-identical artifacts, (d) summary.json complete with the reference's figures."""
    problems = [
        f"{a} differs from the uninterrupted run's" if h else f"{a} missing"
        for a, h in artifact_hashes(sc.out, sc.recipe).items()
        if h != ref.artifacts[a]
    ]
    try:
        summary = json.loads((sc.out / "summary.json").read_text())
    except (OSError, ValueError) as e:
        return problems + [f"summary.json unreadable ({type(e).__name__})"]
    if missing := sorted(ref.summary.keys() - summary.keys()):
        problems.append(f"summary.json lacks {', '.join(missing)}")
    problems += [
        f"summary.json {k}={summary.get(k)!r}, uninterrupted {ref.summary.get(k)!r}"
        for k in FIGURES[sc.recipe]
        if summary.get(k) != ref.summary.get(k)
    ]
    return problems


def resume_cmd(ws: Workspace, sc: Scenario, steps: int) -> list[str]:
    args = kill_run_args(ws, sc.recipe, sc.out, steps)
    return recipe_cmd(sc.recipe, sc.launcher, args + (["train.resume=latest"] if sc.started else []))


def after_exit(sc: Scenario, proc: subprocess.Popen, log: Path, ref: Reference) -> None:
    """A run that ended on its own: it must have succeeded, and its result must be the uninterrupted one."""
    sc.finished = True
    text = log.read_text()
    if proc.returncode != 0:
        sc.problems.append(f"a resumed run exited {proc.returncode}: {tail(text, 1)}")
    elif "skipping checkpoint" in text:
        sc.problems.append(
            "a resumed run found an unusable checkpoint: " + text.split("skipping checkpoint", 1)[1].splitlines()[0]
        )
    sc.problems += final_problems(sc, ref)
    sc.left = leftovers(sc.out)


def kill_suite(
    ws: Workspace, recipe: str, n_kills: int, steps: int, rng: random.Random
) -> tuple[list[Kill], list[Scenario]]:
    """`n_kills` SIGKILLs over a series of runs (python recipe and `finetune train`, alternating), each resumed to the end."""
    refs = {lch: reference_run(ws, recipe, lch, steps) for lch in ("python", "finetune")}
    kills: list[Kill] = []
    scenarios: list[Scenario] = []
    tries = 0
    while len(kills) < n_kills and tries < 4 * n_kills:
        tries += 1
        if not scenarios or scenarios[-1].finished:
            i = len(scenarios)
            launcher = ("python", "finetune")[i % 2]
            scenarios.append(Scenario(i, recipe, launcher, ws.root / "kills" / f"{recipe}-{i}-{launcher}"))
        sc = scenarios[-1]
        mode = KILL_MODES[len(kills) % len(KILL_MODES)]
        log = sc.out.with_suffix(".log")
        fire = moment(mode, sc.out, steps, refs[sc.launcher].timeline, rng)
        proc = start(resume_cmd(ws, sc, steps), log)
        at = watch(proc, sc.out, fire)
        sc.started = True
        if at is None:
            after_exit(sc, proc, log, refs[sc.launcher])
            if proc.returncode != 0:
                break  # a run that fails by itself (a broken checkout?): more kills would tell nothing
        else:
            temps = [n for n in listing(sc.out) if TEMP.match(n)]
            kills.append(Kill(recipe, sc.launcher, mode, at, temps, checkpoint_problems(sc.out), sc.index))
    for sc in scenarios:  # resume every unfinished run to its end
        if not sc.finished:
            log = sc.out.with_suffix(".log")
            proc = start(resume_cmd(ws, sc, steps), log)
            proc.wait()
            after_exit(sc, proc, log, refs[sc.launcher])
    for k in kills:
        judge_kill(k, scenarios[k.scenario], [other for other in kills if other.scenario == k.scenario])
    return kills, scenarios


def judge_kill(k: Kill, sc: Scenario, same_run: list[Kill]) -> None:
    """Survived: (a) held right after it, and its run ended well; a leftover counts against the kill that left it."""
    left = set(sc.left)
    mine = sorted(left & set(k.temps)) if any(left & set(o.temps) for o in same_run) else sorted(left)
    why = k.visible_problems + ([f"left {', '.join(mine)} for good"] if mine else []) + sc.problems
    k.survived, k.why = not why, "; ".join(why)


# ---------------------------------------------------------------- 2. bad inputs


class _Exec:
    """A pickle whose loading runs `code` (what a malicious checkpoint does)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def payload(marker: Path) -> bytes:
    return pickle.dumps(_Exec(f"open({str(marker)!r}, 'w').write('pickle payload ran')"))


@dataclass
class Case:
    name: str
    group: str  # what kind of input: config, data, model, output dir, resume, export, launcher, run
    prepare: Callable  # (ws, fixtures, case dir) -> Prepared
    expect: str = "error"  # "error": exit 2 in one `error:` line; "ok": exit 0
    says: tuple = ()  # words the error line (or, for "ok", stderr/stdout) must contain, any case
    fresh_dir_must_vanish: bool = True  # a refused run creates no output dir (unset where the case checks otherwise)


@dataclass
class Prepared:
    cmd: list
    guard: Path | None = None  # the output that must be unchanged (or not created) when the run is refused
    env: dict = field(default_factory=dict)
    marker: Path | None = None  # a pickle payload writes this if it ever runs
    check: Callable | None = None  # (Result) -> problem or "" for cases with their own expectations


@dataclass
class Outcome:
    case: Case
    ok: bool
    problem: str
    result: Result
    nothing_lost: bool | None  # None: not a refused run with a guarded output


def judge(case: Case, prep: Prepared, r: Result, before: dict | None) -> tuple[str, bool | None]:
    """The case's problem ("" when it behaved as expected) and whether a refused run lost nothing."""
    problems, lost = [], None
    if "Traceback" in r.stderr:
        problems.append("traceback")
    if case.expect == "error":
        lines = r.stderr.strip().splitlines()
        errors = error_lines(r.stderr)
        if r.rc != 2:
            problems.append(f"exit {r.rc}, expected 2")
        if len(errors) != 1 or lines[-1] != errors[0]:
            problems.append(
                f"{len(errors)} `error:` lines{'' if not errors or lines[-1] == errors[0] else ', not last'}"
            )
        elif not all(w.lower() in errors[0].lower() for w in case.says):
            problems.append(f"error line does not say {' / '.join(case.says)}")
        if prep.guard is not None and (before is not None or case.fresh_dir_must_vanish):
            diff = snapshot_diff(before, snapshot(prep.guard))
            lost = not diff
            if diff:
                problems.append(diff)
    else:
        if r.rc != 0:
            problems.append(f"exit {r.rc}, expected success")
        elif not all(w.lower() in (r.stderr + r.stdout).lower() for w in case.says):
            problems.append(f"output does not say {' / '.join(case.says)}")
    if prep.marker is not None and prep.marker.exists():
        problems.append("THE PICKLE PAYLOAD RAN")
    if prep.check is not None and (extra := prep.check(r)):
        problems.append(extra)
    return "; ".join(problems), lost


def run_case(ws: Workspace, fixtures: dict, case: Case, index: int) -> Outcome:
    where = ws.root / "cases" / f"{index:02d}"
    where.mkdir(parents=True)
    prep = case.prepare(ws, fixtures, where)
    before = snapshot(prep.guard) if prep.guard is not None else None
    r = run(prep.cmd, prep.env)
    problem, lost = judge(case, prep, r, before)
    return Outcome(case, not problem, problem, r, lost)


# fixtures: finished runs the cases copy and break


def build_fixtures(ws: Workspace) -> dict:
    """Finished LM runs (with and without checkpoints) and a finished SD DreamBooth-LoRA run, built in parallel."""
    fx = ws.root / "fixtures"
    specs = {
        "lm_done": [
            PYTHON,
            LM_RECIPE,
            *ws.lm_args(fx / "lm_done", "train.max_steps=4", "train.save_every=2", "train.eval_every=2"),
        ],
        "lm_nockpt": [PYTHON, LM_RECIPE, *ws.lm_args(fx / "lm_nockpt", "train.max_steps=2")],
        "sd_done": [PYTHON, SD_RECIPE, *ws.sd_args(fx / "sd_done", "train.max_steps=4", "train.save_every=2")],
    }
    with ThreadPoolExecutor(len(specs)) as pool:
        results = dict(zip(specs, pool.map(run, specs.values())))
    for name, r in results.items():
        if r.rc != 0:
            raise SystemExit(f"fixture {name} failed:\n{tail(r.stderr, 20)}")
    return {name: fx / name for name in specs}


def copy_run(fixtures: dict, name: str, where: Path) -> Path:
    return Path(shutil.copytree(fixtures[name], where / name))


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def lm(*extra: str, env: dict | None = None, launcher: str = "python") -> Callable:
    """A case running the LM recipe with `extra` into a new output dir."""

    def prepare(ws, fixtures, where):
        out = where / "run"
        return Prepared(recipe_cmd("lm", launcher, ws.lm_args(out, "train.max_steps=2", *extra)), out, env or {})

    return prepare


def sd(*extra: str, env: dict | None = None, launcher: str = "python", images: Callable | None = None) -> Callable:
    """A case running the SD recipe with `extra` (and images from `images(where)`) into a new output dir."""

    def prepare(ws, fixtures, where):
        out = where / "run"
        folder = images(where) if images else None
        return Prepared(
            recipe_cmd("sd", launcher, ws.sd_args(out, "train.max_steps=2", *extra, images=folder)), out, env or {}
        )

    return prepare


def on_finished(
    recipe: str, fixture: str, *extra: str, damage: Callable | None = None, check: Callable | None = None
) -> Callable:
    """A case re-running (usually resuming) a copy of a finished run after `damage(out, marker)` broke it."""

    def prepare(ws, fixtures, where):
        out, marker = copy_run(fixtures, fixture, where), where / "PAYLOAD_RAN"
        if damage:
            damage(out, marker)
        args = (
            ws.lm_args(out, "train.max_steps=4", "train.save_every=2", "train.eval_every=2", *extra)
            if recipe == "lm"
            else ws.sd_args(out, "train.max_steps=4", "train.save_every=2", *extra)
        )
        return Prepared(
            recipe_cmd(recipe, "python", args), out, marker=marker, check=check and (lambda r: check(out, r))
        )

    return prepare


def resume(
    recipe: str, fixture: str, how: str, *extra: str, damage: Callable | None = None, check: Callable | None = None
) -> Callable:
    """Resume a copy of a finished run to 6 steps (so checkpoint-4 must really load) from `how`: latest or a path."""
    where = "{out}/checkpoint-4" if how == "path" else how
    return on_finished(
        recipe, fixture, f"train.resume={where}", "train.max_steps=6", *extra, damage=damage, check=check
    )


# damage helpers for checkpoints


def plant(name: str) -> Callable:
    """Damage: a pickle payload as checkpoint-4/<name> (a new file, or in place of one)."""
    return lambda out, marker: (out / "checkpoint-4" / name).write_bytes(payload(marker))


def truncated(name: str) -> Callable:
    return lambda out, marker: truncate(out / "checkpoint-4" / name)


def garbled(name: str) -> Callable:
    return lambda out, marker: (out / "checkpoint-4" / name).write_text("{not json")


def pickle_every_file(out: Path, marker: Path) -> None:
    for f in (out / "checkpoint-4").iterdir():
        f.write_bytes(payload(marker))


def summary_kept(out: Path) -> Callable:
    before = (out / "summary.json").read_bytes()
    return lambda r: "" if (out / "summary.json").read_bytes() == before else "summary.json rewritten"


def resumed_finished_unchanged(recipe: str, fixture: str) -> Callable:
    """resume=latest on a finished run: says so (exit 0) and keeps the measured summary.json as it was."""

    def prepare(ws, fixtures, where):
        prep = on_finished(recipe, fixture, "train.resume=latest")(ws, fixtures, where)
        prep.check = summary_kept(prep.guard)
        return prep

    return prepare


def lm_model_pickled_bin(ws, fixtures, where):
    """A model directory whose only weights are a pickled pytorch_model.bin carrying a payload."""
    import torch

    model, marker = where / "model", where / "PAYLOAD_RAN"
    shutil.copytree(ws.model, model)
    (model / "model.safetensors").unlink()
    torch.save(_Exec(f"open({str(marker)!r}, 'w').write('ran')"), model / "pytorch_model.bin")
    out = where / "run"
    return Prepared([PYTHON, LM_RECIPE, *ws.lm_args(out, f"model.name_or_path={model}")], out, marker=marker)


def pickled_ckpt_as_model(recipe: str) -> Callable:
    def prepare(ws, fixtures, where):
        ckpt, marker, out = where / "model.ckpt", where / "PAYLOAD_RAN", where / "run"
        ckpt.write_bytes(payload(marker))
        args = (
            ws.lm_args(out, f"model.name_or_path={ckpt}")
            if recipe == "lm"
            else ws.sd_args(out, "model.tiny=false", f"model.pretrained={ckpt}")
        )
        return Prepared(recipe_cmd(recipe, "python", args), out, marker=marker)

    return prepare


def output_is_a_file(recipe: str) -> Callable:
    def prepare(ws, fixtures, where):
        f = where / "notes.txt"
        f.write_text("a user's file\n")
        args = ws.lm_args(f) if recipe == "lm" else ws.sd_args(f)
        return Prepared(recipe_cmd(recipe, "python", args), f)

    return prepare


def unwritable_output(ws, fixtures, where):
    out = Path("/sys/finetune-reliability/run")
    return Prepared([PYTHON, LM_RECIPE, *ws.lm_args(out)], out)


def yaml_config(text: str) -> Callable:
    def prepare(ws, fixtures, where):
        cfg, out = where / "config.yaml", where / "run"
        cfg.write_text(text)
        return Prepared([PYTHON, LM_RECIPE, "--config", str(cfg), *ws.lm_args(out)], out)

    return prepare


def missing_config(ws, fixtures, where):
    out = where / "run"
    return Prepared([PYTHON, LM_RECIPE, "--config", str(where / "nope.yaml"), *ws.lm_args(out)], out)


def jsonl(text: str) -> Callable:
    def prepare(ws, fixtures, where):
        f, out = where / "train.jsonl", where / "run"
        f.write_text(text)
        return Prepared([PYTHON, LM_RECIPE, *ws.lm_args(out, f"data.train_file={f}")], out)

    return prepare


def overwrite_finished(ws, fixtures, where):
    """overwrite_output_dir=true over a finished run with checkpoints: only the new run's checkpoints and metrics."""
    out = copy_run(fixtures, "lm_done", where)

    def check(r):
        ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
        from finetune.train.logging import read_metrics

        steps = [row["step"] for row in read_metrics(out) if row.get("split") == "train"]
        problems = [f"old checkpoints left ({', '.join(ckpts)})"] if ckpts != ["checkpoint-1", "checkpoint-2"] else []
        return "; ".join(problems + ([f"metrics.jsonl mixes runs (train steps {steps})"] if steps != [1, 2] else []))

    args = ws.lm_args(out, "train.max_steps=2", "train.save_every=1", "train.overwrite_output_dir=true")
    return Prepared([PYTHON, LM_RECIPE, *args], out, check=check)


def fallback_to_older(recipe: str, fixture: str) -> Callable:
    """A truncated newest checkpoint: resume=latest warns, resumes from the older one and finishes."""
    artifact = "adapter/adapter_model.safetensors" if recipe == "lm" else "pytorch_lora_weights.safetensors"

    def check(out, r):
        return (
            "" if (out / artifact).is_file() and (out / "summary.json").is_file() else "no artifact after the fallback"
        )

    return resume(recipe, fixture, "latest", damage=truncated("model.safetensors"), check=check)


def diverging(ws, fixtures, where):
    """SGD at lr 9e5 without clipping: finite but exploding weights; stop in one line, keep only sound checkpoints."""
    from safetensors.torch import load_file

    out = where / "run"

    def check(r):
        bad = []
        for ckpt in out.glob("checkpoint-*"):
            worst = max(float(t.abs().max()) for t in load_file(str(ckpt / "model.safetensors")).values())
            if not np.isfinite(worst) or worst > 1e3:
                bad.append(f"{ckpt.name} holds weights up to {worst:.3g}")
        bad += [f"wrote {a}" for a in ("adapter", "model", "best", "summary.json") if (out / a).exists()]
        return "; ".join(bad)

    args = ws.lm_args(
        out,
        "method=full",
        "optim.name=sgd",
        "optim.lr=9e5",
        "train.max_grad_norm=0",
        "train.max_steps=8",
        "train.save_every=1",
        "train.eval_every=4",
    )
    return Prepared([PYTHON, LM_RECIPE, *args], out, check=check)


def accelerate_launch(ws, fixtures, where):
    """`accelerate launch recipes/train_lm.py` keeps working beside `finetune train`."""
    out = where / "run"
    cmd = [
        ACCELERATE,
        "launch",
        "--config_file",
        str(ROOT / "accelerate_config.yaml"),
        LM_RECIPE,
        *ws.lm_args(out, "train.max_steps=2"),
    ]
    return Prepared(cmd, out, check=lambda r: "" if (out / "adapter").is_dir() else "no adapter written")


def launcher_bad_accelerate_config(ws, fixtures, where):
    out = where / "run"
    return Prepared([FINETUNE, "train", "lm", "--accelerate-config", str(where / "none.yaml"), *ws.lm_args(out)], out)


def merge(out_kind: str) -> Callable:
    """`finetune export merge` into a new dir, a user's non-empty folder, or a file."""

    def prepare(ws, fixtures, where):
        adapter, out = fixtures["lm_done"] / "adapter", where / "merged"
        if out_kind == "foreign":
            out.mkdir()
            (out / "thesis.tex").write_text("years of work\n")
        elif out_kind == "file":
            out.write_text("a user's file\n")
        check = (
            (lambda r: "" if (out / "model.safetensors").is_file() else "no merged model")
            if out_kind == "new"
            else None
        )
        return Prepared(
            [FINETUNE, "export", "merge", "--model", str(ws.model), "--adapter", str(adapter), "--out", str(out)],
            out,
            check=check,
        )

    return prepare


def kohya(kind: str) -> Callable:
    """`finetune export kohya` as the README shows it (no --rank), with matching --rank/--alpha, or on bad input."""

    def prepare(ws, fixtures, where):
        lora, out, marker = (
            fixtures["sd_done"] / "pytorch_lora_weights.safetensors",
            where / "lora_kohya.safetensors",
            None,
        )
        cfg = yaml.safe_load((fixtures["sd_done"] / "config.yaml").read_text())["lora"]
        extra = (
            ["--rank", str(cfg["rank"]), "--alpha", str(cfg["alpha"] or cfg["rank"])] if kind == "rank+alpha" else []
        )
        if kind == "missing":
            lora = where / "none.safetensors"
        elif kind == "pickle":
            lora, marker = where / "lora.safetensors", where / "PAYLOAD_RAN"
            lora.write_bytes(payload(marker))
        check = (lambda r: "" if out.is_file() else "nothing written") if kind in ("readme", "rank+alpha") else None
        return Prepared(
            [FINETUNE, "export", "kohya", "--lora", str(lora), "--out", str(out), *extra],
            out,
            marker=marker,
            check=check,
        )

    return prepare


def eval_beyond_context(ws, fixtures, where):
    data = ws.root / "lm_data" / "val.jsonl"
    return Prepared([FINETUNE, "eval", "--model", str(ws.model), "--data", str(data), "--max-length", "100000"])


def corrupt_image(kind: str) -> Callable:
    def images(where):
        folder = write_images(where / "images", 3)
        f = folder / "img1.png"
        f.write_bytes(os.urandom(300)) if kind == "random bytes" else truncate(f)
        return folder

    return images


def one_image(where):
    return write_images(where / "images", 1)


def empty_images(where):
    (where / "images").mkdir()
    return where / "images"


BF16 = {"ACCELERATE_MIXED_PRECISION": "bf16"}
TI = [
    "method=textual_inversion",
    "textual_inversion.placeholder_token=<my-toy>",
    "textual_inversion.initializer_token=toy",
]

CASES = [
    # config: typed and strict
    Case("unknown key optim.lrr", "config", lm("optim.lrr=1"), says=("optim.lr",)),
    Case("wrong type train.max_steps=ten", "config", lm("train.max_steps=ten"), says=("max_steps",)),
    Case("lora.r=0", "config", lm("lora.r=0"), says=("lora",)),
    Case("train.batch_size=0", "config", lm("train.batch_size=0"), says=("batch_size",)),
    Case("train.grad_accum=0", "config", lm("train.grad_accum=0"), says=("grad_accum",)),
    Case("optim.lr=1e39", "config", lm("optim.lr=1e39"), says=("lr",)),
    Case(
        "warmup 50 > max_steps 3 (works, warns)",
        "config",
        lm("scheduler.warmup_steps=50", "train.max_steps=3"),
        expect="ok",
        says=("warmup",),
    ),
    Case("data.max_length beyond the context", "config", lm("data.max_length=100000"), says=("max_length",)),
    Case("--config file missing", "config", missing_config),
    Case("--config YAML syntax error", "config", yaml_config("train: [unclosed\n")),
    Case("SD unknown key lora.rnk", "config", sd("lora.rnk=4"), says=("lora.rank",)),
    Case("SD lora.rank=0", "config", sd("lora.rank=0"), says=("rank",)),
    Case("SD prior preservation with textual inversion", "config", sd(*TI, "prior.enabled=true"), says=("prior",)),
    # data
    Case("train file missing", "data", lm("data.train_file=/no/such.jsonl"), says=("does not exist",)),
    Case("broken JSONL line", "data", jsonl('{"text": "fine"}\n{"text": broken\n'), says=("train.jsonl:2",)),
    Case("empty train file", "data", jsonl("")),
    Case("SD corrupt image (random bytes)", "data", sd(images=corrupt_image("random bytes")), says=("img1.png",)),
    Case("SD truncated image", "data", sd(images=corrupt_image("truncated")), says=("img1.png",)),
    Case("SD empty instance dir", "data", sd(images=empty_images)),
    Case("SD instance dir missing", "data", sd("data.instance_dir=/no/such/images"), says=("does not exist",)),
    Case("SD one image with batch 4", "data", sd("train.batch_size=4", images=one_image)),
    # model
    Case("model dir missing", "model", lm("model.name_or_path=/no/such/model"), says=("does not exist",)),
    Case("pickled .ckpt as LM model (payload)", "model", pickled_ckpt_as_model("lm")),
    Case("LM dir with only a pickled pytorch_model.bin (payload)", "model", lm_model_pickled_bin, says=("pickle",)),
    Case("pickled .ckpt as SD model (payload)", "model", pickled_ckpt_as_model("sd"), says=("pickle",)),
    # output directory
    Case("LM output_dir is a file", "output dir", output_is_a_file("lm"), says=("notes.txt",)),
    Case("SD output_dir is a file", "output dir", output_is_a_file("sd"), says=("notes.txt",)),
    Case("output_dir unwritable (/sys)", "output dir", unwritable_output),
    Case(
        "finished run without checkpoints, run again",
        "output dir",
        on_finished("lm", "lm_nockpt", "train.max_steps=2", "train.save_every=0"),
    ),
    Case("finished run with checkpoints, new run", "output dir", on_finished("lm", "lm_done")),
    Case("overwrite_output_dir=true replaces the old run", "output dir", overwrite_finished, expect="ok"),
    # resume: never run foreign code, never resume a broken checkpoint silently
    Case(
        "checkpoint with a planted custom_checkpoint_0.pkl (payload)",
        "resume",
        resume("lm", "lm_done", "latest", damage=plant("custom_checkpoint_0.pkl")),
        says=("pickle",),
    ),
    Case(
        "checkpoint with a planted random_states_0.pkl (payload)",
        "resume",
        resume("lm", "lm_done", "latest", damage=plant("random_states_0.pkl")),
        says=("pickle",),
    ),
    Case(
        "checkpoint whose every file is a pickle (payload)",
        "resume",
        resume("lm", "lm_done", "latest", damage=pickle_every_file),
        says=("pickle",),
    ),
    Case(
        "pickle named model.safetensors, resume=PATH (payload)",
        "resume",
        resume("lm", "lm_done", "path", damage=plant("model.safetensors")),
    ),
    Case(
        "truncated model.safetensors, resume=PATH",
        "resume",
        resume("lm", "lm_done", "path", damage=truncated("model.safetensors")),
        says=("model.safetensors",),
    ),
    Case(
        "truncated optimizer.safetensors, resume=PATH",
        "resume",
        resume("lm", "lm_done", "path", damage=truncated("optimizer.safetensors")),
        says=("optimizer",),
    ),
    Case(
        "corrupt trainer_state.json, resume=PATH",
        "resume",
        resume("lm", "lm_done", "path", damage=garbled("trainer_state.json")),
        says=("trainer_state.json",),
    ),
    Case(
        "truncated newest checkpoint, resume=latest (falls back, works)",
        "resume",
        fallback_to_older("lm", "lm_done"),
        expect="ok",
        says=("skipping checkpoint-4",),
    ),
    Case("resume with a changed LoRA rank", "resume", resume("lm", "lm_done", "latest", "lora.r=8")),
    Case(
        "resume=latest on a finished run (works, unchanged)",
        "resume",
        resumed_finished_unchanged("lm", "lm_done"),
        expect="ok",
    ),
    Case("resume=/no/such/checkpoint", "resume", lm("train.resume=/no/such/checkpoint-3"), says=("checkpoint",)),
    Case(
        "SD checkpoint with a planted pickle (payload)",
        "resume",
        resume("sd", "sd_done", "latest", damage=plant("custom_checkpoint_0.pkl")),
        says=("pickle",),
    ),
    Case(
        "SD truncated newest checkpoint, resume=latest (falls back, works)",
        "resume",
        fallback_to_older("sd", "sd_done"),
        expect="ok",
        says=("skipping checkpoint-4",),
    ),
    Case(
        "SD resume=latest on a finished run (works, unchanged)",
        "resume",
        resumed_finished_unchanged("sd", "sd_done"),
        expect="ok",
    ),
    # export and eval commands
    Case("export merge --out a non-empty foreign dir", "export", merge("foreign")),
    Case("export merge --out a file", "export", merge("file")),
    Case("export merge into a new dir (works)", "export", merge("new"), expect="ok"),
    Case("export kohya without --rank, as the README (works)", "export", kohya("readme"), expect="ok"),
    Case("export kohya with --rank/--alpha (works)", "export", kohya("rank+alpha"), expect="ok"),
    Case("export kohya --lora missing", "export", kohya("missing")),
    Case("export kohya --lora a pickle (payload)", "export", kohya("pickle")),
    Case("eval --max-length beyond the context", "export", eval_beyond_context, says=("max-length",)),
    # the launchers
    Case("finetune train lm, unknown key", "launcher", lm("optim.lrr=1", launcher="finetune"), says=("optim.lr",)),
    Case("finetune train sd, corrupt image", "launcher", sd(launcher="finetune", images=corrupt_image("random bytes"))),
    Case("finetune train lm --accelerate-config missing", "launcher", launcher_bad_accelerate_config),
    Case("finetune train lm (works)", "launcher", lm(launcher="finetune"), expect="ok"),
    Case("accelerate launch recipes/train_lm.py (works)", "launcher", accelerate_launch, expect="ok"),
    # runs that go wrong, or used to
    Case("diverging run (SGD lr 9e5, no clipping)", "run", diverging, says=("diverg",), fresh_dir_must_vanish=False),
    Case("textual inversion under bf16 (works)", "run", sd(*TI, "train.batch_size=2", env=BF16), expect="ok"),
]
QUICK_CASES = [
    "unknown key optim.lrr",
    "warmup 50 > max_steps 3 (works, warns)",
    "SD corrupt image (random bytes)",
    "checkpoint with a planted custom_checkpoint_0.pkl (payload)",
    "export merge --out a non-empty foreign dir",
    "finetune train lm, unknown key",
    "resume=latest on a finished run (works, unchanged)",
    "truncated newest checkpoint, resume=latest (falls back, works)",
]


def expand_out(prep: Prepared) -> Prepared:
    """`{out}` in a command stands for the case's (copied) output directory."""
    prep.cmd = [c.replace("{out}", str(prep.guard)) for c in prep.cmd]
    return prep


def bad_input_suite(ws: Workspace, cases: list[Case], jobs: int) -> list[Outcome]:
    if not cases:
        return []
    fixtures = build_fixtures(ws)
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda ic: run_case(ws, fixtures, with_out(ic[1]), ic[0]), enumerate(cases)))


def with_out(case: Case) -> Case:
    prepare = case.prepare
    return Case(
        case.name,
        case.group,
        lambda ws, fx, where: expand_out(prepare(ws, fx, where)),
        case.expect,
        case.says,
        case.fresh_dir_must_vanish,
    )


# ---------------------------------------------------------------- report


def summary_rows(kills: list[Kill], outcomes: list[Outcome]) -> list[tuple]:
    """(what, tried, as expected) for the table the README quotes."""
    guarded = [o for o in outcomes if o.nothing_lost is not None]
    payloads = [o for o in outcomes if "payload" in o.case.name]
    per_recipe = ", ".join(f"{r.upper()} {sum(k.recipe == r for k in kills)}" for r in ("lm", "sd"))
    return [
        (f"SIGKILLs survived ({per_recipe})", len(kills), sum(bool(k.survived) for k in kills)),
        ("bad inputs behaved as expected", len(outcomes), sum(o.ok for o in outcomes)),
        (
            "refused runs that lost nothing (pre-existing output byte-identical, no dir created)",
            len(guarded),
            sum(bool(o.nothing_lost) for o in guarded),
        ),
        (
            "planted pickle payloads that never ran",
            len(payloads),
            sum("PAYLOAD RAN" not in o.problem for o in payloads),
        ),
    ]


def report(
    kills: list[Kill], scenarios: list[Scenario], outcomes: list[Outcome], seconds: float, command_line: str, root: Path
) -> str:
    def short(text: str) -> str:  # paths inside the temporary directory, which is gone by now
        return text.replace(str(root), "$TMP")

    def cell(text: str, limit: int = 400) -> str:  # one markdown table cell
        return " ".join(short(text).split())[:limit].replace("|", "\\|")

    lines = [
        "# Reliability suite",
        "",
        (
            f"`{command_line}` ({seconds / 60:.1f} min on this machine; tiny LLaMA and tiny SD built by the project, "
            "every run a subprocess as a user runs it)."
        ),
        "",
        "| | tried | as expected |",
        "|---|---:|---:|",
    ]
    lines += [f"| {what} | {tried} | {ok} |" for what, tried, ok in summary_rows(kills, outcomes)]
    lines += [
        "",
        (
            "A kill survived: every checkpoint-N visible after it was complete and loads, the resumed runs left no "
            "temporary file, the final artifacts' tensors and metadata are bit-identical to an uninterrupted run's "
            "with the same seed, and summary.json holds the uninterrupted run's keys and figures."
        ),
        "",
        "## Kills",
        "",
        "| recipe | launcher | moment | the output dir held | survived |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k.recipe} | {k.launcher} | {k.mode} | {k.at} | {'yes' if k.survived else 'NO: ' + cell(k.why)} |"
        for k in kills
    ]
    if bad_runs := [sc for sc in scenarios if sc.problems or sc.left]:
        lines += ["", "Runs whose resumption went wrong:", ""]
        lines += [
            f"- {sc.recipe} run {sc.index} ({sc.launcher}): {cell('; '.join(sc.problems + [f'left {x}' for x in sc.left]), 800)}"
            for sc in bad_runs
        ]
    lines += [
        "",
        "## Bad inputs",
        "",
        "| group | case | expected | got | s | as expected |",
        "|---|---|---|---|---:|---|",
    ]
    for o in outcomes:
        err = error_lines(o.result.stderr)
        got = f"exit {o.result.rc}" + (": " + cell(err[-1], 150) if err else "")
        expected = "refused in one line" if o.case.expect == "error" else "works"
        lines.append(
            f"| {o.case.group} | {o.case.name} | {expected} | {got} | {o.result.seconds:.0f} | "
            f"{'yes' if o.ok else 'NO: ' + cell(o.problem)} |"
        )
    if failing := [o for o in outcomes if not o.ok]:
        lines += ["", "## Failing cases", ""]
        for o in failing:
            lines += [
                f"### {o.case.name}",
                "",
                o.problem,
                "",
                "```",
                short(tail(o.result.stderr, 8)) or "(no stderr)",
                "```",
                "",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=None, help="SIGKILLs per recipe (default 10; --quick: 2; 0: none)")
    p.add_argument(
        "--quick", action="store_true", help="2 kills per recipe and a handful of bad inputs, for development"
    )
    p.add_argument("--jobs", type=int, default=2, help="bad-input cases run at once")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--case", action="append", help="only the bad-input cases whose name contains this (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (printed) for inspection")
    args = p.parse_args(argv)
    n_kills = args.kills if args.kills is not None else (2 if args.quick else 10)
    cases = [c for c in CASES if c.name in QUICK_CASES] if args.quick else CASES
    if args.case:
        cases = [c for c in CASES if any(w.lower() in c.name.lower() for w in args.case)]
    command_line = (
        "python benchmarks/reliability.py"
        + (" --quick" if args.quick else "")
        + (f" --kills {args.kills}" if args.kills is not None else "")
    )
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="finetune-reliability-"))
    try:
        ws = build_workspace(root)
        (root / "kills").mkdir()
        print(f"kills: {n_kills} per recipe, LM and SD side by side ...", flush=True)
        with ThreadPoolExecutor(2) as pool:  # one run of each at a time: the two cores, as the bad inputs use them
            done = list(
                pool.map(
                    lambda r: kill_suite(ws, r, n_kills, KILL_STEPS, random.Random(f"{args.seed}-{r}")),
                    ("lm", "sd") if n_kills else (),
                )
            )
        kills, scenarios = [k for ks, _ in done for k in ks], [sc for _, scs in done for sc in scs]
        print(f"  {time.monotonic() - t0:.0f} s; bad inputs: {len(cases)} cases ...", flush=True)
        outcomes = bad_input_suite(ws, cases, args.jobs)
        print(f"  {time.monotonic() - t0:.0f} s", flush=True)
        text = report(kills, scenarios, outcomes, time.monotonic() - t0, command_line, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(text)
    if not args.quick and not args.case and n_kills:  # the figures the README states come from a full run only
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
