"""One module per CLI command; `bench.cli` wires them into the typer app."""
