"""The `finetune` command: train, look at data, evaluate, generate and export without writing a script.

finetune train lm --config recipes/configs/legal_lora.yaml [key=value ...] [--accelerate-config FILE]
finetune inspect-data recipes/configs/legal_lora.yaml
finetune eval --model DIR_OR_ID [--adapter ADAPTER_DIR] --data FILE.jsonl
finetune generate --model DIR_OR_ID [--adapter ADAPTER_DIR] --prompt "..."
finetune export merge --model DIR_OR_ID --adapter ADAPTER_DIR --out DIR
finetune export quantized --bits 8|4 --model DIR_OR_ID [--adapter ADAPTER_DIR] --out DIR
finetune export kohya --lora pytorch_lora_weights.safetensors --out lora_kohya.safetensors
finetune export gguf --model DIR_OR_ID [--adapter ADAPTER_DIR] --out model.gguf --type f16|bf16|q8_0|q4_0
finetune prune --model DIR_OR_ID --method magnitude|wanda|layers --sparsity S|--n-m 2:4|--drop K --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from finetune.errors import UserError, exit_on_user_error
from finetune.quiet import quiet_libraries, set_verbose


def _load_lm(model: str, adapter: str | None, trust_remote_code: bool = False):
    from finetune.models.causal_lm import LMModelConfig, load_causal_lm

    lm, tokenizer = load_causal_lm(LMModelConfig(name_or_path=model, trust_remote_code=trust_remote_code))
    if adapter:
        from peft import PeftModel

        from finetune.export.lm import check_adapter_fits

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"adapter '{adapter}' has no adapter_config.json; pass a PEFT adapter directory")
        check_adapter_fits(lm, Path(adapter), model)  # another base's adapter: one line, not a shape traceback
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
    from finetune.data.text import TextDataConfig, build_text_datasets, make_collate
    from finetune.metrics.perplexity import dataset_batches, nll_and_tokens, perplexity_of
    from finetune.models.causal_lm import fit_context

    model, tokenizer = _load_lm(args.model, args.adapter, args.trust_remote_code)
    max_length = fit_context(args.max_length, model, "--max-length")  # default: 1024, or the model's context if shorter
    cfg = TextDataConfig(train_file=args.data, text_field=args.field, max_length=max_length, pack=False)
    ds = build_text_datasets(cfg, tokenizer)["train"]
    total, count = nll_and_tokens(model, dataset_batches(ds, make_collate(cfg, tokenizer), args.batch_size))
    print(
        json.dumps(
            {
                "data": args.data,
                "documents": len(ds),
                "tokens": count,
                "loss": total / count,
                "perplexity": perplexity_of(total, count),
                "truncated": ds.stats.truncated,
            }
        )
    )


def cmd_generate(args) -> None:
    import torch

    model, tokenizer = _load_lm(args.model, args.adapter, args.trust_remote_code)
    if args.chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = args.prompt
    enc = tokenizer(text, return_tensors="pt")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        ids = model.generate(
            **enc,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.temperature > 0,
            temperature=args.temperature if args.temperature > 0 else None,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    print(tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


MERGE_MARKER = "finetune_merge.json"  # written into every merged directory: what we may replace later


def check_merge_out(out: Path) -> None:
    """--out may be new, empty, or a previous merge of ours holding only the files it wrote; never a user's folder."""
    if out.is_file():
        raise UserError(f"--out {out} is a file; pass a directory for the merged model")
    if not out.is_dir() or not any(out.iterdir()):
        return
    written = []
    if (out / MERGE_MARKER).is_file():
        try:
            written = json.loads((out / MERGE_MARKER).read_text())["files"]
        except (ValueError, KeyError, TypeError):
            written = []
    foreign = sorted(p.name for p in out.iterdir() if p.name not in written)
    if foreign:
        raise UserError(
            f"--out {out} already holds files finetune did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); pass a new or empty directory"
        )


def cmd_export_merge(args) -> None:
    from finetune.io import atomic_dir

    out = Path(args.out)
    check_merge_out(out)  # before the minutes of loading and merging
    from finetune.export.lm import refuse_quantized_source

    model, tokenizer = _load_lm(args.model, args.adapter)
    refuse_quantized_source(model, "export merge")
    merged = model.merge_and_unload()
    with atomic_dir(out) as tmp:  # a previous merge is replaced only once the new one is complete
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir()) + [MERGE_MARKER]
        (tmp / MERGE_MARKER).write_text(
            json.dumps({"model": args.model, "adapter": args.adapter, "files": files}, indent=2) + "\n"
        )
    print(f"merged model written to {out}")


