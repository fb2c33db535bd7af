"""The layout's promises, checked on the code itself: the engine never imports the host, the client imports neither
torch nor the host, node modules do not import each other, code cites only what is in the repository, and pbe_core is
grouped by trade (weights, photo, exemplar, edit, then the entry points convert, client, train, eval) with imports
only downward and no import circle, read from the source as an import graph."""

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _imported_modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_pbe_core_never_imports_comfy():
    """Every pbe_core module (the client and training included) imports, and none brings in ComfyUI."""
    import pbe_core

    names = [m.name for m in pkgutil.walk_packages(pbe_core.__path__, "pbe_core.") if not m.name.endswith("__main__")]
    assert len(names) > 30
    loaded = _imported_modules_after("\n".join(f"import {n}" for n in names))
    host = sorted(m for m in loaded if m.split(".")[0] in ("comfy", "comfy_api", "comfy_execution", "folder_paths",
                                                             "node_helpers", "latent_preview"))  # fmt: skip
    assert not host, host


def test_the_client_imports_no_torch():
    import pbe_core.client

    names = [m.name for m in pkgutil.walk_packages(pbe_core.client.__path__, "pbe_core.client.")
             if not m.name.endswith("__main__")]  # fmt: skip
    loaded = _imported_modules_after("\n".join(f"import {n}" for n in names))
    assert not ({"torch", "numpy", "comfy"} & loaded)


def test_node_modules_do_not_import_each_other():
    """nodes/*.py hold node classes; what they share lives in nodes/host/ (or pbe_core), never in another node file."""
    node_files = {p.stem for p in (REPO / "nodes").glob("*.py")} - {"__init__"}
    for path in (REPO / "nodes").glob("*.py"):
        if path.stem == "__init__":
            continue
        for stmt in ast.parse(path.read_text()).body:
            if isinstance(stmt, ast.ImportFrom) and stmt.level == 1:
                assert (stmt.module or "").split(".")[0] not in node_files, f"{path.name} imports from {stmt.module}"


@pytest.mark.parametrize("pattern", [r"REFERENCE\.md", r"COMFYUI_HOST\.md", r"STYLE\.md", r"\b[Ii]ssue \d+\b"])
def test_code_cites_only_files_of_the_repository(pattern):
    files = [p for d in ("pbe_core", "nodes", "tests", "benchmarks", "tools") for p in (REPO / d).rglob("*.py")]
    files += [REPO / "__init__.py", REPO / "tests" / "run.sh", REPO / ".ci" / "run"]
    hits = [f"{p.relative_to(REPO)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(pattern, line) and p.name != "test_layout.py"]  # fmt: skip
    assert not hits, hits


def test_docs_named_in_code_exist():
    files = [p for d in ("pbe_core", "nodes") for p in (REPO / d).rglob("*.py")]
    named = {m for p in files for m in re.findall(r"docs/[\w/.-]+\.md", p.read_text())}
    assert named and all((REPO / n).is_file() for n in named), sorted(n for n in named if not (REPO / n).is_file())


#: ``tests/...`` names that are not this repository's: ComfyUI's own integration tests (tests/support/comfy_host.py)
FOREIGN_TEST_PATHS = {"tests/execution"}
#: folders the tests write (git-ignored), there only after a run: named, not required
GENERATED_TEST_PATHS = {"tests/.fixtures", "tests/.fixtures-transformers4"}


def test_test_files_named_in_code_and_docs_exist():
    """Every ``tests/...`` path the code, the README and docs/ name is there (a module's attribute, e.g.
    ``tests/support/pbe_fixtures.FULL``, counts as its module): the tests moved once and the text must follow."""
    files = [p for d in ("pbe_core", "nodes", "tests", "benchmarks", "tools", "docs") for p in (REPO / d).rglob("*")
             if p.suffix in (".py", ".md", ".sh")]  # fmt: skip
    files += [REPO / "README.md", REPO / "SECURITY.md", REPO / "__init__.py", REPO / ".ci" / "run"]
    named = {m for p in files for m in re.findall(r"(?<![\w/.])tests/[\w/.-]*\w", p.read_text())}
    named -= FOREIGN_TEST_PATHS | GENERATED_TEST_PATHS

    def exists(name: str) -> bool:
        module = re.sub(r"\.\w+$", "", name) + ".py"
        return (REPO / name).exists() or (REPO / module).is_file()

    assert len(named) > 20 and all(exists(n) for n in named), sorted(n for n in named if not exists(n))


# pbe_core's layers, lowest first. A group may import itself and the groups listed for it, nothing else: imports go
# only downward, and the entry points (convert, client, eval, train) use one another only where listed (eval drives
# the client to generate its images).
LAYERS = {
    "weights": set(),
    "photo": set(),
    "exemplar": {"weights", "photo"},
    "edit": {"weights", "photo", "exemplar"},
    "convert": {"weights", "photo", "exemplar", "edit"},
    "client": {"weights", "photo", "exemplar", "edit"},
    "train": {"weights", "photo", "exemplar", "edit"},
    "eval": {"weights", "photo", "exemplar", "edit", "client"},
}
ENGINE = REPO / "pbe_core"


def _module_name(path: Path) -> str:
    parts = ["pbe_core", *path.relative_to(ENGINE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """``{module: pbe_core modules it imports}`` read from the source (every import, also those inside functions).

    ``from X import name`` counts as importing ``X.name`` where that is a module, else ``X``."""
    modules = {_module_name(p): p for p in ENGINE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "pbe_core"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "pbe_core":
                    continue
                subs = {f"{target}.{a.name}" for a in node.names} & modules.keys()
                deps |= subs or {target}
        unknown = {d for d in deps if d not in modules}
        assert not unknown, f"{name} imports {sorted(unknown)}, which is not a module of pbe_core"
        graph[name] = deps - {name}
    return graph


def _group(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "pbe_core"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted: the import circles."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_circle_and_passes_a_tree():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_pbe_core_is_grouped_by_trade():
    """Only the package's own ``__init__`` and the entry points sit on top; every module belongs to a layer."""
    graph = _import_graph()
    assert {_group(m) for m in graph} == {"pbe_core", *LAYERS}
    top = sorted(p.name for p in ENGINE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file())
    assert top == sorted(["__init__.py", "convert.py", *(g for g in LAYERS if g != "convert")]), top


def test_imports_go_only_downward():
    graph = _import_graph()
    assert sum(len(d) for d in graph.values()) > 40  # the reader sees the imports
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if _group(d) != _group(m) and _group(d) not in LAYERS.get(_group(m), set()))  # fmt: skip
    assert not upward, upward


def test_no_circle_between_layers():
    graph = _import_graph()
    groups = {}
    for m, deps in graph.items():
        groups.setdefault(_group(m), set()).update(_group(d) for d in deps if _group(d) != _group(m))
    assert not _cycles(groups), _cycles(groups)


@pytest.mark.parametrize("group", list(LAYERS))
def test_no_circle_between_modules(group):
    graph = _import_graph()
    circles = [c for c in _cycles(graph) if _group(c[0]) == group]
    assert not circles, circles
