"""The Ray side of a fleet run that is not the driver's loop: importing Ray (an optional extra), starting and stopping
it for the run (:class:`RayRun`), the run's own Ray folder and the processes left in it (also by an earlier run that
was killed), and holding signals back while the driver hands a row to Ray. Linux ``/proc`` where processes are told
apart; elsewhere those steps do nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..embedded import PACK_DIR
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


class RayRun:
    """Ray for one fleet run (``options``: the driver's ``FleetOptions``): :meth:`start` joins the user's cluster at
    ``options.address`` or starts a local one in a folder of its own (``own_temp``); :meth:`stop` shuts Ray down and
    ends the processes left in that folder, then removes it."""

    def __init__(self, ray, options):
        self.ray, self.options = ray, options
        self.own_temp: Path | None = None  # the Ray folder this run made (removed at the end)
        self.started = False  # ray.init was called (perhaps only half-way)

    def start(self, cpus_needed: float) -> dict:
        """``ray.init`` for the run: a local cluster (``cpus_needed``: what its workers reserve), or
        ``options.address``; returns the report's ``ray``. The folder it makes and Ray itself are known to :meth:`stop`
        before ``ray.init`` starts anything, so an interrupt at any point leaves nothing behind."""
        ray, options = self.ray, self.options
        env_vars = {"PYTHONPATH": os.pathsep.join([str(PACK_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])}
        kwargs = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": options.verbose,
                  "logging_level": logging.INFO if options.verbose else logging.WARNING}  # fmt: skip
        if options.address is None:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a cluster for one command reports nothing anywhere
            if options.temp_dir is not None:
                temp = Path(options.temp_dir).resolve()
                if len(str(temp)) > TEMP_DIR_MAX:
                    raise ClientError(f"--ray-temp-dir {temp} is {len(str(temp))} characters long; Ray keeps its sockets "
                                      f"in it, and their paths may have at most 107, so give a folder of at most "
                                      f"{TEMP_DIR_MAX} characters (e.g. under /tmp)")  # fmt: skip
                temp.mkdir(parents=True, exist_ok=True)
            else:  # short: Ray's socket paths live in it (at most 107 characters on Linux)
                parent = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
                clean_stale_ray_folders(Path(parent))
                temp = self.own_temp = Path(tempfile.mkdtemp(prefix="pbe-ray-", dir=parent))
                (temp / OWNER_FILE).write_text(process_identity(os.getpid()) or "")
            kwargs.update(num_cpus=max(os.cpu_count() or 1, int(-(-cpus_needed // 1))), include_dashboard=options.dashboard,
                          _temp_dir=str(temp))  # fmt: skip
        else:
            kwargs["address"] = options.address
        started = time.monotonic()
        self.started = True
        try:
            context = ray.init(**kwargs)
        except Exception as e:  # Ray's own errors (no cluster at the address, a port taken, ...) name the cause
            found = os.environ.get("RAY_ADDRESS") if options.address == "auto" else None
            where = f"connect to the Ray cluster at {options.address}" if options.address else "start a local Ray cluster"
            where += f" (RAY_ADDRESS={found})" if found else ""
            hint = ""
            if options.dashboard and "dashboard" in str(e).lower():
                hint = "; --ray-dashboard needs Ray's dashboard packages: pip install 'ray[default]' (or leave it out)"
            elif options.address and (options.address != "auto" or found) and os.environ.get("RAY_AUTH_MODE") != "token":
                # Ray 2.59+ starts clusters with token authentication; a driver given an address (or RAY_ADDRESS)
                # sends the token only in token mode (with --ray=auto on the head Ray finds the mode by itself)
                hint = ("; if the cluster uses token authentication (ray start does from Ray 2.59), run the command "
                        "with RAY_AUTH_MODE=token and the cluster's token (ray get-auth-token; ~/.ray/auth_token or "
                        "RAY_AUTH_TOKEN), or on the head with --ray=auto" + (" and RAY_ADDRESS unset" if found else ""))
            raise ClientError(f"could not {where}: {type(e).__name__}: {first_line(e)}{hint}") from None
        info = {"version": ray.__version__, "local": options.address is None, "address": options.address,
                "startup_s": round(time.monotonic() - started, 2)}  # fmt: skip
        dashboard = getattr(context, "dashboard_url", None)
        if dashboard:
            info["dashboard"] = dashboard
        return info

    def stop(self) -> None:
        """Shut Ray down (a local cluster stops; the user's cluster stays), end what is left running in the run's own
        folder (a ``--ray-temp-dir`` could be another cluster's too: left alone) and remove the folder."""
        if self.started:
            with contextlib.suppress(Exception):
                self.ray.shutdown()
            if self.own_temp is not None:
                end_processes_of(self.own_temp)
        if self.own_temp is not None:
            shutil.rmtree(self.own_temp, ignore_errors=True)


def first_line(e: BaseException) -> str:
    """The first line of an error (of its cause, for Ray's wrapped ones), at most 500 characters."""
    text = str(getattr(e, "cause", None) or e).strip()
    return text.splitlines()[0][:500] if text else type(e).__name__


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
