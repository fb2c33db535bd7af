"""``batch --ray`` with real headless ComfyUI workers on a local Ray cluster, as a user runs it: two private workers
give the single-server client's results bit for bit and survive one ComfyUI SIGKILLed mid-batch (every row done
exactly once, counted in the workers' own output folders and logs); the same command again does nothing; bad rows are
reported with their reasons while the rest finish; Ctrl-C leaves a report and the rerun does only the rest; a
``--server`` that dies for good hands its row to the other. After each run no Ray process, no ComfyUI and no Ray
folder is left. Needs Ray (the pack's ``fleet`` extra)."""

import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from client_runs import (
    AS_IN_A_TERMINAL,
    TINY,
    Background,
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
)
from comfy_host import REPO, temporary_server
from host_util import SIZE
from images import png_bytes

pytest.importorskip("ray", reason="needs Ray, the pack's 'fleet' extra: pip install 'ray>=2.10'")

pytestmark = pytest.mark.host

RAY_MARKS = (b"ray::", b"gcs_server", b"raylet", b"/ray/dashboard/", b"/ray/_private/", b"/ray/autoscaler/")


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                pass
    return out


def fleet_processes(folder: Path) -> set[int]:
    """Ray's processes on this machine, and the private ComfyUIs a fleet started: in a Ray folder of the run
    (``/tmp/pbe-ray-*``) or in ``folder`` (the test's, holding its --worker-dir)."""
    mine = (b"/pbe-ray-", str(folder).encode())
    return {pid for pid, cmd in _cmdlines().items()
            if any(m in cmd for m in RAY_MARKS) or (b"main.py" in cmd and any(m in cmd for m in mine))}  # fmt: skip


def _ray_folders() -> set[Path]:
    return set(Path("/tmp").glob("pbe-ray-*")) | set(Path(tempfile.gettempdir()).glob("pbe-comfyui-*"))


