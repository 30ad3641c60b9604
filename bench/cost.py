"""What a run's captions cost: the `cost` block of results.json, in $ per 1,000 captions.

Two bases, from the setting's `[cost]` prices (bench.config.CostConfig):

- tokens (hosted APIs): prompt and completion tokens the endpoint reported, times the prices
  per million input / output tokens;
- hours (local runs, or a served model on a rented GPU): the hourly price times the measured
  captioning time (`timings.generate_s`; training is a one-off cost, shown apart as train time).

A run with tokens and token prices is priced by its tokens, any other by the hour (so one base
setting can price hosted endpoints and local runs alike; a model served on one's own GPU is
priced by the hour when the setting gives no token prices). No price: no $ figure, but an
endpoint run still records its tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.config import CostConfig

PER_CAPTIONS = 1000


def run_cost(cost: CostConfig, served: Mapping[str, Any] | None, caption_s: float, n_images: int) -> dict[str, Any]:
    """`served`: an endpoint run's summary (bench.served.records), None for in-process runs;
    `caption_s`: the run's captioning wall time."""
    served = served or {}
    caption_s = float(caption_s)
    prompt = served.get("prompt_tokens")
    completion = served.get("completion_tokens")
    token_prices = cost.usd_per_million_input is not None or cost.usd_per_million_output is not None
    basis, total = None, None
    if token_prices and prompt is not None:
        basis = "tokens"
        total = ((cost.usd_per_million_input or 0.0) * int(prompt) + (cost.usd_per_million_output or 0.0) * int(completion or 0)) / 1e6
    elif cost.usd_per_hour is not None:
        basis, total = "hours", cost.usd_per_hour * caption_s / 3600.0
    return {
        "basis": basis,
        "usd_total": round(total, 6) if total is not None else None,
        "usd_per_1000_captions": round(total / n_images * PER_CAPTIONS, 6) if total is not None and n_images else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens_per_image": round((int(prompt) + int(completion or 0)) / n_images, 2) if prompt is not None and n_images else None,
        "caption_s": round(caption_s, 3),
        "prices": {k: v for k, v in vars(cost).items() if v is not None},
    }


def pareto_front(costs: list[float], values: list[float]) -> list[bool]:
    """True for each run no other run beats: none is at most as dear and at least as good, and
    strictly better in one of the two (lower $ per 1,000 captions, higher metric)."""
    front = []
    for i, (c, v) in enumerate(zip(costs, values)):
        dominated = any(
            (c2 <= c and v2 >= v) and (c2 < c or v2 > v) for j, (c2, v2) in enumerate(zip(costs, values)) if j != i
        )
        front.append(not dominated)
    return front
