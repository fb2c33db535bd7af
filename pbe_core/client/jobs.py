"""One edit (files -> uploads -> prompt -> results) and the rows of a batch. Standard library only.

A row is skipped when its result is already there for the same settings (``results.ResultStore.done``; ``--force`` does
it again). A row whose server connection is lost waits for the server (``api.ComfyClient.wait_for_server``) and goes
on: a prompt the server still knows is followed to its end, one it lost (it restarted) is queued again, at most
:data:`MAX_REQUEUES` times. The batch stops early only for what every later row would meet too (``errors.StopsBatch``:
the server gone, the output folder not writable) or Ctrl-C, and reports every row either way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import png
from .api import ComfyClient, history_error
from .errors import ClientError, PromptLost, ServerError, ServerGone, ServerUnreachable, StopsBatch
from .report import batch_report, exit_status, row_entry
from .results import ResultStore, settings_hash
from .settings import Job, Settings
from .workflow import Slots, apply_settings, decode_text, find_slots

log = logging.getLogger("pbe_core.client")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
#: times one row's prompt may be queued again after the server lost it (restarted), and reconnections per row
MAX_REQUEUES = 2
MAX_RECONNECTS = 5
#: seconds Ctrl-C waits for the server to end the row's prompt it cancels (before a private ComfyUI is stopped)
CANCEL_CONFIRM = 5.0


# --- one job: files -> prompt -> results ----------------------------------------------------------------------------------
@dataclass
class Inputs:
    """A job's files as read (and checked) once, and the workflow's slots they go to (found once per row): what is
    uploaded, where, and what the result's key is made of."""

    source: bytes
    mask: bytes
    exemplars: list[bytes]
    alpha: bytes | None  # the mask as the alpha PNG /upload/mask takes; None when the workflow loads the mask itself
    slots: Slots

    def for_key(self) -> dict:
        return {"source": self.source, "mask": self.mask, "exemplars": self.exemplars}


@dataclass
class JobResult:
    paths: list[Path]
    skipped: bool = False  # the result was already there for the same settings


def _upload_name(path: Path, data: bytes, suffix: str = "") -> str:
    digest = hashlib.sha1(data).hexdigest()[:12]  # noqa: S324 - a name, not security
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem)[:40]
    return f"{stem}-{digest}{suffix or path.suffix.lower()}"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ClientError(f"cannot read the {what} {str(path)!r}: {e.strerror or e}") from None


def _image_value(uploaded: dict) -> str:
    return f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded.get("subfolder") else uploaded["name"]


def exemplar_count_problem(wanted: int, given: int) -> str:
    if wanted == 1:
        return (f"the workflow takes 1 exemplar but {given} were given; for several use a workflow with LoadImage "
                f"nodes titled 'Exemplar 2', 'Exemplar 3', ... (e.g. --workflow pbe_several_exemplars)")
    return (f"the workflow takes {wanted} exemplars ('Exemplar', 'Exemplar 2', ..., 'Exemplar {wanted}') but "
            f"{given} {'was' if given == 1 else 'were'} given: an edit takes {wanted} exemplar files after the mask; "
            f"a batch folder NAME_exemplar.*, NAME_exemplar2.*, ... per photo or --exemplar {wanted} times; a CSV the "
            f"columns exemplar, exemplar2, ..., exemplar{wanted} (named in its header row)")


def job_prompt(job: Job, settings: Settings) -> tuple[dict, Slots]:
    """The workflow with the settings and the job's seed applied and its slots, checked against the job's number of
    exemplars."""
    prompt = apply_settings(settings.workflow, settings, job.seed)
    slots = find_slots(prompt)
    if len(job.exemplars) != len(slots.exemplars):
        raise ClientError(exemplar_count_problem(len(slots.exemplars), len(job.exemplars)))
    return prompt, slots


def read_inputs(job: Job, slots: Slots) -> Inputs:
    """Read and check every file of the job (before anything is uploaded: a broken file would otherwise reach the
    user as HTTP 500)."""
    source = _read(job.source, "source")
    mask = _read(job.mask, "mask")
    exemplars = [_read(p, "exemplar") for p in job.exemplars]
    for path, data, what in [(job.source, source, "source"),
                             *((p, d, "exemplar") for p, d in zip(job.exemplars, exemplars, strict=True))]:  # fmt: skip
        problem = png.image_problem(data)
        if problem:
            raise ClientError(f"the {what} {str(path)!r} cannot be read as an image: {problem}; save it again")
    alpha = None if slots.mask_loaders else mask_as_alpha(job, source, mask)
    return Inputs(source, mask, exemplars, alpha, slots)


