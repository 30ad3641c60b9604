"""Runs: settings -> plan -> train -> caption -> score, one folder per (setting, backend).

    plan.py         settings -> RunPlan (split, prompt, config.json), no torch
    execute.py      the stages of one run, in order: load_and_train, caption, score_and_record
    folder.py       the run folder: its members, their schema and migration (the only reader/writer)
    registry.py     the run folders: cache hits, locks and resets, listing, external systems
    results.py      what results.json records for a finished run
    environment.py  device, CPU threads, versions, git commit, peak memory

Nothing here imports the report package (pandas, matplotlib): `bench run` stays light.
"""

from bench.run.execute import execute_plan, execute_run
from bench.run.folder import RunFolder
from bench.run.plan import RunPlan, config_diff, plan_run, run_label
from bench.run.registry import RunInfo, check_run_name, list_runs, record_external_run
from bench.run.results import RunResult
from bench.scoring.pool import ScorerPool

__all__ = [
    "RunFolder", "RunInfo", "RunPlan", "RunResult", "ScorerPool", "check_run_name", "config_diff", "execute_plan",
    "execute_run", "list_runs", "plan_run", "record_external_run", "run_label",
]
