"""Captions cut by max_new_tokens: flagged by the backend, counted per run, shown and warned about."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from bench.backends.base import hit_token_limit
from bench.captioning import caption_samples
from bench.config import GenerationConfig
from bench.data.types import Sample

EOS, PAD = 1, 0


def test_a_row_is_cut_when_it_reached_the_limit_without_an_end_token() -> None:
    rows = torch.tensor([
        [5, 6, 7, 8],  # ran to the limit: cut
        [5, EOS, PAD, PAD],  # ended, then padding
        [5, 6, 7, EOS],  # ended exactly at the limit
    ])
    assert hit_token_limit(rows, [EOS], 4) == [True, False, False]
    assert hit_token_limit(rows[:, :3], [EOS], 4) == [False, False, False]  # all ended before the limit
    gpt2 = torch.tensor([[9, 9, 9], [9, 50256, 50256]])  # GPT-2 pads with its eos
    assert hit_token_limit(gpt2, [50256], 3) == [True, False]


class FlaggingCaptioner:
    """The captioning loop's view of a backend: it flags every other caption as cut."""

    name = "fake"
    device = torch.device("cpu")

    def __init__(self, flags: bool = True) -> None:
        self.flags = flags
        self.last_truncated: list[bool] = []

    def caption_collate(self) -> Any:
        return lambda samples: {"image_ids": [s.image_id for s in samples]}

    def generate(self, batch: dict[str, Any], gen: GenerationConfig) -> list[str]:
        ids = batch["image_ids"]
        if self.flags:
            self.last_truncated = [int(i[1:]) % 2 == 0 for i in ids]
        return [f"caption {i}" for i in ids]


@pytest.mark.parametrize("flags, expected", [(True, 3), (False, 0)])
def test_the_caption_loop_counts_flagged_captions(tmp_path: Path, flags: bool, expected: int) -> None:
    samples = [Sample(f"i{k}", tmp_path / f"{k}.jpg", ("ref",)) for k in range(6)]
    stats = caption_samples(FlaggingCaptioner(flags), samples, GenerationConfig(batch_size=4, max_new_tokens=5),
                            tmp_path / "predictions.jsonl", num_workers=0, progress=False)
    assert (stats.n_captioned, stats.n_truncated) == (6, expected)


def test_counts_add_up_over_sessions_and_ranks() -> None:
    from bench.run.execute import _caption_state
    from bench.run.folder import CaptionRecord

    stats = [SimpleNamespace(wall_s=1.0, generate_s=0.5, n_captioned=4, n_truncated=n) for n in (1, 2)]
    assert _caption_state(CaptionRecord(n_truncated=5, n_captioned=2), stats).n_truncated == 8


def test_the_degeneration_table_shows_the_cut_share() -> None:
    from bench.report.diagnostics import degeneration, recorded_count

    assert degeneration(["a dog", "a cat runs", "x"], recorded_count({"n_truncated": 2}, "n_truncated")).truncated_share \
        == pytest.approx(2 / 3)
    assert degeneration(["a dog"], recorded_count({}, "n_truncated")).truncated_share is None  # not recorded
    assert recorded_count({"n_truncated": True}, "n_truncated") is None


def test_the_degeneration_table_has_a_cut_column() -> None:
    from bench.report.diagnostics import degeneration
    from bench.report.tables import DASH, degeneration_table

    runs = [SimpleNamespace(name="llava", degeneration=degeneration(["a b"] * 4, 3)),
            SimpleNamespace(name="external", degeneration=degeneration(["a b"] * 4, None))]
    table = degeneration_table(SimpleNamespace(runs=runs))
    assert list(table.plain["Cut at max_new_tokens"]) == ["75.0%", DASH]


def test_zero_shot_runs_default_to_64_new_tokens_lora_runs_to_30(bench_env, shared_data: Path, tmp_path: Path) -> None:
    from bench.run import plan_run
    from bench.settings import load_setting, prompt_setting

    def max_new(text: str | None, backend: str) -> int:
        setting = prompt_setting("key_objects") if text is None else None
        if text is not None:
            path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.toml"
            path.write_text(text)
            setting = load_setting(path)
        plan = plan_run(setting, backend, limit=2)
        assert plan.config["generation"]["max_new_tokens"] == plan.setting.generation.max_new_tokens
        return plan.setting.generation.max_new_tokens

    assert max_new(None, "llava") == 64  # bench run --prompt key_objects
    assert max_new('prompt = "brief"\n', "llava") == 64  # lmms-eval's limit
    assert max_new("", "vit-gpt2") == 30
    assert max_new('prompt = "brief"\n[generation]\nmax_new_tokens = 12\n', "llava") == 12  # a setting's own wins
