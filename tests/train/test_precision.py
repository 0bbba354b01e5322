"""Frozen weights stored in the mixed-precision dtype once (both SD's frozen parts and LM LoRA's base layers)."""

from __future__ import annotations

import torch

from finetune.train.precision import cast_frozen


def test_only_frozen_floating_point_parameters_change_dtype():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[1].requires_grad_(False)
    counter = torch.nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)
    assert cast_frozen([*model.parameters(), counter], torch.bfloat16) == 2  # model[1]'s weight and bias
    assert {p.dtype for p in model[1].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model[0].parameters()} == {torch.float32}  # trained: fp32 master weights
    assert counter.dtype == torch.long
    assert cast_frozen(model.parameters(), torch.bfloat16) == 0  # already stored so: nothing to do
