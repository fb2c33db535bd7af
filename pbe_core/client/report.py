"""The batch report, one schema for a one-server batch (``jobs.run_batch``) and the fleet (``fleet``): its rows, its
totals, ``report.md``, and writing it. Standard library only.

``report.json``: ``{"rows": [{"name", "status": "done"|"skipped"|"failed", "ok", "error", "outputs", ...}],
"succeeded", "failed", "skipped", "stopped": why the batch stopped early or None, "interrupted": bool, ...}``
("skipped": done earlier with the same settings, counted among "succeeded"). The fleet adds each row's ``worker`` and
``tries``, and ``workers``, ``elapsed_s``, ``rows_per_s`` and ``ray`` (``fleet.driver.build_report``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .errors import ClientError
from .results import atomic_write

log = logging.getLogger("pbe_core.client")


def row_entry(name: str, status: str, error: str | None = None, outputs: Iterable = (), **more) -> dict:
    """One row of the report: ``status`` done, skipped or failed; ``more``: the fleet's fields, after these."""
    return {"name": name, "status": status, "ok": status != "failed", "error": error,
            "outputs": [str(p) for p in outputs], **more}  # fmt: skip


def batch_report(rows: list[dict], stopped: str | None, status: int, **more) -> dict:
    """The report of ``rows`` (:func:`row_entry`) with its totals; ``status`` the run's exit status so far (130:
    interrupted); ``more``: the fleet's fields, after these."""
    failed = sum(not r["ok"] for r in rows)
    return {"rows": rows, "succeeded": len(rows) - failed, "failed": failed,
            "skipped": sum(r["status"] == "skipped" for r in rows), "stopped": stopped, "interrupted": status == 130,
            **more}  # fmt: skip


def exit_status(report: dict, status: int) -> int:
    """The command's exit status: ``status`` when the run stopped for a reason of its own (2 no server, 130
    interrupted, ...), else 1 when a row failed, else 0."""
    return status or (1 if report["failed"] else 0)


def _cell(text) -> str:
    return str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")


def report_markdown(report: dict) -> str:
    """``report.md``: the totals, the workers, the failed rows with their reasons and the rows that needed more than
    one try."""
    rows = report["rows"]
    lines = ["# Batch report", ""]
    rate = f", {report['rows_per_s']:.3f} rows/s" if report.get("rows_per_s") else ""
    lines.append(f"{report['succeeded']} of {len(rows)} rows succeeded ({report['skipped']} already done), "
                 f"{report['failed']} failed; {report['elapsed_s']:.0f} s{rate}.")
    if report.get("stopped"):
        lines += ["", f"The batch stopped early: {report['stopped']}"]
    ray_info = report.get("ray") or {}
    if ray_info:
        lines += ["", f"Ray {ray_info.get('version', '?')}, "
                      + ("a local cluster for the run" if ray_info.get("local") else
                         f"the cluster at {ray_info.get('address')}")]  # fmt: skip
    if report.get("workers"):
        lines += ["", "| worker | kind | where | done | failed | lost | restarts | state |", "|---|---|---|---|---|---|---|---|"]
        for w in report["workers"]:
            where = w["where"] or {}
            place = ", ".join(x for x in (where.get("host"), where.get("address"),
                                          f"GPU {','.join(where['gpus'])}" if where.get("gpus") else None) if x)
            state = w["state"] + (f": {w['reason']}" if w.get("reason") else "")
            lines.append(f"| {w['worker']} | {w['kind']} | {_cell(place)} | {w['rows_done']} | {w['rows_failed']} | "
                         f"{w['rows_lost']} | {w['restarts']} | {_cell(state)} |")
    fates = [w for w in report.get("workers") or [] if w.get("events") or w.get("lost_rows")]
    if fates:
        lines += ["", "## What happened to the workers", ""]
        for w in fates:
            said = []
            for e in w.get("events") or []:
                if e["event"] == "node lost":
                    said.append(f"its machine was lost at {e['at']} ({e.get('host')}, Ray node {e['node']})"
                                + (f" while it ran {e['row']}" if e.get("row") else ""))  # fmt: skip
                elif e["event"] == "restarted":
                    said.append(f"started again at {e['at']} on {e.get('where')}")
            for r in w.get("lost_rows") or []:
                then = f"then {r['status']} on {r['worker']}" if r.get("worker") else f"then {r['status']}"
                said.append(f"lost row {r['row']} ({then})")
            lines.append(f"- {w['worker']}: " + "; ".join(said) + f"; at the end: {w['state']}")
    failed = [r for r in rows if not r["ok"]]
    if failed:
        lines += ["", "## Failed rows", "", "| row | reason |", "|---|---|"]
        lines += [f"| {_cell(r['name'])} | {_cell(r['error'])} |" for r in failed]
    retried = [r for r in rows if len(r.get("tries") or []) > 1]
    if retried:
        lines += ["", "## Rows tried more than once", "", "| row | tries |", "|---|---|"]
        for r in retried:
            tries = "; ".join(f"{t['worker']}: {t['outcome']}" + (f" ({t['error']})" if t.get("error") else "")
                              for t in r["tries"])  # fmt: skip
            lines.append(f"| {_cell(r['name'])} | {_cell(tries)} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, path: Path) -> bool:
    """``report`` as JSON at ``path`` (atomically); False (said on stderr) where it could not be written."""
    try:
        atomic_write(path, (json.dumps(report, indent=2) + "\n").encode())
    except ClientError as e:
        log.error("error: the report was not written: %s; the lines on stdout are all there is", e)
        return False
    return True


def keep_earlier_report(report_path: Path) -> None:
    """Move an earlier run's report (``report.json`` and the ``report.md`` beside it) into ``reports/`` beside them,
    named after the time it was written (``reports/report-20261207-184500.json``, UTC), so that a rerun keeps the
    record of what happened before. Nothing is moved where the folder cannot be written (the new report says why)."""
    if not report_path.is_file():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(report_path.stat().st_mtime))
    folder = report_path.parent / "reports"
    try:
        folder.mkdir(exist_ok=True)
        for k in range(1000):
            name = f"{report_path.stem}-{stamp}" + (f"-{k}" if k else "")
            if not any((folder / (name + suffix)).exists() for suffix in (".json", ".md")):
                break
        for old in (report_path, report_path.with_suffix(".md")):
            if old.is_file():
                os.replace(old, folder / (name + old.suffix))
    except OSError as e:
        log.warning("the earlier report %s stays where it is (it will be replaced): %s", report_path, e)
