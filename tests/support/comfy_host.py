"""Drive a real ComfyUI, started headless as a subprocess, through its HTTP API only, with the pack's own client
(``pbe_core.client.api.ComfyClient``: what a user's batch talks through).

Shape taken from ComfyUI's own integration tests (``tests/execution/``): start ``main.py`` on a free loopback port,
post prompts, read ``/history`` and ``/view``. The server runs where a user's would: on the GPU in the host's default
memory mode where the host's torch finds a CUDA GPU, with ``--cpu`` only where it finds none
(:func:`host_device_args`; ``PBE_HOST_DEVICE`` overrides). With ``PBE_NEWER_HOST=1`` it starts through
``tests/support/newer_host_emulation.py`` (the newer-host mode). The server is the pack's own private ComfyUI
(``pbe_core.client.embedded``: its own base directory, the pack and the fixture checkpoints through an
``--extra-model-paths-config`` file), the one the client's ``--comfyui`` starts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import newer_host_emulation
from comfy_inprocess import choose_device

from pbe_core.client.api import ComfyClient
from pbe_core.client.embedded import PACK_NAME, PrivateComfyUI, free_port  # noqa: F401 - re-exported for the tests
from pbe_core.client.errors import ServerError

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def cuda_available(python: str) -> bool:
    """Whether torch in ``python`` (the Python that runs ComfyUI) finds a CUDA GPU."""
    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)  # noqa: S603
    if done.returncode not in (0, 3):
        raise RuntimeError(f"{python} could not import torch to tell whether it has a GPU:\n{done.stderr[-2000:]}")
    return done.returncode == 0


def host_device_args(python: str) -> list[str]:
    """ComfyUI's device option for the test servers: none (its default memory mode) on the GPU, ``--cpu`` without."""
    return ["--cpu"] if choose_device(os.environ.get("PBE_HOST_DEVICE"), cuda_available(python)) == "cpu" else []


class PromptRejected(Exception):
    """POST /prompt answered 400: the prompt failed validation. ``.body`` holds the server's JSON."""

    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body


@contextlib.contextmanager
def _rejected_as_prompt_rejected():
    """HTTP 400 from the client (a prompt that failed validation) as :class:`PromptRejected` with the server's JSON."""
    try:
        yield
    except ServerError as e:
        if e.status == 400:
            raise PromptRejected(e.body if e.body is not None else {"raw": str(e)}) from None
        raise


class ComfyServer(PrivateComfyUI):
    """The pack's own private ComfyUI (``pbe_core.client.embedded``, what the client's ``--comfyui`` starts) on the
    machine's device (:func:`host_device_args`) with latent previews, plus the HTTP calls the tests make."""

    def __init__(self, comfy_path: str | os.PathLike, workdir: Path, models: dict[str, Path] | None = None,
                 extra_packs: dict[str, Path] | None = None, python: str | None = None, extra_args=(),
                 env: dict[str, str] | None = None, popen_kwargs: dict | None = None, newer_host: bool | None = None):
        python = python or sys.executable
        #: start through the newer-host launcher (None: as PBE_NEWER_HOST says)
        self.newer_host = newer_host_emulation.enabled() if newer_host is None else newer_host
        super().__init__(
            comfy_path, python=python, models=models, extra_packs=extra_packs,
            extra_args=[*host_device_args(python), "--preview-method", "latent2rgb", *extra_args], workdir=workdir,
            env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}, popen_kwargs=popen_kwargs,
        )  # fmt: skip
        self.base = self.base_url
        self.client_id = uuid.uuid4().hex

    def command(self) -> list[str]:
        cmd = super().command()
        if self.newer_host:  # the launcher runs main.py itself, after installing the patches
            i = cmd.index("main.py")
            cmd[i:i + 1] = [newer_host_emulation.__file__, "main.py"]
        return cmd

    def start(self, timeout: float = 180.0) -> ComfyServer:
        super().start(timeout)
        return self

    # --- HTTP: the product's client (pbe_core/client/api.py) ----------------------------------------------------------
    @functools.cached_property
    def http(self) -> ComfyClient:
        """The client the pack's users have, on this server with this harness's client id (no progress bar)."""
        return ComfyClient(self.base, self.client_id, progress=False)

    def _request(self, path: str, data: bytes | None = None, headers=None, timeout: float = 60):
        """The raw answer; ServerError (``.status``, ``.body``) for an HTTP error, ServerUnreachable without one."""
        return self.http.request(path, data, headers, timeout)

    def get_json(self, path: str, timeout: float = 60):
        return self.http.get_json(path, timeout)

    def post_json(self, path: str, body: dict, timeout: float = 60):
        """PromptRejected (with the server's JSON) for HTTP 400, ServerError for another HTTP error."""
        with _rejected_as_prompt_rejected():
            return self.http.post_json(path, body, timeout)

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        client = self.http if client_id is None else ComfyClient(self.base, client_id, progress=False)
        with _rejected_as_prompt_rejected():
            return client.queue(prompt)

    def history(self, prompt_id: str) -> dict | None:
        return self.http.history(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Poll /history until the prompt has finished (success, error or interruption); return its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry:  # the server writes a history entry only when the prompt has ended
                return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def interrupt(self) -> None:
        """Interrupt whatever runs (the client's ``cancel`` targets one prompt)."""
        self.post_json("/interrupt", {})

    def queue_state(self) -> dict:
        return self.get_json("/queue")

    def upload(self, name: str, data: bytes, kind: str = "image", extra: dict | None = None) -> dict:
        """POST /upload/image or /upload/mask into the input folder itself (not the client's subfolder), so that a
        workflow names the file as ``name``."""
        return self.http.upload(kind, name, data, {"subfolder": "", **(extra or {})})

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        return self.http.view({"filename": filename, "subfolder": subfolder, "type": folder_type})


@contextlib.contextmanager
def temporary_server(prefix: str = "pbe-host-", **kwargs):
    """A ComfyServer (``COMFYUI_PATH``) in a fresh temporary folder: started, then stopped and the folder removed."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    server = ComfyServer(os.environ["COMFYUI_PATH"], work, **kwargs)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def status_messages(entry: dict) -> dict[str, dict]:
    """``{message type: payload}`` from a history entry's status messages (execution_error, ...)."""
    return {m[0]: m[1] for m in entry.get("status", {}).get("messages", [])}


def execution_error(entry: dict) -> str | None:
    """The exception message of a failed prompt, or None if it succeeded."""
    err = status_messages(entry).get("execution_error")
    return None if err is None else f"{err.get('exception_type')}: {err.get('exception_message')}"
