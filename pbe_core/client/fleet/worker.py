"""The fleet's worker: one Ray actor that owns one headless ComfyUI and does one row at a time with the single-server
client's code (``fleet`` package docstring). Ray itself is not imported here: the driver makes the class an actor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..api import ComfyClient
from ..embedded import PACK_DIR, EmbeddedError, PrivateComfyUI
from ..errors import ClientError, ServerUnreachable
from ..jobs import execute
from ..settings import Job

log = logging.getLogger("pbe_core.client")

#: times a worker starts its private ComfyUI again after it exited, before the worker is given up
WORKER_RESTARTS = 2
#: seconds a worker's ComfyUI may take to start
START_TIMEOUT = 600.0


@dataclass
class WorkerSpec:
    """One worker: a private ComfyUI (``comfyui`` set) or a running one (``server`` set). Paths are as seen on the
    worker's machine (the same as here on a cluster whose machines share a layout)."""

    label: str
    server: str | None = None
    comfyui: str | None = None
    python: str | None = None
    comfy_args: list[str] = field(default_factory=list)
    model_name: str | None = None
    model_path: str | None = None
    workdir: str | None = None  # the private ComfyUI's folder (kept); None: a temporary one, removed by stop()
    threads: int | None = None  # OMP_NUM_THREADS of a CPU worker's ComfyUI
    timeout: float = 600.0
    reconnect_wait: float = 120.0
    client_id: str | None = None  # for /prompt and /ws; the driver finds the worker's prompts on a server by it


class ComfyUIDied(Exception):
    """The worker's private ComfyUI exited; the row it ran is lost and goes to another worker."""


