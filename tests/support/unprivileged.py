"""Run a child process that obeys file permissions, for the "folder the user may not read" cases.

Root reads any file whatever its mode, and tests (CI included) often run as root. Switching to another user is not
always possible (here Python itself lives under /root, mode 700). Instead the child keeps uid 0 but loses the two
capabilities that let root ignore permission bits, CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: they are dropped from
its bounding set (``prctl(PR_CAPBSET_DROP)``) before ``exec``, so the new program never gets them back. It still reads
what root owns through the owner bits, but a mode-000 file or folder is closed to it, as to any user. A non-root
process has nothing to drop: ``chmod 0`` already works on it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PR_CAPBSET_DROP = 24  # <linux/prctl.h>
CAP_DAC_OVERRIDE = 1  # <linux/capability.h>
CAP_DAC_READ_SEARCH = 2


def _drop_permission_override() -> None:
    """``preexec_fn``: runs in the child between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")


def popen_kwargs() -> dict:
    """Keyword arguments for ``subprocess.Popen``/``run`` that start the child without permission override."""
    return {"preexec_fn": _drop_permission_override} if os.geteuid() == 0 else {}


def unavailable_reason() -> str | None:
    """None if a child started with :func:`popen_kwargs` really cannot read a mode-000 file; else why not."""
    if not sys.platform.startswith("linux"):
        return "needs Linux capabilities (prctl) to take root's permission override away"
    with tempfile.TemporaryDirectory(prefix="pbe-perm-") as d:
        probe = Path(d) / "closed"
        probe.write_text("x")
        probe.chmod(0)
        code = f"open({str(probe)!r}).read()"
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, **popen_kwargs())
        except (OSError, subprocess.SubprocessError) as e:
            return f"cannot start a process without permission override ({e})"
        if r.returncode == 0:
            return "this process can read a mode-000 file even without CAP_DAC_OVERRIDE (not a permission-checking file system?)"
        if b"PermissionError" not in r.stderr:
            return f"the probe failed for another reason: {r.stderr.decode(errors='replace')[-300:]}"
    return None
