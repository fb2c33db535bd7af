"""``python -m pbe_core.client``: the command line of the headless client."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from .api import ComfyClient
from .embedded import PACK_DIR, EmbeddedError, PrivateComfyUI
from .errors import ClientError, ServerStartError, ServerUnreachable
from .jobs import jobs_from_csv, jobs_from_folder, run_batch, run_job
from .report import keep_earlier_report, report_markdown, write_report
from .results import ResultStore, atomic_write
from .settings import Job, Settings
from .workflow import DEFAULT_WORKFLOW, OVERRIDES, check_workflow, load_workflow

log = logging.getLogger("pbe_core.client")

#: times a private ComfyUI that exited is started again in one run
PRIVATE_RESTARTS = 2


# --- command line --------------------------------------------------------------------------------------------------------
def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_set(text: str) -> tuple[str, str, object]:
    target, sep, value = text.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node or not name:
        raise argparse.ArgumentTypeError(f"--set wants NODE.INPUT=VALUE (NODE: id or title), not {text!r}")
    return node, name, _value(value)


def add_run_options(p, output: bool = True) -> None:
    """The options every command of the client takes (where, how, the workflow and its settings) on ``p``, a parser
    or an argument group; ``output``: with ``-o/--output`` (``python -m pbe_core.eval generate`` names its own)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--comfyui", type=Path, metavar="PATH",
                       help="start a private headless ComfyUI from this ComfyUI folder for the run, and stop it after "
                       "(the default when COMFYUI_PATH is set or this pack sits in a ComfyUI's custom_nodes)")
    where.add_argument("--server", metavar="HOST:PORT", action="append",
                       help="use a running ComfyUI instead, e.g. 127.0.0.1:8188 (batch --ray: repeat it for several, "
                       "one worker each)")
    p.add_argument("--comfy-python", metavar="PYTHON",
                   help="with --comfyui: the Python that runs ComfyUI (default: its venv, or this Python)")
    p.add_argument("--comfy-args", default="", metavar="ARGS",
                   help="with --comfyui: more ComfyUI options, e.g. '--lowvram' or '--cpu'")
    p.add_argument("--client-id", help="client id for /prompt and /ws (default: random for each run; two runs "
                   "sharing one share its /ws messages)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for one edit once queued; it is "
                   "cancelled after (default %(default)s)")
    p.add_argument("--reconnect-wait", type=float, default=120, metavar="SECONDS",
                   help="when the server goes away: how long to wait for it to come back (default %(default)s)")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW,
                   help="API workflow: a name in workflows/api/ or a JSON file (default %(default)s)")
    if output:
        p.add_argument("-o", "--output", type=Path, default=Path("pbe_results"), help="folder for the results")
    p.add_argument("--force", action="store_true",
                   help="edit again even where the result is there for the same settings (default: skip it)")
    p.add_argument("--model", help="the Paint-by-Example model: a name in ComfyUI/models/paint_by_example/, or "
                   "with a private ComfyUI also a path to a checkpoint file or diffusers folder")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--sampler", help="sampler_name, e.g. reference, ddim, euler")
    p.add_argument("--scheduler")
    p.add_argument("--denoise", type=float)
    p.add_argument("--set", dest="sets", action="append", type=_parse_set, default=[],
                   metavar="NODE.INPUT=VALUE", help="set any input (NODE: id or title; VALUE: JSON or text)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")


