"""Text, instruction and chat data for causal-LM fine-tuning.

JSONL files become map-style torch datasets of `input_ids` / `labels` (and `position_ids` when packed):

- format "text" ({"text": ...}): each document is tokenized, EOS is appended, and documents are packed into
  blocks of `max_length` tokens. Inside a block `position_ids` restart at 0 where a document starts, and the
  collate function turns those restarts into a block-diagonal causal mask, so no token attends across a
  document boundary. Labels are the tokens themselves (EOS included) except each document's first token,
  which nothing inside its own document can predict; the packed loss therefore equals the per-document loss.
- format "instruction" ({"prompt", "completion"}) and "chat" ({"messages": [...]}): rendered with the
  tokenizer's chat template; only assistant answers and the end-of-turn token after each are trained.

Every file is checked line by line before `datasets` loads it, so a bad line is reported as `file:line`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from finetune.errors import UserError

IGNORE_INDEX = -100  # label value the causal-LM loss skips (transformers' convention)
CHAT_ROLES = ("system", "user", "assistant", "tool")
FORMAT_EXAMPLES = {
    "text": '{"text": "..."}',
    "instruction": '{"prompt": "...", "completion": "..."}',
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
}


@dataclass
class TextDataConfig:
    train_file: str  # JSONL training file, one JSON object per line
    format: Literal["text", "instruction", "chat"] = (
        "text"  # record shape: {"text"}, {"prompt","completion"} or {"messages"}
    )
    validation_file: str | None = None  # JSONL validation file (same format as train); None: see validation_fraction
    test_file: str | None = None  # JSONL test file (same format as train), evaluated at the end
    general_validation_file: str | None = None  # general-domain {"text"} JSONL used to measure forgetting
    text_field: str = "text"  # key of the document in "text" records (and in the general validation file)
    max_length: int = 256  # block size when packing; otherwise the longest sequence (longer ones are truncated)
    pack: bool = True  # "text" only: concatenate documents (EOS after each) into full blocks of max_length tokens
    packed_attention: Literal["block_mask", "position_ids", "none"] = (
        "block_mask"  # how packed documents are kept apart (see collate_text)
    )
    validation_fraction: float = 0.0  # with no validation_file: fraction of train documents held out as validation
    seed: int = 0  # seed of the validation_fraction split


@dataclass
class SplitStats:
    documents: int  # records read from the file
    sequences: int  # model inputs after packing / truncation
    tokens: int  # real (non-padding) tokens over all sequences
    trained_tokens: int  # tokens whose label is not IGNORE_INDEX
    truncated: int  # records cut at max_length (their tail is dropped)


class TokenizedSplit(torch.utils.data.Dataset):
    """A deterministic map-style dataset of token lists; items are dicts of 1D long tensors."""

    def __init__(self, examples: list[dict[str, list[int]]], stats: SplitStats):
        self.examples = examples
        self.stats = stats

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.long) for k, v in self.examples[i].items()}


# ---------------------------------------------------------------- validation of files, line by line


def check_config(cfg: TextDataConfig) -> None:
    """Reject settings that cannot work, before any file is read."""
    if not cfg.train_file:
        raise UserError("data.train_file is empty; set it to a JSONL file, e.g. data.train_file=data/legal/train.jsonl")
    if cfg.max_length < 2:
        raise UserError(f"data.max_length={cfg.max_length} is too small; use at least 2 (typically 256-2048)")
    if not 0.0 <= cfg.validation_fraction < 1.0:
        raise UserError(f"data.validation_fraction={cfg.validation_fraction} must be in [0, 1); e.g. 0.1")
    if cfg.validation_fraction > 0 and cfg.validation_file:
        raise UserError("data.validation_fraction and data.validation_file are both set; keep only one of them")


def _record_problem(rec: Any, fmt: str, text_field: str) -> str | None:
    """Why a parsed JSONL record is unusable for `fmt` (with the fix), or None when it is fine."""
    if not isinstance(rec, dict):
        return (
            f"line is a JSON {type(rec).__name__}, not an object; write one object per line like {FORMAT_EXAMPLES[fmt]}"
        )
    if fmt == "text":
        return _string_field_problem(rec, text_field, "set data.text_field to the key holding the text")
    if fmt == "instruction":
        for key in ("prompt", "completion"):
            problem = _string_field_problem(rec, key, f"each line needs {FORMAT_EXAMPLES['instruction']}")
            if problem:
                return problem
        if "system" in rec and not isinstance(rec["system"], str):
            return "field 'system' must be a string; fix or remove it"
        return None
    return _chat_problem(rec)


def _string_field_problem(rec: dict, key: str, fix: str) -> str | None:
    if key not in rec:
        return f"missing field '{key}' (found {sorted(rec)}); {fix}"
    if not isinstance(rec[key], str):
        return f"field '{key}' must be a string, got {type(rec[key]).__name__}; fix the line"
    if not rec[key].strip():
        return f"field '{key}' is empty; fill it in or remove the line"
    return None


def _chat_problem(rec: dict) -> str | None:
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        return f"missing or empty 'messages' list; each line needs {FORMAT_EXAMPLES['chat']}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"message {i} must be an object with string 'role' and 'content'; fix the message"
        if m["role"] not in CHAT_ROLES:
            return f"message {i} has role '{m['role']}'; use one of {', '.join(CHAT_ROLES)}"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return "chat has no assistant turn, so nothing would be trained; add an assistant message or remove the line"
    roles = [m["role"] for m in messages]
    if "user" not in roles or roles.index("assistant") < roles.index("user"):
        return "an assistant turn comes before any user turn; start the conversation with a user message"
    return None


def read_jsonl(path: str, fmt: str, text_field: str = "text") -> list[int]:
    """Check every line of a JSONL file for `fmt`; return the line numbers of its records.

    Blank lines are skipped. Any problem raises UserError as `path:line: problem; fix`.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data file '{path}' does not exist; fix the path in the data config")
    line_numbers = []
    try:
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(
                        f"{path}:{lineno}: line is not valid JSON ({e.msg}, column {e.colno}); fix or remove the line"
                    ) from None
                problem = _record_problem(rec, fmt, text_field)
                if problem:
                    raise UserError(f"{path}:{lineno}: {problem}")
                line_numbers.append(lineno)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    if not line_numbers:
        raise UserError(f"{path}: file is empty; add one JSON object per line like {FORMAT_EXAMPLES[fmt]}")
    return line_numbers


