"""Results on disk: written so that only complete ones ever look finished, and known by the settings that made them.
Standard library only.

This is the one place that decides whether a row of a batch is done. The batch here uses it, and a runner with several
workers writing into one output folder can use it as it is: everything works from the output folder and the row's
name, nothing is kept in memory between calls, and files take their final names only by atomic renames.

API::

    key = settings_hash(prompt, {"source": data, "mask": data, "exemplars": [data, ...]}, extra)
    store = ResultStore(out_dir)
    store.check_writable()                   # before any work: ResultWriteError if the folder cannot be written
    paths = store.done(name, key)            # the row's result files if they are there, whole, for this key; else None
    paths = store.write(name, key, [(".png", data), ...])   # atomic; ResultWriteError names the folder and OS reason
    atomic_write(path, data)                 # the same temporary-name-then-rename for any other file (the report)

Files: a row's results are ``OUT/NAME.png`` (``NAME_1.png``, ``NAME_2.png``, ... when the workflow saves several) and
beside them its sidecar ``OUT/NAME.pbe.json``::

    {"format": 1, "key": "<settings hash>", "files": [{"name": "NAME.png", "bytes": 51234, "sha256": "<hex>"}]}

A row is done when its sidecar holds the same key and every file it lists exists with that size and SHA-256.

Writing: every file goes first to a hidden temporary name in the same folder (``.NAME.png.<pid>-<random>.part``), is
flushed and fsynced, and only then renamed. The sidecar is written to its temporary name before any result is renamed,
and renamed last, so everything that needs disk space happens before anything takes a final name: a full disk, a
read-only folder or a killed process leaves at most a ``.part`` file (removed on an error; a killed process may leave
one behind), never a file named like a result. A crash between the renames leaves whole results without their sidecar,
which the next run does again. Files that the row's previous sidecar listed and the new one does not (``NAME_3.png``
from a workflow that saved three) are removed once the new sidecar is in place.

Two workers writing the same row at once: the last rename of each file wins; should the sidecar and a file come from
different writers, the checksums disagree, :meth:`ResultStore.done` says no and the row is done again.

The key (:func:`settings_hash`) covers what decides the result: the prompt as it is queued before the uploaded file
names are filled in (the workflow with every override and the row's seed applied), the SHA-256 of every input file's
contents, and ``extra`` (e.g. the size and modification time of a model file given by path; a model known to the
server only by its name is known here by that name). The server address, the client id and the timeouts are not in it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ResultWriteError

log = logging.getLogger("pbe_core.client")

FORMAT = 1
SIDECAR_SUFFIX = ".pbe.json"

#: what to do about the usual reasons a write fails, by errno
_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or give -o a folder on another disk",
    errno.EROFS: "it is on a read-only file system; give -o a writable folder",
    errno.EACCES: "no permission to write there; give -o a folder you can write to",
    errno.EPERM: "no permission to write there; give -o a folder you can write to",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _ADVICE[errno.EDQUOT] = "the disk quota is used up; free some space or give -o a folder on another disk"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_hash(prompt: dict, inputs: Mapping[str, bytes | Sequence[bytes]], extra: Mapping | None = None) -> str:
    """The key of a row's result: SHA-256 (hex) of the prompt, the input files' contents and ``extra``.

    ``prompt``: the API prompt as queued, minus the uploaded file names (JSON-serialisable). ``inputs``: role ->
    file contents, or a list of them (``{"source": b"...", "mask": b"...", "exemplars": [b"...", b"..."]}``); only
    their SHA-256 enter the key. ``extra``: anything else that decides the result (JSON-serialisable).
    """
    digests = {role: [sha256(d) for d in data] if isinstance(data, (list, tuple)) else sha256(data)
               for role, data in inputs.items()}  # fmt: skip
    doc = {"format": FORMAT, "prompt": prompt, "inputs": digests, "extra": dict(extra or {})}
    return sha256(json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode())


def write_problem(path: Path, error: OSError, what: str | None = None) -> str:
    """``cannot write NAME into FOLDER: <OS reason> [ENOSPC]; <what to do>`` (``what`` replaces the part before the
    colon)."""
    code = errno.errorcode.get(error.errno, "") if error.errno else ""
    reason = error.strerror or str(error)
    advice = _ADVICE.get(error.errno)
    what = what or f"cannot write {path.name} into {path.parent}"
    return f"{what}: {reason}" + (f" [{code}]" if code else "") + (f"; {advice}" if advice else "")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _stage(path: Path, data: bytes, what: str | None = None) -> Path:
    """Write ``data`` whole to a temporary name beside ``path`` (flushed, fsynced); returns that name."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _unlink_quietly(tmp)
        raise ResultWriteError(write_problem(path, e, what)) from None
    except BaseException:  # Ctrl-C while writing: no half-written file is left
        _unlink_quietly(tmp)
        raise
    return tmp


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable; not every file system lets a folder be opened or synced, which is harmless here."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultWriteError(write_problem(folder, e, f"cannot create the folder {folder}")) from None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` under a temporary name, then rename it: the file is whole or not there (or its old self).
    ResultWriteError (folder and OS reason) when it cannot be written; nothing is left behind then."""
    path = Path(path)
    _make_folder(path.parent)
    tmp = _stage(path, data)
    try:
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise ResultWriteError(write_problem(path, e)) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_folder(path.parent)


class ResultStore:
    """The results of a batch's rows in one folder (see the module docstring for the files and the guarantees)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def sidecar(self, name: str) -> Path:
        return self.folder / f"{name}{SIDECAR_SUFFIX}"

    @staticmethod
    def result_names(name: str, suffixes: Sequence[str]) -> list[str]:
        """``NAME.png`` for one result, ``NAME_1.png``, ``NAME_2.png``, ... for several."""
        if len(suffixes) == 1:
            return [f"{name}{suffixes[0]}"]
        return [f"{name}_{k}{suffix}" for k, suffix in enumerate(suffixes, 1)]

    def check_writable(self) -> None:
        """Create the folder and a temporary file in it (removed again); ResultWriteError if either fails."""
        _make_folder(self.folder)
        _unlink_quietly(_stage(self.folder / "write-check", b"", f"cannot write into the output folder {self.folder}"))

    def _record(self, name: str) -> dict | None:
        try:
            record = json.loads(self.sidecar(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # unreadable or hand-edited: the row is simply not done
            log.debug("%s: ignoring its sidecar: %s", name, e)
            return None
        return record if isinstance(record, dict) else None

    def _listed(self, record: dict | None) -> list[dict]:
        """The sidecar's file entries that name a plain file in this folder (never a path elsewhere)."""
        files = (record or {}).get("files")
        if not isinstance(files, list):
            return []
        return [f for f in files if isinstance(f, dict) and isinstance(f.get("name"), str)
                and f["name"] == Path(f["name"]).name and f["name"] not in ("", ".", "..")]  # fmt: skip

    def done(self, name: str, key: str) -> list[Path] | None:
        """The row's result files if its sidecar holds ``key`` and every file it lists is there, whole; else None."""
        record = self._record(name)
        if record is None or record.get("format") != FORMAT or record.get("key") != key:
            return None
        files = self._listed(record)
        if not files or len(files) != len(record["files"]):
            return None
        paths = []
        for f in files:
            path = self.folder / f["name"]
            try:
                if path.stat().st_size != f.get("bytes") or sha256(path.read_bytes()) != f.get("sha256"):
                    return None
            except OSError:
                return None
            paths.append(path)
        return paths

    def write(self, name: str, key: str, outputs: Sequence[tuple[str, bytes]]) -> list[Path]:
        """Write the row's results (``(suffix, data)`` each, e.g. ``(".png", b"...")``) and its sidecar, atomically
        (module docstring). Returns the result paths; ResultWriteError (folder, OS reason) leaves no new file."""
        names = self.result_names(name, [suffix for suffix, _ in outputs])
        _make_folder(self.folder)
        old = self._record(name)
        record = {"format": FORMAT, "key": key,
                  "files": [{"name": n, "bytes": len(data), "sha256": sha256(data)}
                            for n, (_, data) in zip(names, outputs, strict=True)]}  # fmt: skip
        staged: list[tuple[Path, Path]] = []
        try:
            for n, (_, data) in zip(names, outputs, strict=True):
                staged.append((_stage(self.folder / n, data), self.folder / n))
            sidecar = self.sidecar(name)
            staged.append((_stage(sidecar, (json.dumps(record, indent=1) + "\n").encode()), sidecar))
        except BaseException:  # a write error, or Ctrl-C: no staged file is left
            for tmp, _ in staged:
                _unlink_quietly(tmp)
            raise
        for k, (tmp, final) in enumerate(staged):
            try:
                os.replace(tmp, final)
            except OSError as e:
                for later, _ in staged[k:]:
                    _unlink_quietly(later)
                raise ResultWriteError(write_problem(final, e)) from None
            except BaseException:
                for later, _ in staged[k:]:
                    _unlink_quietly(later)
                raise
        _fsync_folder(self.folder)
        for f in self._listed(old):
            if f["name"] not in names:
                _unlink_quietly(self.folder / f["name"])
        return [self.folder / n for n in names]
