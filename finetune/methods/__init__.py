"""Methods, one module each: LoRA/DoRA, prompt / p- / prefix tuning, full fine-tuning with gradual unfreezing (LM);
SD LoRA, textual inversion, DreamBooth prior preservation, UNet distillation (SD); each recipe's table of them (registry.py: LM_METHODS,
sd_registry.py: SD_METHODS).

Names load on first use (finetune/_exports.py).
"""

from finetune._exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "dreambooth": [
            "PriorConfig",
            "class_image_prompts",
            "count_class_images",
            "ensure_class_images",
            "prompt_tag",
            "validate_prior",
        ],
        "full": [
            "FullMethodConfig",
            "GradualUnfreezer",
            "LayerGroup",
            "apply_static_freeze",
            "build_param_groups",
            "describe_layer_groups",
            "layer_groups",
            "num_static_frozen_groups",
        ],
        "lora": [
            "LoraMethodConfig",
            "apply_lora",
            "check_target_modules",
            "linear_module_names",
            "restore_frozen_weights",
            "store_frozen_weights",
        ],
        "prompt_tuning": [
            "RECOMMENDED_LR",
            "PromptKind",
            "PromptMethodConfig",
            "apply_prompt_method",
            "build_peft_config",
            "recommended_lr",
        ],
        "hypernetwork": [
            "Hypernetwork",
            "HypernetworkConfig",
            "HypernetworkModule",
            "add_hypernetwork",
            "load_hypernetwork",
            "save_hypernetwork",
            "validate_hypernetwork",
        ],
        "registry": ["LM_METHODS", "LMMethod", "LMMethodName", "Trainable"],
        "sd_distill": [
            "DistillConfig",
            "UNetDistillation",
            "check_teacher_dir",
            "feature_distillation_loss",
            "output_distillation_loss",
            "validate_distill",
        ],
        "sd_lora": [
            "TEXT_ENCODER_TARGETS",
            "UNET_TARGETS",
            "SDLoraConfig",
            "add_lora",
            "lora_config",
            "lora_layers",
            "validate_sd_lora",
        ],
        "sd_registry": ["SD_METHODS", "Concept", "SDMethod", "SDMethodName", "training_encoders"],
        "textual_inversion": [
            "OBJECT_TEMPLATES",
            "STYLE_TEMPLATES",
            "RowRestorer",
            "TextualInversionConfig",
            "add_placeholder_tokens",
            "check_placeholder",
            "learned_embeddings",
            "placeholder_text",
            "placeholder_tokens",
            "template_prompt",
            "templates_of",
            "train_only_embeddings",
        ],
    },
)
