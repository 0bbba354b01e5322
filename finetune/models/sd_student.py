"""A smaller UNet cut from a teacher's, in the manner of BK-SDM (Kim et al., "BK-SDM: a lightweight, fast and cheap
version of Stable Diffusion", 2023): remove residual + attention blocks, start from the teacher's remaining weights.

The student is a plain `diffusers.UNet2DConditionModel` whose config describes the smaller architecture, so it
saves and loads as a stock diffusers UNet. `STUDENT_REMOVALS` are the cuts; a variant is a "+"-joined list of them:

- `pairs`: one resnet + attention pair less in every down stage and every up stage (BK-SDM-Base). It needs
  `layers_per_block >= 2` (a down stage keeps at least one pair).
- `mid`: no mid block (BK-SDM-Small adds this to `pairs`).
- `innermost`: the innermost down and up stages go (BK-SDM-Tiny's cut); the last remaining down stage loses its
  downsampler. It needs the two innermost stages to have the same width (SD1.x: 1280 and 1280), so the mid block
  and the next up stage keep their shapes.
- `outer_attention`: the outermost (highest-resolution) down and up stages keep their resnets and lose their
  attention blocks (CrossAttnDownBlock2D -> DownBlock2D, CrossAttnUpBlock2D -> UpBlock2D). Not a BK-SDM cut, but
  the same kind of removal aimed where the time goes on small latents: attention over the most tokens.

The shipped digits UNet has one pair per down stage, so `pairs` does not apply to it; its innermost stages run on
2x2 latents, so `mid` and `innermost` save parameters but little time, and `outer_attention` is what saves time.

Weight mapping, student key -> teacher key (every student weight comes from the teacher; the shapes match by
construction and `student_from_teacher` checks them):
- conv_in, time_embedding, conv_norm_out, conv_out, mid_block: the same key;
- down_blocks.i.{resnets,attentions}.k: the same i and k (`pairs` drops each down stage's LAST pair: the others all
  map channels out -> out, so any of them could go, and BK-SDM keeps the first);
- down_blocks.i.downsamplers: the same i (with `innermost` the last student stage has none);
- up_blocks.j.{resnets,attentions}.k: teacher up_blocks.(j + s), s = 1 with `innermost` else 0; with `pairs` the
  student's last pair is the teacher's last one (it is the one whose input width takes the next stage's skip) and
  the second-to-last teacher pair is dropped;
- up_blocks.j.upsamplers: teacher up_blocks.(j + s).

Written by hand: diffusers builds a UNet from a config but has no way to cut one out of another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from finetune.errors import UserError

STUDENT_REMOVALS = (
    "pairs",
    "mid",
    "innermost",
    "outer_attention",
)  # what a student variant may remove (a "+"-joined list)
# Config keys holding one value per stage, in down-stage order (a list there; a bare value applies to every stage).
_PER_STAGE_KEYS = (
    "layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "only_cross_attention",
)


def parse_variant(variant: str) -> tuple[str, ...]:
    """ "mid+innermost" -> ("mid", "innermost"); an unknown or repeated part is refused in one line."""
    parts = tuple(p.strip() for p in str(variant).split("+") if p.strip())
    unknown = [p for p in parts if p not in STUDENT_REMOVALS]
    if not parts or unknown or len(set(parts)) != len(parts):
        raise UserError(
            f"distill.student={variant!r} is not a student variant; use a '+'-joined list of "
            f"{', '.join(STUDENT_REMOVALS)} (e.g. mid+innermost), each once"
        )
    return parts


@dataclass(frozen=True)
class StudentPlan:
    """What the cut keeps: the student's config and, per student stage, which teacher stage and blocks it takes."""

    config: dict  # the student's UNet2DConditionModel config
    up_shift: int  # student up stage j is teacher up stage j + up_shift
    drop_pairs: bool  # one resnet + attention pair less in every stage
    teacher_down_layers: tuple[int, ...]  # the teacher's resnets per down stage
    teacher_up_layers: tuple[int, ...]  # the teacher's resnets per up stage (down layers + 1, in up order)


def _per_stage(config: dict, key: str, n: int) -> list:
    value = config.get(key)
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def plan_student(teacher_config: dict, variant: str) -> StudentPlan:
    """The student's config for `variant`, refused in one line where the teacher cannot lose that part."""
    removals = parse_variant(variant)
    config = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    n = len(config["down_block_types"])
    layers = _per_stage(config, "layers_per_block", n)
    if "pairs" in removals:
        if min(layers) < 2:
            raise UserError(
                f"distill.student={variant!r}: the teacher has layers_per_block={config['layers_per_block']}, so a "
                "down stage has no resnet + attention pair to spare (each keeps one); drop 'pairs' (e.g. use mid)"
            )
        config["layers_per_block"] = [k - 1 for k in layers]
    if "mid" in removals:
        if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is None:
            raise UserError(f"distill.student={variant!r}: the teacher has no mid block to remove; drop 'mid'")
        config["mid_block_type"] = None
    if "outer_attention" in removals:
        _cut_outer_attention(config, variant)
    if "innermost" in removals:
        _cut_innermost(config, n, variant)
    return StudentPlan(
        config=config,
        up_shift=1 if "innermost" in removals else 0,
        drop_pairs="pairs" in removals,
        teacher_down_layers=tuple(layers),
        teacher_up_layers=tuple(k + 1 for k in reversed(layers)),
    )


