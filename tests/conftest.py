"""Shared test fixtures: tiny local models (built once per session), an isolated run registry.

No test downloads anything: every model is a tiny random one built from a config with a fixed
seed by the backend's own `build_tiny`, saved with `save_pretrained`, and loaded by path through
the same code path as a hub id.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import paths

REPO = Path(__file__).resolve().parent.parent
TINY_SEED = 0


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Blocking flock: pytest-xdist workers wait for the one that builds a shared artefact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir of this test session shared by all pytest-xdist workers."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(out_dir: Path, build: Callable[[Path], object]) -> Path:
    """Run `build(out_dir)` once per session, even across xdist workers (a `.built` marker)."""
    with _file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if not (out_dir / ".built").exists():
            shutil.rmtree(out_dir, ignore_errors=True)  # a build interrupted half-way
            out_dir.mkdir(parents=True)
            build(out_dir)
            (out_dir / ".built").write_text("ok\n")
    return out_dir


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tmp(tmp_path_factory) / "tiny-models"


def _tiny_backend(root: Path, backend: str) -> Path:
    from bench.testing.tiny import build_tiny

    return build_once(root / backend, lambda out: build_tiny(backend, out, TINY_SEED))


@pytest.fixture(scope="session")
def tiny_vit_gpt2(tiny_root: Path) -> Path:
    return _tiny_backend(tiny_root, "vit-gpt2")


@pytest.fixture(scope="session")
def tiny_clip_flan_t5(tiny_root: Path) -> Path:
    return _tiny_backend(tiny_root, "clip-flan-t5")


@pytest.fixture(scope="session")
def tiny_llava(tiny_root: Path) -> Path:
    return _tiny_backend(tiny_root, "llava")


def tiny_vlm_dir(root: Path, family: str) -> Path:
    """The tiny model of one vision-language family (bench.testing.vlm), built once per session."""
    from bench.testing.vlm import build_tiny_vlm

    return build_once(root / f"vlm-{family}", lambda out: build_tiny_vlm(family, out, TINY_SEED))


REAL_VLM = {"llava": "llava-hf__llava-1.5-7b-hf", "blip": "Salesforce__blip-image-captioning-base"}


@pytest.fixture(scope="session")
def real_vlm(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """family -> the real-config folder (../shared/models: real tokenizer, processor, chat template,
    generation config) with random weights of shrunk widths (bench.testing.real_models), built once."""
    from bench.testing.real_models import build_real_model

    models = shared_data.parent / "models"
    if not all((models / name / "config.json").is_file() for name in REAL_VLM.values()):
        pytest.skip(f"real model files not found in {models}")
    root = shared_tmp(tmp_path_factory) / "real-vlm"
    return {f: build_once(root / n, lambda out, n=n: build_real_model(models / n, out, TINY_SEED)) for f, n in REAL_VLM.items()}


@pytest.fixture(scope="session")
def tiny_clip(tiny_root: Path) -> Path:
    """A tiny CLIP (for CLIPScore) saved like openai/clip-vit-base-patch32."""
    from bench.tiny.clip import build_tiny_clip

    return build_once(tiny_root / "clip", lambda out: build_tiny_clip(out, TINY_SEED))


@pytest.fixture(scope="session")
def tiny_models(tiny_vit_gpt2: Path, tiny_clip_flan_t5: Path, tiny_llava: Path) -> dict[str, Path]:
    """backend name -> tiny model directory, for every backend."""
    return {"vit-gpt2": tiny_vit_gpt2, "clip-flan-t5": tiny_clip_flan_t5, "llava": tiny_llava}


# --- real-config models: the hub's real files, seeded random weights (bench.testing.real_models) ----------

def _real_model(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    if not (paths.shared_models_dir() / "google__flan-t5-base" / "config.json").is_file():
        pytest.skip(f"real model files not found at {paths.shared_models_dir()} (set BENCH_SHARED_MODELS)")
    return build_once(shared_tmp(tmp_path_factory) / "real-models" / name, build)


def _real_hub_model(tmp_path_factory: pytest.TempPathFactory, hub_id: str) -> Path:
    from bench.testing.real_models import build_real_model, real_model_dir

    return _real_model(tmp_path_factory, hub_id.replace("/", "__"),
                       lambda out: build_real_model(real_model_dir(hub_id), out, TINY_SEED))


@pytest.fixture(scope="session")
def real_vit_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nlpconnect/vit-gpt2-image-captioning's real files, CPU-sized widths and depths."""
    return _real_hub_model(tmp_path_factory, "nlpconnect/vit-gpt2-image-captioning")