def add_fleet_options(p) -> None:
    """``--ray`` and the options of its workers, on ``p`` (a parser or an argument group)."""
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the rows on Ray workers, each with its own ComfyUI: without ADDRESS on a Ray cluster "
                   "started for the run on this machine; 'auto' or HOST:PORT for a running cluster (ray start). "
                   "Put it after ROWS, or write --ray=ADDRESS")
    p.add_argument("--workers", type=int, metavar="N", help="with --ray: private ComfyUI workers (default: one "
                   "per GPU of the cluster, or one CPU worker)")
    p.add_argument("--gpus-per-worker", type=float, metavar="X", help="with --ray: GPUs each private worker "
                   "holds (default 1 when the cluster has GPUs, else 0: CPU workers); 0.5 puts two on each GPU")
    p.add_argument("--cpus-per-worker", type=float, default=1, metavar="N", help="with --ray: CPUs each private "
                   "worker holds; a CPU worker's ComfyUI uses that many threads (default %(default)s)")
    p.add_argument("--retries", type=int, default=2, metavar="N", help="with --ray: times a row whose worker died "
                   "while running it is given to another worker before it fails (default %(default)s)")
    p.add_argument("--worker-dir", type=Path, metavar="DIR", help="with --ray: keep each private worker's ComfyUI "
                   "folder (its log, inputs, outputs) in DIR/w1, DIR/w2, ... (default: temporary, removed)")
    p.add_argument("--ray-dashboard", action="store_true", help="with --ray and no ADDRESS: start Ray's dashboard "
                   "too (needs pip install 'ray[default]'); a running cluster keeps its own")
    p.add_argument("--ray-temp-dir", type=Path, metavar="DIR", help="with --ray and no ADDRESS: Ray's folder for "
                   "the run (sessions, logs; kept); default: a temporary folder, removed after the run")


