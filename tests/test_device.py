"""Device and precision end to end: `--device auto|cpu|cuda|mps`, bf16 autocast for the LoRA
captioners on GPUs, SDPA attention, pinned memory on CUDA, CLIPScore on the run's device with one
CLIP per process, CPU thread budget, and the GPU benchmark's code path (LLaVA-1.5-7B config,
FLOPs, fixed-length generation) run on CPU.

4-bit/8-bit LLaVA loading is tested in test_llava_quant.py (skipped with the reason without CUDA);
the CUDA-only tests here skip the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.captioning import _loader, caption_samples
from bench.config import GenerationConfig, ModelConfig, ScoringConfig
from bench.data.types import Sample
from bench.distributed import SINGLE, Dist
from bench.errors import BenchError
from bench.run import ScorerPool
from bench.device import resolve_device
from bench.run.environment import cpu_thread_budget, cpu_threads
from bench.run.execute import RunContext, _generation_autocast, score
from bench.run.folder import StageState
from conftest import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ as a namespace package

NO_CUDA = "needs a CUDA GPU; none on this machine"
CPU = torch.device("cpu")


# --- device choice -------------------------------------------------------------------------------

def _fake_accelerators(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str) -> None:
    _fake_accelerators(monkeypatch, cuda, mps)
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_one_device_policy_serves_every_command() -> None:
    """`auto` means the same for `bench run`, `bench attend` and CLIPScore: one function decides."""
    import ast
    from pathlib import Path

    import bench.attend.command as attend
    import bench.device
    import bench.scoring.clipscore as clipscore

    package = Path(bench.device.__file__).parent
    defined = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if any(isinstance(n, ast.FunctionDef) and n.name == "resolve_device" for n in ast.walk(ast.parse(p.read_text()))))
    assert defined == ["device.py"]
    import bench.run.execute as execute

    assert clipscore.resolve_device is execute.resolve_device is bench.device.resolve_device
    assert "from bench.device import resolve_device" in Path(attend.__file__).read_text()


def test_an_unavailable_device_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_accelerators(monkeypatch, False, False)
    for name in ("cuda", "mps"):
        with pytest.raises(BenchError, match=f"--device {name}: .* not available") as info:
            resolve_device(name)
        assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_bench_run_device_cuda_without_a_gpu_exits_with_one_line(bench_env, write_tiny_setting, tiny_vit_gpt2, shared_data) -> None:
    setting = write_tiny_setting("dev", {"vit-gpt2": tiny_vit_gpt2}, backends=("vit-gpt2",))
    done = bench_env.run_cli("run", "--setting", str(setting), "--limit", "2", "--device", "cuda", "--no-progress")
    assert done.returncode == 2
    assert "--device cuda: CUDA is not available" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_each_process_takes_its_own_gpu() -> None:
    assert Dist(rank=1, world_size=2, local_rank=1).device(torch.device("cuda")) == torch.device("cuda", 1)
    assert Dist(rank=1, world_size=2, local_rank=1).device(torch.device("cuda:0")) == torch.device("cuda", 0)  # explicit wins
    assert Dist(rank=1, world_size=2, local_rank=1).device(CPU) == CPU
    assert SINGLE.device(torch.device("cuda")) == torch.device("cuda")


# --- CPU threads -----------------------------------------------------------------------------------

def test_cpu_thread_budget_leaves_the_workers_their_cores() -> None:
    assert cpu_thread_budget(2, 2) == 1
    assert cpu_thread_budget(16, 2) == 14
    assert cpu_thread_budget(16, 2, processes=2) == 6
    assert cpu_thread_budget(1, 0) == 1


def test_cpu_threads_lowers_then_restores_and_respects_omp(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    with cpu_threads(CPU, workers=2) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with cpu_threads(CPU, workers=2) as n:
        assert n is None and torch.get_num_threads() == before
    monkeypatch.delenv("OMP_NUM_THREADS")
    with cpu_threads(torch.device("cuda"), workers=2) as n:  # no CUDA needed: nothing is touched
        assert n is None and torch.get_num_threads() == before


# --- precision ---------------------------------------------------------------------------------------

def _plan(kind: str, precision: str = "auto") -> SimpleNamespace:
    return SimpleNamespace(kind=kind, setting=SimpleNamespace(train=SimpleNamespace(precision=precision)))


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool, emulated_bf16: bool = True) -> None:
    """A CUDA GPU as torch reports it: an A100 (native bf16) or a V100/T4 (bf16 only emulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or (including_emulation and emulated_bf16)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def test_lora_captioners_generate_in_half_precision_on_gpus_only(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, native_bf16=True)
    cuda = torch.device("cuda")
    assert _generation_autocast(_plan("lora"), cuda) == torch.bfloat16
    assert _generation_autocast(_plan("lora", "fp32"), cuda) is None
    assert _generation_autocast(_plan("lora"), CPU) is None  # CPU keeps fp32
    assert _generation_autocast(_plan("zero-shot"), cuda) is None  # LLaVA is loaded in bf16 already
    _fake_gpu(monkeypatch, native_bf16=False)
    assert _generation_autocast(_plan("lora"), cuda) == torch.float16


@pytest.mark.parametrize("native", [True, False])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    from bench.backends.llava import pick_dtype
    from bench.training import autocast_dtype

    # A V100/T4 says is_bf16_supported() == True (emulation): there fp16 is the fast half precision.
    _fake_gpu(monkeypatch, native_bf16=native)
    cuda, half = torch.device("cuda"), torch.bfloat16 if native else torch.float16
    assert autocast_dtype("auto", cuda) == half
    assert pick_dtype(cuda) == half
    assert autocast_dtype("fp16", cuda) == torch.float16 and autocast_dtype("fp32", cuda) is None
    if native:
        assert autocast_dtype("bf16", cuda) == torch.bfloat16
    else:
        with pytest.raises(BenchError, match="no native bfloat16"):
            autocast_dtype("bf16", cuda)
    assert autocast_dtype("auto", CPU) is None and pick_dtype(CPU) == torch.float32


def test_4bit_llava_computes_in_the_native_half_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from bench.backends.llava import quantization_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))  # no GPU build here
    for native, half in ((True, torch.bfloat16), (False, torch.float16)):
        _fake_gpu(monkeypatch, native_bf16=native)
        assert quantization_config("4bit", torch.device("cuda")).bnb_4bit_compute_dtype == half


