"""Models: causal LMs (a directory, a hub id, GGUF, the shipped SmolLM2, tiny builders), Stable Diffusion parts and
the denoiser the SD recipe trains, and the small GAN / VAE networks.

Names load on first use (finetune/_exports.py). Two modules each have a `build_tiny_tokenizer` (the byte-level LM
one, the tiny CLIP one): import those from finetune.models.causal_lm and finetune.models.sd.
"""

from finetune._exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "causal_lm": [
            "CHATML_TEMPLATE",
            "DEFAULT_MODEL",
            "HUB_ID",
            "SMOLLM2_HUB_ID",
            "BaseModelReference",
            "LMModelConfig",
            "base_model_reference",
            "build_tiny_llama",
            "cache_root",
            "check_gguf_magic",
            "check_remote_code",
            "compile_decoder_layers",
            "configure_pad_token",
            "conversion_dir",
            "convert_gguf",
            "derived_cache_path",
            "describe_base",
            "fit_context",
            "lm_head_bypassed",
            "load_causal_lm",
            "resolve_model_source",
            "smollm2_gguf_path",
        ],
        "quantize": [
            "QUANTIZATIONS",
            "check_quantization",
            "check_quantized_training",
            "compute_dtype_of",
            "keep_nf4_trainable",
            "prepare_for_training",
            "quantization_config",
            "quantization_of",
        ],
        "sd": [
            "PREDICTION_TYPES",
            "SD_SCHEDULER_CONFIG",
            "TINY_WORDS",
            "SDModelConfig",
            "SDParts",
            "build_pipeline",
            "build_sd_from_configs",
            "build_tiny_sd",
            "encode_tokens",
            "load_sd_components",
            "sd15_configs",
            "tiny_sd_configs",
            "tokenize_prompts",
        ],
        "sd_denoiser": [
            "EfficiencyConfig",
            "SDDenoiser",
            "TextEncoderConfig",
            "ValidationConfig",
            "fixed_noise_loss",
            "on_device",
            "sample_images",
            "sample_latents",
            "scale_latents",
            "step_probe",
        ],
        "small_nets": [
            "Arch",
            "ConvDiscriminator",
            "ConvGenerator",
            "DigitsVAE",
            "MLPDiscriminator",
            "MLPGenerator",
            "build_gan_nets",
            "check_image_size",
            "image_grid_png",
            "reconstructions_png",
        ],
    },
)
