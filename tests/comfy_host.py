"""Drive a real ComfyUI, started headless as a subprocess, through its HTTP API only (as a user's client would).

Shape taken from ComfyUI's own integration tests (``tests/execution/``): start ``main.py --cpu`` on a free loopback
port, post prompts, read ``/history`` and ``/view``. The server gets its own base directory (models, input, output,
temp, user) so a test run touches nothing of the ComfyUI checkout, and an ``--extra-model-paths-config`` file that
adds the pack (custom_nodes) and the fixture checkpoints (paint_by_example), as a user's extra_model_paths.yaml would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-paint-by-example"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptRejected(Exception):
    """POST /prompt answered 400: the prompt failed validation. ``.body`` holds the server's JSON."""

    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body


class ComfyServer:
    def __init__(self, comfy_path: str | os.PathLike, workdir: Path, models: dict[str, Path] | None = None,
                 extra_packs: dict[str, Path] | None = None, python: str | None = None, extra_args=(),
                 env: dict[str, str] | None = None, popen_kwargs: dict | None = None):
        self.comfy_path = Path(comfy_path)
        self.workdir = Path(workdir)
        self.python = python or sys.executable
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.log_path = self.workdir / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})  # e.g. TMPDIR
        self.popen_kwargs = dict(popen_kwargs or {})  # e.g. unprivileged.popen_kwargs()
        base = self.workdir / "base"
        for sub in ("models", "input", "output", "temp", "user", "custom_nodes"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        nodes_dir = self.workdir / "extra_custom_nodes"
        nodes_dir.mkdir(exist_ok=True)
        packs = {PACK_NAME: REPO, **(extra_packs or {})}
        for name, src in packs.items():
            link = nodes_dir / name
            if not link.exists():
                link.symlink_to(src, target_is_directory=True)
        self.models_dir = self.workdir / "extra_models"
        (self.models_dir / "paint_by_example").mkdir(parents=True, exist_ok=True)
        for name, src in (models or {}).items():
            link = self.models_dir / "paint_by_example" / name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(src, target_is_directory=Path(src).is_dir())
        self.input_dir = base / "input"
        self.output_dir = base / "output"
        self.temp_dir = base / "temp"
        self.yaml = self.workdir / "extra_model_paths.yaml"
        self.yaml.write_text(
            "pbe_test:\n"
            f"  base_path: {self.workdir}\n"
            "  custom_nodes: extra_custom_nodes\n"
            "  paint_by_example: extra_models/paint_by_example\n"
        )
        self.base_dir = base

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> ComfyServer:
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("OMP_NUM_THREADS", "2")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        cmd = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir),
            "--extra-model-paths-config", str(self.yaml), "--database-url", "sqlite:///:memory:",
            "--preview-method", "latent2rgb", *self.extra_args,
        ]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT, env=env, **self.popen_kwargs
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log()[-4000:]}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- HTTP ------------------------------------------------------------------------------------------------------
    def _request(self, path: str, data: bytes | None = None, headers=None, timeout: float = 60):
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback URL we built
            return r.read()

    def get_json(self, path: str, timeout: float = 60):
        return json.loads(self._request(path, timeout=timeout))

    def post_json(self, path: str, body: dict, timeout: float = 60):
        data = json.dumps(body).encode()
        try:
            raw = self._request(path, data, {"Content-Type": "application/json"}, timeout)
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                parsed = json.loads(payload)
            except ValueError:
                parsed = {"raw": payload.decode(errors="replace")}
            if e.code == 400:
                raise PromptRejected(parsed) from None
            raise
        return json.loads(raw) if raw else None

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        body = {"prompt": prompt, "client_id": client_id or self.client_id}
        return self.post_json("/prompt", body)["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

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
        self.post_json("/interrupt", {})

    def queue_state(self) -> dict:
        return self.get_json("/queue")

    def upload(self, name: str, data: bytes, kind: str = "image", extra: dict | None = None) -> dict:
        """POST /upload/image or /upload/mask (multipart), as the web UI does."""
        boundary = uuid.uuid4().hex
        fields = {"overwrite": "true", **(extra or {})}
        parts = []
        for k, v in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        raw = self._request(f"/upload/{kind}", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(raw)

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        return self._request(f"/view?{q}")


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
