"""GGUF export for llama.cpp, Ollama and LM Studio: a LLaMA-architecture causal LM (merged) in one `.gguf` file.

    finetune export gguf --model DIR_OR_ID [--adapter ADAPTER_DIR] --out model.gguf --type q8_0

Written with the `gguf` package (llama.cpp's own Python writer, name map and numpy quantizers). What llama.cpp's
`convert_hf_to_gguf.py` does for a LLaMA and none of the libraries offers as a function is written here: the
hyperparameter keys, the q/k row permutation, the per-tensor type choice and the byte-level BPE vocabulary with
its token types. Special token ids, merges, add-BOS/EOS flags and the chat template come from `gguf.SpecialVocab`.

Checked by reading the file back with transformers' GGUF loader (tests/export/test_gguf.py): same logits (f16),
same tokenization, and the end-of-turn token and chat template a chat runtime needs to stop.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from finetune.errors import UserError
from finetune.io import atomic_file

if TYPE_CHECKING:
    from finetune.models.causal_lm import BaseModelReference

GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0")
GGUFChoice = Literal["none", "f16", "bf16", "q8_0", "q4_0"]  # the LM recipe's export.gguf
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # llama.cpp's "llama" tensor layout, mapped by gguf.TensorNameMap
SUPPORTED_ROPE = ("default", "linear", "llama3")

# Tokens a template or vocabulary marks as control although the tokenizer does not flag them special; llama.cpp's
# converter treats these spellings as control too, so the runtime never prints them as text.
SPECIAL_LOOKING = (("<|", "|>"), ("<｜", "｜>"), ("<unused", ">"))
SPECIAL_NAMES = ("<pad>", "<mask>")

# The HF pre-tokenizer layouts llama.cpp names in `tokenizer.ggml.pre` (it splits text before BPE by that name).
# Plain GPT-2 byte-level regex: "gpt2"; digits split one by one first, then GPT-2's regex (SmolLM/SmolLM2):
# "smollm". A Split(regex) + ByteLevel layout is named from transformers' own table of those regexes.
PRE_GPT2 = [{"type": "ByteLevel", "use_regex": True}]
PRE_SMOLLM = [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]


@dataclass
class GGUFExport:
    path: Path  # the written file
    gguf_type: str  # f16 | bf16 | q8_0 | q4_0 as asked
    tensor_types: dict[str, str] = field(default_factory=dict)  # GGUF tensor name -> GGML type written
    fallbacks: list[str] = field(default_factory=list)  # tensors written F16 because their rows do not fit the blocks
    seconds: float = 0.0  # time to convert and write
    size_bytes: int = 0  # file size


# ----------------------------------------------------------------------------------------------------------
# Checks that run before any model loads


def check_gguf_request(out: str | os.PathLike, gguf_type: str) -> Path:
    """Refuse an unsupported --type or an --out that is not a writable `.gguf` file path, in one line each."""
    if gguf_type not in GGUF_TYPES:
        raise UserError(
            f"--type {gguf_type!r} is not supported for GGUF; use one of {', '.join(GGUF_TYPES)} "
            "(K-quants such as q4_k_m: run llama.cpp's llama-quantize on the f16 file)"
        )
    path = Path(out).expanduser()
    if path.suffix.lower() != ".gguf":
        raise UserError(f"--out {out} does not end in .gguf; name the file e.g. {path.with_suffix('.gguf').name}")
    if path.is_dir():
        raise UserError(f"--out {out} is a directory; pass a file path ending in .gguf")
    parent = path.parent
    while not parent.exists():  # atomic_file creates missing parents: the nearest existing one must be writable
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {parent} (not a writable directory); choose another place")
    return path


def check_exportable(model, tokenizer) -> None:
    """Refuse, before any work is spent, a model or tokenizer the writer cannot express."""
    check_architecture(model)
    spec = _bpe_backend(tokenizer)
    pre_tokenizer_name(spec)
    if not spec["model"].get("merges"):
        raise UserError(
            "GGUF export: the tokenizer has no BPE merges (a bytes-only vocabulary); llama.cpp's gpt2 "
            "tokenizer needs them: train or load a BPE tokenizer with merges"
        )


def check_architecture(model) -> None:
    """Refuse a model the LLaMA tensor map does not cover, naming it and what is supported."""
    name = type(model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"GGUF export does not map {name} (model_type {getattr(model.config, 'model_type', '?')!r}); "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise UserError(f"GGUF export: llama.cpp's llama runs SiLU MLPs, this model uses {cfg.hidden_act!r}")
    rope = _rope_parameters(cfg)
    if rope.get("rope_type", "default") not in SUPPORTED_ROPE:
        raise UserError(
            f"GGUF export: rope_type {rope['rope_type']!r} is not written; supported: {', '.join(SUPPORTED_ROPE)}"
        )


# ----------------------------------------------------------------------------------------------------------
# Loading: base + adapter merged in full precision


def load_merged(model: str, adapter: str | None = None, trust_remote_code: bool = False):
    """`(merged fp32 model, tokenizer, base reference)` for `--model` (+ `--adapter`), refusing an adapter that does not
    fit the model (PEFT loads mismatched LoRA keys with only a warning, which would export the bare base)."""
    from finetune.models.causal_lm import LMModelConfig, describe_base, load_causal_lm

    cfg = LMModelConfig(name_or_path=model, trust_remote_code=trust_remote_code, torch_dtype="float32")
    lm, tokenizer = load_causal_lm(cfg)
    check_exportable(lm, tokenizer)  # before merging: an unsupported model fails without the adapter's work
    if adapter:
        lm = merge_adapter(lm, adapter, model)
    return lm.eval(), tokenizer, describe_base(cfg)


def merge_adapter(base, adapter: str, model_name: str):
    """Apply the LoRA in `adapter` to `base` and merge it in fp32; every adapter tensor must land on a module."""
    from peft import PeftConfig, PeftModel
    from peft.utils import get_peft_model_state_dict

    where = Path(adapter)
    if not (where / "adapter_config.json").is_file():
        raise UserError(f"--adapter {adapter} has no adapter_config.json; pass a PEFT adapter directory")
    peft_cfg = PeftConfig.from_pretrained(adapter)
    recorded = peft_cfg.base_model_name_or_path or "its base model"
    if peft_cfg.is_prompt_learning:
        raise UserError(
            f"--adapter {adapter} is a {peft_cfg.peft_type} adapter: it adds virtual tokens, not weights, "
            "so it cannot be merged into a GGUF; export a LoRA or a full fine-tune"
        )
    mismatch = f"--adapter {adapter} does not fit --model {model_name} (it was trained on {recorded})"
    try:
        peft_model = PeftModel.from_pretrained(base, adapter)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{mismatch}: {first[:200]}; pass the model it was trained on") from e
    loaded = set(get_peft_model_state_dict(peft_model))
    stray = sorted(set(_adapter_keys(where)) - loaded)
    if stray:
        raise UserError(
            f"{mismatch}: {len(stray)} adapter tensors match no module (e.g. {stray[0]}); "
            "pass the model it was trained on"
        )
    return peft_model.merge_and_unload()


def _adapter_keys(adapter: Path) -> list[str]:
    from safetensors import safe_open

    files = sorted(adapter.glob("*.safetensors"))
    if not files:
        raise UserError(f"--adapter {adapter} has no .safetensors weights; pickled adapters are refused")
    keys: list[str] = []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            keys.extend(st.keys())
    return keys


# ----------------------------------------------------------------------------------------------------------
# The export


def export_gguf(
    model,
    tokenizer,
    out: str | os.PathLike,
    gguf_type: str,
    base: BaseModelReference | None = None,
    name: str | None = None,
) -> GGUFExport:
    """Write `model` (a merged LlamaForCausalLM) and `tokenizer` to `out` as GGUF of `gguf_type`, atomically."""
    import gguf

    path = check_gguf_request(out, gguf_type)
    check_exportable(model, tokenizer)
    start = time.perf_counter()
    result = GGUFExport(path=path, gguf_type=gguf_type)
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _write_general(writer, gguf_type, name or path.stem, base)
        _write_hyperparameters(writer, model.config, model.get_input_embeddings().num_embeddings)
        _write_tokenizer(writer, tokenizer, model.get_input_embeddings().num_embeddings)
        for gguf_name, array in _gguf_tensors(model):
            qtype = _tensor_type(gguf_name, array, gguf_type, result)
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)  # shape from the data (bytes per row when quantized)
            result.tensor_types[gguf_name] = qtype.name
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    result.seconds = time.perf_counter() - start
    result.size_bytes = path.stat().st_size
    return result


# Which tensor gets which type (as llama.cpp's converter and llama-quantize choose):
# - 1-D tensors (the RMSNorm weights, any bias) and llama3's rope_freqs stay F32: tiny, and llama.cpp computes norms
#   in F32 (its converter forces them to F32 whatever --outtype says).
# - f16 / bf16: every 2-D weight in that type; q8_0: every 2-D weight Q8_0, the embedding and output included
#   (convert_hf_to_gguf --outtype q8_0 does the same).
# - q4_0: every 2-D weight Q4_0 except the token embedding and the output projection, which get Q8_0: they are the
#   most sensitive tensors (llama-quantize gives the output Q6_K, a K-quant gguf-py cannot write; the shipped
#   SmolLM2 Q4_1 GGUF stores its tied embedding Q8_0 likewise).
# - Q8_0/Q4_0 pack rows in blocks of 32 values: a tensor whose row length is not a multiple of 32 falls back to F16,
#   per tensor, as convert_hf_to_gguf falls back on gguf's QuantError (recorded in GGUFExport.fallbacks).
def _tensor_type(gguf_name: str, array: np.ndarray, gguf_type: str, result: GGUFExport):
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    if array.ndim == 1 or gguf_name.startswith("rope_freqs"):
        return Q.F32
    wanted = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[gguf_type]
    if wanted == Q.Q4_0 and gguf_name.split(".")[0] in ("token_embd", "output"):
        wanted = Q.Q8_0
    block = GGML_QUANT_SIZES[wanted][0]
    if array.shape[-1] % block:
        result.fallbacks.append(gguf_name)
        return Q.F16
    return wanted


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection from HF's rotate-half RoPE layout (pairs i, i + d/2) to llama.cpp's interleaved one
    (pairs 2i, 2i + 1), per head; transformers' GGUF reader applies the inverse."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_tensors(model):
    """(GGUF name, fp32 numpy array) for every weight, q/k permuted; a tied lm_head is written once (token_embd)."""
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = model.get_output_embeddings() is None or (
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    )
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name!r} of {type(model).__name__}")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = permute_qk(array, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = permute_qk(array, cfg.num_key_value_heads)
        yield gguf_name, array
    freqs = _llama3_rope_factors(cfg)
    if freqs is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", freqs


# ----------------------------------------------------------------------------------------------------------
# Metadata: general.*, hyperparameters


def _write_general(writer, gguf_type: str, name: str, base: BaseModelReference | None) -> None:
    import gguf

    file_type = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[gguf_type]
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if base is not None and base.hub_id:  # the hub model this fine-tune starts from, as llama.cpp's converter records
        writer.add_base_model_count(1)
        org, _, repo = base.hub_id.rpartition("/")
        writer.add_base_model_name(0, repo)
        if org:
            writer.add_base_model_organization(0, org)
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{base.hub_id}")
    if base is not None and base.note:
        writer.add_description(f"Fine-tuned with finetune from {base.name_or_path}; the base {base.note}")


def _rope_parameters(cfg) -> dict:
    """transformers 5 keeps RoPE settings in `rope_parameters`; older configs in rope_theta + rope_scaling."""
    params = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _write_hyperparameters(writer, cfg, vocab_size: int) -> None:
    import gguf

    rope = _rope_parameters(cfg)
    head_dim = _head_dim(cfg)
    writer.add_vocab_size(vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // cfg.num_attention_heads:  # llama.cpp assumes hidden/heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def _llama3_rope_factors(cfg) -> np.ndarray | None:
    """llama3 RoPE scaling as llama.cpp reads it: a `rope_freqs` tensor dividing each default frequency.

    transformers' own llama3 init gives the scaled inverse frequencies; the factors are default / scaled.
    """
    if _rope_parameters(cfg)["rope_type"] != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    dim = _head_dim(cfg)
    default = 1.0 / (float(_rope_parameters(cfg)["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return (default / scaled.to(torch.float64)).to(torch.float32).numpy()


# ----------------------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE ("gpt2" in llama.cpp's terms), as SmolLM2 and Llama 3 use


def _write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Tokens (padded to the embedding rows), token types, merges, special ids, add-BOS/EOS, end of turn, template."""
    import gguf

    backend = _bpe_backend(tokenizer)
    tokens, types = token_table(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(backend))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as tmp:  # SpecialVocab reads the files save_pretrained writes
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size)
    special.add_special_token["bos"], special.add_special_token["eos"] = _adds_bos_eos(tokenizer)
    special.add_to_gguf(writer, quiet=True)
    eot = end_of_turn_id(tokenizer)
    if eot is not None and "eot" not in special.special_token_ids:
        writer.add_eot_token_id(eot)


