"""The headless client (``python -m pbe_core.client``) against the live headless ComfyUI, as a user runs it."""

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import unprivileged
from client_runs import (
    AS_IN_A_TERMINAL,
    TINY,
    Background,
    background,
    client,
    ctrl_c,
    file_stamps,
    gated_workflow,
    probe_config,
    prompt_history,
    row_names,
    rows_csv,
    seeds,
    wait_for_file,
    write_photos,
)
from comfy_host import REPO, free_port
from host_util import BOX, SIZE
from images import png_bytes

pytestmark = pytest.mark.host


def test_batch_of_five_with_one_broken_row(comfy_server, tmp_path, exemplar):
    """5 CSV rows, row 3 with an all-black mask: 4 results, and the report names row 3 with the server's reason."""
    photos = write_photos(tmp_path / "in", 5)
    broken_src, broken_mask = photos[2]
    broken_mask.write_bytes(png_bytes(np.zeros((SIZE, SIZE), np.uint8)))
    rows = ["source,mask,exemplar,seed"] + [
        f"in/{s.name},in/{m.name},{exemplar.name},{k}" for k, (s, m) in enumerate(photos)
    ]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = client(comfy_server, "batch", str(tmp_path / "rows.csv"), "-o", str(out), *TINY)
    assert r.returncode == 1, r.stderr
    results = sorted(p.name for p in out.glob("*.png"))
    assert len(results) == 4, (results, r.stdout, r.stderr)
    assert "003_photo2.png" not in results
    report = json.loads((out / "report.json").read_text())
    assert (report["succeeded"], report["failed"]) == (4, 1)
    (bad,) = [row for row in report["rows"] if not row["ok"]]
    assert bad["name"] == "003_photo2"
    # the server's reason: PBE_Sampler's own error message, relayed from the execution_error
    assert "PBE_Sampler" in bad["error"] and "Mask is empty" in bad["error"]
    assert "4 of 5 rows succeeded" in r.stdout and "FAILED 003_photo2" in r.stdout
    assert "[" in r.stderr and "2/2" in r.stderr  # progress from /ws
    # the results are edits: inside the region they differ from the source, outside (beyond the feather) they don't
    from PIL import Image

    src = np.asarray(Image.open(photos[0][0])).astype(int)
    res = np.asarray(Image.open(out / "001_photo0.png")).astype(int)
    y0, y1, x0, x1 = BOX
    far = np.ones((SIZE, SIZE), bool)
    far[y0 - 9:y1 + 9, x0 - 9:x1 + 9] = False
    assert np.array_equal(res[far], src[far])
    assert np.abs(res[y0:y1, x0:x1] - src[y0:y1, x0:x1]).mean() > 1


def test_folder_batch_skips_rows_without_a_mask(comfy_server, tmp_path, exemplar):
    photos = write_photos(tmp_path / "in", 2)
    photos[1][1].unlink()
    r = client(comfy_server, "batch", str(tmp_path / "in"), "--exemplar", str(exemplar), "-o", str(tmp_path / "out"),
               "--no-progress", *TINY)
    assert r.returncode == 1
    assert (tmp_path / "out" / "photo0.png").is_file()
    assert "FAILED photo1: no mask: expected photo1_mask.png" in r.stdout


def test_edit_with_the_modular_workflow_and_overrides(comfy_server, tmp_path, exemplar):
    (src, mask), = write_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "-o", str(out), "--workflow",
               "pbe_modular_graph", "--model", "original.ckpt", "--steps", "2", "--cfg", "3.5", "--sampler", "euler",
               "--seed", "11", "--client-id", f"pbe-test-{uuid.uuid4().hex[:6]}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out / "photo0.png")
    assert (out / "photo0.png").is_file()


def test_several_exemplars_give_one_result_each(comfy_server, tmp_path, exemplar):
    (src, mask), = write_photos(tmp_path / "in", 1)
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), str(exemplar), str(exemplar),
               "-o", str(tmp_path / "out"), "--workflow", "pbe_several_exemplars", *TINY)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"photo0_{k}.png" for k in (1, 2, 3)]


