"""``batch --ray`` without Ray and without a server: the install hint, the single-server path importing neither Ray
nor the fleet module, the batch's progress line, the rows known before any worker (done, bad, unreadable) and
report.md. The fleet on a real Ray cluster: tests/pbe_core/client/test_fleet.py (a stand-in worker) and
tests/host/test_fleet_host.py (real headless ComfyUI workers)."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from images import png_bytes as _png

from pbe_core.client import fleet, jobs, results, workflow

pytestmark = pytest.mark.stdlib

NO_RAY = "import sys; sys.modules['ray'] = None; from pbe_core.client.cli import main; sys.exit(main(sys.argv[1:]))"


def _rows(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["source,mask,exemplar"]
    for k in range(n):
        (folder / f"s{k}.png").write_bytes(_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
        (folder / f"m{k}.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
        lines.append(f"s{k}.png,m{k}.png,s0.png")
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    return folder / "rows.csv"


def _run(*args, code=NO_RAY):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=workflow.PACK_DIR, timeout=60)  # fmt: skip


def test_without_ray_the_flag_says_how_to_install_it(tmp_path):
    rows = _rows(tmp_path, 2)
    r = _run("batch", str(rows), "-o", str(tmp_path / "out"), "--ray", "--server", "127.0.0.1:9")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--ray needs Ray, which is not installed in this Python" in r.stderr
    assert f"pip install '{fleet.RAY_REQUIREMENT}'" in r.stderr and "'fleet' extra" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing done, no report pretending otherwise


def test_the_single_server_path_imports_neither_ray_nor_the_fleet():
    code = ("import sys; from pbe_core.client import cli; cli.build_parser().parse_args(['batch', 'x', '--ray']); "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.') or m.endswith('.fleet')))")
    r = _run(code=code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_several_servers_need_ray(tmp_path):
    rows = _rows(tmp_path, 1)
    r = _run("batch", str(rows), "--server", "127.0.0.1:9", "--server", "127.0.0.1:10")
    assert r.returncode == 1
    assert "2 --server given; several servers need batch --ray (one worker each)" in r.stderr
    r = _run("edit", "a.png", "m.png", "e.png", "--server", "127.0.0.1:9", "--server", "127.0.0.1:10")
    assert r.returncode == 1 and "2 --server given" in r.stderr


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_line_counts_rate_eta_and_workers():
    clock, out = FakeClock(), io.StringIO()
    bar = fleet.BatchProgress(10, stream=out, clock=clock, width=10)
    assert bar.line() == "[..........] 0/10 done, 0 failed | -- rows/s"
    clock.now += 30  # startup: not in the rate
    bar.sent()
    clock.now += 4
    bar.ended("w1", True)
    clock.now += 4
    bar.ended("w2", True)
    bar.ended("w1", True)
    bar.ended(None, False)
    # 4 rows ended 8 s after the first was sent: 0.5 rows/s, 6 left: 12 s
    assert bar.line() == "[####......] 3/10 done, 1 failed | 0.50 rows/s | ETA 0:12 | w1 2, w2 1"
    assert out.getvalue().splitlines()[-1] == bar.line()  # a log: one line per row ended
    assert len(out.getvalue().splitlines()) == 4
    clock.now += 100  # the final rate stops at the last row
    assert bar.rate(final=True) == pytest.approx(0.5) and bar.rate() == pytest.approx(4 / 108)


def test_on_a_terminal_the_bar_is_redrawn_and_lines_go_above_it(caplog):
    out = Tty()
    bar = fleet.BatchProgress(2, stream=out, clock=FakeClock(), width=4)
    bar.sent()
    bar.ended("w1", True)
    with caplog.at_level("INFO", logger="pbe_core.client"):
        bar.say(20, "w2 ready")
    bar.close()
    text = out.getvalue()
    assert text.startswith("\r[##..] 1/2 done") and "\r\x1b[K" in text and text.endswith("\n")
    assert "\n" not in text[:-1]  # redrawn in place
    assert "w2 ready" in caplog.text


def test_rows_done_earlier_bad_or_unreadable_are_known_before_any_worker(tmp_path):
    rows_csv = _rows(tmp_path, 3)
    (tmp_path / "s2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=out)
    store = results.ResultStore(out)
    listed = jobs.jobs_from_csv(rows_csv) + [("004_bad", "row 4 (line 5): needs source, mask, exemplar")]
    first = listed[0]
    store.write(first.name, jobs.job_key(first, settings)[2], [(".png", b"earlier result")])
    rows = fleet.prepare_rows(listed, settings, store)
    assert [(r.name, r.status) for r in rows] == [("001_s0", "skipped"), ("002_s1", None), ("003_s2", "failed"),
                                                  ("004_bad", "failed")]  # fmt: skip
    assert rows[0].outputs == [out / "001_s0.png"]
    assert "cannot be read as an image" in rows[2].error
    assert rows[3].error == "row 4 (line 5): needs source, mask, exemplar"
    settings.force = True
    assert fleet.prepare_rows(listed, settings, store)[0].status is None


def test_a_batch_with_every_row_done_starts_no_ray(tmp_path):
    """Every row is done already: the batch starts no Ray (nor a server) and says so. (Ray is stood in for here: this
    file runs without it; the driver, which would start it, fails the test if it is reached.)"""
    rows_csv = _rows(tmp_path, 2)
    out = tmp_path / "out"
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=out, values={"steps": 3})
    store = results.ResultStore(out)
    for job in jobs.jobs_from_csv(rows_csv):
        store.write(job.name, jobs.job_key(job, settings)[2], [(".png", b"result")])
    code = ("import sys; import pbe_core.client.fleet as f; f.import_ray = lambda: None; "
            "f.driver._Driver = lambda *a, **k: sys.exit('the driver was started'); "
            "from pbe_core.client.cli import main; sys.exit(main(sys.argv[1:]))")
    r = _run("batch", str(rows_csv), "-o", str(out), "--steps", "3", "--ray", "--server", "127.0.0.1:9", code=code)
    assert r.returncode == 0, r.stderr
    assert "Ray is not started" in r.stderr and "2 of 2 rows succeeded (2 already done)" in r.stdout
    report = json.loads((out / "report.json").read_text())
    assert [row["status"] for row in report["rows"]] == ["skipped", "skipped"]
    assert (out / "report.md").read_text().startswith("# Batch report\n\n2 of 2 rows succeeded (2 already done)")


def test_report_md_lists_workers_failures_and_retried_rows():
    tries = [{"worker": "w1", "outcome": "lost", "error": "its ComfyUI exited (status -9)", "prompt_ids": ["a"]},
             {"worker": "w2", "outcome": "done", "error": None, "prompt_ids": ["b"]}]  # fmt: skip
    report = {
        "rows": [{"name": "001_a", "status": "done", "ok": True, "error": None, "tries": tries},
                 {"name": "002_b", "status": "failed", "ok": False, "error": "PBE_Sampler (node 5): Mask is empty | x",
                  "tries": []}],
        "succeeded": 1, "failed": 1, "skipped": 0, "stopped": None, "elapsed_s": 42.0, "rows_per_s": 0.25,
        "ray": {"version": "2.60.0", "local": True},
        "workers": [{"worker": "w1", "kind": "private", "state": "stopped", "reason": None, "rows_done": 0,
                     "rows_failed": 0, "rows_lost": 1, "restarts": 1,
                     "where": {"host": "gpu1", "address": "http://127.0.0.1:5000", "gpus": ["0"]}}],
    }  # fmt: skip
    md = fleet.report_markdown(report)
    assert "1 of 2 rows succeeded (0 already done), 1 failed; 42 s, 0.250 rows/s." in md
    assert "| w1 | private | gpu1, http://127.0.0.1:5000, GPU 0 | 0 | 0 | 1 | 1 | stopped |" in md
    assert "| 002_b | PBE_Sampler (node 5): Mask is empty \\| x |" in md  # a | in a reason does not break the table
    assert "| 001_a | w1: lost (its ComfyUI exited (status -9)); w2: done |" in md


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _OwnedProcess:
    """What WorkerClient asks of the PrivateComfyUI it owns: the process, and whether it still runs."""

    def __init__(self, proc):
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None


def test_a_worker_stops_waiting_once_its_comfyui_process_has_exited():
    """A SIGKILLed ComfyUI can refuse connections a moment before its process has exited: the worker saw it alive,
    began waiting for it to come back, and must give up as soon as the process is gone, not after --reconnect-wait."""
    import time

    from pbe_core.client.errors import ServerUnreachable

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])  # exits while the worker waits
    try:
        base = f"127.0.0.1:{_free_port()}"  # nothing listens there: connection refused, as after the kill
        client = fleet.WorkerClient(base, "test", 30, progress=False, reconnect_wait=60, server=_OwnedProcess(proc))
        client.reached = True  # it had answered earlier in the run
        started = time.monotonic()
        with pytest.raises(fleet.ComfyUIDied, match=r"its ComfyUI exited \(status 0\)"):
            client.wait_for_server(ServerUnreachable(f"cannot reach ComfyUI at http://{base}: refused"))
        assert time.monotonic() - started < 10  # found at the next try (pauses of 1-5 s), not after 60 s
    finally:
        proc.kill()
        proc.wait()


def test_a_one_server_batch_reports_its_rows_on_the_same_progress_line(caplog):
    """``jobs.run_batch``'s ``progress(k, row)`` as the eval's generate gives it: the same counts and rate as the bar,
    a log line per row; a row done earlier leaves the total, the rate counts from the start of the batch."""
    clock, out = FakeClock(), Tty()
    bar = fleet.BatchProgress(4, stream=out, clock=clock, width=4)
    with caplog.at_level("INFO", logger="pbe_core.client"):
        bar(1, {"status": "skipped", "ok": True})
        clock.now += 10
        bar(2, {"status": "done", "ok": True})
        clock.now += 10
        bar(3, {"status": "failed", "ok": False})
    assert caplog.messages == ["1/4 rows (skipped), -- rows/s, time left unknown",
                               "2/4 rows (done), 0.10 rows/s, about 0:20 left",
                               "3/4 rows (failed), 0.10 rows/s, about 0:10 left"]  # fmt: skip
    assert bar.line() == "[##..] 1/3 done, 1 failed | 0.10 rows/s | ETA 0:10"
    assert out.getvalue() == ""  # the prompts' own bar has the terminal