def _bpe_backend(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"GGUF export needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} is not one")
    spec = json.loads(backend.to_str())
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise UserError(
            f"GGUF export writes byte-level BPE tokenizers (SmolLM2, Llama 3, GPT-2); this one is "
            f"{model.get('type')} with a {decoder.get('type')} decoder"
        )
    return spec


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (`tokenizer.ggml.pre`)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and _matches(steps[0], PRE_GPT2[0]):
        return "gpt2"
    if len(steps) == 2 and all(_matches(s, want) for s, want in zip(steps, PRE_SMOLLM)):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
            if split == regex:
                return name
    kinds = "+".join(str(s.get("type")) for s in steps)
    raise UserError(
        f"GGUF export: llama.cpp has no name for this tokenizer's pre-tokenizer ({kinds}); supported: "
        "GPT-2 byte-level, SmolLM's digits + byte-level, and the Llama 3 / Qwen2 style split regexes"
    )


def _matches(step: dict, want: dict) -> bool:
    return all(step.get(key, True if key == "use_regex" else None) == value for key, value in want.items())


def token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their llama.cpp types: added special tokens CONTROL, other added tokens USER_DEFINED,
    embedding rows no token uses `[PAD{id}]` UNUSED (llama.cpp's converter pads the same way)."""
    from gguf import TokenType

    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise UserError(
            f"GGUF export: the tokenizer has ids up to {max(vocab.values())} but the model embeds only "
            f"{vocab_size} tokens; resize the embeddings (model.resize_token_embeddings) before export"
        )
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(TokenType.CONTROL if added[i].special or _looks_special(token) else TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _looks_special(token: str) -> bool:
    return token in SPECIAL_NAMES or any(token.startswith(a) and token.endswith(b) for a, b in SPECIAL_LOOKING)


def _adds_bos_eos(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS, read from what the tokenizer does (its post-processor), not from flags."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    adds_bos = bos is not None and len(full) > len(plain) and full[0] == bos and plain[:1] != [bos]
    adds_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and plain[-1:] != [eos]
    return adds_bos, adds_eos


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant message (ChatML: `<|im_end|>`).

    Read from the rendered template, so any template works; llama.cpp and Ollama stop generating at it. Falls back to
    EOS when there is no template or the template closes turns with plain text.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return tokenizer.eos_token_id
    marker = "finetune-end-of-turn-probe"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # a template that wants other roles or fields (jinja raises its own errors): keep EOS
        return tokenizer.eos_token_id
    if not isinstance(text, str) or marker not in text:
        return tokenizer.eos_token_id
    after = tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
    specials = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return next((i for i in after if i in specials), tokenizer.eos_token_id)


# ----------------------------------------------------------------------------------------------------------
# The LM recipe's `export.gguf`


def check_recipe_gguf(gguf_type: str, method_export: str, mergeable: bool) -> None:
    """Before training: `export.gguf` needs weights to write (a LoRA merged, or the full model), not a soft prompt."""
    if gguf_type == "none":
        return
    check_gguf_request("model.gguf", gguf_type)
    if method_export != "model" and not mergeable:
        raise UserError(
            f"export.gguf={gguf_type} needs method=lora or method=full (a prompt adapter adds virtual "
            "tokens, which a GGUF cannot hold); set export.gguf=none"
        )


def export_run_gguf(model, tokenizer, run_dir: Path, gguf_type: str, model_cfg) -> GGUFExport:
    """The trained model as `run_dir/model.<type>.gguf`: a LoRA merged in fp32 first, never into a quantized base."""
    import copy
    import dataclasses

    from finetune.models.causal_lm import describe_base, load_causal_lm

    if hasattr(model, "merge_and_unload"):
        if getattr(model.get_base_model(), "hf_quantizer", None) is None:
            merged = copy.deepcopy(model).merge_and_unload()
        else:  # QLoRA: the saved adapter onto the full-precision base (merging into 4/8-bit weights rounds them)
            fields = {f.name for f in dataclasses.fields(model_cfg)}
            full = {"torch_dtype": "float32", **({"quantization": "none"} if "quantization" in fields else {})}
            base, _ = load_causal_lm(dataclasses.replace(model_cfg, **full))
            merged = merge_adapter(base, str(run_dir / "adapter"), model_cfg.name_or_path)
    else:
        merged = model
    path = run_dir / f"model.{gguf_type}.gguf"
    return export_gguf(merged.eval(), tokenizer, path, gguf_type, base=describe_base(model_cfg), name=run_dir.name)
