"""The backend table: a backend is its class plus one row, found by the planner without torch.

A dummy zero-shot backend is added here the way a new backend would be (one `BackendSpec` row
naming its class) and run through settings validation, the planner, `bench list` and a whole
`bench run` (captioning and scoring) in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bench.backends import backend_class, backend_spec, backend_table
from bench.backends.base import Captioner
from bench.backends.table import BACKENDS, BackendSpec, lora_backends, zero_shot_backends
from bench.errors import BenchError

REPO = Path(__file__).resolve().parent.parent
CAPTION = "a dog runs on the grass"


class DummyCollate:
    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        return {"image_ids": [s.image_id for s in samples]}


class DummyCaptioner(Captioner):
    """Says the same sentence about every image."""

    name: ClassVar[str] = "dummy"

    @classmethod
    def load(cls, model_cfg, device, prompt=None, *, for_lora=False) -> "DummyCaptioner":
        return cls(model_cfg, device, prompt)

    def caption_collate(self) -> DummyCollate:
        return DummyCollate()

    def generate(self, batch, gen) -> list[str]:
        self.last_truncated = [False] * len(batch["image_ids"])
        return [CAPTION] * len(batch["image_ids"])

    def torch_module(self):
        import torch

        return torch.nn.Linear(1, 1)


DUMMY = BackendSpec("dummy", f"{__name__}:DummyCaptioner", "zero-shot", "dummy/model", 7)


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch) -> BackendSpec:
    monkeypatch.setitem(BACKENDS, DUMMY.name, DUMMY)  # the one row a new backend adds
    return DUMMY


def test_every_row_names_its_class() -> None:
    for name, spec in backend_table().items():
        cls = backend_class(name)
        assert issubclass(cls, Captioner) and cls.name == name == spec.name
        assert spec.module == cls.__module__


def test_a_row_whose_class_has_another_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "other", BackendSpec("other", f"{__name__}:DummyCaptioner", "zero-shot", None, 7))
    with pytest.raises(RuntimeError, match="'dummy', its table row says 'other'"):
        backend_class("other")


def test_unknown_backend_is_a_one_line_error() -> None:
    with pytest.raises(BenchError, match=r"^unknown backend 'nope'; available: clip-flan-t5, llava, openai, vit-gpt2, vlm$"):
        backend_spec("nope")


def test_planning_reads_the_table_without_torch() -> None:
    code = (
        "import sys\nfrom bench.settings import list_settings\nfrom bench.backends import backend_table\n"
        "list_settings(); backend_table()\nprint('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


def test_run_order_and_kinds_come_from_the_rows(dummy: BackendSpec) -> None:
    assert lora_backends() == ("vit-gpt2", "clip-flan-t5")
    assert zero_shot_backends() == ("llava", "dummy")  # a zero-shot row with a default model


def test_a_dummy_backend_runs_through_the_planner_and_bench_run(dummy: BackendSpec, bench_env, shared_data: Path,
                                                               tmp_path: Path) -> None:
    from bench.commands.listing import backends_table
    from bench.run import execute_plan, plan_run
    from bench.settings import load_setting

    path = tmp_path / "d.toml"
    path.write_text('prompt = "brief"\nbackends = ["dummy"]\n[scoring]\nmetrics = ["bleu", "cider"]\n')
    assert load_setting(path).models["dummy"].model == "dummy/model"  # the row's default model
    (tmp_path / "model").mkdir()  # a run checks its model is there before it starts
    path.write_text(path.read_text() + f'[models.dummy]\nmodel = "{tmp_path / "model"}"\n')
    plan = plan_run(load_setting(path), "dummy", limit=3)
    assert plan.kind == "zero-shot" and plan.config["generation"]["max_new_tokens"] == 7  # the row's default

    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(backends_table())
    assert "dummy" in console.export_text()

    result = execute_plan(plan, device="cpu", progress=False, num_workers=0)
    rows = [json.loads(line) for line in (plan.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == [CAPTION] * 3
    assert set(result.results["metrics"]) >= {"BLEU-4", "CIDEr"}
