"""How much of a held-out split the training data already contains: shared word 8-grams and duplicated documents.

A validation perplexity means "how well the model handles text it has not seen" only if the split shares little
with training. This module measures that, for any (train docs, eval docs, split name):

- `ngram_overlap`: the share of the split's word 8-grams (occurrences, after lower-casing and dropping
  punctuation) that also occur anywhere in training. Independent documents share few 8-grams; text written from
  the same templates, or passages cut from the same documents, share most of theirs.
- `exact_duplicates`: split documents whose normalized text equals a training document's.
- `near_duplicates`: the others whose 8-gram set has a Jaccard similarity of at least NEAR_DUPLICATE_JACCARD with
  one training document (a copy with a few words changed, a re-cut passage).

Written by hand: datasets, transformers and the others have no train/eval contamination measure. It streams over
the documents once, keeps 64-bit n-gram hashes in numpy arrays (8 bytes per n-gram, so tens of MB of text need
tens of MB of memory) and looks them up by binary search.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

NGRAM = 8  # words per n-gram: long enough that independent texts rarely share one, short enough to catch templates
# Above this share of shared 8-grams a split stops measuring generalization. The project's former template-sharing
# splits shared 81-84% of their 8-grams with training, its template-disjoint ones share 0-0.1% (data/README.md).
# 20% sits far from both: it leaves room for a real corpus's set phrases and boilerplate (which synthetic text lacks)
# and still flags a split cut from the same documents, or written from the same templates, as training.
OVERLAP_WARN = 0.20
# Two documents whose 8-gram sets overlap this much (intersection over union) are one text lightly edited:
# independent passages score near 0, a copy with a word changed every ~20 words still about 0.5.
NEAR_DUPLICATE_JACCARD = 0.5
_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for the polynomial n-gram hash (wraps mod 2**64)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stable_hash(data: str) -> int:
    # blake2b, not hash(): str hashes change per process, and the figures must not.
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8"), digest_size=8).digest(), "little")


class _Hasher:
    """Word -> 64-bit hash (cached), and a document's n-gram hashes as one numpy array."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.cache: dict[str, int] = {}

    def ngrams(self, words: list[str]) -> np.ndarray:
        if len(words) < self.n:
            return np.empty(0, dtype=np.uint64)
        cache = self.cache
        ids = np.fromiter(
            (cache[w] if w in cache else cache.setdefault(w, _stable_hash(w)) for w in words),
            dtype=np.uint64,
            count=len(words),
        )
        count = len(words) - self.n + 1
        h = np.zeros(count, dtype=np.uint64)
        for k in range(self.n):  # h = sum_k ids[i + k] * MULT^(n-1-k), mod 2**64
            h = h * _MULT + ids[k : k + count]
        return h


@dataclass(frozen=True)
class Overlap:
    split: str  # the evaluated split's name
    documents: int  # documents in the split
    ngrams: int  # word n-grams in the split (occurrences)
    ngram_overlap: float  # share of those n-grams that occur in training (0: none, 1: all)
    exact_duplicates: int  # split documents equal to a training document after normalization
    near_duplicates: int  # other split documents with 8-gram Jaccard >= NEAR_DUPLICATE_JACCARD to one training doc

    def summary(self) -> str:
        return (
            f"{self.split}: {100 * self.ngram_overlap:.1f}% of {self.ngrams} word {NGRAM}-grams occur in train; "
            f"{self.exact_duplicates} exact and {self.near_duplicates} near duplicates of training documents "
            f"(of {self.documents})"
        )


