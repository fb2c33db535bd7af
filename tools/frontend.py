"""Drive the real ComfyUI frontend in headless Chromium over the DevTools protocol (developer tool, not shipped).

Used by ``build_workflows.py`` to let the frontend itself build and serialise the UI workflows and to screenshot them.
Needs Debian's ``chromium`` and the ``websocket-client`` package (``pip install websocket-client``).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request


class FrontendError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page, talking CDP over its page websocket."""

    def __init__(self, width: int = 1280, height: int = 800, port: int = 0, chromium: str | None = None):
        import socket

        import websocket  # websocket-client

        self.chromium = chromium or shutil.which("chromium") or shutil.which("chromium-browser")
        if not self.chromium:
            raise FrontendError("Chromium not found: apt-get install chromium")
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="pbe-chromium-")
        self.proc = subprocess.Popen(
            [
                self.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}",
                # recent Chromium refuses DevTools connections whose Origin it was not told about
                f"--remote-allow-origins=http://127.0.0.1:{port}", "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        tabs = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:  # noqa: S310
                    tabs = json.load(r)
                break
            except OSError:
                time.sleep(0.2)
        if tabs is None:
            self.close()
            raise FrontendError("Chromium's DevTools endpoint did not come up")
        page = next(t for t in tabs if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120)
        self._id = 0
        self.call("Page.enable")
        self.resize(width, height)

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise FrontendError(f"{method}: {msg['error']}")
                return msg["result"]

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def evaluate(self, expression: str):
        """Evaluate JavaScript in the page (promises awaited); return its JSON value or raise with the JS error."""
        r = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise FrontendError(d.get("exception", {}).get("description") or d.get("text"))
        return r["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 90) -> None:
        """Navigate and wait until the JavaScript expression ``ready`` is true."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(ready):
                    return
            except FrontendError:
                pass
            time.sleep(0.3)
        raise FrontendError(f"{url}: page not ready within {timeout} s ({ready})")

    def screenshot(self, path, fmt: str = "jpeg", quality: int = 88, selector: str | None = None) -> None:
        """Screenshot the page, or only the box of the element ``selector``."""
        params = {"format": fmt}
        if selector:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                " return [r.x, r.y, r.width, r.height]; })()"
            )
            params["clip"] = dict(zip(("x", "y", "width", "height"), box, strict=True), scale=1)
        if fmt == "jpeg":
            params["quality"] = quality
        data = self.call("Page.captureScreenshot", **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
