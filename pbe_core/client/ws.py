"""A minimal WebSocket client (RFC 6455) over the standard library, enough to follow ComfyUI's ``/ws``.

Plain ``ws://`` only (ComfyUI serves HTTP), client frames masked, server frames read whole (fragments joined),
pings answered. Text messages come back as ``str``, binary ones (ComfyUI's preview images) as ``bytes``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import urllib.parse

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketError(ConnectionError):
    pass


class WebSocket:
    def __init__(self, url: str, timeout: float | None = 30.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "ws":
            raise WebSocketError(f"only ws:// URLs are supported, not {url!r}")
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        self._buf = bytearray()
        self._parts: list[bytes] = []  # the fragments of a message being received
        self._first_op = OP_TEXT
        try:
            self._handshake(u)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, u) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        host = u.hostname if u.port is None else f"{u.hostname}:{u.port}"
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self._buf:
            self._fill()
        head, rest = bytes(self._buf).split(b"\r\n\r\n", 1)
        self._buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise WebSocketError(f"WebSocket upgrade refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()  # noqa: S324 - protocol
        if headers.get("sec-websocket-accept") != accept:
            raise WebSocketError("WebSocket handshake: wrong Sec-WebSocket-Accept")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise WebSocketError("connection closed by the server")
        self._buf += chunk

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def send(self, payload: bytes | str, opcode: int | None = None) -> None:
        if isinstance(payload, str):
            payload, opcode = payload.encode(), opcode or OP_TEXT
        opcode = OP_BINARY if opcode is None else opcode
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _frame(self) -> tuple[bool, int, bytes] | None:
        """The next whole frame ``(fin, opcode, payload)`` taken from the buffer, or None (nothing taken) if it has
        not all arrived yet."""
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        n, at = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, at = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, at = struct.unpack(">Q", buf[2:10])[0], 10
        mask = None
        if b1 & 0x80:
            if len(buf) < at + 4:
                return None
            mask, at = bytes(buf[at:at + 4]), at + 4
        if len(buf) < at + n:
            return None
        data = bytes(buf[at:at + n])
        del self._buf[:at + n]
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return bool(b0 & 0x80), b0 & 0x0F, data

    def recv(self) -> str | bytes:
        """The next message (``socket.timeout`` if none arrives in time; ``WebSocketError`` when closed).

        A timeout loses nothing: a frame is taken from the buffer only once it has arrived whole, and the fragments
        of a message already read are kept for the next call."""
        while True:
            frame = self._frame()
            if frame is None:
                self._fill()
                continue
            fin, op, data = frame
            if op == OP_PING:
                self.send(data, OP_PONG)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self._close_quietly()
                raise WebSocketError("connection closed by the server")
            if op != OP_CONT:
                self._first_op = op
            self._parts.append(data)
            if fin:
                msg = b"".join(self._parts)
                self._parts = []
                return msg.decode("utf-8") if self._first_op == OP_TEXT else msg

    def _close_quietly(self) -> None:
        try:
            self.send(b"", OP_CLOSE)
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        self._close_quietly()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