class Leftovers:
    """What a run leaves behind: processes and folders that were not there before it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs, self.folders = fleet_processes(folder), _ray_folders()

    def check(self) -> None:
        deadline = time.monotonic() + 15  # killed processes take a moment to be reaped
        while (left := fleet_processes(self.folder) - self.procs) and time.monotonic() < deadline:
            time.sleep(0.5)
        cmds = _cmdlines()
        assert not left, [cmds.get(p, b"?")[:200] for p in left]
        assert _ray_folders() <= self.folders


def fleet(*args, server_ports=(), **popen) -> list[str]:
    cmd = [sys.executable, "-m", "pbe_core.client", *args]
    for port in server_ports:
        cmd += ["--server", f"127.0.0.1:{port}"]
    return cmd


def _run(cmd, timeout=900):
    import subprocess

    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _private(workers: Path, label: str) -> tuple[int, int] | None:
    """(pid, port) of the private ComfyUI of worker ``label`` kept in ``workers``."""
    base = str(workers / label / "base").encode()
    for pid, cmd in _cmdlines().items():
        if b"main.py" in cmd and base in cmd:
            parts = cmd.split()
            return pid, int(parts[parts.index(b"--port") + 1])
    return None


def _running(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/queue", timeout=5) as r:  # noqa: S310 - loopback
            return bool(json.loads(r.read())["queue_running"])
    except OSError:  # not listening yet
        return False


def _signal_while_running(run, workers: Path, label: str, sig: int, timeout: float, when=lambda: True) -> int:
    """Send ``sig`` to worker ``label``'s private ComfyUI as soon as ``when()`` holds and it is running a row, while
    the batch ``run`` goes on; its pid."""
    deadline = time.monotonic() + timeout
    while True:
        assert run.proc.poll() is None, "".join(run.err)[-4000:]
        assert time.monotonic() < deadline, "".join(run.err)[-4000:]
        found = _private(workers, label)
        if when() and found and _running(found[1]):
            os.kill(found[0], sig)
            return found[0]
        time.sleep(0.01)


def _executed(log: Path) -> int:
    """Prompts ComfyUI says it finished (its log line "Prompt executed in ..."), over all its starts."""
    return log.read_text(errors="replace").count("Prompt executed in")


@pytest.mark.slow
def test_two_private_workers_match_the_single_server_client_and_survive_a_killed_comfyui(
        comfy_server, tmp_path, exemplar, fixture_paths):
    """12 rows on two private CPU workers (2 threads each, as the reference server). While rows remain, worker w1's
    ComfyUI is SIGKILLed as it starts a prompt: w1 starts it again, the row goes to the next free worker, and the
    batch ends with all 12 results, bit-identical to the single-server client's. ComfyUI's own records say each row
    was done once: 12 files in the two workers' output folders and 12 "Prompt executed" lines in their logs."""
    rows = rows_csv(tmp_path, 12, exemplar)
    ref = tmp_path / "ref"
    r = client(comfy_server, "batch", str(rows), "-o", str(ref), "--no-progress", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    workers, out = tmp_path / "workers", tmp_path / "out"
    cmd = fleet("batch", str(rows), "-o", str(out), "--model", str(fixture_paths["original.ckpt"]), "--steps", "2",
                "--set", "Paint by Example.working_size=0", "--comfyui", os.environ["COMFYUI_PATH"], "--ray",
                "--workers", "2", "--cpus-per-worker", "2", "--worker-dir", str(workers))  # fmt: skip
    left = Leftovers(tmp_path)
    run = Background(cmd)
    _signal_while_running(run, workers, "w1", signal.SIGKILL, 600, when=lambda: len(list(out.glob("*.png"))) >= 3)
    r = run.finish(timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    # killed while its row ran, or between two rows (then the next row finds it gone before it is sent)
    assert re.search(r"w1: its ComfyUI (had )?exited \(status -9\)( before the row was sent)?; starting it again "
                     r"\(restart 1 of at most 2\)", r.stderr), r.stderr[-3000:]
    assert "lost on w1" in r.stderr and "w1 ready" in r.stderr and " again" in r.stderr
    names = [f"{n}.png" for n in row_names(12)]
    assert sorted(p.name for p in out.glob("*.png")) == names
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert not list(out.glob(".*"))  # no temporary file left
    # ComfyUI's own count: each row's prompt finished once, on one worker or the other
    saved = [p for w in ("w1", "w2") for p in (workers / w / "base" / "output").rglob("*.png")]
    assert len(saved) == 12, saved
    assert sum(_executed(workers / w / "comfyui.log") for w in ("w1", "w2")) == 12
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["rows"]] == ["done"] * 12
    assert all([t["outcome"] for t in row["tries"]].count("done") == 1 for row in report["rows"])
    (lost,) = [row for row in report["rows"] if len(row["tries"]) > 1]
    assert [(t["worker"], t["outcome"]) for t in lost["tries"]][0] == ("w1", "lost")
    assert len(lost["tries"][0]["prompt_ids"]) == 1  # queued once on the killed server, then on the next worker
    prompt_ids = [p for row in report["rows"] for t in row["tries"] for p in t["prompt_ids"]]
    assert len(prompt_ids) == len(set(prompt_ids)) == 13
    w1 = next(w for w in report["workers"] if w["worker"] == "w1")
    assert (w1["restarts"], w1["rows_lost"], w1["state"]) == (1, 1, "stopped")
    assert sum(w["rows_done"] for w in report["workers"]) == 12
    md = (out / "report.md").read_text()
    assert "12 of 12 rows succeeded (0 already done), 0 failed" in md and "## Rows tried more than once" in md
    left.check()

    # the same command again: nothing to do, so no Ray and no ComfyUI; the results are untouched
    stamps = file_stamps(out)
    logs = [(workers / w / "comfyui.log").read_bytes() for w in ("w1", "w2")]
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "12 of 12 rows succeeded (12 already done)" in r.stdout and "Ray is not started" in r.stderr
    assert {k: v for k, v in file_stamps(out).items() if not k.startswith("report.")} == \
        {k: v for k, v in stamps.items() if not k.startswith("report.")}  # fmt: skip
    assert [(workers / w / "comfyui.log").read_bytes() for w in ("w1", "w2")] == logs
    (kept,) = (out / "reports").glob("report-*.json")  # the first run's record, with its lost row and restart
    assert json.loads(kept.read_text()) == report and kept.with_suffix(".md").read_text() == md
    left.check()


def test_bad_rows_are_reported_with_their_reasons_and_the_rest_finish(comfy_server, tmp_path, exemplar):
    """Two workers attached to one running server. Row 3's source is a truncated PNG (refused before anything is
    sent), row 5's mask is black (the server's PBE_Sampler refuses it): both reported with their reasons, the 4 others
    done, 5 prompts reach the server."""
    rows = rows_csv(tmp_path, 6, exemplar)
    whole = (tmp_path / "in" / "photo2.png").read_bytes()
    (tmp_path / "in" / "photo2.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "in" / "photo4_mask.png").write_bytes(png_bytes(np.zeros((SIZE, SIZE), np.uint8)))
    out = tmp_path / "out"
    left, before = Leftovers(tmp_path), len(prompt_history(comfy_server))
    r = _run(fleet("batch", str(rows), "-o", str(out), "--ray", "--no-progress", *TINY,
                   server_ports=[comfy_server.port] * 2))  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    report = json.loads((out / "report.json").read_text())
    status = {row["name"]: (row["status"], row["error"]) for row in report["rows"]}
    assert status["003_photo2"][0] == "failed" and "cannot be read as an image" in status["003_photo2"][1]
    assert status["005_photo4"][0] == "failed"
    assert "PBE_Sampler" in status["005_photo4"][1] and "Mask is empty" in status["005_photo4"][1]
    assert [s for s, _ in status.values()].count("done") == 4
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(6) if n[:3] not in ("003", "005")]
    assert len(prompt_history(comfy_server)) == before + 5
    assert "4 of 6 rows succeeded" in r.stdout and "FAILED 005_photo4" in r.stdout
    md = (out / "report.md").read_text()
    assert "## Failed rows" in md and "Mask is empty" in md
    left.check()


@pytest.mark.slow
def test_ctrl_c_cancels_the_running_prompts_and_the_same_command_does_only_the_rest(tmp_path, exemplar, fixture_paths):
    """Six rows on two private workers, each row held at a gate until the test lets it go (tests/support/host_probe):
    rows 1 and 2 are let go; once both results are written and rows 3 and 4 wait at their gates (they cannot finish
    before the signal), Ctrl-C reaches the command's process group. Each worker's ComfyUI sees its prompt interrupted
    (the gate, and "Interrupting prompt <id>" in its log), rows 1-2 are kept, 3-4 are reported as interrupted while they
    ran and 5-6 as not tried; exit 130, nothing left running. The same command then does rows 3-6 only."""
    rows = rows_csv(tmp_path, 6, exemplar)
    seed = seeds(rows)
    _, gated = gated_workflow(tmp_path)
    gate, workers, out = tmp_path / "gate", tmp_path / "workers", tmp_path / "out"
    for s in seed[:2]:
        (gate / f"go-{s}").touch()
    cmd = fleet("batch", str(rows), "-o", str(out), "--model", str(fixture_paths["original.ckpt"]), "--steps", "2",
                "--set", "Paint by Example.working_size=0", *gated, "--comfyui", os.environ["COMFYUI_PATH"],
                f"--comfy-args=--extra-model-paths-config {probe_config(tmp_path)}", "--ray", "--workers", "2",
                "--worker-dir", str(workers), "--no-progress")  # fmt: skip
    left = Leftovers(tmp_path)
    run = Background(cmd, **AS_IN_A_TERMINAL)
    for s in seed[2:4]:
        wait_for_file(run, gate / f"started-{s}", timeout=600)
    wait_for_file(run, out / "002_photo1.png")
    ctrl_c(run)
    r = run.finish(timeout=120)
    assert r.returncode == 130, r.stderr[-3000:]
    assert [s for s in seed if (gate / f"interrupted-{s}").exists()] == seed[2:4], r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] is True and report["stopped"] == "interrupted (Ctrl-C)"
    assert [row["status"] for row in report["rows"]] == ["done"] * 2 + ["failed"] * 4
    assert [row["error"] for row in report["rows"][2:]] == ["interrupted (Ctrl-C) while it ran"] * 2 + \
        ["not tried: interrupted (Ctrl-C)"] * 2  # fmt: skip
    cancelled = [p for row in report["rows"][2:4] for t in row["tries"] for p in t["prompt_ids"]]
    logs = "".join((workers / w / "comfyui.log").read_text(errors="replace") for w in ("w1", "w2"))
    assert len(cancelled) == 2 and all(f"Interrupting prompt {p}" in logs for p in cancelled), cancelled
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(2)]
    left.check()

    for s in seed[2:]:
        (gate / f"go-{s}").touch()
    r = _run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "6 of 6 rows succeeded (2 already done)" in r.stdout
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(6)]
    left.check()


