"""Data: text/instruction/chat sets and packing, image folders and DreamBooth sets, SD training items and latent
caching, the digits and stroke-symbol worlds, and the data inspector.

Names load on first use (finetune/_exports.py). Two modules each have a `make_collate` (text batches, SD batches):
import those from finetune.data.text and finetune.data.sd.
"""

from finetune._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "digits": ["DIGIT_WORDS", "MIN_SIZE", "Split", "TEST_FRACTION", "caption", "ink_to_images", "load_digits_images",
               "split_indices", "storage_grid", "to_uint8_hwc", "write_digits_imagefolder"],
    "images": ["IMAGE_EXTENSIONS", "BucketBatchSampler", "CaptionedImageFolder", "DreamBoothDataset", "ImageRecord",
               "assign_bucket", "check_resolution", "fit_and_crop", "image_size", "image_to_tensor", "item_generator",
               "list_images", "make_buckets", "open_image", "scan_caption_folder", "transform_image"],
    "inspect": ["MAX_SAMPLE_CHARS", "check_split", "eos_trained", "inspect_data", "render_sample", "split_summary"],
    "sd": ["PromptEmbeddings", "SDDataConfig", "TrainItems", "build_image_dataset", "cache_all_latents",
           "cache_latents", "dataset_items", "epoch_batches", "fixed_validation_batches", "image_sizes",
           "split_validation", "validate_data"],
    "symbols": ["CANVAS", "STROKES", "TRIANGLE", "draw_symbol", "nearest_symbol", "pretraining_symbols",
                "symbol_caption", "symbol_images"],
    "text": ["CHAT_ROLES", "FORMAT_EXAMPLES", "IGNORE_INDEX", "SplitStats", "TextDataConfig", "TokenizedSplit",
             "block_causal_mask", "build_text_datasets", "check_config", "collate_text", "document_labels",
             "load_jsonl_dataset", "load_raw_splits", "pack_documents", "pad_token_id", "read_jsonl", "segment_ids",
             "tokenize_chat_split", "tokenize_conversation", "tokenize_documents", "tokenize_text_split"],
})
