"""The fleet's driver: this process's side of a ``--ray`` batch (``fleet`` package docstring). It reads the rows, hands
each to a free worker as one Ray actor task, writes each result as it comes back, takes lost rows back, answers Ctrl-C,
and builds the report.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..api import ComfyClient
from ..errors import ClientError, ServerUnreachable, StopsBatch
from ..jobs import job_key
from ..progress import BatchProgress
from ..report import batch_report, exit_status, row_entry
from ..results import ResultStore
from ..settings import Job, Settings
from .cluster import RayRun, first_line, ignoring_interrupts, import_ray, interrupts_deferred
from .worker import START_TIMEOUT, WORKER_RESTARTS, FleetWorker, WorkerSpec

log = logging.getLogger("pbe_core.client")

#: times Ray starts a worker's actor again after its process died
ACTOR_RESTARTS = 2
#: seconds Ctrl-C waits for the rows running to end once their prompts are cancelled (a second Ctrl-C: no wait)
CANCEL_WAIT = 5.0
#: seconds the workers get to stop their ComfyUIs at the end (a second Ctrl-C: none)
STOP_WAIT = 60.0


# --- the rows --------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    index: int
    name: str
    job: Job | None
    status: str | None = None  # done | skipped | failed, once decided
    error: str | None = None
    outputs: list = field(default_factory=list)
    worker: str | None = None
    key: str | None = None
    tries: list[dict] = field(default_factory=list)  # {"worker", "outcome", "error", "prompt_ids", "seconds"}
    losses: int = 0  # times the worker running it died with the row sent

    def record(self) -> dict:
        """The report's row (``report.row_entry``) with the fleet's ``worker`` and ``tries``."""
        return row_entry(self.name, self.status, self.error, self.outputs, worker=self.worker, tries=self.tries)


@dataclass
class Worker:
    """The driver's view of one worker."""

    spec: WorkerSpec
    handle: object
    kind: str  # private | attached
    state: str = "starting"  # starting | idle | busy | restarting | retired
    where: dict = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    lost: int = 0
    restarts: int = 0
    reason: str | None = None
    ready_after: float | None = None
    events: list[dict] = field(default_factory=list)  # {"event": "node lost"|"restarted", "at", "node", ...}
    lost_rows: list = field(default_factory=list)  # the Rows it lost (its ComfyUI, process or machine died)

    def record(self) -> dict:
        """``state``: stopped (at the end of the run), retired (given up, ``reason`` says why) or lost (its machine
        was lost and Ray found it no other place before the run ended). ``events``: its machine lost (when, which
        node) and where it was started again; ``lost_rows``: each row it lost and what became of it."""
        lost = [{"row": r.name, "status": r.status, "worker": r.worker} for r in self.lost_rows]
        return {"worker": self.spec.label, "kind": self.kind, "state": self.state, "where": self.where,
                "rows_done": self.done, "rows_failed": self.failed, "rows_lost": self.lost, "restarts": self.restarts,
                "ready_after_s": self.ready_after, "reason": self.reason, "events": self.events,
                "lost_rows": lost}  # fmt: skip


def prepare_rows(jobs: list, settings: Settings, store: ResultStore) -> list[Row]:
    """Every row with what is known without a server: a bad row failed, a row done earlier with the same settings
    skipped (unless ``settings.force``), the rest to do (status None)."""
    rows = []
    for k, job in enumerate(jobs):
        if isinstance(job, tuple):
            rows.append(Row(k, job[0], None, "failed", job[1]))
            continue
        row = Row(k, job.name, job)
        try:
            _, _, row.key = job_key(job, settings)
        except ClientError as e:
            row.status, row.error = "failed", str(e)
        else:
            done = None if settings.force else store.done(job.name, row.key)
            if done is not None:
                row.status, row.outputs = "skipped", done
        rows.append(row)
    return rows

def build_report(rows: list[Row], workers: list[Worker], stopped: str | None, status: int, elapsed: float,
                 progress: BatchProgress | None, ray_info: dict) -> dict:
    """The single-server batch's report (``report.batch_report``) plus the fleet's: each row's ``worker`` and
    ``tries``, ``workers``, ``elapsed_s``, ``rows_per_s`` (rows this run ended per second, from the first row sent) and
    ``ray``."""
    rate = progress.rate(final=True) if progress is not None else None
    return batch_report([r.record() for r in rows], stopped, status, workers=[w.record() for w in workers],
                        elapsed_s=round(elapsed, 2), rows_per_s=round(rate, 4) if rate else None, ray=ray_info)


