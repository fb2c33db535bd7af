"""The headless client's errors: what the user must fix, what the server said, and what ends a whole batch.

A batch goes on past a row's own failure (``ClientError``, ``ServerError``). The errors marked :class:`StopsBatch`
mean no later row could succeed either (the output folder cannot be written, the server is gone): the batch stops
there, reports the rest as not tried with that reason, and still writes its report.
"""

from __future__ import annotations


class StopsBatch:
    """Mixin: no later row of the batch can succeed either; the remaining rows are reported with this reason."""


class ClientError(Exception):
    """Something the user must fix; the message says what."""


class ServerError(ClientError):
    """The server refused or failed the job; the message is the server's. An HTTP error answer also keeps its status
    (``status``, e.g. 400 for a prompt that failed validation) and its body (``body``: the JSON as sent, e.g. the
    ``node_errors`` of a refused prompt; None when it was not JSON)."""

    def __init__(self, message: str, status: int | None = None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body


class ResultWriteError(ClientError, StopsBatch):
    """A result (or the report) could not be written; the message names the folder and the OS's reason."""


class ServerStartError(ClientError, StopsBatch):
    """The private ComfyUI could not be started; the message says why."""


class ServerUnreachable(ConnectionError, StopsBatch):
    """ComfyUI does not answer: never reached in this run, or gone and not back within the wait (:class:`ServerGone`)."""


class ServerGone(ServerUnreachable):
    """ComfyUI answered earlier in the run, then went away and did not come back within the reconnect wait."""


class PromptLost(Exception):
    """The server no longer knows a prompt it had accepted (neither queued, running nor in its history): it restarted."""
