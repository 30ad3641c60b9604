"""Captioner backends: one module each, found by name through the registry in `base`."""

from bench.backends.base import AttentionTrace, Captioner, available_backends, get_backend, register_backend

__all__ = ["AttentionTrace", "Captioner", "available_backends", "get_backend", "register_backend"]
