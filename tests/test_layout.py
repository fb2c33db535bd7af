"""The layout's promises, checked on the code itself: the engine never imports the host, the client imports neither
torch nor the host, node modules do not import each other, and code cites only what is in the repository."""

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

