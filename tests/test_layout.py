"""House rules of the code base, checked on the source with `ast` (nothing is imported):

(a) readability, not line counts: a function or method longer than 60 lines (from its `def`
    line to its last line, decorators not counted) says why in a `# Long:` comment right under
    its signature or docstring (say, an orchestration that reads top to bottom); modules may be
    as long as they read well;
(b) no import cycle among bench.* modules, counting module-level and function-level (lazy)
    imports alike, each resolved to the module it loads;
(c) no production module imports `bench.testing` (test-only helpers), lazily or not;
(d) the `__init__.py` of the packages named in THIN_PACKAGES only re-export a short public
    surface: a docstring, imports and `__all__`, no logic and no private names.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "bench"
MAX_FUNCTION_LINES = 60
LONG_REASON = "# Long:"  # the comment a longer function carries, saying why it reads better whole
TESTING = "bench.testing"
# Packages whose __init__ is only a public surface (issue 20); the others have their own owners.
THIN_PACKAGES = ("bench.attend", "bench.backends", "bench.data", "bench.demo", "bench.models",
                 "bench.settings", "bench.testing", "bench.tiny")
MAX_EXPORTS = 12

# Sets of modules that import each other -> why the cycle is tolerated for now.
KNOWN_CYCLES: dict[frozenset[str], str] = {}  # none: keep it that way


# --- the checkers --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LongFunction:
    path: str
    name: str  # qualified: Class.method, outer.inner
    lines: int

    @property
    def key(self) -> str:
        return f"{self.path}::{self.name}"


def module_name(path: Path, root: Path) -> str:
    """bench/x/__init__.py -> bench.x, bench/x/y.py -> bench.x.y (root holds the package folder)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path, package: str = PACKAGE) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


def _says_why(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> bool:
    """A `# Long:` comment between the signature and the first statement after the docstring."""
    body = node.body
    first = body[1] if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0], "value", None), ast.Constant) else body[0]
    return any(LONG_REASON in line for line in lines[node.lineno - 1:first.lineno])


def long_functions(source: str, path: str, limit: int = MAX_FUNCTION_LINES) -> list[LongFunction]:
    """Functions and methods (nested ones too) longer than `limit` lines that do not say why."""
    found: list[LongFunction] = []
    lines = source.splitlines()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                size = child.end_lineno - child.lineno + 1
                if size > limit and not _says_why(child, lines):
                    found.append(LongFunction(path, name, size))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The bench.* modules that running `module` can import, wherever the import statement is.

    `import a.b.c` loads the longest known module of that dotted name; `from a.b import c` loads
    a.b.c when c is a module, else a.b (a package: its __init__). Imports under
    `if TYPE_CHECKING:` never run and are left out; `importlib.import_module` calls are not seen.
    """
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for statement in node.orelse:  # only the else branch runs
                visit(statement)
            return
        if isinstance(node, ast.Import):
            found.update(m for a in node.names if (m := resolve(a.name)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                target = resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else resolve(base)
                if target:
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    found.discard(module)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in source_files(root, package)}
    known = set(files)
    return {
        name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(frozenset(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def cycle_path(graph: dict[str, set[str]], group: frozenset[str]) -> list[str]:
    """One concrete cycle inside a strongly connected group: [a, b, ..., a]."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to `start`
        v = queue.pop(0)
        for w in sorted(graph[v] & group):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def long_unexplained(root: Path) -> list[LongFunction]:
    functions: list[LongFunction] = []
    for path in source_files(root):
        functions += long_functions(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix())
    return functions


def importers_of_testing(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Production module -> the bench.testing modules it imports (directly)."""
    def is_testing(m: str) -> bool:
        return m == TESTING or m.startswith(TESTING + ".")

    return {m: sorted(t for t in deps if is_testing(t)) for m, deps in graph.items()
            if not is_testing(m) and any(is_testing(t) for t in deps)}


def init_problems(path: Path, max_exports: int = MAX_EXPORTS) -> list[str]:
    """What in a package __init__ is more than a short public surface."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            problems += [f"imports private name {a.name!r}" for a in node.names
                         if (a.asname or a.name).startswith("_") and a.name != "annotations"]
            continue
        targets = node.targets if isinstance(node, ast.Assign) else []
        if [getattr(t, "id", None) for t in targets] == ["__all__"]:
            exported = ast.literal_eval(node.value)
            if len(exported) > max_exports:
                problems.append(f"__all__ has {len(exported)} names (at most {max_exports})")
            continue
        problems.append(f"line {node.lineno}: {type(node).__name__} (logic belongs in a module)")
    return problems


# --- the rules on this repository ----------------------------------------------------------------

def test_long_functions_say_why() -> None:
    bad = [f"{f.key}: {f.lines} lines" for f in long_unexplained(REPO)]
    assert not bad, (f"longer than {MAX_FUNCTION_LINES} lines without a `{LONG_REASON}` comment saying why "
                     "(split it, or say why it reads better whole):\n" + "\n".join(bad))


def test_production_code_never_imports_bench_testing() -> None:
    found = importers_of_testing(import_graph(REPO))
    assert not found, "production modules importing test-only code:\n" + "\n".join(
        f"{m} -> {', '.join(t)}" for m, t in sorted(found.items()))


@pytest.mark.parametrize("package", THIN_PACKAGES)
def test_package_inits_are_a_short_public_surface(package: str) -> None:
    path = REPO / package.replace(".", "/") / "__init__.py"
    assert not init_problems(path), f"{path.relative_to(REPO)}: " + "; ".join(init_problems(path))


