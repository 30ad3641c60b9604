"""`bench serve-command SETTING`: print the `vllm serve` line for a setting's VLM (its LoRA
adapter included, served unmerged) and the `bench run --endpoint` line that evaluates it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench.errors import BenchError


def serve_command(
    setting: Annotated[str, typer.Argument(help="Setting name (settings/NAME.toml) or path to a .toml.")],
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="The setting's backend to serve.")] = None,
    port: Annotated[int, typer.Option("--port", help="Port vLLM listens on (127.0.0.1).")] = 8000,
    chat_template: Annotated[Path | None, typer.Option(
        "--chat-template", help="Jinja chat template for a model folder that ships none.")] = None,
) -> None:
    """Print the vLLM command serving a setting's VLM, and the bench run through it."""
    from bench.run import plan_run
    from bench.served.serve_command import serve_command as build
    from bench.settings import load_setting

    if not 1 <= port <= 65535:
        raise BenchError(f"--port {port}: must be between 1 and 65535")
    loaded = load_setting(setting)
    chosen = backend or loaded.backends[0]
    if chosen not in loaded.backends:
        raise BenchError(f"--backend {chosen}: setting {loaded.name!r} ({loaded.source}) runs {', '.join(loaded.backends)}")
    command = build(plan_run(loaded, chosen), port, chat_template)
    out = Console(highlight=False, soft_wrap=True)  # one line per command, copy-pasteable
    out.print("# serve (vLLM):", markup=False)
    out.print(command.lines()[0], markup=False)
    out.print("# evaluate through the endpoint:", markup=False)
    out.print(command.lines()[1], markup=False)
