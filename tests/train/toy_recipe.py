"""A tiny next-token model on synthetic sequences: drives the shared loop in tests (resume,
multi-process equivalence, NaN guard, early stopping) without any pretrained weights."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from safetensors.torch import save_file

from finetune.config import parse_recipe_args
from finetune.errors import exit_on_user_error
from finetune.losses.lm import causal_lm_loss, count_trained_tokens
from finetune.optim.optimizers import OptimConfig, build_optimizer, param_groups
from finetune.optim.schedulers import SchedulerConfig, build_scheduler
from finetune.train import TrainConfig, build_accelerator, start_run, train


@dataclass
class ToyConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2))
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(name="cosine", warmup_steps=2))
    vocab: int = 32  # toy vocabulary size
    n_seqs: int = 64  # synthetic training sequences
    seq_len: int = 12  # tokens per sequence
    token_loss: bool = True  # per-token loss normalised across the window (else mean of means)
    poison_at: int = -1  # from this micro-step on, multiply the loss by NaN (tests the guard)
    explode_at: int = -1  # from this micro-step on, multiply the loss by 1e6: finite, but diverged (tests the guard)
    nan_eval_at: int = -1  # from this optimizer step on, evaluation returns NaN (tests the evaluation guard)
    step_sleep: float = 0.0  # seconds to sleep per micro-step (lets tests kill a run mid-way)


class Toy(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, vocab))

    def forward(self, ids):
        return self.mlp(self.emb(ids))


def make_data(cfg: ToyConfig):
    g = torch.Generator().manual_seed(1234)
    start = torch.randint(0, cfg.vocab, (cfg.n_seqs, 1), generator=g)
    ids = (start + torch.arange(cfg.seq_len)) % cfg.vocab  # learnable: next = current + 1
    labels = ids.clone()
    lengths = torch.randint(3, cfg.seq_len + 1, (cfg.n_seqs,), generator=g)
    for i, n in enumerate(lengths):
        labels[i, n:] = -100  # variable trained-token counts per sequence
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(cfg.n_seqs)]


@exit_on_user_error
def main(argv=None):
    cfg = parse_recipe_args(ToyConfig, argv)
    accelerator = build_accelerator(cfg.train.seed)
    out = start_run(accelerator, cfg, cfg.train)
    model = Toy(cfg.vocab)
    optimizer = build_optimizer(param_groups(model.named_parameters(), cfg.optim.weight_decay), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.train.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = make_data(cfg)
    collate = lambda items: {k: torch.stack([it[k] for it in items]) for k in items[0]}  # noqa: E731
    step_no = {"n": 0}

    def step_fn(batch):
        logits = model(batch["input_ids"])
        reduction = "sum" if cfg.token_loss else "mean"
        loss = causal_lm_loss(logits, batch["labels"], reduction=reduction)
        step_no["n"] += 1
        time.sleep(cfg.step_sleep)
        if 0 <= cfg.poison_at <= step_no["n"]:
            loss = loss * float("nan")
        if 0 <= cfg.explode_at <= step_no["n"]:
            loss = loss * 1e6
        return loss

    def eval_fn(step):
        batch = collate(data[:16])
        logits = model(batch["input_ids"])
        value = float(causal_lm_loss(logits, batch["labels"]))
        return {"val_loss": float("nan") if 0 <= cfg.nan_eval_at <= step else value}

    def save_fn(path):
        path.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(sd, str(path / "model.safetensors"))

    result = train(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        dataset=data,
        collate_fn=collate,
        step_fn=step_fn,
        cfg=cfg.train,
        eval_fn=eval_fn,
        save_fn=save_fn,
        count_items=(lambda b: count_trained_tokens(b["labels"])) if cfg.token_loss else None,
    )
    if accelerator.is_main_process:
        save_fn(out / "final")
        print(
            f"processes={accelerator.num_processes} done step={result.global_step} stopped_early={result.stopped_early} best={result.best_metric}"
        )


if __name__ == "__main__":
    main()