FLEET_GROUP = "many workers (Ray; README, 'Many GPUs / many machines')"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_run_options(common)
    parser = argparse.ArgumentParser(prog="python -m pbe_core.client", description=PACKAGE_DOC.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    edit = sub.add_parser("edit", parents=[common], help="edit one photo")
    edit.add_argument("source", type=Path)
    edit.add_argument("mask", type=Path, help="PNG, white = region to replace")
    edit.add_argument("exemplar", type=Path, nargs="+", help="exemplar image(s); several for a multi-exemplar workflow")
    batch = sub.add_parser("batch", parents=[common], help="edit a folder or a CSV of rows")
    batch.add_argument("rows", type=Path, help="a folder (NAME, NAME_mask.png, NAME_exemplar.*) or a CSV file")
    batch.add_argument("--exemplar", type=Path, action="append", default=[],
                       help="exemplar for folder rows without their own; repeat it for a workflow with several")
    batch.add_argument("--report", type=Path, help="where to write the JSON report (default OUTPUT/report.json)")
    add_fleet_options(batch.add_argument_group(FLEET_GROUP))
    return parser


def _comfyui_folder(args) -> Path | None:
    """The ComfyUI folder to start privately: --comfyui, else COMFYUI_PATH, else the ComfyUI this pack is installed
    in (ComfyUI/custom_nodes/<pack>); None when --server was given or none is found."""
    if args.server:
        return None
    if args.comfyui:
        return args.comfyui
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"])
    if PACK_DIR.parent.name == "custom_nodes" and (PACK_DIR.parent.parent / "main.py").is_file():
        return PACK_DIR.parent.parent
    return None


def _model_identity(path: Path) -> dict:
    """What identifies a model given by path in a result's key: size and modification time of its file(s)."""
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return {"model_files": [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
        st = path.stat()
    except OSError as e:
        raise ClientError(f"cannot read the model {str(path)!r}: {e.strerror or e}") from None
    return {"model_file": [st.st_size, st.st_mtime_ns]}


def _reviver(server: PrivateComfyUI) -> Callable[[], None]:
    """``revive`` for the client: start the private ComfyUI again if it exited, at most PRIVATE_RESTARTS times."""
    restarts = 0

    def revive() -> None:
        nonlocal restarts
        if server.alive():
            return
        status = server.proc.returncode if server.proc is not None else None
        if restarts >= PRIVATE_RESTARTS:
            raise EmbeddedError(f"the private ComfyUI exited (status {status}) after {restarts} restarts; the end of "
                                f"its log:\n{server.log()[-2000:]}")
        restarts += 1
        log.warning("the private ComfyUI exited (status %s); starting it again (restart %d of at most %d)", status,
                    restarts, PRIVATE_RESTARTS)
        server.restart(progress=log.info)

    return revive


def connector(args, settings: Settings, stack: contextlib.ExitStack) -> Callable[[], ComfyClient]:
    """A function that returns the run's client, connecting on its first call: to ``--server``, or to a private
    ComfyUI started then (a ``--model`` path linked into it) and stopped when ``stack`` closes. A run whose rows
    are all done already starts no ComfyUI."""
    made: list = []

    def connect() -> ComfyClient:
        if made:
            if isinstance(made[0], Exception):
                raise made[0]
            return made[0]
        folder = _comfyui_folder(args)
        revive = None
        address = args.server
        if folder is not None:
            try:
                server = PrivateComfyUI(folder, python=args.comfy_python, extra_args=shlex.split(args.comfy_args))
                stack.callback(server.stop)
                if settings.model_path is not None:
                    server.add_model(settings.model, settings.model_path)
                server.start(progress=log.info)
            except (EmbeddedError, OSError) as e:
                made.append(ServerStartError(f"could not start a private ComfyUI: {e}"))
                raise made[0] from None
            address, revive = server.base_url, _reviver(server)
        made.append(ComfyClient(address, args.client_id, args.timeout, progress=not args.no_progress,
                                reconnect_wait=args.reconnect_wait, revive=revive))
        return made[0]

    return connect


def settings_from_args(args) -> Settings:
    """The batch's Settings from the command line's options (the eval's ``generate`` builds its rows itself)."""
    workflow = load_workflow(args.workflow)
    check_workflow(workflow)
    settings = Settings(
        workflow=workflow,
        out_dir=args.output,
        model=args.model,
        values={k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None},
        sets=args.sets,
        force=args.force,
    )
    if args.model and _comfyui_folder(args) is not None and Path(args.model).exists():
        settings.model_path = Path(args.model)
        settings.model = settings.model_path.name  # the name it is linked under in the private ComfyUI
        settings.identity = _model_identity(settings.model_path)
    return settings


def _rows(args) -> list:
    if args.rows.is_dir():
        return jobs_from_folder(args.rows, args.exemplar)
    if args.exemplar:
        raise ClientError("--exemplar is for folder batches; a CSV names each row's exemplars (columns exemplar, "
                          "exemplar2, ...)")
    if args.rows.is_file():
        return jobs_from_csv(args.rows)
    raise ClientError(f"{str(args.rows)!r} is neither a folder nor a CSV file")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``servers`` (every ``--server``) and ``server`` (the first, or None)."""
    return with_servers(build_parser().parse_args(argv))


def with_servers(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` (from :func:`add_run_options`) with ``servers`` (every ``--server``) and ``server`` (the first, or
    None)."""
    args.servers = list(args.server or [])
    args.server = args.servers[0] if args.servers else None
    return args


def batch_report(args, settings: Settings, jobs: list, store: ResultStore, stack: contextlib.ExitStack,
                 progress: Callable[[int, dict], None] | None = None) -> tuple[dict, int]:
    """Run ``jobs`` as the command line says, on one ComfyUI or (``--ray``) on Ray workers; the report and the exit
    status. ``python -m pbe_core.eval generate`` runs its rows through here too. ``progress``: one-server batches."""
    if getattr(args, "ray", None) is not None:
        return _fleet_run(args, settings, jobs, store)
    return run_batch(connector(args, settings, stack), jobs, settings, store, progress)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    with contextlib.suppress(ValueError):  # not in the main thread (called from other code): no handler then
        signal.signal(signal.SIGTERM, _interrupt)  # a batch stopped by kill still cancels its prompt and reports
    try:
        return _main(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


def _main(args) -> int:
    with contextlib.ExitStack() as stack:
        try:
            if len(args.servers) > 1 and getattr(args, "ray", None) is None:
                raise ClientError(f"{len(args.servers)} --server given; several servers need batch --ray (one worker "
                                  f"each), one server does without")
            settings = settings_from_args(args)
            if _comfyui_folder(args) is None and not args.server:
                raise ClientError(
                    "no ComfyUI to use: give --comfyui /path/to/ComfyUI (a private one is started for this run) or "
                    "--server HOST:PORT (a ComfyUI already running, e.g. 127.0.0.1:8188)"
                )
            connect = connector(args, settings, stack)
            store = ResultStore(settings.out_dir)
            if args.command == "edit":
                job = Job(args.source.stem, args.source, args.mask, list(args.exemplar), args.seed)
                store.check_writable()
                result = run_job(connect, job, settings, store)
                if result.skipped:
                    log.info("%s: already done with the same settings; --force does it again", job.name)
                for path in result.paths:
                    sys.stdout.write(f"{path}\n")
                return 0
            jobs = _rows(args)
            if not jobs:
                raise ClientError(f"no rows in {str(args.rows)!r}")
            if args.ray is not None:
                report, status = _fleet_run(args, settings, jobs, store)
                return _summary(args, report, status, report_markdown)
        except ClientError as e:
            log.error("error: %s", e)
            return 1
        except ServerUnreachable as e:
            log.error("error: %s", e)
            return 2
        except OSError as e:  # a file problem nothing above named: still a message, not a traceback
            log.debug("", exc_info=True)
            log.error("error: %s", e)
            return 1
        report, status = run_batch(connect, jobs, settings, store)
        return _summary(args, report, status)  # before a private ComfyUI is stopped: a second Ctrl-C then loses nothing


def _summary(args, report: dict, status: int, markdown: Callable[[dict], str] | None = None) -> int:
    """Write the report (and ``report.md`` beside it when ``markdown`` is given; an earlier run's goes to
    ``reports/``), print the summary, return status."""
    report_path = args.report or args.output / "report.json"
    keep_earlier_report(report_path)
    written = write_report(report, report_path)
    if written and markdown is not None:
        md = report_path.with_suffix(".md")
        try:
            atomic_write(md, markdown(report).encode())
        except ClientError as e:
            log.error("error: %s was not written: %s", md.name, e)
    skipped = f" ({report['skipped']} already done)" if report["skipped"] else ""
    sys.stdout.write(f"{report['succeeded']} of {len(report['rows'])} rows succeeded{skipped}; "
                     + (f"report: {report_path}\n" if written else "no report written (see the error above)\n"))
    not_tried = f"not tried: {report['stopped']}" if report.get("stopped") else None
    for r in report["rows"]:
        if not r["ok"]:  # the reason every row not tried shares is said once, on stderr (and in full in the report)
            why = "not tried (the batch stopped: see the error above)" if r["error"] == not_tried else r["error"]
            sys.stdout.write(f"FAILED {r['name']}: {why}\n")
    return status


def _fleet_run(args, settings: Settings, jobs: list, store: ResultStore) -> tuple[dict, int]:
    """``batch --ray``: the rows on Ray workers (``fleet``, imported only here: Ray is an optional extra)."""
    from . import fleet

    fleet.import_ray()  # the install hint before any work
    if args.workers is not None and args.workers < 1:
        raise ClientError(f"--workers {args.workers}: give 1 or more")
    if args.retries < 0:
        raise ClientError(f"--retries {args.retries}: give 0 or more")
    if args.servers and (args.workers is not None or args.gpus_per_worker is not None):
        raise ClientError("--workers and --gpus-per-worker are for private ComfyUIs; with --server each server is "
                          "one worker (repeat --server for several)")
    common = {"timeout": args.timeout, "reconnect_wait": args.reconnect_wait}
    options = fleet.FleetOptions(
        address=args.ray or None, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker, retries=args.retries, worker_dir=args.worker_dir,
        dashboard=args.ray_dashboard, temp_dir=args.ray_temp_dir, verbose=args.verbose,
        progress=not args.no_progress,
    )  # fmt: skip
    client_ids = (lambda k: f"{args.client_id}-w{k}") if args.client_id else (lambda k: None)
    if args.servers:
        options.specs = [fleet.WorkerSpec(label=f"w{k}", server=server, client_id=client_ids(k), **common)
                         for k, server in enumerate(args.servers, 1)]  # fmt: skip
    else:
        folder = _comfyui_folder(args)
        options.private = {
            "comfyui": str(folder.resolve()), "python": args.comfy_python, "comfy_args": shlex.split(args.comfy_args),
            "model_name": settings.model if settings.model_path else None,
            "model_path": str(settings.model_path.resolve()) if settings.model_path else None, **common,
        }  # fmt: skip
    return fleet.run_fleet(jobs, settings, options, store)
