"""`bench serve-command SETTING`: the `vllm serve` line that serves a setting's VLM, and the
`bench run` line that evaluates it through the endpoint.

From the setting: the model (hub id or folder), its dtype (`train.precision`, else vLLM's
`auto`), the context length (the language model's `max_position_embeddings` where the folder
says it), the chat template (passed only when a local folder ships none: vLLM then has nothing
to render the prompt with), the seed, and for a VLM-LoRA setting `--enable-lora --lora-modules
NAME=DIR --max-lora-rank R` with the last adapter the run wrote, so the tuned VLM is served
unmerged. bench never runs vLLM itself.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.sweep import model_slug

VLM_BACKENDS = ("vlm", "llava")  # the in-process chat VLMs vLLM can serve
DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CHAT_TEMPLATE_FILES = ("chat_template.json", "chat_template.jinja")
DEFAULT_PORT = 8000
# The values vLLM accepts for --max-lora-rank (its LoRAConfig); the smallest >= the run's r.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class ServeCommand:
    argv: list[str]  # vllm serve ...
    served_name: str  # what `bench run --model` names
    adapter: Path | None
    run_argv: list[str]  # the bench run line through the endpoint

    def lines(self) -> list[str]:
        return [shlex.join(self.argv), shlex.join(self.run_argv)]


def _local_config(model: str) -> dict[str, Any] | None:
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: unreadable model config ({exc})") from None
    return data if isinstance(data, dict) else None


def context_length(config: dict[str, Any] | None) -> int | None:
    """The language model's max_position_embeddings (VLM configs nest it under text_config)."""
    if config is None:
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    value = text.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def has_chat_template(model: str) -> bool | None:
    """Whether a local model folder ships a chat template (None: a hub id, not checked offline)."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    if any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file() and "chat_template" in json.loads(path.read_text(encoding="utf-8")):
            return True
    return False


def adapter_folder(run_dir: Path) -> Path:
    """The last complete epoch's adapter of a VLM-LoRA run (bench.train_files owns the layout)."""
    from bench.train_files import last_complete_epoch

    root = Path(run_dir) / "train" / "adapter"
    epoch = last_complete_epoch(root)
    if epoch == 0:
        raise BenchError(f"{run_dir}: no trained adapter yet (run `bench run` on this setting first)")
    return root / f"epoch-{epoch}"


def max_lora_rank(r: int) -> int:
    fits = [rank for rank in VLLM_LORA_RANKS if rank >= r]
    if not fits:
        raise BenchError(f"lora.r = {r}: above the largest rank vLLM serves ({VLLM_LORA_RANKS[-1]})")
    return fits[0]


def serve_command(plan: Any, port: int = DEFAULT_PORT, chat_template: Path | None = None) -> ServeCommand:
    """The vllm serve line for a planned run (bench.run.plan.RunPlan) of a VLM setting."""
    setting, backend = plan.setting, plan.backend
    if backend not in VLM_BACKENDS:
        raise BenchError(f"{setting.source}: backend {backend!r} is not a chat VLM vLLM serves (only {', '.join(VLM_BACKENDS)})")
    model_cfg = setting.models[backend]
    if model_cfg.quantization != "none":
        raise BenchError(f"{setting.source}: models.{backend}.quantization = {model_cfg.quantization!r}: serve the "
                         "full-precision model (vLLM quantizes with its own --quantization)")
    model = model_cfg.model
    # A hub id is served under itself; a folder under its name (the path means nothing to clients).
    base_name = model_slug(model) if Path(model).is_dir() else model
    argv = ["vllm", "serve", model, "--served-model-name", base_name, "--dtype", DTYPES[setting.train.precision]]
    config = _local_config(model)
    length = context_length(config)
    if length is not None:
        argv += ["--max-model-len", str(length)]
    if chat_template is not None:
        argv += ["--chat-template", str(chat_template)]
    elif has_chat_template(model) is False:
        raise BenchError(f"{model}: ships no chat template; give one with --chat-template FILE (vLLM needs it to "
                         "render the prompt)")
    argv += ["--seed", str(setting.seed), "--host", "127.0.0.1", "--port", str(port)]
    served, adapter = base_name, None
    if plan.kind == "lora":
        adapter = adapter_folder(plan.run_dir)
        served = model_slug(setting.name)
        argv += ["--enable-lora", "--lora-modules", f"{served}={adapter}", "--max-lora-rank", str(max_lora_rank(setting.lora.r))]
    prompt = setting.prompt or "brief"
    run_argv = ["bench", "run", "--prompt", prompt, "--model", served, "--endpoint", f"http://127.0.0.1:{port}/v1"]
    return ServeCommand(argv, served, adapter, run_argv)
