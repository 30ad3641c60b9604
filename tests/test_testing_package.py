"""bench/testing/ holds test-only helpers (run folders written without a model): no production
module imports it, checked on the source with `ast` (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_production_module_imports_bench_testing() -> None:
    bad = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[:2] == ("bench", "testing"):
            continue
        names = _imports(ast.parse(path.read_text(), str(rel)))
        hits = [n for n in names if n == "bench.testing" or n.startswith("bench.testing.")]
        bad += [f"{rel.as_posix()}: {n}" for n in sorted(hits)]
    assert not bad, "production code imports test-only helpers:\n" + "\n".join(bad)


def test_the_report_package_has_no_test_writer_any_more() -> None:
    assert not (REPO / "bench" / "report" / "testing.py").exists()
    assert (REPO / "bench" / "testing" / "run_folders.py").is_file()