def upload(client: ComfyClient, job: Job, prompt: dict, inputs: Inputs) -> dict:
    """Upload the job's files; returns a copy of ``prompt`` with the uploaded names in its LoadImage nodes."""
    prompt = json.loads(json.dumps(prompt))
    slots = inputs.slots
    source = client.upload("image", _upload_name(job.source, inputs.source), inputs.source)
    if inputs.alpha is None:
        mask = client.upload("image", _upload_name(job.mask, inputs.mask), inputs.mask)
        for i in slots.mask_loaders:
            prompt[i]["inputs"]["image"] = _image_value(mask)
        prompt[slots.source]["inputs"]["image"] = _image_value(source)
    else:
        ref = {"filename": source["name"], "subfolder": source.get("subfolder", ""), "type": source.get("type", "input")}
        merged = client.upload(
            "mask", _upload_name(job.source, inputs.source + inputs.mask, "-masked.png"), inputs.alpha,
            {"original_ref": json.dumps(ref)},
        )
        prompt[slots.source]["inputs"]["image"] = _image_value(merged)
    for slot, path, data in zip(slots.exemplars, job.exemplars, inputs.exemplars, strict=True):
        prompt[slot]["inputs"]["image"] = _image_value(client.upload("image", _upload_name(path, data), data))
    return prompt


def prepare(client: ComfyClient, job: Job, settings: Settings) -> dict:
    """Check the job's files, upload them and return the prompt to queue."""
    prompt, slots = job_prompt(job, settings)
    return upload(client, job, prompt, read_inputs(job, slots))


def mask_as_alpha(job: Job, source_data: bytes, mask_data: bytes) -> bytes:
    """The mask PNG as the alpha PNG ``/upload/mask`` expects, after checking it fits the source.

    The orientation comes first: for a rotated JPEG the sizes differ because of the rotation, and "resize the mask"
    would be the wrong advice.
    """
    orientation = png.jpeg_orientation(source_data)
    if orientation != 1:
        raise ClientError(
            f"source {str(job.source)!r} has EXIF orientation {orientation}: ComfyUI's /upload/mask keeps the "
            "stored pixel order, so the mask would not line up; save the photo upright first (any editor's "
            "'rotate and save', or exiftran -ai)"
        )
    try:
        w, h, values = png.read_mask(mask_data)
    except (png.PNGError, ValueError, zlib.error) as e:
        raise ClientError(f"mask {str(job.mask)!r}: {e} (the mask must be a PNG, white = region to replace)") from None
    size = png.image_size(source_data)
    if size is not None and size != (w, h):
        raise ClientError(
            f"mask {str(job.mask)!r} is {w}x{h} but the source {str(job.source)!r} is {size[0]}x{size[1]}; "
            "make the mask the source's size"
        )
    if not any(v >= 128 for v in values):
        log.warning("%s: the mask has no white pixel; the edit will refuse an empty mask", job.name)
    return png.alpha_png(w, h, values)


def output_images(entry: dict) -> list[dict]:
    """The images a finished prompt's SaveImage nodes wrote, in node order; ServerError if there are none."""
    images = [
        img
        for node_id in sorted(entry.get("outputs", {}), key=lambda k: (len(k), k))
        for img in entry["outputs"][node_id].get("images", [])
        if img.get("type") == "output"
    ]
    if not images:
        raise ServerError("the workflow finished but saved no image (does it end in a SaveImage node?)")
    return images


