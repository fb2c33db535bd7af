"""A batch on many ComfyUI workers with Ray: ``python -m pbe_core.client batch ROWS -o OUT --ray [ADDRESS]``.

Ray (PyPI ``ray``, the pack's ``fleet`` extra) is imported by this package only (``cluster.import_ray``), and the package
only when ``--ray`` is given: the rest of the client keeps to the standard library.

Who does what:

* **Ray** places the workers (one per GPU with ``num_gpus=1``, or CPU workers), starts an actor again when its process
  dies (on another machine if its own is gone), carries rows and results between machines, and shows it all in its
  dashboard when the cluster has one.
* **A worker** (:class:`FleetWorker`, one Ray actor) owns one headless ComfyUI with this pack: a private one it starts
  (``embedded.PrivateComfyUI``, what the client's ``--comfyui`` starts) or a running one it attaches to (``--server``,
  one worker each). It does one row at a time with the single-server client's code (``jobs.execute``: upload, queue,
  follow, download) and returns the result's bytes.
* **This process** (the driver) reads the rows and their files, knows which rows are done (``results.ResultStore``:
  the sidecars of the single-server batch, unchanged), hands each row to a free worker as one Ray actor task, writes
  each result into OUT as it comes back (atomically, with its settings hash, by ``ResultStore.write``), and keeps the
  progress bar and the report. The photos and the results stay on this machine; a worker needs only ComfyUI, the pack
  and the model.

Nothing lost, nothing done twice:

* A row is on one worker at a time, and its result is written by the driver once. It goes to another worker only when
  the one running it lost it: its private ComfyUI exited, or stopped answering for ``--reconnect-wait`` seconds (the
  worker ends it and starts it again, at most :data:`WORKER_RESTARTS` times, and takes rows again), the actor's process
  died (Ray starts it again, at most ``max_restarts`` times), or an
  attached server stayed away longer than ``--reconnect-wait`` (that worker is given up; if the server was only cut
  off, not dead, it may finish the prompt too, but the result is still written once).
* A row whose worker died while running it is given to another ``--retries`` times (default 2); then it fails with
  the reasons. A row the server refuses (an empty mask, an unknown model) or whose files cannot be read fails at once
  with its reason. Neither stops the batch; a result that cannot be written (a full disk) does, as in the single-server
  batch.
* A batch stopped (Ctrl-C, a lost machine) and started again with the same command skips the rows already done with
  the same settings; a half-written result never counts (``results``). A run with every row done starts no Ray.

Ray's processes: without ADDRESS a local cluster is started for the run (``num_cpus`` = this machine's cores or what
the workers reserve, no dashboard unless ``--ray-dashboard``, its folder a temporary one, removed after) and stopped
when the command ends, Ctrl-C and SIGTERM included; the workers stop their ComfyUIs first. With ADDRESS (``auto``, or
the head's ``HOST:PORT``) the cluster is the user's: the run's workers leave it when the run ends, the cluster stays.

Visible: one progress bar for the whole batch (done, failed, rows/s, ETA, rows per worker) on stderr, redrawn in place
on a terminal, a line per finished row in a log; ``report.json`` (the single-server batch's, plus each row's worker
and tries with their prompt ids, and the workers) and ``report.md`` beside it.

Modules: ``driver`` (this process: rows, the loop, Ctrl-C, the report), ``worker`` (the Ray actor and its ComfyUI),
``cluster`` (importing, starting and stopping Ray, the run's Ray folder and leftover processes, signals). The progress
bar is the client's ``progress.BatchProgress``; the report's schema and ``report.md`` are the client's ``report``.
"""

from ..progress import BatchProgress
from ..report import report_markdown
from .cluster import (
    OWNER_FILE,
    RAY_REQUIREMENT,
    clean_stale_ray_folders,
    end_processes_of,
    import_ray,
    process_identity,
)
from .driver import FleetOptions, prepare_rows, run_fleet, worker_specs
from .worker import ComfyUIDied, FleetWorker, WorkerClient, WorkerSpec

__all__ = [
    "OWNER_FILE", "RAY_REQUIREMENT", "BatchProgress", "ComfyUIDied", "FleetOptions", "FleetWorker", "WorkerClient",
    "WorkerSpec", "clean_stale_ray_folders", "end_processes_of", "import_ray", "prepare_rows", "process_identity",
    "report_markdown", "run_fleet", "worker_specs",
]  # fmt: skip
