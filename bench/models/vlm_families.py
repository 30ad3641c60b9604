"""Per-family rules of the zero-shot `vlm` backend, chosen by the config's `model_type` (never by
the model's name).

A family is prompted with its processor's chat template when the checkpoint ships one (the prompt
file's instruction plus one image, in the order the template file gives). Families without a chat
template have a fixed rule here instead:

- `paligemma`: the task prefix `caption en` (PaliGemma's captioning task; the processor puts the
  image tokens and `<bos>` in front and `\\n` after); the prompt file's instruction is not used.
- `blip`, `blip-2`: unconditional captioning, or the text prefix `options.text_prefix` (BLIP's own
  example uses "a photography of"); the caption is the prefix plus its continuation.
- `llava` without a chat template (old conversions): LLaVA-1.5's "USER: <image>\\n<text> ASSISTANT:".

A model_type without a chat template and without a rule here is refused with one line (add a rule
to FAMILIES). Every family also names, for 4-bit/8-bit loading, the modules bitsandbytes must
leave alone (vision tower, projector, lm_head), spelled as transformers 5 names them: patterns
match a module's full name from its start, or its end (`transformers.quantizers.quantizers_utils.
should_convert_module`), so "vision_tower" alone would match nothing below "model.".
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError

LLAVA_SKIP = ("model.vision_tower", "model.multi_modal_projector", "lm_head")


@dataclass(frozen=True)
class Family:
    model_type: str
    # "chat": the processor's chat template; "llava15": LLaVA-1.5's fixed format; "task_prefix":
    # a fixed task text (PaliGemma); "text_prefix": optional text the caption starts with (BLIP).
    prompt_rule: str = "chat"
    task_prefix: str = ""
    # The processor wants one list of images per text (Gemma 3, Idefics3, SmolVLM).
    nested_images: bool = False
    # The generated sequence starts with the (un-padded) text prefix (BLIP's text decoder).
    output_has_prompt: bool = False
    # image_mode values this family accepts; the first is the default.
    image_modes: tuple[str, ...] = ("native",)
    quant_skip_modules: tuple[str, ...] = LLAVA_SKIP


FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        # LLaVA-1.5: pad to a square (its own evaluation), or the llava-hf processor's crop.
        Family("llava", image_modes=("pad", "crop")),
        Family("llava_next"),
        Family("llava_onevision"),
        Family("qwen2_vl", quant_skip_modules=("model.visual", "lm_head")),
        Family("qwen2_5_vl", quant_skip_modules=("model.visual", "lm_head")),
        Family("idefics3", nested_images=True, quant_skip_modules=("model.vision_model", "model.connector", "lm_head")),
        Family("smolvlm", nested_images=True, quant_skip_modules=("model.vision_model", "model.connector", "lm_head")),
        Family("paligemma", prompt_rule="task_prefix", task_prefix="caption en"),
        Family("gemma3", nested_images=True),
        Family("blip", prompt_rule="text_prefix", output_has_prompt=True,
               quant_skip_modules=("vision_model", "text_decoder.cls")),
        Family("blip-2", prompt_rule="text_prefix", output_has_prompt=True,
               quant_skip_modules=("vision_model", "qformer", "language_projection", "lm_head")),
    )
}


def family_for(model_type: str, has_chat_template: bool, what: str) -> Family:
    """The rules for a config model_type; a chat template makes any other image-text model usable."""
    family = FAMILIES.get(model_type)
    if family is not None and family.model_type == "llava" and not has_chat_template:
        return Family("llava", prompt_rule="llava15", image_modes=family.image_modes)
    if family is not None and (family.prompt_rule != "chat" or has_chat_template):
        return family
    if family is None and has_chat_template:
        return Family(model_type)
    raise BenchError(
        f"{what}: its processor has no chat template and bench has no prompt rule for model_type "
        f"{model_type!r} without one (rules: {', '.join(sorted(FAMILIES))}); add one to bench/models/vlm_families.py"
    )


def image_mode(family: Family, options: dict[str, object], field: str) -> str:
    """The image mode of a run: `options.image_mode`, else the family's default ("auto")."""
    wanted = options.get("image_mode", "auto")
    if wanted == "auto":
        return family.image_modes[0]
    if wanted not in family.image_modes:
        allowed = " or ".join(repr(m) for m in ("auto", *family.image_modes))
        raise BenchError(f"{field}.image_mode must be {allowed} for model_type {family.model_type!r}, got {wanted!r}")
    return str(wanted)
