"""check_lora_state_dict: catches untrained (all-zero B) LoRAs and LoRAs for another model; passes trained ones."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from finetune.errors import UserError
from finetune.export.kohya import to_kohya
from finetune.export.lora_check import check_lora_state_dict
from finetune.models.sd import build_tiny_sd, tokenize_prompts

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_state(unet) -> dict:
    return {f"unet.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}


@pytest.fixture(scope="module")
def fresh_and_trained():
    """A freshly initialised LoRA and the same LoRA after one real denoising training step.

    The tiny unet has 7 transformer blocks x 2 attentions x 4 projections = 56 LoRA modules.
    """
    parts = build_tiny_sd(seed=0)
    parts.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS))
    fresh = lora_state(parts.unet)
    params = [p for n, p in parts.unet.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([100, 700])
    with torch.no_grad():
        hidden = parts.text_encoder(tokenize_prompts(parts.tokenizer, ["a photo of sks dog"] * 2))[0]
    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    F.mse_loss(parts.unet(noisy, timesteps, hidden).sample, noise).backward()
    optimizer.step()
    return parts, fresh, lora_state(parts.unet)


def test_untrained_lora_is_rejected(fresh_and_trained):
    parts, fresh, _ = fresh_and_trained
    with pytest.raises(UserError, match="all 56 LoRA up \\(B\\) matrices are zero"):
        check_lora_state_dict(fresh, parts)


def test_trained_lora_passes_in_both_formats(fresh_and_trained):
    parts, _, trained = fresh_and_trained
    assert check_lora_state_dict(trained, parts) == 56
    assert check_lora_state_dict(trained, parts.unet) == 56  # the bare unet, "unet." prefix routed
    assert check_lora_state_dict(trained, {"unet": parts.unet, "text_encoder": parts.text_encoder}) == 56
    assert check_lora_state_dict(to_kohya(trained, alpha=4), parts) == 56


def test_lora_for_another_model_is_rejected(fresh_and_trained):
    parts, _, trained = fresh_and_trained
    wrong = {k.replace("down_blocks.1.", "down_blocks.7."): v for k, v in trained.items()}
    with pytest.raises(UserError, match="LoRA modules match no module of the target model"):
        check_lora_state_dict(wrong, parts)
    other_model = build_tiny_sd(seed=0).text_encoder  # the unet's LoRA checked against the text encoder
    with pytest.raises(UserError, match="56 of 56 LoRA modules match no module"):
        check_lora_state_dict(trained, other_model)


def test_empty_nonfinite_and_non_lora_state_dicts_are_rejected(fresh_and_trained):
    parts, _, trained = fresh_and_trained
    with pytest.raises(UserError, match="empty"):
        check_lora_state_dict({}, parts)
    broken = dict(trained)
    key = next(k for k in broken if "lora_B" in k)
    broken[key] = torch.full_like(broken[key], float("nan"))
    with pytest.raises(UserError, match="NaN/inf"):
        check_lora_state_dict(broken, parts)
    with pytest.raises(UserError, match="is not a LoRA weight"):
        check_lora_state_dict({"unet.conv_in.weight": torch.ones(1)}, parts)
