"""The user's own corpus: every source a `data.*_file` setting accepts, loaded through `datasets`.

A source is one of
- a folder of .txt / .md files (or one such file): one document per file, found recursively and in sorted order
  (so the same folder always gives the same documents in the same order); files that are not UTF-8 text are skipped;
- a .jsonl / .json, .csv or .parquet file;
- a directory written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict whose split is picked by role);
- a dataset id on the Hugging Face hub, optionally `id:split` (default split: the role's, e.g. "validation").

`load_source` returns a `datasets.Dataset` with one record per document, backed by Arrow files on disk (the
datasets cache, or `data.cache_dir`), so a corpus of any size is memory-mapped rather than held in Python. JSONL
keeps its line-by-line check (`file:line: problem; fix`) before `datasets` reads it; other sources are checked
column by column and record by record (`source:record: problem; fix`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.errors import UserError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")  # files a corpus folder's documents are read from
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}  # suffix -> datasets builder
ROLE_SPLITS = {"train": "train", "validation": "validation", "test": "test", "general_validation": "validation"}
LINE_COLUMN = "__line__"  # 1-based line (JSONL) or record number of each record, for error messages
FILE_COLUMN = "__file__"  # path of each document inside a corpus folder, relative to the folder
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?")  # owner/name[:split] or name[:split]
_REPORTED: set[str] = set()  # lines already logged in this process (the data is checked, then built)


def report_once(message: str) -> None:
    if message not in _REPORTED:
        _REPORTED.add(message)
        logger.warning(message)


def source_kind(source: str) -> str:
    """How `source` is read: "folder", "textfile" (one .txt/.md document), "saved" (save_to_disk), "jsonl", "json",
    "csv", "parquet" or "hub"."""
    p = Path(source)
    if p.is_dir():
        saved = any((p / name).is_file() for name in ("state.json", "dataset_dict.json"))
        return "saved" if saved else "folder"
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            return "textfile"
        if suffix not in TABLE_BUILDERS:
            raise UserError(
                f"data file '{source}' has suffix '{p.suffix}'; use .jsonl, .json, .csv, .parquet, .txt/.md or a "
                "folder of .txt/.md files"
            )
        return suffix[1:]
    if p.suffix.lower() in (*TABLE_BUILDERS, *TEXT_SUFFIXES) or not _HUB_ID.fullmatch(source):
        raise UserError(f"data file '{source}' does not exist; fix the path in the data config")
    return "hub"


def load_source(
    source: str, fmt: str, text_field: str, role: str = "train", cache_dir: str | None = None, hub_config=None
):
    """A checked `datasets.Dataset` with one record per document of `source` (see the module docstring).

    For data.format=text, documents that are empty (or only whitespace) are dropped with one logged line that
    counts them; a source with nothing left is refused. Chat-like records carry LINE_COLUMN for error messages.
    """
    kind = source_kind(source)
    if kind in ("folder", "textfile") and fmt != "text":
        raise UserError(
            f"'{source}' holds plain documents (.txt/.md), which only data.format=text reads; give a JSONL file for "
            f"data.format={fmt}"
        )
    if kind == "jsonl" or (kind == "json" and not _is_json_array(source)):
        from finetune.data.text import load_jsonl_dataset  # the line-by-line check lives beside the formats

        return load_jsonl_dataset(source, fmt, text_field, cache_dir)  # empty records were refused line by line
    if kind in ("folder", "textfile"):
        ds = _load_folder(source, text_field, cache_dir)
    elif kind == "saved":
        ds = _load_saved(source, role)
    elif kind == "hub":
        ds = _load_hub(source, role, cache_dir, hub_config)
    else:
        ds = _load_table(source, TABLE_BUILDERS[f".{kind}"], cache_dir)
    return _checked_records(ds, source, fmt, text_field)


# ---------------------------------------------------------------- the sources


def _is_json_array(path: str) -> bool:
    """A .json file holding one JSON array (rather than one object per line)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def quiet_datasets(fn, *args, **kwargs):
    """Run a `datasets` call without its progress bars (a bar per small file is noise)."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return fn(*args, **kwargs)
    finally:
        if bars:
            datasets.enable_progress_bars()


def documents_per_batch(ds, text_field: str, budget: int = 16 << 20) -> int:
    """Records per batch so that a batch holds about `budget` bytes of text, judged by the longest document
    (a batch of a thousand 50 MB documents would be 50 GB in Python)."""
    import pyarrow.compute as pc

    longest = pc.max(pc.binary_length(ds.data.column(text_field))).as_py() or 1
    return max(1, min(1000, budget // longest))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_table(path: str, builder: str, cache_dir: str | None):
    import datasets

    try:
        return quiet_datasets(
            datasets.load_dataset, builder, data_files={"data": path}, split="data", cache_dir=cache_dir
        )
    except Exception as e:  # pyarrow's parse errors: a ragged CSV row, a broken parquet footer, mixed types
        raise UserError(f"{path}: datasets could not read the file ({_first_line(e)}); fix or re-export it") from None


def _load_saved(path: str, role: str):
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:
        raise UserError(f"{path}: not a readable save_to_disk directory ({_first_line(e)}); save it again") from None
    if isinstance(ds, datasets.DatasetDict):
        split = ROLE_SPLITS[role]
        if split not in ds:
            raise UserError(
                f"{path} holds the splits {sorted(ds)}, not '{split}'; save that split alone with save_to_disk"
            )
        ds = ds[split]
    return ds


def _load_hub(source: str, role: str, cache_dir: str | None, hub_config: str | None):
    """The real `datasets.load_dataset(id, split=...)`: downloads (or reuses the cache) like any datasets user."""
    import datasets

    repo, _, split = source.partition(":")
    split = split or ROLE_SPLITS[role]
    try:
        ds = quiet_datasets(datasets.load_dataset, repo, name=hub_config, split=split, cache_dir=cache_dir)
    except Exception as e:  # offline, a wrong id, a missing split
        raise UserError(
            f"'{source}' is not a local file or folder, and the hub dataset '{repo}' (split '{split}') could not be "
            f"loaded ({_first_line(e)}); fix the path, or the dataset id / split (write id:split) and the connection"
        ) from None
    if not isinstance(ds, datasets.Dataset):  # e.g. an IterableDataset from a custom loader
        raise UserError(f"hub dataset '{repo}' did not load as a map-style Dataset; save it with save_to_disk first")
    return ds


def folder_files(root: str) -> tuple[list[Path], int]:
    """The .txt/.md files under `root` in sorted order, and how many other files it holds (hidden ones aside)."""
    base = Path(root)
    texts, others = [], 0
    for p in sorted(base.rglob("*"), key=lambda q: q.relative_to(base).as_posix()):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(base).parts):
            continue
        if p.suffix.lower() in TEXT_SUFFIXES:
            texts.append(p)
        else:
            others += 1
    return texts, others


def read_text_document(path: Path) -> str | None:
    """The file's text, or None when it is not UTF-8 text (undecodable bytes, or NUL bytes as in binaries)."""
    data = path.read_bytes()
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _folder_documents(root: str, files: list[str], text_field: str) -> Iterator[dict[str, str]]:
    for rel in files:
        text = read_text_document(Path(root) / rel)
        if text is not None:
            yield {text_field: text, FILE_COLUMN: rel}