@pytest.fixture(scope="module")
def vit_gpt2(tiny_vit_gpt2: Path):
    from bench.backends import backend_class

    torch.set_num_threads(1)
    return backend_class("vit-gpt2").load(ModelConfig(model=str(tiny_vit_gpt2)), CPU)


@pytest.fixture(scope="module")
def samples4(shared_data: Path) -> list[Sample]:
    paths = sorted((shared_data / "flickr8k-1k" / "images").glob("*.jpg"))[:4]
    return [Sample(p.stem, p, ("a photo",)) for p in paths]


def test_caption_loop_runs_generate_under_the_requested_autocast(tmp_path: Path, vit_gpt2, samples4, monkeypatch) -> None:
    seen: list[bool] = []
    real = type(vit_gpt2).generate

    def spy(self, batch, gen):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(self, batch, gen)

    monkeypatch.setattr(type(vit_gpt2), "generate", spy)
    gen = GenerationConfig(batch_size=2, max_new_tokens=4)
    stats = caption_samples(vit_gpt2, samples4, gen, tmp_path / "bf16.jsonl", 0, progress=False, amp_dtype=torch.bfloat16)
    assert stats.n_captioned == 4 and seen == [True, True]
    caption_samples(vit_gpt2, samples4, gen, tmp_path / "fp32.jsonl", 0, progress=False)
    assert seen[2:] == [False, False]


def test_pinned_memory_only_when_the_model_is_on_cuda(samples4) -> None:
    def fake(device: str) -> SimpleNamespace:
        return SimpleNamespace(device=torch.device(device), caption_collate=lambda: (lambda batch: {"image_ids": []}))

    assert _loader(fake("cuda"), samples4, [[0, 1]], 0).pin_memory is True
    assert _loader(fake("cpu"), samples4, [[0, 1]], 0).pin_memory is False


