"""inspect_data: the report shows what is trained, and unusable data is refused with a one-line error."""

from __future__ import annotations

import pytest

from finetune.data.inspect import check_split, inspect_data, render_sample
from finetune.data.text import SplitStats, TextDataConfig, TokenizedSplit
from finetune.errors import UserError
from tests.data.test_text_data import tok, tokenizer_dir, write_jsonl  # noqa: F401  (fixtures)

QA = [
    {"prompt": "What is consideration?", "completion": "Something of value exchanged for a promise."},
    {"prompt": "What is a tort?", "completion": "A civil wrong other than a breach of contract."},
]
QA_HELD = [{"prompt": "What is an easement?", "completion": "A right to use another person's land for a purpose."}]


def test_report_marks_trained_tokens_and_counts(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", QA)
    val = write_jsonl(tmp_path / "val.jsonl", QA_HELD)
    report = inspect_data(TextDataConfig(train_file=train, validation_file=val, format="instruction"), tok, n_samples=2)
    assert f"[[{QA[0]['completion']}<|im_end|>]]" in report
    assert f"[[{QA[1]['completion']}<|im_end|>]]" in report
    assert "[[What is" not in report  # prompts are not trained
    assert "train: 2 records -> 2 sequences" in report and "validation: 1 records -> 1 sequences" in report
    assert "0 truncated" in report


def test_render_sample_wraps_runs():
    class Tok:
        def decode(self, ids, **kw):
            return "".join(chr(96 + i) for i in ids)

    assert render_sample([1, 2, 3, 4, 5], [-100, 2, 3, -100, 5], Tok()) == "a[[bc]]d[[e]]"


def test_all_sequences_truncated_is_refused(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "A long enough sentence to be cut short here."}] * 3)
    with pytest.raises(UserError, match=r"all 3 records are longer than data.max_length=4.*raise data.max_length"):
        inspect_data(TextDataConfig(train_file=train, max_length=4, pack=False), tok)


def test_eos_never_trained_is_refused(tmp_path, tok):
    # The chat template ends turns with <|im_end|>; a tokenizer whose EOS is another token never trains EOS.
    tok.eos_token = "<|endoftext|>"
    train = write_jsonl(tmp_path / "train.jsonl", QA)
    with pytest.raises(UserError, match="EOS token is never trained"):
        inspect_data(TextDataConfig(train_file=train, format="instruction"), tok)


def test_empty_validation_file_is_refused(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", QA)
    val = write_jsonl(tmp_path / "val.jsonl", [""])
    with pytest.raises(UserError, match=r"val\.jsonl: file is empty"):
        inspect_data(TextDataConfig(train_file=train, validation_file=val, format="instruction"), tok)


def test_no_trained_tokens_is_refused():
    split = TokenizedSplit([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}], SplitStats(1, 1, 3, 0, 0))
    with pytest.raises(UserError, match="no token is trained"):
        check_split("train", split, TextDataConfig(train_file="x"), eos_id=7)


def test_report_gives_overlap_and_warns_about_a_validation_copied_from_train(tmp_path, tok):
    # (a validation file made only of training documents is refused outright by the loader; part copies are warned)
    docs = [
        {"text": f"Clause {i}: the tenant shall pay the rent on the first day of each month number {i}."}
        for i in range(8)
    ]
    fresh = {"text": "A court may award costs to the successful party in its discretion after the hearing."}
    train = write_jsonl(tmp_path / "train.jsonl", docs)
    val = write_jsonl(tmp_path / "val.jsonl", docs[:2] + [fresh])
    report = inspect_data(TextDataConfig(train_file=train, validation_file=val), tok, n_samples=0)
    # each copy: 17 words, 10 8-grams, all in train; the fresh document: 15 words, 8 8-grams, none: 20 of 28
    assert "validation: 71.4% of 28 word 8-grams occur in train; 2 exact and 0 near duplicates" in report
    warnings = [line for line in report.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2  # the copies, and the overlap past the threshold: one line each
    assert "2 of 3 documents are exact copies of training documents; remove them" in warnings[0]
    assert "hold out whole documents" in warnings[1]


def test_report_of_disjoint_splits_has_no_warning(tmp_path, tok):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"text": "The lessee shall keep the premises in good repair at all times."}]
    )
    val = write_jsonl(
        tmp_path / "val.jsonl", [{"text": "A court may award costs to the successful party in its discretion."}]
    )
    report = inspect_data(TextDataConfig(train_file=train, validation_file=val), tok, n_samples=0)
    assert "validation: 0.0% of" in report and "warning:" not in report


def test_instruction_overlap_counts_prompts_and_answers(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", QA)
    val = write_jsonl(tmp_path / "val.jsonl", QA[1:] + QA_HELD)
    report = inspect_data(TextDataConfig(train_file=train, validation_file=val, format="instruction"), tok, n_samples=0)
    assert "1 of 2 documents are exact copies" in report
