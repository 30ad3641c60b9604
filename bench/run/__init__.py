"""Runs: settings -> plan -> train -> caption -> score, one folder per (setting, backend).

    plan.py         settings -> RunPlan (split, prompt, config.json), no torch
    execute.py      the stages of one run, in order: load_and_train, caption, score_and_record
    registry.py     the run folders: cache hits, locks and resets, listing, external systems
    results.py      metrics.json / results.json, written and read back
    environment.py  device, CPU threads, versions, git commit, peak memory
"""

from bench.run.environment import cpu_thread_budget, cpu_threads, library_versions, peak_memory, resolve_device
from bench.run.execute import execute_plan, execute_run
from bench.run.plan import RunPlan, config_diff, plan_run, resolved_config, run_dir_for, run_identity, run_label, split_json
from bench.run.registry import RunInfo, check_run_name, clear_run_dir, list_runs, record_external_run
from bench.run.results import METRIC_KEYS, RunResult, load_results, metrics_json, normalize_metrics_json
from bench.scoring.pool import ScorerPool

__all__ = [
    "METRIC_KEYS", "RunInfo", "RunPlan", "RunResult", "ScorerPool", "check_run_name", "clear_run_dir", "config_diff",
    "cpu_thread_budget", "cpu_threads", "execute_plan", "execute_run", "library_versions", "list_runs",
    "load_results", "metrics_json", "normalize_metrics_json", "peak_memory", "plan_run", "record_external_run",
    "resolve_device", "resolved_config", "run_dir_for", "run_identity", "run_label", "split_json",
]