def load_jsonl_dataset(path: str, fmt: str, text_field: str = "text"):
    """Validate `path` line by line, then load it with `datasets` (adds a `__line__` column for error messages)."""
    import datasets

    line_numbers = read_jsonl(path, fmt, text_field)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar per small file is noise; restored below
    try:
        ds = datasets.load_dataset("json", data_files={"data": str(path)}, split="data")
    except Exception as e:  # pyarrow rejects e.g. a field that is a number on one line and a string on another
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path}: datasets could not load the file ({first}); give each field one type on every line"
        ) from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    return ds.add_column("__line__", line_numbers)


# ---------------------------------------------------------------- tokenization


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; set tokenizer.eos_token (e.g. in its tokenizer_config.json)")
    return tokenizer.eos_token_id


def tokenize_documents(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each document, with the tokenizer's own special tokens (e.g. BOS) and EOS at the end."""
    eos = _eos_id(tokenizer)
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [doc if doc and doc[-1] == eos else doc + [eos] for doc in ids]


def document_labels(doc: list[int]) -> list[int]:
    """Labels of one document: its tokens, except the first, which no token of the document can predict."""
    return [IGNORE_INDEX] + doc[1:]


def pack_documents(docs: list[list[int]], block_size: int) -> list[dict[str, list[int]]]:
    """Concatenate documents into blocks of `block_size` tokens (the last block may be shorter).

    Written by hand: transformers' DataCollatorWithFlattening flattens whole examples per batch but does not
    cut a stream into fixed blocks. `position_ids` restart at 0 at each document start; a document cut by a
    block boundary continues in the next block as a new segment starting at position 0. A segment's first
    token gets label IGNORE_INDEX: nothing inside its segment can predict it.
    """
    stream = [tok for doc in docs for tok in doc]
    positions = [p for doc in docs for p in range(len(doc))]
    blocks = []
    for start in range(0, len(stream), block_size):
        ids, pos = stream[start : start + block_size], positions[start : start + block_size]
        cont = next((i for i, p in enumerate(pos) if p == 0 and i > 0), len(pos))  # end of a continued piece
        pos = [p - pos[0] for p in pos[:cont]] + pos[cont:]
        labels = [IGNORE_INDEX if p == 0 else t for t, p in zip(ids, pos)]
        blocks.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return blocks


def _chat_template_text(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _assistant_char_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Character spans of `full` to train: each assistant answer up to and including its end-of-turn token.

    The template's output for the conversation before an answer (with the generation prompt) must be a
    prefix of the whole rendering; what the answer adds is then exactly its span. Written by hand because
    `return_assistant_tokens_mask` needs `{% generation %}` markers that most chat templates lack.
    """
    eos = tokenizer.eos_token
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _chat_template_text(tokenizer, messages[:i], generation_prompt=True)  # i > 0: a user turn comes first
        upto = _chat_template_text(tokenizer, messages[: i + 1])
        if not (full.startswith(before) and full.startswith(upto) and len(upto) > len(before)):
            raise ValueError("chat template output is not prefix-stable")
        segment = upto[len(before) :]
        cut = segment.rfind(eos) if eos else -1
        end = len(before) + (cut + len(eos) if cut >= 0 else len(segment.rstrip()))
        spans.append((len(before), end))
    return spans


def tokenize_conversation(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a chat rendered with the tokenizer's template; labels only on assistant answers."""
    full = _chat_template_text(tokenizer, messages)
    spans = _assistant_char_spans(tokenizer, messages, full)
    # The template already writes BOS and other special tokens as text, so add none here.
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE_INDEX
        for tok, (start, _) in zip(enc["input_ids"], enc["offset_mapping"])
    ]
    return list(enc["input_ids"]), labels


def _messages_of(row: dict, fmt: str) -> list[dict]:
    if fmt == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return system + [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


def _truncate(ids: list[int], labels: list[int], max_length: int) -> tuple[dict[str, list[int]], bool]:
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}, len(ids) > max_length


def _stats(examples: list[dict[str, list[int]]], documents: int, truncated: int) -> SplitStats:
    return SplitStats(
        documents=documents,
        sequences=len(examples),
        tokens=sum(len(e["input_ids"]) for e in examples),
        trained_tokens=sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in examples),
        truncated=truncated,
    )


