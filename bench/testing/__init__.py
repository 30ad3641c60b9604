"""Test-only helpers: what tests and `make bench` build (real-config models, the tiny VLM of every
family). Production code never imports this package (tests/test_layout.py checks it)."""