def cmd_export_quantized(args) -> None:
    from finetune.export.quantized import DESCRIBE, check_bits, export_quantized

    out = Path(args.out)
    check_merge_out(out)  # the same rules as a merge: never into a folder of the user's
    check_bits(args.bits)  # a missing library is refused before minutes of loading
    model, tokenizer = _load_lm(args.model, args.adapter, args.trust_remote_code)
    report = export_quantized(
        model,
        tokenizer,
        out,
        bits=args.bits,
        dtype=args.dtype,
        marker=MERGE_MARKER,
        record={"model": args.model, "adapter": args.adapter, "dtype": args.dtype},
    )
    print(
        f"{DESCRIBE[args.bits]} model written to {out}: {report['bytes'] / 2**20:.1f} MiB of weights; it reloads "
        f"with AutoModelForCausalLM.from_pretrained({str(out)!r}) (reload check: {report['check']:.1e})"
    )


def cmd_export_kohya(args) -> None:
    from finetune.export.kohya import module_alphas, read_diffusers_lora, save_kohya

    state, adapter_metadata = read_diffusers_lora(args.lora)
    if adapter_metadata:  # save_lora_weights recorded every component's LoraConfig: rank and alpha per module
        alpha = module_alphas(state, adapter_metadata)
        if args.alpha is not None and set(alpha.values()) != {args.alpha}:
            raise UserError(
                f"--alpha {args.alpha} contradicts the lora_alpha the file records "
                f"({sorted(set(alpha.values()))}); drop --alpha, it is read from the file"
            )
    elif args.rank is None or args.alpha is None:
        raise UserError(f"'{args.lora}' does not record rank/alpha (no lora_adapter_metadata); pass --rank and --alpha")
    else:
        alpha = args.alpha
    path = save_kohya(args.out, state, alpha, rank=args.rank)
    print(f"kohya/A1111 LoRA written to {path} ({len(state) // 2} modules)")


def cmd_export_gguf(args) -> None:
    from finetune.export.gguf import check_gguf_request, export_gguf, load_merged

    check_gguf_request(args.out, args.type)  # before loading: a wrong --type or --out fails in a second
    model, tokenizer, base = load_merged(args.model, args.adapter, args.trust_remote_code)
    done = export_gguf(model, tokenizer, args.out, args.type, base=base)
    fallback = f"; F16 for {len(done.fallbacks)} tensors whose rows do not fit its blocks" if done.fallbacks else ""
    size = done.size_bytes / 2**20
    print(f"GGUF ({args.type}{fallback}) written to {done.path}: {size:.1f} MiB in {done.seconds:.1f} s")


def cmd_prune(args) -> None:
    from finetune.models.causal_lm import LMModelConfig, load_causal_lm
    from finetune.prune import PruneRequest, check_out, check_request, prune_model, save_pruned

    request = PruneRequest(
        method=args.method,
        sparsity=args.sparsity,
        n_m=args.n_m,
        drop=args.drop,
        calibration=args.calibration,
        calibration_tokens=args.calibration_tokens,
    )
    out = Path(args.out)
    check_request(request)  # before the seconds of loading: a bad number or a missing file fails at once
    check_out(out)
    model, tokenizer = load_causal_lm(LMModelConfig(name_or_path=args.model, trust_remote_code=args.trust_remote_code))
    report = prune_model(model, tokenizer, request)
    report["model"] = args.model
    save_pruned(model, tokenizer, out, report)
    after = report["parameters_after"]
    print(
        f"pruned model written to {out}: {after['nonzero']:,} nonzero of {after['total']:,} parameters "
        f"(was {report['parameters_before']['total']:,}); report: {out / 'prune_report.json'}"
    )


def cmd_train(args) -> int:
    from finetune.launch import launch

    recipe_args = (["--config", args.config] if args.config else []) + args.overrides + args.extra
    return launch(args.recipe, recipe_args, args.accelerate_config)