# --- the driver --------------------------------------------------------------------------------------------------------
@dataclass
class FleetOptions:
    address: str | None = None  # None: a local cluster for the run
    specs: list[WorkerSpec] = field(default_factory=list)  # filled by worker_specs() when empty
    private: dict = field(default_factory=dict)  # the WorkerSpec fields of private workers (comfyui, python, ...)
    workers: int | None = None  # private workers; None: one per GPU share, else 1
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0
    retries: int = 2
    worker_dir: Path | None = None
    dashboard: bool = False
    temp_dir: Path | None = None
    verbose: bool = False
    progress: bool = True
    worker_class: type = FleetWorker  # the tests give a stand-in that dies on purpose, to test the driver alone


def worker_specs(ray, options: FleetOptions) -> tuple[list[WorkerSpec], dict]:
    """The private workers for the cluster: ``options.workers`` of them, or one per GPU share (``num_gpus`` =
    ``gpus_per_worker``), or one CPU worker. Returns the specs and the Ray options of their actors."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    per_gpu = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if per_gpu and not gpus:
        raise ClientError(f"--gpus-per-worker {per_gpu:g} but the Ray cluster has no GPU; leave it out for CPU "
                          f"workers (--workers N)")
    count = options.workers or (int(gpus / per_gpu + 1e-9) if per_gpu else 1)
    if count < 1:
        raise ClientError(f"no worker fits: the cluster has {gpus:g} GPU(s) and each worker wants {per_gpu:g}")
    base = dict(options.private)
    comfy_args = list(base.pop("comfy_args", []))
    threads = None
    if not per_gpu:
        if "--cpu" not in comfy_args:
            comfy_args.append("--cpu")  # a CPU worker leaves the machine's GPUs alone
        threads = max(1, int(options.cpus_per_worker))
    specs = []
    for k in range(1, count + 1):
        workdir = str(Path(options.worker_dir).resolve() / f"w{k}") if options.worker_dir else None
        specs.append(WorkerSpec(label=f"w{k}", comfy_args=comfy_args, threads=threads, workdir=workdir, **base))
    actor = {"num_gpus": per_gpu, "num_cpus": options.cpus_per_worker, "scheduling_strategy": "SPREAD"}
    return specs, actor


def run_fleet(jobs: list, settings: Settings, options: FleetOptions, store: ResultStore | None = None
              ) -> tuple[dict, int]:
    """Run the batch on Ray workers; returns the report and the exit status (as ``jobs.run_batch``: 0 every row
    succeeded, 1 some failed, 2 no worker to work with, 130 interrupted)."""
    store = store or ResultStore(settings.out_dir)
    started = time.monotonic()
    rows = prepare_rows(jobs, settings, store)
    for row in rows:
        if row.status == "failed":
            log.error("%s: skipped: %s", row.name, row.error)
    todo = [r for r in rows if r.status is None]
    stopped, status = None, 0
    try:
        store.check_writable()
    except ClientError as e:
        log.error("error: %s", e)
        stopped, status = str(e), 1
    if stopped is None and not todo:
        log.info("every row is done already (or failed before any server was needed); Ray is not started")
        report = build_report(rows, [], None, 0, time.monotonic() - started, None, {})
        return report, exit_status(report, 0)
    if stopped is not None:
        for r in todo:
            r.status, r.error = "failed", f"not tried: {stopped}"
        return build_report(rows, [], stopped, status, time.monotonic() - started, None, {}), status
    ray = import_ray()
    driver = _Driver(ray, rows, todo, settings, options, store)
    try:
        driver.run()
    finally:
        driver.close()
    report = build_report(rows, driver.workers, driver.stopped, driver.status, time.monotonic() - started,
                          driver.progress, driver.ray_info)  # fmt: skip
    return report, exit_status(report, driver.status)


class _Driver:
    """The loop that hands rows to free workers and takes their answers (:func:`run_fleet`)."""

    def __init__(self, ray, rows: list[Row], todo: list[Row], settings: Settings, options: FleetOptions,
                 store: ResultStore):
        self.ray, self.rows, self.settings, self.options, self.store = ray, rows, settings, options, store
        self.pending: collections.deque[Row] = collections.deque(todo)
        self.workers: list[Worker] = []
        self.calls: dict = {}  # object ref -> (what, worker, row, when it was made)
        self.deferred: list[tuple[float, str, Worker]] = []  # (when, "start"|"restart", worker): calls to make later
        self.stopped: str | None = None
        self.status = 0
        self.progress = BatchProgress(len(todo), enabled=options.progress)
        self.ray_info: dict = {}
        self.cluster = RayRun(ray, options)
        self.started_at = time.monotonic()
        self.run_id = uuid.uuid4().hex[:8]
        self.hurry = False  # a second Ctrl-C: stop without waiting for anything
        self.suspects: list[tuple[Worker, dict]] = []  # (worker, its "node lost" event) for actors that died
        self.next_node_check = 0.0

    # --- start -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        opts = self.options
        attached = [s for s in opts.specs if s.server]
        cpus = 0.0 if attached else (opts.workers or 1) * opts.cpus_per_worker
        self.ray_info = self.cluster.start(cpus)
        ray = self.ray
        if attached:
            # an address means what it means on this machine: its worker runs here (it only talks HTTP)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            specs, actor = attached, {"num_cpus": 0, "scheduling_strategy": here}
        else:
            specs, actor = worker_specs(ray, opts)
            if opts.worker_dir is None and self.cluster.own_temp is not None:
                for spec in specs:  # inside the run's folder, removed with it (also after a worker's process died)
                    spec.workdir = str(self.cluster.own_temp / "workers" / spec.label)
        for spec in specs:
            spec.client_id = spec.client_id or f"pbe-fleet-{self.run_id}-{spec.label}"
        remote = self.ray.remote(max_restarts=ACTOR_RESTARTS)(opts.worker_class)
        where = "a local Ray cluster" if opts.address is None else f"the Ray cluster at {opts.address}"
        self.progress.say(logging.INFO, "%d worker(s) on %s (Ray %s, up in %.1f s): %s", len(specs), where,
                          self.ray_info["version"], self.ray_info["startup_s"],
                          ", ".join(f"{s.label} {s.server or 'private ComfyUI'}" for s in specs))
        if "dashboard" in self.ray_info:
            self.progress.say(logging.INFO, "Ray dashboard: %s", self.ray_info["dashboard"])
        self.actor_options = actor
        self.started_at = time.monotonic()
        for spec in specs:
            handle = remote.options(**actor).remote(spec)
            w = Worker(spec, handle, "attached" if spec.server else "private")
            self.workers.append(w)
            self._call("start", w, None, handle.start.remote())

    def _call(self, what: str, w: Worker, row: Row | None, ref) -> None:
        self.calls[ref] = (what, w, row, time.monotonic())

    def _running(self) -> list[tuple[Worker, Row]]:
        return [(w, row) for what, w, row, _ in self.calls.values() if what == "run"]

    # --- the loop --------------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            try:
                self.start()
            except ClientError as e:  # said once here; the rows say "not tried" with it in the report
                self.progress.say(logging.ERROR, "error: %s", e)
                self._stop(str(e), 2)
                return
            while self.pending or self._running():
                self._dispatch()
                self._make_deferred_calls()
                if not self.calls and not self.deferred:
                    reasons = "; ".join(f"{w.spec.label}: {w.reason}" for w in self.workers if w.reason)
                    self._stop(f"no worker left ({reasons or 'none was started'})", 2)
                    break
                ready, _ = self.ray.wait(list(self.calls), num_returns=1, timeout=1.0) if self.calls else ([], [])
                if not self.calls:
                    time.sleep(0.2)
                for ref in ready:
                    self._answer(ref, *self.calls.pop(ref)[:3])
                self._check_starts()
                self._check_nodes()
                self.progress.draw()
        except KeyboardInterrupt:
            self._interrupted()
        finally:
            self.progress.close()

    def _dispatch(self) -> None:
        for w in self.workers:
            if w.state != "idle" or not self.pending:
                continue
            row = self.pending.popleft()
            try:
                prompt, inputs, row.key = job_key(row.job, self.settings)
            except ClientError as e:  # a file changed or vanished since the rows were read
                self._end(row, None, "failed", str(e))
                continue
            w.state = "busy"
            self.progress.sent()
            with interrupts_deferred():  # Ctrl-C between sending the row and noting it would lose track of it
                self._call("run", w, row, w.handle.run.remote(row.job, prompt, inputs))

    def _make_deferred_calls(self) -> None:
        now, later = time.monotonic(), []
        for when, what, w in self.deferred:
            if when > now:
                later.append((when, what, w))
            elif w.state != "retired":
                self._call(what, w, None, getattr(w.handle, what).remote())
        self.deferred = later

    def _check_starts(self) -> None:
        """A worker that Ray could not place or whose ComfyUI did not start in time is given up."""
        now = time.monotonic()
        for ref, (what, w, _, since) in list(self.calls.items()):
            if what in ("start", "restart") and now - since > START_TIMEOUT + 60:
                del self.calls[ref]
                self._retire(w, f"not ready after {now - since:.0f} s (Ray had no room for it: it wants "
                                f"{_wants(self.actor_options)}; the cluster has {self.ray.cluster_resources()}) or "
                                f"its ComfyUI did not start")  # fmt: skip

    def _answer(self, ref, what: str, w: Worker, row: Row | None) -> None:
        ray = self.ray
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayActorError as e:  # the actor's process died; Ray starts it again if it may
            unavailable = getattr(ray.exceptions, "ActorUnavailableError", None)  # Ray >= 2.2x: "is restarting"
            if what in ("start", "restart") and unavailable is not None and isinstance(e, unavailable):
                self.deferred.append((time.monotonic() + 1.0, what, w))  # no new death: ask again in a moment
                return
            self._actor_died(w, row, first_line(e))
            return
        except ray.exceptions.RayTaskError as e:  # an unexpected error inside the worker: the row's own failure
            if what == "run":
                w.state, w.failed = "idle", w.failed + 1
                self._end(row, w, "failed", f"the worker failed: {first_line(e)}")
            else:
                self._retire(w, f"the worker failed: {first_line(e)}")
            return
        if what in ("start", "restart"):
            if answer["ok"]:
                w.where = answer["where"]
                if w.ready_after is None:
                    w.ready_after = round(time.monotonic() - self.started_at, 1)
                w.state = "idle"
                if w.restarts:
                    w.events.append({"event": "restarted", "at": _now(), "node": w.where.get("node"),
                                     "where": _place(w.where)})  # fmt: skip
                self.progress.say(logging.INFO, "%s ready (%s)%s", w.spec.label, _place(w.where),
                                  " again" if w.restarts else f" after {w.ready_after:.0f} s")
            else:
                self._retire(w, answer["error"])
            return
        outcome = answer["status"]
        row.tries.append({"worker": w.spec.label, "outcome": outcome, "error": answer["error"],
                          "prompt_ids": answer["prompt_ids"], "seconds": answer["seconds"]})  # fmt: skip
        if outcome == "done":
            w.state = "idle"
            try:
                row.outputs = self.store.write(row.name, row.key, answer["outputs"])
            except ClientError as e:
                self._end(row, w, "failed", str(e))
                if isinstance(e, StopsBatch):
                    self._stop(str(e), 1)
                return
            w.done += 1
            self._end(row, w, "done", None)
        elif self.status == 130:  # its prompt was cancelled by Ctrl-C (or it ended otherwise meanwhile)
            w.state = "idle"
            self._end(row, w, "failed", "interrupted (Ctrl-C) while it ran")
        elif outcome == "failed":
            w.state, w.failed = "idle", w.failed + 1
            self._end(row, w, "failed", answer["error"])
        else:
            if answer["sent"]:
                w.lost_rows.append(row)
            self._lost(w, row, answer["error"], answer["sent"])
            if w.kind == "private" and w.restarts < WORKER_RESTARTS:
                w.state, w.restarts = "restarting", w.restarts + 1
                self.progress.say(logging.WARNING, "%s: %s; starting it again (restart %d of at most %d)",
                                  w.spec.label, answer["error"], w.restarts, WORKER_RESTARTS)
                self._call("restart", w, None, w.handle.restart.remote())
            else:
                self._retire(w, answer["error"])

    def _lost(self, w: Worker, row: Row, reason: str, sent: bool) -> None:
        """The row's worker lost it: back to the front of the queue, unless its tries are spent."""
        if sent:
            row.losses += 1
            w.lost += 1
        if self.stopped is not None:
            self._end(row, w, "failed", f"not tried again: {self.stopped} (its worker lost it: {reason})")
        elif row.losses > self.options.retries:
            tries = "; ".join(f"{t['worker']}: {t['error']}" for t in row.tries if t["outcome"] == "lost")
            self._end(row, w, "failed", f"the worker running this row died {row.losses} times; not tried again "
                                        f"(--retries {self.options.retries}): {tries}")  # fmt: skip
        else:
            self.progress.say(logging.WARNING, "%s: lost on %s (%s); it goes to the next free worker", row.name,
                              w.spec.label, reason)
            self.pending.appendleft(row)

    def _actor_died(self, w: Worker, row: Row | None, reason: str) -> None:
        reason = f"its Ray actor died: {reason}"
        node = w.where.get("node")
        if node:  # its machine may be gone: Ray says so once it has missed the node's heartbeats (_check_nodes)
            self.suspects.append((w, {"event": "node lost", "at": _now(), "node": node, "host": w.where.get("host"),
                                      "row": row.name if row is not None else None}))  # fmt: skip
        if row is not None:
            w.lost_rows.append(row)
            row.tries.append({"worker": w.spec.label, "outcome": "lost", "error": reason, "prompt_ids": [],
                              "seconds": None})  # fmt: skip
            self._lost(w, row, reason, sent=True)
        if w.state == "retired":
            return
        if w.restarts >= ACTOR_RESTARTS:
            self._retire(w, reason)
            return
        w.state, w.restarts = "restarting", w.restarts + 1
        self.progress.say(logging.WARNING, "%s: %s; Ray starts it again", w.spec.label, reason)
        self._call("start", w, None, w.handle.start.remote())  # answered once Ray has started the actor again

    def _check_nodes(self, final: bool = False) -> None:
        """For each worker whose actor died: once Ray counts its node dead, the worker's events say its machine was
        lost (when its actor died, which node). Every few seconds, and once more at the end (``final``)."""
        if not self.suspects or (not final and time.monotonic() < self.next_node_check):
            return
        self.next_node_check = time.monotonic() + 2.0
        try:
            alive = {n.get("NodeID") for n in self.ray.nodes() if n.get("Alive", True)}
        except Exception:  # the GCS may be unreachable for a moment: ask again later
            return
        for w, event in list(self.suspects):
            if event["node"] in alive:
                continue
            self.suspects.remove((w, event))
            if not any(e["event"] == "node lost" and e["node"] == event["node"] for e in w.events):
                w.events.append(event)
                self.progress.say(logging.WARNING, "%s: its machine (%s, Ray node %s) was lost at %s", w.spec.label,
                                  event["host"], event["node"], event["at"])

    def _retire(self, w: Worker, reason: str) -> None:
        w.state, w.reason = "retired", reason
        self.progress.say(logging.ERROR, "%s: given up: %s", w.spec.label, reason)

    def _end(self, row: Row, w: Worker | None, status: str, error: str | None) -> None:
        row.status, row.error = status, error
        if w is not None:
            row.worker = w.spec.label
        if status == "failed":
            self.progress.say(logging.ERROR, "%s: failed: %s", row.name, error)
        self.progress.ended(row.worker, status == "done")

    def _stop(self, reason: str, status: int) -> None:
        """No later row can succeed: the rows not sent yet are reported with ``reason``; those running still end."""
        self.stopped, self.status = reason, status
        for row in self.pending:
            row.status, row.error = "failed", f"not tried: {reason}"
        self.pending.clear()

    def _interrupted(self) -> None:
        """Ctrl-C: no new row; each running row's prompts are cancelled on its ComfyUI (``POST /queue`` delete and
        ``POST /interrupt``, by prompt id), and the answers of the rows running are taken for up to
        :data:`CANCEL_WAIT` seconds, so that a row that finished meanwhile keeps its result. A second Ctrl-C stops
        waiting at once."""
        self.stopped, self.status = "interrupted (Ctrl-C)", 130
        for row in self.pending:
            row.status, row.error = "failed", "not tried: interrupted (Ctrl-C)"
        self.pending.clear()
        self.deferred = []
        running = self._running()
        self.progress.say(logging.ERROR, "interrupted: cancelling the %d row(s) running on their ComfyUIs, then "
                          "stopping the workers (Ctrl-C again: stop at once)", len(running))  # fmt: skip
        try:
            self._cancel_running(running)
            deadline = time.monotonic() + CANCEL_WAIT
            while self._running() and time.monotonic() < deadline:
                refs = [ref for ref, (what, *_) in self.calls.items() if what == "run"]
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=max(0.01, min(0.5, deadline - time.monotonic())))
                for ref in ready:
                    self._answer(ref, *self.calls.pop(ref)[:3])
            if self._running():  # a row that queued its prompt only after the first cancel
                self._cancel_running(self._running())
        except KeyboardInterrupt:
            self.hurry = True
            self.progress.say(logging.ERROR, "interrupted again: stopping at once")
        for _, row in self._running():
            if row.status is None:
                row.status, row.error = "failed", "interrupted (Ctrl-C) while it ran"
        for row in self.rows:
            if row.status is None:
                row.status, row.error = "failed", "not tried: interrupted (Ctrl-C)"

    def _cancel_running(self, running: list[tuple[Worker, Row]]) -> None:
        """Cancel the prompts of the rows running, on every ComfyUI this machine can reach, all at once (a thread
        each): an attached server (its address is this machine's view), or a private ComfyUI on this machine (it
        listens on loopback; a Ray node of this machine too, by its host name). A private ComfyUI on another machine
        ends its prompt when its worker stops it."""
        import threading

        here = socket.gethostname()
        threads = []
        for w, _ in running:
            address = w.spec.server or (w.where.get("address") if w.where.get("host") == here else None)
            if address:
                t = threading.Thread(target=_cancel_prompts, args=(address, w.spec.client_id), daemon=True)
                t.start()
                threads.append(t)
        deadline = time.monotonic() + CANCEL_WAIT
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # --- the end ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every worker's ComfyUI, then Ray (a local cluster) or leave the cluster; Ctrl-C and SIGTERM wait
        until that is done, so that nothing is left running."""
        if not self.cluster.started:
            self.cluster.stop()
            return
        ray = self.ray
        if not self.hurry:  # the workers stop their ComfyUIs; a second Ctrl-C cuts this short (they die with Ray)
            try:
                refs = []
                for w in self.workers:  # not one Ray is still (re)starting: its stop would wait for a place
                    if w.state not in ("restarting", "starting"):
                        with contextlib.suppress(Exception):
                            refs.append(w.handle.stop.remote())
                if refs:
                    with contextlib.suppress(Exception):
                        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT if self.status == 130 else STOP_WAIT)
            except KeyboardInterrupt:
                self.progress.say(logging.ERROR, "interrupted again: stopping at once")
        with ignoring_interrupts():  # short: what is left running ends here
            with contextlib.suppress(Exception):
                self._check_nodes(final=True)
            for w in self.workers:
                with contextlib.suppress(Exception):
                    ray.kill(w.handle, no_restart=True)
                lost = [e for e in w.events if e["event"] == "node lost"]
                if w.state == "restarting" and lost:  # Ray had found it no place since its machine was lost
                    w.state = "lost"
                    w.reason = (f"its machine ({lost[-1]['host']}, Ray node {lost[-1]['node']}) was lost at "
                                f"{lost[-1]['at']} and Ray had not started it again when the run ended")
                elif w.state != "retired":
                    w.state = "stopped"
            self.cluster.stop()


def _cancel_prompts(server: str, client_id: str) -> None:
    """Take a worker's prompts (by its client id) off a running server's queue, interrupting the one running."""
    client = ComfyClient(server, progress=False)
    try:
        queue = json.loads(client.request("/queue", timeout=CANCEL_WAIT))
    except (ClientError, ServerUnreachable, ValueError) as e:
        log.warning("could not cancel the prompts of %s on %s: %s", client_id, server, e)
        return
    for key in ("queue_running", "queue_pending"):
        for item in queue.get(key) or []:
            if (isinstance(item, list) and len(item) > 3 and isinstance(item[3], dict)
                    and item[3].get("client_id") == client_id):  # fmt: skip
                if client.cancel(item[1]):
                    log.warning("cancelled prompt %s of %s on %s", item[1], client_id, client.base)


def _now() -> str:
    """The time of day in UTC, as the report gives it: ``2026-12-07T18:40:12Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _wants(actor: dict) -> str:
    return ", ".join(f"{k} {actor[k]:g}" for k in ("num_cpus", "num_gpus") if actor.get(k)) or "nothing"


def _place(where: dict) -> str:
    parts = [where.get("host"), where.get("address")]
    if where.get("gpus"):
        parts.append(f"GPU {','.join(where['gpus'])}")
    return ", ".join(p for p in parts if p)
