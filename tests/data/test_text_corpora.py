"""The committed synthetic corpora: reproducible from the script, well-formed, sized as documented, and with
validation and test template-disjoint from training (no held-out frame or name reaches train)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from finetune.data.inspect import inspect_data
from finetune.data.overlap import TrainIndex, warning_lines
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


def test_the_generator_is_byte_reproducible():
    assert load_script().build_corpora(seed=0) == load_script().build_corpora(seed=0)


@pytest.mark.parametrize("domain", ["legal", "medical"])
def test_domain_splits_sizes_lengths_and_no_repeat(domain):
    splits = {s: texts(f"{domain}/{s}.jsonl") for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 1000, "validation": 60, "test": 60}
    every = [t for v in splits.values() for t in v]
    assert len(set(every)) == len(every)  # no passage repeated within or across splits
    assert all(30 <= len(t.split()) <= 450 for t in splits["train"])
    held = splits["validation"] + splits["test"]
    assert all(60 <= len(t.split()) <= 200 for t in held)
    # evaluation costs about what it did with the former 60 x 60-200-word splits (~6,500 words each)
    assert all(5_000 <= sum(len(t.split()) for t in splits[s]) <= 9_000 for s in ("validation", "test"))
    # training varies in length: short sections and long multi-section documents both occur
    lengths = sorted(len(t.split()) for t in splits["train"])
    assert lengths[50] < 70 and lengths[-50] > 130


def _train_text() -> str:
    return " ".join(t for d in ("legal", "medical", "general") for t in texts(f"{d}/train.jsonl"))


def test_no_held_out_frame_or_name_occurs_in_any_training_file():
    held = load_script().held_out_strings()
    assert len(held["frames"]) > 200 and len(held["names"]) > 20  # the check has something to check
    train = _train_text()
    assert [f for f in held["frames"] if f in train] == []
    lowered = train.lower()
    assert [n for n in held["names"] if re.search(rf"\b{re.escape(n.lower())}\b", lowered)] == []
    # and the held-out splits do use them: they are written from the held-out group
    held_text = " ".join(t for d in ("legal", "medical", "general") for t in texts(f"{d}/validation.jsonl"))
    held_text += " ".join(t for d in ("legal", "medical") for t in texts(f"{d}/test.jsonl"))
    used = sum(f in held_text for f in held["frames"])
    assert used > 0.5 * len(held["frames"])


def test_groups_partition_every_pool():
    script = load_script()
    for pool in (script.CLAUSE_PREFACE, script.OPINION_REVIEW, script.DRUGS, script.CONDITIONS, script.JUDGES):
        train, held = script.take(pool, "train"), script.take(pool, "heldout")
        assert held and train and len(train) + len(held) == len(pool)
        assert not [x for x in held if x in train]
    assert set(script.pools("train")["clauses"]).isdisjoint(script.pools("heldout")["clauses"])
    assert set(script.pools("train")["statutes"]).isdisjoint(script.pools("heldout")["statutes"])


@pytest.mark.parametrize("domain", ["legal", "medical", "general"])
def test_shipped_held_out_splits_share_almost_no_8_grams_with_train(domain):
    index = TrainIndex(texts(f"{domain}/train.jsonl"))
    for split in ("validation", "test") if domain != "general" else ("validation",):
        o = index.measure(texts(f"{domain}/{split}.jsonl"), split)
        assert o.ngram_overlap < 0.02, o.summary()  # data/README.md gives the figures
        assert (o.exact_duplicates, o.near_duplicates) == (0, 0)
        assert warning_lines(o) == []


def test_files_validate_and_total_size_is_small(corpora):
    for rel in corpora:
        read_jsonl(str(DATA / rel), FORMATS.get(Path(rel).name, "text"))
    assert len(texts("general/validation.jsonl")) == 60 and len(texts("general/train.jsonl")) == 400
    assert 90 <= len(corpora["legal/instructions.jsonl"].splitlines()) <= 140
    assert 90 <= len(corpora["medical/instructions.jsonl"].splitlines()) <= 140
    assert sum(len(c.encode()) for c in corpora.values()) < 4 * 1024 * 1024


def test_domains_use_their_own_vocabulary():
    legal, medical, general, general_train = (
        " ".join(texts(f"{d}/{s}.jsonl")).lower()
        for d, s in (("legal", "train"), ("medical", "train"), ("general", "validation"), ("general", "train"))
    )
    assert legal.count("shall") > 300 and medical.count("shall") < 5
    assert medical.count("mg") > 300 and legal.count(" mg ") == 0
    for text in (general, general_train):
        assert text.count("shall") == 0 and text.count(" mg ") == 0


def test_every_register_is_in_training():
    legal, medical = (" ".join(texts(f"{d}/train.jsonl")) for d in ("legal", "medical"))
    assert (
        "Agreement" in legal and "§" in legal and " v. " in legal and "de novo" in legal
    )  # contracts, statutes, cases
    assert "Discharge" in medical and "Methods:" in medical and "Indications:" in medical  # notes, abstracts, drug info


def test_legal_corpus_builds_with_all_splits(tok):
    cfg = TextDataConfig(
        train_file=str(DATA / "legal/train.jsonl"),
        validation_file=str(DATA / "legal/validation.jsonl"),
        test_file=str(DATA / "legal/test.jsonl"),
        general_validation_file=str(DATA / "general/validation.jsonl"),
    )
    splits = build_text_datasets(cfg, tok)
    assert set(splits) == {"train", "validation", "test", "general_validation"}
    assert splits["train"].stats.documents == 1000 and splits["general_validation"].stats.documents == 60
    assert all(len(e["input_ids"]) == 256 for e in splits["train"].examples[:-1])


@pytest.mark.parametrize("name", ["legal/chat.jsonl", "medical/instructions.jsonl"])
def test_chat_and_instruction_files_pass_inspection(tok, name):
    fmt = FORMATS[Path(name).name]
    report = inspect_data(TextDataConfig(train_file=str(DATA / name), format=fmt, max_length=512), tok, n_samples=1)
    assert "[[" in report and " 0 truncated" in report
