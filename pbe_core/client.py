"""Edit photos with Paint by Example through a running ComfyUI, headless. Standard library only.

    python -m pbe_core.client edit SOURCE MASK EXEMPLAR [-o OUT] [--seed N --steps N --cfg X --sampler NAME
                                                         --model FILE --workflow NAME|FILE --set NODE.INPUT=VALUE]
    python -m pbe_core.client batch FOLDER|ROWS.csv [--exemplar FILE] [-o OUT] [same options]

Common options: ``--server HOST:PORT`` (default 127.0.0.1:8188), ``--client-id``, ``--timeout`` (seconds per edit).

Each edit uploads the source and the exemplar(s) (``/upload/image``) and the mask (``/upload/mask``: ComfyUI writes
it into the source's alpha, exactly where its mask editor leaves a painted mask, so the API workflows are the UI
templates' own graphs), queues an API workflow from ``workflows/api/`` with the command line's overrides, follows
``/ws`` with a progress bar, and downloads what its SaveImage nodes wrote (``/history``, ``/view``). A failure exits
non-zero with the server's message.

The mask is a PNG, white (or opaque white on transparent) = the region to replace, the source's size. A workflow
that has a ``LoadImageMask`` node titled ``Mask`` gets the mask file uploaded as an image there instead (any format
the server reads; pick the channel in that node).

Batch input: a CSV of ``source,mask,exemplar[,seed]`` rows (paths relative to the CSV; a header row is optional), or a
folder where every ``NAME.png|jpg|jpeg|webp`` is a source with its mask ``NAME_mask.png`` and its exemplar
``NAME_exemplar.*`` (or ``--exemplar`` for all). A bad row is reported and skipped; the run ends with a report
(also written to ``OUT/report.json``) and exits 1 if any row failed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import png
from .ws import WebSocket, WebSocketError

log = logging.getLogger("pbe_core.client")

PACK_DIR = Path(__file__).resolve().parent.parent
API_WORKFLOWS = PACK_DIR / "workflows" / "api"
DEFAULT_WORKFLOW = "pbe_one_node_edit"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
UPLOAD_SUBFOLDER = "pbe_client"
#: command-line option -> the workflow inputs it sets (on every node that has one as a value)
OVERRIDES = {
    "seed": ("seed", "noise_seed"),
    "steps": ("steps",),
    "cfg": ("cfg",),
    "sampler": ("sampler_name",),
    "scheduler": ("scheduler",),
    "denoise": ("denoise",),
}


class ClientError(Exception):
    """Something the user must fix; the message says what."""


class ServerError(ClientError):
    """The server refused or failed the job; the message is the server's."""


