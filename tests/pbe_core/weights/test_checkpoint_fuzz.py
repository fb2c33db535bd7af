"""Fuzzing the loader with mutated copies of the tiny fixture model: only the pack's own CheckpointError,
no other exception, no crash, no hang.

Three kinds of damage, each drawn by hypothesis:

* safetensors whose header stays *valid* (offsets still cover the data) but describes other tensors: reshaped,
  retyped to another dtype of the same width, renamed, renumbered (huge block indices), so the damage reaches the
  pack's own checks rather than stopping at safetensors' parser;
* raw byte damage (flips, insertions, deletions, truncation) where the structure lives: the safetensors header, the
  torch zip's local headers, pickle and central directory;
* diffusers folders with a broken ``config.json``/``model_index.json``, a missing file, or a damaged component.

Every file goes through ``load_checkpoint`` and, when that succeeds, through building the exemplar encoder (the
part of the model the pack builds itself). A watchdog turns a hang into a failure; a crash of the interpreter fails
the run. Bounded for CI (about half a minute on 2 cores); ``PBE_FUZZ_EXAMPLES=2000`` runs a longer, random campaign.
"""

import io
import json
import os
import shutil
import signal
import struct
import zipfile
from contextlib import contextmanager

import mutations
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbe_core.exemplar.encoder import ExemplarEncoder
from pbe_core.weights.checkpoint import CheckpointError, load_checkpoint

EXAMPLES = int(os.environ.get("PBE_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    max_examples=EXAMPLES or 60,
    deadline=None,  # the watchdog below bounds each example; load time varies with the machine's load
    derandomize=EXAMPLES is None,  # CI: the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
#: seconds one load may take before it counts as a hang (a normal load of the tiny model takes well under 1 s)
HANG = 30


@contextmanager
def watchdog(seconds=HANG):
    def fire(signum, frame):
        raise TimeoutError(f"the loader hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def load_or_refuse(path) -> str:
    """'ok' or 'refused'; anything else (another exception, a hang) fails the test."""
    with watchdog():
        try:
            ckpt = load_checkpoint(path)
            ExemplarEncoder.from_checkpoint(ckpt)
        except CheckpointError as e:
            assert str(e), "an empty message"
            return "refused"
    return "ok"


# --- safetensors with a valid, lying header -----------------------------------------------------------------------
@st.composite
def header_damage(draw, keys):
    key = draw(st.sampled_from(keys))
    op = draw(st.sampled_from(mutations.HEADER_OPS))
    return op, key, draw(st.integers(0, 2**16)), draw(st.sampled_from(keys))


@pytest.fixture(scope="module")
def st_model(fixture_paths):
    return fixture_paths["original-fp16.safetensors"].read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_safetensors_header(tmp_path, st_model, data):
    header, body = mutations.split_header(st_model)
    keys = sorted(k for k in header if k != "__metadata__")
    damage = data.draw(st.lists(header_damage(keys), min_size=1, max_size=3))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(mutations.join_header(mutations.apply_header_damage(header, damage), body))
    load_or_refuse(path)


# --- raw bytes where the structure is -----------------------------------------------------------------------------------
def _structure_spans(data: bytes, kind: str):
    """(start, end) byte ranges that hold structure rather than tensor data."""
    if kind == "safetensors":
        return [(0, 8 + struct.unpack("<Q", data[:8])[0])]
    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            h = info.header_offset
            spans.append((h, h + 30 + len(info.filename) + 64))  # local header (+ a little of what follows)
            if info.filename.endswith(("data.pkl", "byteorder", "version")):
                spans.append((h, h + 30 + len(info.filename) + info.file_size + 64))
    eocd = data.rfind(b"PK\x05\x06")
    central = struct.unpack("<I", data[eocd + 16 : eocd + 20])[0]
    spans.append((central, len(data)))
    return spans


@st.composite
def byte_damage(draw, spans, size):
    start, end = draw(st.sampled_from(spans))
    at = draw(st.integers(start, min(end, size) - 1))
    op = draw(st.sampled_from(mutations.BYTE_OPS))
    return op, at, draw(st.integers(1, 255)), draw(st.binary(min_size=1, max_size=8))


@pytest.fixture(scope="module")
def zip_model(fixture_paths):
    return fixture_paths["original.ckpt"].read_bytes()


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["safetensors", "torch zip"]))
def test_fuzz_structure_bytes(tmp_path, st_model, zip_model, data, kind):
    src = st_model if kind == "safetensors" else zip_model
    spans = _structure_spans(src, kind)
    damage = data.draw(st.lists(byte_damage(spans, len(src)), min_size=1, max_size=3))
    path = tmp_path / ("fuzz.safetensors" if kind == "safetensors" else "fuzz.ckpt")
    path.write_bytes(mutations.apply_byte_damage(src, damage))
    load_or_refuse(path)


# --- diffusers folders -------------------------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def folder_model(fixture_paths):
    return fixture_paths["diffusers-hub"]


@FUZZ
@given(
    what=st.sampled_from(["heads", "config", "index", "remove", "component"]),
    value=JSON_VALUES,
    pick=st.integers(0, 2**16),
    data=st.data(),
)
def test_fuzz_diffusers_folder(tmp_path, folder_model, what, value, pick, data):
    folder = tmp_path / "pbe"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(folder_model, folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if what == "heads":
        cfg = folder / "image_encoder" / "config.json"
        c = json.loads(cfg.read_text())
        c["num_attention_heads"] = value
        cfg.write_text(json.dumps(c))
    elif what == "config":
        target = [p for p in files if p.suffix == ".json"][pick % 6]
        target.write_text(json.dumps(value) if pick % 2 else "{not json")
    elif what == "index":
        (folder / "model_index.json").write_bytes(data.draw(st.binary(max_size=64)))
    elif what == "remove":
        files[pick % len(files)].unlink()
    elif what == "component":
        target = [p for p in files if p.suffix == ".safetensors"][pick % 3]
        header, body = mutations.split_header(target.read_bytes())
        keys = sorted(k for k in header if k != "__metadata__")
        damage = data.draw(st.lists(header_damage(keys), min_size=1, max_size=2))
        target.write_bytes(mutations.join_header(mutations.apply_header_damage(header, damage), body))
    load_or_refuse(folder)
