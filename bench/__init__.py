"""bench: zero-shot VLM prompts vs LoRA-tuned captioners, scored like the reference implementations."""

__version__ = "0.1.0"
