"""Shared pytest setup: the host marker and its skip reason, the skip policy, and the no-torch case.

Skip policy. When a real ComfyUI is present (``COMFYUI_PATH``), a ``host`` test that skips is a failure: the host
suite is what decides whether the pack works, so it may not quietly shrink. With ``PBE_STRICT_SKIPS=1`` (set by
``tests/run.sh``, hence by CI) this holds for every test. The only exceptions are :data:`ALLOWED_SKIPS`, each with
the reason it is opt-in.

Without torch (a bare Python, e.g. the lowest Python version the pack claims), only the test files marked
``pytest.mark.stdlib`` are collected: they cover the parts of the pack that run on the standard library alone (the
headless client, the converter's and the trainer's command-line front ends). Everything else needs the test
environment ``tests/run.sh`` builds.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# the fixture generator and the other helpers live in tests/support/, imported by their bare names
sys.path.insert(0, str(Path(__file__).parent / "support"))

#: tests that may skip even where everything is installed: node id (without parameters) -> why they are opt-in
ALLOWED_SKIPS = {
    "tests/pbe_core/train/test_train_loop.py::test_two_processes_train_with_ddp_on_cpu": (
        "starts two torchrun processes on a free port (about 25 s); opt-in with PBE_TEST_DDP=1, which tests/run.sh "
        "sets"
    ),
    "tests/pbe_core/client/test_fleet.py::test_a_cluster_that_refuses_the_token_is_said_once_on_stderr_before_any_row": (
        "needs Ray 2.59 or later (ray start turns on token authentication from then); the test environment's Ray "
        "(the newest, 2.60 here) runs it, an older Ray the README names (2.10) has no token to refuse"
    ),
}

HAS_TORCH = importlib.util.find_spec("torch") is not None


def host_present() -> bool:
    comfy = os.environ.get("COMFYUI_PATH")
    return bool(comfy) and os.path.isfile(os.path.join(comfy, "main.py"))


def pytest_ignore_collect(collection_path, config):
    if HAS_TORCH:
        return None
    if collection_path.is_dir():
        return collection_path.name in ("host", "host_probe") or None  # their conftest and helpers import torch
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return "pytest.mark.stdlib" not in collection_path.read_text(encoding="utf-8", errors="replace") or None


def pytest_report_header(config):
    if not HAS_TORCH:
        return (
            "torch is not installed: only the standard-library tests (pytest.mark.stdlib) run. For the whole suite "
            "run `bash tests/run.sh` (README, 'Tests'), which builds the test environment."
        )
    if host_present():
        from comfy_inprocess import host_device, host_version
        from newer_host_emulation import enabled

        mode = ", newer-host mode (tests/support/newer_host_emulation.py)" if enabled() else ""
        return f"host: {host_version()}; device: {host_device()}{mode}"
    return None


def pytest_collection_modifyitems(config, items):
    if host_present():
        return
    reason = (
        "host test: needs a real ComfyUI; set COMFYUI_PATH to a ComfyUI checkout and run with a Python "
        "that has its requirements (see README, 'Tests against a real ComfyUI')"
    )
    for item in items:
        if "host" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


#: the one skip that depends on the machine: a test of CPU-only behaviour where the host tests run ComfyUI on the GPU
#: (tests/host/test_inprocess_host.py ``cpu_only``; tests/support/comfy_inprocess.py ``host_device``)
CPU_ONLY_ON_GPU = "CPU-only behaviour, and ComfyUI runs on the GPU here"


def _skip_counts_as_failure(item, reason: str = "") -> bool:
    if item.nodeid.split("[")[0] in ALLOWED_SKIPS:
        return False
    if reason.startswith(CPU_ONLY_ON_GPU):
        from comfy_inprocess import host_device

        return host_device() != "cuda"
    if os.environ.get("PBE_STRICT_SKIPS") == "1":
        return True
    return host_present() and "host" in item.keywords


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if report.skipped and not hasattr(report, "wasxfail") and _skip_counts_as_failure(item, reason.removeprefix("Skipped: ")):
        report.outcome = "failed"
        why = "PBE_STRICT_SKIPS=1" if os.environ.get("PBE_STRICT_SKIPS") == "1" else "the host is present"
        report.longrepr = f"skipped, but a skip is a failure here ({why}; see tests/conftest.py): {reason}"


@pytest.fixture(scope="session")
def fixture_paths():
    """Every checkpoint layout of the same tiny random Paint-by-Example model: ``{layout name: path}``."""
    import pbe_fixtures

    return pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())


@pytest.fixture(scope="session")
def tiny_modules():
    """The diffusers/transformers modules the fixture files were written from: ``(unet, vae, image_encoder)``."""
    import pbe_fixtures

    return pbe_fixtures.build_modules(pbe_fixtures.TINY, seed=0)
