"""Hypernetworks (the web UI's design): layer layout, where they apply, training, and both saved files reload."""

import json

import pytest
import torch
from safetensors import safe_open

from finetune.errors import UserError
from finetune.methods.hypernetwork import (
    SAFETENSORS_FILE,
    WEBUI_FILE,
    HypernetworkConfig,
    HypernetworkModule,
    add_hypernetwork,
    context_widths,
    load_hypernetwork,
    save_hypernetwork,
)
from finetune.models.sd import build_pipeline, build_tiny_sd, encode_tokens

PROMPT = "a photo of sks dog"
WEBUI_HEADER = {
    "step",
    "name",
    "layer_structure",
    "activation_func",
    "is_layer_norm",
    "weight_initialization",
    "use_dropout",
    "sd_checkpoint",
    "sd_checkpoint_name",
    "activate_output",
    "last_layer_dropout",
}


def test_module_layers_and_state_keys_are_the_web_uis():
    cfg = HypernetworkConfig(layer_structure=[1, 2, 1], activation="relu", layer_norm=True, dropout=True)
    module = HypernetworkModule(8, cfg)
    layout = [
        (type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None)) for m in module.linear
    ]
    # the web UI: Linear, activation (not after the last), LayerNorm after each, dropout after the hidden layer
    assert layout == [
        ("Linear", 8, 16),
        ("ReLU", None, None),
        ("LayerNorm", None, None),
        ("Dropout", None, None),
        ("Linear", 16, 8),
        ("LayerNorm", None, None),
    ]
    assert set(module.state_dict()) == {f"linear.{i}.{p}" for i in (0, 2, 4, 5) for p in ("weight", "bias")}
    plain = HypernetworkModule(8, HypernetworkConfig()).eval()
    assert [type(m).__name__ for m in plain.linear] == ["Linear", "Linear"]
    x = torch.randn(2, 3, 8)
    assert 0 < (plain(x) - x).abs().max() < 0.01  # "Normal" init (std 0.01): a residual close to identity


def test_a_pair_per_context_width_on_keys_and_values_only():
    unet = build_tiny_sd(seed=0).unet.requires_grad_(False)
    params = add_hypernetwork(unet, HypernetworkConfig(weight_init="XavierNormal"))  # far from identity
    network = unet.hypernetwork
    assert network.sizes == context_widths(unet) == [32, 64]  # block widths (self attention) and the text's (cross)
    assert {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in params}
    attn1, attn2 = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1, None
    attn2 = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    seen = {}
    for name, layer in [("q1", attn1.to_q), ("k1", attn1.to_k), ("v1", attn1.to_v), ("k2", attn2.to_k)]:
        layer.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0]))
    cond = torch.randn(1, 77, 32)
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), cond)
        key_1, value_1 = network.pair(32)
        assert torch.equal(seen["k1"], key_1(seen["q1"])) and torch.equal(seen["v1"], value_1(seen["q1"]))
        assert torch.equal(seen["k2"], key_1(cond))  # cross attention: the text context, by its width
    assert not torch.equal(seen["k1"], seen["q1"])  # the query's input is untouched


def test_sizes_pick_the_widths_and_an_unknown_width_is_refused():
    unet = build_tiny_sd(seed=0).unet.requires_grad_(False)
    add_hypernetwork(unet, HypernetworkConfig(sizes=[32]))
    assert unet.hypernetwork.sizes == [32]
    with pytest.raises(UserError, match=r"sizes \[48\] match no attention context.*\[32, 64\]"):
        add_hypernetwork(build_tiny_sd(seed=0).unet, HypernetworkConfig(sizes=[48]))
    with pytest.raises(UserError, match="start and end with 1"):
        add_hypernetwork(unet, HypernetworkConfig(layer_structure=[2, 1]))


