"""A private, headless ComfyUI with this pack loaded, started for one run and stopped after it. Standard library only.

``python -m pbe_core.client edit ... --comfyui /path/to/ComfyUI`` uses it, so that one command edits a photo without
a ComfyUI already running; the tests and the multi-worker batch start their servers the same way.

What "private" means:

* its own loopback port (a free one) and its own folders: ``--base-directory`` is a fresh temporary folder holding
  models/, input/, output/, temp/, user/ and an empty custom_nodes/, so the run touches nothing of the ComfyUI
  installation (its database lives in memory) and loads none of its other custom nodes;
* this pack (the folder this file is in) and the model folders come in through an ``--extra-model-paths-config``
  file: the private ``models/paint_by_example`` (model files given by path are linked there) and the installation's
  own ``models/paint_by_example`` (so a model name the user's ComfyUI lists works too);
* it stops with the run (``stop``, or leaving the ``with`` block; on Linux also when this process dies, through the
  parent-death signal) and its folder is removed, results having been downloaded by then; it runs in its own process
  group, so a terminal's Ctrl-C reaches the client only, which cancels the prompt on it before stopping it;
* if it exits during the run (a crash, the out-of-memory killer), the client starts it again (``restart``: the same
  port, folders and options), at most twice per run; ``kill`` ends it the way such a crash does (the tests use it).

ComfyUI's Python: ``python`` if given; else the virtual environment inside the ComfyUI folder (``venv``, ``.venv``),
the Windows portable build's ``python_embeded`` beside it, the Python running this code if it has torch, or the
Python the test command builds (``.venv-host`` in this folder: ComfyUI's requirements and torch).

A CUDA build of torch on a machine without a GPU makes ComfyUI exit at start-up unless it runs with ``--cpu``; when
the log shows that, the server is started once more with ``--cpu``, and the message says so.

The ComfyUI options used (``--listen``, ``--port``, ``--disable-auto-launch``, ``--base-directory``,
``--extra-model-paths-config``, ``--database-url``, ``--cpu``) are those of ComfyUI 0.3.64's ``comfy/cli_args.py``, and
the 0.38-era file has them all with the same meaning.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("pbe_core.client")

PACK_DIR = Path(__file__).resolve().parent.parent.parent
PACK_NAME = "comfyui-paint-by-example"
MODEL_FOLDER = "paint_by_example"

#: what ComfyUI's log says when torch has no usable accelerator but ComfyUI was not told --cpu
NO_ACCELERATOR = ("Found no NVIDIA driver", "Torch not compiled with CUDA enabled", "No CUDA GPUs are available")


class EmbeddedError(RuntimeError):
    """The private ComfyUI could not be started; the message says why and what to do."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_comfy_python(comfyui: Path, python: str | None = None) -> str:
    """The Python to run ``comfyui/main.py`` with (see the module docstring for the order)."""
    if python:
        return python
    candidates = [
        comfyui / "venv" / "bin" / "python", comfyui / ".venv" / "bin" / "python",
        comfyui / "venv" / "Scripts" / "python.exe", comfyui / ".venv" / "Scripts" / "python.exe",
        comfyui.parent / "python_embeded" / "python.exe",
    ]  # fmt: skip
    for c in candidates:
        if c.is_file():
            return str(c)
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    tests_env = PACK_DIR / ".venv-host" / "bin" / "python"  # what the test command (tests/run.sh) builds
    if tests_env.is_file():
        return str(tests_env)
    raise EmbeddedError(
        f"cannot tell which Python runs ComfyUI in {comfyui} (no venv/ or .venv/ inside it, no python_embeded beside "
        f"it, and this Python has no torch); give it with --comfy-python PATH"
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` on Linux: the server gets SIGTERM when the process that started it dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class PrivateComfyUI:
    """One private headless ComfyUI (see the module docstring). ``base_url`` once :meth:`start` returned.

    ``models``: ``{name: path}`` linked into the private ``models/paint_by_example``; ``extra_packs``: more custom
    node folders ``{name: path}``; ``extra_args``: more ComfyUI options (e.g. ``["--cpu"]``, ``["--lowvram"]``);
    ``workdir``: the folder to use (default: a new temporary one, removed by :meth:`stop`).
    """

    def __init__(self, comfyui: str | os.PathLike, *, python: str | None = None, models: dict | None = None,
                 extra_packs: dict | None = None, extra_args=(), env: dict | None = None,
                 workdir: str | os.PathLike | None = None, popen_kwargs: dict | None = None):
        self.comfyui = Path(comfyui).resolve()
        if not (self.comfyui / "main.py").is_file():
            raise EmbeddedError(f"{self.comfyui} is not a ComfyUI folder (it has no main.py); give --comfyui the "
                                f"folder that holds ComfyUI's main.py")
        self.python = find_comfy_python(self.comfyui, python)
        self.own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pbe-comfyui-"))
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.popen_kwargs = dict(popen_kwargs or {})
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "comfyui.log"
        self.base_dir = self.workdir / "base"
        self.input_dir, self.output_dir = self.base_dir / "input", self.base_dir / "output"
        self.temp_dir = self.base_dir / "temp"
        self.models_dir = self.workdir / "extra_models"
        self._log_file = None
        self._layout(dict(models or {}), {PACK_NAME: PACK_DIR, **(extra_packs or {})})

    def _layout(self, models: dict, packs: dict) -> None:
        for sub in ("models", "input", "output", "temp", "user", "custom_nodes"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        nodes_dir = self.workdir / "extra_custom_nodes"
        nodes_dir.mkdir(exist_ok=True)
        for name, src in packs.items():
            link = nodes_dir / name
            if not link.exists():
                link.symlink_to(Path(src).resolve(), target_is_directory=True)
        (self.models_dir / MODEL_FOLDER).mkdir(parents=True, exist_ok=True)
        for name, src in models.items():
            self.add_model(name, src)
        folders = [f"extra_models/{MODEL_FOLDER}"]
        own = self.comfyui / "models" / MODEL_FOLDER
        if own.is_dir():
            folders.append(str(own))
        # a literal block holds each path as it is (no YAML escaping); base_path is a JSON string, which YAML reads
        lines = ["pbe_private:", f"  base_path: {json.dumps(str(self.workdir))}", "  custom_nodes: extra_custom_nodes",
                 f"  {MODEL_FOLDER}: |", *(f"    {f}" for f in folders)]  # fmt: skip
        self.yaml = self.workdir / "extra_model_paths.yaml"
        self.yaml.write_text("\n".join(lines) + "\n")

    def add_model(self, name: str, path: str | os.PathLike) -> str:
        """Link the model file or folder ``path`` into the private models folder as ``name``; returns ``name``."""
        link = self.models_dir / MODEL_FOLDER / name
        src = Path(path).resolve()
        if not src.exists():
            raise EmbeddedError(f"the model {path} does not exist; give the path of a Paint-by-Example checkpoint "
                                f"file or diffusers folder")
        if not link.is_symlink() and not link.exists():
            link.symlink_to(src, target_is_directory=src.is_dir())
        return name

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
            "--base-directory", str(self.base_dir), "--extra-model-paths-config", str(self.yaml),
            "--database-url", "sqlite:///:memory:", *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 300.0, progress: Callable[[str], None] | None = None) -> PrivateComfyUI:
        """Start the server and wait until it answers; ``progress`` gets a line every few seconds meanwhile."""
        say = progress or (lambda line: None)
        say(f"starting a private ComfyUI ({self.comfyui}, {self.python}) on port {self.port}; log: {self.log_path}")
        started = time.monotonic()
        try:
            self._launch()
            self._wait(timeout, started, say)
        except EmbeddedError as e:
            text = self.log()
            if "--cpu" in self.extra_args or not any(m in text for m in NO_ACCELERATOR):
                self.stop()
                raise
            say(f"ComfyUI found no GPU ({e}); starting it again with --cpu")
            self._stop_process()
            self.extra_args.append("--cpu")
            self._launch()
            self._wait(timeout, started, say)
        say(f"ComfyUI is ready after {time.monotonic() - started:.0f} s")
        return self

    def _launch(self) -> None:
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow torch down on shared machines
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        kwargs = dict(self.popen_kwargs)
        if sys.platform.startswith("linux") and "preexec_fn" not in kwargs:
            kwargs["preexec_fn"] = _die_with_parent
        # its own process group: a terminal's Ctrl-C reaches the client only, which cancels the prompt, then stops it
        kwargs.setdefault("start_new_session", os.name == "posix")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(self.command(), cwd=self.comfyui, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, **kwargs)

    def _wait(self, timeout: float, started: float, say: Callable[[str], None]) -> None:
        deadline, next_note = started + timeout, time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedError(f"ComfyUI exited with status {self.proc.returncode} while starting; the end of "
                                    f"its log:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base_url + "/system_stats", timeout=2):  # noqa: S310 - loopback
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() >= next_note:
                last = next((ln for ln in reversed(self.log().splitlines()) if ln.strip()), "")
                say(f"  still starting ({time.monotonic() - started:.0f} s): {last[:160]}")
                next_note = time.monotonic() + 5
            time.sleep(0.5)
        raise EmbeddedError(f"ComfyUI did not answer within {timeout:.0f} s; the end of its log:\n{self.log()[-3000:]}")

    def restart(self, timeout: float = 300.0, progress: Callable[[str], None] | None = None) -> PrivateComfyUI:
        """Start the server again after it exited or was stopped, with the same command: the same port, folders and
        options (``--cpu`` included if :meth:`start` added it). ComfyUI keeps its queue and history in memory, so
        those start empty; the input and output folders are the same as before."""
        say = progress or (lambda line: None)
        self._stop_process()
        say(f"starting the private ComfyUI again on port {self.port}; log: {self.log_path}")
        started = time.monotonic()
        self._launch()
        try:
            self._wait(timeout, started, say)
        except EmbeddedError:
            self._stop_process()
            raise
        say(f"ComfyUI is ready again after {time.monotonic() - started:.0f} s")
        return self

    def kill(self) -> None:
        """End the server at once with SIGKILL, as a crash or the out-of-memory killer would (it cleans nothing up);
        the folders stay, so :meth:`restart` brings it back on the same port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the server and, if the folder is this object's own, remove it."""
        self._stop_process()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateComfyUI:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
