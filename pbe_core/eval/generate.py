"""``python -m pbe_core.eval generate COCOEE_DIR OUT --model FILE (--comfyui PATH | --server HOST:PORT)``.

The 3,500 COCOEE edits through ComfyUI, headless, with the pack's client (``pbe_core.client``): a private ComfyUI
started for the run or a running one, the files checked and uploaded, progress, reconnects, results written
atomically beside a sidecar with their settings hash, so that a rerun of the same command skips every finished row
whose settings match (``--force`` redoes them) and never counts a half-written image.

By default the official protocol (``docs/evaluation.md``): the workflow ``official_workflow.json`` beside this module
is the modular graph with the official sampler (``PBE_SamplerSelect`` 'reference' + ``PBE_ReferenceScheduler``: PLMS
over 981, 961, ..., 1), 50 steps, guidance 5, the exemplar squashed to 224, the whole 512x512 decoded frame saved as
the official script saves it (nothing pasted back). Seeds: the official script seeds once with 42 and then draws the
noise batch by batch, which a per-row edit cannot reproduce; here row ``k`` (in ``id_list.npy`` order) gets seed
``42 + k``, so every row has its own noise and a rerun the same. Any other workflow and settings can be given, as to
the client (``--workflow pbe_high_resolution``, ``--set``, ``--steps``, ...), e.g. the one-node edit with its
paste-back.

Written into OUT: ``results/{id:012d}.png`` (+ ``.pbe.json`` sidecars), ``manifest.json`` (model file and SHA-256,
settings, one row per result: what ``score`` reads) and ``generate_report.json`` (every row's status; failures with
the server's reason).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import sys
from pathlib import Path

from ..client.errors import ClientError
from ..client.progress import BatchProgress
from ..client.report import write_report
from ..client.results import ResultStore
from ..client.settings import Job
from . import cocoee
from .manifest import write_manifest

log = logging.getLogger("pbe_core.eval")

OFFICIAL_WORKFLOW = Path(__file__).resolve().parent / "official_workflow.json"
OFFICIAL_SEED = 42


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..client.cli import FLEET_GROUP, add_fleet_options, add_run_options

    p.add_argument("cocoee", type=Path, help="COCOEE folder (id_list.npy, GT_3500/, Ref_3500/, Mask_bbox_3500/)")
    p.add_argument("out", type=Path, help="output folder: results/, manifest.json, generate_report.json")
    p.add_argument("--limit", type=int, help="only the first N rows (in id_list order), e.g. for a trial run")
    p.add_argument("--seed-base", type=int, default=OFFICIAL_SEED,
                   help="row k gets seed SEED_BASE + k (default %(default)s, the official seed)")
    add_run_options(p.add_argument_group("the client's options (python -m pbe_core.client batch --help)"),
                    output=False)  # fmt: skip
    add_fleet_options(p.add_argument_group(FLEET_GROUP))
    p.set_defaults(workflow=str(OFFICIAL_WORKFLOW))
    p.epilog = (
        "The other options are the client's (python -m pbe_core.client batch --help): --model (required), --comfyui "
        "or --server, --ray with --workers (many ComfyUIs), --workflow (default: the official protocol), --steps, "
        "--cfg, --set NODE.INPUT=VALUE, --force, ..."
    )


def model_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file; of a diffusers folder, over its files' names and SHA-256 in sorted order."""
    from .clip_features import sha256_of

    if path.is_file():
        return sha256_of(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_of(p)}\n".encode())
    return h.hexdigest()


def generate(args: argparse.Namespace) -> int:
    """The edits, as the command line (:func:`add_arguments`) says, on the client's batch (``cli.batch_report``)."""
    from ..client.cli import batch_report, settings_from_args, with_servers

    if not args.model:
        raise ClientError("generate needs --model: the Paint-by-Example checkpoint to evaluate")
    client_args = with_servers(argparse.Namespace(**vars(args)))
    rows = cocoee.read_rows(args.cocoee)
    if args.limit is not None:
        rows = rows[: args.limit]
    results = args.out / cocoee.RESULTS_DIR
    client_args.output = results
    settings = settings_from_args(client_args)
    jobs = [Job(r.name, r.gt, r.mask, [r.ref], args.seed_base + k) for k, r in enumerate(rows)]
    store = ResultStore(results)
    # one ComfyUI (a line per row with the rate and the time left), or with --ray many workers (the fleet's own bar)
    progress = BatchProgress(len(jobs))
    with contextlib.ExitStack() as stack:
        report, status = batch_report(client_args, settings, jobs, store, stack, progress=progress)
    done = {r["name"]: r for r in report["rows"] if r["ok"] and r["outputs"]}
    model = Path(client_args.model)
    model_sha = model_sha256(model) if model.exists() else "0" * 64  # a name the server knows: no file here
    protocol = {
        "workflow": str(client_args.workflow), "overrides": dict(settings.values),
        "sets": [list(s) for s in settings.sets], "seed": f"{args.seed_base} + row index (id_list order)",
    }  # fmt: skip
    write_manifest(args.out, model.name, model_sha, protocol,
                   [{"id": r.name, "result": os.path.relpath(done[r.name]["outputs"][0], args.out),
                     "seed": args.seed_base + k} for k, r in enumerate(rows) if r.name in done])  # fmt: skip
    write_report(report, args.out / "generate_report.json")
    failed = [r for r in report["rows"] if not r["ok"]]
    sys.stdout.write(f"{len(done)} of {len(rows)} rows have results in {results}; manifest: "
                     f"{args.out / 'manifest.json'}\n")
    for r in failed:
        sys.stdout.write(f"FAILED {r['name']}: {r['error']}\n")
    return status
