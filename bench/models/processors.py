"""The processor of a vision-language model, by its config's `model_type`, image half only where needed.

transformers 5 builds the processors of video-capable families (Qwen2-VL, Qwen2.5-VL, SmolVLM,
LLaVA-OneVision) with a video processor, and a video processor needs torchvision; without it the
processor cannot even be constructed, although captioning never touches video. `bench` does not
depend on torchvision (see README), so for those families it loads the same processor class with
its video half left out (`image_only`): same image processor, tokenizer, chat template and image
token expansion. With torchvision installed the processor is loaded whole.
"""

from __future__ import annotations

import functools
from typing import Any


def needs_image_only(processor_class: Any) -> bool:
    """True when the class has a video half that this environment cannot build."""
    from transformers.utils import is_torchvision_available

    return "video_processor" in processor_class.get_attributes() and not is_torchvision_available()


@functools.lru_cache(maxsize=16)
def image_only(processor_class: Any) -> Any:
    """A subclass of `processor_class` without its `video_processor` attribute (same name, so
    `save_pretrained` writes the original class name)."""

    def get_attributes(cls: Any) -> list[str]:
        return [a for a in processor_class.get_attributes() if a != "video_processor"]

    def init(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any) -> None:
        processor_class.__init__(self, image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    return type(processor_class.__name__, (processor_class,), {
        "get_attributes": classmethod(get_attributes), "__init__": init, "__module__": processor_class.__module__,
    })


def processor_class_for(model_type: str) -> Any:
    """The transformers processor class registered for a config `model_type` (no remote code)."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name) if name else None
