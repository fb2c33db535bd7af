"""Damage for fuzzing the loader: safetensors headers that stay valid but lie, and raw byte edits.

Plain functions, shared by ``tests/pbe_core/weights/test_checkpoint_fuzz.py`` (hypothesis draws the damage) and the
host fuzz in ``tests/host/test_bad_inputs_host.py`` (a seeded ``random.Random`` does).
"""

import json
import re
import struct

#: dtypes of the same width: retyping keeps the header's offsets valid, so the damage gets past safetensors' parser
SAME_WIDTH = {"F16": ["BF16", "I16"], "BF16": ["F16", "I16"], "F32": ["I32"], "I64": ["F64"]}
HEADER_OPS = ("reshape", "retype", "rename", "renumber", "swap")
BYTE_OPS = ("flip", "insert", "delete", "truncate")


def split_header(data: bytes):
    """(header dict, tensor bytes) of a .safetensors file."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_header(header, body) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def reshape(shape, choice):
    """Another shape with the same number of elements (``choice`` picks which)."""
    numel = 1
    for s in shape:
        numel *= s
    options = [[numel], [*shape, 1], [1, *shape]]
    if len(shape) >= 2:
        options.append([shape[0] * shape[1], *shape[2:]])
        options.append(list(reversed(shape)))
    for d in (2, 4, 8):
        if numel % d == 0 and numel > d:
            options.append([d, numel // d])
    return options[choice % len(options)]


def apply_header_damage(header, damage):
    """Apply ``(op, key, n, other_key)`` edits (``op`` in :data:`HEADER_OPS`); offsets stay valid."""
    for op, key, n, other in damage:
        if key not in header or other not in header:
            continue
        entry = header[key]
        if op == "reshape":
            entry["shape"] = reshape(entry["shape"], n)
        elif op == "retype" and entry["dtype"] in SAME_WIDTH:
            options = SAME_WIDTH[entry["dtype"]]
            entry["dtype"] = options[n % len(options)]
        elif op == "rename":
            header[key + ("x", ".extra", "_ema")[n % 3]] = header.pop(key)
        elif op == "renumber":
            new = re.sub(r"\.(\d+)\.", f".{(n * 7919) % 10**9}.", key, count=1)
            header[new] = header.pop(key)
        elif op == "swap" and key != other:
            header[key], header[other] = header[other], header[key]
    return header


def apply_byte_damage(data: bytes, damage) -> bytes:
    """Apply ``(op, position, n, blob)`` edits (``op`` in :data:`BYTE_OPS`)."""
    b = bytearray(data)
    for op, at, n, blob in damage:
        at = min(at, max(len(b) - 1, 0))
        if op == "flip" and b:
            b[at] ^= n
        elif op == "insert":
            b[at:at] = blob
        elif op == "delete":
            del b[at : at + n]
        elif op == "truncate":
            del b[at:]
    return bytes(b)
