"""method=distill_unet (finetune/methods/sd_distill.py): the output and feature distillation terms equal a direct
computation and are zero when the student equals the teacher; with both distillation weights 0 the teacher never
runs and the loss is the plain student's; a short recipe run on the tiny SD lowers the loss, one on the shipped
digits SD brings the student's prediction towards the teacher's, and the saved student is a stock diffusers UNet in
a pipeline StableDiffusionPipeline loads and samples; bad input stops with one line and writes nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

import finetune.methods.sd_distill as sd_distill
from finetune.config import load_config
from finetune.errors import UserError
from finetune.methods.sd_distill import (
    DistillConfig,
    UNetDistillation,
    feature_distillation_loss,
    output_distillation_loss,
    validate_distill,
)
from finetune.methods.sd_registry import SD_METHODS
from finetune.models.sd import build_tiny_sd
from finetune.models.sd_student import count_parameters
from finetune.train.logging import read_metrics
from recipes.train_sd import SDRecipeConfig, main
from tests.conftest import ROOT
from tests.recipes.conftest import fresh_accelerate_state, shipped_mixed_precision  # noqa: F401 (fixtures)

BASE = [
    "model.resolution=32",
    "model.tiny=true",
    "method=distill_unet",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "train.eval_every=0",
    "train.save_every=0",
    "validation.grids=false",
    "efficiency.conv_backend=onednn",
    "train.save_best=false",
    f"data.caption_dir={ROOT / 'data' / 'subject'}",
]


def batch(unet, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size
    return (
        torch.randn(n, 4, side, side, generator=g),
        torch.tensor([5, 900])[:n],
        torch.randn(n, 77, unet.config.cross_attention_dim, generator=g),
    )


def test_the_distillation_terms_equal_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    assert output_distillation_loss(s, t).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    feats_s = [torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 16, 2, 2, generator=g)]
    feats_t = [torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 16, 2, 2, generator=g)]
    direct = sum(((a - b) ** 2).mean() for a, b in zip(feats_s, feats_t))
    assert feature_distillation_loss(feats_s, feats_t).item() == pytest.approx(direct.item(), rel=1e-6)
    # a bf16 teacher is compared in fp32
    assert output_distillation_loss(s, t.bfloat16()).dtype == torch.float32


def test_the_hooked_loss_is_the_weighted_sum_of_the_terms_on_the_matched_stages():
    unet = build_tiny_sd().unet
    cfg = DistillConfig(student="mid", denoise_weight=0.5, output_weight=2.0, feature_weight=3.0)
    distill = UNetDistillation(unet, None, cfg)
    noisy, t, cond = batch(unet)
    pred = distill.student(noisy, t, cond).sample
    denoise = torch.tensor(0.7)
    total, logs = distill.loss(denoise, pred, noisy, t, cond)
    # the direct computation: run both again and read the stage outputs by name
    with torch.no_grad():
        teacher_pred = unet(noisy, t, cond).sample
    out_direct = ((pred - teacher_pred) ** 2).mean()
    assert logs["output_kd_loss"].item() == pytest.approx(out_direct.item(), rel=1e-5)
    assert logs["feature_kd_loss"] > 0
    want = 0.5 * 0.7 + 2.0 * logs["output_kd_loss"] + 3.0 * logs["feature_kd_loss"]
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    total.backward()  # the terms reach the student's weights, never the teacher's
    assert all(p.grad is None for p in unet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distill.student.parameters())


def test_the_terms_are_zero_when_the_student_equals_the_teacher(monkeypatch):
    unet = build_tiny_sd().unet
    monkeypatch.setattr(sd_distill, "student_from_teacher", lambda teacher, variant: copy.deepcopy(teacher))
    distill = UNetDistillation(unet, None, DistillConfig())
    assert len(distill.pairs) == 5  # every down stage, the mid block, every up stage
    noisy, t, cond = batch(unet)
    pred = distill.student(noisy, t, cond).sample
    total, logs = distill.loss(torch.tensor(0.25), pred, noisy, t, cond)
    assert logs["output_kd_loss"].item() == 0 and logs["feature_kd_loss"].item() == 0
    assert total.item() == pytest.approx(0.25)


def test_with_both_distillation_weights_zero_the_teacher_never_runs(monkeypatch):
    unet = build_tiny_sd().unet
    distill = UNetDistillation(unet, None, DistillConfig(output_weight=0.0, feature_weight=0.0, denoise_weight=1.0))

    def no_teacher(*args, **kwargs):
        raise AssertionError("the ablation ran the teacher")

    monkeypatch.setattr(distill.teacher, "forward", no_teacher)
    noisy, t, cond = batch(unet)
    pred = distill.student(noisy, t, cond).sample
    denoise = (pred**2).mean()
    total, logs = distill.loss(denoise, pred, noisy, t, cond)
    assert total is not None and torch.equal(total, denoise) and set(logs) == {"denoise_loss"}


@pytest.mark.parametrize(
    "cfg,message",
    [
        (DistillConfig(student="tiny"), "is not a student variant"),
        (DistillConfig(output_weight=-1.0), r"output_weight=-1.0 must be a finite number >= 0"),
        (DistillConfig(denoise_weight=-1.0, output_weight=-1.0, feature_weight=-1.0), "must be a finite number"),
        (DistillConfig(feature_weight=float("nan")), "feature_weight=nan"),
        (DistillConfig(denoise_weight=0.0, output_weight=0.0, feature_weight=0.0), "nothing trains"),
    ],
)
def test_bad_settings_are_refused_in_one_line(cfg, message):
    with pytest.raises(UserError, match=message) as info:
        validate_distill(cfg)
    assert "\n" not in str(info.value)


def run(out: Path, *overrides: str) -> dict:
    summary = main([*BASE, f"train.output_dir={out}", *overrides])
    assert summary == json.loads((out / "summary.json").read_text())
    return summary


def test_a_short_run_on_the_tiny_sd_lowers_the_loss_and_saves_a_stock_pipeline(tmp_path, shipped_mixed_precision):
    out = tmp_path / "run"
    summary = run(out, "train.max_steps=8", "train.batch_size=2", "optim.lr=1e-3", "distill.student=mid")
    assert summary["val_loss_after"] < summary["val_loss_before"]
    train = [r for r in read_metrics(out) if r["split"] == "train"]
    assert {"denoise_loss", "output_kd_loss", "feature_kd_loss"} <= set(train[0])
    teacher = build_tiny_sd().unet
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None, use_safetensors=True)
    assert type(pipe.unet) is UNet2DConditionModel and pipe.unet.mid_block is None
    assert pipe.unet.config.mid_block_type is None
    assert count_parameters(pipe.unet) == summary["trained_parameters"] < count_parameters(teacher)
    # the trained student is what was saved, in fp32, and it samples
    images = pipe(
        "a drawing of the digit sks",
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(images)).all()
    assert summary["trainable_dtypes"] == ["torch.float32"]


def test_distilling_the_digits_sd_moves_the_student_towards_the_teacher(tmp_path, shipped_mixed_precision):
    """The metric distillation exists for: the student's distance to the teacher's prediction and stage outputs,
    on the shipped (trained) digits UNet, falls over a short distillation-only run."""
    from finetune.data.digits import write_digits_imagefolder

    out, digits = tmp_path / "digits", write_digits_imagefolder(tmp_path / "train_digits", n_per_class=2, size=16)
    args = [
        f"data.caption_dir={digits}",
        f"model.pretrained={ROOT / 'data' / 'digits_sd'}",
        "model.tiny=false",
        "model.resolution=16",
        "distill.student=mid+innermost+outer_attention",
        "distill.denoise_weight=0",
        "train.max_steps=12",
        "train.batch_size=8",
        "optim.lr=5e-4",
    ]
    run(out, *args)
    train = [r for r in read_metrics(out) if r["split"] == "train"]
    first, last = train[:3], train[-3:]
    for key in ("output_kd_loss", "feature_kd_loss"):
        assert sum(r[key] for r in last) < 0.8 * sum(r[key] for r in first), key
    saved = UNet2DConditionModel.from_pretrained(out / "pipeline" / "unet", use_safetensors=True)
    assert list(saved.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D"]


@pytest.mark.parametrize(
    "case,message",
    [
        ("variant", "is not a student variant"),
        ("negative", "must be a finite number >= 0"),
        ("not_unet", "not a UNet2DConditionModel"),
        ("cut", "needs them equal"),
        ("text_encoder", "trains the student UNet only"),
        ("prior", "prior.enabled is DreamBooth's"),
    ],
)
def test_bad_input_stops_with_one_line_and_writes_nothing(tmp_path, capsys, case, message):
    args = {
        "variant": ["distill.student=mid+tiny"],
        "negative": ["distill.denoise_weight=-1", "distill.output_weight=-1", "distill.feature_weight=-1"],
        "cut": ["distill.student=innermost"],  # the tiny SD's two stages are 32 and 64 channels wide
        "text_encoder": ["text_encoder.train=true"],
        "prior": ["prior.enabled=true", f"prior.class_dir={tmp_path / 'class'}", "prior.class_prompt=a digit"],
    }.get(case, [])
    if case == "not_unet":
        fake = tmp_path / "fake_sd"
        (fake / "unet").mkdir(parents=True)
        (fake / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
        (fake / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
        args = ["model.tiny=false", f"model.pretrained={fake}"]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*BASE, f"train.output_dir={out}", "train.max_steps=2", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists()


def test_the_registry_entry_trains_and_saves_the_student_only(tmp_path):
    cfg = load_config(SDRecipeConfig, None, ["model.tiny=true", "method=distill_unet", "data.caption_dir=unused"])
    method, parts = SD_METHODS["distill_unet"], build_tiny_sd()
    teacher = parts.unet
    distill = method.distillation(teacher, parts.text_encoder, cfg)
    parts.unet = distill.student  # as the recipe does
    for module in (parts.vae, parts.text_encoder, parts.unet):
        module.requires_grad_(False)
    unet_params, te_params = method.trainable(parts.unet, parts.text_encoder, cfg)
    assert te_params == [] and {id(p) for p in unet_params} == {id(p) for p in distill.student.parameters()}
    assert not any(p.requires_grad for m in (teacher, parts.text_encoder, parts.vae) for p in m.parameters())
    with torch.no_grad():  # "training": the saved numbers must be these
        for p in unet_params:
            p.add_(0.01 * torch.randn_like(p))
    paths = method.save(tmp_path, parts, cfg, torch.float32)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["pipeline"]
    saved = UNet2DConditionModel.from_pretrained(paths[0] / "unet", use_safetensors=True)
    assert all(torch.equal(a, b) for a, b in zip(saved.parameters(), distill.student.parameters()))
    assert count_parameters(saved) < count_parameters(teacher)
