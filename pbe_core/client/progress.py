"""Progress on stderr, one mechanism for the whole client (standard library only): :class:`StatusLine`, a line that is
redrawn in place on a terminal and written as plain lines elsewhere (a log file), with log messages printed above it;
:class:`ProgressBar`, one prompt's steps on it (``api.ComfyClient.follow``); :class:`BatchProgress`, the rows of a
batch on it (the fleet's driver, and a one-server batch through ``jobs.run_batch``'s ``progress``).
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Callable

log = logging.getLogger("pbe_core.client")


class StatusLine:
    """One line on ``stream`` (default stderr). On a terminal :meth:`show` redraws it in place (cut to ``limit``
    characters); elsewhere it writes the text as a line only when asked (``new_line``), so a log gets a line per
    event, not per redraw. Nothing is written when not ``enabled``."""

    def __init__(self, enabled: bool = True, stream=None, limit: int = 250):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.limit = limit
        self.shown = False  # drawn on the terminal and not yet ended with a newline

    def show(self, text: str, new_line: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + text[: self.limit] + "\x1b[K")
            self.shown = True
        elif new_line:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> bool:
        """Take the line off a terminal (to print something in its place); True if there was one."""
        if not (self.tty and self.shown):
            return False
        self.stream.write("\r\x1b[K")
        self.stream.flush()
        return True

    def close(self) -> None:
        """End the line on a terminal (the next output starts on a line of its own)."""
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


class ProgressBar:
    """One prompt: ``label  node  [#####.....]  12/50``; redrawn in place on a terminal, a line every 10 % in a log."""

    def __init__(self, label: str, enabled: bool = True, stream=None, width: int = 30):
        self.out = StatusLine(enabled, stream, limit=200)
        self.label, self.current, self.width = label, "", width
        self._last_tenth = None

    def node(self, title: str) -> None:
        self.current = title
        self._last_tenth = None

    def update(self, value: int, total: int) -> None:
        total = max(total, 1)
        done = int(self.width * min(value, total) / total)
        tenth = 10 * value // total
        self.out.show(f"{self.label} {self.current} [{'#' * done}{'.' * (self.width - done)}] {value}/{total}",
                      new_line=tenth != self._last_tenth)  # fmt: skip
        self._last_tenth = tenth

    def close(self) -> None:
        self.out.close()


def clock_text(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class BatchProgress:
    """One line for the whole batch:
    ``[#######.............] 7/20 done, 1 failed | 0.52 rows/s | ETA 0:25 | w1 4, w2 3``.

    On a terminal it is redrawn in place and :meth:`say` prints a line above it; elsewhere (a log file) it is written
    as a line each time a row ends. ``total``: the rows this run does (rows done earlier are not in it). The rate counts
    the rows ended since the first row was sent (startup excluded); the ETA is the remaining rows at that rate.

    The fleet's driver calls :meth:`sent` and :meth:`ended`. A one-server batch, whose prompts draw their own bar,
    calls the object itself as ``jobs.run_batch``'s ``progress(k, row)``: the same counts and rate, logged as a line per
    row (``3/20 rows (done), 0.52 rows/s, about 0:33 left``), its rows going out one after the other from the moment
    the object was made.
    """

    def __init__(self, total: int, enabled: bool = True, stream=None, clock: Callable[[], float] = time.monotonic,
                 width: int = 24):
        self.out = StatusLine(enabled, stream)
        self.total, self.width, self.clock = total, width, clock
        self.rows = total  # as given: a one-server batch's rows, those done earlier included
        self.done = self.failed = 0
        self.per_worker: dict[str, int] = collections.Counter()
        self.made = clock()
        self.first_sent: float | None = None
        self.last_ended: float | None = None

    def sent(self) -> None:
        if self.first_sent is None:
            self.first_sent = self.clock()

    def _count(self, worker: str | None, ok: bool) -> None:
        self.last_ended = self.clock()
        if ok:
            self.done += 1
            if worker:
                self.per_worker[worker] += 1
        else:
            self.failed += 1

    def ended(self, worker: str | None, ok: bool) -> None:
        self._count(worker, ok)
        self.draw(new_line=True)

    def __call__(self, k: int, row: dict) -> None:
        """``jobs.run_batch``'s ``progress``: row ``k`` of the batch ended with its report entry; a row done earlier
        (skipped) leaves the total."""
        if self.first_sent is None:
            self.first_sent = self.made
        if row["status"] == "skipped":
            self.total -= 1
        else:
            self._count(row.get("worker"), row["ok"])
        if not self.out.enabled:
            return
        rate = self.rate()
        left = self.total - (self.done + self.failed)
        log.info("%d/%d rows (%s), %s rows/s, %s", k, self.rows, row["status"], f"{rate:.2f}" if rate else "--",
                 f"about {clock_text(left / rate)} left" if rate else "time left unknown")

    def rate(self, final: bool = False) -> float | None:
        """Rows ended per second since the first was sent: until now, or (``final``) until the last one ended."""
        if self.first_sent is None:
            return None
        until = self.last_ended if final and self.last_ended is not None else self.clock()
        elapsed = until - self.first_sent
        ended = self.done + self.failed
        return ended / elapsed if ended and elapsed > 0 else None

    def line(self) -> str:
        ended = self.done + self.failed
        filled = int(self.width * ended / self.total) if self.total else self.width
        parts = [f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} done, {self.failed} failed"]
        rate = self.rate()
        parts.append(f"{rate:.2f} rows/s" if rate else "-- rows/s")
        if rate and ended < self.total:
            parts.append(f"ETA {clock_text((self.total - ended) / rate)}")
        if self.per_worker:
            parts.append(", ".join(f"{w} {n}" for w, n in sorted(self.per_worker.items())))
        return " | ".join(parts)

    def draw(self, new_line: bool = False) -> None:
        """Redraw the line in place (a terminal); ``new_line``: a row ended, which a log gets as a line."""
        self.out.show(self.line(), new_line)

    def say(self, level: int, message: str, *args) -> None:
        """Log a line (above the bar on a terminal)."""
        cleared = self.out.clear()
        log.log(level, message, *args)
        if cleared:
            self.draw()

    def close(self) -> None:
        self.out.close()