class _TrainHelp(argparse.Action):
    """`finetune train RECIPE --help`: this command's options, then the recipe's own help with every config key."""

    def __call__(self, parser, namespace, values, option_string=None):
        from finetune.launch import print_recipe_help

        parser.print_help()
        if getattr(namespace, "recipe", None):  # set when the recipe comes before --help
            print()
            print_recipe_help(namespace.recipe)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    import finetune
    from finetune.launch import RECIPES

    p = argparse.ArgumentParser(
        prog="finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every config key of a recipe, with its type, default and meaning: finetune train RECIPE --help",
    )
    p.add_argument("--version", action="version", version=f"finetune {finetune.__version__}")
    p.add_argument(
        "--verbose", action="store_true", help="show every library warning and progress bar (FINETUNE_VERBOSE=1)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "train",
        help="run a recipe under accelerate (as `accelerate launch recipes/...`), errors in one line",
        add_help=False,
    )
    s.add_argument(
        "-h",
        "--help",
        action=_TrainHelp,
        nargs=0,
        help="show this help (after RECIPE: with every config key "
        "of that recipe, its type, default and meaning) and exit",
    )
    s.add_argument("recipe", choices=list(RECIPES), help="lm: train_lm.py, sd: train_sd.py, gan, vae, autoencoder")
    s.add_argument("--config", help="the recipe's YAML config, e.g. recipes/configs/legal_lora.yaml")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 train.max_steps=20")
    s.add_argument("--accelerate-config", help="accelerate config file (default: the project's accelerate_config.yaml)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("inspect-data", help="render samples with trained tokens marked; fail on unusable data")
    s.add_argument("config", help="a recipe YAML with `data:` (and optionally `model:`) sections")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.max_length=512")
    s.add_argument("--samples", type=int, default=3)
    s.set_defaults(fn=cmd_inspect_data)

    def model_args(s):
        s.add_argument(
            "--model", default="smollm2-135m-instruct", help="local dir, hub id, .gguf file or smollm2-135m-instruct"
        )
        s.add_argument("--adapter", help="a PEFT adapter directory to apply")
        s.add_argument("--trust-remote-code", action="store_true", help="allow model code shipped with the checkpoint")

    s = sub.add_parser("eval", help='perplexity of a model (+adapter) on a JSONL of {"text"} as JSON')
    model_args(s)
    s.add_argument("--data", required=True)
    s.add_argument("--field", default="text")
    s.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per document (longer: truncated); default 1024 or the model's context",
    )
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
    s = e.add_parser(
        "quantized",
        help="merge an adapter (if any) and save the model weight-only quantized: "
        "--bits 8 (torchao int8) or 4 (bitsandbytes NF4); from_pretrained(DIR) reloads it",
    )
    model_args(s)
    s.add_argument("--bits", type=int, choices=(8, 4), required=True, help="8: int8 weight-only, 4: NF4")
    s.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default="bfloat16",
        help="dtype of the weights left unquantized (embeddings, norms, head) and of NF4's compute",
    )
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_export_quantized)
    s = e.add_parser("kohya", help="diffusers LoRA -> kohya/A1111 key format")
    s.add_argument("--lora", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--rank", type=int)
    s.add_argument("--alpha", type=float)
    s.set_defaults(fn=cmd_export_kohya)
    s = e.add_parser("gguf", help="a model (+ LoRA adapter, merged) as one GGUF file for llama.cpp / Ollama")
    model_args(s)
    s.add_argument("--out", required=True, help="the .gguf file to write")
    s.add_argument("--type", default="q8_0", help="f16, bf16, q8_0 (default) or q4_0; norms stay F32")
    s.set_defaults(fn=cmd_export_gguf)

    s = sub.add_parser(
        "prune",
        help="zero weights (magnitude / Wanda masks, unstructured or N:M) or remove decoder layers; "
        "writes a model from_pretrained loads",
    )
    s.add_argument(
        "--model", default="smollm2-135m-instruct", help="local dir, hub id, .gguf file or smollm2-135m-instruct"
    )
    s.add_argument("--trust-remote-code", action="store_true", help="allow model code shipped with the checkpoint")
    s.add_argument(
        "--method",
        required=True,
        choices=("magnitude", "wanda", "layers"),
        help="magnitude: |W| per layer; wanda: |W| * input-channel norm per output row; layers: remove whole layers",
    )
    s.add_argument("--sparsity", type=float, help="fraction of each decoder linear layer's weights zeroed, in [0, 1)")
    s.add_argument("--n-m", help="instead of --sparsity: keep N of every M inputs, e.g. 2:4")
    s.add_argument("--drop", type=int, help="--method layers: how many decoder layers to remove")
    s.add_argument("--calibration", help='{"text"} JSONL for wanda / layers scoring (training text, not the test set)')
    s.add_argument("--calibration-tokens", type=int, default=8192, help="calibration tokens used (256 per sequence)")
    s.add_argument("--out", required=True, help="new or empty directory for the pruned model")
    s.set_defaults(fn=cmd_prune)
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # `train` hands what it does not know (overrides after an option) to the recipe
    set_verbose(args.verbose)
    quiet_libraries()
    code = args.fn(args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