def test_a_batch_with_several_exemplars(comfy_server, tmp_path, exemplar):
    """pbe_several_exemplars in a batch: a CSV row with exemplar, exemplar2, exemplar3 columns, and a folder with
    --exemplar given three times; each row saves one result per exemplar."""
    (src, mask), = write_photos(tmp_path / "in", 1)
    (tmp_path / "rows.csv").write_text(f"source,mask,exemplar,exemplar2,exemplar3\nin/{src.name},in/{mask.name},"
                                       f"{exemplar.name},{exemplar.name},{exemplar.name}\n")  # fmt: skip
    several = ["--workflow", "pbe_several_exemplars", "--no-progress", *TINY]
    r = client(comfy_server, "batch", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "csv_out"), *several)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "csv_out").glob("*.png")) == [f"001_photo0_{k}.png" for k in (1, 2, 3)]
    r = client(comfy_server, "batch", str(tmp_path / "in"), *(["--exemplar", str(exemplar)] * 3), "-o",
               str(tmp_path / "folder_out"), *several)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "folder_out").glob("*.png")) == [f"photo0_{k}.png" for k in (1, 2, 3)]


def test_errors_exit_non_zero_with_the_servers_message(comfy_server, tmp_path, exemplar):
    (src, mask), = write_photos(tmp_path / "in", 1)
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "--model", "missing.safetensors",
               "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    # the validation error (HTTP 400, node_errors) as the server words it
    assert "PBE_LoadModel" in r.stderr and "missing.safetensors" in r.stderr and "was not found" in r.stderr
    # a mask of the wrong size is caught before anything is queued
    (tmp_path / "small_mask.png").write_bytes(png_bytes(np.full((64, 64), 255, np.uint8)))
    r = client(comfy_server, "edit", str(src), str(tmp_path / "small_mask.png"), str(exemplar), *TINY)
    assert r.returncode == 1 and "is 64x64 but the source" in r.stderr
    # an unreachable server
    r = subprocess.run([sys.executable, "-m", "pbe_core.client", "edit", str(src), str(mask), str(exemplar),
                        "--server", "127.0.0.1:9"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot reach ComfyUI" in r.stderr


def test_timeout_cancels_the_prompt_and_the_server_goes_on(comfy_server, tmp_path, exemplar):
    (src, mask), = write_photos(tmp_path / "in", 1)
    slow = ["--model", "original.ckpt", "--steps", "999", "--set", "Paint by Example.working_size=0"]
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "--timeout", "3", "--no-progress", *slow,
               "-o", str(tmp_path / "slow"))
    assert r.returncode == 1 and "timed out after 3 s" in r.stderr
    r = client(comfy_server, "edit", str(src), str(mask), str(exemplar), "-o", str(tmp_path / "out"), *TINY)
    assert r.returncode == 0, r.stderr


def _private_servers() -> list[int]:
    """Pids of running private ComfyUIs of this pack (their --base-directory is a pbe-comfyui-* folder)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"main.py" in cmd and any(b"pbe-comfyui-" in c for c in cmd):
                pids.append(int(d))
    return pids


def test_one_command_edits_a_photo_with_a_private_comfyui(tmp_path, exemplar, fixture_paths):
    """The README's edit command: no server running; --comfyui starts a private one (here without --cpu: it finds
    no GPU and starts again with --cpu, as it says), edits, stops it, and leaves only the result."""
    (src, mask), = write_photos(tmp_path / "in", 1)
    out = tmp_path / "out"
    before = set(_private_servers())
    folders = set(Path(tempfile.gettempdir()).glob("pbe-comfyui-*"))
    r = subprocess.run(
        [sys.executable, "-m", "pbe_core.client", "edit", str(src), str(mask), str(exemplar), "--model",
         str(fixture_paths["original.ckpt"]), "--comfyui", os.environ["COMFYUI_PATH"], "-o", str(out),
         "--steps", "2", "--set", "Paint by Example.working_size=0"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip() == str(out / "photo0.png")
    assert sorted(p.name for p in out.iterdir()) == ["photo0.pbe.json", "photo0.png"]  # the result and its sidecar
    assert "starting a private ComfyUI" in r.stderr and "ComfyUI is ready after" in r.stderr
    assert "[" in r.stderr and "2/2" in r.stderr  # sampling progress from /ws
    assert set(_private_servers()) <= before  # no ComfyUI left running
    assert set(Path(tempfile.gettempdir()).glob("pbe-comfyui-*")) <= folders  # nor its folder


def test_without_a_comfyui_the_client_says_what_to_give(tmp_path, exemplar):
    (src, mask), = write_photos(tmp_path / "in", 1)
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    r = subprocess.run([sys.executable, "-m", "pbe_core.client", "edit", str(src), str(mask), str(exemplar)],
                       cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1
    assert "no ComfyUI to use: give --comfyui /path/to/ComfyUI" in r.stderr and "--server HOST:PORT" in r.stderr


# --- outages, reruns, full and read-only folders, shared client ids ----------------------------------------------------
class FlakyNetwork:
    """A TCP relay between the client and ComfyUI that can cut the network: :meth:`cut` closes every connection and
    stops listening (new connections are refused), :meth:`restore` listens again on the same port. ComfyUI itself
    runs on meanwhile, as across a real network outage."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.listener = None
        self.restore()

    def restore(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        s.settimeout(0.2)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while self.listener is s:
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            with contextlib.suppress(OSError):
                x.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        s, self.listener = self.listener, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        with self.lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self.conns.clear()


@pytest.fixture
def server(comfy_server):
    """The session's server, brought back after a test that killed it."""
    yield comfy_server
    if not comfy_server.alive():
        comfy_server.restart()


def test_a_batch_survives_a_server_restart_and_a_rerun_redoes_nothing(server, tmp_path, exemplar):
    """SIGKILL ComfyUI while row 3 of 6 runs, start it again on the same port (about 15 s later): the client waits,
    says so, queues row 3 again (the server lost it), and ends with all 6 results, each once. The same command again
    does nothing: every row is skipped and no prompt reaches the server."""
    rows = rows_csv(tmp_path, 6, exemplar)
    out = tmp_path / "out"
    args = ("batch", str(rows), "-o", str(out), *TINY)
    run = background(server.port, *args)
    run.wait_for("003_photo2 Paint by Example [")  # row 3 is sampling
    server.kill()
    server.restart()
    r = run.finish()
    assert r.returncode == 0, r.stderr[-4000:]
    assert "lost the connection to ComfyUI" in r.stderr and "is back after" in r.stderr
    assert "try 1: not back" in r.stderr  # each try is shown
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(6)]
    assert not list(out.glob(".*"))  # no temporary file left
    report = json.loads((out / "report.json").read_text())
    assert [row["name"] for row in report["rows"]] == row_names(6)
    assert [row["status"] for row in report["rows"]] == ["done"] * 6
    assert (report["succeeded"], report["failed"], report["stopped"]) == (6, 0, None)

    before, stamps = len(prompt_history(server)), file_stamps(out)
    r = client(server, *args)
    assert r.returncode == 0, r.stderr
    assert "6 of 6 rows succeeded (6 already done)" in r.stdout
    assert len(prompt_history(server)) == before  # nothing queued
    assert {k: v for k, v in file_stamps(out).items() if k != "report.json"} == \
        {k: v for k, v in stamps.items() if k != "report.json"}  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["rows"]] == ["skipped"] * 6


