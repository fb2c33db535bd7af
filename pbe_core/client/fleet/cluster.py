"""The Ray side of a fleet run that is not the driver's loop: importing Ray (an optional extra), the run's own Ray
folder and the processes left in it (also by an earlier run that was killed), and holding signals back while the
driver hands a row to Ray. Linux ``/proc`` where processes are told apart; elsewhere those steps do nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from ..errors import ClientError

log = logging.getLogger("pbe_core.client")

#: what to install for --ray (the pack's ``fleet`` extra); its tests pass with Ray 2.10.0 and 2.60.0
RAY_REQUIREMENT = "ray>=2.10"
INSTALL_HINT = (f"--ray needs Ray, which is not installed in this Python ({sys.executable}); install it with "
                f"pip install '{RAY_REQUIREMENT}' (or the pack's 'fleet' extra), or leave --ray out to use one server")
#: the file in a run's own Ray folder naming the process that made it (``clean_stale_ray_folders``)
OWNER_FILE = "pbe-owner"
#: the longest Ray folder whose socket paths (``<folder>/session_<date>_<pid>/sockets/plasma_store``) fit in 107 bytes
TEMP_DIR_MAX = 40


def import_ray():
    """The ``ray`` module, or ClientError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClientError(INSTALL_HINT) from None
    return ray


def process_identity(pid: int) -> str | None:
    """``"PID START"`` (START: the process's start time in clock ticks since boot, ``/proc/PID/stat``), which a later
    process with the same pid does not share; None where the process does not exist (or there is no ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{pid} {fields[19]}" if len(fields) > 19 and fields[0] != "Z" else None


def clean_stale_ray_folders(parent: Path) -> list[Path]:
    """Remove the Ray folders (``pbe-ray-*`` in ``parent``) that earlier runs made and could not remove because they
    were killed (SIGKILL): a folder whose run is gone (the process named in its ``OWNER_FILE`` no longer exists) has its
    leftover processes ended (those whose command line names it: Ray's helper agents of that run's own cluster) and is
    removed. A folder of a run still going, of another user, or without an owner file (another version, or a run
    between making it and naming itself) is left alone. Linux (``/proc``) only; returns the folders removed."""
    removed: list[Path] = []
    if not hasattr(os, "getuid") or process_identity(os.getpid()) is None:  # no /proc: nothing can be told
        return removed
    for folder in sorted(parent.glob("pbe-ray-*")):
        try:
            if not folder.is_dir() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
            owner = (folder / OWNER_FILE).read_text().strip()
        except OSError:
            continue
        pid = owner.split()[0] if owner else ""
        if not pid.isdigit() or process_identity(int(pid)) == owner:
            continue
        end_processes_of(folder)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
            log.info("removed %s, the Ray folder of an earlier run that was killed before it could", folder)
    return removed


def end_processes_of(folder: Path, wait: float = 5.0) -> None:
    """End the processes still running whose command line names ``folder`` (the Ray folder this run made):
    ``ray.shutdown`` stops a cluster that started, but a ``ray.init`` that failed half-way (a missing dashboard
    package, say) leaves its GCS and monitor running until this process exits. Linux (``/proc``) only."""
    import signal

    mark = str(folder).encode()
    mine = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in Path(f"/proc/{entry}/cmdline").read_bytes():
                        mine.append(int(entry))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while mine and time.monotonic() < deadline:
            mine = [pid for pid in mine if _running(pid)]
            time.sleep(0.1)
        if not mine:
            return


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaping a child that is one)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def _interrupt_handlers(handler):
    """SIGINT and SIGTERM go to ``handler`` inside the block, and back to their former handlers after it; yields those
    (``{signal: handler}``), or None where this is not the main thread (Python sets handlers there only; the block then
    runs as it is)."""
    import signal

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield None
        return
    try:
        yield old
    finally:
        for s, former in old.items():
            signal.signal(s, former)


@contextlib.contextmanager
def interrupts_deferred():
    """SIGINT and SIGTERM held back inside the block (noted, not lost): their handlers run right after it. Python runs
    signal handlers in the main thread only, so this works there; elsewhere the block runs as it is."""
    import signal

    noted: list[int] = []
    old = None
    try:
        with _interrupt_handlers(lambda signum, frame: noted.append(signum)) as old:
            yield
    finally:
        for signum in noted[:1]:
            handler = old[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL and signum == signal.SIGINT:
                raise KeyboardInterrupt


@contextlib.contextmanager
def ignoring_interrupts():
    """SIGINT and SIGTERM ignored inside the block (main thread only)."""
    import signal

    with _interrupt_handlers(signal.SIG_IGN):
        yield