def tokenize_text_split(ds, cfg: TextDataConfig, tokenizer, text_field: str) -> TokenizedSplit:
    """Documents -> packed blocks (cfg.pack) or one truncated sequence per document."""
    docs = tokenize_documents(list(ds[text_field]), tokenizer)
    if cfg.pack:
        blocks = pack_documents(docs, cfg.max_length)
        return TokenizedSplit(blocks, _stats(blocks, len(docs), truncated=0))
    pairs = [_truncate(doc, document_labels(doc), cfg.max_length) for doc in docs]
    examples = [e for e, _ in pairs]
    return TokenizedSplit(examples, _stats(examples, len(docs), sum(cut for _, cut in pairs)))


def tokenize_chat_split(ds, cfg: TextDataConfig, tokenizer, path: str) -> TokenizedSplit:
    """Instruction or chat records -> one sequence each, truncated to cfg.max_length."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the tokenizer has no chat template, needed for data.format={cfg.format}; use an instruct/chat tokenizer or data.format=text"
        )
    examples, truncated = [], 0
    for row in ds:
        try:
            ids, labels = tokenize_conversation(_messages_of(row, cfg.format), tokenizer)
        except Exception as e:  # the template itself rejected the conversation (e.g. role order)
            raise UserError(
                f"{path}:{row['__line__']}: the chat template cannot render this record ({e}); fix the roles/order of its messages"
            ) from None
        example, cut = _truncate(ids, labels, cfg.max_length)
        examples.append(example)
        truncated += cut
    return TokenizedSplit(examples, _stats(examples, len(examples), truncated))


# ---------------------------------------------------------------- building all splits


def _split_files(cfg: TextDataConfig) -> dict[str, tuple[str, str, str]]:
    """split -> (path, format, text field) for every configured file."""
    files: dict[str, tuple[str, str, str]] = {"train": (cfg.train_file, cfg.format, cfg.text_field)}
    if cfg.validation_file:
        files["validation"] = (cfg.validation_file, cfg.format, cfg.text_field)
    if cfg.test_file:
        files["test"] = (cfg.test_file, cfg.format, cfg.text_field)
    if cfg.general_validation_file:
        files["general_validation"] = (cfg.general_validation_file, "text", cfg.text_field)
    return files


def load_raw_splits(cfg: TextDataConfig) -> dict[str, Any]:
    """split -> validated `datasets.Dataset` of records; the validation split may be carved from train."""
    check_config(cfg)
    raw = {split: load_jsonl_dataset(path, fmt, field) for split, (path, fmt, field) in _split_files(cfg).items()}
    if cfg.validation_fraction > 0:
        n_val = int(round(cfg.validation_fraction * len(raw["train"])))
        if n_val < 1 or n_val >= len(raw["train"]):
            raise UserError(
                f"data.validation_fraction={cfg.validation_fraction} of {len(raw['train'])} train records leaves an empty split; "
                "change the fraction or give data.validation_file"
            )
        parts = raw["train"].train_test_split(test_size=n_val, seed=cfg.seed, shuffle=True)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
    return raw


def build_text_datasets(cfg: TextDataConfig, tokenizer) -> dict[str, TokenizedSplit]:
    """Tokenized splits ("train", and "validation", "test", "general_validation" when configured).

    Each value is a map-style torch Dataset with a `.stats` SplitStats. Batch them with `make_collate`.
    """
    _eos_id(tokenizer)
    raw = load_raw_splits(cfg)
    files = _split_files(cfg)
    out = {}
    for split, ds in raw.items():
        path, fmt, field = files.get(split, files["train"])
        if fmt == "text":
            out[split] = tokenize_text_split(ds, cfg, tokenizer, field)
        else:
            out[split] = tokenize_chat_split(ds, cfg, tokenizer, path)
    return out


# ---------------------------------------------------------------- batching


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per token, the index of its packed segment (a new segment starts wherever the position is 0)."""
    return (position_ids == 0).cumsum(-1)


