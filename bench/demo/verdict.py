"""The demo's claims, checked on the numbers of its own report (`bench compare`'s JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError


@dataclass(frozen=True)
class Verdict:
    lora_beats_zero_shot: bool  # every LoRA run's CIDEr CI lies above every zero-shot run's
    lora_settings_differ: bool  # on each LoRA backend, the LoRA settings score different CIDEr
    lines: tuple[str, ...]  # one "claim: yes/no (evidence)" each
    caveats: tuple[str, ...] = ()  # what the split could not tell apart (bench compare's figure)


def verdict_from_report(payload: dict[str, Any]) -> Verdict:
    """The demo's claims checked on the report's own numbers (bench compare's JSON).

    Uses the first section (the demo runs all score the same images).
    """
    if not payload.get("sections"):
        raise BenchError("demo report JSON: key 'sections' is empty")
    runs = payload["sections"][0]["runs"]

    def cider(run: dict[str, Any]) -> dict[str, float]:
        m = run["metrics"].get("CIDEr")
        if m is None or m.get("lo") is None:
            raise BenchError(f"demo report JSON: run {run['run']!r} has no CIDEr interval")
        return m

    zero = [r for r in runs if r["kind"] == "zero-shot"]
    lora = [r for r in runs if r["kind"] == "lora"]
    lines: list[str] = []
    if not zero or not lora:
        return Verdict(False, False, ("the report needs zero-shot and LoRA runs for a verdict",))
    best_zero = max(zero, key=lambda r: cider(r)["hi"])
    worst_lora = min(lora, key=lambda r: cider(r)["lo"])
    beats = cider(worst_lora)["lo"] > cider(best_zero)["hi"]
    lines.append(
        f"LoRA beats zero-shot on CIDEr with non-overlapping 95% CIs: {'yes' if beats else 'no'} "
        f"(lowest LoRA lower bound {cider(worst_lora)['lo']:.3f}, {worst_lora['run']}; "
        f"highest zero-shot upper bound {cider(best_zero)['hi']:.3f}, {best_zero['run']})"
    )
    by_backend: dict[str, dict[str, float]] = {}
    for r in lora:
        by_backend.setdefault(r["backend"], {})[r["setting"]] = cider(r)["value"]
    differ = all(len(v) >= 2 and len(set(v.values())) == len(v) for v in by_backend.values())
    detail = "; ".join(
        f"{b}: " + " vs ".join(f"{s} {c:.3f}" for s, c in sorted(v.items())) for b, v in sorted(by_backend.items())
    )
    lines.append(f"The LoRA settings differ on CIDEr: {'yes' if differ else 'no'} ({detail})")
    # What the split could have told apart, next to the verdict it qualifies (bench compare's figure).
    detectable = payload["sections"][0].get("comparisons", {}).get("detectable", {})
    caveats = tuple(f"With {d['n_images']:,} images, CIDEr differences under {d['value']:.4f} are not detectable "
                    f"({100 * detectable['power']:.0f}% power)" for d in detectable.get("metrics", []) if d["metric"] == "CIDEr")
    return Verdict(beats, differ, tuple(lines), caveats)
