"""`bench data ...`: dataset utilities (placeholder until implemented)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Dataset utilities: generate the synthetic demo dataset, inspect splits.", no_args_is_help=True)