def test_every_backend_loads_with_sdpa_attention(tiny_models: dict[str, Path]) -> None:
    from benchmarks.captioning import load_captioner

    for backend, path in tiny_models.items():
        model = load_captioner(backend, path, CPU).torch_module()
        impls = {
            type(m).__name__: m.config._attn_implementation
            for m in model.modules()
            if getattr(getattr(m, "config", None), "_attn_implementation", None) is not None
        }
        assert impls and set(impls.values()) == {"sdpa"}, (backend, impls)


# --- CLIPScore: on the run's device, one CLIP per process ------------------------------------------

def test_one_clip_per_process_on_the_runs_device(tiny_clip: Path, samples4, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.scoring.clipscore as clipscore

    loads: list[str] = []
    real = clipscore._from_pretrained
    monkeypatch.setattr(clipscore, "_from_pretrained", lambda name: loads.append(name) or real(name))
    plan = SimpleNamespace(
        samples=samples4, setting=SimpleNamespace(scoring=ScoringConfig(clip_model=str(tiny_clip), metrics=("clipscore",)))
    )
    preds = {s.image_id: "a dog runs" for s in samples4}
    run = RunContext(plan, CPU, None, False, 0, SINGLE, StageState())  # type: ignore[arg-type]
    with ScorerPool() as pool:
        first, _ = score(run, preds, pool)
        second, _ = score(run, preds, pool)
        (key,) = pool._scorers  # one scorer, keyed by the run's device
        assert key[2] == "cpu"
    assert loads == [str(tiny_clip)]  # loaded once for both runs
    assert first.corpus == second.corpus and first.n_images == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_lora_run_on_cuda_end_to_end(bench_env, write_tiny_setting, tiny_vit_gpt2, shared_data) -> None:
    setting = write_tiny_setting(
        "cuda", {"vit-gpt2": tiny_vit_gpt2}, backends=("vit-gpt2",),
        extra="[train]\nepochs = 1\nbatch_size = 4\ntrain_size = 2\n[generation]\nmax_new_tokens = 6\nbatch_size = 4\n",
    )
    done = bench_env.run_cli("run", "--setting", str(setting), "--limit", "4", "--device", "cuda", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    results = json.loads((bench_env.runs / "cuda" / "vit-gpt2" / "results.json").read_text())
    assert results["device"].startswith("cuda") and results["memory"]["peak_cuda_mb"] is not None


# --- the GPU benchmark's code path, on CPU -----------------------------------------------------------

def test_llava_15_7b_config_has_the_real_parameter_count() -> None:
    from benchmarks.captioning import llava_15_7b_config, parameter_count

    assert parameter_count(llava_15_7b_config()) == 7_063_427_072  # llava-hf/llava-1.5-7b-hf


def test_generation_flops_count_every_weight_per_token() -> None:
    from benchmarks.captioning import bf16_peak_tflops, llava_15_7b_config, llava_generate_flops

    config = llava_15_7b_config()
    one = llava_generate_flops(config, prompt_tokens=600, new_tokens=1)
    more = llava_generate_flops(config, prompt_tokens=600, new_tokens=33)
    # Each extra token costs at least 2 FLOPs per LM weight (6.74B with the head, minus the embedding).
    assert (more - one) / 32 > 2 * (6_738_939_904 - 32064 * 4096)
    assert 7e12 < one < 12e12  # ~2 x 7B x 600 prompt tokens
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("Some Other GPU") is None


def test_gpu_throughput_code_runs_on_cpu_with_fixed_length_generation(tiny_llava: Path, samples4) -> None:
    from benchmarks.captioning import llava_throughput, load_captioner

    captioner = load_captioner("llava", tiny_llava, CPU)
    row = llava_throughput(captioner, samples4 * 2, batch_size=2, new_tokens=5, repeats=1)
    assert row["new_tokens"] == 5 and row["images"] == 2 and row["images_per_s"] > 0
    assert row["prompt_tokens"] > 16 and row["peak_memory_gib"] is None  # 16 image tokens + the prompt