def _load_folder(source: str, text_field: str, cache_dir: str | None):
    """One record per text file of a folder (or the one file `source` names), written to Arrow by `datasets`
    (from_generator: the files stream through)."""
    import datasets
    from datasets.fingerprint import Hasher

    root = source if Path(source).is_dir() else str(Path(source).parent)
    texts, others = folder_files(root) if Path(source).is_dir() else ([Path(source)], 0)
    if not texts:
        raise UserError(
            f"folder '{root}' has no .txt or .md files ({others} other file(s)); put one document per .txt/.md file "
            "there, or point data.train_file at a .jsonl/.csv/.parquet file"
        )
    rel = [p.relative_to(root).as_posix() for p in texts]
    # The Arrow file is reused while every file keeps its name, size and modification time.
    stamp = [(r, p.stat().st_size, p.stat().st_mtime_ns) for r, p in zip(rel, texts)]
    fingerprint = Hasher.hash(["finetune-folder-v1", str(Path(root).resolve()), text_field, stamp])
    features = datasets.Features({text_field: datasets.Value("string"), FILE_COLUMN: datasets.Value("string")})
    largest = max(s for _, s, _ in stamp) or 1
    try:
        ds = quiet_datasets(
            datasets.Dataset.from_generator,
            _folder_documents,
            features=features,
            cache_dir=cache_dir,
            gen_kwargs={"root": str(root), "files": rel, "text_field": text_field},
            fingerprint=fingerprint,
            writer_batch_size=max(1, min(1000, (16 << 20) // largest)),  # files held in memory before a write
        )
    except Exception:
        if any(read_text_document(p) is not None for p in texts):
            raise  # a real failure (e.g. a full disk), not the empty generator of a folder with no UTF-8 file
        raise UserError(
            f"folder '{root}': none of its {len(rel)} .txt/.md files is UTF-8 text; save the documents as UTF-8"
        ) from None
    skipped = len(rel) - len(ds)
    if skipped:
        kept = set(ds[FILE_COLUMN])
        example = next(r for r in rel if r not in kept)
        report_once(f"{root}: skipped {skipped} file(s) that are not UTF-8 text (e.g. {example})")
    if others:
        report_once(f"{root}: ignored {others} file(s) that are not .txt/.md")
    return ds


# ---------------------------------------------------------------- checks of non-JSONL sources


def _checked_records(ds, source: str, fmt: str, text_field: str):
    """Refuse a source without the columns `fmt` needs (naming those it has); drop empty text documents."""
    from finetune.data.text import FORMAT_EXAMPLES, _record_problem

    columns = [c for c in ds.column_names if c not in (LINE_COLUMN, FILE_COLUMN)]
    if fmt == "text":
        return _non_empty_documents(ds, source, text_field, columns)
    needed = ("prompt", "completion") if fmt == "instruction" else ("messages",)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(
            f"{source}: no column {' or '.join(repr(c) for c in missing)} for data.format={fmt} (it has: "
            f"{', '.join(columns)}); records need {FORMAT_EXAMPLES[fmt]}"
        )
    for i, row in enumerate(ds, start=1):
        problem = _record_problem({k: v for k, v in row.items() if v is not None}, fmt, text_field)
        if problem:
            raise UserError(f"{source}:{i}: {problem}")
    return ds.add_column(LINE_COLUMN, list(range(1, len(ds) + 1)))


def _non_empty_documents(ds, source: str, text_field: str, columns: list[str]):
    import datasets

    if text_field not in columns:
        raise UserError(
            f"{source}: no column '{text_field}' (it has: {', '.join(columns)}); set data.text_field to the column "
            "holding the text"
        )
    feature = ds.features[text_field]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise UserError(
            f"{source}: column '{text_field}' holds {feature}, not text; set data.text_field to the text column"
        )
    batch_size = documents_per_batch(ds, text_field)
    kept = quiet_datasets(ds.filter, _has_text, input_columns=[text_field], batched=True, batch_size=batch_size)
    empty = len(ds) - len(kept)
    if empty == len(ds):
        raise UserError(f"{source}: all {empty} documents are empty; fill in the '{text_field}' column")
    if empty:
        report_once(f"{source}: skipped {empty} empty document(s) of {len(ds)}")
    return kept


def _has_text(texts: list[str | None]) -> list[bool]:
    return [t is not None and bool(t.strip()) for t in texts]


# ---------------------------------------------------------------- document identity


def document_keys(ds, fmt: str, text_field: str) -> list[bytes]:
    """A 16-byte digest per record, equal for equal documents: what the split and the overlap checks compare.

    Text documents are compared by their text; chat-like records by their JSON (line numbers aside).
    """
    keys = []
    columns = [text_field] if fmt == "text" else [c for c in ds.column_names if c not in (LINE_COLUMN, FILE_COLUMN)]
    batch_size = documents_per_batch(ds, text_field) if fmt == "text" else 256
    for batch in ds.select_columns(columns).iter(batch_size=batch_size):
        for i in range(len(batch[columns[0]])):
            record: Any = batch[text_field][i] if fmt == "text" else {c: batch[c][i] for c in columns}
            data = record if isinstance(record, str) else json.dumps(record, sort_keys=True, ensure_ascii=False)
            keys.append(hashlib.blake2b(data.encode("utf-8"), digest_size=16).digest())
    return keys
