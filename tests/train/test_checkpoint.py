"""Checkpoint files, read as an attacker or a bad disk would leave them: a pickle anywhere is refused
unopened, a missing, truncated or mismatched file fails in one line naming it before anything loads,
and resume=latest falls back to the newest usable checkpoint."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model

from finetune.errors import UserError
from finetune.train.checkpoint import (
    Checkpointed,
    CorruptCheckpoint,
    RefusedCheckpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)


class Payload:
    """A pickle that writes `marker` when unpickled: what a malicious checkpoint file would carry."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def payload_bytes(marker: Path) -> bytes:
    data = pickle.dumps(Payload(marker))
    pickle.loads(data)  # the payload is live: unpickling it runs its code
    assert marker.exists()
    marker.unlink()
    return data


class Run:
    """A tiny LoRA model, AdamW and a scheduler under a real (CPU) Accelerator, as the loop checkpoints them."""

    def __init__(self, r: int = 2, seed: int = 0):
        torch.manual_seed(seed)
        base = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        model = get_peft_model(base, LoraConfig(r=r, lora_alpha=r, target_modules=["0", "2"], init_lora_weights=False))
        self.params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(self.params, lr=1e-2, betas=(0.8, 0.99))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
        self.accelerator = Accelerator(cpu=True)
        self.model, self.opt = self.accelerator.prepare(model, opt)
        self.what = Checkpointed([self.model], [self.opt], {"scheduler": self.scheduler}, only=self.params)

    def step(self, n: int = 1):
        for _ in range(n):
            self.model(torch.randn(3, 4)).square().mean().backward()
            self.opt.step()
            self.scheduler.step()
            self.opt.zero_grad()

    def save(self, out: Path, step: int) -> Path:
        state = {"global_step": step, "epoch": 0, "position": step, "world_size": 1}
        return save_checkpoint(self.accelerator, out, step, state, 0, self.what)

    def weights(self) -> dict:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """checkpoint-2 and checkpoint-3 of one run."""
    out = tmp_path_factory.mktemp("run")
    run = Run()
    run.step(2)
    run.save(out, 2)
    run.step(1)
    run.save(out, 3)
    return out


def copy_of(saved: Path, tmp_path: Path) -> Path:
    shutil.copytree(saved, tmp_path / "out")
    return tmp_path / "out"


def assert_untouched(run: Run, before: dict):
    after = run.weights()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed load changed the model"


CHECKPOINT_FILES = [
    "model.safetensors",
    "optimizer.safetensors",
    "scheduler.safetensors",
    "rng_0.safetensors",
    "trainer_state.json",
]


def test_a_checkpoint_is_safetensors_and_json_only_with_trainable_weights(saved):
    ckpt = saved / "checkpoint-3"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(CHECKPOINT_FILES)
    from safetensors.torch import load_file

    assert set(load_file(ckpt / "model.safetensors")) == {
        n for n, p in Run().model.named_parameters() if p.requires_grad
    }


def test_resume_restores_everything_bit_identically(saved):
    ref = Run()
    ref.step(3)
    ref_rng = torch.get_rng_state()
    resumed = Run()  # the same frozen base (rebuilt, as a recipe does); LoRA weights and RNG scrambled below
    with torch.no_grad():
        for p in resumed.params:
            p.add_(torch.randn_like(p))
    state = load_checkpoint(resumed.accelerator, saved / "checkpoint-3", resumed.what)
    assert state["global_step"] == 3 and resumed.scheduler.last_epoch == 3
    assert torch.equal(torch.get_rng_state(), ref_rng)
    assert all(torch.equal(a, b) for a, b in zip(ref.params, resumed.params))
    torch.set_rng_state(ref_rng)
    ref.step(2)
    torch.set_rng_state(ref_rng)
    resumed.step(2)  # the moments and the schedule came back too: two more steps agree bit for bit
    assert all(torch.equal(a, b) for a, b in zip(ref.params, resumed.params))
    assert resumed.opt.param_groups[0]["lr"] == ref.opt.param_groups[0]["lr"]


@pytest.mark.parametrize(
    "name",
    CHECKPOINT_FILES
    + ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scaler.pt", "sub/extra.ckpt"],
)
def test_a_pickle_in_any_file_is_refused_unopened(saved, tmp_path, name):
    out = copy_of(saved, tmp_path)
    marker = tmp_path / "PWNED"
    (out / "checkpoint-3" / name).parent.mkdir(exist_ok=True)
    (out / "checkpoint-3" / name).write_bytes(payload_bytes(marker))
    run = Run(seed=1)
    before = run.weights()
    for resume in ("latest", str(out / "checkpoint-3")):  # no fallback past a pickle: it is refused outright
        with pytest.raises(RefusedCheckpoint) as e:
            resume_checkpoint(run.accelerator, out, resume, run.what)
        message = str(e.value)
        assert name in message and "only safetensors/JSON" in message and "\n" not in message
    assert not marker.exists()
    assert_untouched(run, before)


def test_an_accelerate_format_checkpoint_is_refused(tmp_path):
    run = Run()
    run.accelerator.register_for_checkpointing(run.scheduler)
    run.step(1)
    ckpt = tmp_path / "checkpoint-1"
    run.accelerator.save_state(str(ckpt))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1, "epoch": 0, "position": 1}))
    with pytest.raises(RefusedCheckpoint, match=r"holds \w+\.(bin|pkl), a pickle"):
        load_checkpoint(run.accelerator, ckpt, Run().what)


