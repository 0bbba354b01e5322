"""Text, instruction and chat data for causal-LM fine-tuning.

Each `data.*_file` source (a JSONL/JSON/CSV/parquet file, a folder of .txt/.md files, a save_to_disk directory or
a hub dataset id: see finetune/data/corpus.py) becomes a map-style torch dataset of `input_ids` / `labels` (and
`position_ids` when packed):

- format "text" ({"text": ...}): each document is tokenized, EOS is appended, and documents are packed into
  blocks of `max_length` tokens. Inside a block `position_ids` restart at 0 where a document starts, and the
  collate function turns those restarts into a block-diagonal causal mask, so no token attends across a
  document boundary. Labels are the tokens themselves (EOS included) except each document's first token,
  which nothing inside its own document can predict; the packed loss therefore equals the per-document loss.
- format "instruction" ({"prompt", "completion"}) and "chat" ({"messages": [...]}): rendered with the
  tokenizer's chat template; only assistant answers and the end-of-turn token after each are trained.

Every JSONL file is checked line by line before `datasets` loads it, so a bad line is reported as `file:line`.

Tokenizing and packing run as batched `datasets.map` calls that write Arrow files (under data.cache_dir, or the
datasets cache), named by a fingerprint of the source, the tokenizer, the settings and this module's code: memory
stays bounded by the largest document whatever the corpus size, and a second run over the same corpus reads the
cached files instead of tokenizing again. The splits index those files as 1D long tensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from finetune.data import corpus
from finetune.errors import UserError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value the causal-LM loss skips (transformers' convention)
CHAT_ROLES = ("system", "user", "assistant", "tool")
FORMAT_EXAMPLES = {
    "text": '{"text": "..."}',
    "instruction": '{"prompt": "...", "completion": "..."}',
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
}


@dataclass
class TextDataConfig:
    train_file: (
        str  # JSONL training file, or .json/.csv/.parquet, a folder of .txt/.md, a save_to_disk dir, a hub id[:split]
    )
    format: Literal["text", "instruction", "chat"] = (
        "text"  # record shape: {"text"}, {"prompt","completion"} or {"messages"}
    )
    validation_file: str | None = None  # validation source (kinds and format as train); None: see validation_fraction
    test_file: str | None = None  # test source (same kinds and format as train), evaluated at the end
    general_validation_file: str | None = None  # general-domain text source (any kind above) used to measure forgetting
    text_field: str = "text"  # key/column of the document in "text" records (and in the general validation source)
    max_length: int = 256  # block size when packing; otherwise the longest sequence (longer ones are truncated)
    pack: bool = True  # "text" only: concatenate documents (EOS after each) into full blocks of max_length tokens
    packed_attention: Literal["block_mask", "position_ids", "none"] = (
        "block_mask"  # how packed documents are kept apart (see collate_text)
    )
    validation_fraction: float = 0.0  # with no validation_file: fraction of train documents held out as validation
    seed: int = 0  # seed of the validation_fraction split (made by document: a document is wholly in one split)
    cache_dir: str | None = None  # where loaded and tokenized Arrow files are cached; None: the datasets cache
    hub_config: str | None = None  # config (subset) name of hub dataset sources, e.g. wikitext-2-raw-v1


@dataclass
class SplitStats:
    documents: int  # records read from the file
    sequences: int  # model inputs after packing / truncation
    tokens: int  # real (non-padding) tokens over all sequences
    trained_tokens: int  # tokens whose label is not IGNORE_INDEX
    truncated: int  # records cut at max_length (their tail is dropped)


MODEL_COLUMNS = ("input_ids", "labels", "position_ids")  # what an item holds (position_ids only when packed)


class ArrowExamples(Sequence):
    """The examples of an Arrow-backed split as a read-only list of dicts of token lists (read on access)."""

    def __init__(self, ds):
        self.ds = ds.select_columns([c for c in MODEL_COLUMNS if c in ds.column_names])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.ds[j] for j in range(*i.indices(len(self)))]
        return self.ds[i]

    def __iter__(self):
        for batch in self.ds.iter(batch_size=256):
            columns = list(batch)
            yield from ({c: batch[c][j] for c in columns} for j in range(len(batch[columns[0]])))

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, Sequence)) and len(self) == len(other) and list(self) == list(other)


class TokenizedSplit(torch.utils.data.Dataset):
    """A deterministic map-style dataset of token lists; items are dicts of 1D long tensors.

    `examples` is a list of dicts of token lists, or a `datasets.Dataset` with those columns (Arrow files on
    disk, as `build_text_datasets` makes them: items are read from the memory-mapped files on access).
    """

    def __init__(self, examples, stats: SplitStats):
        self._numpy = None
        if isinstance(examples, list):
            self.examples: list | ArrowExamples = examples
        else:
            self.examples = ArrowExamples(examples)
            self._numpy = self.examples.ds.with_format("numpy")
        self.stats = stats

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._numpy is None:
            return {k: torch.tensor(v, dtype=torch.long) for k, v in self.examples[i].items()}
        return {k: torch.from_numpy(v.astype(np.int64)) for k, v in self._numpy[i].items()}


# ---------------------------------------------------------------- validation of files, line by line


def check_config(cfg: TextDataConfig) -> None:
    """Reject settings that cannot work, before any file is read."""
    if not cfg.train_file:
        raise UserError(
            "data.train_file is empty; set it to a JSONL file or a folder of .txt files, e.g. "
            "data.train_file=data/legal/train.jsonl"
        )
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


def load_jsonl_dataset(path: str, fmt: str, text_field: str = "text", cache_dir: str | None = None):
    """Validate `path` line by line, then load it with `datasets` (adds a `__line__` column for error messages)."""
    import datasets

    line_numbers = read_jsonl(path, fmt, text_field)
    try:
        ds = corpus.quiet_datasets(
            datasets.load_dataset, "json", data_files={"data": str(path)}, split="data", cache_dir=cache_dir
        )
    except Exception as e:  # pyarrow rejects e.g. a field that is a number on one line and a string on another
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path}: datasets could not load the file ({first}); give each field one type on every line"
        ) from None
    return ds.add_column(corpus.LINE_COLUMN, line_numbers)


# ---------------------------------------------------------------- tokenization

PIECE_CHARS = 1 << 16  # a longer document is tokenized in pieces of about this many characters (bounded memory)
TRUNCATED = "__truncated"  # per-sequence flag column of unpacked splits: the record was cut at max_length
# Text with the cut points a long document is split at, used to check that a tokenizer gives the same tokens for
# the pieces as for the whole (byte-level BPE does; a tokenizer that prepends a space to every call does not).
_PROBE = "Ab cd's ef, gh ij.\nKl mn  op qr 12 st Éu vw-xy zé ab ÇD ef gh\n\nij kl mn op"


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no EOS token; set tokenizer.eos_token (e.g. in its tokenizer_config.json)")
    return tokenizer.eos_token_id


def text_pieces(text: str, size: int | None = None) -> list[str]:
    """`text` cut into pieces of about `size` characters, each cut right before a space between two letters.

    Written by hand (no library splits text for a tokenizer): a byte-level BPE pre-tokenizer (GPT-2 / LLaMA-3
    regex) already splits there and no token spans such a point, so the tokens of the pieces, joined, are the
    tokens of the whole text. A run of `size` characters without such a space stays in one longer piece.
    """
    size = size or PIECE_CHARS
    pieces, start = [], 0
    while len(text) - start > size:
        cut = _cut_point(text, start + 1, start + size)
        if cut is None:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _between_letters(text: str, pos: int) -> bool:
    return 0 < pos < len(text) - 1 and text[pos - 1].isalpha() and text[pos + 1].isalpha()


def _cut_point(text: str, lo: int, hi: int) -> int | None:
    """The last space between two letters in text[lo:hi], else the first one after hi, else None."""
    pos = text.rfind(" ", lo, hi)
    while pos >= lo and not _between_letters(text, pos):
        pos = text.rfind(" ", lo, pos)
    if pos >= lo:
        return pos
    pos = text.find(" ", hi)
    while pos != -1 and not _between_letters(text, pos):
        pos = text.find(" ", pos + 1)
    return pos if pos != -1 else None


def _special_ends(tokenizer) -> tuple[list[int], list[int]] | None:
    """The ids the tokenizer adds before and after a text (e.g. BOS), or None when they cannot be told apart."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return None


