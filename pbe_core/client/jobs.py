"""One edit (files -> uploads -> prompt -> results) and the rows of a batch. Standard library only."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from . import png
from .api import ClientError, ComfyClient, ServerError
from .workflow import apply_settings, exemplar_slots, titled

log = logging.getLogger("pbe_core.client")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

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
    # every file is checked before anything is uploaded: a broken file would otherwise reach the user as HTTP 500
    for path, data, what in [(job.source, source_data, "source"), *((p, d, "exemplar") for p, d in
                                                                     zip(job.exemplars, exemplar_data, strict=True))]:
        problem = png.image_problem(data)
        if problem:
            raise ClientError(f"the {what} {str(path)!r} cannot be read as an image: {problem}; save it again")
    mask_nodes = [i for i in titled(prompt, "Mask") if prompt[i]["class_type"] == "LoadImageMask"]
    alpha = None if mask_nodes else mask_as_alpha(job, source_data, mask_data)

    source = client.upload("image", _upload_name(job.source, source_data), source_data)
    if mask_nodes:
        mask = client.upload("image", _upload_name(job.mask, mask_data), mask_data)
        for i in mask_nodes:
            prompt[i]["inputs"]["image"] = _image_value(mask)
        prompt[sources[0]]["inputs"]["image"] = _image_value(source)
    else:
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


