"""Running the headless client (``python -m pbe_core.client``) against a ComfyUI, as the host tests of the client and
of the fleet (``batch --ray``) do: one run to its end (:func:`client`) or in the background, its output read as it
comes (:class:`Background`); Ctrl-C as a terminal sends it (:func:`ctrl_c`, :data:`AS_IN_A_TERMINAL`); the inputs
(photos with masks, a row CSV with seeds new to the server, a workflow whose rows wait at the probe pack's gate until
the test lets them go, the config that adds the probe pack to a private ComfyUI); and what a run left (the server's
/history, the output folder's files)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from comfy_host import REPO
from host_util import BOX, SIZE
from images import make_photo, png_bytes

#: tiny-model settings: few steps, edit the 128-px source whole (the tiny UNet wants sides that are multiples of 64)
TINY = ["--model", "original.ckpt", "--steps", "2", "--set", "Paint by Example.working_size=0"]


def client(server, *args, timeout=600, port=None, **popen):
    cmd = [sys.executable, "-m", "pbe_core.client", *args, "--server", f"127.0.0.1:{port or server.port}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, **popen)


# --- the client in the background, and Ctrl-C as a terminal sends it -------------------------------------------------
class Background:
    """The client started in the background, its output collected line by line as it comes."""

    def __init__(self, cmd: list[str], **popen):
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     **popen)  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]  # fmt: skip
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until a line of stderr contains ``text``."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.err)):
            assert self.proc.poll() is None, f"the client ended before saying {text!r}:\n{''.join(self.err)[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{''.join(self.err)[-3000:]}"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(10)
        return subprocess.CompletedProcess(self.proc.args, rc, "".join(self.out), "".join(self.err))


def background(port: int, *args, **popen) -> Background:
    """The client with ``args`` against the ComfyUI at ``port``, in the background."""
    return Background([sys.executable, "-m", "pbe_core.client", *args, "--server", f"127.0.0.1:{port}"], **popen)


def wait_for_file(run: "Background", path: Path, timeout: float = 300) -> None:
    """Until ``path`` exists (a gate says its row reached it), while the client runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert run.proc.poll() is None, f"the client ended before {path.name}:\n{''.join(run.err)[-3000:]}"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s:\n{''.join(run.err)[-3000:]}"
        time.sleep(0.02)


def ctrl_c(run: "Background") -> None:
    """SIGINT to the client's whole process group, as a terminal's Ctrl-C sends it (the run has its own session:
    started with :data:`AS_IN_A_TERMINAL`)."""
    os.killpg(run.proc.pid, signal.SIGINT)


def _sigint_default() -> None:  # pragma: no cover - runs in the child between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: Popen options for a client that the test interrupts as a terminal would: its own process group, and Ctrl-C's
#: default action even where the test itself runs with SIGINT ignored (a background job of a non-interactive shell)
AS_IN_A_TERMINAL = {"start_new_session": True, "preexec_fn": _sigint_default}


# --- inputs: photos with masks, row CSVs, gated workflows -------------------------------------------------------------
def write_photos(folder: Path, n: int) -> list[tuple[Path, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    y0, y1, x0, x1 = BOX
    for k in range(n):
        src, mask = folder / f"photo{k}.png", folder / f"photo{k}_mask.png"
        src.write_bytes(png_bytes(make_photo(SIZE, SIZE, 100 + k)))
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[y0:y1, x0:x1] = 255
        mask.write_bytes(png_bytes(m))
        out.append((src, mask))
    return out


def rows_csv(folder: Path, n: int, exemplar: Path) -> Path:
    """A CSV of ``n`` rows; seeds new to the server, so that no prompt is answered from ComfyUI's cache (at once,
    with no progress to wait for)."""
    photos = write_photos(folder / "in", n)
    seed = uuid.uuid4().int % 10**9
    rows = ["source,mask,exemplar,seed"] + [f"in/{s.name},in/{m.name},{exemplar.name},{seed + k}"
                                            for k, (s, m) in enumerate(photos)]  # fmt: skip
    (folder / exemplar.name).write_bytes(exemplar.read_bytes())
    (folder / "rows.csv").write_text("\n".join(rows) + "\n")
    return folder / "rows.csv"


def row_names(n: int) -> list[str]:
    return [f"{k + 1:03d}_photo{k}" for k in range(n)]


def seeds(rows: Path) -> list[int]:
    return [int(line.rsplit(",", 1)[1]) for line in rows.read_text().splitlines()[1:]]


def gated_workflow(folder: Path) -> tuple[Path, list[str]]:
    """The one-node edit workflow with the probe pack's ``PBETest_Gate`` (title "Gate") on the source image: each row
    waits at its gate until the test writes ``gate/go-<seed>``; the file and the options that point the gates at the
    folder ``gate``."""
    prompt = json.loads((REPO / "workflows" / "api" / "pbe_one_node_edit.json").read_text())
    prompt["6"] = {"inputs": {"image": ["2", 0], "seed": 0, "folder": ""}, "class_type": "PBETest_Gate",
                   "_meta": {"title": "Gate"}}  # fmt: skip
    prompt["4"]["inputs"]["image"] = ["6", 0]
    path, gate = folder / "gated.json", folder / "gate"
    gate.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prompt))
    return path, ["--workflow", str(path), "--set", f"Gate.folder={json.dumps(str(gate))}"]


def probe_config(folder: Path) -> Path:
    """An extra_model_paths file that adds the probe pack (tests/support/host_probe) to a private ComfyUI, for
    --comfy-args."""
    packs = folder / "probe_packs"
    packs.mkdir(parents=True, exist_ok=True)
    (packs / "pbe_test_probe").symlink_to(Path(__file__).resolve().parent / "host_probe")
    config = folder / "probe_paths.yaml"
    config.write_text(f"pbe_probe:\n  base_path: {json.dumps(str(folder))}\n  custom_nodes: probe_packs\n")
    return config


# --- what the server and the output folder recorded ------------------------------------------------------------------
def prompt_history(server) -> dict:
    return server.get_json("/history")


def file_stamps(out: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.iterdir()) if p.is_file()}
