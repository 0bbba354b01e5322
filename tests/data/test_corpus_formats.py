"""The user's own corpus: every source kind gives the documents of the equivalent JSONL, the held-out split is
made by document, prepared splits are cached on disk, and bad input ends in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import finetune.data.corpus as corpus
import finetune.data.text as text
from finetune.data.corpus import FILE_COLUMN, load_source, source_kind
from finetune.data.text import (
    TextDataConfig,
    build_text_datasets,
    check_data_files,
    document_token_ids,
    load_raw_splits,
    pack_documents,
    split_by_document,
    text_pieces,
)
from finetune.errors import UserError
from tests.data.test_text_data import tok, tokenizer_dir  # noqa: F401  (fixtures)

DOCS = [
    "The lessee shall keep the premises in good repair.",
    "Metformin 500 mg twice daily; review renal function.\nNo change at follow-up.",
    "Ünïcode text: naïve café, 東京, and an emoji 🙂 survive every format.",
    "A fourth document, long enough to span a block: " + "word " * 40,
    "Short.",
]
CHATS = [
    {"messages": [{"role": "user", "content": "Define tort."}, {"role": "assistant", "content": "A civil wrong."}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
]


@pytest.fixture()
def tiny_tok():
    from finetune.models.causal_lm import build_tiny_tokenizer

    return build_tiny_tokenizer()


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_source(kind: str, root: Path, rows: list[dict]) -> str:
    """The same records as a source of `kind` under `root`."""
    import datasets

    root.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        return write_jsonl(root / "docs.jsonl", rows)
    if kind == "json":  # one JSON array, not one object per line
        (root / "docs.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        return str(root / "docs.json")
    if kind == "folder":  # one document per file, nested, in sorted order (.md too)
        for i, r in enumerate(rows):
            (root / "corpus" / f"part{i // 2}").mkdir(parents=True, exist_ok=True)
            (root / "corpus" / f"part{i // 2}" / f"doc{i}.{'md' if i % 2 else 'txt'}").write_text(
                r["text"], encoding="utf-8"
            )
        return str(root / "corpus")
    ds = datasets.Dataset.from_list(rows)
    if kind == "csv":
        ds.to_csv(root / "docs.csv", index=False)
        return str(root / "docs.csv")
    if kind == "parquet":
        ds.to_parquet(root / "docs.parquet")
        return str(root / "docs.parquet")
    ds.save_to_disk(root / "saved")
    return str(root / "saved")


def examples(splits: dict) -> dict[str, list]:
    return {name: list(split.examples) for name, split in splits.items()}


# ---------------------------------------------------------------- every source kind, same documents


@pytest.mark.parametrize("kind", ["json", "folder", "csv", "parquet", "saved"])
def test_each_format_yields_the_documents_and_examples_of_the_jsonl(tmp_path, tiny_tok, kind):
    rows = [{"text": d} for d in DOCS]
    jsonl = write_source("jsonl", tmp_path / "a", rows)
    other = write_source(kind, tmp_path / "b", rows)
    assert source_kind(other) == {"json": "json", "folder": "folder", "saved": "saved"}.get(kind, kind)
    cache = str(tmp_path / "cache")
    assert load_raw_splits(TextDataConfig(train_file=other, cache_dir=cache))["train"]["text"] == DOCS
    for pack in (True, False):
        want = build_text_datasets(
            TextDataConfig(train_file=jsonl, max_length=16, pack=pack, cache_dir=cache), tiny_tok
        )
        got = build_text_datasets(TextDataConfig(train_file=other, max_length=16, pack=pack, cache_dir=cache), tiny_tok)
        assert examples(got) == examples(want) and vars(got["train"].stats) == vars(want["train"].stats)


@pytest.mark.parametrize("kind", ["json", "parquet", "saved"])
def test_chat_records_from_other_formats_train_the_same_tokens(tmp_path, tiny_tok, kind):
    jsonl = write_source("jsonl", tmp_path / "a", CHATS)
    other = write_source(kind, tmp_path / "b", CHATS)
    cfg = dict(format="chat", max_length=64, cache_dir=str(tmp_path / "cache"))
    want = build_text_datasets(TextDataConfig(train_file=jsonl, **cfg), tiny_tok)
    got = build_text_datasets(TextDataConfig(train_file=other, **cfg), tiny_tok)
    assert examples(got) == examples(want) and got["train"].stats.trained_tokens > 0


def test_one_text_file_is_one_document(tmp_path, tiny_tok):
    (tmp_path / "opinion.txt").write_text(DOCS[1], encoding="utf-8")
    jsonl = write_source("jsonl", tmp_path / "a", [{"text": DOCS[1]}])
    assert source_kind(str(tmp_path / "opinion.txt")) == "textfile"
    cfg = dict(max_length=8, cache_dir=str(tmp_path / "c"))
    got = build_text_datasets(TextDataConfig(train_file=str(tmp_path / "opinion.txt"), **cfg), tiny_tok)
    assert examples(got) == examples(build_text_datasets(TextDataConfig(train_file=jsonl, **cfg), tiny_tok))


def test_every_data_key_takes_any_source_kind(tmp_path, tiny_tok):
    train = write_source("folder", tmp_path / "t", [{"text": d} for d in DOCS[:3]])
    val = write_source("csv", tmp_path / "v", [{"text": d} for d in DOCS[3:]])
    test = write_source("parquet", tmp_path / "x", [{"text": DOCS[4]}])
    general = write_source("saved", tmp_path / "g", [{"text": "General text about the weather."}])
    cfg = TextDataConfig(train_file=train, validation_file=val, test_file=test, general_validation_file=general)
    splits = build_text_datasets(cfg, tiny_tok)
    assert {k: s.stats.documents for k, s in splits.items()} == {
        "train": 3,
        "validation": 2,
        "test": 1,
        "general_validation": 1,
    }


def test_hub_id_goes_through_datasets_load_dataset_with_the_roles_split(tmp_path, tiny_tok, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, cache_dir=None, **kw):  # offline stand-in for the hub
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": DOCS if split == "train" else DOCS[:1] + ["held-out text"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = TextDataConfig(train_file="someone/court-opinions", validation_file="someone/court-opinions:dev")
    cfg.hub_config = "v2"
    cfg.cache_dir = str(tmp_path / "cache")
    splits = build_text_datasets(cfg, tiny_tok)
    assert calls[:2] == [("someone/court-opinions", "v2", "train"), ("someone/court-opinions", "v2", "dev")]
    assert splits["train"].stats.documents == len(DOCS) and splits["validation"].stats.documents == 2


def test_unreachable_hub_id_is_one_line_naming_path_and_id(tmp_path, monkeypatch):
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach the Hugging Face Hub\n(long details)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as e:
        check_data_files(TextDataConfig(train_file="data/my_corpus"))
    assert "not a local file or folder" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        check_data_files(TextDataConfig(train_file=str(tmp_path / "missing.csv")))


# ---------------------------------------------------------------- the held-out split is made by document


def test_split_by_document_never_puts_a_document_in_both(tmp_path, tiny_tok):
    docs = [f"Opinion {i}: the court holds that the clause {i % 7} binds." for i in range(40)]
    docs += docs[:10]  # ten documents appear twice: both copies must land on one side
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in docs])
    for seed in range(5):
        cfg = TextDataConfig(train_file=path, validation_fraction=0.25, seed=seed, cache_dir=str(tmp_path / "c"))
        raw = load_raw_splits(cfg)
        train, val = set(raw["train"]["text"]), set(raw["validation"]["text"])
        assert not train & val and train | val == set(docs)
        assert len(raw["train"]) + len(raw["validation"]) == len(docs) and len(val) == 10  # 25% of 40 distinct
    splits = build_text_datasets(cfg, tiny_tok)  # packing comes after the split: blocks never mix the two
    assert splits["validation"].stats.documents == len(raw["validation"])


def test_split_without_repeats_is_datasets_train_test_split(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(30)]})
    kept, held = split_by_document(ds, 0.2, seed=4)
    ref = ds.train_test_split(test_size=6, seed=4)
    assert kept["text"] == ref["train"]["text"] and held["text"] == ref["test"]["text"]


# ---------------------------------------------------------------- packing through Arrow, cached


def test_arrow_packing_over_many_batches_and_pieces_matches_the_reference(tmp_path, tok, monkeypatch):
    """Blocks written batch by batch (documents split in pieces) equal pack_documents over whole documents."""
    docs = [" ".join(DOCS[(i + j) % len(DOCS)] for j in range(i % 4 + 1)) for i in range(23)]
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in docs])
    whole = [tok(d)["input_ids"] + [tok.eos_token_id] for d in docs]
    monkeypatch.setattr(corpus, "documents_per_batch", lambda ds, field, budget=0: 3)  # 8 map batches
    monkeypatch.setattr(text, "PIECE_CHARS", 40)  # most documents tokenized in several pieces
    train = build_text_datasets(TextDataConfig(train_file=path, max_length=32, cache_dir=str(tmp_path / "c")), tok)
    assert list(train["train"].examples) == pack_documents(whole, 32)
    item = train["train"][0]
    assert set(item) == {"input_ids", "labels", "position_ids"} and item["input_ids"].dtype.is_floating_point is False
    assert str(item["labels"].dtype) == "torch.int64"


def test_text_pieces_join_to_the_text_and_tokenize_to_the_same_ids(tok):
    doc = "\n\n".join(DOCS) * 30 + " tail-end, 42 times."
    pieces = text_pieces(doc, 50)
    assert "".join(pieces) == doc and len(pieces) > 50
    assert all(p.startswith(" ") for p in pieces[1:])  # cut right before a space between two letters
    assert document_token_ids([doc], tok, piece_chars=50)[0].tolist() == tok(doc)["input_ids"] + [tok.eos_token_id]


def test_second_build_of_the_same_corpus_reads_the_cache(tmp_path, tiny_tok, monkeypatch):
    source = write_source("folder", tmp_path / "src", [{"text": d} for d in DOCS])
    cfg = TextDataConfig(train_file=source, max_length=16, cache_dir=str(tmp_path / "cache"))
    first = examples(build_text_datasets(cfg, tiny_tok))
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*.arrow"))

    def no_tokenizing(*a, **kw):
        raise AssertionError("tokenized again although the corpus is cached")

    monkeypatch.setattr(text, "document_token_ids", no_tokenizing)
    again = build_text_datasets(cfg, tiny_tok)
    assert examples(again) == first and sorted(p.name for p in (tmp_path / "cache").rglob("*.arrow")) == files
    assert again["train"].examples.ds.cache_files[0]["filename"].startswith(str(tmp_path / "cache"))
    monkeypatch.undo()
    (Path(source) / "part0" / "doc0.txt").write_text("An edited first document.", encoding="utf-8")
    edited = examples(build_text_datasets(cfg, tiny_tok))
    assert edited != first  # an edited file is read and tokenized again


# ---------------------------------------------------------------- bad input: one line each


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_folder_without_text_files_is_refused(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "scan.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(UserError) as e:
        check_data_files(TextDataConfig(train_file=str(tmp_path / "corpus")))
    assert "has no .txt or .md files (1 other file(s))" in one_line(e)


def test_binary_and_non_utf8_files_are_skipped_with_one_counted_line(tmp_path, caplog):
    root = Path(write_source("folder", tmp_path, [{"text": d} for d in DOCS[:2]]))
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (root / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (root / "notes.bin").write_bytes(b"\x00\x01")
    with caplog.at_level(logging.WARNING, logger="finetune.data.corpus"):
        ds = load_source(str(root), "text", "text", cache_dir=str(tmp_path / "cache"))
    assert ds["text"] == DOCS[:2] and sorted(ds[FILE_COLUMN]) == ["part0/doc0.txt", "part0/doc1.md"]
    skipped = [r.getMessage() for r in caplog.records if "not UTF-8 text" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 2 file(s)" in skipped[0]
    for p in root.rglob("doc*"):
        p.unlink()
    with pytest.raises(UserError) as e:
        load_source(str(root), "text", "text", cache_dir=str(tmp_path / "cache2"))
    assert "none of its 2 .txt/.md files is UTF-8 text" in one_line(e)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_table_without_the_text_column_names_its_columns(tmp_path, kind):
    path = write_source(kind, tmp_path, [{"body": d, "id": i} for i, d in enumerate(DOCS)])
    with pytest.raises(UserError) as e:
        check_data_files(TextDataConfig(train_file=path, cache_dir=str(tmp_path / "c")))
    assert "no column 'text' (it has: body, id); set data.text_field" in one_line(e)
    check_data_files(TextDataConfig(train_file=path, text_field="body", cache_dir=str(tmp_path / "c")))


def test_empty_documents_are_counted_and_an_all_empty_source_refused(tmp_path, caplog, tiny_tok):
    path = write_source("parquet", tmp_path / "a", [{"text": t} for t in [DOCS[0], "", "   \n", None, DOCS[1]]])
    with caplog.at_level(logging.WARNING, logger="finetune.data.corpus"):
        splits = build_text_datasets(TextDataConfig(train_file=path, cache_dir=str(tmp_path / "c")), tiny_tok)
    assert splits["train"].stats.documents == 2
    assert any("skipped 3 empty document(s) of 5" in r.getMessage() for r in caplog.records)
    folder = write_source("folder", tmp_path / "b", [{"text": ""}, {"text": " \n"}])
    with pytest.raises(UserError) as e:
        check_data_files(TextDataConfig(train_file=folder, cache_dir=str(tmp_path / "c")))
    assert "all 2 documents are empty" in one_line(e)


def test_validation_or_test_identical_to_training_is_refused(tmp_path):
    train = write_source("jsonl", tmp_path / "a", [{"text": d} for d in DOCS])
    same = write_source("folder", tmp_path / "b", [{"text": d} for d in DOCS[:3]])  # a subset, other format
    with pytest.raises(UserError) as e:
        check_data_files(TextDataConfig(train_file=train, validation_file=train))
    assert "repeats the training data (all 5 of its documents are in data.train_file)" in one_line(e)
    assert "data.validation_fraction=0.1" in str(e.value)
    with pytest.raises(UserError, match=r"data\.test_file .* repeats the training data \(all 3"):
        check_data_files(TextDataConfig(train_file=train, test_file=same, cache_dir=str(tmp_path / "c")))
    held_out = write_source("csv", tmp_path / "c", [{"text": DOCS[0]}, {"text": "A new opinion."}])
    check_data_files(TextDataConfig(train_file=train, validation_file=held_out, cache_dir=str(tmp_path / "c")))


def test_folder_for_chat_format_and_unknown_suffix_are_refused(tmp_path):
    folder = write_source("folder", tmp_path, [{"text": "x"}])
    with pytest.raises(UserError, match="only data.format=text reads"):
        check_data_files(TextDataConfig(train_file=folder, format="chat"))
    (tmp_path / "docs.xlsx").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"has suffix '\.xlsx'; use \.jsonl, \.json, \.csv, \.parquet"):
        check_data_files(TextDataConfig(train_file=str(tmp_path / "docs.xlsx")))


def test_bad_json_array_record_names_its_number(tmp_path):
    (tmp_path / "docs.json").write_text(json.dumps([{"text": "ok"}, {"text": 3}]))
    with pytest.raises(UserError) as e:
        check_data_files(TextDataConfig(train_file=str(tmp_path / "docs.json"), cache_dir=str(tmp_path / "c")))
    assert "docs.json" in one_line(e)


def test_packing_keeps_every_token_of_a_large_document(tmp_path, tiny_tok):
    rng = np.random.default_rng(0)
    words = ["clause", "tenant", "shall", "court", "held", "dose", "mg", "patient"]
    doc = " ".join(rng.choice(words, size=60_000))  # ~400 KB: several pieces
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": doc}])
    split = build_text_datasets(
        TextDataConfig(train_file=path, max_length=256, cache_dir=str(tmp_path / "c")), tiny_tok
    )
    ids = np.concatenate([np.asarray(e["input_ids"]) for e in split["train"].examples])
    assert ids.tolist() == tiny_tok(doc)["input_ids"] + [tiny_tok.eos_token_id]
