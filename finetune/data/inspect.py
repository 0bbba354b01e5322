"""Look at text data the way the model will see it, before spending compute on training.

`inspect_data` builds the datasets exactly as training does and returns a report: per-split token counts,
how many tokens are trained, how many records were truncated, and a few rendered samples in which the
trained tokens are wrapped in [[ ]]. It raises UserError for data that cannot train a useful model.

It also measures how much each held-out split shares with training (finetune/data/overlap.py: the share of its
word 8-grams found in train, exact and near duplicates of training documents) and prints one warning line per
problem, since a validation split that repeats training text reports recall, not generalization.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from finetune.data.overlap import NGRAM, TrainIndex, warning_lines
from finetune.data.text import IGNORE_INDEX, TextDataConfig, TokenizedSplit, build_text_datasets, load_raw_splits
from finetune.errors import UserError

MAX_SAMPLE_CHARS = 1500  # a rendered sample is cut after this many characters


def render_sample(input_ids: list[int], labels: list[int], tokenizer) -> str:
    """Decode a sequence, wrapping each run of trained tokens (label != IGNORE_INDEX) in [[ ]]."""
    pieces: list[str] = []
    run: list[int] = []
    run_trained = False  # whether `run` holds trained tokens; read only once `run` has one
    for tok, lab in zip(input_ids, labels):
        trained = lab != IGNORE_INDEX
        if run and trained != run_trained:
            pieces.append(_decode_run(run, run_trained, tokenizer))
            run = []
        run.append(tok)
        run_trained = trained
    if run:
        pieces.append(_decode_run(run, run_trained, tokenizer))
    text = "".join(pieces)
    return text if len(text) <= MAX_SAMPLE_CHARS else text[:MAX_SAMPLE_CHARS] + " ...[cut]"


def _decode_run(ids: list[int], trained: bool, tokenizer) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return f"[[{text}]]" if trained else text


def split_summary(name: str, split: TokenizedSplit) -> str:
    s = split.stats
    share = 100.0 * s.trained_tokens / s.tokens if s.tokens else 0.0
    return (
        f"{name}: {s.documents} records -> {s.sequences} sequences, {s.tokens} tokens, "
        f"{s.trained_tokens} trained ({share:.1f}%), {s.truncated} truncated"
    )


def eos_trained(split: TokenizedSplit, eos_id: int) -> bool:
    return any(lab == eos_id for e in split.examples for lab in e["labels"])


def check_split(name: str, split: TokenizedSplit, cfg: TextDataConfig, eos_id: int) -> None:
    """UserError when the split cannot teach (or measure) anything useful."""
    s = split.stats
    if s.sequences == 0 or s.tokens == 0:
        raise UserError(f"{name} split is empty; add records to its file")
    if s.truncated and s.truncated == s.documents:
        raise UserError(
            f"{name}: all {s.documents} records are longer than data.max_length={cfg.max_length} and were truncated; raise data.max_length"
        )
    if s.trained_tokens == 0:
        raise UserError(
            f"{name}: no token is trained (every label is masked); check the format and that answers fit in data.max_length={cfg.max_length}"
        )
    if not eos_trained(split, eos_id):
        raise UserError(
            f"{name}: the EOS token is never trained, so the model will not learn to stop; "
            "use a chat template that ends turns with the tokenizer's eos_token, or raise data.max_length"
        )


def record_texts(ds: Any, fmt: str, text_field: str) -> Iterator[str]:
    """The words of each record as one string: the document, or the prompt and answer, or every message."""
    for row in ds:
        if fmt == "text":
            yield row[text_field]
        elif fmt == "instruction":
            yield " ".join(row.get(k) or "" for k in ("system", "prompt", "completion"))
        else:
            yield " ".join(m["content"] for m in row["messages"])


def overlap_lines(cfg: TextDataConfig) -> list[str]:
    """Each held-out split's overlap with train, then one warning line per problem found."""
    raw = load_raw_splits(cfg)
    held = [s for s in ("validation", "test", "general_validation") if s in raw]
    if not held:
        return []
    index = TrainIndex(record_texts(raw["train"], cfg.format, cfg.text_field))
    lines = [f"overlap with train (word {NGRAM}-grams, duplicates):"]
    warnings = []
    for split in held:
        fmt = "text" if split == "general_validation" else cfg.format
        o = index.measure(record_texts(raw[split], fmt, cfg.text_field), split)
        lines.append("  " + o.summary())
        warnings += warning_lines(o)
    return lines + warnings


def inspect_data(cfg: TextDataConfig, tokenizer, n_samples: int = 3) -> str:
    """A readable report of the tokenized data; raises UserError on unusable data."""
    splits = build_text_datasets(cfg, tokenizer)
    eos_id = tokenizer.eos_token_id
    for name, split in splits.items():
        check_split(name, split, cfg, eos_id)
    lines = [f"format={cfg.format} max_length={cfg.max_length} pack={cfg.pack and cfg.format == 'text'}"]
    lines += [split_summary(name, split) for name, split in splits.items()]
    lines += overlap_lines(cfg)
    train = splits["train"]
    for i in range(min(n_samples, len(train))):
        e = train.examples[i]
        lines += ["", f"--- train sample {i} ({len(e['input_ids'])} tokens; trained tokens in [[ ]]) ---"]
        lines.append(render_sample(e["input_ids"], e["labels"], tokenizer))
    return "\n".join(lines)