# --- talking to ComfyUI ------------------------------------------------------------------------------------------------
class ComfyClient:
    def __init__(self, server: str = "127.0.0.1:8188", client_id: str | None = None, timeout: float = 600.0,
                 progress: bool = True):
        server = server if "://" in server else f"http://{server}"
        u = urllib.parse.urlsplit(server)
        if u.scheme != "http":
            raise ClientError(f"--server must be http://HOST:PORT, not {server!r}")
        self.base = f"http://{u.netloc}"
        self.ws_url = f"ws://{u.netloc}/ws"
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.progress = progress

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60) -> bytes:
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - the user's server address
                return r.read()
        except urllib.error.HTTPError as e:
            raise ServerError(_http_error_message(path, e.code, e.read())) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
            raise ConnectionError(f"cannot reach ComfyUI at {self.base}: {getattr(e, 'reason', e)}") from None

    def get_json(self, path: str):
        return json.loads(self.request(path))

    def post_json(self, path: str, body: dict):
        raw = self.request(path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return json.loads(raw) if raw else None

    def upload(self, kind: str, name: str, data: bytes, fields: dict | None = None) -> dict:
        """POST /upload/image or /upload/mask (multipart, as the web UI does); returns ``{name, subfolder, type}``."""
        boundary = uuid.uuid4().hex
        body = b""
        for k, v in {"overwrite": "true", "type": "input", "subfolder": UPLOAD_SUBFOLDER, **(fields or {})}.items():
            body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        raw = self.request(f"/upload/{kind}", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(raw)

    def queue(self, prompt: dict) -> str:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def view(self, image: dict) -> bytes:
        q = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{q}", timeout=300)

    def cancel(self, prompt_id: str) -> None:
        """Take the prompt out of the queue, or interrupt it if it is running (only it: targeted interrupt)."""
        try:
            self.post_json("/queue", {"delete": [prompt_id]})
            self.post_json("/interrupt", {"prompt_id": prompt_id})
        except (ClientError, ConnectionError) as e:
            log.warning("could not cancel %s: %s", prompt_id, e)

    def open_ws(self) -> WebSocket | None:
        try:
            return WebSocket(f"{self.ws_url}?clientId={self.client_id}", timeout=10)
        except (OSError, WebSocketError) as e:
            log.warning("no progress: /ws unavailable (%s); polling /history", e)
            return None

    def run(self, prompt: dict, label: str = "") -> dict:
        """Queue ``prompt``, follow it to its end, return its /history entry; ServerError if it failed."""
        ws = self.open_ws()  # before queueing, so no message is missed
        prompt_id = None
        try:
            prompt_id = self.queue(prompt)
            deadline = time.monotonic() + self.timeout
            if ws is not None:
                self._follow(ws, prompt_id, prompt, deadline, label)
            entry = self._poll_history(prompt_id, deadline)
        except TimeoutError:
            if prompt_id is not None:
                self.cancel(prompt_id)
            raise ClientError(f"timed out after {self.timeout:.0f} s; the prompt was cancelled") from None
        finally:
            if ws is not None:
                ws.close()
        error = history_error(entry, prompt)
        if error:
            raise ServerError(error)
        return entry

    def _follow(self, ws: WebSocket, prompt_id: str, prompt: dict, deadline: float, label: str) -> None:
        bar = ProgressBar(label, enabled=self.progress)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                ws.settimeout(min(left, 5.0))
                try:
                    msg = ws.recv()
                except socket.timeout:
                    continue
                except (OSError, WebSocketError) as e:
                    log.warning("progress stream lost (%s); polling /history", e)
                    return
                if isinstance(msg, bytes):  # preview images
                    continue
                msg = json.loads(msg)
                kind, data = msg.get("type"), msg.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "executing":
                    if data.get("node") is None and data.get("prompt_id") == prompt_id:
                        return
                    node = prompt.get(str(data.get("node")), {})
                    bar.node(node.get("_meta", {}).get("title") or node.get("class_type", ""))
                elif kind == "progress":
                    bar.update(int(data.get("value", 0)), int(data.get("max", 1)))
                elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                    return
        finally:
            bar.close()

    def _poll_history(self, prompt_id: str, deadline: float) -> dict:
        while True:
            entry = self.history(prompt_id)
            if entry and (entry.get("status", {}).get("completed") is not None or entry.get("outputs")):
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.3)


class ProgressBar:
    """One line on stderr: ``label  node  [#####.....]  12/50``; redrawn in place on a terminal."""

    def __init__(self, label: str, enabled: bool = True, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.label, self.current, self.width = label, "", width
        self._last_tenth = None

    def node(self, title: str) -> None:
        self.current = title
        self._last_tenth = None

    def update(self, value: int, total: int) -> None:
        if not self.enabled:
            return
        total = max(total, 1)
        done = int(self.width * min(value, total) / total)
        line = f"{self.label} {self.current} [{'#' * done}{'.' * (self.width - done)}] {value}/{total}"
        if self.tty:
            self.stream.write("\r" + line[:200] + "\x1b[K")
            self.stream.flush()
        else:  # a log file: a line every 10 %
            tenth = 10 * value // total
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self.stream.write(line + "\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _http_error_message(path: str, code: int, body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return f"{path}: HTTP {code}" + (f": {text[:500]}" if text else "")
    return f"{path}: HTTP {code}: {rejection_message(data)}"


def rejection_message(data: dict) -> str:
    """The server's reasons for refusing a prompt (POST /prompt -> 400), one line."""
    parts = []
    err = data.get("error")
    if isinstance(err, dict):
        parts.append(err.get("message", "") + (f" ({err['details']})" if err.get("details") else ""))
    elif err:
        parts.append(str(err))
    for node_id, info in (data.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            detail = f": {e['details']}" if e.get("details") else ""
            parts.append(f"{info.get('class_type', '?')} (node {node_id}): {e.get('message', '')}{detail}")
    return "; ".join(p for p in parts if p) or json.dumps(data)[:500]


def history_error(entry: dict, prompt: dict | None = None) -> str | None:
    """The failure of a finished prompt in the server's words, or None if it succeeded."""
    status = entry.get("status", {})
    messages = {m[0]: m[1] for m in status.get("messages", [])}
    if "execution_error" in messages:
        e = messages["execution_error"]
        return f"{e.get('node_type')} (node {e.get('node_id')}): {e.get('exception_type')}: {e.get('exception_message')}".strip()
    if "execution_interrupted" in messages:
        return "the prompt was interrupted on the server"
    if status.get("status_str") == "error":
        return "the prompt failed on the server (no message)"
    return None


# --- one job: files -> prompt -> results ----------------------------------------------------------------------------------
@dataclass
class Job:
    name: str
    source: Path
    mask: Path
    exemplars: list[Path]
    seed: int | None = None


@dataclass
class Settings:
    workflow: dict
    out_dir: Path
    model: str | None = None
    values: dict = field(default_factory=dict)  # option -> value, see OVERRIDES
    sets: list[tuple[str, str, object]] = field(default_factory=list)  # (node id or title, input, value)


def load_workflow(name_or_path: str) -> dict:
    """An API workflow: a file path, or the name of one in the pack's workflows/api/."""
    path = Path(name_or_path)
    if not path.is_file():
        path = API_WORKFLOWS / f"{Path(name_or_path).stem}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in API_WORKFLOWS.glob("*.json")))
        raise ClientError(f"no workflow {name_or_path!r}: give an API-format JSON file or one of: {names}")
    data = json.loads(path.read_text())
    if "nodes" in data and "links" in data:
        raise ClientError(f"{path} is a UI workflow; use its API format (workflows/api/, or 'Export (API)')")
    return data


def titled(prompt: dict, title: str) -> list[str]:
    return [i for i, n in prompt.items() if n.get("_meta", {}).get("title", "").lower() == title.lower()]


def exemplar_slots(prompt: dict) -> list[str]:
    """Node ids of the exemplar LoadImage nodes, in order: 'Exemplar', 'Exemplar 2', 'Exemplar 3', ..."""
    slots = titled(prompt, "Exemplar")
    k = 2
    while titled(prompt, f"Exemplar {k}"):
        slots += titled(prompt, f"Exemplar {k}")
        k += 1
    return slots


def apply_settings(prompt: dict, settings: Settings, seed: int | None = None) -> dict:
    """A copy of ``prompt`` with the command line's values set; ClientError for a value nothing takes."""
    prompt = json.loads(json.dumps(prompt))
    values = dict(settings.values)
    if seed is not None:
        values["seed"] = seed
    for option, value in values.items():
        hits = 0
        for node in prompt.values():
            for name in OVERRIDES[option]:
                if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                    node["inputs"][name] = value
                    hits += 1
        if not hits:
            raise ClientError(f"the workflow has no {'/'.join(OVERRIDES[option])} input to set --{option} on")
    if settings.model is not None:
        loaders = [n for n in prompt.values() if n["class_type"] == "PBE_LoadModel"]
        if not loaders:
            raise ClientError("the workflow has no PBE_LoadModel node to set --model on")
        for node in loaders:
            node["inputs"]["model_name"] = settings.model
    for target, name, value in settings.sets:
        ids = [target] if target in prompt else titled(prompt, target)
        if not ids:
            raise ClientError(f"--set {target}.{name}: no node with that id or title")
        for i in ids:
            prompt[i]["inputs"][name] = value
    return prompt


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


def prepare(client: ComfyClient, job: Job, settings: Settings) -> dict:
    """Upload the job's files and return the prompt to queue."""
    prompt = apply_settings(settings.workflow, settings, job.seed)
    sources = [i for i in titled(prompt, "Source") if prompt[i]["class_type"] == "LoadImage"]
    slots = exemplar_slots(prompt)
    if len(sources) != 1 or not slots:
        raise ClientError("the workflow needs one LoadImage titled 'Source' and one titled 'Exemplar'")
    if len(job.exemplars) != len(slots):
        raise ClientError(
            f"the workflow takes {len(slots)} exemplar(s) but {len(job.exemplars)} were given"
            + (" (repeat --exemplar)" if len(slots) > 1 else "")
        )
    source_data = _read(job.source, "source")
    mask_data = _read(job.mask, "mask")
    exemplar_data = [_read(p, "exemplar") for p in job.exemplars]

    source = client.upload("image", _upload_name(job.source, source_data), source_data)
    mask_nodes = [i for i in titled(prompt, "Mask") if prompt[i]["class_type"] == "LoadImageMask"]
    if mask_nodes:
        mask = client.upload("image", _upload_name(job.mask, mask_data), mask_data)
        for i in mask_nodes:
            prompt[i]["inputs"]["image"] = _image_value(mask)
        prompt[sources[0]]["inputs"]["image"] = _image_value(source)
    else:
        alpha = mask_as_alpha(job, source_data, mask_data)
        ref = {"filename": source["name"], "subfolder": source.get("subfolder", ""), "type": source.get("type", "input")}
        merged = client.upload(
            "mask", _upload_name(job.source, source_data + mask_data, "-masked.png"), alpha,
            {"original_ref": json.dumps(ref)},
        )
        prompt[sources[0]]["inputs"]["image"] = _image_value(merged)
    for slot, path, data in zip(slots, job.exemplars, exemplar_data, strict=True):
        prompt[slot]["inputs"]["image"] = _image_value(client.upload("image", _upload_name(path, data), data))
    return prompt


def mask_as_alpha(job: Job, source_data: bytes, mask_data: bytes) -> bytes:
    """The mask PNG as the alpha PNG ``/upload/mask`` expects, after checking it fits the source."""
    try:
        w, h, values = png.read_mask(mask_data)
    except (png.PNGError, ValueError) as e:
        raise ClientError(f"mask {str(job.mask)!r}: {e} (the mask must be a PNG, white = region to replace)") from None
    size = png.image_size(source_data)
    if size is not None and size != (w, h):
        raise ClientError(
            f"mask {str(job.mask)!r} is {w}x{h} but the source {str(job.source)!r} is {size[0]}x{size[1]}; "
            "make the mask the source's size"
        )
    orientation = png.jpeg_orientation(source_data)
    if orientation != 1:
        raise ClientError(
            f"source {str(job.source)!r} has EXIF orientation {orientation}: ComfyUI's /upload/mask keeps the "
            "stored pixel order, so the mask would not line up; save the photo upright first"
        )
    if not any(v >= 128 for v in values):
        log.warning("%s: the mask has no white pixel; the edit will refuse an empty mask", job.name)
    return png.alpha_png(w, h, values)


def run_job(client: ComfyClient, job: Job, settings: Settings) -> list[Path]:
    """One edit: upload, queue, follow, download. Returns the written files."""
    prompt = prepare(client, job, settings)
    entry = client.run(prompt, label=job.name)
    images = [
        img
        for node_id in sorted(entry.get("outputs", {}), key=lambda k: (len(k), k))
        for img in entry["outputs"][node_id].get("images", [])
        if img.get("type") == "output"
    ]
    if not images:
        raise ServerError("the workflow finished but saved no image (does it end in a SaveImage node?)")
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, img in enumerate(images):
        suffix = Path(img["filename"]).suffix or ".png"
        path = settings.out_dir / (f"{job.name}{suffix}" if len(images) == 1 else f"{job.name}_{k + 1}{suffix}")
        path.write_bytes(client.view(img))
        written.append(path)
    return written


# --- batch rows ----------------------------------------------------------------------------------------------------------
def jobs_from_csv(path: Path) -> list[Job | tuple[str, str]]:
    """Rows of ``source,mask,exemplar[,seed]``; a bad row becomes ``(name, reason)``."""
    out = []
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if rows and rows[0][0].strip().lower() == "source":
        rows = rows[1:]
    for k, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        name = f"{k:03d}_{Path(row[0]).stem}" if row[0] else f"{k:03d}"
        if len(row) < 3 or not all(row[:3]):
            out.append((name, f"row {k}: needs source, mask, exemplar[, seed], got {row}"))
            continue
        seed = None
        if len(row) > 3 and row[3]:
            try:
                seed = int(row[3])
            except ValueError:
                out.append((name, f"row {k}: seed {row[3]!r} is not an integer"))
                continue
        base = path.parent
        out.append(Job(name, base / row[0], base / row[1], [base / row[2]], seed))
    return out


def jobs_from_folder(folder: Path, exemplar: Path | None) -> list[Job | tuple[str, str]]:
    out = []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    shared = exemplar.resolve() if exemplar is not None else None
    for p in files:
        if p.stem.endswith(("_mask", "_exemplar")) or p.resolve() == shared:
            continue
        mask = folder / f"{p.stem}_mask.png"
        own = [q for q in files if q.stem == f"{p.stem}_exemplar"]
        ex = own[0] if own else exemplar
        if not mask.is_file():
            out.append((p.stem, f"no mask: expected {mask.name}"))
        elif ex is None:
            out.append((p.stem, f"no exemplar: expected {p.stem}_exemplar.png (or give --exemplar)"))
        else:
            out.append(Job(p.stem, p, mask, [ex]))
    return out


def run_batch(client: ComfyClient, jobs: list, settings: Settings) -> list[dict]:
    """Run every row, going on past failures; returns one report entry per row."""
    report = []
    for k, job in enumerate(jobs, 1):
        if isinstance(job, tuple):
            name, reason = job
            log.error("[%d/%d] %s: skipped: %s", k, len(jobs), name, reason)
            report.append({"name": name, "ok": False, "error": reason, "outputs": []})
            continue
        log.info("[%d/%d] %s", k, len(jobs), job.name)
        try:
            written = run_job(client, job, settings)
        except ClientError as e:
            log.error("[%d/%d] %s: failed: %s", k, len(jobs), job.name, e)
            report.append({"name": job.name, "ok": False, "error": str(e), "outputs": []})
            continue
        report.append({"name": job.name, "ok": True, "error": None, "outputs": [str(p) for p in written]})
    return report


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
    common.add_argument("--server", default="127.0.0.1:8188", help="ComfyUI address, HOST:PORT (default %(default)s)")
    common.add_argument("--client-id", help="client id for /prompt and /ws (default: random)")
    common.add_argument("--timeout", type=float, default=600, help="seconds to wait for one edit (default %(default)s)")
    common.add_argument("--workflow", default=DEFAULT_WORKFLOW,
                        help="API workflow: a name in workflows/api/ or a JSON file (default %(default)s)")
    common.add_argument("-o", "--output", type=Path, default=Path("pbe_results"), help="folder for the results")
    common.add_argument("--model", help="model file in ComfyUI/models/paint_by_example/ (PBE_LoadModel)")
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

    parser = argparse.ArgumentParser(prog="python -m pbe_core.client", description=__doc__.split("\n\n")[0])
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
        client = ComfyClient(args.server, args.client_id, args.timeout, progress=not args.no_progress)
        if args.command == "edit":
            name = args.source.stem
            for path in run_job(client, Job(name, args.source, args.mask, list(args.exemplar), args.seed), settings):
                sys.stdout.write(f"{path}\n")
            return 0
        if args.rows.is_dir():
            jobs = jobs_from_folder(args.rows, args.exemplar)
        elif args.rows.is_file():
            jobs = jobs_from_csv(args.rows)
        else:
            raise ClientError(f"{str(args.rows)!r} is neither a folder nor a CSV file")
        if not jobs:
            raise ClientError(f"no rows in {str(args.rows)!r}")
        report = run_batch(client, jobs, settings)
    except ClientError as e:
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


if __name__ == "__main__":
    sys.exit(main())
