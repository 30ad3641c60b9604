"""Captioner backends: one module each, named by a row of `bench.backends.table`.

Importing this package loads no torch: the table is plain data, the classes load on demand.
"""

from bench.backends.table import BackendSpec, backend_class, backend_spec, backend_table

__all__ = ["BackendSpec", "backend_class", "backend_spec", "backend_table"]
