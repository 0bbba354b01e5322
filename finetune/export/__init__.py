"""Export formats for trained adapters: kohya/A1111 LoRA files and checks that a LoRA is worth shipping."""

from finetune.export.kohya import from_kohya, kohya_metadata, load_kohya, save_kohya, to_kohya
from finetune.export.lora_check import check_lora_state_dict

__all__ = ["check_lora_state_dict", "from_kohya", "kohya_metadata", "load_kohya", "save_kohya", "to_kohya"]