class TrainIndex:
    """The training documents' n-grams, built once and measured against as many eval splits as needed."""

    def __init__(self, train_docs: Iterable[str], n: int = NGRAM) -> None:
        self.hasher = _Hasher(n)
        per_doc: list[np.ndarray] = []
        texts: set[int] = set()
        for text in train_docs:
            words = _words(text)
            texts.add(_stable_hash(" ".join(words)))
            per_doc.append(np.unique(self.hasher.ngrams(words)))
        self.texts = texts  # hashes of the normalized training documents (exact duplicates)
        lengths = np.array([len(a) for a in per_doc], dtype=np.int64)
        self.doc_ngrams = np.concatenate(per_doc) if per_doc else np.empty(0, dtype=np.uint64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        doc_of = np.repeat(np.arange(len(per_doc)), lengths)
        order = np.argsort(self.doc_ngrams, kind="stable")
        self.sorted = self.doc_ngrams[order]
        self.sorted_doc = doc_of[order]  # for each sorted n-gram, one training document that has it (the first)

    def _lookup(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, a training document holding each found n-gram)."""
        if len(self.sorted) == 0 or len(grams) == 0:
            return np.zeros(len(grams), dtype=bool), np.empty(0, dtype=np.int64)
        pos = np.searchsorted(self.sorted, grams)
        pos = np.minimum(pos, len(self.sorted) - 1)
        found = self.sorted[pos] == grams
        return found, self.sorted_doc[pos[found]]

    def _near_duplicate(self, grams: np.ndarray, holders: np.ndarray) -> bool:
        # The candidate is the training document holding most of this document's shared n-grams; an edited copy
        # shares its rare n-grams with its original, so the original is that document.
        if len(holders) == 0:
            return False
        candidate = int(np.bincount(holders).argmax())
        other = self.doc_ngrams[self.offsets[candidate] : self.offsets[candidate + 1]]
        mine = np.unique(grams)
        shared = len(np.intersect1d(mine, other, assume_unique=True))
        return shared / (len(mine) + len(other) - shared) >= NEAR_DUPLICATE_JACCARD

    def measure(self, eval_docs: Iterable[str], split: str) -> Overlap:
        documents = ngrams = shared = exact = near = 0
        for text in eval_docs:
            documents += 1
            words = _words(text)
            grams = self.hasher.ngrams(words)
            found, holders = self._lookup(grams)
            ngrams += len(grams)
            shared += int(found.sum())
            if _stable_hash(" ".join(words)) in self.texts:
                exact += 1
            elif self._near_duplicate(grams, holders):
                near += 1
        return Overlap(split, documents, ngrams, shared / ngrams if ngrams else 0.0, exact, near)


def overlap_figures(train_docs: Iterable[str], eval_docs: Iterable[str], split: str) -> Overlap:
    """The overlap of `eval_docs` (the split named `split`) with `train_docs`."""
    return TrainIndex(train_docs).measure(eval_docs, split)


def warning_lines(o: Overlap) -> list[str]:
    """One line per problem the figures show, naming the count and the fix; empty when the split is clean."""
    lines = []
    if o.exact_duplicates:
        lines.append(
            f"warning: {o.split}: {o.exact_duplicates} of {o.documents} documents are exact copies of training "
            f"documents; remove them from {o.split} or from training, or its perplexity measures memorization"
        )
    if o.near_duplicates:
        lines.append(
            f"warning: {o.split}: {o.near_duplicates} of {o.documents} documents nearly duplicate a training "
            f"document ({NGRAM}-gram Jaccard >= {NEAR_DUPLICATE_JACCARD}); remove them from {o.split} or from training"
        )
    if o.ngram_overlap > OVERLAP_WARN:
        lines.append(
            f"warning: {o.split}: {100 * o.ngram_overlap:.0f}% of its word {NGRAM}-grams occur in training "
            f"(above {100 * OVERLAP_WARN:.0f}%), so its perplexity measures recall of shared text, not "
            f"generalization; hold out whole documents, sources or templates rather than passages"
        )
    return lines


def overlap_warnings(train_docs: Iterable[str], eval_docs: Iterable[str], split: str) -> list[str]:
    """The warning lines for `eval_docs` (the split named `split`) against `train_docs`."""
    return warning_lines(overlap_figures(train_docs, eval_docs, split))