def _cut_outer_attention(config: dict, variant: str) -> None:
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    if (down[0], up[-1]) != ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D"):
        raise UserError(
            f"distill.student={variant!r}: the teacher's outermost stages are {down[0]} / {up[-1]}, without "
            "cross-attention to remove; drop 'outer_attention'"
        )
    # the same module names (resnets, downsamplers, upsamplers) minus attentions: the weight mapping is unchanged
    config["down_block_types"], config["up_block_types"] = ["DownBlock2D", *down[1:]], [*up[:-1], "UpBlock2D"]


def _cut_innermost(config: dict, n: int, variant: str) -> None:
    widths = list(config["block_out_channels"])
    if n < 2:
        raise UserError(f"distill.student={variant!r}: the teacher has one stage; removing it leaves no UNet")
    if widths[-1] != widths[-2]:
        raise UserError(
            f"distill.student={variant!r}: the teacher's two innermost stages are {widths[-2]} and {widths[-1]} "
            "channels wide; removing the innermost needs them equal (the mid block and the next up stage keep "
            "their shapes); drop 'innermost'"
        )
    for key in ("block_out_channels", "down_block_types", *_PER_STAGE_KEYS):
        if isinstance(config.get(key), (list, tuple)):
            config[key] = list(config[key])[:-1]
    config["up_block_types"] = list(config["up_block_types"])[1:]
    if isinstance(config.get("reverse_transformer_layers_per_block"), (list, tuple)):
        config["reverse_transformer_layers_per_block"] = list(config["reverse_transformer_layers_per_block"])[1:]


_STAGE_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$")


def teacher_key(student_key: str, plan: StudentPlan) -> str:
    """The teacher weight a student weight starts from (the mapping in the module docstring)."""
    m = _STAGE_KEY.match(student_key)
    if not m:
        return student_key  # conv_in, time_embedding, mid_block, conv_norm_out, conv_out: unchanged
    stage, i, kind, k, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
    if stage == "up_blocks":
        i += plan.up_shift
        if plan.drop_pairs and kind in ("resnets", "attentions"):
            n_teacher = plan.teacher_up_layers[i]
            k = k if k < n_teacher - 2 else n_teacher - 1  # the student's last pair is the teacher's last
    return f"{stage}.{i}.{kind}.{k}.{rest}"


def student_from_teacher(teacher: UNet2DConditionModel, variant: str) -> UNet2DConditionModel:
    """A smaller UNet2DConditionModel for `variant`, every weight copied from the teacher (none is random)."""
    if not isinstance(teacher, UNet2DConditionModel):
        raise UserError(
            f"the teacher is a {type(teacher).__name__}; distillation needs a diffusers UNet2DConditionModel "
            "(model.pretrained: an SD pipeline directory whose unet/ is one)"
        )
    plan = plan_student(dict(teacher.config), variant)
    student = UNet2DConditionModel(**plan.config).to(teacher.device, teacher.dtype)
    weights = teacher.state_dict()
    mapped = {}
    for key, value in student.state_dict().items():
        source = weights.get(teacher_key(key, plan))
        if source is None or source.shape != value.shape:  # a bug in the mapping, never a user's mistake
            raise RuntimeError(f"student weight {key} has no teacher weight of shape {tuple(value.shape)}")
        mapped[key] = source.detach().clone()
    student.load_state_dict(mapped, strict=True)
    return student.train(teacher.training)


def feature_pairs(student: UNet2DConditionModel, teacher: UNet2DConditionModel) -> list[tuple[str, str]]:
    """(student module, teacher module) whose outputs feature distillation matches: every stage's output, as
    BK-SDM does. A student down stage that lost its downsampler (`innermost`) matches the teacher's last block
    before its downsampler, where the two still have the same resolution."""
    pairs = []
    shift = len(teacher.up_blocks) - len(student.up_blocks)  # 1 with `innermost`
    for i, block in enumerate(student.down_blocks):
        name, teacher_block = f"down_blocks.{i}", teacher.down_blocks[i]
        if getattr(block, "downsamplers", None) is None and getattr(teacher_block, "downsamplers", None) is not None:
            last = "attentions" if getattr(teacher_block, "attentions", None) else "resnets"
            pairs.append((name, f"{name}.{last}.{len(getattr(teacher_block, last)) - 1}"))
        else:
            pairs.append((name, name))
    # with `innermost` the mid block runs at a higher resolution than the teacher's: nothing there to match
    if student.mid_block is not None and teacher.mid_block is not None and shift == 0:
        pairs.append(("mid_block", "mid_block"))
    pairs += [(f"up_blocks.{j}", f"up_blocks.{j + shift}") for j in range(len(student.up_blocks))]
    return pairs


def block_output(output) -> torch.Tensor:
    """A block's hidden states from what its forward returns: down stages return (hidden, skips), transformers
    an output object or a tuple, the rest a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
