"""`bench serve-command` and the adapter folders it hands to vLLM: the PEFT layout vLLM's LoRA
loader reads (adapter_config.json + adapter_model.safetensors, LoRA A/B of Linear modules named
as in the base model, nothing else). vLLM itself is never installed here: its check skips."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.backends import backend_class
from bench.config import LoraConfig, ModelConfig
from bench.errors import BenchError
from bench.run import plan_run
from bench.served.serve_command import max_lora_rank, serve_command
from bench.settings import load_setting
from conftest import REPO

LLAMA_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def lora_setting(folder: Path, model: Path, r: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tuned.toml"
    path.write_text(f'prompt = "brief"\nbackends = ["llava"]\n[models.llava]\nmodel = "{model}"\n'
                    f'[lora]\nr = {r}\nalpha = 8\ntargets = "attn_ffn"\n[train]\nepochs = 1\n')
    return path


@pytest.fixture(scope="module")
def adapter(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter saved by the llava backend exactly as a VLM-LoRA run saves each epoch's."""
    captioner = backend_class("llava").load(ModelConfig(model=str(tiny_llava)), torch.device("cpu"), prompt="brief", for_lora=True)
    captioner.add_lora(LoraConfig(r=4, alpha=8, targets="attn_ffn"))
    out = tmp_path_factory.mktemp("adapter") / "epoch-1"
    captioner.save_adapter(out)
    return out



@pytest.fixture(autouse=True)
def _planning_data(stand_in_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests only plan on flickr8k-1k: the stand-in serves them with or without ../shared.
    monkeypatch.setenv("BENCH_SHARED_DATA", str(stand_in_data))

def test_adapter_folders_are_in_the_peft_layout_vllm_loads(adapter: Path, tiny_llava: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["bias"] == "none" and not config.get("modules_to_save") and not config.get("use_dora")
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    modules = dict(base.named_modules())
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("base_model.model.") for k in keys)
    assert {k.rsplit(".", 2)[-2] for k in keys} == {"lora_A", "lora_B"}  # LoRA weights only
    targets = {k[len("base_model.model."):].rsplit(".", 2)[0] for k in keys}
    assert all(isinstance(modules.get(t), torch.nn.Linear) for t in targets), sorted(targets)[:3]
    wanted = config["target_modules"]  # peft: a list of names, or one regex over full module paths
    if isinstance(wanted, str):
        assert all(re.fullmatch(wanted, t) for t in targets)
    else:
        assert {t.rsplit(".", 1)[-1] for t in targets} <= set(wanted)
    # vLLM checks each tensor's module by its last name against the language model's LoRA modules
    # (Llama's q/k/v/o and gate/up/down projections, packed as qkv_proj and gate_up_proj).
    assert {t.rsplit(".", 1)[-1] for t in targets} <= LLAMA_LORA_MODULES
    assert not any("vision_tower" in t for t in targets)  # vLLM applies LoRA to the language model


def test_serve_command_for_a_vlm_lora_run(adapter: Path, tiny_llava: Path, tmp_path: Path, bench_env) -> None:
    plan = plan_run(load_setting(lora_setting(tmp_path / "settings", tiny_llava)), "llava")
    assert plan.kind == "lora"
    with pytest.raises(BenchError, match="no trained adapter yet"):
        serve_command(plan)
    epoch = plan.run_dir / "train" / "adapter" / "epoch-1"
    epoch.parent.mkdir(parents=True)
    epoch.symlink_to(adapter, target_is_directory=True)
    (adapter / "train_state.json").write_text("{}")  # what marks an epoch complete (bench.train_files)
    command = serve_command(plan, port=8123)
    argv = command.argv
    assert argv[:3] == ["vllm", "serve", str(tiny_llava)]
    assert argv[argv.index("--lora-modules") + 1] == f"tuned={epoch}" and "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "8"  # vLLM's smallest rank >= r = 4
    text = json.loads((tiny_llava / "config.json").read_text())["text_config"]
    assert argv[argv.index("--max-model-len") + 1] == str(text["max_position_embeddings"])
    assert command.run_argv[-4:] == ["--model", "tuned", "--endpoint", "http://127.0.0.1:8123/v1"]


def test_serve_command_cli_for_a_hub_model() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "serve-command", "llava_brief"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    serve, run = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert shlex.split(serve)[:5] == ["vllm", "serve", "llava-hf/llava-1.5-7b-hf", "--served-model-name", "llava-hf/llava-1.5-7b-hf"]
    assert "--enable-lora" not in serve
    assert shlex.split(run) == ["bench", "run", "--prompt", "brief", "--model", "llava-hf/llava-1.5-7b-hf",
                                "--endpoint", "http://127.0.0.1:8000/v1"]


def test_serve_command_refuses_what_vllm_cannot_serve() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "serve-command", "lora_attn"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "is not a chat VLM vLLM serves" in proc.stderr
    assert max_lora_rank(16) == 16 and max_lora_rank(17) == 32
    with pytest.raises(BenchError, match="above the largest rank"):
        max_lora_rank(1024)


def test_vllm_parses_the_serve_command(tiny_llava: Path, tmp_path: Path, bench_env) -> None:
    pytest.importorskip("vllm")  # never installed here; runs where vLLM is
    from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils import FlexibleArgumentParser

    plan = plan_run(load_setting(REPO / "settings" / "llava_brief.toml"), "llava")
    argv = serve_command(plan).argv
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[3:])
    assert args.served_model_name == [argv[argv.index("--served-model-name") + 1]]