@pytest.mark.slow
def test_a_server_that_dies_for_good_hands_its_row_to_the_other(comfy_server, tmp_path, exemplar, fixture_paths):
    """Workers on two running servers; one is SIGKILLed while it runs a prompt and stays dead. After
    --reconnect-wait its worker is given up, its row goes to the other server, and every row is done once: the dead
    server's own output folder and the live server's history add up to the rows."""
    rows = rows_csv(tmp_path, 6, exemplar)
    seed = seeds(rows)
    _, gated = gated_workflow(tmp_path)  # every row waits at its gate until the doomed server is dead
    gate, out = tmp_path / "gate", tmp_path / "out"
    probe = {"pbe_test_probe": Path(__file__).resolve().parent.parent / "support" / "host_probe"}
    with temporary_server(prefix="pbe-fleet-", models={"original.ckpt": fixture_paths["original.ckpt"]},
                          extra_packs=probe) as doomed:  # fmt: skip
        left, before = Leftovers(tmp_path), len(prompt_history(comfy_server))
        cmd = fleet("batch", str(rows), "-o", str(out), "--ray", "--no-progress", "--reconnect-wait", "3", *TINY,
                    *gated, server_ports=[doomed.port, comfy_server.port])  # fmt: skip
        run = Background(cmd)
        deadline = time.monotonic() + 300
        while True:  # the doomed server's prompt waits at its gate: it cannot finish before the kill
            running = doomed.queue_state()["queue_running"]
            held = [item[2]["6"]["inputs"]["seed"] for item in running]
            if held and (gate / f"started-{held[0]}").exists():
                break
            assert run.proc.poll() is None and time.monotonic() < deadline, "".join(run.err)[-3000:]
            time.sleep(0.02)
        doomed.kill()
        for s in seed:
            (gate / f"go-{s}").touch()
        r = run.finish(timeout=300)
        saved_on_doomed = len(list(doomed.output_dir.rglob("*.png")))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["rows"]] == ["done"] * 6
    w1 = report["workers"][0]
    assert w1["state"] == "retired" and "did not come back within 3 s" in w1["reason"]
    (lost,) = [row for row in report["rows"] if len(row["tries"]) > 1]
    assert [(t["worker"], t["outcome"]) for t in lost["tries"]] == [("w1", "lost"), ("w2", "done")]
    on_live = len(prompt_history(comfy_server)) - before
    assert saved_on_doomed + on_live == 6
    assert (w1["rows_done"], report["workers"][1]["rows_done"]) == (saved_on_doomed, on_live)
    left.check()


