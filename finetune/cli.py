"""The `finetune` command: look at data, evaluate, generate and export without writing a script.

    finetune inspect-data recipes/configs/legal_lora.yaml
    finetune eval --model DIR_OR_ID [--adapter ADAPTER_DIR] --data FILE.jsonl
    finetune generate --model DIR_OR_ID [--adapter ADAPTER_DIR] --prompt "..."
    finetune export merge --model DIR_OR_ID --adapter ADAPTER_DIR --out DIR
    finetune export kohya --lora pytorch_lora_weights.safetensors --out lora_kohya.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from finetune.errors import UserError, exit_on_user_error


def _load_lm(model: str, adapter: str | None, trust_remote_code: bool = False):
    from finetune.models.causal_lm import LMModelConfig, load_causal_lm

    lm, tokenizer = load_causal_lm(LMModelConfig(name_or_path=model, trust_remote_code=trust_remote_code))
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"adapter '{adapter}' has no adapter_config.json; pass a PEFT adapter directory")
        lm = PeftModel.from_pretrained(lm, adapter)
    return lm.eval(), tokenizer


def cmd_inspect_data(args) -> None:
    from finetune.config import load_section
    from finetune.data.inspect import inspect_data
    from finetune.data.text import TextDataConfig
    from finetune.models.causal_lm import LMModelConfig, load_causal_lm

    data_cfg = load_section(TextDataConfig, args.config, "data", args.overrides)
    model_cfg = load_section(LMModelConfig, args.config, "model", args.overrides)
    _, tokenizer = load_causal_lm(model_cfg)
    print(inspect_data(data_cfg, tokenizer, n_samples=args.samples))


def cmd_eval(args) -> None:
    import torch

    from finetune.data.text import TextDataConfig, build_text_datasets, make_collate
    from finetune.metrics.perplexity import nll_sum
    from finetune.models.causal_lm import fit_context

    model, tokenizer = _load_lm(args.model, args.adapter, args.trust_remote_code)
    max_length = fit_context(args.max_length, model, "--max-length")  # default: 1024, or the model's context if shorter
    cfg = TextDataConfig(train_file=args.data, text_field=args.field, max_length=max_length, pack=False)
    ds = build_text_datasets(cfg, tokenizer)["train"]
    collate = make_collate(cfg, tokenizer)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ds), args.batch_size):
            batch = collate([ds[i] for i in range(start, min(start + args.batch_size, len(ds)))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll, n = nll_sum(logits[:, -batch["input_ids"].shape[1] :], batch["labels"])
            total, count = total + nll, count + n
    print(json.dumps({"data": args.data, "documents": len(ds), "tokens": count,
                      "loss": total / count, "perplexity": math.exp(total / count),
                      "truncated": ds.stats.truncated}))


def cmd_generate(args) -> None:
    import torch

    model, tokenizer = _load_lm(args.model, args.adapter, args.trust_remote_code)
    if args.chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = args.prompt
    enc = tokenizer(text, return_tensors="pt")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                             temperature=args.temperature if args.temperature > 0 else None,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    print(tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def cmd_export_merge(args) -> None:
    from finetune.io import atomic_dir

    model, tokenizer = _load_lm(args.model, args.adapter)
    merged = model.merge_and_unload()
    with atomic_dir(args.out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"merged model written to {args.out}")


def cmd_export_kohya(args) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from finetune.export.kohya import to_kohya
    from finetune.io import atomic_write_bytes

    src = Path(args.lora)
    if not src.is_file() or src.suffix != ".safetensors":
        raise UserError(f"'{args.lora}' is not a .safetensors LoRA file; pass pytorch_lora_weights.safetensors")
    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
    state = load_file(str(src))
    rank = args.rank or int(meta.get("rank", 0)) or None
    alpha = args.alpha or float(meta.get("alpha", 0)) or None
    if rank is None or alpha is None:
        raise UserError("the LoRA file does not record rank/alpha; pass --rank and --alpha")
    kohya_sd, kohya_meta = to_kohya(state, alpha=alpha, rank=rank)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / "out.safetensors"
        save_file(kohya_sd, str(tmp), metadata=kohya_meta)
        atomic_write_bytes(args.out, tmp.read_bytes())
    print(f"kohya/A1111 LoRA written to {args.out} ({len(kohya_sd)} tensors)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect-data", help="render samples with trained tokens marked; fail on unusable data")
    s.add_argument("config", help="a recipe YAML with `data:` (and optionally `model:`) sections")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.max_length=512")
    s.add_argument("--samples", type=int, default=3)
    s.set_defaults(fn=cmd_inspect_data)

    def model_args(s):
        s.add_argument("--model", default="smollm2-135m-instruct", help="local dir, hub id, .gguf file or smollm2-135m-instruct")
        s.add_argument("--adapter", help="a PEFT adapter directory to apply")
        s.add_argument("--trust-remote-code", action="store_true", help="allow model code shipped with the checkpoint")

    s = sub.add_parser("eval", help="perplexity of a model (+adapter) on a JSONL of {\"text\"} as JSON")
    model_args(s)
    s.add_argument("--data", required=True)
    s.add_argument("--field", default="text")
    s.add_argument("--max-length", type=int, default=None, help="tokens per document (longer: truncated); default 1024 or the model's context")
    s.add_argument("--batch-size", type=int, default=4)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("generate", help="a quick look at a model's continuation of a prompt")
    model_args(s)
    s.add_argument("--prompt", required=True)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_generate)

    e = sub.add_parser("export", help="convert trained artifacts").add_subparsers(dest="what", required=True)
    s = e.add_parser("merge", help="merge a LoRA adapter into its base model and save it (safetensors)")
    model_args(s)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_export_merge)
    s = e.add_parser("kohya", help="diffusers LoRA -> kohya/A1111 key format")
    s.add_argument("--lora", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--rank", type=int)
    s.add_argument("--alpha", type=float)
    s.set_defaults(fn=cmd_export_kohya)
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main(sys.argv[1:])
