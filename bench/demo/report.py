"""The demo's report: `bench compare` over the demo runs, a note on what the models are, the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import paths
from bench.demo.profile import CAPTIONERS, CLIP_NAME, MANIFEST, SOURCE_DATASET, TARGET_DATASET, Profile, models_root
from bench.demo.verdict import Verdict, verdict_from_report
from bench.io import atomic_write_text, read_json


def report_note(profile: Profile, manifests: dict[str, dict[str, Any]]) -> str:
    """The paragraph the demo adds under the report's title: what the models are."""
    clip = manifests.get(CLIP_NAME, {})
    return (
        "About this demo (written by `bench demo`): every model is tiny and built offline. The zero-shot "
        f"LLaVA and the two LoRA backends start from bases pretrained with full fine-tuning on `{SOURCE_DATASET}` "
        "(other colours and shapes than the scored world), so the zero-shot rows show what a base that knows "
        "a related world captions without adaptation, and the LoRA rows what an adapter trained on "
        f"`{TARGET_DATASET}`'s train split adds. CLIPScore and RefCLIPScore come from a tiny CLIP trained "
        f"contrastively ({clip.get('steps', '?')} steps) on the train images of both worlds, not from "
        f"OpenAI's CLIP, so they are only comparable within this report. Profile: {profile.name}.\n"
    )


def _add_note(markdown: Path, note: str) -> None:
    """Insert the demo's note after the report's title line (atomically, like every write)."""
    lines = markdown.read_text(encoding="utf-8").split("\n")
    at = 1 if lines and lines[0].startswith("# ") else 0
    atomic_write_text(markdown, "\n".join(lines[:at] + ["", note.rstrip("\n")] + lines[at:]))


def make_report(out: Path, profile: Profile, *, console: Any = None, progress: bool = True) -> tuple[Any, Path, Verdict]:
    """`bench compare --data synth --runs 'demo_*' --out OUT --json OUT.json`, the demo's note
    added under the title, and the verdict read back from the JSON."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.report import build_report

    json_out = out.with_suffix(".json")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def advance(label: str, done: int, total: int, run: str) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        result = build_report(
            paths.runs_dir(), out, dataset=TARGET_DATASET, runs_glob="demo_*", json_out=json_out, progress=advance
        )
    manifests = {}
    for name in (*CAPTIONERS, CLIP_NAME):
        path = models_root(profile) / name / MANIFEST
        if path.is_file():
            manifests[name] = read_json(path)
    _add_note(out, report_note(profile, manifests))
    verdict = verdict_from_report(json.loads(json_out.read_text(encoding="utf-8")))
    return result, json_out, verdict
