"""The headless client's parts without a server: PNG mask codec (PIL is the oracle), the WebSocket framing against a
stdlib server, prompt overrides, batch rows, error wording; and that it imports no torch."""

import io
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from images import png_bytes as _png
from PIL import Image

from pbe_core.client import api, jobs, png, workflow
from pbe_core.client.ws import WebSocket

pytestmark = pytest.mark.stdlib


def _mask_array(h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "I;16", "1", "RGBA", "LA"])
def test_read_mask_matches_pil(mode):
    gray = _mask_array()
    base = Image.fromarray(gray)
    if mode == "L":
        img, expected = base, gray
    elif mode == "1":
        img = base.point(lambda v: 255 if v >= 128 else 0).convert("1")
        expected = np.asarray(img.convert("L"))
    elif mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit grey; the high byte is the 8-bit value
        expected = gray
    elif mode == "RGB":
        rgb = np.dstack([gray, 255 - gray, gray // 2])
        img = Image.fromarray(rgb)
        expected = np.asarray(img.convert("L"))
    elif mode == "P":
        img = Image.fromarray(np.dstack([gray, gray, gray])).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        expected = np.asarray(img.convert("L"))
    else:  # with alpha: applied over black
        alpha = _mask_array(seed=1)
        img = Image.fromarray(np.dstack([gray, alpha]), "LA").convert(mode)
        expected = (gray.astype(int) * alpha + 127) // 255
    w, h, values = png.read_mask(_png(img))
    got = np.frombuffer(values, np.uint8).reshape(h, w)
    assert (w, h) == img.size
    assert np.array_equal(got, expected.astype(np.uint8))


def test_read_mask_all_filters():
    # PIL filters this image adaptively: rows use filter types 1-4 (type 0 is in the other tests)
    gray = np.clip(np.add.outer(np.arange(64), np.arange(80)) * 2 + _mask_array(64, 80) // 8, 0, 255).astype(np.uint8)
    img = Image.fromarray(np.dstack([gray, gray, 255 - gray]))
    w, h, values = png.read_mask(_png(img, optimize=True))
    assert np.array_equal(np.frombuffer(values, np.uint8).reshape(h, w), np.asarray(img.convert("L")))


def test_alpha_png_is_what_loadimage_reads_as_the_mask():
    gray = _mask_array()
    data = png.alpha_png(gray.shape[1], gray.shape[0], gray.tobytes())
    img = Image.open(io.BytesIO(data))
    assert img.mode == "LA"
    # ComfyUI: /upload/mask copies the alpha; LoadImage: mask = 1 - alpha / 255
    alpha = np.asarray(img.convert("RGBA").getchannel("A")).astype(int)
    assert np.array_equal(255 - alpha, gray)


def test_bad_masks_are_refused_with_a_reason():
    with pytest.raises(png.PNGError, match="not a PNG"):
        png.read_mask(b"\xff\xd8\xff\xe0 a jpeg")
    with pytest.raises(png.PNGError, match="interlaced"):
        png.read_mask(_interlaced())


def _interlaced() -> bytes:
    data = bytearray(_png(Image.fromarray(_mask_array())))
    data[28] = 1  # IHDR interlace byte (the CRC is not checked)
    return bytes(data)


def test_image_size_and_orientation():
    img = Image.fromarray(np.zeros((30, 70, 3), np.uint8))
    assert png.image_size(_png(img)) == (70, 30)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert png.image_size(buf.getvalue()) == (70, 30)
    assert png.jpeg_orientation(buf.getvalue()) == 6
    plain = io.BytesIO()
    img.save(plain, format="JPEG")
    assert png.jpeg_orientation(plain.getvalue()) == 1
    assert png.image_size(b"RIFF....WEBP") is None


# --- WebSocket ----------------------------------------------------------------------------------------------------------
def _serve_once(frames: list):
    """A one-connection server: answers the upgrade, sends ``frames`` raw (a float: pause that many seconds), then
    records what the client sends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = {}

    def run():
        import base64
        import hashlib

        conn, _ = srv.accept()
        req = b""
        while b"\r\n\r\n" not in req:
            req += conn.recv(4096)
        key = [line.split(":", 1)[1].strip() for line in req.decode().split("\r\n") if line.lower().startswith("sec-websocket-key")][0]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()  # noqa: S324
        conn.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
        for f in frames:
            if isinstance(f, float):  # a pause, e.g. in the middle of a frame
                time.sleep(f)
            else:
                conn.sendall(f)
        conn.settimeout(5)
        data = b""
        try:
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        got["data"] = data
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv.getsockname()[1], t, got


def _frame(op, payload, fin=True):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


def _jpeg(w, h, orientation=None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8))
    if orientation is None:
        img.save(buf, format="JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _pil_reads(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data)).load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_image_problem_agrees_with_pil_on_whole_and_cut_files(fmt):
    """PIL (which ComfyUI decodes uploads with) is the oracle: whole files pass, files cut short are refused."""
    arr = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt.upper())
    data = buf.getvalue()
    assert _pil_reads(data) and png.image_problem(data) is None
    for cut in (len(data) // 3, len(data) // 2, len(data) - 64):
        assert not _pil_reads(data[:cut])
        assert png.image_problem(data[:cut]), (fmt, cut)
    corrupt = bytearray(data)
    if fmt == "png":  # a flipped byte inside the image data fails the chunk's checksum
        corrupt[len(corrupt) // 2] ^= 0xFF
        assert "checksum" in png.image_problem(bytes(corrupt))
    assert "empty" in png.image_problem(b"")


class RecordingClient:
    """Stands in for the server: records what would be uploaded (nothing numeric is faked)."""

    def __init__(self):
        self.uploads = []

    def upload(self, kind, name, data, fields=None):
        self.uploads.append((kind, name))
        return {"name": name, "subfolder": "pbe_client", "type": "input"}


def _job(tmp_path, source: bytes, mask_wh=(60, 40)):
    (tmp_path / "photo.jpg").write_bytes(source)
    (tmp_path / "photo_mask.png").write_bytes(_png(Image.fromarray(np.full(mask_wh[::-1], 255, np.uint8))))
    (tmp_path / "ex.png").write_bytes(_png(Image.fromarray(np.zeros((8, 8, 3), np.uint8))))
    settings = jobs.Settings(workflow=workflow.load_workflow("pbe_one_node_edit"), out_dir=tmp_path / "out")
    return jobs.Job("photo", tmp_path / "photo.jpg", tmp_path / "photo_mask.png", [tmp_path / "ex.png"]), settings


def test_rotated_jpeg_is_refused_for_its_rotation_not_its_size(tmp_path):
    """A phone photo stored 60x40 with EXIF 'rotate 90' and a mask painted on the upright 40x60 view: the sizes differ
    because of the rotation, so the advice is to save the photo upright, not to resize the mask."""
    job, settings = _job(tmp_path, _jpeg(60, 40, orientation=6), mask_wh=(40, 60))
    client = RecordingClient()
    with pytest.raises(api.ClientError, match="EXIF orientation 6.*save the photo upright") as e:
        jobs.prepare(client, job, settings)
    assert "resize" not in str(e.value) and "make the mask" not in str(e.value)
    assert client.uploads == []


def test_broken_source_or_exemplar_is_refused_before_any_upload(tmp_path):
    whole = _jpeg(60, 40)
    job, settings = _job(tmp_path, whole[: len(whole) // 2])
    client = RecordingClient()
    with pytest.raises(api.ClientError, match=r"the source '.*photo\.jpg' cannot be read as an image: it is truncated"):
        jobs.prepare(client, job, settings)
    assert client.uploads == []
    job, settings = _job(tmp_path, whole)
    job.exemplars[0].write_bytes(job.exemplars[0].read_bytes()[:30])
    with pytest.raises(api.ClientError, match=r"the exemplar '.*ex\.png' cannot be read as an image"):
        jobs.prepare(client, job, settings)
    assert client.uploads == []
    job.exemplars[0].write_bytes(_png(Image.fromarray(np.zeros((8, 8, 3), np.uint8))))
    jobs.prepare(client, job, settings)  # whole files: uploaded
    assert [k for k, _ in client.uploads] == ["image", "mask", "image"]


def test_websocket_reads_text_binary_fragments_and_answers_pings():
    big = json.dumps({"type": "progress", "data": {"value": 1, "pad": "x" * 70000}}).encode()
    frames = [
        _frame(0x9, b"hi"),  # ping: answered with a masked pong
        _frame(0x1, b'{"type": "status"}'),
        _frame(0x2, b"\x00\x00\x00\x01jpeg"),
        _frame(0x1, b'{"type": "exe', fin=False) + _frame(0x0, b'cuting"}'),
        _frame(0x1, big),
        _frame(0x8, b""),
    ]
    port, thread, got = _serve_once(frames)
    ws = WebSocket(f"ws://127.0.0.1:{port}/ws?clientId=abc", timeout=5)
    assert ws.recv() == '{"type": "status"}'
    assert ws.recv() == b"\x00\x00\x00\x01jpeg"
    assert ws.recv() == '{"type": "executing"}'
    assert ws.recv() == big.decode()
    with pytest.raises(ConnectionError):
        ws.recv()
    thread.join(10)
    sent = got["data"]
    assert sent[0] == 0x8A and sent[1] == 0x80 | 2  # pong, masked, 2 bytes
    mask = sent[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(sent[6:8])) == b"hi"


def test_websocket_timeout_in_the_middle_of_a_message_loses_nothing():
    """The client waits on /ws with short timeouts: one that falls inside a frame, or between the fragments of a
    message, must leave the stream where it was."""
    first = _frame(0x1, b'{"type": "progress", "data": {"value": 1}}')
    second = _frame(0x1, b'{"type": "exe', fin=False) + _frame(0x0, b'cuting"}')
    cut = len(second) - 5
    port, thread, _ = _serve_once([first[:3], 0.6, first[3:], second[:4], 0.6, second[4:cut], 0.6, second[cut:]])
    ws = WebSocket(f"ws://127.0.0.1:{port}/ws", timeout=5)
    ws.settimeout(0.2)
    got, timeouts = [], 0
    while len(got) < 2:
        try:
            got.append(ws.recv())
        except socket.timeout:
            timeouts += 1
    assert got == ['{"type": "progress", "data": {"value": 1}}', '{"type": "executing"}']
    assert timeouts >= 3  # each pause fell inside a message
    ws.close()
    thread.join(10)


# --- prompts and rows ---------------------------------------------------------------------------------------------------
def test_overrides_reach_every_node_that_has_the_input():
    prompt = workflow.load_workflow("pbe_modular_graph")
    settings = jobs.Settings(
        workflow=prompt, out_dir=None, model="x.safetensors",
        values={"steps": 3, "cfg": 2.5, "sampler": "euler"}, sets=[("Paste back", "x", 4)],
    )
    out = workflow.apply_settings(prompt, settings, seed=9)
    ks = next(n for n in out.values() if n["class_type"] == "KSampler")["inputs"]
    assert (ks["steps"], ks["cfg"], ks["sampler_name"], ks["seed"]) == (3, 2.5, "euler", 9)
    assert next(n for n in out.values() if n["class_type"] == "PBE_LoadModel")["inputs"]["model_name"] == "x.safetensors"
    assert next(n for n in out.values() if n["_meta"]["title"] == "Paste back")["inputs"]["x"] == 4
    assert prompt != out  # the workflow itself is untouched
    with pytest.raises(api.ClientError, match="no node with that id or title"):
        workflow.apply_settings(prompt, jobs.Settings(workflow=prompt, out_dir=None, sets=[("Nope", "x", 1)]))
    one = workflow.load_workflow("pbe_one_node_edit")
    with pytest.raises(api.ClientError, match="scheduler"):
        workflow.apply_settings({"1": one["2"]}, jobs.Settings(workflow=one, out_dir=None, values={"scheduler": "x"}))


def test_exemplar_slots_in_order():
    assert len(workflow.exemplar_slots(workflow.load_workflow("pbe_several_exemplars"))) == 3
    assert len(workflow.exemplar_slots(workflow.load_workflow("pbe_one_node_edit"))) == 1


def test_load_workflow_refuses_ui_format_and_unknown_names(tmp_path):
    from workflow_schema import ui_workflows

    with pytest.raises(api.ClientError, match="UI workflow"):
        workflow.load_workflow(str(ui_workflows()["pbe_one_node_edit"]))
    with pytest.raises(api.ClientError, match="pbe_one_node_edit"):
        workflow.load_workflow("nonexistent")


def test_csv_rows(tmp_path):
    (tmp_path / "rows.csv").write_text(
        "source,mask,exemplar,seed\n"
        "a.png,a_mask.png,e.png,5\n"
        "# a comment\n"
        "b.png,b_mask.png,e.png\n"
        "c.png,,e.png\n"
        "d.png,d_mask.png,e.png,x\n"
    )
    rows = jobs.jobs_from_csv(tmp_path / "rows.csv")
    assert rows[0] == jobs.Job("001_a", tmp_path / "a.png", tmp_path / "a_mask.png", [tmp_path / "e.png"], 5)
    assert rows[1].seed is None
    assert rows[2][0] == "003_c" and "needs source, mask, exemplar" in rows[2][1]
    assert "not an integer" in rows[3][1]


def test_folder_rows(tmp_path):
    for name in ("a.png", "a_mask.png", "a_exemplar.jpg", "b.jpg", "b_mask.png", "c.png", "shared.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    rows = jobs.jobs_from_folder(tmp_path, tmp_path / "shared.png")
    assert [r.name if isinstance(r, jobs.Job) else r for r in rows] == [
        "a", "b", ("c", "no mask: expected c_mask.png")
    ]
    assert rows[0].exemplars == [tmp_path / "a_exemplar.jpg"] and rows[1].exemplars == [tmp_path / "shared.png"]


def test_server_messages_are_relayed():
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""},
        "node_errors": {"1": {"class_type": "PBE_LoadModel", "errors": [
            {"message": "Value not in list", "details": "model_name: 'x.ckpt' not in []"}]}},
    }
    msg = api.rejection_message(body)
    assert msg == ("Prompt outputs failed validation; PBE_LoadModel (node 1): Value not in list: "
                   "model_name: 'x.ckpt' not in []")
    entry = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {}],
        ["execution_error", {"node_id": "4", "node_type": "PBE_Sampler", "exception_type": "ValueError",
                             "exception_message": "Mask is empty"}]]}}
    assert api.history_error(entry) == "PBE_Sampler (node 4): ValueError: Mask is empty"
    assert api.history_error({"status": {"status_str": "success", "messages": []}}) is None


def test_a_validation_answer_repeated_per_input_is_reported_once():
    """ComfyUI repeats a validate_inputs answer for every input the function takes (here 3, as a **kwargs function
    would for 21); the client says it once and names the inputs."""
    answer = "working_size=13 must be 0 (edit the whole image) or a multiple of 8; use 16."
    errors = [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
               "details": f"{name} - {answer}", "extra_info": {"input_name": name}}
              for name in ("seed", "steps", "working_size")]  # fmt: skip
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "\n".join(f"{e['message']}: {e['details']}" for e in errors)},
            "node_errors": {"4": {"class_type": "PBE_Sampler", "errors": errors}}}  # fmt: skip
    msg = api.rejection_message(body)
    assert msg.count(answer) == 1, msg
    assert msg == (f"Prompt outputs failed validation; PBE_Sampler (node 4): Custom validation failed for node: "
                   f"{answer} [seed, steps, working_size]")


def test_client_imports_neither_torch_nor_comfy():
    code = (
        "import importlib, pkgutil, sys, pbe_core.client as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('pbe_core.client.' + m.name)\n"
        "print([m for m in ('torch', 'comfy', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=workflow.PACK_DIR).stdout
    assert out.strip() == "[]"


def test_help_runs():
    r = subprocess.run([sys.executable, "-m", "pbe_core.client", "batch", "--help"], capture_output=True, text=True,
                       cwd=workflow.PACK_DIR)
    assert r.returncode == 0 and "--exemplar" in r.stdout and "--server" in r.stdout and "--timeout" in r.stdout
