"""A new user's first commands, run as they would run them: the converter and the trainer's front ends on a Python
that may lack torch, and the pack's metadata. Standard library only (plus pytest), so this runs on the lowest Python
version the pack claims too."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stdlib

REPO = Path(__file__).resolve().parent.parent

#: run a module as ``python -m`` does, in a Python where ``import torch`` fails (as on a Python without torch)
NO_TORCH = "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"  # noqa: E501


def _run(*args, no_torch=False, **kw):
    cmd = [sys.executable, "-c", NO_TORCH, *args] if no_torch else [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def test_converter_help_and_missing_torch():
    """--help works without torch and says what it needs; a conversion without torch says the same, no traceback."""
    r = _run("pbe_core.convert", "--help", no_torch=True)
    assert r.returncode == 0, r.stderr
    assert "Needs torch" in r.stdout and "--dtype" in r.stdout
    r = _run("pbe_core.convert", "model.ckpt", "out.safetensors", no_torch=True)
    assert r.returncode == 2
    assert "python -m pbe_core.convert needs torch: run it with the Python ComfyUI runs on" in r.stderr
    assert "Traceback" not in r.stderr


def test_print_config_alone_shows_the_defaults():
    """The README: '--print-config shows the resolved values'; with nothing set it shows the defaults and says what is
    still missing, instead of refusing."""
    r = _run("pbe_core.train", "--print-config", no_torch=True)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["init_from"] == "" and shown["learning_rate"] == 1e-5 and shown["output_dir"] == "pbe-finetune"
    assert "not ready to train: init_from is not set" in r.stderr
    r = _run("pbe_core.train", "--print-config", "max_steps=7", "no_such_key=1", no_torch=True)
    assert r.returncode == 2 and "Unknown setting 'no_such_key'" in r.stderr


def test_training_from_a_missing_init_from_creates_nothing(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "boxes").mkdir()
    r = _run("pbe_core.train", f"init_from={tmp_path / 'sd-v1-4.ckpt'}", f"annotations={tmp_path / 'boxes'}",
             f"images={tmp_path}", "data_format=txt", f"output_dir={out}")  # fmt: skip
    assert r.returncode == 2
    assert re.search(r"init_from = '.*sd-v1-4\.ckpt' does not exist; set init_from to an SD-1\.x checkpoint", r.stderr)
    assert "models/paint_by_example" not in r.stderr  # not a ComfyUI model: the hint for the loader node is wrong here
    assert not out.exists()


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip's own TOML reader
        from pip._vendor import tomli as tomllib
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_comfy_registry_metadata():
    """[tool.comfy]: an icon that is a square PNG in the repository (the raw URL of the file on main), and the
    oldest ComfyUI the pack is tested with."""
    meta = _pyproject()["tool"]["comfy"]
    icon = meta["Icon"]
    m = re.fullmatch(r"https://raw\.githubusercontent\.com/([^/]+/[^/]+)/main/(.+\.png)", icon)
    assert m, icon
    assert m.group(1) == _pyproject()["project"]["urls"]["Repository"].split("github.com/")[1]
    data = (REPO / m.group(2)).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert w == h >= 256
    assert re.fullmatch(r">=\d+\.\d+\.\d+", meta["requires-comfyui"])


def test_lowest_python_claimed_is_the_one_tested():
    """requires-python names the oldest Python the test command runs the standard-library tests on, and no CI or
    test script needs a newer one for itself (tomllib is 3.11+)."""
    claimed = re.fullmatch(r">=(\d+\.\d+)", _pyproject()["project"]["requires-python"]).group(1)
    runner = (REPO / "tests" / "run.sh").read_text()
    assert 'MIN_PY=$(sed -n \'s/^requires-python = ">=' in runner  # read from pyproject, not written twice
    for script in (REPO / ".ci" / "run", REPO / "tests" / "run.sh"):
        text = script.read_text()
        assert "import tomllib" not in text or "pip._vendor import tomli" in text, script
    assert tuple(map(int, claimed.split("."))) <= sys.version_info[:2]