@pytest.fixture(scope="session")
def real_clip32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """openai/clip-vit-base-patch32 (the CLIPScore model), CPU-sized."""
    return _real_hub_model(tmp_path_factory, "openai/clip-vit-base-patch32")


@pytest.fixture(scope="session")
def real_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """llava-hf/llava-1.5-7b-hf's real files (576 image tokens at 336 px), CPU-sized."""
    return _real_hub_model(tmp_path_factory, "llava-hf/llava-1.5-7b-hf")


@pytest.fixture(scope="session")
def real_clip_flan_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """google/flan-t5-base (t5/) + a full openai/clip-vit-base-patch16 checkpoint (vision/)."""
    from bench.testing.real_models import build_real_clip_flan_t5

    return _real_model(tmp_path_factory, "clip-flan-t5", lambda out: build_real_clip_flan_t5(out, TINY_SEED))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the project (../shared/data or BENCH_SHARED_DATA)."""
    root = paths.shared_data_dir()
    if not (root / "flickr8k-1k" / "captions.txt").is_file():
        pytest.skip(f"shared data not found at {root} (set BENCH_SHARED_DATA)")
    return root


@dataclass(frozen=True)
class BenchEnv:
    runs: Path
    cache: Path
    env: dict[str, str]  # os.environ plus the overrides, for subprocesses

    def run_cli(self, *args: str, timeout: float = 300, **kwargs: object):  # -> subprocess.CompletedProcess
        """`python -m bench ARGS` in a subprocess with this environment."""
        import subprocess

        return subprocess.run(
            [sys.executable, "-m", "bench", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture
def bench_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BenchEnv]:
    """BENCH_RUNS and BENCH_CACHE in a temp dir (for this process and subprocesses)."""
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    runs.mkdir()
    cache.mkdir()
    monkeypatch.setenv("BENCH_RUNS", str(runs))
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    # One BLAS thread per subprocess: oversubscribed threads on a shared 2-core machine make
    # tiny models many times slower.
    env = {**os.environ, "BENCH_RUNS": str(runs), "BENCH_CACHE": str(cache), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    yield BenchEnv(runs=runs, cache=cache, env=env)


def tiny_setting_text(
    models: dict[str, Path],
    clip: Path,
    *,
    extra: str = "",
    backends: tuple[str, ...] | None = None,
    prompt: str | None = None,
) -> str:
    """TOML of a setting that points every backend and the scorer at tiny local models.

    It extends the project's base.toml (as every setting does); `extra` is appended as is (TOML
    tables such as "[train]\\nepochs = 1").
    """
    lines = []
    if backends is not None:
        lines.append("backends = [" + ", ".join(f'"{b}"' for b in backends) + "]")
    if prompt is not None:
        lines.append(f'prompt = "{prompt}"')
    for backend, path in models.items():
        options = "{}"
        if (Path(path) / "t5").is_dir() and (Path(path) / "vision").is_dir():
            # clip-flan-t5 bundle: spell both parts out, or base.toml's hub vision_model would stay
            options = f'{{ vision_model = "{Path(path) / "vision"}" }}'
            path = Path(path) / "t5"
        lines += [f"[models.{backend}]", f'model = "{path}"', 'quantization = "none"', f"options = {options}"]
    lines += ["[scoring]", f'clip_model = "{clip}"', "clip_batch_size = 16"]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture
def write_tiny_setting(tmp_path: Path, tiny_clip: Path) -> Callable[..., Path]:
    """write_tiny_setting(name, models={backend: dir}, extra="...", backends=..., prompt=...) -> .toml path."""

    def write(name: str, models: dict[str, Path], **kwargs: object) -> Path:
        folder = tmp_path / "settings"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.toml"
        path.write_text(tiny_setting_text(models, tiny_clip, **kwargs))  # type: ignore[arg-type]
        return path

    return write