def _in_pieces(text: str, tokenizer, ends: tuple[list[int], list[int]], size: int) -> np.ndarray:
    """`tokenizer(text)["input_ids"]` computed over text_pieces, a few pieces per tokenizer call."""
    pieces = text_pieces(text, size)
    parts = [np.asarray(ends[0], dtype=np.int32)]
    for i in range(0, len(pieces), 16):  # 16 pieces (~1M characters) of encodings held at a time
        ids = tokenizer(pieces[i : i + 16], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        parts += [np.asarray(p, dtype=np.int32) for p in ids]
    parts.append(np.asarray(ends[1], dtype=np.int32))
    return np.concatenate(parts)


def _pieces_are_exact(tokenizer) -> tuple[list[int], list[int]] | None:
    """The tokenizer's special ends when tokenizing in pieces gives its tokens exactly (checked on _PROBE), else None."""
    ends = _special_ends(tokenizer)
    if ends is not None and _in_pieces(_PROBE, tokenizer, ends, size=4).tolist() == tokenizer(_PROBE)["input_ids"]:
        return ends
    corpus.report_once("this tokenizer tokenizes text pieces differently from the whole; long documents go whole")
    return None


def document_token_ids(texts: list[str], tokenizer, piece_chars: int | None = None) -> list[np.ndarray]:
    """Token ids (int32) of each document, as `tokenizer(text)` gives them (its own special tokens, e.g. BOS),
    with EOS at the end; documents longer than `piece_chars` are tokenized in pieces (see text_pieces)."""
    eos = _eos_id(tokenizer)
    piece_chars = piece_chars or PIECE_CHARS
    long = [i for i, t in enumerate(texts) if len(t) > piece_chars]
    ends = _pieces_are_exact(tokenizer) if long else None
    cut = set(long) if ends is not None else set()
    whole = [i for i in range(len(texts)) if i not in cut]
    ids: list[np.ndarray] = [np.empty(0, dtype=np.int32)] * len(texts)
    if whole:
        encoded = tokenizer([texts[i] for i in whole], add_special_tokens=True, return_attention_mask=False)
        for i, doc in zip(whole, encoded["input_ids"]):
            ids[i] = np.asarray(doc, dtype=np.int32)
    for i in cut:
        ids[i] = _in_pieces(texts[i], tokenizer, ends, piece_chars)  # type: ignore[arg-type]
    return [doc if len(doc) and doc[-1] == eos else np.append(doc, np.int32(eos)) for doc in ids]


def tokenize_documents(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each document, with the tokenizer's own special tokens (e.g. BOS) and EOS at the end."""
    return [doc.tolist() for doc in document_token_ids(texts, tokenizer)]


def document_labels(doc: list[int]) -> list[int]:
    """Labels of one document: its tokens, except the first, which no token of the document can predict."""
    return [IGNORE_INDEX] + doc[1:]


def _stream(docs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The documents concatenated, and a mask of the tokens that start one."""
    if not docs:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=bool)
    ids = np.concatenate(docs)
    starts = np.zeros(len(ids), dtype=bool)
    starts[np.cumsum([0] + [len(d) for d in docs[:-1]])] = True
    return ids, starts


def _pack_stream(ids: np.ndarray, starts: np.ndarray, block_size: int) -> dict[str, np.ndarray]:
    """Labels and positions of a token stream that begins at a block start: positions restart at 0 at every
    document start and every block start (a cut document goes on as a new segment); segment starts are untrained."""
    idx = np.arange(len(ids))
    restart = starts | (idx % block_size == 0)
    positions = idx - np.maximum.accumulate(np.where(restart, idx, 0))
    labels = np.where(positions == 0, IGNORE_INDEX, ids)
    return {"input_ids": ids, "labels": labels.astype(ids.dtype), "position_ids": positions.astype(ids.dtype)}


def pack_documents(docs: list[list[int]], block_size: int) -> list[dict[str, list[int]]]:
    """Concatenate documents into blocks of `block_size` tokens (the last block may be shorter).

    Written by hand: transformers' DataCollatorWithFlattening flattens whole examples per batch but does not
    cut a stream into fixed blocks. `position_ids` restart at 0 at each document start; a document cut by a
    block boundary continues in the next block as a new segment starting at position 0. A segment's first
    token gets label IGNORE_INDEX: nothing inside its segment can predict it.
    """
    ids, starts = _stream([np.asarray(d, dtype=np.int64) for d in docs])
    cols = _pack_stream(ids, starts, block_size)
    return [{k: v[s : s + block_size].tolist() for k, v in cols.items()} for s in range(0, len(ids), block_size)]


def _list_array(lengths: list[int] | np.ndarray, values: np.ndarray):
    """An Arrow list<int32> column of consecutive runs of `values` (no per-row Python lists)."""
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32)))


class _Packer:
    """A batched `datasets.map` function over Arrow batches of documents: packed blocks out (pack_documents).

    It carries the stream's unfinished block from one batch to the next, so it relies on map calling it on the
    batches in order in one process (no num_proc); the batch holding the last document flushes the rest.
    """

    def __init__(self, tokenizer, text_field: str, block_size: int, n_docs: int):
        self.tokenizer, self.field, self.block_size, self.n_docs = tokenizer, text_field, block_size, n_docs
        self.carry = (np.empty(0, dtype=np.int32), np.empty(0, dtype=bool))

    def __call__(self, batch, indices: list[int]):
        import pyarrow as pa

        ids, starts = _stream(document_token_ids(batch.column(self.field).to_pylist(), self.tokenizer))
        ids, starts = np.concatenate([self.carry[0], ids]), np.concatenate([self.carry[1], starts])
        end = len(ids) if indices[-1] == self.n_docs - 1 else len(ids) // self.block_size * self.block_size
        self.carry = (ids[end:], starts[end:])
        cols = _pack_stream(ids[:end], starts[:end], self.block_size)
        lengths = np.diff(np.append(np.arange(0, end, self.block_size), end))
        return pa.table({k: _list_array(lengths, v) for k, v in cols.items()})


def _truncated_documents(batch, tokenizer, text_field: str, max_length: int):
    """A batched map function: one sequence per document, cut at max_length, with the TRUNCATED flag."""
    import pyarrow as pa

    docs = document_token_ids(batch.column(text_field).to_pylist(), tokenizer)
    kept = [d[:max_length] for d in docs]
    labels = [np.concatenate([[IGNORE_INDEX], d[1:]]).astype(np.int32) for d in kept]
    lengths = [len(d) for d in kept]
    return pa.table(
        {
            "input_ids": _list_array(lengths, np.concatenate(kept)),
            "labels": _list_array(lengths, np.concatenate(labels)),
            TRUNCATED: pa.array([len(d) > max_length for d in docs]),
        }
    )


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


def _chat_example(row: dict, tokenizer, fmt: str, max_length: int, path: str) -> dict:
    try:
        ids, labels = tokenize_conversation(_messages_of(row, fmt), tokenizer)
    except Exception as e:  # the template itself rejected the conversation (e.g. role order)
        raise UserError(
            f"{path}:{row[corpus.LINE_COLUMN]}: the chat template cannot render this record ({e}); fix the roles/order of its messages"
        ) from None
    example, cut = _truncate(ids, labels, max_length)
    return {**example, TRUNCATED: cut}


# What a prepared split depends on besides its source and settings: this module's code (an edit re-prepares).
_CODE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    """A digest of everything that decides the tokens: the fast tokenizer's full state, or the object itself."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    return Hasher.hash(
        [type(tokenizer).__name__, state, tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None)]
    )


def _prepare(ds, fn, kind: str, cfg: TextDataConfig, tokenizer, **map_kwargs):
    """`ds.map(fn, ...)` written to (or, the second time, read from) an Arrow file named by its fingerprint."""
    import datasets
    from datasets.fingerprint import Hasher

    key = [ds._fingerprint, kind, cfg.max_length, cfg.pack, cfg.format, _tokenizer_digest(tokenizer), _CODE_DIGEST]
    fingerprint = Hasher.hash(key)
    root = Path(cfg.cache_dir or datasets.config.HF_DATASETS_CACHE) / "finetune_text"
    root.mkdir(parents=True, exist_ok=True)
    run = functools.partial(
        ds.map,
        fn,
        remove_columns=ds.column_names,
        new_fingerprint=fingerprint,
        cache_file_name=str(root / f"{kind}-{fingerprint}.arrow"),
        load_from_cache_file=True,
        desc=f"tokenizing ({kind})",
        **map_kwargs,
    )
    out = corpus.quiet_datasets(run) if len(ds) < 1000 else run()  # a bar only where it takes a while
    return out.with_format(None)


def _arrow_stats(ds, documents: int) -> SplitStats:
    """SplitStats of a prepared split, summed over its Arrow batches (no Python lists of tokens)."""
    import pyarrow.compute as pc

    tokens = trained = truncated = 0
    for t in ds.with_format("arrow").iter(batch_size=4096):
        tokens += pc.sum(pc.list_value_length(t["input_ids"])).as_py() or 0
        trained += pc.sum(pc.not_equal(pc.list_flatten(t["labels"]), IGNORE_INDEX)).as_py() or 0
        if TRUNCATED in t.column_names:
            truncated += pc.sum(t[TRUNCATED]).as_py() or 0
    return SplitStats(documents, len(ds), tokens, trained, truncated)


def tokenize_text_split(ds, cfg: TextDataConfig, tokenizer, text_field: str) -> TokenizedSplit:
    """Documents -> packed blocks (cfg.pack) or one truncated sequence per document, as Arrow files."""
    docs = ds.select_columns([text_field]).with_format("arrow")
    batch_size = corpus.documents_per_batch(ds, text_field)
    if cfg.pack:
        packer = _Packer(tokenizer, text_field, cfg.max_length, len(ds))
        out = _prepare(docs, packer, "packed", cfg, tokenizer, batched=True, batch_size=batch_size, with_indices=True)
    else:
        cut = functools.partial(
            _truncated_documents, tokenizer=tokenizer, text_field=text_field, max_length=cfg.max_length
        )
        out = _prepare(docs, cut, "truncated", cfg, tokenizer, batched=True, batch_size=batch_size)
    return TokenizedSplit(out, _arrow_stats(out, len(ds)))


def tokenize_chat_split(ds, cfg: TextDataConfig, tokenizer, path: str) -> TokenizedSplit:
    """Instruction or chat records -> one sequence each, truncated to cfg.max_length."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"the tokenizer has no chat template, needed for data.format={cfg.format}; use an instruct/chat tokenizer or data.format=text"
        )
    one = functools.partial(_chat_example, tokenizer=tokenizer, fmt=cfg.format, max_length=cfg.max_length, path=path)
    out = _prepare(ds, one, "chat", cfg, tokenizer)
    return TokenizedSplit(out, _arrow_stats(out, len(ds)))


# ---------------------------------------------------------------- building all splits


def _split_files(cfg: TextDataConfig) -> dict[str, tuple[str, str, str]]:
    """split -> (source, format, text field) for every configured source."""
    files: dict[str, tuple[str, str, str]] = {"train": (cfg.train_file, cfg.format, cfg.text_field)}
    if cfg.validation_file:
        files["validation"] = (cfg.validation_file, cfg.format, cfg.text_field)
    if cfg.test_file:
        files["test"] = (cfg.test_file, cfg.format, cfg.text_field)
    if cfg.general_validation_file:
        files["general_validation"] = (cfg.general_validation_file, "text", cfg.text_field)
    return files


def split_by_document(ds, fraction: float, seed: int, fmt: str = "text", text_field: str = "text"):
    """(kept, held out): a seeded split of the documents of `ds`, never of passages or blocks (the split comes
    before packing), and equal documents stay on one side, so no document's text is in both.

    With no repeated document this is exactly `ds.train_test_split(test_size=n, seed=seed)` (numpy's
    default_rng(seed) permutation, the held-out part first), so seeded splits made before stay as they were.
    """
    groups: dict[bytes, list[int]] = {}
    for i, key in enumerate(corpus.document_keys(ds, fmt, text_field)):
        groups.setdefault(key, []).append(i)
    members = list(groups.values())
    n_held = int(round(fraction * len(members)))
    if n_held < 1 or n_held >= len(members):
        raise UserError(
            f"data.validation_fraction={fraction} of {len(members)} distinct train documents leaves an empty split; "
            "change the fraction or give data.validation_file"
        )
    order = np.random.default_rng(seed).permutation(len(members))
    held = [i for g in order[:n_held] for i in members[g]]
    kept = [i for g in order[n_held:] for i in members[g]]
    return ds.select(kept), ds.select(held)


def _refuse_copies_of_training(raw: dict[str, Any], cfg: TextDataConfig) -> None:
    """A validation or test source whose every document is also a training document measures nothing held out."""
    checks = [
        (split, key, fix)
        for split, key, fix in (
            ("validation", "validation_file", "or remove it and set data.validation_fraction=0.1"),
            ("test", "test_file", "or remove it"),
        )
        if getattr(cfg, key)  # a validation_fraction split is disjoint by construction
    ]
    if not checks:
        return
    train = set(corpus.document_keys(raw["train"], cfg.format, cfg.text_field))
    for split, key, fix in checks:
        keys = corpus.document_keys(raw[split], cfg.format, cfg.text_field)
        if all(k in train for k in keys):
            raise UserError(
                f"data.{key} '{getattr(cfg, key)}' repeats the training data (all {len(keys)} of its documents are in "
                f"data.train_file), so it cannot measure held-out perplexity; give documents that are not in "
                f"training, {fix}"
            )


def load_raw_splits(cfg: TextDataConfig) -> dict[str, Any]:
    """split -> checked `datasets.Dataset` of records; the validation split may be carved from train."""
    check_config(cfg)
    raw = {
        split: corpus.load_source(path, fmt, field, split, cfg.cache_dir, cfg.hub_config)
        for split, (path, fmt, field) in _split_files(cfg).items()
    }
    if cfg.validation_fraction > 0:
        raw["train"], raw["validation"] = split_by_document(
            raw["train"], cfg.validation_fraction, cfg.seed, cfg.format, cfg.text_field
        )
    _refuse_copies_of_training(raw, cfg)
    return raw


def check_data_files(cfg: TextDataConfig) -> None:
    """Check every configured source before any model loads: UserError names the source and the fix.

    The sources are loaded and checked as `build_text_datasets` will use them (files line by line, columns,
    empty documents, validation copies of training); the Arrow files `datasets` writes are reused by the build.
    """
    load_raw_splits(cfg)


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
