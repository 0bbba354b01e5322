#!/bin/bash
# benchmarks/results/sdxl_recipe.md: tiny SDXL (model.tiny=true model.family=sdxl, 32 px) through each shipped sdxl_*.yaml on data/subject, 40 steps.
cd "$(dirname "$0")/.."
O="${1:-/tmp/sdxl_recipe}"  # output folder (argument 1); its runs are redone each time
rm -rf "$O"/class "$O"/dreambooth_lora "$O"/dreambooth_full "$O"/lora_captions "$O"/textual_inversion; mkdir -p "$O"
COMMON=(model.tiny=true model.family=sdxl model.resolution=32 train.max_steps=40 train.eval_every=0 train.save_every=0
        train.log_every=10 train.progress_bar=false train.tensorboard=false validation.steps=4 validation.num_images=1
        efficiency.gradient_checkpointing=false)
PRIOR=(data.instance_dir=data/subject "data.instance_prompt=a drawing of the digit sks" prior.class_dir=$O/class
       "prior.class_prompt=a drawing of a digit" prior.num_class_images=4 prior.sample_steps=4
       "validation.prompts=[a drawing of the digit sks]")
L=(.venv/bin/accelerate launch --config_file accelerate_config.yaml recipes/train_sd.py)
"${L[@]}" --config recipes/configs/sdxl_dreambooth_lora.yaml "${COMMON[@]}" "${PRIOR[@]}" optim.lr=1e-3 train.output_dir=$O/dreambooth_lora
"${L[@]}" --config recipes/configs/sdxl_dreambooth_full.yaml "${COMMON[@]}" "${PRIOR[@]}" optim.lr=1e-4 train.output_dir=$O/dreambooth_full
"${L[@]}" --config recipes/configs/sdxl_lora_captions.yaml "${COMMON[@]}" data.caption_dir=data/subject validation.holdout=1 train.batch_size=2 optim.lr=1e-3 train.output_dir=$O/lora_captions
"${L[@]}" --config recipes/configs/sdxl_textual_inversion.yaml "${COMMON[@]}" data.instance_dir=data/subject textual_inversion.initializer_token=drawing "validation.prompts=[a drawing of a <my-toy>]" optim.lr=5e-2 train.output_dir=$O/textual_inversion
for d in dreambooth_lora dreambooth_full lora_captions textual_inversion; do
  .venv/bin/python -c "import json,sys;s=json.load(open('$O/$d/summary.json'));print('$d', s['family'], s['steps'], s['val_loss_before'], s['val_loss_after'], s['steps_per_second'], s['trained_parameters'], s['artifacts'])"
done
