"""The fleet's driver on a real local Ray cluster, with a stand-in worker (tests/support/fleet_standin.py: no ComfyUI,
its "edit" returns the source's bytes, a ``poison`` row ends the worker's process). Real actor deaths, real restarts by
Ray: a row that kills every worker it is given fails after ``--retries`` with that reason, every other row is done
exactly once, and Ray's processes are gone afterwards. Needs Ray (the ``fleet`` extra); the real workers:
tests/host/test_fleet_host.py."""

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from images import png_bytes as _png

from pbe_core.client import fleet, jobs, workflow

ray = pytest.importorskip("ray", reason="needs Ray, the pack's 'fleet' extra: pip install 'ray>=2.10'")

pytestmark = pytest.mark.slow

SUPPORT = Path(__file__).resolve().parents[2] / "support"  # fleet_standin.py, the stand-in worker


def ray_processes() -> set[int]:
    """Pids of Ray's processes on this machine (GCS, raylet, workers, agents, monitors)."""
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if any(m in cmd for m in (b"ray::", b"gcs_server", b"raylet", b"/ray/dashboard/", b"/ray/_private/",
                                  b"/ray/autoscaler/")):  # fmt: skip
            found.add(int(d))
    return found


def test_a_row_that_kills_its_workers_fails_after_the_retries_and_the_rest_are_done_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    names = ["a", "b", "poison", "c", "d", "e"]
    for name in names:
        (tmp_path / f"{name}.png").write_bytes(_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
        (tmp_path / f"{name}_mask.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
    (tmp_path / "ex.png").write_bytes(_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("PBE_STANDIN_LOG", str(calls))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=out)
    rows = jobs.jobs_from_folder(tmp_path, [tmp_path / "ex.png"])
    from fleet_standin import StandInWorker

    before, folders = ray_processes(), set(Path("/tmp").glob("pbe-ray-*"))
    options = fleet.FleetOptions(workers=2, retries=2, private={"comfyui": "unused"}, worker_class=StandInWorker,
                                 progress=False)  # fmt: skip
    report, status = fleet.run_fleet(rows, settings, options)
    assert status == 1
    by_name = {r["name"]: r for r in report["rows"]}
    poison = by_name.pop("poison")
    assert poison["status"] == "failed"
    assert poison["error"].startswith("the worker running this row died 3 times; not tried again (--retries 2): ")
    assert [t["outcome"] for t in poison["tries"]] == ["lost"] * 3
    assert all("its Ray actor died" in t["error"] for t in poison["tries"])
    for name, row in by_name.items():  # each good row: one try, its own source's bytes as its result
        assert row["status"] == "done" and [t["outcome"] for t in row["tries"]] == ["done"], row
        assert (out / f"{name}.png").read_bytes() == (tmp_path / f"{name}.png").read_bytes()
    events = [line.split() for line in calls.read_text().splitlines()]
    done = sorted(name for event, name, _ in events if event == "done")
    assert done == sorted(by_name)  # every good row finished exactly once, across all worker processes
    assert sum(1 for event, name, _ in events if event == "run" and name == "poison") == 3
    pids_that_ran_poison = {pid for event, name, pid in events if event == "run" and name == "poison"}
    assert len(pids_that_ran_poison) == 3  # each try killed a different process
    workers = report["workers"]
    assert sum(w["rows_lost"] for w in workers) == 3 and sum(w["restarts"] for w in workers) == 3
    assert ray_processes() <= before  # the local cluster is gone
    assert set(Path("/tmp").glob("pbe-ray-*")) <= folders  # and its folder


def test_a_ray_folder_too_long_for_its_sockets_is_refused_with_the_limit(tmp_path):
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=tmp_path / "out")
    (tmp_path / "a.png").write_bytes(_png(np.zeros((16, 16, 3), np.uint8)))
    (tmp_path / "a_mask.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
    (tmp_path / "a_exemplar.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    folder = tmp_path / ("x" * 60)
    options = fleet.FleetOptions(private={"comfyui": "unused"}, progress=False, temp_dir=folder)
    report, status = fleet.run_fleet(jobs.jobs_from_folder(tmp_path), settings, options)
    assert status == 2
    reason = f"--ray-temp-dir {folder} is {len(str(folder))} characters long; Ray keeps its sockets in it"
    assert report["stopped"].startswith(reason) and report["rows"][0]["error"].startswith(f"not tried: {reason}")
    assert not folder.exists()



def test_the_dashboard_flag_starts_it_or_says_what_to_install(tmp_path, monkeypatch):
    """--ray-dashboard: with ray[default] the local cluster serves the dashboard and the report names it; with Ray's
    minimal install (the 'fleet' extra) the batch stops at once saying what to install, and nothing is left running."""
    import importlib.util

    full = importlib.util.find_spec("aiohttp_cors") is not None  # one of the packages ray[default] brings
    monkeypatch.setenv("PBE_STANDIN_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
    from fleet_standin import StandInWorker

    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=tmp_path / "out")
    (tmp_path / "a.png").write_bytes(_png(np.zeros((16, 16, 3), np.uint8)))
    (tmp_path / "a_mask.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
    (tmp_path / "a_exemplar.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    before, folders = ray_processes(), set(Path("/tmp").glob("pbe-ray-*"))
    options = fleet.FleetOptions(private={"comfyui": "unused"}, progress=False, dashboard=True,
                                 worker_class=StandInWorker)  # fmt: skip
    report, status = fleet.run_fleet(jobs.jobs_from_folder(tmp_path), settings, options)
    if full:
        assert status == 0 and report["ray"]["dashboard"], report
    else:
        assert status == 2
        assert "--ray-dashboard needs Ray's dashboard packages: pip install 'ray[default]'" in report["stopped"]
    assert ray_processes() <= before and set(Path("/tmp").glob("pbe-ray-*")) <= folders


def _stand_in_rows(tmp_path, monkeypatch, names, seed):
    """Rows ``names`` (16-px photos, whole masks) and an exemplar in ``tmp_path`` for the stand-in worker
    (tests/support/fleet_standin.py), which logs each call to the returned ``calls`` file and holds a row whose name
    contains ``hold`` until the returned ``release`` file exists."""
    rng = np.random.default_rng(seed)
    for name in names:
        (tmp_path / f"{name}.png").write_bytes(_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
        (tmp_path / f"{name}_mask.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
    (tmp_path / "ex.png").write_bytes(_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    calls, release = tmp_path / "calls.log", tmp_path / "release"
    monkeypatch.setenv("PBE_STANDIN_LOG", str(calls))
    monkeypatch.setenv("PBE_STANDIN_RELEASE", str(release))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
    return calls, release


def test_a_row_that_ends_after_ctrl_c_keeps_its_result(tmp_path, monkeypatch):
    """Row ``b_hold`` runs when Ctrl-C (SIGINT) reaches the driver; only once the driver says it is cancelling the
    rows running does the test let the row end. Its result is written (the driver takes the answers of the rows
    running before it stops the workers), the rows not sent are reported as not tried, exit status 130, and Ray is
    gone afterwards."""
    import logging
    import signal
    import threading

    names = ["a", "b_hold", "c", "d"]  # in this order, on one worker
    calls, release = _stand_in_rows(tmp_path, monkeypatch, names, seed=5)
    monkeypatch.setattr(fleet.driver, "CANCEL_WAIT", 300.0)  # the row ends when the test says, not when a clock does
    out = tmp_path / "out"
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=out)
    from fleet_standin import StandInWorker

    cancelling = threading.Event()

    class Said(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("interrupted: cancelling"):
                cancelling.set()

    def ctrl_c_while_hold_runs():
        while not (calls.exists() and "run b_hold" in calls.read_text()):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)
        if cancelling.wait(300):
            release.touch()

    handler = Said()
    logging.getLogger("pbe_core.client").addHandler(handler)
    # Ctrl-C's default action, even where the tests run with SIGINT ignored (a background job of a script)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    before, folders = ray_processes(), set(Path("/tmp").glob("pbe-ray-*"))
    helper = threading.Thread(target=ctrl_c_while_hold_runs, daemon=True)
    helper.start()
    try:
        options = fleet.FleetOptions(workers=1, private={"comfyui": "unused"}, worker_class=StandInWorker,
                                     progress=False)  # fmt: skip
        report, status = fleet.run_fleet(jobs.jobs_from_folder(tmp_path, [tmp_path / "ex.png"]), settings, options)
    finally:
        signal.signal(signal.SIGINT, previous)
        logging.getLogger("pbe_core.client").removeHandler(handler)
        release.touch()
        helper.join(10)
    assert status == 130 and report["interrupted"] is True
    by_name = {r["name"]: r for r in report["rows"]}
    assert [by_name[n]["status"] for n in ("a", "b_hold")] == ["done", "done"], by_name["b_hold"]
    assert (out / "b_hold.png").read_bytes() == (tmp_path / "b_hold.png").read_bytes()
    assert [by_name[n]["error"] for n in ("c", "d")] == ["not tried: interrupted (Ctrl-C)"] * 2
    assert ray_processes() <= before and set(Path("/tmp").glob("pbe-ray-*")) <= folders


def test_a_cluster_that_refuses_the_token_is_said_once_on_stderr_before_any_row(tmp_path):
    """A head started with ``ray start`` (Ray 2.59+: token authentication) and a command without RAY_AUTH_MODE:
    given as --ray=HOST:PORT, and found through RAY_ADDRESS with --ray=auto. Each time one error on stderr with the
    fix, exit status 2, no row started (the rows are "not tried" in the report, stdout points to the error)."""
    import shutil
    import subprocess
    import sys

    from pbe_core.client.embedded import free_port

    if tuple(int(x) for x in ray.__version__.split(".")[:2]) < (2, 59):
        pytest.skip(f"Ray {ray.__version__} starts clusters without token authentication")  # not in CI's Ray
    ray_cli = Path(sys.executable).with_name("ray")
    rows = tmp_path / "in"
    rows.mkdir()
    for name in ("a", "b", "c"):
        (rows / f"{name}.png").write_bytes(_png(np.zeros((16, 16, 3), np.uint8)))
        (rows / f"{name}_mask.png").write_bytes(_png(np.full((16, 16), 255, np.uint8)))
    (rows / "ex.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    head = Path(tempfile.mkdtemp(prefix="pbe-tok-", dir="/tmp"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    try:
        r = subprocess.run([str(ray_cli), "start", "--head", "--port", str(port), "--num-cpus", "1", "--temp-dir",
                            str(head), "--disable-usage-stats", "--include-dashboard", "false"],
                           capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        for extra_env, given in (({}, f"--ray=127.0.0.1:{port}"), ({"RAY_ADDRESS": f"127.0.0.1:{port}"}, "--ray=auto")):
            out = tmp_path / f"out{len(extra_env)}"
            r = subprocess.run([sys.executable, "-m", "pbe_core.client", "batch", str(rows), "--exemplar",
                                str(rows / "ex.png"), "-o", str(out), given, "--server", "127.0.0.1:9"],
                               capture_output=True, text=True, timeout=300, env={**env, **extra_env},
                               cwd=SUPPORT.parents[1])  # fmt: skip
            assert r.returncode == 2, r.stderr[-3000:]
            fix = "if the cluster uses token authentication (ray start does from Ray 2.59), run the command with " \
                  "RAY_AUTH_MODE=token and the cluster's token"  # fmt: skip
            said = [line for line in r.stderr.splitlines() if line.startswith("error: could not connect to the Ray")]
            assert len(said) == 1 and fix in said[0], r.stderr[-3000:]
            assert fix not in r.stdout and r.stdout.count("not tried (the batch stopped: see the error above)") == 3
            report = json.loads((out / "report.json").read_text())
            assert [row["tries"] for row in report["rows"]] == [[]] * 3 and report["workers"] == []
    finally:
        fleet.end_processes_of(head)
        shutil.rmtree(head, ignore_errors=True)


def test_a_machine_lost_for_good_is_reported_with_its_node_and_time(tmp_path, monkeypatch):
    """A two-node cluster on this machine (Ray's own ``cluster_utils.Cluster``), one CPU worker on each node (one CPU
    each, so a worker whose node is gone finds no other place). While both run a held row, every process of the
    second node is killed. Its worker's row goes to the other worker and every row is done once; the report says that worker's
    machine was lost (that node, a time) and that its state at the end is "lost", with the row it lost and what became
    of it; report.md says the same."""
    import logging
    import threading

    from ray.cluster_utils import Cluster

    names = ["a_hold", "b_hold", "c", "d"]
    calls, release = _stand_in_rows(tmp_path, monkeypatch, names, seed=9)
    from fleet_standin import StandInWorker

    lost_said = threading.Event()

    class Said(logging.Handler):
        def emit(self, record):
            if "was lost" in record.getMessage():
                lost_said.set()

    before = ray_processes()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()

    def remove_the_node_while_both_hold():
        while not (calls.exists() and calls.read_text().count("run ") >= 2):
            time.sleep(0.02)
        doomed.kill_all_processes(check_alive=False, allow_graceful=False, wait=False)  # the machine is gone
        if lost_said.wait(120):  # the driver saw the loss: let the held rows end
            release.touch()

    handler = Said()
    logging.getLogger("pbe_core.client").addHandler(handler)
    helper = threading.Thread(target=remove_the_node_while_both_hold, daemon=True)
    helper.start()
    try:
        settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=tmp_path / "out")
        options = fleet.FleetOptions(address=cluster.address, workers=2, private={"comfyui": "unused"},
                                     worker_class=StandInWorker, progress=False)  # fmt: skip
        report, status = fleet.run_fleet(jobs.jobs_from_folder(tmp_path, [tmp_path / "ex.png"]), settings, options)
    finally:
        logging.getLogger("pbe_core.client").removeHandler(handler)
        release.touch()
        helper.join(30)
        cluster.shutdown()
    assert status == 0, report
    assert [r["status"] for r in report["rows"]] == ["done"] * 4
    (gone,) = [w for w in report["workers"] if w["where"].get("node") == doomed.node_id]
    (survivor,) = [w for w in report["workers"] if w is not gone]
    (lost,) = [e for e in gone["events"] if e["event"] == "node lost"]
    assert lost["node"] == doomed.node_id and lost["row"] in ("a_hold", "b_hold")
    assert time.strptime(lost["at"], "%Y-%m-%dT%H:%M:%SZ")
    assert gone["state"] == "lost" and doomed.node_id in gone["reason"] and lost["at"] in gone["reason"]
    assert gone["lost_rows"] == [{"row": lost["row"], "status": "done", "worker": survivor["worker"]}]
    assert survivor["state"] == "stopped" and survivor["events"] == [] and survivor["rows_done"] == 4 - gone["rows_done"]
    md = fleet.report_markdown(report)
    assert f"- {gone['worker']}: its machine was lost at {lost['at']}" in md and "at the end: lost" in md
    assert ray_processes() <= before


def test_a_ray_folder_left_by_a_killed_run_is_removed_by_the_next_and_only_that_one(tmp_path):
    """Three pbe-ray-* folders: one whose run was killed (its owner process is gone; a process naming the folder still
    runs, as Ray's helper agents do), one of a run still going (this process), one without an owner file. Only the
    first is removed, and the process left from it is ended."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = fleet.process_identity(gone.pid)
    gone.kill()
    gone.wait()
    dead, running, unnamed = (tmp_path / f"pbe-ray-{k}" for k in ("dead", "running", "unnamed"))
    for folder in (dead, running, unnamed):
        folder.mkdir()
        (folder / "session_latest").mkdir()
    (dead / fleet.OWNER_FILE).write_text(identity)
    (running / fleet.OWNER_FILE).write_text(fleet.process_identity(os.getpid()))
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(dead)])
    # until it has exec'd, the child's command line is still this process's: wait until it names the folder (what
    # the cleaning looks for), else on a busy machine the cleaning can look before the helper is what it stands for
    cmdline = Path(f"/proc/{helper.pid}/cmdline")
    deadline = time.monotonic() + 60
    while str(dead).encode() not in cmdline.read_bytes():
        assert helper.poll() is None and time.monotonic() < deadline, "the helper never started"
        time.sleep(0.01)
    try:
        assert fleet.clean_stale_ray_folders(tmp_path) == [dead]
        assert helper.wait(30) is not None  # ended (by SIGTERM) with its run's folder
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pbe-ray-running", "pbe-ray-unnamed"]
