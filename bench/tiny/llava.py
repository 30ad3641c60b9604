"""A tiny random LLaVA-1.5 (CLIP vision tower + projector + Llama) for offline tests and demos.

Same architecture classes, processor and chat template as `llava-hf/llava-1.5-7b-hf`, only a few
thousand times smaller; it is written with `save_pretrained` so that loading it goes through the
exact code path of a hub id. The tokenizer is a Llama-style (Metaspace BPE) tokenizer trained
here on a small embedded corpus, with `<image>` and `<pad>` added as special tokens like the
llava-hf conversion does.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

# llava-hf/llava-1.5-7b-hf's chat_template.json (also llava-v1.6-vicuna's): images first, then the
# text and a trailing space, then "ASSISTANT:" -> "USER: <image>\n<text> ASSISTANT:".
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] "
    "!= 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
IMAGE_SIZE = 32
PATCH_SIZE = 8

# Caption-like sentences plus the words of the shipped prompts, so that prompts tokenize into
# sub-words rather than single characters and random generations decode to word pieces.
_CORPUS = (
    "USER: ASSISTANT: a dog runs on the green grass .",
    "Briefly describe this image in a sentence . Thank you .",
    "In one sentence , describe the key objects in the image and their state .",
    "For example , 'A red apple lies on a wooden table' or 'A dog sleeps peacefully on a couch .'",
    "Provide a one-sentence caption for the provided image .",
    "Describe the image concisely . Provide a brief description of the given image .",
    "two children play in the park near a fountain .",
    "a man in a red shirt rides a bike down the street .",
    "a black and white dog jumps over a log in the snow .",
    "a girl in a pink dress is climbing the stairs of a house .",
    "a group of people stand outside a building in the city .",
    "a brown dog carries a stick through the water at the beach .",
    "a woman with a blue bag walks past a shop window .",
    "three boys are playing soccer on a field of grass .",
    "a little girl sits on a bench and eats an ice cream .",
    "a surfer rides a large wave in the ocean .",
    "a climber hangs from a rock wall high above the ground .",
    "two dogs are running together across a sandy beach .",
    "a cat sleeps on a wooden chair next to the window .",
    "an old man in a hat is sitting on a park bench reading a newspaper .",
    "people are walking along a busy street at night .",
    "a child in a yellow jacket is jumping into a pile of leaves .",
    "a skier is going down a snowy mountain slope .",
    "a young boy kicks a ball on the beach while his father watches .",
    "the motorcyclist is racing around a track .",
    "a baby is smiling while sitting in a high chair .",
    "a man and a woman are dancing on a stage under bright lights .",
    "several horses graze in a field beside a fence .",
    "a person on a bicycle is riding through a forest trail .",
    "a white bird flies low over the calm lake .",
)
_VOCAB_SIZE = 384


def build_llama_tokenizer(
    out_dir: Path | None = None, *, corpus: tuple[str, ...] = _CORPUS, vocab_size: int = _VOCAB_SIZE
):  # -> transformers.LlamaTokenizer
    """A Llama-style fast tokenizer (BPE + Metaspace, bos added) with `<image>` and `<pad>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        # Every printable ASCII character (newline included) so that no prompt loses characters:
        # there are no byte-fallback tokens in a vocabulary this small.
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = LlamaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=True)
    tok.add_special_tokens({"pad_token": PAD_TOKEN, "additional_special_tokens": [IMAGE_TOKEN]})
    tok.padding_side = "left"
    if out_dir is not None:
        tok.save_pretrained(out_dir)
    return tok


def build_tiny_llava(
    out_dir: Path, seed: int = 0, *, corpus: tuple[str, ...] = _CORPUS, vocab_size: int = _VOCAB_SIZE
) -> Path:
    """Write a tiny random LLaVA-1.5 with its processor to out_dir; returns out_dir.

    `corpus`/`vocab_size` choose the tokenizer's training text (the demo passes its prompts and
    captions; the corpus must hold every prompt word, or prompts split into characters).
    """
    from transformers import LlavaForConditionalGeneration

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_llama_tokenizer(corpus=tuple(corpus), vocab_size=vocab_size)
    processor = _tiny_processor(tokenizer)
    config = _tiny_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def _tiny_processor(tokenizer: Any) -> Any:
    """llava-hf's LlavaProcessor setup at IMAGE_SIZE pixels."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    # CLIP prepends a CLS token (num_additional_image_tokens=1) that the "default" feature
    # strategy drops again: (32/8)^2 = 16 image tokens per image, as llava-hf configures it.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA15_CHAT_TEMPLATE,
    )


def _tiny_config(tokenizer: Any) -> Any:
    """A LlavaConfig of a 2-layer CLIP tower and a 2-layer Llama, sized to the tokenizer."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # A wider init than Llama's 0.02 spreads the random logits, so greedy choices are not
        # near-ties that float rounding could flip between batch sizes.
        initializer_range=0.1,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