def test_a_server_that_stays_away_leaves_a_report_and_the_rerun_does_only_the_rest(server, tmp_path, exemplar):
    """ComfyUI killed for good while row 3 of 6 waits at its gate (tests/support/host_probe): rows 1-2 done, row 3
    failed and rows 4-6 not tried, each with the reason; exit status 2. With the server back, the same command does rows
    3-6 only (4 prompts)."""
    rows = rows_csv(tmp_path, 6, exemplar)
    seed = seeds(rows)
    _, gated = gated_workflow(tmp_path)  # row 3 waits at its gate: it cannot finish before the server is killed
    for s in seed[:2]:
        (tmp_path / "gate" / f"go-{s}").touch()
    out = tmp_path / "out"
    args = ("batch", str(rows), "-o", str(out), "--no-progress", "--reconnect-wait", "4", *TINY, *gated)
    run = background(server.port, *args)
    wait_for_file(run, tmp_path / "gate" / f"started-{seed[2]}")
    server.kill()
    r = run.finish()
    assert r.returncode == 2, r.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["rows"]] == ["done"] * 2 + ["failed"] * 4
    gone = f"ComfyUI at http://127.0.0.1:{server.port} went away and did not come back within 4 s"
    assert report["rows"][2]["error"].startswith(gone)
    assert all(row["error"].startswith(f"not tried: {gone}") for row in report["rows"][3:])
    assert report["stopped"].startswith(gone) and (report["succeeded"], report["failed"]) == (2, 4)
    assert "2 of 6 rows succeeded" in r.stdout and "FAILED 006_photo5: not tried" in r.stdout
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(2)]

    server.restart()
    for s in seed[2:]:
        (tmp_path / "gate" / f"go-{s}").touch()
    before, stamps = len(prompt_history(server)), file_stamps(out)
    r = client(server, *args)
    assert r.returncode == 0, r.stderr
    assert "6 of 6 rows succeeded (2 already done)" in r.stdout
    assert len(prompt_history(server)) == before + 4
    assert all(file_stamps(out)[name] == stamps[name] for name in ("001_photo0.png", "002_photo1.png"))


