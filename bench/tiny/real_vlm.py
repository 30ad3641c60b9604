"""Real-config zero-shot models with random weights: a hub checkpoint's own files, smaller widths.

From a folder holding a hub model's text files (config, tokenizer, processor, chat template,
generation config; no weights, e.g. `../shared/models/llava-hf__llava-1.5-7b-hf`), this writes a
loadable model: the same files, and weights drawn at random for the config with only widths and
depths shrunk. Vocabulary, special tokens, image size, patch size, the vision feature layer and
select strategy stay as published, so a prompt holds exactly the tokens the real checkpoint sees
(576 image tokens at 336 px for LLaVA-1.5). What this cannot show: caption quality.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

# Text files a checkpoint folder carries besides its weights (copied as they are).
_FILES = (
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
    "preprocessor_config.json", "processor_config.json", "special_tokens_map.json", "tokenizer.json",
    "tokenizer.model", "tokenizer_config.json", "vocab.txt",
)
SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
SMALL_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _shrink_llava(config: Any) -> None:
    for key, value in SMALL_VISION.items():
        setattr(config.vision_config, key, value)
    config.vision_config.projection_dim = 32
    for key, value in SMALL_TEXT.items():
        setattr(config.text_config, key, value)
    config.text_config.num_key_value_heads = 4
    config.text_config.head_dim = SMALL_TEXT["hidden_size"] // SMALL_TEXT["num_attention_heads"]
    # wider random logits than 0.02: greedy choices are not near-ties that rounding flips
    config.text_config.initializer_range = 0.1


def _shrink_blip(config: Any) -> None:
    for key, value in SMALL_VISION.items():
        setattr(config.vision_config, key, value)
    for key, value in SMALL_TEXT.items():
        setattr(config.text_config, key, value)
    config.text_config.encoder_hidden_size = SMALL_VISION["hidden_size"]
    config.text_config.initializer_range = 0.1
    config.projection_dim = 32
    config.image_text_hidden_size = 32


SHRINK = {"llava": _shrink_llava, "blip": _shrink_blip}


def build_real_config_vlm(source: Path, out_dir: Path, seed: int = 0) -> Path:
    """Write a random-weight model of `source`'s config (shrunk widths) beside its own text files."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    if config.model_type not in SHRINK:
        raise ValueError(f"{source}: no shrinking rule for model_type {config.model_type!r} (known: {', '.join(SHRINK)})")
    SHRINK[config.model_type](config)
    model_class = AutoModelForImageTextToText._model_mapping[type(config)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in _FILES:  # after save_pretrained: the published generation_config.json wins
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    return out_dir