def fixed_batch(parts):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.tensor([100, 700])
    with torch.no_grad():
        cond = encode_tokens(parts.text_encoder, parts.tokenizer, [PROMPT, PROMPT], "cpu")
    return parts.noise_scheduler.add_noise(latents, noise, timesteps), noise, timesteps, cond


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A hypernetwork trained 30 steps on a fixed batch of the tiny SD (base frozen), saved; (parts, losses, dir)."""
    parts = build_tiny_sd(seed=0)
    for module in (parts.vae, parts.text_encoder, parts.unet):
        module.requires_grad_(False)
    params = add_hypernetwork(parts.unet, HypernetworkConfig(activation="relu", layer_norm=True))
    base = {k: v.clone() for k, v in parts.unet.state_dict().items() if not k.startswith("hypernetwork.")}
    noisy, noise, timesteps, cond = fixed_batch(parts)
    optimizer, losses = torch.optim.AdamW(params, lr=1e-2), []
    parts.unet.train()
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(parts.unet(noisy, timesteps, cond).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    parts.unet.eval()
    frozen = {k: v for k, v in parts.unet.state_dict().items() if not k.startswith("hypernetwork.")}
    assert all(torch.equal(frozen[k], base[k]) for k in base)  # the base model stayed frozen
    out = tmp_path_factory.mktemp("hypernetwork")
    paths = save_hypernetwork(out, parts.unet.hypernetwork, step=30)
    assert [p.name for p in paths] == [SAFETENSORS_FILE, WEBUI_FILE]
    return parts, losses, out


def test_training_moves_the_loss(trained):
    _, losses, _ = trained
    assert losses[-1] < 0.9 * losses[0], losses  # 1.20 -> 1.04 when measured


def test_the_safetensors_reloads_into_a_pipeline_and_samples_as_trained(trained):
    parts, _, out = trained
    noisy, _, timesteps, cond = fixed_batch(parts)
    fresh = build_tiny_sd(seed=0)
    with torch.no_grad():
        expected, base = parts.unet(noisy, timesteps, cond).sample, fresh.unet(noisy, timesteps, cond).sample
    pipe = build_pipeline(fresh)
    reference = pipe(PROMPT, num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").images
    network = load_hypernetwork(out / SAFETENSORS_FILE, pipe.unet)
    with torch.no_grad():
        got = pipe.unet(noisy, timesteps, cond).sample
    torch.testing.assert_close(got, expected)  # the trained model, exactly
    assert not torch.allclose(base, expected, atol=1e-3)
    sampled = pipe(PROMPT, num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").images
    assert not torch.allclose(sampled, reference, atol=1e-4)  # sampling goes through it
    network.set_multiplier(0.0)  # the web UI's strength: 0 is the base model
    zero = pipe(PROMPT, num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").images
    torch.testing.assert_close(zero, reference)
    with safe_open(str(out / SAFETENSORS_FILE), framework="pt") as f:
        meta = json.loads(f.metadata()["hypernetwork"])
    assert meta["layer_structure"] == [1.0, 2.0, 1.0] and meta["activation_func"] == "relu" and meta["is_layer_norm"]


def test_loading_again_replaces_the_hypernetwork_instead_of_stacking_it(trained):
    parts, _, out = trained
    noisy, _, timesteps, cond = fixed_batch(parts)
    with torch.no_grad():
        expected = parts.unet(noisy, timesteps, cond).sample
    unet = build_tiny_sd(seed=0).unet
    first = load_hypernetwork(out / SAFETENSORS_FILE, unet)
    second = load_hypernetwork(out / SAFETENSORS_FILE, unet)  # e.g. a user switching files on one pipeline
    assert unet.hypernetwork is second and first._handles == []
    with torch.no_grad():
        torch.testing.assert_close(unet(noisy, timesteps, cond).sample, expected)  # applied once, not twice
    with pytest.raises(UserError, match=r"widths \[32, 64\] match no attention"):
        load_hypernetwork(out / SAFETENSORS_FILE, build_tiny_sd(seed=0).text_encoder)


def test_the_web_ui_pt_reads_with_weights_only_and_has_its_keys(trained):
    parts, _, out = trained
    saved = torch.load(out / WEBUI_FILE, weights_only=True)  # plain tensors and built-in types only
    sizes = {k for k in saved if isinstance(k, int)}
    assert sizes == {32, 64} and set(saved) - sizes == WEBUI_HEADER
    assert saved["step"] == 30 and saved["layer_structure"] == [1.0, 2.0, 1.0] and saved["activation_func"] == "relu"
    assert saved["is_layer_norm"] is True and saved["use_dropout"] is False and saved["name"] == "hypernetwork"
    for size in sizes:
        assert isinstance(saved[size], tuple) and len(saved[size]) == 2  # (key module, value module)
        for state, module in zip(saved[size], parts.unet.hypernetwork.pair(size)):
            assert type(state) is dict and state.keys() == module.state_dict().keys()
            assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


def test_a_pickle_is_never_read(tmp_path):
    fake = tmp_path / SAFETENSORS_FILE
    fake.write_bytes(b"\x80\x04K\x01.")  # a pickle of 1
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_hypernetwork(fake)


def test_the_registry_entry_trains_and_saves_exactly_the_hypernetwork(tmp_path):
    from safetensors.torch import load_file

    from finetune.methods.sd_registry import SD_METHODS
    from recipes.train_sd import check_combination as check_sd_combination
    from tests.methods.test_registry import sd_config

    cfg, method, parts = sd_config("method=hypernetwork"), SD_METHODS["hypernetwork"], build_tiny_sd(seed=0)
    check_sd_combination(cfg)
    with pytest.raises(UserError, match="unset text_encoder.train"):
        check_sd_combination(sd_config("method=hypernetwork", "text_encoder.train=true"))
    for module in (parts.vae, parts.text_encoder, parts.unet):
        module.requires_grad_(False)
    unet_params, te_params = method.trainable(parts.unet, parts.text_encoder, cfg)
    trains = {id(p) for m in (parts.vae, parts.text_encoder, parts.unet) for p in m.parameters() if p.requires_grad}
    assert te_params == [] and trains == {id(p) for p in unet_params} == {
        id(p) for p in parts.unet.hypernetwork.parameters()
    }
    with torch.no_grad():
        for p in unet_params:
            p.add_(0.01 * torch.randn_like(p))
    paths = method.save(tmp_path, parts, cfg, torch.float32)
    assert [p.name for p in paths] == [SAFETENSORS_FILE, WEBUI_FILE]
    saved = load_file(paths[0])
    state = parts.unet.hypernetwork.state_dict()
    assert saved.keys() == {k.removeprefix("layers.") for k in state}
    assert all(torch.equal(saved[k.removeprefix("layers.")], v) for k, v in state.items())


def test_the_digits_config_teaches_the_subject_and_strength_zero_is_the_base(tmp_path):
    """The shipped config, trained briefly from the digits SD and loaded the way a user loads it, makes the identifier
    prompt draw the subject the base never draws (the metric the method exists for); strength 0 gives the base back."""
    from recipes.train_sd import main
    from scripts.build_digits_sd import generate, load_digits_sd
    from scripts.make_subject import INSTANCE_PROMPT, load_subject_detector

    quiet = ["train.progress_bar=false", "train.tensorboard=false", "validation.grids=false"]
    config = "recipes/configs/digits_hypernetwork.yaml"
    main(["--config", config, f"train.output_dir={tmp_path}", "train.max_steps=100", *quiet])
    detector, prompts = load_subject_detector(), [INSTANCE_PROMPT] * 40
    base_images = generate(load_digits_sd(), prompts, seed=500)
    tuned = load_digits_sd()
    network = load_hypernetwork(tmp_path / SAFETENSORS_FILE, tuned.unet)
    before, after = detector.rate(base_images), detector.rate(generate(tuned, prompts, seed=500))
    assert before <= 0.15 and after >= 0.5, (before, after)
    network.set_multiplier(0.0)
    torch.testing.assert_close(generate(tuned, prompts[:8], seed=500), base_images[:8])