def execute(client: ComfyClient, job: Job, prompt: dict, inputs: Inputs) -> list[tuple[str, bytes]]:
    """Upload, queue, follow and download one job, through lost connections (module docstring).

    Returns ``(suffix, data)`` for every saved image. ClientError/ServerError: the row failed; ServerUnreachable (or
    ServerGone): no server to go on with; KeyboardInterrupt: the prompt is cancelled on the server first.
    """
    prompt_id = queued = entry = None
    requeues = reconnects = 0
    check_known = False  # after a reconnection: is the prompt still known to the server?
    while True:
        try:
            if check_known and prompt_id is not None and entry is None and not client.knows(prompt_id):
                requeues += 1
                if requeues > MAX_REQUEUES:
                    raise ServerError(f"ComfyUI lost this row's prompt {requeues} times (it restarted each time); "
                                      f"giving up on the row")
                log.warning("%s: ComfyUI no longer knows its prompt (it restarted); queueing the row again", job.name)
                prompt_id = None
            check_known = False
            if entry is None:
                ws = client.open_ws()  # before queueing, so no message is missed
                try:
                    if prompt_id is None:
                        queued = upload(client, job, prompt, inputs)
                        prompt_id = client.new_prompt_id()
                        client.queue(queued, prompt_id)
                    entry = client.follow(prompt_id, queued, job.name, ws)
                finally:
                    if ws is not None:
                        ws.close()
                error = history_error(entry, queued)
                if error:
                    raise ServerError(error)
            return [(Path(img["filename"]).suffix or ".png", client.view(img)) for img in output_images(entry)]
        except PromptLost as e:
            requeues += 1
            if requeues > MAX_REQUEUES:
                raise ServerError(f"{e}, {requeues} times for this row; giving up on it") from None
            log.warning("%s: %s; queueing the row again", job.name, e)
            prompt_id = entry = None
        except ServerGone:
            raise
        except ServerUnreachable as e:
            reconnects += 1
            if reconnects > MAX_RECONNECTS and client.reached:
                raise ServerGone(f"{e} (the connection was lost {reconnects} times during this row)") from None
            client.wait_for_server(e)
            check_known = True
        except KeyboardInterrupt:
            if prompt_id is not None and entry is None:
                log.warning("%s: interrupted; cancelling its prompt %s on the server (Ctrl-C again: stop at once)",
                            job.name, prompt_id)
                if client.cancel(prompt_id, confirm=CANCEL_CONFIRM):
                    log.warning("%s: its prompt %s was cancelled on the server", job.name, prompt_id)
            raise


def job_key(job: Job, settings: Settings) -> tuple[dict, Inputs, str]:
    """The job's prompt, its checked files and the key of its result (``results.settings_hash``)."""
    prompt, slots = job_prompt(job, settings)
    inputs = read_inputs(job, slots)
    return prompt, inputs, settings_hash(prompt, inputs.for_key(), settings.identity)


def run_job(connect: Callable[[], ComfyClient] | ComfyClient, job: Job, settings: Settings,
            store: ResultStore | None = None) -> JobResult:
    """One edit: skipped if its result is there for the same settings (unless ``settings.force``); else upload,
    queue, follow, download and write (atomically). ``connect``: the client, or a function returning it, called only
    when the job needs the server."""
    store = store or ResultStore(settings.out_dir)
    prompt, inputs, key = job_key(job, settings)
    if not settings.force:
        done = store.done(job.name, key)
        if done is not None:
            return JobResult(done, skipped=True)
    client = connect() if callable(connect) else connect
    return JobResult(store.write(job.name, key, execute(client, job, prompt, inputs)))


# --- batch rows ----------------------------------------------------------------------------------------------------------
_COLUMN = re.compile(r"^(source|mask|seed|exemplar)([0-9]*)$")


def _column_name(cell: str) -> str:
    """``Exemplar 2``, ``exemplar_2`` -> ``exemplar2``; ``exemplar1`` -> ``exemplar``."""
    name = re.sub(r"[\s_\-]+", "", cell.strip().lower())
    return "exemplar" if name == "exemplar1" else name