@pytest.mark.slow
def test_a_private_comfyui_that_hangs_is_ended_and_started_again(tmp_path, exemplar, fixture_paths):
    """One private worker whose ComfyUI is stopped (SIGSTOP: it runs, answers nothing) while it runs row 1 of 2: after
    the request timeout and --reconnect-wait the worker ends it, starts it again and does both rows; row 1 twice
    queued, once done."""
    rows = rows_csv(tmp_path, 2, exemplar)
    seed = seeds(rows)
    _, gated = gated_workflow(tmp_path)  # row 1 waits at its gate: it cannot finish before the SIGSTOP
    gate, workers, out = tmp_path / "gate", tmp_path / "workers", tmp_path / "out"
    cmd = fleet("batch", str(rows), "-o", str(out), "--model", str(fixture_paths["original.ckpt"]), "--steps", "2",
                "--set", "Paint by Example.working_size=0", *gated, "--comfyui", os.environ["COMFYUI_PATH"],
                f"--comfy-args=--extra-model-paths-config {probe_config(tmp_path)}", "--ray", "--workers", "1",
                "--cpus-per-worker", "2", "--worker-dir", str(workers), "--reconnect-wait", "3",
                "--no-progress")  # fmt: skip
    left = Leftovers(tmp_path)
    run = Background(cmd)
    wait_for_file(run, gate / f"started-{seed[0]}", timeout=600)
    stopped, _ = _private(workers, "w1")
    os.kill(stopped, signal.SIGSTOP)
    for s in seed:  # the ComfyUI started again lets every row through
        (gate / f"go-{s}").touch()
    r = run.finish(timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "did not come back within 3 s" in r.stderr and "starting it again (restart 1 of at most 2)" in r.stderr
    assert _private(workers, "w1") is None  # the stopped one was ended, its successor stopped with the run
    with pytest.raises(ProcessLookupError):
        os.kill(stopped, 0)
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["rows"]] == ["done", "done"]
    assert [t["outcome"] for t in report["rows"][0]["tries"]] == ["lost", "done"]
    assert sorted(p.name for p in out.glob("*.png")) == [f"{n}.png" for n in row_names(2)]
    left.check()