def test_a_network_outage_follows_the_queued_prompt_through_history(server, tmp_path, exemplar):
    """The network between client and ComfyUI is cut for 3 s while row 2 samples; the server runs on. The client
    reconnects and finds row 2's prompt through /history: every row queued exactly once."""
    rows = rows_csv(tmp_path, 4, exemplar)
    out = tmp_path / "out"
    client_id = f"pbe-outage-{uuid.uuid4().hex[:8]}"
    net = FlakyNetwork(server.port)
    try:
        run = background(net.port, "batch", str(rows), "-o", str(out), "--client-id", client_id, *TINY)
        run.wait_for("002_photo1 Paint by Example [")
        net.cut()
        time.sleep(3)
        net.restore()
        r = run.finish()
    finally:
        net.cut()
    assert r.returncode == 0, r.stderr[-4000:]
    assert "lost the connection to ComfyUI" in r.stderr and "is back after" in r.stderr
    assert "queueing the row again" not in r.stderr
    ours = [e for e in prompt_history(server).values() if e["prompt"][3].get("client_id") == client_id]
    assert len(ours) == 4
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(4)]


@pytest.mark.parametrize("where", ["server", "private"])
def test_ctrl_c_cancels_the_prompt_and_writes_the_report(server, tmp_path, exemplar, fixture_paths, where):
    """Four rows, each held at a gate until the test lets it go: row 1 is let go, row 2 waits at its gate (it cannot
    finish before the signal) when Ctrl-C reaches the client's process group. The client cancels row 2's prompt on
    its ComfyUI (the gate sees the host's interrupt; with --server /history says so too), keeps row 1's result,
    writes the report and exits 130. The private ComfyUI (--comfyui) runs in its own process group, so the Ctrl-C
    does not end it before the cancel. The same command then does rows 2-4 only."""
    rows = rows_csv(tmp_path, 4, exemplar)
    seed = seeds(rows)
    workflow, gated = gated_workflow(tmp_path)
    gate, out = tmp_path / "gate", tmp_path / "out"
    (gate / f"go-{seed[0]}").touch()
    cmd = [sys.executable, "-m", "pbe_core.client", "batch", str(rows), "-o", str(out), "--steps", "2",
           "--set", "Paint by Example.working_size=0", *gated]  # fmt: skip
    if where == "server":
        cmd += ["--model", "original.ckpt", "--server", f"127.0.0.1:{server.port}"]
    else:
        cmd += ["--model", str(fixture_paths["original.ckpt"]), "--comfyui", os.environ["COMFYUI_PATH"],
                f"--comfy-args=--cpu --extra-model-paths-config {probe_config(tmp_path)}"]  # fmt: skip
    before = len(prompt_history(server))
    run = Background(cmd, **AS_IN_A_TERMINAL)
    wait_for_file(run, gate / f"started-{seed[1]}")
    ctrl_c(run)
    r = run.finish(timeout=120)
    assert r.returncode == 130, r.stderr[-3000:]
    assert (gate / f"interrupted-{seed[1]}").exists(), r.stderr[-3000:]  # ComfyUI itself saw the interrupt
    assert "002_photo1: its prompt" in r.stderr and "was cancelled on the server" in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True
    assert [row["status"] for row in report["rows"]] == ["done", "failed", "failed", "failed"]
    assert report["rows"][1]["error"] == "interrupted (Ctrl-C) while it ran"
    assert all(row["error"] == "not tried: interrupted (Ctrl-C)" for row in report["rows"][2:])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("report")) == \
        ["001_photo0.pbe.json", "001_photo0.png"]  # fmt: skip
    if where == "server":
        history = prompt_history(server)
        assert len(history) == before + 2
        (cut,) = [e for e in history.values() if e["prompt"][2].get("6", {}).get("inputs", {}).get("seed") == seed[1]]
        assert "execution_interrupted" in [m[0] for m in cut["status"]["messages"]]
        assert not server.queue_state()["queue_running"] and not server.queue_state()["queue_pending"]

    for s in seed[1:]:
        (gate / f"go-{s}").touch()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 of 4 rows succeeded (1 already done)" in r.stdout
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(4)]
    if where == "server":
        assert len(prompt_history(server)) == before + 5