def _csv_records(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of every row that is not blank or a ``#`` comment; trailing empty cells dropped."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ClientError(f"cannot read the CSV {str(path)!r}: {e.strerror or e}") from None
    reader = csv.reader(io.StringIO(decode_text(raw, str(path)), newline=""))
    out = []
    try:
        for row in reader:
            cells = [c.strip() for c in row]
            while cells and not cells[-1]:
                cells.pop()
            if cells and not cells[0].startswith("#"):
                out.append((reader.line_num, cells))
    except csv.Error as e:
        raise ClientError(f"{path}: line {reader.line_num}: {e}") from None
    return out


def jobs_from_csv(path: Path) -> list[Job | tuple[str, str]]:
    """The rows of a CSV; a bad row becomes ``(name, reason)``.

    With a header row (one of its cells is ``source``) the columns are named: ``source``, ``mask``, ``exemplar``, then
    ``exemplar2``, ``exemplar3``, ... for workflows with several exemplars, and ``seed`` (optional), in any order.
    Without one, a row is ``source,mask,exemplar[,seed]``. Paths are relative to the CSV's folder.
    """
    records = _csv_records(path)
    columns = None
    if records and "source" in [_column_name(c) for c in records[0][1]]:
        line, header = records.pop(0)
        columns = [_column_name(c) for c in header]
        for name in columns:
            m = _COLUMN.match(name)
            if not m or (m.group(2) and m.group(1) != "exemplar") or m.group(2) in ("0", "1"):
                raise ClientError(f"{path}: line {line}: unknown column {name!r}; the columns are source, mask, "
                                  f"exemplar, exemplar2, exemplar3, ... and seed")
        for name in ("source", "mask", "exemplar"):
            if name not in columns:
                raise ClientError(f"{path}: line {line}: the header has no {name!r} column")
        doubled = sorted({c for c in columns if columns.count(c) > 1})
        if doubled:
            raise ClientError(f"{path}: line {line}: the header names {', '.join(map(repr, doubled))} twice")
    base = path.parent
    out: list[Job | tuple[str, str]] = []
    for k, (line, row) in enumerate(records, 1):
        name = f"{k:03d}_{Path(row[0]).stem}" if row[0] else f"{k:03d}"
        where = f"row {k} (line {line})"
        if columns is None:
            if len(row) > 4:
                out.append((name, f"{where}: {len(row)} cells; without a header row a row is source,mask,exemplar"
                                  f"[,seed]; for several exemplars add a header row: source,mask,exemplar,exemplar2,"
                                  f"...,seed"))
                continue
            cells = dict(zip(("source", "mask", "exemplar", "seed"), row, strict=False))
        else:
            if len(row) > len(columns):
                out.append((name, f"{where}: {len(row)} cells but the header names {len(columns)} columns"))
                continue
            cells = dict(zip(columns, row, strict=False))
        numbered = sorted((int(c[8:] or 1), c) for c in cells if c.startswith("exemplar"))
        exemplars = [cells[c] for _, c in numbered]
        while exemplars and not exemplars[-1]:
            exemplars.pop()
        if not cells.get("source") or not cells.get("mask") or not exemplars:
            out.append((name, f"{where}: needs source, mask, exemplar[, seed], got {row}"))
            continue
        if not all(exemplars):
            gap = next(c for (_, c), v in zip(numbered, exemplars, strict=False) if not v)
            out.append((name, f"{where}: {gap} is empty but a later exemplar column is not"))
            continue
        seed = None
        if cells.get("seed"):
            try:
                seed = int(cells["seed"])
            except ValueError:
                out.append((name, f"{where}: seed {cells['seed']!r} is not an integer"))
                continue
        out.append(Job(name, base / cells["source"], base / cells["mask"], [base / e for e in exemplars], seed))
    return out


_EXEMPLAR_FILE = re.compile(r"^(?P<stem>.+)_exemplar(?P<k>[0-9]*)$")


def jobs_from_folder(folder: Path, exemplars: list[Path] | Path | None = None) -> list[Job | tuple[str, str]]:
    """Every ``NAME.png|jpg|jpeg|webp`` is a source, with its mask ``NAME_mask.png`` and its exemplars
    ``NAME_exemplar.*``, ``NAME_exemplar2.*``, ... (or ``exemplars``, shared by the rows without their own)."""
    if isinstance(exemplars, Path):
        exemplars = [exemplars]
    shared = list(exemplars or [])
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError as e:
        raise ClientError(f"cannot list the folder {str(folder)!r}: {e.strerror or e}") from None
    shared_resolved = {p.resolve() for p in shared}
    own: dict[str, dict[int, list[Path]]] = {}
    sources = []
    for p in files:
        m = _EXEMPLAR_FILE.match(p.stem)
        if m:
            own.setdefault(m.group("stem"), {}).setdefault(int(m.group("k") or 1), []).append(p)
        elif not p.stem.endswith("_mask") and p.resolve() not in shared_resolved:
            sources.append(p)
    out: list[Job | tuple[str, str]] = []
    seen: dict[str, Path] = {}
    for p in sources:
        if p.stem in seen:
            out.append((p.stem, f"{seen[p.stem].name} and {p.name} have the same name, so their results would too; "
                                f"rename one"))
            continue
        seen[p.stem] = p
        mask = folder / f"{p.stem}_mask.png"
        mine = own.get(p.stem, {})
        doubled = [paths for paths in mine.values() if len(paths) > 1]
        if not mask.is_file():
            out.append((p.stem, f"no mask: expected {mask.name}"))
        elif doubled:
            out.append((p.stem, f"two files for one exemplar: {', '.join(q.name for q in doubled[0])}; keep one"))
        elif mine and sorted(mine) != list(range(1, len(mine) + 1)):
            missing = next(k for k in range(1, len(mine) + 2) if k not in mine)
            out.append((p.stem, f"its exemplars skip a number: no {p.stem}_exemplar{'' if missing == 1 else missing}.*"
                                f" but {', '.join(q[0].name for _, q in sorted(mine.items()))}"))
        elif mine:
            out.append(Job(p.stem, p, mask, [mine[k][0] for k in sorted(mine)]))
        elif shared:
            out.append(Job(p.stem, p, mask, list(shared)))
        else:
            out.append((p.stem, f"no exemplar: expected {p.stem}_exemplar.png (or give --exemplar)"))
    return out


def _already_done(job, settings: Settings, store: ResultStore) -> list[Path] | None:
    """For rows not tried: their results, if they are there from an earlier run (no server needed)."""
    if not isinstance(job, Job) or settings.force:
        return None
    try:
        _, _, key = job_key(job, settings)
    except ClientError:
        return None
    return store.done(job.name, key)


def run_batch(connect: Callable[[], ComfyClient] | ComfyClient, jobs: list, settings: Settings,
              store: ResultStore | None = None, progress: Callable[[int, dict], None] | None = None) -> tuple[dict, int]:
    """Run every row, going on past a row's own failure; returns the report and the exit status. ``progress(k, row)``
    (optional) is called after each row with its number and its report entry.

    The report: ``report.batch_report``. Exit status: 0 every row succeeded, 1 some failed,
    2 no server to go on with, 130 interrupted (Ctrl-C).
    """
    store = store or ResultStore(settings.out_dir)
    rows: list[dict] = []
    stopped: str | None = None
    status = 0
    try:
        store.check_writable()
    except ClientError as e:
        log.error("error: %s", e)
        stopped, status = str(e), 1
    n, started = len(jobs), 0

    def add(row: dict) -> None:
        rows.append(row)
        if progress is not None:
            progress(len(rows), row)

    try:
        for k, job in enumerate(jobs, 1):
            name = job.name if isinstance(job, Job) else job[0]
            if stopped is not None:
                done = _already_done(job, settings, store)
                add(row_entry(name, "skipped", None, done) if done is not None else
                            row_entry(name, "failed", f"not tried: {stopped}"))  # fmt: skip
                continue
            if isinstance(job, tuple):
                log.error("[%d/%d] %s: skipped: %s", k, n, name, job[1])
                add(row_entry(name, "failed", job[1]))
                continue
            log.info("[%d/%d] %s", k, n, name)
            started = k
            try:
                result = run_job(connect, job, settings, store)
            except ServerUnreachable as e:
                log.error("[%d/%d] %s: failed: %s", k, n, name, e)
                add(row_entry(name, "failed", str(e)))
                stopped, status = str(e), 2
                continue
            except ClientError as e:
                log.error("[%d/%d] %s: failed: %s", k, n, name, e)
                add(row_entry(name, "failed", str(e)))
                if isinstance(e, StopsBatch):
                    stopped, status = str(e), 1
                continue
            if result.skipped:
                log.info("[%d/%d] %s: already done with the same settings (%s); --force does it again", k, n, name,
                         ", ".join(p.name for p in result.paths))
            add(row_entry(name, "skipped" if result.skipped else "done", None, result.paths))
    except KeyboardInterrupt:
        log.error("interrupted: the rows not finished are reported as not tried")
        stopped, status = "interrupted (Ctrl-C)", 130
        for k, job in enumerate(jobs[len(rows):]):
            why = "interrupted (Ctrl-C) while it ran" if k == 0 and started == len(rows) + 1 else f"not tried: {stopped}"
            rows.append(row_entry(job.name if isinstance(job, Job) else job[0], "failed", why))
    report = batch_report(rows, stopped, status)
    return report, exit_status(report, status)
