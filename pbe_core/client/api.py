"""Talking to ComfyUI over its HTTP API and ``/ws``: queue a prompt, follow it, fetch its results, and wait for a
server that went away. Standard library only.

Following a prompt: ``/ws`` carries its progress, and ``/history`` has the last word. Whenever ``/ws`` has said nothing
about the prompt for a few seconds, the client asks ``/history`` (finished?) and ``/queue`` (still queued or running?),
so a finished prompt is found finished even if its messages never came, and a prompt the server no longer knows (it
restarted) is noticed (:class:`PromptLost`). ComfyUI sends a client id's messages to the last ``/ws`` opened with that
id only; a run's id is random unless ``--client-id`` fixes one, and then two runs sharing it are told so.

Prompt ids are made here (``POST /prompt`` takes one, ComfyUI 0.3.64 and later), so a prompt whose ``POST`` was cut
off can still be looked for.

A lost connection (:meth:`ComfyClient.wait_for_server`): once the server has answered in this run, a connection error
means "wait for it": the client retries with growing pauses (1, 2, 3, then every 5 s), logging each try, for up to
``reconnect_wait`` seconds, then gives up with :class:`ServerGone`. A server never reached fails at once.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable

from .errors import ClientError, PromptLost, ServerError, ServerGone, ServerUnreachable  # noqa: F401 - re-exported
from .progress import ProgressBar
from .workflow import node_title
from .ws import WebSocket, WebSocketError

log = logging.getLogger("pbe_core.client")

UPLOAD_SUBFOLDER = "pbe_client"
#: seconds without a /ws message about the prompt before /history and /queue are asked
CHECK_AFTER = 3.0
#: seconds between /history polls when there is no /ws
POLL_EVERY = 0.5
#: pauses between reconnection tries, then the last one repeated
RETRY_PAUSES = (1, 2, 3, 5)
#: checks in a row that find the prompt running while /ws said nothing about it, before the client says so
DEAF_CHECKS = 3

_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, socket.timeout, http.client.HTTPException, OSError)


# --- talking to ComfyUI ------------------------------------------------------------------------------------------------
class ComfyClient:
    """One run's connection to a ComfyUI.

    ``client_id``: the id for ``/prompt`` and ``/ws`` (default: random for this run); ``timeout``: seconds one prompt
    may take once queued (then it is cancelled); ``reconnect_wait``: seconds to wait for a server that went away;
    ``revive``: called while waiting, may bring the server back (e.g. restart a private ComfyUI that exited).
    """

    def __init__(self, server: str = "127.0.0.1:8188", client_id: str | None = None, timeout: float = 600.0,
                 progress: bool = True, reconnect_wait: float = 120.0, revive: Callable[[], None] | None = None):
        server = server if "://" in server else f"http://{server}"
        u = urllib.parse.urlsplit(server)
        if u.scheme != "http":
            raise ClientError(f"--server must be http://HOST:PORT, not {server!r}")
        self.base = f"http://{u.netloc}"
        self.ws_url = f"ws://{u.netloc}/ws"
        self.fixed_client_id = client_id is not None
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.progress = progress
        self.reconnect_wait = reconnect_wait
        self.revive = revive
        self.reached = False  # the server has answered in this run: a connection error now means "wait for it"
        self.mine: set[str] = set()  # the prompt ids this run queued
        self._told_shared = False

    # --- HTTP ------------------------------------------------------------------------------------------------------
    def request(self, path: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60) -> bytes:
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - the user's server address
                body = r.read()
        except urllib.error.HTTPError as e:
            self.reached = True
            raw = e.read()
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            raise ServerError(_http_error_message(path, e.code, raw, data), e.code, data) from None
        except _NETWORK_ERRORS as e:
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.base}: {_reason(e)}") from None
        self.reached = True
        return body

    def get_json(self, path: str, timeout: float = 60):
        return json.loads(self.request(path, timeout=timeout))

    def post_json(self, path: str, body: dict, timeout: float = 60):
        raw = self.request(path, json.dumps(body).encode(), {"Content-Type": "application/json"}, timeout)
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

    def new_prompt_id(self) -> str:
        prompt_id = str(uuid.uuid4())
        self.mine.add(prompt_id)
        return prompt_id

    def queue(self, prompt: dict, prompt_id: str | None = None) -> str:
        """POST /prompt with this run's client id and ``prompt_id`` (made here if not given); returns the id."""
        prompt_id = prompt_id or self.new_prompt_id()
        self.mine.add(prompt_id)
        answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id})
        return answer.get("prompt_id", prompt_id)

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def state(self, prompt_id: str) -> tuple[str, dict | None]:
        """``("done", history entry)``, ``("running", None)``, ``("pending", None)`` or ``("unknown", None)``."""
        entry = self.history(prompt_id)
        if entry:  # ComfyUI writes the entry when the prompt has ended, in the same step that ends "running"
            return "done", entry
        q = self.get_json("/queue")
        for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
            if any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in q.get(key) or []):
                return state, None
        entry = self.history(prompt_id)  # it may have ended between the two requests
        return ("done", entry) if entry else ("unknown", None)

    def knows(self, prompt_id: str) -> bool:
        return self.state(prompt_id)[0] != "unknown"

    def view(self, image: dict) -> bytes:
        q = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{q}", timeout=300)

    def cancel(self, prompt_id: str, confirm: float = 0.0) -> bool:
        """Take the prompt out of the queue, or interrupt it if it is running (only it: targeted interrupt).

        ``confirm``: seconds to wait until the server has ended it (its ``/history`` entry is there, or it no longer
        knows it), so that whoever stops the server next does not cut the interruption short. True when it was seen
        ended (always True without ``confirm``, once both requests went through)."""
        try:
            self.post_json("/queue", {"delete": [prompt_id]}, timeout=10)
            self.post_json("/interrupt", {"prompt_id": prompt_id}, timeout=10)
            deadline = time.monotonic() + confirm
            while confirm > 0:
                if self.state(prompt_id)[0] in ("done", "unknown"):
                    return True
                if time.monotonic() >= deadline:
                    log.warning("prompt %s was asked to stop but had not ended after %.0f s", prompt_id, confirm)
                    return False
                time.sleep(0.1)
        except (ClientError, ConnectionError, ServerUnreachable, ValueError) as e:
            log.warning("could not cancel %s: %s", prompt_id, e)
            return False
        return True

    # --- a lost server ---------------------------------------------------------------------------------------------
    def check_server(self) -> None:
        """Called before every try while waiting for the server: raise to stop waiting. Over HTTP alone nothing tells
        a server that exited from one that is slow to come back, so this client waits; a subclass that owns the
        server's process knows better."""

    def wait_for_server(self, error: Exception) -> None:
        """After a connection error: return once the server answers again; ServerGone after ``reconnect_wait`` s.

        A server that never answered in this run is not waited for: ``error`` is raised as ServerUnreachable.
        """
        if not self.reached:
            raise error if isinstance(error, ServerUnreachable) else ServerUnreachable(str(error))
        reason = str(error).removeprefix(f"cannot reach ComfyUI at {self.base}: ")
        log.warning("lost the connection to ComfyUI at %s (%s); waiting up to %.0f s for it to come back",
                    self.base, reason, self.reconnect_wait)
        started = time.monotonic()
        for attempt in itertools.count(1):
            self.check_server()
            if self.revive is not None:
                try:
                    self.revive()
                except Exception as e:  # whatever stops the restart is the reason to give up
                    raise ServerGone(f"ComfyUI at {self.base} went away ({reason}) and could not be started again: "
                                     f"{e}") from None
            try:
                self.request("/system_stats", timeout=10)
            except ServerUnreachable as e:
                reason = str(e).removeprefix(f"cannot reach ComfyUI at {self.base}: ")
            except ServerError:
                pass  # it answers, if oddly: it is back
            else:
                log.warning("ComfyUI at %s is back after %.0f s", self.base, time.monotonic() - started)
                return
            waited = time.monotonic() - started
            if waited >= self.reconnect_wait:
                raise ServerGone(f"ComfyUI at {self.base} went away and did not come back within "
                                 f"{self.reconnect_wait:.0f} s ({reason})")
            pause = min(RETRY_PAUSES[min(attempt, len(RETRY_PAUSES)) - 1], self.reconnect_wait - waited)
            log.warning("  try %d: not back (%s); next try in %.0f s, giving up in %.0f s", attempt, reason, pause,
                        self.reconnect_wait - waited)
            time.sleep(pause)

    # --- following a prompt ----------------------------------------------------------------------------------------
    def open_ws(self) -> WebSocket | None:
        """``/ws`` for this client id; None (progress from /history only) if the server answers but refuses it;
        ServerUnreachable if nothing listens."""
        try:
            return WebSocket(f"{self.ws_url}?clientId={self.client_id}", timeout=10)
        except ConnectionRefusedError as e:
            raise ServerUnreachable(f"cannot reach ComfyUI at {self.base}: {_reason(e)}") from None
        except (OSError, WebSocketError) as e:
            log.warning("no progress: /ws unavailable (%s); polling /history", e)
            return None

    def run(self, prompt: dict, label: str = "") -> dict:
        """Queue ``prompt``, follow it to its end, return its /history entry; ServerError if it failed."""
        ws = self.open_ws()  # before queueing, so no message is missed
        try:
            prompt_id = self.queue(prompt)
            entry = self.follow(prompt_id, prompt, label, ws)
        finally:
            if ws is not None:
                ws.close()
        error = history_error(entry, prompt)
        if error:
            raise ServerError(error)
        return entry

    def follow(self, prompt_id: str, prompt: dict, label: str = "", ws: WebSocket | None = None) -> dict:
        """Follow a queued prompt to its end and return its /history entry (module docstring).

        ClientError after ``timeout`` s (the prompt is cancelled then; one that finished is returned, never timed
        out); PromptLost if the server no longer knows it; ServerUnreachable if the server stops answering.
        """
        deadline = time.monotonic() + self.timeout
        bar = ProgressBar(label, enabled=self.progress)
        heard = ended = False  # /ws said something about this prompt / that it ended
        deaf_checks = 0
        next_check = time.monotonic() + CHECK_AFTER
        try:
            while True:
                now = time.monotonic()
                if ws is None or ended or now >= next_check:
                    state, entry = self.state(prompt_id)
                    if state == "done":
                        if not ended and ws is not None:
                            self._missed_end(prompt_id, heard)
                        return entry
                    if state == "unknown":
                        raise PromptLost(f"ComfyUI at {self.base} no longer knows prompt {prompt_id} (it restarted?)")
                    deaf_checks = deaf_checks + 1 if state == "running" and not heard and ws is not None else 0
                    if deaf_checks == DEAF_CHECKS:
                        self._silent_while_running(prompt_id)
                    next_check = now + CHECK_AFTER
                if now >= deadline:
                    state, entry = self.state(prompt_id)  # one that ended meanwhile did not time out
                    if state == "done":
                        return entry
                    self.cancel(prompt_id)
                    raise ClientError(f"timed out after {self.timeout:.0f} s; the prompt was cancelled")
                if ws is None or ended:
                    time.sleep(min(POLL_EVERY, max(deadline - now, 0.01)))
                    continue
                ws.settimeout(max(0.05, min(next_check, deadline) - now))
                try:
                    msg = ws.recv()
                except socket.timeout:
                    continue
                except (OSError, WebSocketError) as e:
                    log.info("progress stream lost (%s); following the prompt through /history", e)
                    ws.close()
                    ws = None
                    continue
                if isinstance(msg, bytes):  # preview images
                    continue
                try:
                    msg = json.loads(msg)
                    kind, data = msg.get("type"), msg.get("data") or {}
                except (ValueError, AttributeError):
                    continue
                about = data.get("prompt_id")
                if about not in (None, prompt_id):
                    if about not in self.mine:
                        self._foreign_prompt(about)
                    continue
                if about == prompt_id:
                    heard = True
                    deaf_checks = 0
                    next_check = time.monotonic() + CHECK_AFTER
                if kind == "executing":
                    if data.get("node") is None and about == prompt_id:
                        ended = True
                    else:
                        node = prompt.get(str(data.get("node")), {})
                        bar.node(node_title(node) or str(node.get("class_type", "")))
                elif kind == "progress":
                    bar.update(int(data.get("value", 0)), int(data.get("max", 1)))
                elif kind in ("execution_success", "execution_error", "execution_interrupted") and about == prompt_id:
                    ended = True
        finally:
            bar.close()

    # --- a client id used by two runs ------------------------------------------------------------------------------
    def _shared(self) -> str:
        return (f"--client-id {self.client_id} (ComfyUI sends a client id's messages only to the /ws opened last with "
                f"it)")

    _ADVICE = "Give each run its own --client-id, or leave it out."

    def _missed_end(self, prompt_id: str, heard: bool) -> None:
        if self.fixed_client_id:
            log.warning("prompt %s finished, but /ws %s: most likely another run with %s took its messages; its "
                        "result was read from /history. %s", prompt_id,
                        "stopped telling about it" if heard else "said nothing about it", self._shared(), self._ADVICE)
        else:
            log.info("prompt %s finished without /ws telling; its result was read from /history", prompt_id)

    def _silent_while_running(self, prompt_id: str) -> None:
        if self.fixed_client_id and not self._told_shared:
            self._told_shared = True
            log.warning("/queue shows prompt %s running but /ws says nothing about it: most likely another run with "
                        "%s takes its messages; following it through /history, without progress. %s", prompt_id,
                        self._shared(), self._ADVICE)

    def _foreign_prompt(self, prompt_id: str) -> None:
        if not self._told_shared:
            self._told_shared = True
            log.warning("/ws carries messages about prompt %s, which this run did not queue: another run uses %s too; "
                        "this run's progress may be missing. %s", prompt_id, self._shared(), self._ADVICE)


