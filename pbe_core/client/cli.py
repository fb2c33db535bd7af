"""``python -m pbe_core.client``: the command line of the headless client."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from .api import ClientError, ComfyClient
from .embedded import PACK_DIR, EmbeddedError, PrivateComfyUI
from .jobs import Job, Settings, jobs_from_csv, jobs_from_folder, run_batch, run_job
from .workflow import DEFAULT_WORKFLOW, OVERRIDES, load_workflow

log = logging.getLogger("pbe_core.client")

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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument("--comfyui", type=Path, metavar="PATH",
                       help="start a private headless ComfyUI from this ComfyUI folder for the run, and stop it after "
                       "(the default when COMFYUI_PATH is set or this pack sits in a ComfyUI's custom_nodes)")
    where.add_argument("--server", metavar="HOST:PORT", help="use a running ComfyUI instead, e.g. 127.0.0.1:8188")
    common.add_argument("--comfy-python", metavar="PYTHON",
                        help="with --comfyui: the Python that runs ComfyUI (default: its venv, or this Python)")
    common.add_argument("--comfy-args", default="", metavar="ARGS",
                        help="with --comfyui: more ComfyUI options, e.g. '--lowvram' or '--cpu'")
    common.add_argument("--client-id", help="client id for /prompt and /ws (default: random)")
    common.add_argument("--timeout", type=float, default=600, help="seconds to wait for one edit (default %(default)s)")
    common.add_argument("--workflow", default=DEFAULT_WORKFLOW,
                        help="API workflow: a name in workflows/api/ or a JSON file (default %(default)s)")
    common.add_argument("-o", "--output", type=Path, default=Path("pbe_results"), help="folder for the results")
    common.add_argument("--model", help="the Paint-by-Example model: a name in ComfyUI/models/paint_by_example/, or "
                        "with a private ComfyUI also a path to a checkpoint file or diffusers folder")
    common.add_argument("--seed", type=int)
    common.add_argument("--steps", type=int)
    common.add_argument("--cfg", type=float)
    common.add_argument("--sampler", help="sampler_name, e.g. reference, ddim, euler")
    common.add_argument("--scheduler")
    common.add_argument("--denoise", type=float)
    common.add_argument("--set", dest="sets", action="append", type=_parse_set, default=[],
                        metavar="NODE.INPUT=VALUE", help="set any input (NODE: id or title; VALUE: JSON or text)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument("-v", "--verbose", action="store_true")

    parser = argparse.ArgumentParser(prog="python -m pbe_core.client", description=PACKAGE_DOC.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    edit = sub.add_parser("edit", parents=[common], help="edit one photo")
    edit.add_argument("source", type=Path)
    edit.add_argument("mask", type=Path, help="PNG, white = region to replace")
    edit.add_argument("exemplar", type=Path, nargs="+", help="exemplar image(s); several for a multi-exemplar workflow")
    batch = sub.add_parser("batch", parents=[common], help="edit a folder or a CSV of rows")
    batch.add_argument("rows", type=Path, help="a folder (NAME, NAME_mask.png, NAME_exemplar.*) or a CSV file")
    batch.add_argument("--exemplar", type=Path, help="exemplar for folder rows without their own")
    batch.add_argument("--report", type=Path, help="where to write the JSON report (default OUTPUT/report.json)")
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


@contextlib.contextmanager
def comfyui_address(args, settings: Settings):
    """Yield the address of the ComfyUI to use: ``--server``'s, or a private one's, started here and stopped after
    (a ``--model`` path is linked into its models folder, and the workflow gets the file's name)."""
    folder = _comfyui_folder(args)
    if folder is None:
        if not args.server:
            raise ClientError(
                "no ComfyUI to use: give --comfyui /path/to/ComfyUI (a private one is started for this run) or "
                "--server HOST:PORT (a ComfyUI already running, e.g. 127.0.0.1:8188)"
            )
        yield args.server
        return
    server = PrivateComfyUI(folder, python=args.comfy_python, extra_args=shlex.split(args.comfy_args))
    try:
        if settings.model and Path(settings.model).exists():
            settings.model = server.add_model(Path(settings.model).name, settings.model)
        server.start(progress=log.info)
        yield server.base_url
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        settings = Settings(
            workflow=load_workflow(args.workflow),
            out_dir=args.output,
            model=args.model,
            values={k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None},
            sets=args.sets,
        )
        if args.command == "edit":
            jobs = [Job(args.source.stem, args.source, args.mask, list(args.exemplar), args.seed)]
        elif args.rows.is_dir():
            jobs = jobs_from_folder(args.rows, args.exemplar)
        elif args.rows.is_file():
            jobs = jobs_from_csv(args.rows)
        else:
            raise ClientError(f"{str(args.rows)!r} is neither a folder nor a CSV file")
        if not jobs:
            raise ClientError(f"no rows in {str(args.rows)!r}")
        with comfyui_address(args, settings) as address:
            client = ComfyClient(address, args.client_id, args.timeout, progress=not args.no_progress)
            if args.command == "edit":
                for path in run_job(client, jobs[0], settings):
                    sys.stdout.write(f"{path}\n")
                return 0
            report = run_batch(client, jobs, settings)
    except (ClientError, EmbeddedError) as e:
        log.error("error: %s", e)
        return 1
    except ConnectionError as e:
        log.error("error: %s", e)
        return 2
    failed = [r for r in report if not r["ok"]]
    report_path = args.report or args.output / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps({"rows": report, "failed": len(failed), "succeeded": len(report) - len(failed)},
                                      indent=2) + "\n")
    sys.stdout.write(f"{len(report) - len(failed)} of {len(report)} rows succeeded; report: {report_path}\n")
    for r in failed:
        sys.stdout.write(f"FAILED {r['name']}: {r['error']}\n")
    return 1 if failed else 0
