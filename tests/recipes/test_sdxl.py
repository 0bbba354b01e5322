"""SDXL in the Stable Diffusion recipe, on the tiny SDXL (finetune.models.sd.build_tiny_sdxl) saved as a diffusers
directory: each method trains (the fixed-noise loss on the subject falls), its artifact reloads in STOCK diffusers
(StableDiffusionXLPipeline.from_pretrained / load_lora_weights / load_textual_inversion for both encoders) and changes
the output as trained; cached and uncached conditioning give the same losses; each image's added time ids are what
its resize and crop did; bad input stops with one line and writes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from finetune.data.images import CaptionedImageFolder, DreamBoothDataset, image_to_tensor
from finetune.models.sd import build_tiny_sdxl, encode_xl, tokenize_prompts
from finetune.train.logging import read_metrics
from recipes.train_sd import main
from tests.recipes.test_sd_recipe import write_images

RES = 32  # the tiny SDXL at 32 px: 16x16 latents
BASE = [
    "model.resolution=32",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "train.eval_every=0",
    "validation.steps=2",
    "validation.grids=false",
    "efficiency.conv_backend=onednn",  # no timing probe: a fixed kernel choice keeps the runs comparable
]
PROMPT = "a photo of sks dog"


@pytest.fixture(autouse=True)
def _shipped_precision(shipped_mixed_precision):
    """Every run uses the precision accelerate_config.yaml ships (bf16), as users run it."""


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> Path:
    """The tiny SDXL saved once as a diffusers directory (what `model.pretrained` points at)."""
    folder = tmp_path_factory.mktemp("tiny_sdxl")
    build_tiny_sdxl(seed=0, sample_size=RES // 2).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("subject"), 3)


def run(out: Path, sdxl_dir: Path, *overrides: str) -> dict:
    summary = main([*BASE, f"model.pretrained={sdxl_dir}", f"train.output_dir={out}", *overrides])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["family"] == "sdxl" and summary["nonfinite_steps"] == 0
    return summary


def dreambooth(subject: Path, class_dir: Path) -> list[str]:
    """DreamBooth on the subject with prior preservation: two class images made by the base model."""
    prior = [f"prior.class_dir={class_dir}", "prior.class_prompt=a photo of a dog", "prior.num_class_images=2"]
    prior.append("prior.sample_steps=2")
    return [f"data.instance_dir={subject}", f"data.instance_prompt={PROMPT}", "prior.enabled=true", *prior]


def stock(sdxl_dir: Path) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompt: str = PROMPT) -> np.ndarray:
    return pipe(
        prompt,
        num_inference_steps=2,
        height=RES,
        width=RES,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


def test_dreambooth_lora_with_prior_and_clip_g_lora_loads_in_stock_sdxl(sdxl_dir, subject, tmp_path):
    out, clip_g_lora = tmp_path / "run", ["text_encoder.train=true", "text_encoder.xl_encoders=[2]"]  # not CLIP-L
    args = [*dreambooth(subject, tmp_path / "class"), *clip_g_lora, "kohya=true"]
    summary = run(out, sdxl_dir, *args, "train.max_steps=8", "train.batch_size=1", "optim.lr=5e-3")
    assert summary["class_images_generated"] == 2
    train = [r for r in read_metrics(out) if r["split"] == "train"]
    assert all(r["loss"] == pytest.approx(r["instance_loss"] + r["prior_loss"], rel=1e-5) for r in train)
    assert summary["val_loss_after"] < summary["val_loss_before"], summary  # the loss on the subject fell
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder_2.") for k in keys)
    assert not any(k.startswith("text_encoder.") for k in keys)  # CLIP-L did not train
    with safe_open(str(out / "lora_kohya.safetensors"), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
        assert {k.split("_")[1] for k in f.keys()} == {"unet", "te2"}

    pipe = stock(sdxl_dir)
    before = sample(pipe)
    pipe.load_lora_weights(str(out))
    assert np.abs(sample(pipe) - before).max() > 1e-3
    kohya = stock(sdxl_dir)
    kohya.load_lora_weights(str(out / "lora_kohya.safetensors"))
    assert np.allclose(sample(kohya), sample(pipe), atol=1e-4)  # the kohya file is the same LoRA


def test_textual_inversion_writes_clip_l_and_clip_g_that_stock_sdxl_loads(sdxl_dir, subject, tmp_path):
    out, ti = tmp_path / "run", ["placeholder_token=<my-toy>", "initializer_token=toy", "num_vectors=2"]
    ti_args = ["method=textual_inversion", *(f"textual_inversion.{a}" for a in ti), f"data.instance_dir={subject}"]
    summary = run(out, sdxl_dir, *ti_args, "train.max_steps=6", "train.batch_size=2", "optim.lr=5e-2")
    assert summary["trained_parameters"] == 2 * (32 + 32)  # two vectors in each tiny encoder
    assert summary["val_loss_after"] < summary["val_loss_before"], summary
    state = load_file(str(out / "learned_embeds.safetensors"))
    assert sorted(state) == ["clip_g", "clip_l"] and state["clip_l"].shape == state["clip_g"].shape == (2, 32)

    def with_embeddings(clip_l, clip_g):  # diffusers' documented SDXL textual-inversion load, both encoders
        pipe = stock(sdxl_dir)
        pipe.load_textual_inversion(clip_l, token="<my-toy>", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(
            clip_g, token="<my-toy>", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
        )
        return pipe

    trained = with_embeddings(state["clip_l"], state["clip_g"])
    base = stock(sdxl_dir)
    toy = [base.tokenizer.convert_tokens_to_ids("toy</w>"), base.tokenizer_2.convert_tokens_to_ids("toy</w>")]
    start = with_embeddings(  # the same token at its initializer's embedding: what the run started from
        base.text_encoder.get_input_embeddings().weight[[toy[0]] * 2].detach(),
        base.text_encoder_2.get_input_embeddings().weight[[toy[1]] * 2].detach(),
    )
    prompt = "a photo of a <my-toy>"
    assert np.abs(sample(trained, prompt) - sample(start, prompt)).max() > 1e-3  # training changed the output


def test_full_dreambooth_writes_a_stock_sdxl_pipeline(sdxl_dir, subject, tmp_path):
    out = tmp_path / "run"
    summary = run(
        out,
        sdxl_dir,
        "method=full",
        *dreambooth(subject, tmp_path / "class"),
        "train.max_steps=6",
        "train.batch_size=1",
        "optim.lr=1e-3",
    )
    assert summary["val_loss_after"] < summary["val_loss_before"], summary
    pipe, base = stock(out / "pipeline"), stock(sdxl_dir)  # stock loader of the saved pipeline
    moved = lambda a, b: any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # noqa: E731
    assert moved(pipe.unet, base.unet)
    assert not moved(pipe.text_encoder, base.text_encoder) and not moved(pipe.text_encoder_2, base.text_encoder_2)
    assert np.abs(sample(pipe) - sample(base)).max() > 1e-3


def test_lora_on_a_captioned_folder_with_aspect_buckets(sdxl_dir, tmp_path):
    folder = tmp_path / "caps"
    folder.mkdir()
    for i, (w, h) in enumerate([(64, 32), (64, 32), (32, 64), (32, 64), (40, 40), (40, 40)]):
        Image.new("RGB", (w, h), (40 * i, 90, 200 - 30 * i)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text("a red square" if i % 2 else "a blue square")
    out = tmp_path / "run"
    summary = run(
        out,
        sdxl_dir,
        f"data.caption_dir={folder}",
        "data.aspect_buckets=true",
        "model.resolution=64",  # buckets step by 16 px on the tiny model (8 latent pixels): 64 px has three
        "train.max_steps=6",
        "train.batch_size=2",
        "optim.lr=5e-3",
        "text_encoder.train=true",  # LoRA on both encoders (the default xl_encoders)
    )
    assert summary["image_sizes"] == [[48, 80], [64, 64], [80, 48]]
    assert summary["val_loss_after"] < summary["val_loss_before"], summary
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = stock(sdxl_dir)
    before = sample(pipe, "a red square")
    pipe.load_lora_weights(str(out))
    assert np.abs(sample(pipe, "a red square") - before).max() > 1e-3


def test_a_hub_id_loads_sdxl_through_from_pretrained_offline(sdxl_dir, tmp_path, monkeypatch):
    """The hub-id path is the real from_pretrained one: the tiny SDXL laid out as a hub cache snapshot, offline."""
    import shutil

    import huggingface_hub.constants

    from finetune.errors import UserError
    from finetune.models.sd import SDModelConfig, load_sd_components

    repo, commit = tmp_path / "models--tiny-org--tiny-sdxl", "0" * 40
    shutil.copytree(sdxl_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    parts = load_sd_components(SDModelConfig(pretrained="tiny-org/tiny-sdxl", resolution=RES))
    base = stock(sdxl_dir)
    assert parts.is_xl and parts.pipeline_cls is StableDiffusionXLPipeline
    for got, want in ((parts.text_encoder_2, base.text_encoder_2), (parts.unet, base.unet)):
        assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values()))
    with pytest.raises(UserError, match="is an SDXL model but model.family=sd; set model.family=sdxl"):
        load_sd_components(SDModelConfig(pretrained="tiny-org/tiny-sdxl", family="sd"))


def openclip_to_ldm(state: dict, prefix: str = "conditioner.embedders.1.model.") -> dict:
    """CLIPTextModelWithProjection names -> SDXL's OpenCLIP (CLIP-G) layout, by inverting diffusers' own map of it
    (q/k/v fused into in_proj, text_projection transposed)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    layers, renames = (
        DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"],
        DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"],
    )
    renames = {new: old for new, old in renames.items() if not new.startswith("transformer.")}

    def rename(key: str) -> str:
        for new, old in renames.items():
            key = key.replace(new, old)
        return prefix + "transformer." + key

    out, fused = {}, {}
    for key, value in state.items():
        if key in layers:
            out[prefix + layers[key]] = value.T if key == "text_projection.weight" else value
        elif m := re.fullmatch(r"(.+\.self_attn)\.(q|k|v)_proj\.(weight|bias)", key):
            fused.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[rename(key)] = value
    for (module, kind), qkv in fused.items():
        out[rename(module) + f".in_proj_{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def test_an_sdxl_single_file_loads_the_same_weights_and_trains(tmp_path):
    """One SGM-layout .safetensors (what A1111 / ComfyUI / civitai ship) through diffusers' from_single_file, offline
    with model.single_file_config; CLIP-G 48 wide, since diffusers tells SDXL's two encoders apart by width."""
    from finetune.models.sd import SDModelConfig, load_sd_components
    from tests.models.test_sd_single_file import unet_to_ldm, vae_to_ldm

    pipe = build_tiny_sdxl(seed=0, sample_size=RES // 2, width_2=48)
    pipe.save_pretrained(tmp_path / "configs", safe_serialization=True)
    unet = dict(pipe.unet.state_dict())
    added = {k: unet.pop(k) for k in list(unet) if k.startswith("add_embedding.")}  # SGM's label_emb.0.{0,2}
    state = unet_to_ldm(unet, pipe.unet.config.layers_per_block)
    sgm = {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}  # SGM's Sequential(Linear, SiLU, Linear)
    state |= {f"model.diffusion_model.{sgm[k.split('.')[1]]}.{k.rsplit('.', 1)[1]}": v for k, v in added.items()}
    state |= vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))
    clip_l = pipe.text_encoder.state_dict().items()
    state |= {"conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model."): v for k, v in clip_l}
    state |= openclip_to_ldm(pipe.text_encoder_2.state_dict())
    file = tmp_path / "tiny-sdxl.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))

    cfg = SDModelConfig(pretrained=str(file), single_file_config=str(tmp_path / "configs"), resolution=RES)
    parts = load_sd_components(cfg)
    assert parts.is_xl
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        got, want = getattr(parts, name).state_dict(), getattr(pipe, name).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), name
    out = tmp_path / "run"
    args = [f"model.single_file_config={tmp_path / 'configs'}", f"data.instance_dir={write_images(tmp_path / 'i', 2)}"]
    run(out, file, *args, f"data.instance_prompt={PROMPT}", "train.max_steps=2", "train.batch_size=1")
    assert (out / "pytorch_lora_weights.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# Conditioning: caching, time ids
# ---------------------------------------------------------------------------------------------


def test_cached_and_uncached_conditioning_give_the_same_losses(sdxl_dir, subject, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # fp32: the two paths must agree to rounding
    common = [f"data.instance_dir={subject}", f"data.instance_prompt={PROMPT}", "train.max_steps=4"]
    common += ["train.batch_size=2", "optim.lr=5e-3"]
    run(tmp_path / "cached", sdxl_dir, *common)
    run(tmp_path / "live", sdxl_dir, *common, "efficiency.cache_latents=false", "efficiency.cache_text=false")
    losses = [[r["loss"] for r in read_metrics(tmp_path / d) if r["split"] == "train"] for d in ("cached", "live")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)


def test_the_pipeline_encodes_prompts_as_the_recipe_conditions_on_them(sdxl_dir):
    """encode_xl (what the recipe caches and trains with) is StableDiffusionXLPipeline.encode_prompt's output."""
    pipe = stock(sdxl_dir)
    ids = [tokenize_prompts(t, [PROMPT]) for t in (pipe.tokenizer, pipe.tokenizer_2)]
    with torch.no_grad():
        embeds, pooled = encode_xl([pipe.text_encoder, pipe.text_encoder_2], ids)
        ref, _, ref_pooled, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    assert torch.allclose(embeds, ref) and torch.allclose(pooled, ref_pooled)


def test_time_ids_are_the_resize_and_crop_each_image_got(tmp_path):
    folder = tmp_path / "caps"
    folder.mkdir()
    sizes = [(100, 50), (30, 90), (48, 48)]  # (w, h): wide, tall, square
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    # square centre crops: original (h, w), the centre's offset in the image resized to cover 32x32, target 32x32
    center = CaptionedImageFolder(folder, 32, center_crop=True)
    assert [center[i]["time_ids"].tolist() for i in range(3)] == [
        [50, 100, 0, 16, 32, 32],  # resized to 64x32: 16 px cut on each side
        [90, 30, 32, 0, 32, 32],  # resized to 32x96
        [48, 48, 0, 0, 32, 32],
    ]
    # aspect buckets: the target is the bucket's (h, w)
    buckets = CaptionedImageFolder(folder, 32, bucket_multiple=8)
    for i in range(3):
        h, w = buckets[i]["pixel_values"].shape[1:]
        assert buckets[i]["time_ids"][4:].tolist() == [h, w] and buckets[i]["time_ids"][:2].tolist() == list(
            sizes[i][::-1]
        )
    # random crops and flips: the ids locate the training pixels in the resized (and mirrored) image
    flips = set()
    for epoch in range(6):
        rand = CaptionedImageFolder(folder, 32, center_crop=False, random_flip=True, seed=3)
        rand.set_epoch(epoch)
        item = rand[0]
        orig_h, orig_w, top, left, th, tw = (int(v) for v in item["time_ids"])
        resized = Image.open(folder / "im0.png").resize((64, 32), Image.Resampling.LANCZOS)
        for mirrored in (False, True):
            picture = ImageOps.mirror(resized) if mirrored else resized
            if torch.equal(image_to_tensor(picture.crop((left, top, left + tw, top + th))), item["pixel_values"]):
                flips.add(mirrored)
                break
        else:
            pytest.fail(f"epoch {epoch}: time ids {item['time_ids'].tolist()} do not locate the training crop")
    assert flips == {False, True}  # both cases were checked
    # DreamBooth class images carry their own ids
    inst = DreamBoothDataset(folder, PROMPT, 32, class_dir=folder, class_prompt="a photo")
    assert inst[1]["class_time_ids"].tolist() == [90, 30, 32, 0, 32, 32]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing written
# ---------------------------------------------------------------------------------------------


def refusal(argv: list[str], capsys) -> str:
    """The recipe's answer to a user mistake: exit status 2 and ONE stderr line "error: ..." (returned)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert (stopped.value.code, len(lines)) == (2, 1) and lines[0].startswith("error: "), lines
    return lines[0]


def single_file(path: Path, sdxl: bool) -> Path:
    """A checkpoint whose tensor names are SDXL's (second text encoder, label_emb) or SD1.x's (cond_stage_model)."""
    keys = (
        ["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.label_emb.0.0.weight"]
        if sdxl
        else ["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    )
    save_file({k: torch.zeros(2) for k in keys} | {"model.diffusion_model.out.0.weight": torch.zeros(2)}, str(path))
    return path


@pytest.fixture(scope="module")
def sdxl_dir_with_g_word(tmp_path_factory) -> Path:
    """A tiny SDXL whose second tokenizer alone knows the word "<only-g>"."""
    pipe = build_tiny_sdxl(seed=0, sample_size=RES // 2)
    pipe.tokenizer_2.add_tokens(["<only-g>"])
    pipe.text_encoder_2.resize_token_embeddings(len(pipe.tokenizer_2))
    folder = tmp_path_factory.mktemp("tiny_sdxl_g_word")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("sdxl_file_as_sd", "model.family=sdxl"),
        ("sd_file_as_sdxl", "model.family=sd"),
        ("sdxl_file_sd_configs", "model.single_file_config"),
        ("sdxl_dir_as_sd", "model.family=sdxl"),
        ("token_in_tokenizer", "already exists in tokenizer"),
        ("token_in_tokenizer_2", "already exists in tokenizer_2"),
        ("resolution", "resolution=36"),
        ("hypernetwork", "method=hypernetwork is for SD1.x/2.x"),
    ],
)
def test_bad_sdxl_input_stops_with_one_line_and_writes_nothing(
    case, message, sdxl_dir, sdxl_dir_with_g_word, subject, tmp_path, capsys
):
    model = f"model.pretrained={sdxl_dir}"
    args = [f"data.instance_dir={subject}", f"data.instance_prompt={PROMPT}"]
    if case == "sdxl_file_as_sd":
        args += [f"model.pretrained={single_file(tmp_path / 'xl.safetensors', True)}", "model.family=sd"]
    elif case == "sd_file_as_sdxl":
        args += [f"model.pretrained={single_file(tmp_path / 'sd.safetensors', False)}", "model.family=sdxl"]
    elif case == "sdxl_file_sd_configs":
        sd_configs = tmp_path / "sd_configs"
        (sd_configs / "unet").mkdir(parents=True)
        args += [f"model.pretrained={single_file(tmp_path / 'xl.safetensors', True)}"]
        args += [f"model.single_file_config={sd_configs}"]
    elif case == "sdxl_dir_as_sd":
        args += [model, "model.family=sd"]
    elif case == "token_in_tokenizer":
        args += [model, "method=textual_inversion", "textual_inversion.placeholder_token=sks"]
    elif case == "token_in_tokenizer_2":
        args += [f"model.pretrained={sdxl_dir_with_g_word}", "method=textual_inversion"]
        args += ["textual_inversion.placeholder_token=<only-g>", "textual_inversion.initializer_token=toy"]
    elif case == "resolution":
        args += [model, "model.resolution=36"]
    elif case == "hypernetwork":
        args = [model, f"data.caption_dir={subject}", "method=hypernetwork"]
    out = tmp_path / "run"
    assert message in refusal([*BASE, f"train.output_dir={out}", *args], capsys)
    assert not out.exists()
