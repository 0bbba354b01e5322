"""The committed synthetic corpora: reproducible from the script, well-formed, sized as documented."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from finetune.data.inspect import inspect_data
from finetune.data.text import TextDataConfig, build_text_datasets, read_jsonl
from tests.data.test_text_data import tok, tokenizer_dir  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
FORMATS = {"instructions.jsonl": "instruction", "chat.jsonl": "chat"}


def load_script():
    spec = importlib.util.spec_from_file_location("make_text_corpora", ROOT / "scripts" / "make_text_corpora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpora() -> dict[str, str]:
    return load_script().build_corpora(seed=0)


def texts(rel: str) -> list[str]:
    return [json.loads(line)["text"] for line in (DATA / rel).read_text(encoding="utf-8").splitlines()]


def test_committed_files_are_exactly_what_the_script_writes(corpora):
    for rel, content in corpora.items():
        assert (DATA / rel).read_text(encoding="utf-8") == content, (
            f"data/{rel} differs; rerun scripts/make_text_corpora.py"
        )


def test_other_seed_gives_other_text(corpora):
    assert load_script().build_corpora(seed=1)["legal/train.jsonl"] != corpora["legal/train.jsonl"]


@pytest.mark.parametrize("domain", ["legal", "medical"])
def test_domain_splits_sizes_lengths_and_no_overlap(domain):
    splits = {s: texts(f"{domain}/{s}.jsonl") for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 400, "validation": 60, "test": 60}
    every = [t for v in splits.values() for t in v]
    assert len(set(every)) == len(every)  # no passage repeated within or across splits
    assert all(60 <= len(t.split()) <= 200 for t in every)


def test_files_validate_and_total_size_is_small(corpora):
    for rel in corpora:
        read_jsonl(str(DATA / rel), FORMATS.get(Path(rel).name, "text"))
    assert len(texts("general/validation.jsonl")) == 60
    assert 90 <= len(corpora["legal/instructions.jsonl"].splitlines()) <= 140
    assert 90 <= len(corpora["medical/instructions.jsonl"].splitlines()) <= 140
    assert sum(len(c.encode()) for c in corpora.values()) < 2 * 1024 * 1024


def test_domains_use_their_own_vocabulary():
    legal, medical, general = (
        " ".join(texts(f"{d}/{s}.jsonl")).lower()
        for d, s in (("legal", "train"), ("medical", "train"), ("general", "validation"))
    )
    assert legal.count("shall") > 300 and medical.count("shall") < 5
    assert medical.count("mg") > 300 and legal.count(" mg ") == 0
    assert general.count("shall") == 0 and general.count(" mg ") == 0


def test_legal_corpus_builds_with_all_splits(tok):
    cfg = TextDataConfig(
        train_file=str(DATA / "legal/train.jsonl"),
        validation_file=str(DATA / "legal/validation.jsonl"),
        test_file=str(DATA / "legal/test.jsonl"),
        general_validation_file=str(DATA / "general/validation.jsonl"),
    )
    splits = build_text_datasets(cfg, tok)
    assert set(splits) == {"train", "validation", "test", "general_validation"}
    assert splits["train"].stats.documents == 400 and splits["general_validation"].stats.documents == 60
    assert all(len(e["input_ids"]) == 256 for e in splits["train"].examples[:-1])


@pytest.mark.parametrize("name", ["legal/chat.jsonl", "medical/instructions.jsonl"])
def test_chat_and_instruction_files_pass_inspection(tok, name):
    fmt = FORMATS[Path(name).name]
    report = inspect_data(TextDataConfig(train_file=str(DATA / name), format=fmt, max_length=512), tok, n_samples=1)
    assert "[[" in report and " 0 truncated" in report
