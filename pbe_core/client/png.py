"""Just enough PNG for the headless client, standard library only: read a mask, write it as an alpha channel.

``read_mask`` decodes any non-interlaced PNG (grey, grey+alpha, RGB, RGBA, palette; 1 to 16 bits) to one 8-bit
value per pixel, white = 255; ``alpha_png`` writes those values, inverted, as the alpha channel of a grey+alpha PNG,
which is what ComfyUI's ``/upload/mask`` copies into the source image (and ``LoadImage`` turns back into
``mask = 1 - alpha``). ``image_size`` reads the size from a PNG or JPEG header.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PNGError(ValueError):
    pass


def _chunks(data: bytes):
    if data[:8] != SIGNATURE:
        raise PNGError("not a PNG file")
    i = 8
    while i + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        yield kind, data[i + 8:i + 8 + n]
        i += 12 + n


def _unfilter(raw: bytes, width_bytes: int, height: int, bpp: int) -> list[bytearray]:
    rows, prev, i = [], bytearray(width_bytes), 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1:i + 1 + width_bytes])
        i += 1 + width_bytes
        if ftype == 0:  # the common case for masks: no per-byte work
            rows.append(line)
            prev = line
            continue
        for x in range(width_bytes):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            elif ftype != 0:
                raise PNGError(f"bad PNG filter type {ftype}")
        rows.append(line)
        prev = line
    return rows


def read_mask(data: bytes) -> tuple[int, int, bytes]:
    """PNG bytes -> (width, height, one 8-bit value per pixel, row-major). Colour becomes luma (as PIL's 'L');
    an alpha channel is applied over black, so white painted on a transparent layer also reads as the region."""
    header, palette, trns, idat = None, None, None, []
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise PNGError("PNG without an IHDR header")
    w, h, depth, ctype, _, _, interlace = header
    if ctype not in _CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise PNGError(f"unsupported PNG colour type {ctype} / bit depth {depth}")
    if interlace:
        raise PNGError("interlaced PNG masks are not supported; save the mask without interlacing")
    ch = _CHANNELS[ctype]
    bits = ch * depth
    rows = _unfilter(zlib.decompress(b"".join(idat)), (w * bits + 7) // 8, h, max(1, bits // 8))
    if ctype == 0 and depth == 8:  # plain 8-bit grey: the rows are the values
        return w, h, b"".join(bytes(r) for r in rows)
    out = bytearray(w * h)
    for y, row in enumerate(rows):
        samples = _samples(row, w * ch, depth)
        for x in range(w):
            s = samples[x * ch:(x + 1) * ch]
            if ctype == 3:
                if palette is None:
                    raise PNGError("palette PNG without a palette")
                idx = s[0]
                r, g, b = palette[3 * idx:3 * idx + 3]
                a = trns[idx] if trns is not None and idx < len(trns) else 255
                v = _luma(r, g, b)
            else:
                scale = 255 / ((1 << depth) - 1) if depth < 8 else 1
                s = [round(v * scale) for v in s] if depth < 8 else s
                v = s[0] if ctype in (0, 4) else _luma(*s[:3])
                a = s[-1] if ctype in (4, 6) else 255
            out[y * w + x] = (v * a + 127) // 255
    return w, h, bytes(out)


def _samples(row: bytes, n: int, depth: int) -> list[int]:
    if depth == 8:
        return list(row[:n])
    if depth == 16:
        return [row[2 * i] for i in range(n)]  # the high byte
    per = 8 // depth
    mask = (1 << depth) - 1
    return [(row[i // per] >> (8 - depth * (i % per + 1))) & mask for i in range(n)]


def _luma(r: int, g: int, b: int) -> int:
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # PIL's ITU-R 601-2 'L'


def alpha_png(width: int, height: int, values: bytes) -> bytes:
    """A grey+alpha PNG whose alpha is ``255 - values`` (so ComfyUI's LoadImage reads ``mask = values / 255``)."""
    if len(values) != width * height:
        raise PNGError(f"{len(values)} values for a {width}x{height} image")
    raw = bytearray()
    for y in range(height):
        raw.append(0)
        for v in values[y * width:(y + 1) * width]:
            raw += bytes((0, 255 - v))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 4, 0, 0, 0)
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + chunk(b"IEND", b"")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG from its header; None for other formats."""
    if data[:8] == SIGNATURE and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG (1 = as stored), or 1 when there is none."""
    if data[:2] != b"\xff\xd8":
        return 1
    i = 2
    while i + 4 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        body = data[i + 4:i + 2 + length]
        if marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            tiff = body[6:]
            endian = "<" if tiff[:2] == b"II" else ">"
            (ifd,) = struct.unpack(endian + "I", tiff[4:8])
            (count,) = struct.unpack(endian + "H", tiff[ifd:ifd + 2])
            for k in range(count):
                e = ifd + 2 + 12 * k
                tag, _, _ = struct.unpack(endian + "HHI", tiff[e:e + 8])
                if tag == 0x0112:
                    return struct.unpack(endian + "H", tiff[e + 8:e + 10])[0]
            return 1
        if marker == 0xDA:  # start of scan: no EXIF before the image data
            return 1
        i += 2 + length
    return 1


def _png_problem(data: bytes) -> str | None:
    i, seen, header, stream = 8, [], None, zlib.decompressobj()
    raw = 0
    while i < len(data):
        if i + 12 > len(data):
            return "it is truncated (a chunk is cut off)"
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + n]
        if len(body) != n or i + 12 + n > len(data):
            return f"it is truncated (the {kind.decode(errors='replace')} chunk is cut off)"
        (crc,) = struct.unpack(">I", data[i + 8 + n:i + 12 + n])
        if zlib.crc32(kind + body) != crc:
            return f"it is corrupt (the {kind.decode(errors='replace')} chunk fails its checksum)"
        seen.append(kind)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            try:
                raw += len(stream.decompress(body))
            except zlib.error as e:
                return f"its image data is corrupt ({e})"
        i += 12 + n
        if kind == b"IEND":
            break
    if not seen or seen[0] != b"IHDR" or header is None:
        return "it has no image header (IHDR)"
    if b"IDAT" not in seen:
        return "it holds no image data"
    if seen[-1] != b"IEND" or not stream.eof:
        return "it is truncated (it ends before its last chunk)"
    w, h, depth, ctype, _, _, interlace = header
    if not interlace and ctype in _CHANNELS:
        expected = h * (1 + (w * _CHANNELS[ctype] * depth + 7) // 8)
        if raw != expected:
            return f"its image data has {raw} bytes where a {w}x{h} image needs {expected}"
    return None


def _jpeg_problem(data: bytes) -> str | None:
    i = 2
    while True:
        if i + 4 > len(data):
            return "it is truncated (it ends inside its headers)"
        if data[i] != 0xFF:
            return f"it is corrupt (no marker at byte {i})"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            return "it ends before its image data"
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if i + 2 + length > len(data):
            return "it is truncated (it ends inside its headers)"
        if marker == 0xDA:  # start of scan: the entropy-coded data runs to the end-of-image marker
            break
        i += 2 + length
    if b"\xff\xd9" not in data[i + 2 + length:]:
        return "it is truncated (its image data has no end-of-image marker)"
    return None


def image_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be decoded as the image it claims to be, or None if its structure is whole.

    Checks what can be checked without a decoder: a PNG's chunks (lengths, checksums, the end chunk) and its image
    data (a complete zlib stream of the size the header implies); a JPEG's headers and its end-of-image marker; a WebP
    file's RIFF length. Other formats are not checked (None).
    """
    if not data:
        return "it is empty (0 bytes)"
    if data[:8] == SIGNATURE:
        return _png_problem(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_problem(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = struct.unpack("<I", data[4:8])[0] + 8
        return f"it is truncated ({len(data)} of {size} bytes)" if len(data) < size else None
    return None
