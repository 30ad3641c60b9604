"""Where bench finds its declarative files and the shared data. Pure functions, no globals."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def project_dir() -> Path:
    """Folder holding settings/, prompts/, datasets/ (BENCH_HOME, else the checkout, else cwd)."""
    env = os.environ.get("BENCH_HOME")
    if env:
        return Path(env).resolve()
    if (REPO_DIR / "settings").is_dir():
        return REPO_DIR
    return Path.cwd()


def settings_dir() -> Path:
    return project_dir() / "settings"


def prompts_dir() -> Path:
    return project_dir() / "prompts"


def datasets_dir() -> Path:
    return project_dir() / "datasets"


def runs_dir() -> Path:
    """Run registry root (BENCH_RUNS, else ./runs under the project)."""
    env = os.environ.get("BENCH_RUNS")
    return Path(env).resolve() if env else project_dir() / "runs"


def cache_dir() -> Path:
    """Generated artefacts that are cheap to rebuild: tiny models, synthetic data (BENCH_CACHE)."""
    env = os.environ.get("BENCH_CACHE")
    return Path(env).resolve() if env else project_dir() / ".cache"


def shared_data_dir() -> Path:
    """The real data beside the project (BENCH_SHARED_DATA, default ../shared/data)."""
    env = os.environ.get("BENCH_SHARED_DATA")
    return Path(env).resolve() if env else (project_dir().parent / "shared" / "data").resolve()


def shared_models_dir() -> Path:
    """Real hub model files without weights (BENCH_SHARED_MODELS, default beside the shared data:
    ../shared/models), one folder per hub id with '/' spelled '__'."""
    env = os.environ.get("BENCH_SHARED_MODELS")
    return Path(env).resolve() if env else shared_data_dir().parent / "models"


def expand(value: str) -> str:
    """Expand ${BENCH_SHARED_DATA}, ${BENCH_CACHE} and ~ in paths written in TOML files."""
    value = value.replace("${BENCH_SHARED_DATA}", str(shared_data_dir()))
    value = value.replace("${BENCH_CACHE}", str(cache_dir()))
    return os.path.expanduser(os.path.expandvars(value))
