"""finetune.data.overlap: shared 8-grams and duplicates between training and held-out documents."""

from __future__ import annotations

import random

import pytest

from finetune.data.overlap import (
    NEAR_DUPLICATE_JACCARD,
    OVERLAP_WARN,
    TrainIndex,
    overlap_figures,
    overlap_warnings,
    warning_lines,
)

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def documents(seed: int, n: int, length: int = 40, vocab: list[str] = WORDS) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocab) for _ in range(length)) + "." for _ in range(n)]


def test_identical_splits_overlap_fully_and_are_exact_duplicates():
    docs = documents(0, 20)
    o = overlap_figures(docs, docs, "validation")
    assert o.ngram_overlap == 1.0
    assert (o.documents, o.exact_duplicates, o.near_duplicates) == (20, 20, 0)
    assert o.ngrams == 20 * (40 - 8 + 1)


def test_disjoint_text_has_zero_overlap_and_no_warning():
    train = documents(0, 30)
    other = documents(1, 10, vocab=[w.upper() + "x" for w in WORDS])  # other words altogether
    o = overlap_figures(train, other, "test")
    assert (o.ngram_overlap, o.exact_duplicates, o.near_duplicates) == (0.0, 0, 0)
    assert warning_lines(o) == []


def test_normalization_finds_copies_that_differ_in_case_and_punctuation():
    train = ["The Supplier shall, within ten days, deliver the Goods to the Buyer's premises in good order."]
    copy = ["the supplier shall within TEN days deliver the goods to the buyer s premises in good order"]
    assert overlap_figures(train, copy, "validation").exact_duplicates == 1


def test_lightly_edited_copy_is_a_near_duplicate_and_a_rewrite_is_not():
    train = documents(0, 50, length=120)
    edited = train[7].split()
    edited[60] = "zulu"  # one word changed: most 8-grams survive
    rewrite = documents(99, 1, length=120)  # same vocabulary, independent text
    o = overlap_figures(train, [" ".join(edited), rewrite[0]], "validation")
    assert (o.exact_duplicates, o.near_duplicates) == (0, 1)


def test_near_duplicate_threshold_is_jaccard_of_8gram_sets():
    base = [f"w{i}" for i in range(100)]  # 93 distinct 8-grams

    # keep the first k words and replace the rest: shared 8-grams = k - 7, union = 93 + 93 - shared
    def jaccard_copy(k: int) -> str:
        return " ".join(base[:k] + [f"x{i}" for i in range(100 - k)])

    below, above = jaccard_copy(60), jaccard_copy(75)  # Jaccard 53/133 = 0.40 and 68/118 = 0.58
    index = TrainIndex([" ".join(base)])
    assert 53 / 133 < NEAR_DUPLICATE_JACCARD < 68 / 118
    assert index.measure([below], "v").near_duplicates == 0
    assert index.measure([above], "v").near_duplicates == 1


def test_overlap_is_the_share_of_eval_ngram_occurrences_found_in_train():
    train = [" ".join(f"t{i}" for i in range(20))]  # 13 8-grams
    half = " ".join([f"t{i}" for i in range(10)] + [f"e{i}" for i in range(10)])  # 3 of its 13 8-grams in train
    o = overlap_figures(train, [half], "validation")
    assert o.ngrams == 13 and o.ngram_overlap == pytest.approx(3 / 13)


def test_short_documents_count_for_duplicates_only():
    o = overlap_figures(["Payment is due."], ["payment is due", "Something else."], "validation")
    assert (o.ngrams, o.ngram_overlap, o.exact_duplicates) == (0, 0.0, 1)


def test_warnings_name_count_and_fix_one_line_each():
    train = documents(0, 40)
    val = train[:3] + documents(5, 27)  # 3 exact copies (10% of the 8-grams); the rest share only the vocabulary
    lines = overlap_warnings(train, val, "validation")
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("warning: validation: 3 of 30 documents are exact copies of training documents;")
    assert "remove them" in lines[0]


def test_heavy_overlap_warns_with_the_threshold_and_the_fix():
    # validation passages cut from the training documents: no document repeats, most 8-grams do
    train = documents(0, 20, length=200)
    cut = [" ".join(t.split()[50:110]) for t in train[:10]]
    lines = overlap_warnings(train, cut, "test")
    o = overlap_figures(train, cut, "test")
    assert o.ngram_overlap > OVERLAP_WARN and o.exact_duplicates == 0
    assert any(f"above {100 * OVERLAP_WARN:.0f}%" in line and "hold out whole documents" in line for line in lines)


def test_one_index_measures_several_splits_and_is_deterministic():
    train = documents(0, 30)
    index = TrainIndex(train)
    a = index.measure(documents(3, 5), "validation")
    b = TrainIndex(train).measure(documents(3, 5), "validation")
    assert a == b and index.measure(train[:2], "test").exact_duplicates == 2
