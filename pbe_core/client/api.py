"""Talking to ComfyUI over its HTTP API and ``/ws``: queue a prompt, follow it, fetch its results. Standard library only."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from .ws import WebSocket, WebSocketError

log = logging.getLogger("pbe_core.client")

UPLOAD_SUBFOLDER = "pbe_client"

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


