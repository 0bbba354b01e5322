"""Calibration: a few thousand tokens of training text through the unpruned model, with forward hooks, no
weight update. Two measurements come out of the same kind of pass:

- the L2 norm of every input channel of every decoder linear layer (Wanda's activation term);
- how much each decoder layer changes its input: 1 - cosine(input, output) of its hidden states, averaged
  over tokens (the "Block Influence" of ShortGPT, Men et al. 2024, arXiv:2403.03853). Layers that change
  their input least are the ones removed first.

Written by hand: no library computes either from a model (the hooks are plain torch). The norms are taken on
the dense model in one pass, not layer by layer on the already-pruned prefix as Wanda's reference code does.
"""

from __future__ import annotations

import torch

from finetune.data.text import load_jsonl_dataset, tokenize_documents
from finetune.errors import UserError
from finetune.prune.layers import decoder_layers, prunable_linears


def calibration_blocks(path: str | None, tokenizer, tokens: int, block_size: int) -> torch.Tensor:
    """The first `tokens` tokens of the {"text"} JSONL `path` (documents joined, EOS after each) as
    (blocks, block_size) ids; a short file gives what it has (the caller reports the count)."""
    if not path:
        raise UserError("this method scores with calibration text; pass --calibration FILE.jsonl (e.g. the train file)")
    texts = load_jsonl_dataset(path, "text")["text"]  # checked line by line first: errors name file:line
    stream: list[int] = []
    for doc in tokenize_documents(list(texts), tokenizer):
        stream.extend(doc)
        if len(stream) >= tokens:
            break
    usable = min(tokens, len(stream)) // block_size * block_size
    if usable == 0:
        raise UserError(
            f"{path} has {len(stream)} tokens, fewer than one calibration block of {block_size}; "
            "pass a longer file or a smaller --calibration-tokens"
        )
    return torch.tensor(stream[:usable]).reshape(-1, block_size)


def _batches(blocks: torch.Tensor, batch_size: int):
    return (blocks[i : i + batch_size] for i in range(0, len(blocks), batch_size))


def _hidden(x):
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def input_channel_norms(model, blocks: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """{linear name: L2 norm of each input channel over every calibration token}, from one pass."""
    linears = prunable_linears(model)
    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}

    def hook(name):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            sums[name] += x.double().pow(2).sum(dim=0).cpu()

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    try:
        for batch in _batches(blocks, batch_size):
            model(input_ids=batch.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()  # the model leaves with no hooks: nothing of calibration reaches the saved weights
    return {name: s.sqrt().float() for name, s in sums.items()}


@torch.no_grad()
def layer_change_scores(model, blocks: torch.Tensor, batch_size: int = 4) -> list[float]:
    """Per decoder layer: mean over tokens of 1 - cos(layer input, layer output); low: the layer does little."""
    layers = decoder_layers(model)
    totals = [0.0] * len(layers)
    count = {"tokens": 0}

    def hook(index):
        def record(module, args, kwargs, output):
            x = _hidden(args[0] if args else kwargs["hidden_states"]).float()
            y = _hidden(output).float()
            totals[index] += (1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)).sum().item()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for batch in _batches(blocks, batch_size):
            model(input_ids=batch.to(model.device), use_cache=False)
            count["tokens"] += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return [t / count["tokens"] for t in totals]
