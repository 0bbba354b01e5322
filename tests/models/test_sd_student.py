"""The BK-SDM-style student UNet (finetune/models/sd_student.py): each variant is a plain diffusers UNet with fewer
parameters, every weight it keeps is the teacher's, it runs on the teacher's inputs, its matched stages have the
teacher's shapes, and a cut the teacher cannot take is refused in one line."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from finetune.errors import UserError
from finetune.models.sd_student import (
    block_output,
    count_parameters,
    feature_pairs,
    parse_variant,
    plan_student,
    student_from_teacher,
    teacher_key,
)

# Three stages like the shipped digits UNet (equal innermost widths), two pairs per stage so `pairs` applies too.
TEACHER = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [16, 32, 32],
    "norm_num_groups": 8,
    "cross_attention_dim": 24,
    "attention_head_dim": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VARIANTS = [
    "pairs",
    "mid",
    "innermost",
    "outer_attention",
    "pairs+mid",
    "mid+innermost",
    "mid+innermost+outer_attention",
    "pairs+mid+innermost+outer_attention",
]


@pytest.fixture(scope="module")
def teacher() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TEACHER).eval()


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 8, 8, generator=g),
        torch.tensor([3, 700])[:batch],
        torch.randn(batch, 7, 24, generator=g),
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_is_smaller_and_every_weight_it_keeps_is_the_teachers(teacher, variant):
    student = student_from_teacher(teacher, variant)
    assert type(student) is UNet2DConditionModel
    assert count_parameters(student) < count_parameters(teacher)
    plan, weights = plan_student(dict(teacher.config), variant), teacher.state_dict()
    for key, value in student.state_dict().items():
        assert torch.equal(value, weights[teacher_key(key, plan)]), key
    removed = parse_variant(variant)
    assert (student.mid_block is None) == ("mid" in removed)
    assert len(student.down_blocks) == 3 - ("innermost" in removed)
    if "pairs" in removed:
        assert [len(b.resnets) for b in student.down_blocks] == [1] * len(student.down_blocks)
        assert [len(b.resnets) for b in student.up_blocks] == [2] * len(student.up_blocks)
    if "outer_attention" in removed:
        assert not hasattr(student.down_blocks[0], "attentions") and not hasattr(student.up_blocks[-1], "attentions")
    # it runs on the teacher's inputs and predicts the same shape
    with torch.no_grad():
        assert student(*inputs()).sample.shape == teacher(*inputs()).sample.shape


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_matched_stages_have_the_teachers_shapes(teacher, variant):
    student = student_from_teacher(teacher, variant).eval()
    pairs = feature_pairs(student, teacher)
    assert [s for s, _ in pairs][: len(student.down_blocks)] == [f"down_blocks.{i}" for i in range(3)][
        : len(student.down_blocks)
    ]
    seen: dict[tuple[str, str], torch.Tensor] = {}
    hooks = []
    for s_name, t_name in pairs:
        for side, model, name in (("s", student, s_name), ("t", teacher, t_name)):
            hook = model.get_submodule(name).register_forward_hook(
                lambda m, a, out, key=(side, s_name): seen.__setitem__(key, block_output(out))
            )
            hooks.append(hook)
    with torch.no_grad():
        student(*inputs())
        teacher(*inputs())
    for h in hooks:
        h.remove()
    for s_name, _ in pairs:
        assert seen[("s", s_name)].shape == seen[("t", s_name)].shape, s_name


def test_a_student_of_one_cut_only_changes_what_that_cut_touches(teacher):
    """`mid` leaves every stage in place: outside the mid block the student's modules are the teacher's modules."""
    student = student_from_teacher(teacher, "mid")
    assert feature_pairs(student, teacher) == [(f"down_blocks.{i}",) * 2 for i in range(3)] + [
        (f"up_blocks.{j}",) * 2 for j in range(3)
    ]
    assert count_parameters(teacher) - count_parameters(student) == count_parameters(teacher.mid_block)


def test_the_student_saves_and_reloads_as_a_stock_unet_of_its_config(teacher, tmp_path):
    student = student_from_teacher(teacher, "mid+innermost+outer_attention")
    student.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path, use_safetensors=True)
    assert reloaded.config.mid_block_type is None and list(reloaded.config.block_out_channels) == [16, 32]
    assert list(reloaded.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), student.state_dict().values()))


@pytest.mark.parametrize(
    "config,variant,message",
    [
        ({}, "tiny", "is not a student variant"),
        ({}, "mid+mid", "is not a student variant"),
        ({}, "", "is not a student variant"),
        ({"layers_per_block": 1}, "pairs", r"no resnet \+ attention pair to spare"),
        ({"block_out_channels": [16, 32, 48]}, "innermost", "needs them equal"),
        ({"mid_block_type": None}, "mid", "no mid block"),
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}, "outer_attention", "without"),
    ],
)
def test_a_cut_the_teacher_cannot_take_is_refused_in_one_line(config, variant, message):
    with pytest.raises(UserError, match=message) as info:
        plan_student({**TEACHER, **config}, variant)
    assert "\n" not in str(info.value)


def test_a_teacher_that_is_not_a_conditional_unet_is_refused():
    from diffusers import UNet2DModel

    other = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    with pytest.raises(UserError, match="needs a diffusers UNet2DConditionModel"):
        student_from_teacher(other, "mid")
