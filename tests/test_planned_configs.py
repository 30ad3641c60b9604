"""Every shipped setting plans the same config.json as before issue 20's refactor.

`data/planned_configs_446f6c1.json` holds the config.json that main at 446f6c1 planned for every
run of every shipped setting (sweeps expanded), the cache folder written as <cache>. Trimming
base.toml to what a user changes and moving the backend defaults into the backend table must
leave every one of them unchanged (a changed config would make finished runs recompute).
Regenerate it only for a deliberate change of a shipped setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import paths
from bench.data.types import Sample, Split

GOLDEN = Path(__file__).parent / "data" / "planned_configs_446f6c1.json"


def planned_configs() -> dict[str, object]:
    from bench.run.plan import plan_run
    from bench.settings import expanded, list_settings

    return {f"{s.name}/{b}": plan_run(s, b).config for s in expanded(list_settings()) for b in s.backends}


def test_every_shipped_setting_plans_the_config_main_planned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import bench.run.plan as plan

    # config.json does not depend on the split: a stand-in spares loading every dataset.
    sample = Sample("img", tmp_path / "img.png", ("a ref",))
    monkeypatch.setattr(plan, "_load_split", lambda *a: Split("d", (sample,), (sample,), "f"))
    got = json.loads(json.dumps(planned_configs(), sort_keys=True).replace(str(paths.cache_dir()), "<cache>"))
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    changed = [name for name in want if got[name] != want[name]]
    assert not changed, f"planned config.json changed for: {', '.join(changed)}"