def _reason(e: BaseException) -> str:
    """"Connection refused", not "<urlopen error [Errno 111] Connection refused>"."""
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _http_error_message(path: str, code: int, body: bytes, data) -> str:
    """``data``: ``body`` parsed as JSON, None when it is not JSON."""
    if data is None:
        text = body.decode(errors="replace").strip()
        return f"{path}: HTTP {code}" + (f": {text[:500]}" if text else "")
    return f"{path}: HTTP {code}: {rejection_message(data) if isinstance(data, dict) else json.dumps(data)[:500]}"


def rejection_message(data: dict) -> str:
    """The server's reasons for refusing a prompt (POST /prompt -> 400), one line, each reason once.

    ComfyUI repeats a node's ``validate_inputs`` answer once for every input that function takes (``details`` =
    ``"<input> - <answer>"``); those copies are given once, with the inputs named after it.
    """
    parts = []
    err = data.get("error")
    if isinstance(err, dict):  # its details repeat every node error: given once each below
        shown = err.get("details") and not data.get("node_errors")
        parts.append(err.get("message", "") + (f" ({err['details']})" if shown else ""))
    elif err:
        parts.append(str(err))
    for node_id, info in (data.get("node_errors") or {}).items():
        reasons: dict[str, list[str]] = {}  # reason -> the inputs it was reported for
        for e in info.get("errors", []):
            details = str(e.get("details") or "")
            name = str((e.get("extra_info") or {}).get("input_name") or "")
            if e.get("type") == "custom_validation_failed" and name and details.startswith(f"{name} - "):
                details = details[len(name) + 3:]
            else:
                name = ""
            reason = e.get("message", "") + (f": {details}" if details else "")
            reasons.setdefault(reason, [])
            if name:
                reasons[reason].append(name)
        for reason, names in reasons.items():
            shown = f" [{', '.join(names)}]" if len(names) > 1 else ""
            parts.append(f"{info.get('class_type', '?')} (node {node_id}): {reason}{shown}")
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