def _truncate(f: Path):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize(
    "case, name, phrase",
    [
        ("truncated", "model.safetensors", "is unreadable"),
        ("truncated", "optimizer.safetensors", "is unreadable"),
        ("truncated", "rng_0.safetensors", "is unreadable"),
        ("missing", "model.safetensors", "is missing"),
        ("missing", "scheduler.safetensors", "is missing"),
        ("bad json", "trainer_state.json", "is unreadable (JSONDecodeError"),
        ("no step", "trainer_state.json", "lacks the non-negative integers"),
        ("plain tensors", "optimizer.safetensors", "not a finetune state file"),
    ],
)
def test_a_corrupt_file_fails_in_one_line_naming_it_and_loads_nothing(saved, tmp_path, case, name, phrase):
    out = copy_of(saved, tmp_path)
    f = out / "checkpoint-3" / name
    if case == "truncated":
        _truncate(f)
    elif case == "missing":
        f.unlink()
    elif case == "bad json":
        f.write_text('{"global_step": 3,')
    elif case == "no step":
        f.write_text(json.dumps({"epoch": 0, "position": 3}))
    else:
        shutil.copy(out / "checkpoint-3" / "model.safetensors", f)
    run = Run(seed=1)
    before, sched_before = run.weights(), run.scheduler.state_dict()
    with pytest.raises(CorruptCheckpoint) as e:
        load_checkpoint(run.accelerator, out / "checkpoint-3", run.what)
    message = str(e.value)
    assert str(f) in message and phrase in message and "\n" not in message, message
    assert_untouched(run, before)
    assert run.scheduler.state_dict() == sched_before and not run.opt.state_dict()["state"]


def test_a_changed_lora_rank_names_the_file_and_the_shapes(saved):
    run = Run(r=4)
    before = run.weights()
    with pytest.raises(
        CorruptCheckpoint,
        match=r"model\.safetensors does not fit the model: .*lora_A.* has shape "
        r"\[2, 4\], the model's is \[4, 4\].*lora\.r",
    ):
        load_checkpoint(run.accelerator, saved / "checkpoint-3", run.what)
    assert_untouched(run, before)


def test_latest_falls_back_to_the_newest_usable_checkpoint_with_a_warning(saved, tmp_path, capsys):
    out = copy_of(saved, tmp_path)
    _truncate(out / "checkpoint-3" / "model.safetensors")
    run = Run(seed=1)
    path, state = resume_checkpoint(run.accelerator, out, "latest", run.what)
    assert path.name == "checkpoint-2" and state["global_step"] == 2
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: skipping checkpoint-3: checkpoint file ")
    assert "model.safetensors is unreadable" in warning[0]
    ref = Run()
    ref.step(2)
    assert all(torch.equal(a, b) for a, b in zip(ref.params, run.params))  # checkpoint-2's weights, exactly


def test_latest_with_no_usable_checkpoint_fails_instead_of_starting_over(saved, tmp_path):
    out = copy_of(saved, tmp_path)
    for ckpt in out.glob("checkpoint-*"):
        (ckpt / "model.safetensors").unlink()
    run = Run()
    with pytest.raises(UserError, match=r"no usable checkpoint in .* \(2 tried"):
        resume_checkpoint(run.accelerator, out, "latest", run.what)
    assert resume_checkpoint(run.accelerator, tmp_path / "fresh", "latest", run.what) is None  # nothing saved yet


def test_a_checkpoint_of_another_process_count_is_refused(saved, tmp_path):
    out = copy_of(saved, tmp_path)
    f = out / "checkpoint-3" / "trainer_state.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "world_size": 2}))
    with pytest.raises(UserError, match="written by 2 processes, this run has 1; resume with --num_processes 2"):
        load_checkpoint(Run().accelerator, out / "checkpoint-3", Run().what)


def test_the_fp16_loss_scale_comes_back(tmp_path):
    run = Run()
    run.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    run.accelerator.scaler.scale(torch.ones(()))
    run.accelerator.scaler.update(512.0)  # as after an overflowing step lowered it
    run.save(tmp_path, 1)
    resumed = Run()
    resumed.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    load_checkpoint(resumed.accelerator, tmp_path / "checkpoint-1", resumed.what)
    assert resumed.accelerator.scaler.state_dict() == run.accelerator.scaler.state_dict()
    assert resumed.accelerator.scaler.get_scale() == 512.0


def test_a_safetensors_header_that_starts_like_a_pickle_is_not_taken_for_one(tmp_path):
    from safetensors.torch import save_file

    from finetune.train.checkpoint import _looks_pickled

    for n in range(1, 1500):  # find a header whose length is 0x0?80 with ? in 2..5: bytes 80 02..05, like a pickle's
        save_file({"w" * n: torch.zeros(1)}, str(tmp_path / "m.safetensors"))
        head = (tmp_path / "m.safetensors").read_bytes()[:2]
        if head[0] == 0x80 and 2 <= head[1] <= 5:
            break
    else:
        pytest.skip("no such header length found")
    assert not _looks_pickled(tmp_path / "m.safetensors")
    (tmp_path / "m.safetensors").write_bytes(payload_bytes(tmp_path / "marker"))
    assert _looks_pickled(tmp_path / "m.safetensors")
