"""UNet distillation (method=distill_unet): a smaller student UNet, cut from the teacher (finetune/models/sd_student.py),
learns from the frozen teacher as BK-SDM does (Kim et al., 2023):

    loss = denoise_weight * MSE(student prediction, eps / v target)           # the usual denoising loss
         + output_weight  * MSE(student prediction, teacher prediction)        # output distillation
         + feature_weight * sum over matched stages MSE(student stage output, teacher stage output)   # features

The teacher is the UNet of `model.pretrained`; it runs in no-grad on the very noisy latents, timesteps and prompts
the student sees. Stage outputs are read by forward hooks (matched as `sd_student.feature_pairs` says). With
output_weight = feature_weight = 0 the teacher never runs: the run is the same student trained without distillation
(the ablation), number for number.

Written by hand: diffusers has no distillation objective for UNets (its consistency-distillation examples are
scripts, with another objective).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from finetune.errors import UserError
from finetune.models.sd_denoiser import SDDenoiser
from finetune.models.sd_student import block_output, feature_pairs, parse_variant, student_from_teacher


@dataclass
class DistillConfig:
    student: str = (
        "mid"  # the student: what it drops from the teacher, "+"-joined: pairs, mid, innermost, outer_attention
    )
    denoise_weight: float = 1.0  # weight of the denoising loss (student prediction vs the eps / v target)
    output_weight: float = 1.0  # output distillation: weight of MSE(student prediction, teacher prediction)
    feature_weight: float = 1.0  # feature distillation: weight of the sum over stages of MSE(student, teacher output)


def validate_distill(cfg: DistillConfig) -> None:
    """Refusals before any model loads: the variant's spelling and the three weights."""
    parse_variant(cfg.student)
    weights = {"denoise_weight": cfg.denoise_weight, "output_weight": cfg.output_weight}
    weights["feature_weight"] = cfg.feature_weight
    for name, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise UserError(f"distill.{name}={value} must be a finite number >= 0 (0 turns that term off)")
    if not any(weights.values()):
        raise UserError(
            "distill: denoise_weight, output_weight and feature_weight are all 0, so nothing trains; "
            "set denoise_weight=1 (and output_weight / feature_weight > 0 to distill)"
        )


def check_teacher_dir(pretrained: str) -> None:
    """A local teacher must hold a UNet2DConditionModel in unet/; said before ~anything loads."""
    config = Path(pretrained).expanduser() / "unet" / "config.json"
    if not config.parent.parent.is_dir():
        return  # a hub id or a single file: the SD loader says what is wrong with it
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise UserError(
            f"method=distill_unet: {config} is missing or not JSON ({type(e).__name__}); the teacher "
            "(model.pretrained) must be an SD pipeline directory whose unet/ holds a UNet2DConditionModel"
        ) from e
    if class_name != "UNet2DConditionModel":
        raise UserError(
            f"method=distill_unet: the teacher's unet/ in {pretrained} is a {class_name}, not a "
            "UNet2DConditionModel; point model.pretrained at a Stable Diffusion pipeline directory"
        )


def output_distillation_loss(student_pred: torch.Tensor, teacher_pred: torch.Tensor) -> torch.Tensor:
    """MSE between the student's and the teacher's predictions (fp32: the teacher runs in the weight dtype)."""
    return F.mse_loss(student_pred.float(), teacher_pred.float())


def feature_distillation_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """Sum over matched stages of the MSE between their outputs (BK-SDM sums the per-stage terms)."""
    terms = [F.mse_loss(s.float(), t.float()) for s, t in zip(student_feats, teacher_feats, strict=True)]
    return torch.stack(terms).sum()


class UNetDistillation:
    """The frozen teacher, the student cut from it, and the hooks that read their stage outputs."""

    def __init__(self, teacher, text_encoder, cfg: DistillConfig):
        self.cfg = cfg
        self.student = student_from_teacher(teacher, cfg.student)
        # the text encoder runs only when the batch carries token ids (efficiency.cache_text=false); it is frozen
        self.teacher = SDDenoiser(teacher.eval().requires_grad_(False), text_encoder)
        self.pairs = feature_pairs(self.student, teacher)
        self._feats: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
        if cfg.feature_weight > 0:  # no hooks at all when feature distillation is off
            for side, model, column in (("student", self.student, 0), ("teacher", teacher, 1)):
                for pair in self.pairs:
                    model.get_submodule(pair[column]).register_forward_hook(self._keep(side, pair[0]))

    def _keep(self, side: str, key: str):
        def hook(module, args, output):
            self._feats[side][key] = block_output(output)

        return hook

    @property
    def uses_teacher(self) -> bool:
        return self.cfg.output_weight > 0 or self.cfg.feature_weight > 0

    def to(self, device, dtype: torch.dtype) -> UNetDistillation:
        """The teacher is frozen: it lives in the mixed-precision weight dtype, like every frozen part."""
        self.teacher.unet.to(device, dtype)
        return self

    def loss(self, denoise: torch.Tensor, pred: torch.Tensor, noisy, timesteps, cond) -> tuple[torch.Tensor, dict]:
        """The module docstring's loss, given the denoising loss and the student's prediction of this step (whose
        forward the student hooks saw)."""
        cfg = self.cfg
        if not self.uses_teacher:  # the ablation: exactly the plain student's loss, the teacher never runs
            return cfg.denoise_weight * denoise, {"denoise_loss": denoise.detach()}
        with torch.no_grad():
            teacher_pred = self.teacher(noisy, timesteps, cond)
        output = output_distillation_loss(pred, teacher_pred)
        total = cfg.denoise_weight * denoise + cfg.output_weight * output
        logs = {"denoise_loss": denoise.detach(), "output_kd_loss": output.detach()}
        if cfg.feature_weight > 0:
            student, teacher = self._feats["student"], self._feats["teacher"]
            keys = [s for s, _ in self.pairs]
            feature = feature_distillation_loss([student[k] for k in keys], [teacher[k] for k in keys])
            total = total + cfg.feature_weight * feature
            logs["feature_kd_loss"] = feature.detach()
        self._feats = {"student": {}, "teacher": {}}  # never match a later step against these activations
        return total, logs
