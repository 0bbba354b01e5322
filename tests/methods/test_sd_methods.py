"""Stable Diffusion methods on the tiny SD: which parameters train, what is saved, and that stock diffusers loads it."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from finetune.data.sd import (
    PromptEmbeddings,
    SDDataConfig,
    build_image_dataset,
    cache_latents,
    dataset_items,
    make_collate,
)
from finetune.errors import UserError
from finetune.export.kohya import load_kohya
from finetune.export.sd import KOHYA_FILE, LORA_FILE, image_grid, save_sd_lora, save_textual_inversion
from finetune.methods.dreambooth import (
    PriorConfig,
    class_image_prompts,
    count_class_images,
    ensure_class_images,
    validate_prior,
)
from finetune.methods.sd_lora import SDLoraConfig, add_lora, lora_layers
from finetune.methods.textual_inversion import (
    RowRestorer,
    TextualInversionConfig,
    add_placeholder_tokens,
    learned_embeddings,
    placeholder_tokens,
    template_prompt,
    train_only_embeddings,
)
from finetune.models.sd import build_pipeline, build_tiny_sd, encode_tokens, tokenize_prompts
from finetune.train.ema import EMAConfig, build_ema, ema_weights

PROMPT = "a photo of sks dog"


@pytest.fixture
def parts():
    return build_tiny_sd(sample_size=16)  # 32 px images


def write_images(folder, n, size=40, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i}.png")
    return folder


def sample(pipe, prompt=PROMPT, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, height=32, width=32, generator=g, output_type="np").images


def trained_lora(parts, rank=4, alpha=8.0, text_encoder=False):
    cfg = SDLoraConfig(rank=rank, alpha=alpha)
    params = add_lora(parts.unet, cfg, cfg.target_modules, "UNet")
    if text_encoder:
        params += add_lora(parts.text_encoder, cfg, cfg.text_encoder_target_modules, "text encoder")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn_like(p))  # stands in for training: B is no longer zero
    return cfg, params


# ------------------------------------------------------------------------------------------------
# LoRA


def test_lora_trains_only_adapter_weights_and_starts_as_a_no_op(parts):
    base = {n: p.detach().clone() for n, p in parts.unet.named_parameters()}
    cfg = SDLoraConfig(rank=4, alpha=8.0)
    params = add_lora(parts.unet, cfg, cfg.target_modules, "UNet")
    trainable = {n for n, p in parts.unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {id(p) for p in params} == {id(p) for p in parts.unet.parameters() if p.requires_grad}
    assert len(trainable) == 2 * sum(
        1 for n, _ in parts.unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    )
    # B starts at zero: the adapted UNet computes exactly what the base did.
    x, t, c = torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 77, 32)
    fresh = build_tiny_sd(sample_size=16).unet
    torch.testing.assert_close(parts.unet(x, t, c).sample, fresh(x, t, c).sample)
    assert all(
        torch.equal(p, base[n.replace(".base_layer", "")]) for n, p in parts.unet.named_parameters() if "lora_" not in n
    )
    state, config = lora_layers(parts.unet)
    assert config["lora_alpha"] == 8.0 and config["r"] == 4
    assert len(state) == len(trainable) and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state)


def test_lora_unknown_target_module_is_a_user_error(parts):
    cfg = SDLoraConfig(target_modules=["q_proj"])
    with pytest.raises(
        UserError, match=r"UNet LoRA target modules \['q_proj'\] not found in the UNet; choose from .*'to_q'"
    ):
        add_lora(parts.unet, cfg, cfg.target_modules, "UNet")
    with pytest.raises(UserError, match=r"text encoder LoRA target modules \['to_q'\] not found .*'q_proj'"):
        add_lora(parts.text_encoder, cfg, ["to_q"], "text encoder")


def test_saved_lora_loads_in_stock_diffusers_changes_output_and_keeps_alpha(parts, tmp_path):
    cfg, _ = trained_lora(parts, rank=4, alpha=8.0, text_encoder=True)
    (u, uc), (t, tc) = lora_layers(parts.unet), lora_layers(parts.text_encoder)
    paths = save_sd_lora(tmp_path, u, uc, t, tc, {"unet": parts.unet, "text_encoder": parts.text_encoder}, kohya=True)
    assert [p.name for p in paths] == [LORA_FILE, KOHYA_FILE]
    with safe_open(str(tmp_path / LORA_FILE), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(k.startswith(("unet.", "text_encoder.")) for k in keys)
    assert '"unet.lora_alpha": 8.0' in meta["lora_adapter_metadata"]

    base = build_tiny_sd(sample_size=16)
    pipe = build_pipeline(base)
    before = sample(pipe)
    pipe.load_lora_weights(str(tmp_path))  # the stock loader, from the directory
    after = sample(pipe)
    assert np.abs(after - before).max() > 1e-3, "the loaded LoRA must change the images"
    # The loaded adapter reproduces our adapted UNet exactly: alpha (scale alpha/r = 2) survived the round trip.
    x, ts, c = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32)
    torch.testing.assert_close(pipe.unet(x, ts, c).sample, parts.unet(x, ts, c).sample, rtol=1e-4, atol=1e-5)

    # kohya file: lora_unet_ / lora_te_ keys with .alpha; converting back gives the same tensors.
    with safe_open(str(tmp_path / KOHYA_FILE), "pt") as f:
        kkeys, kmeta = list(f.keys()), f.metadata()
    assert any(k.startswith("lora_unet_") and k.endswith(".alpha") for k in kkeys)
    assert any(k.startswith("lora_te_") for k in kkeys) and kmeta["ss_network_alpha"] == "8.0"
    back, alpha = load_kohya(tmp_path / KOHYA_FILE, {"unet": parts.unet, "text_encoder": parts.text_encoder})
    ours = {f"unet.{k}": v for k, v in u.items()} | {f"text_encoder.{k}": v for k, v in t.items()}
    assert alpha == 8.0 and back.keys() == ours.keys()
    for k in ours:
        torch.testing.assert_close(back[k], ours[k])


def test_an_untrained_lora_is_refused(parts, tmp_path):
    cfg = SDLoraConfig()
    add_lora(parts.unet, cfg, cfg.target_modules, "UNet")
    u, uc = lora_layers(parts.unet)
    with pytest.raises(UserError, match="zero"):
        save_sd_lora(tmp_path, u, uc, components={"unet": parts.unet})
    assert not (tmp_path / LORA_FILE).exists()


# ------------------------------------------------------------------------------------------------
# Textual inversion


def test_placeholder_tokens_start_from_the_initializer(parts):
    cfg = TextualInversionConfig(placeholder_token="<cat-toy>", initializer_token="toy", num_vectors=3)
    n = len(parts.tokenizer)
    ids = add_placeholder_tokens(parts.tokenizer, parts.text_encoder, cfg)
    assert ids == list(range(n, n + 3)) and placeholder_tokens(cfg) == ["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2"]
    weight = parts.text_encoder.get_input_embeddings().weight
    init = parts.tokenizer("toy", add_special_tokens=False).input_ids[0]
    for i in ids:
        torch.testing.assert_close(weight[i], weight[init])
    assert parts.tokenizer("a <cat-toy> <cat-toy>_1", add_special_tokens=False).input_ids[-2:] == ids[:2]


@pytest.mark.parametrize("token", ["sks", "dog"])
def test_placeholder_that_already_exists_is_a_user_error(parts, token):
    with pytest.raises(UserError, match="already exists"):
        add_placeholder_tokens(parts.tokenizer, parts.text_encoder, TextualInversionConfig(placeholder_token=token))


def test_multi_token_initializer_is_a_user_error(parts):
    with pytest.raises(UserError, match="single token"):
        add_placeholder_tokens(parts.tokenizer, parts.text_encoder, TextualInversionConfig(initializer_token="xqzvbw"))


def test_own_templates_replace_the_template_set_and_need_one_slot(parts):
    cfg = TextualInversionConfig(
        placeholder_token="<tok>",
        initializer_token="toy",
        num_vectors=2,
        templates=["a drawing of a {}", "a {} on a table"],
    )
    rng = random.Random(0)
    prompts = {template_prompt(cfg, rng) for _ in range(50)}
    assert prompts == {"a drawing of a <tok> <tok>_1", "a <tok> <tok>_1 on a table"}
    assert template_prompt(TextualInversionConfig(placeholder_token="<tok>"), rng).count("<tok>") == 1  # default set
    with pytest.raises(UserError, match="exactly one"):
        add_placeholder_tokens(parts.tokenizer, parts.text_encoder, TextualInversionConfig(templates=["a drawing"]))


def test_only_the_new_embedding_rows_change_and_stock_loader_reads_them(parts, tmp_path):
    cfg = TextualInversionConfig(placeholder_token="<tok>", initializer_token="toy", num_vectors=2)
    ids = add_placeholder_tokens(parts.tokenizer, parts.text_encoder, cfg)
    weight = train_only_embeddings(parts.text_encoder)
    assert [p for p in parts.text_encoder.parameters() if p.requires_grad] == [
        parts.text_encoder.get_input_embeddings().weight
    ]
    before = weight.detach().clone()
    restorer = RowRestorer(weight, ids)
    opt = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.1)  # decay alone would move every row
    batch = tokenize_prompts(parts.tokenizer, ["a photo of <tok> <tok>_1"])
    for _ in range(3):
        parts.text_encoder(batch)[0].pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        restorer()
    keep = torch.ones(len(before), dtype=torch.bool)
    keep[ids] = False
    assert torch.equal(weight[keep], before[keep]), "rows other than the new tokens must not change"
    assert not torch.allclose(weight[ids], before[ids])

    path = save_textual_inversion(
        tmp_path / "learned_embeds.safetensors", "<tok>", learned_embeddings(parts.text_encoder, ids)
    )
    pipe = build_pipeline(build_tiny_sd(sample_size=16))
    without = encode_tokens(pipe.text_encoder, pipe.tokenizer, ["a photo of toy toy"], "cpu")
    pipe.load_textual_inversion(str(path))  # stock loader; adds <tok> and <tok>_1
    prompt = pipe.maybe_convert_prompt("a photo of <tok>", pipe.tokenizer)
    assert prompt == "a photo of <tok> <tok>_1"
    with_token = encode_tokens(pipe.text_encoder, pipe.tokenizer, [prompt], "cpu")
    assert (with_token - without).abs().max() > 1e-3, "the learned token must change the text embedding"
    loaded = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(["<tok>", "<tok>_1"])]
    torch.testing.assert_close(loaded, weight[ids].detach())


# ------------------------------------------------------------------------------------------------
# DreamBooth class images, caching, EMA


def test_class_images_are_generated_once_and_topped_up(parts, tmp_path):
    pipe = build_pipeline(parts)
    cfg = PriorConfig(
        enabled=True,
        class_dir=str(tmp_path / "class"),
        class_prompt="a photo of a dog",
        num_class_images=3,
        sample_steps=2,
        sample_batch_size=2,
    )
    assert ensure_class_images(pipe, cfg, 32, seed=0) == 3
    assert count_class_images(cfg.class_dir) == 3
    first = sorted(p.name for p in (tmp_path / "class").iterdir())
    assert ensure_class_images(pipe, cfg, 32, seed=0) == 0  # reused, not regenerated
    cfg.num_class_images = 4
    assert ensure_class_images(pipe, cfg, 32, seed=0) == 1
    names = sorted(p.name for p in (tmp_path / "class").iterdir())
    assert set(first) < set(names) and not any(n.startswith(".") for n in names)
    assert Image.open(tmp_path / "class" / names[0]).size == (32, 32)


def test_several_class_prompts_get_their_own_cached_images_and_train_with_their_prompt(parts, tmp_path, caplog):
    pipe = build_pipeline(parts)
    prompts = ["a photo of a dog", "a photo of a cat"]
    cfg = PriorConfig(
        enabled=True,
        class_dir=str(tmp_path / "class"),
        class_prompts=prompts,
        num_class_images=2,
        sample_steps=2,
        sample_batch_size=3,
    )
    assert ensure_class_images(pipe, cfg, 32, seed=0) == 4  # num_class_images PER prompt
    pairs = class_image_prompts(cfg)
    assert [p for _, p in pairs] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert len({path for path, _ in pairs}) == 4
    dog, cat = [np.asarray(Image.open(path)) for path, _ in pairs[:3:2]]
    assert not np.array_equal(dog, cat)  # same seed, different prompt: a different image
    # cached by prompt: reordering the list or adding a prompt generates only the new prompt's images
    cfg.class_prompts = ["a photo of a bird", *reversed(prompts)]
    assert ensure_class_images(pipe, cfg, 32, seed=0) == 2
    cfg.class_prompts = ["a photo of a bird"]
    with caplog.at_level(logging.WARNING):
        assert ensure_class_images(pipe, cfg, 32, seed=0) == 0 and len(class_image_prompts(cfg)) == 2
    assert "4 image(s)" in caplog.text  # the dog and cat images are left out, and said so
    # the dataset pairs item i with class image i % n and ITS prompt; batches carry it
    cfg.class_prompts = prompts
    data = SDDataConfig(instance_dir=str(write_images(tmp_path / "inst", 1)), instance_prompt=PROMPT)
    images = build_image_dataset(data, 32, 0, class_items=class_image_prompts(cfg))
    items = dataset_items(images)
    assert len(items) == 4 and [it["class_prompt"] for it in items] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert images[3]["class_prompt"] == prompts[1]
    batch = make_collate(parts.tokenizer, embeddings=None)([images[1], images[2]])
    assert torch.equal(batch["input_ids"], tokenize_prompts(parts.tokenizer, [PROMPT, PROMPT, *prompts]))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"class_prompt": "a dog", "class_prompts": ["a cat"]}, "not both"),
        ({"class_prompts": ["a cat", " "]}, "empty prompt"),
        ({"class_prompts": ["a cat", "a cat"]}, "twice"),
        ({}, "class_prompt"),
    ],
)
def test_bad_class_prompts_are_user_errors(change, message):
    with pytest.raises(UserError, match=message):
        validate_prior(PriorConfig(enabled=True, class_dir="x", **change))


def test_cached_latents_and_embeddings_equal_the_encoders(parts, tmp_path):
    data = SDDataConfig(instance_dir=str(write_images(tmp_path / "inst", 3)), instance_prompt=PROMPT)
    images = build_image_dataset(data, 32, seed=0)
    items = dataset_items(images)
    cache_latents(parts.vae, images, items, "cpu", batch_size=2)
    with torch.no_grad():
        dist = parts.vae.encode(torch.stack([images[i]["pixel_values"] for i in range(3)])).latent_dist
    torch.testing.assert_close(torch.stack([it["latent_mean"] for it in items]), dist.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.stack([it["latent_std"] for it in items]), dist.std, rtol=1e-4, atol=1e-5)
    embeds = PromptEmbeddings(parts.text_encoder, parts.tokenizer, [PROMPT, ""], "cpu")
    with torch.no_grad():
        direct = encode_tokens(parts.text_encoder, parts.tokenizer, [PROMPT], "cpu")
    torch.testing.assert_close(embeds([PROMPT]), direct)


def test_dreambooth_batches_put_instance_examples_before_class_examples(parts, tmp_path):
    data = SDDataConfig(instance_dir=str(write_images(tmp_path / "inst", 2)), instance_prompt=PROMPT)
    images = build_image_dataset(data, 32, 0, str(write_images(tmp_path / "cls", 3, seed=1)), "a photo of a dog")
    items = dataset_items(images)
    cache_latents(parts.vae, images, items, "cpu")
    collate = make_collate(parts.tokenizer, embeddings=None)
    batch = collate([items[0], items[1]])
    assert batch["num_instance"] == 2 and batch["latent_mean"].shape == (4, 4, 16, 16)
    expected = tokenize_prompts(parts.tokenizer, [PROMPT, PROMPT, "a photo of a dog", "a photo of a dog"])
    assert torch.equal(batch["input_ids"], expected)
    torch.testing.assert_close(batch["latent_mean"][2], items[0]["class_latent_mean"])


def test_caption_dropout_empties_prompts_at_its_rate_and_replays_from_pythons_random():
    seen = []
    embeddings = lambda prompts: seen.extend(prompts) or torch.zeros(len(prompts), 1)  # noqa: E731
    items = [{"prompt": PROMPT, "latent_mean": torch.zeros(1), "latent_std": torch.ones(1)}] * 4

    def dropped(rate: float, seed: int = 0) -> list[bool]:
        seen.clear()
        random.seed(seed)  # the RNG accelerate's checkpoints restore: a resumed run drops the same prompts
        collate = make_collate(None, embeddings, caption_dropout=rate)
        for _ in range(50):
            collate(items)
        return [p == "" for p in seen]

    assert not any(dropped(0.0)) and 20 <= sum(dropped(0.2)) <= 60  # 200 prompts at rate 0.2: ~40 empty
    assert dropped(0.2) == dropped(0.2) != dropped(0.2, seed=1)
    assert set(seen) == {PROMPT, ""}


def test_orphan_caption_and_non_image_files_are_skipped_with_a_count(tmp_path, caplog):
    folder = write_images(tmp_path / "caps", 2)
    (folder / "img0.txt").write_text("a red square")
    (folder / "lonely.txt").write_text("caption without image")
    (folder / "notes.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        images = build_image_dataset(SDDataConfig(caption_dir=str(folder)), 32, seed=0)
    assert len(images) == 2 and dataset_items(images)[0]["prompt"] == "a red square"
    assert "1 caption file" in caplog.text and "1 non-image file" in caplog.text


def test_ema_follows_diffusers_decay_and_swaps_weights_in_and_back():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = build_ema([p], EMAConfig(enabled=True, decay=0.5, warmup=False))
    with torch.no_grad():
        p.fill_(1.0)
    ema.step([p])  # first step: decay 0, the shadow copies the weights
    with torch.no_grad():
        p.fill_(3.0)
    ema.step([p])  # second step: decay = min(0.5, (1 + 1) / (10 + 1))
    decay = min(0.5, 2 / 11)
    expected = torch.full((3,), decay * 1.0 + (1 - decay) * 3.0)
    torch.testing.assert_close(ema.shadow_params[0], expected)
    with ema_weights(ema, [p]):
        torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(p.detach(), torch.full((3,), 3.0))


def test_image_grid_tiles_row_by_row():
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    grid = image_grid([red, blue, blue, red], rows=2)
    assert grid.size == (8, 8) and grid.getpixel((5, 1)) == (0, 0, 255) and grid.getpixel((5, 5)) == (255, 0, 0)