class WorkerClient(ComfyClient):
    """The single-server client, telling apart a private ComfyUI that exited (no use waiting: :class:`ComfyUIDied`)
    from one that is slow to answer, and noting every prompt id it queues (the report's tries)."""

    def __init__(self, *args, server: PrivateComfyUI | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.server = server
        self.queued: list[str] = []

    def queue(self, prompt: dict, prompt_id: str | None = None) -> str:
        prompt_id = prompt_id or self.new_prompt_id()
        self.queued.append(prompt_id)  # before POST: a prompt cut off mid-request may still have been queued
        return super().queue(prompt, prompt_id)

    def check_server(self) -> None:
        # at every try: a SIGKILLed ComfyUI can refuse connections a moment before its process has exited
        if self.server is not None and not self.server.alive():
            raise ComfyUIDied(f"its ComfyUI exited (status {self.server.proc.returncode})")

    def wait_for_server(self, error: Exception) -> None:
        self.check_server()
        super().wait_for_server(error)


class FleetWorker:
    """One Ray actor owning one headless ComfyUI (module docstring). Every method returns a plain dict.

    ``start()`` -> ``{"ok", "error", "where"}``; ``run(job, prompt, inputs)`` -> ``{"status": "done"|"failed"|"lost",
    "outputs": [(suffix, bytes)], "error", "prompt_ids", "sent", "seconds"}`` ("lost": the worker's ComfyUI is gone,
    "sent": the row had reached it); ``restart()`` like ``start()``; ``stop()`` stops a private ComfyUI.

    The actor runs one method at a time (no thread pool): the private ComfyUI is started from the actor's main
    thread, and its parent-death signal (``embedded``) is tied to the thread that started it.
    """

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.server: PrivateComfyUI | None = None
        self.client: WorkerClient | None = None
        self.restarts = 0
        self.hung = False  # the private ComfyUI runs but stopped answering: restart() ends it first
        logging.basicConfig(level=logging.INFO, format=f"{spec.label}: %(message)s", stream=sys.stderr)

    def __repr__(self) -> str:  # Ray's log prefix and dashboard show it
        return f"FleetWorker({self.spec.label})"

    def where(self) -> dict:
        where = {"host": socket.gethostname(), "pid": os.getpid()}
        with contextlib.suppress(Exception):
            import ray

            where["node"] = ray.get_runtime_context().get_node_id()
            where["gpus"] = [str(g) for g in ray.get_gpu_ids()]
        if self.server is not None:
            where["address"] = self.server.base_url
            where["log"] = str(self.server.log_path)
        elif self.spec.server:
            where["address"] = self.spec.server
        return where

    def start(self) -> dict:
        spec = self.spec
        if self.client is not None:  # already started (the driver asks again after Ray restarted the actor)
            return {"ok": True, "error": None, "where": self.where()}
        try:
            if spec.server:
                client = WorkerClient(spec.server, spec.client_id, spec.timeout, progress=False,
                                      reconnect_wait=spec.reconnect_wait)  # fmt: skip
                client.request("/system_stats", timeout=30)
            else:
                if not (Path(PACK_DIR) / "nodes").is_dir():
                    raise EmbeddedError(f"the pack is not at {PACK_DIR} on {socket.gethostname()}; install it at the "
                                        f"same path on every machine of the cluster")
                models = {spec.model_name: spec.model_path} if spec.model_path else {}
                env = {"OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)} if spec.threads else {}
                if spec.workdir:
                    Path(spec.workdir).mkdir(parents=True, exist_ok=True)
                self.server = PrivateComfyUI(spec.comfyui, python=spec.python, models=models,
                                             extra_args=spec.comfy_args, env=env, workdir=spec.workdir)  # fmt: skip
                self.server.start(timeout=START_TIMEOUT, progress=log.info)
                client = WorkerClient(self.server.base_url, spec.client_id, spec.timeout, progress=False,
                                      reconnect_wait=spec.reconnect_wait, server=self.server)  # fmt: skip
        except (EmbeddedError, ClientError, ServerUnreachable, OSError) as e:
            self._stop_server()
            return {"ok": False, "error": f"{e} (on {socket.gethostname()})", "where": self.where()}
        self.client = client
        return {"ok": True, "error": None, "where": self.where()}

    def run(self, job: Job, prompt: dict, inputs) -> dict:
        started = time.monotonic()
        client = self.client
        out = {"status": "failed", "outputs": [], "error": None, "prompt_ids": [], "sent": False, "seconds": 0.0}
        if client is None:
            out.update(status="lost", error="the worker has no ComfyUI (not started)")
            return out
        client.queued = []
        if self.server is not None and not self.server.alive():
            out.update(status="lost", error=f"its ComfyUI had exited (status {self.server.proc.returncode}) before the "
                                            f"row was sent")  # fmt: skip
            return out
        try:
            out["outputs"] = execute(client, job, prompt, inputs)
            out["status"] = "done"
        except ComfyUIDied as e:
            out.update(status="lost", error=str(e))
        except ServerUnreachable as e:  # gone for --reconnect-wait seconds (ServerGone); a private one is hung
            out.update(status="lost", error=str(e))
            self.hung = self.server is not None
        except ClientError as e:  # the server refused or failed the row, or it timed out: the row's own failure
            out.update(status="failed", error=str(e))
        finally:
            out["prompt_ids"] = list(client.queued)
            out["sent"] = bool(client.queued)
            out["seconds"] = round(time.monotonic() - started, 3)
        return out

    def restart(self) -> dict:
        """Start the private ComfyUI again after it exited (same port and folders), at most WORKER_RESTARTS times."""
        if self.server is None:
            return {"ok": False, "error": "an attached server cannot be started from here", "where": self.where()}
        if self.server.alive():
            if not self.hung:
                return {"ok": True, "error": None, "where": self.where()}
            self.server.kill()  # it runs but has not answered for --reconnect-wait seconds
        self.hung = False
        status = self.server.proc.returncode if self.server.proc is not None else None
        if self.restarts >= WORKER_RESTARTS:
            return {"ok": False, "error": f"its ComfyUI exited (status {status}) after {self.restarts} restarts; the "
                                          f"end of its log:\n{self.server.log()[-1500:]}", "where": self.where()}
        self.restarts += 1
        try:
            self.server.restart(timeout=START_TIMEOUT, progress=log.info)
        except EmbeddedError as e:
            return {"ok": False, "error": str(e), "where": self.where()}
        return {"ok": True, "error": None, "where": self.where()}

    def stop(self) -> None:
        self._stop_server()

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.client = None