def test_a_second_ctrl_c_stops_at_once_and_leaves_no_half_written_file(server, tmp_path, exemplar):
    """Row 1 waits at its gate; the server is stopped (SIGSTOP: it answers nothing), so the cancel that the first
    Ctrl-C starts cannot finish. A second Ctrl-C ends the client at once (without waiting out the cancel's HTTP
    timeouts): exit 130, a whole report, no temporary file."""
    rows = rows_csv(tmp_path, 2, exemplar)
    seed = seeds(rows)
    _, gated = gated_workflow(tmp_path)
    out = tmp_path / "out"
    run = Background([sys.executable, "-m", "pbe_core.client", "batch", str(rows), "-o", str(out), *TINY, *gated,
                      "--server", f"127.0.0.1:{server.port}"], **AS_IN_A_TERMINAL)  # fmt: skip
    try:
        wait_for_file(run, tmp_path / "gate" / f"started-{seed[0]}")
        os.kill(server.proc.pid, signal.SIGSTOP)
        ctrl_c(run)
        run.wait_for("Ctrl-C again: stop at once")
        ctrl_c(run)
        r = run.finish(timeout=60)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        for s in seed:  # the prompt the cancel could not reach ends normally, before the next test
            (tmp_path / "gate" / f"go-{s}").touch()
        deadline = time.monotonic() + 120
        while server.queue_state()["queue_running"] or server.queue_state()["queue_pending"]:
            assert time.monotonic() < deadline, "the prompt let through its gate did not end"
            time.sleep(0.1)
    assert r.returncode == 130, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and [row["status"] for row in report["rows"]] == ["failed", "failed"]
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert "could not cancel" not in r.stderr  # cut short by the second Ctrl-C, not ended by the request's timeout


