"""Checks of a merged setting across keys: value ranges, backends vs prompt, LoRA-only tables.

A failed check blames the most derived file among those that set the keys involved.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import paths
from bench.config import Setting
from bench.backends.table import backend_table, lora_backends, zero_shot_backends
from bench.scoring.metrics import families
from bench.settings.schema import (
    BASE_NAME,
    LORA_ONLY_SECTIONS,
    Provenance,
    file_error,
    file_label,
)


@dataclass(frozen=True)
class Check:
    key: str
    ok: bool
    message: str
    related: tuple[str, ...] = ()  # keys whose setting file may be the one at fault instead


def range_checks(s: Setting) -> list[Check]:
    g, lo, t, d, sc = s.generation, s.lora, s.train, s.data, s.scoring
    prices = [(f"cost.{k}", v) for k, v in dataclasses.asdict(s.cost).items()]
    return [
        *(Check(key, v is None or v >= 0, f"must be >= 0 (got {v})") for key, v in prices),
        Check("models.openai.base_url", "openai" not in s.backends or bool(getattr(s.models.get("openai"), "base_url", "")),
              "is missing: the URL of the endpoint serving models.openai.model, e.g. http://127.0.0.1:8000/v1"),
        Check("lora.r", lo.r >= 1, f"must be >= 1 (got {lo.r})"),
        Check("lora.alpha", lo.alpha > 0, f"must be > 0 (got {lo.alpha})"),
        Check("lora.dropout", 0 <= lo.dropout < 1, f"must be in [0, 1) (got {lo.dropout})"),
        Check("lora.targets", bool(lo.targets) and all(lo.targets), "must name a preset ('attn', 'attn_ffn') or modules"),
        Check("train.epochs", t.epochs >= 1, f"must be >= 1 (got {t.epochs})"),
        Check("train.lr", t.lr > 0, f"must be > 0 (got {t.lr})"),
        Check("train.batch_size", t.batch_size >= 1, f"must be >= 1 (got {t.batch_size})"),
        Check("train.grad_accum", t.grad_accum >= 1, f"must be >= 1 (got {t.grad_accum})"),
        Check("train.warmup_ratio", 0 <= t.warmup_ratio < 1, f"must be in [0, 1) (got {t.warmup_ratio})"),
        Check("train.weight_decay", t.weight_decay >= 0, f"must be >= 0 (got {t.weight_decay})"),
        Check("train.max_grad_norm", t.max_grad_norm > 0, f"must be > 0 (got {t.max_grad_norm})"),
        Check("train.train_size", t.train_size is None or t.train_size >= 1, f"must be >= 1 (got {t.train_size})"),
        Check("generation.num_beams", g.num_beams >= 1, f"must be >= 1 (got {g.num_beams})"),
        Check(
            "generation.num_beams",
            g.strategy != "beam" or g.num_beams >= 2,
            f"must be >= 2 with strategy = 'beam' (got {g.num_beams})",
            ("generation.strategy",),
        ),
        Check(
            "generation.num_beams",
            g.strategy != "greedy" or g.num_beams == 1,
            f"must be 1 with strategy = 'greedy' (got {g.num_beams}); set strategy = 'beam'",
            ("generation.strategy",),
        ),
        Check("generation.max_new_tokens", g.max_new_tokens is None or g.max_new_tokens >= 1,
              f"must be >= 1 (got {g.max_new_tokens})"),
        Check(
            "generation.no_repeat_ngram_size",
            g.no_repeat_ngram_size >= 0,
            f"must be >= 0 (got {g.no_repeat_ngram_size})",
        ),
        Check(
            "generation.repetition_penalty",
            g.repetition_penalty > 0,
            f"must be > 0 (got {g.repetition_penalty})",
        ),
        Check("generation.batch_size", g.batch_size >= 1, f"must be >= 1 (got {g.batch_size})"),
        Check("data.dataset", bool(d.dataset.strip()), "must not be empty"),
        Check("data.limit", d.limit is None or d.limit >= 1, f"must be >= 1 (got {d.limit})"),
        Check("scoring.clip_batch_size", sc.clip_batch_size >= 1, f"must be >= 1 (got {sc.clip_batch_size})"),
        Check(
            "scoring.metrics",
            bool(sc.metrics) and all(m in families() for m in sc.metrics),
            f"must be a non-empty list of {', '.join(families())} (got {list(sc.metrics)})",
        ),
        Check("scoring.clip_model", bool(sc.clip_model.strip()), "must not be empty"),
        Check("seed", s.seed >= 0, f"must be >= 0 (got {s.seed})"),
    ]


def prompt_names() -> list[str]:
    # Names only: one bad prompt file must not make every setting fail to load.
    return sorted(p.stem for p in paths.prompts_dir().glob("*.toml"))


def check_prompt(name: str, label: str) -> None:
    known = prompt_names()
    if name not in known and not Path(paths.expand(name)).is_file():
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known) or 'none'})"
        raise file_error(label, f"prompt: unknown prompt {name!r}{hint}")
    from bench.prompts import load_prompt

    load_prompt(name)  # a bad prompt file raises its own one-line error naming that file


def semantic_checks(merged: dict[str, Any], prov: Provenance, label: str) -> tuple[str, ...]:
    """Checks across keys; returns the setting's backends."""
    catalog = backend_table()

    def where(key: str) -> str:
        return prov.get(key, label)

    prompt = merged.get("prompt") or merged.get("prompts")  # `prompts`: a sweep (bench.sweep)
    if "backends" in merged:
        backends = merged["backends"]
        if not backends:
            raise file_error(where("backends"), "backends must name at least one backend")
        for b in backends:
            if b not in catalog:
                close = difflib.get_close_matches(b, list(catalog), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise file_error(
                    where("backends"), f"backends: unknown backend {b!r}{hint} (available: {', '.join(sorted(catalog))})"
                )
        if len(set(backends)) != len(backends):
            raise file_error(where("backends"), f"backends lists a backend twice ({backends})")
        backends = tuple(backends)
    else:
        backends = zero_shot_backends() if prompt else lora_backends()
        if not backends:
            raise file_error(label, "backends: no backend is available for this kind of setting")
    zero_shot = [b for b in backends if not catalog[b].supports_lora]
    lora = [b for b in backends if catalog[b].supports_lora]
    if zero_shot and not prompt:
        raise file_error(where("backends"), f"backend {zero_shot[0]!r} is zero-shot and needs a prompt (prompt = \"<name>\")")
    if prompt and not zero_shot:
        raise file_error(where("prompt"), f"prompt: backends {', '.join(lora)} take no prompt (only zero-shot backends do)")
    if not lora:
        _check_vlm_lora(prov, zero_shot, catalog)
    return backends


def _own_lora_keys(prov: Provenance) -> list[tuple[str, str]]:
    """(key, file) of the [lora]/[train] keys and tables set by the setting's files, not base.toml."""
    base_label = file_label(paths.settings_dir() / f"{BASE_NAME}.toml")
    return [(k, s) for k, s in prov.items() if k.split(".")[0] in LORA_ONLY_SECTIONS and s != base_label]


def vlm_lora_requested(prov: Provenance, prompt: str | None) -> bool:
    """The kind rule for prompt settings: a [lora] table in the setting's own files (the file or
    a file it extends other than base.toml, even empty) means "LoRA-train the VLM, then caption
    with the prompt"; without one the setting is zero-shot (base.toml's [lora] never counts)."""
    return bool(prompt) and any(k.split(".")[0] == "lora" for k, _ in _own_lora_keys(prov))


def _check_vlm_lora(prov: Provenance, zero_shot: list[str], catalog: dict[str, Any]) -> None:
    """[lora]/[train] in a prompt setting: fine for VLMs that support LoRA, an error otherwise."""
    own = _own_lora_keys(prov)
    if not own:
        return
    lora_keys = [(k, s) for k, s in own if k.split(".")[0] == "lora"]
    if not lora_keys:
        key, source = max(own, key=lambda ks: ks[0].count("."))  # "train.epochs" rather than "train"
        raise file_error(
            source, f"{key}: a prompt setting trains nothing without its own [lora] table "
            f"(add one to fine-tune {', '.join(zero_shot)} with LoRA before captioning)"
        )
    fixed = [b for b in zero_shot if not catalog[b].supports_vlm_lora]
    if fixed:
        key, source = max(lora_keys, key=lambda ks: ks[0].count("."))
        raise file_error(source, f"{key} applies only to LoRA backends; {fixed[0]} is zero-shot and cannot be fine-tuned")


def blame(check: Check, prov: Provenance, order: list[str], label: str) -> str:
    """The most derived file among those that set the keys of a failed check."""
    setters = [prov[k] for k in (check.key, *check.related) if k in prov]
    if not setters:
        return label
    return max(setters, key=lambda f: order.index(f) if f in order else len(order))
