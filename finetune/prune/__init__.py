"""Pruning causal LMs: unstructured and N:M masks scored by magnitude or Wanda, and whole-layer removal.

`finetune prune --model ... --method magnitude|wanda|layers ...` runs `check_request`, `prune_model` and
`save_pruned`; the result is an ordinary model directory (masks baked into the weights, fewer layers in the
config) that `from_pretrained` loads and the LM recipe fine-tunes (model.name_or_path=DIR) to recover.
Names load on first use (finetune/_exports.py).
"""

from finetune._exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "calibration": ["calibration_blocks", "input_channel_norms", "layer_change_scores"],
        "layers": ["check_drop", "decoder_layers", "drop_decoder_layers", "prunable_linears"],
        "masks": [
            "apply_mask",
            "check_n_m_fits",
            "check_sparsity",
            "magnitude_score",
            "n_m_mask",
            "parse_n_m",
            "unstructured_mask",
            "wanda_score",
        ],
        "pipeline": [
            "REPORT",
            "PruneRequest",
            "check_fits",
            "check_out",
            "check_request",
            "parameter_counts",
            "prune_model",
            "save_pruned",
        ],
    },
)
