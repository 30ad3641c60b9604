"""Model code the backends share, one reason per module: LoRA targets (`lora_targets`), adapter
folders (`adapters`), batches (`collate`), decoding (`decoding`), caption text (`caption_text`),
attention maps (`attention`), VLM families, processors, quantization and VLM LoRA.

Public so that the demo, tests and benchmarks import them by name; the backends themselves are
`bench.backends`.
"""