@contextlib.contextmanager
def _small_disk(path: Path, size: str = "300k"):
    """A tmpfs of ``size`` at ``path`` (mounted as root), unmounted after; None where mounting is not allowed."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _file_size_limit(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_a_full_output_folder_gives_a_clear_error_and_no_partial_file(server, tmp_path, exemplar):
    """A 300 KB tmpfs filled up to its last 8 KB (where this process may not mount, a 16 KB file-size limit:
    EFBIG). The server does row 1, its result does not fit: the error names the folder and the OS reason, no file
    named like a result is left (nor a temporary one), the batch stops and the report is written."""
    rows = rows_csv(tmp_path, 2, exemplar)
    with _small_disk(tmp_path / "disk") as disk:
        popen = {}
        if disk is not None:
            (disk / "filler").write_bytes(b"\0" * (300 - 8) * 1024)
            st = os.statvfs(disk)
            assert st.f_bavail * st.f_frsize <= 8 * 1024
            out, reason = disk / "out", "No space left on device [ENOSPC]; the disk is full"
        else:
            out, reason = tmp_path / "out", "File too large [EFBIG]"
            popen = {"preexec_fn": _file_size_limit(16 * 1024)}
        before = len(prompt_history(server))
        r = client(server, "batch", str(rows), "-o", str(out), "--no-progress", *TINY, **popen)
        assert r.returncode == 1, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        problem = f"cannot write 001_photo0.png into {out}: {reason}"
        assert problem in r.stderr
        assert len(prompt_history(server)) == before + 1  # the server did row 1; row 2 was not sent
        assert sorted(p.name for p in out.iterdir()) == ["report.json"]
        report = json.loads((out / "report.json").read_text())
        assert report["rows"][0]["error"].startswith(problem)
        assert report["rows"][1]["error"].startswith(f"not tried: {problem}")


def test_a_read_only_output_folder_is_refused_before_any_work(server, tmp_path, exemplar):
    """A read-only mount (where this process may not mount: a mode-555 folder, for a process without root's
    permission override, EACCES). Nothing is sent to the server; the report cannot go there and stderr says so;
    with --report elsewhere it is written."""
    rows = rows_csv(tmp_path, 2, exemplar)
    with _small_disk(tmp_path / "disk") as disk:
        popen = {}
        if disk is not None:
            out = disk / "out"
            out.mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            reason = "Read-only file system [EROFS]; it is on a read-only file system"
        else:
            out = tmp_path / "out"
            out.mkdir()
            out.chmod(0o555)
            popen, reason = unprivileged.popen_kwargs(), "Permission denied [EACCES]"
        before = len(prompt_history(server))
        r = client(server, "batch", str(rows), "-o", str(out), *TINY, **popen)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        problem = f"cannot write into the output folder {out}: {reason}"
        assert f"error: {problem}" in r.stderr
        assert f"error: the report was not written: cannot write report.json into {out}: {reason}" in r.stderr
        assert "0 of 2 rows succeeded; no report written" in r.stdout
        r = client(server, "batch", str(rows), "-o", str(out), "--report", str(tmp_path / "report.json"), *TINY,
                   **popen)  # fmt: skip
        assert r.returncode == 1
        report = json.loads((tmp_path / "report.json").read_text())
        assert all(row["error"].startswith(f"not tried: {problem}") for row in report["rows"])
        assert len(prompt_history(server)) == before
        assert list(out.iterdir()) == []


def test_two_runs_with_one_client_id_both_succeed(server, tmp_path, exemplar):
    """ComfyUI sends a client id's messages to the /ws opened last with it. A second run with the same --client-id
    starts while the first one's prompt samples: the first run's /ws goes silent. Both finish (no waiting out
    --timeout), and the shared id is named."""
    shared = f"pbe-shared-{uuid.uuid4().hex[:8]}"
    first = background(server.port, "batch", str(rows_csv(tmp_path / "a", 3, exemplar)), "-o", str(tmp_path / "a_out"),
                       "--client-id", shared, "--timeout", "60", *TINY)  # fmt: skip
    first.wait_for("001_photo0 Paint by Example [")
    second = background(server.port, "batch", str(rows_csv(tmp_path / "b", 2, exemplar)), "-o",
                        str(tmp_path / "b_out"), "--client-id", shared, "--timeout", "60", *TINY)  # fmt: skip
    a, b = first.finish(), second.finish()
    assert a.returncode == 0, a.stderr[-3000:]
    assert b.returncode == 0, b.stderr[-3000:]
    assert "timed out" not in a.stderr + b.stderr
    assert len(list((tmp_path / "a_out").glob("*.png"))) == 3 and len(list((tmp_path / "b_out").glob("*.png"))) == 2
    said = a.stderr + b.stderr  # which run notices depends on how their prompts interleave
    assert f"--client-id {shared} (ComfyUI sends a client id's messages only to the /ws opened last with it)" in said
    assert "Give each run its own --client-id, or leave it out." in said


def test_a_private_comfyui_that_dies_is_started_again(tmp_path, exemplar, fixture_paths):
    """--comfyui: the private ComfyUI is SIGKILLed while row 2 of 3 samples; the client starts it again (same port,
    same folders), queues row 2 again and finishes; afterwards no ComfyUI is left running."""
    rows = rows_csv(tmp_path, 3, exemplar)
    before = set(_private_servers())
    cmd = [sys.executable, "-m", "pbe_core.client", "batch", str(rows), "-o", str(tmp_path / "out"), "--model",
           str(fixture_paths["original.ckpt"]), "--comfyui", os.environ["COMFYUI_PATH"], "--comfy-args=--cpu",
           "--steps", "2", "--set", "Paint by Example.working_size=0"]  # fmt: skip
    run = Background(cmd)
    run.wait_for("002_photo1 Paint by Example [", timeout=300)
    (pid,) = set(_private_servers()) - before
    os.kill(pid, signal.SIGKILL)
    r = run.finish(timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "the private ComfyUI exited (status -9); starting it again (restart 1 of at most 2)" in r.stderr
    assert "ComfyUI is ready again after" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{n}.png" for n in row_names(3)]
    assert set(_private_servers()) <= before