def test_no_import_cycle() -> None:
    graph = import_graph(REPO)
    found = strongly_connected(graph)
    for group in found:
        print(f"import cycle: {' -> '.join(cycle_path(graph, group))}"
              + (" (known)" if group in KNOWN_CYCLES else ""))
    bad = [" -> ".join(cycle_path(graph, g)) for g in found if g not in KNOWN_CYCLES]
    assert not bad, "import cycles among bench modules:\n" + "\n".join(bad)


def test_known_cycles_name_only_current_cycles() -> None:
    """An entry whose cycle is gone must be removed: the list only shrinks."""
    cycles = set(strongly_connected(import_graph(REPO)))
    stale = [" <-> ".join(sorted(c)) for c in KNOWN_CYCLES if c not in cycles]
    assert not stale, "known cycles that no longer apply (remove them):\n" + "\n".join(stale)


# --- the checkers on synthetic sources -----------------------------------------------------------

def _function(name: str, body_lines: int, indent: str = "") -> str:
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x = {k}\n" for k in range(body_lines))


def test_long_functions_counts_def_to_last_line_for_methods_and_nested_functions() -> None:
    source = (
        _function("fits", MAX_FUNCTION_LINES - 1)  # def line + 59 = 60 lines
        + _function("too_long", MAX_FUNCTION_LINES)  # 61 lines
        + "class C:\n" + _function("method", MAX_FUNCTION_LINES + 5, "    ")
        + "def outer():\n" + _function("inner", MAX_FUNCTION_LINES, "    ")
    )
    found = {f.name: f.lines for f in long_functions(source, "x.py")}
    assert found == {
        "too_long": MAX_FUNCTION_LINES + 1,
        "C.method": MAX_FUNCTION_LINES + 6,
        "outer": MAX_FUNCTION_LINES + 2,
        "outer.inner": MAX_FUNCTION_LINES + 1,
    }


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_lazy_import_closes_a_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "bench/__init__.py": "",
        "bench/a.py": "from bench.b import thing\n",
        "bench/b.py": "def thing():\n    from bench import a\n    return a\n",
        "bench/c.py": "import bench.a\n",
    })
    graph = import_graph(root)
    assert graph == {"bench": set(), "bench.a": {"bench.b"}, "bench.b": {"bench.a"}, "bench.c": {"bench.a"}}
    groups = strongly_connected(graph)
    assert groups == [frozenset({"bench.a", "bench.b"})]
    assert cycle_path(graph, groups[0]) == ["bench.a", "bench.b", "bench.a"]


def test_imports_resolve_to_submodules_or_the_package_init(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "bench/__init__.py": "",
        "bench/pkg/__init__.py": "from bench.pkg.sub import f\nVALUE = 1\n",
        "bench/pkg/sub.py": "def f():\n    from bench.pkg import VALUE\n    return VALUE\n",
        "bench/pkg/other.py": "from bench.pkg import sub\nfrom . import sub as again\nfrom .sub import f\n",
        "bench/typed.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bench.pkg import sub\n"
            "else:\n    import bench.pkg.other\n"
        ),
        "bench/user.py": "import os\nimport bench.pkg.sub.f_missing\nfrom bench import pkg\n",
    })
    graph = import_graph(root)
    assert graph["bench.pkg.other"] == {"bench.pkg.sub"}  # `sub` is a module: not the package's __init__
    assert graph["bench.pkg.sub"] == {"bench.pkg"}  # VALUE is a name: the package's __init__
    assert graph["bench.typed"] == {"bench.pkg.other"}  # TYPE_CHECKING imports never run
    assert graph["bench.user"] == {"bench.pkg.sub", "bench.pkg"}
    assert strongly_connected(graph) == [frozenset({"bench.pkg", "bench.pkg.sub"})]


def test_a_long_function_passes_once_it_says_why() -> None:
    long_body = "".join(f"    x = {k}\n" for k in range(MAX_FUNCTION_LINES))
    assert [f.name for f in long_functions(f"def f():\n{long_body}", "x.py")] == ["f"]
    explained = f'def f():\n    """Doc."""\n    {LONG_REASON} the steps read top to bottom\n{long_body}'
    assert long_functions(explained, "x.py") == []
    too_late = f"def f():\n{long_body}    {LONG_REASON} buried at the end\n    y = 1\n"
    assert [f.name for f in long_functions(too_late, "x.py")] == ["f"]


def test_a_lazy_import_of_bench_testing_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "bench/__init__.py": "",
        "bench/testing/__init__.py": "",
        "bench/testing/helper.py": "from bench import prod\n",  # test code may use production code
        "bench/prod.py": "def f():\n    from bench.testing.helper import g\n",
        "bench/clean.py": "import os\n",
    })
    assert importers_of_testing(import_graph(root)) == {"bench.prod": ["bench.testing.helper"]}


def test_init_problems_name_logic_private_names_and_long_surfaces(tmp_path: Path) -> None:
    path = tmp_path / "__init__.py"
    path.write_text('"""Doc."""\nfrom a import b\n__all__ = ["b"]\n')
    assert init_problems(path) == []
    path.write_text('"""Doc."""\nfrom a import _b, c\n__all__ = ["c", "d", "e"]\ndef f():\n    pass\n')
    assert init_problems(path, max_exports=2) == [
        "imports private name '_b'", "__all__ has 3 names (at most 2)", "line 4: FunctionDef (logic belongs in a module)",
    ]