def block_causal_mask(segments: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive B x 1 x L x L mask: 0 where a query may attend (same segment, not in the future), dtype-min elsewhere.

    Float, not bool: LLaMA's eager attention adds the mask to the scores, so a bool mask would be silently
    wrong there; sdpa accepts the float mask too (also with a bf16 model).
    """
    length = segments.shape[-1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=segments.device))
    allowed = causal & (segments[:, :, None] == segments[:, None, :])
    zero = torch.zeros((), dtype=dtype, device=segments.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def _pad(rows: list[torch.Tensor], value: int, length: int) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def collate_text(
    examples: list[dict[str, torch.Tensor]],
    pad_token_id: int,
    packed_attention: str = "block_mask",
    mask_dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Right-pad a list of items into a batch; padding gets label IGNORE_INDEX.

    Unpacked items: input_ids, attention_mask (B x L, 1 = real token), labels.
    Packed items (they carry position_ids), by `packed_attention`:
      "block_mask":   + position_ids and a 4D additive block-diagonal causal attention_mask (eager and sdpa);
      "position_ids": position_ids only, no attention_mask; transformers then infers document boundaries
                      from the position restarts, but only when the model runs with use_cache=False
                      (a cache disables the inference and documents silently see each other) or flash-attn;
      "none":         a 2D mask and no position_ids: documents attend to each other (plain concatenation,
                      e.g. for PEFT prompt learning, whose forward only accepts a 2D mask).
    Each padding position is a segment of its own, so no row of the 4D mask is fully masked.
    """
    length = max(len(e["input_ids"]) for e in examples)
    batch = {
        "input_ids": _pad([e["input_ids"] for e in examples], pad_token_id, length),
        "labels": _pad([e["labels"] for e in examples], IGNORE_INDEX, length),
    }
    real = _pad([torch.ones_like(e["input_ids"]) for e in examples], 0, length)
    if "position_ids" not in examples[0] or packed_attention == "none":
        batch["attention_mask"] = real
        return batch
    # Padding positions count 0, 1, 2, ... from the first pad, so they form one extra segment per row...
    pad_positions = (1 - real).cumsum(-1) - 1
    position_ids = torch.where(real.bool(), _pad([e["position_ids"] for e in examples], 0, length), pad_positions)
    batch["position_ids"] = position_ids
    if packed_attention == "block_mask":
        # ...and for the 4D mask each pad is its own segment (it attends only to itself).
        segments = torch.where(real.bool(), segment_ids(position_ids), length + torch.arange(length))
        batch["attention_mask"] = block_causal_mask(segments, mask_dtype)
    elif packed_attention != "position_ids":
        raise UserError(f"packed_attention='{packed_attention}' is unknown; use block_mask, position_ids or none")
    return batch


def pad_token_id(tokenizer) -> int:
    """The id used for padding; its labels are masked, so EOS serves when the tokenizer has no pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)


def make_collate(cfg: TextDataConfig, tokenizer, mask_dtype: torch.dtype = torch.float32):
    """The collate_fn for a DataLoader over `build_text_datasets` splits."""
    return functools.partial(
        collate_text, pad_token_id=pad_token_id(tokenizer), packed_attention=cfg.packed_attention, mask_dtype=mask_dtype
    )
