"""pbe_core.weights.safe_torch_load: round trips, laziness, malicious pickles, refusals, fuzzing.

Nothing here calls ``torch.load`` on a malicious file in this process; the one test that proves the
malicious fixtures really run code does so in a subprocess inside ``tmp_path``.
"""

import collections
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning_pickle import (
    MODEL_CHECKPOINT,
    FakeCall,
    FakeGlobal,
    FakeStorage,
    save_lightning_checkpoint,
    save_malicious_checkpoint,
    save_with_fakes,
)
from mutations import apply_byte_damage

from pbe_core.weights import safe_torch_load as stl
from pbe_core.weights.safe_torch_load import CheckpointError, LazyTensor, Placeholder, load_state_dict, read_torch_zip

TRAINABLE = ["unet.w", "unet.w_t", "fp16", "param"]


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    return {
        "unet.w": base,
        "unet.w_t": base.t(),  # shares base's storage, non-contiguous
        "unet.rows": base[2:5],  # shares it too, storage offset 16
        "unet.cols": base[:, 1::3],  # offset 1, stride (8, 3)
        "fp16": torch.randn(3, 5, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "int64": torch.arange(-5, 5),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.randn(4, generator=g)),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    sd = _state_dict()
    paths = {name: root / name for name in ("slim.ckpt", "training.ckpt", "diffusers.bin")}
    save_lightning_checkpoint(paths["slim.ckpt"], sd, training=False)
    save_lightning_checkpoint(paths["training.ckpt"], sd, optimizer_param_names=TRAINABLE, training=True)
    torch.save(sd, paths["diffusers.bin"])
    return paths


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _data_pkl(path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _rezip(src, dst, *, replace=None, drop=(), compress=()) -> None:
    """Copy a torch zip record by record (suffix match on names), optionally changing some."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            short = name.split("/", 1)[1]
            if short in drop:
                continue
            method = zipfile.ZIP_DEFLATED if short in compress else zipfile.ZIP_STORED
            zout.writestr(name, replace.get(short, zin.read(name)), compress_type=method)


# --- round trips ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["slim.ckpt", "training.ckpt", "diffusers.bin"])
def test_round_trip_is_bit_identical(files, name):
    ref = _state_dict()
    out = load_state_dict(files[name])
    assert list(out) == list(ref)
    for k, r in ref.items():
        t = out[k]
        assert type(t) is torch.Tensor and t.dtype == r.dtype and t.shape == r.shape, k
        assert t.stride() == r.stride() and t.storage_offset() == r.storage_offset(), k
        assert torch.equal(_bits(t), _bits(r)), k
    ptr = out["unet.w"].untyped_storage().data_ptr()
    assert {out[k].untyped_storage().data_ptr() for k in ("unet.w_t", "unet.rows", "unet.cols")} == {ptr}
    assert out["unet.rows"].storage_offset() == 16 and out["unet.cols"].stride() == (8, 3)


def test_module_state_dict_with_metadata(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ref = module.state_dict()  # an OrderedDict with _metadata, which pickles as BUILD
    save_lightning_checkpoint(tmp_path / "m.ckpt", ref, training=False)
    assert any(op.name == "BUILD" for op, _, _ in pickletools.genops(_data_pkl(tmp_path / "m.ckpt")))
    out = load_state_dict(tmp_path / "m.ckpt")
    assert list(out) == list(ref) and all(torch.equal(out[k], ref[k]) for k in ref)
    assert out["1.num_batches_tracked"].dtype == torch.int64 and out["1.num_batches_tracked"].dim() == 0


def test_key_selection(files):
    assert list(load_state_dict(files["diffusers.bin"], key=None)) == list(_state_dict())
    assert list(load_state_dict(files["slim.ckpt"], key="state_dict")) == list(_state_dict())
    with pytest.raises(CheckpointError, match=r"entry 'nope' is not a dict of tensors .*'epoch'"):
        load_state_dict(files["slim.ckpt"], key="nope")
    with pytest.raises(CheckpointError, match=r"entry 'epoch' is not a dict"):
        load_state_dict(files["slim.ckpt"], key="epoch")


def test_writes_to_loaded_tensors_never_reach_the_file(files, tmp_path):
    p = tmp_path / "copy.ckpt"
    p.write_bytes(files["slim.ckpt"].read_bytes())
    load_state_dict(p)["unet.w"].fill_(7.0)
    assert torch.equal(load_state_dict(p)["unet.w"], _state_dict()["unet.w"])
    assert p.read_bytes() == files["slim.ckpt"].read_bytes()


# --- the Lightning training checkpoint -------------------------------------------------------------------------------
def test_fixture_names_what_the_real_checkpoint_names(files):
    ops = list(pickletools.genops(_data_pkl(files["training.ckpt"])))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    names = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    expected = {MODEL_CHECKPOINT.replace(".ModelCheckpoint", " ModelCheckpoint"), "numpy.core.multiarray scalar"}
    assert expected | {"numpy dtype", "_codecs encode", "collections OrderedDict"} <= names
    with pytest.raises(pickle.UnpicklingError):  # safe: torch's own restricted unpickler, on our own file
        torch.load(files["training.ckpt"], weights_only=True)


def test_training_checkpoint_materialises_only_the_state_dict(files, monkeypatch):
    tree = read_torch_zip(files["training.ckpt"])
    assert list(tree) == [
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "callbacks",
        "optimizer_states",
        "lr_schedulers",
    ]
    moments = [v for s in tree["optimizer_states"][0]["state"].values() for k, v in s.items() if k != "step"]
    assert len(moments) == 2 * len(TRAINABLE) and all(isinstance(m, LazyTensor) for m in moments)
    optimizer_keys = {m.storage_key for m in moments}
    assert optimizer_keys.isdisjoint({t.storage_key for t in tree["state_dict"].values()})

    materialised = []
    real = LazyTensor.materialize
    monkeypatch.setattr(LazyTensor, "materialize", lambda self: materialised.append(self.storage_key) or real(self))
    modules = set(sys.modules)
    out = load_state_dict(files["training.ckpt"])
    assert list(out) == list(_state_dict()) and len(materialised) == len(out)
    assert optimizer_keys.isdisjoint(materialised)
    new = set(sys.modules) - modules
    assert (
        not [m for m in new if m.startswith(("pytorch_lightning", "numpy"))] and "pytorch_lightning" not in sys.modules
    )


def test_placeholders_record_the_lightning_and_numpy_objects(files):
    tree = read_torch_zip(files["training.ckpt"])
    ((callback_class, callback_state),) = tree["callbacks"].items()
    assert issubclass(callback_class, Placeholder) and callback_class.pickled_name == MODEL_CHECKPOINT
    score = callback_state["current_score"]
    assert isinstance(score, Placeholder) and type(score).pickled_name == "numpy.core.multiarray.scalar"
    dtype, raw = score.args
    assert type(dtype).pickled_name == "numpy.dtype" and dtype.args == ("f8", False, True)
    assert dtype.state == (3, "<", None, None, None, -1, -1, 0) and struct.unpack("<d", raw) == (0.1234,)
    assert callback_state["dirpath"] == "/logs/checkpoints" and callback_state["best_model_score"] is None
    group = tree["optimizer_states"][0]["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and group["params"] == list(range(len(TRAINABLE)))
    assert tree["lr_schedulers"][0]["lr_lambdas"] == [None]
    state0 = tree["optimizer_states"][0]["state"][0]
    ref = _state_dict()["unet.w"]
    assert state0["step"] == 1234 and state0["exp_avg"].shape == ref.shape and state0["exp_avg"].dtype == torch.float32
    assert state0["exp_avg_sq"].nbytes == ref.numel() * 4
    assert torch.all(state0["exp_avg_sq"].materialize() > 0)


def test_writer_imports_nothing(tmp_path):
    modules = set(sys.modules)
    save_lightning_checkpoint(tmp_path / "t.ckpt", {"w": torch.ones(2)}, training=True)
    assert not [m for m in set(sys.modules) - modules if m.startswith(("pytorch_lightning", "numpy"))]


# --- malicious pickles --------------------------------------------------------------------------------------------
MALICIOUS = [(where, via) for where in ("top", "state_dict", "tensor") for via in ("exec", "system")]


@pytest.mark.parametrize("where, via", MALICIOUS)
def test_malicious_pickle_never_runs(tmp_path, where, via):
    path, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    save_malicious_checkpoint(path, marker, where=where, via=via)
    name = "builtins.exec" if via == "exec" else "os.system"
    if where == "state_dict":
        with pytest.raises(CheckpointError, match=f"state dict entry 'evil' is {name}, not a tensor"):
            load_state_dict(path)
    else:
        out = load_state_dict(path)
        assert set(out) == {"weight", "bias"} and torch.equal(out["bias"], torch.ones(2))
        weight = torch.arange(6.0).reshape(2, 3)
        assert torch.equal(out["weight"], weight if where == "top" else _bits(weight))  # "tensor": its uint8 bytes
    tree = read_torch_zip(path)
    payload = {"top": tree.get("hyper_parameters"), "state_dict": tree["state_dict"].get("evil")}.get(where)
    if payload is not None:
        assert type(payload).pickled_name == name and "pwned" in payload.args[0]
    assert not marker.exists()


def test_malicious_fixtures_really_run_code_under_plain_torch_load(tmp_path):
    paths = []
    for where, via in MALICIOUS:
        paths.append(tmp_path / f"{where}-{via}.ckpt")
        save_malicious_checkpoint(paths[-1], tmp_path / f"marker-{where}-{via}", where=where, via=via)
    code = "import sys, torch\nfor p in sys.argv[1:]:\n    torch.load(p, weights_only=False)\n"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code, *map(str, paths)], cwd=tmp_path, env=env, check=True, timeout=120)
    assert all((tmp_path / f"marker-{where}-{via}").exists() for where, via in MALICIOUS)


def test_dangerous_names_become_placeholders_and_are_never_called(tmp_path):
    marker = tmp_path / "pwned"
    names = [
        "posix.system",
        "nt.system",
        "subprocess.Popen",
        "builtins.eval",
        "__builtin__.eval",
        "runpy._run_code",
        "importlib.import_module",
        "builtins.__import__",
        "builtins.getattr",
        "torch.load",
    ]
    obj = {"state_dict": {"w": torch.ones(1)}, "x": [FakeCall(FakeGlobal(n), (f"touch {marker}",)) for n in names]}
    save_with_fakes(tmp_path / "evil.ckpt", obj)
    tree = read_torch_zip(tmp_path / "evil.ckpt")
    assert [type(p).pickled_name for p in tree["x"]] == names and all(p.args == (f"touch {marker}",) for p in tree["x"])
    assert list(load_state_dict(tmp_path / "evil.ckpt")) == ["w"] and not marker.exists()


# --- refusals -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(range(256)) * 16, r"not a PyTorch zip checkpoint \(it starts with"),
        (b"\n<!DOCTYPE html><html><body>404 Not Found</body></html>", r"HTML page: probably a failed download.*again"),
        (b"", r"is empty \(0 bytes\).*download the file again"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (struct.pack("<Q", 2) + b"{}", r"\.safetensors file"),
    ],
)
def test_refuses_what_is_not_a_torch_zip(tmp_path, content, message):
    p = tmp_path / "model.ckpt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as e:
        load_state_dict(p)
    assert str(p) in str(e.value) and not stl.is_torch_zip(p)


def test_refuses_the_legacy_format(tmp_path):
    p = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy \(pre-1\.6\).*re-save it with a current torch.*safetensors"):
        load_state_dict(p)


def test_refuses_truncated_zips(tmp_path, files):
    data = files["slim.ckpt"].read_bytes()
    assert stl.is_torch_zip(files["slim.ckpt"])
    for cut in (4, 100, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 22, len(data) - 1):
        p = tmp_path / f"cut{cut}.ckpt"
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or damaged zip.*download it again"):
            load_state_dict(p)
        assert stl.is_torch_zip(p) == (cut >= 30 + len("slim/data.pkl"))  # still routed to load_state_dict


@pytest.mark.parametrize("record", ["data/0", "data.pkl"])
def test_refuses_compressed_records(tmp_path, files, record):
    p = tmp_path / "deflated.ckpt"
    _rezip(files["slim.ckpt"], p, compress={record})
    with pytest.raises(CheckpointError, match=f"record slim/{record} is compressed"):
        load_state_dict(p)


def test_refuses_zip_archives_that_are_not_checkpoints(tmp_path, files):
    p = tmp_path / "no-pickle.ckpt"
    _rezip(files["slim.ckpt"], p, drop={"data.pkl"})
    with pytest.raises(CheckpointError, match=r"no <folder>/data\.pkl, so not a torch\.save checkpoint"):
        load_state_dict(p)
    assert not stl.is_torch_zip(p)


def test_refuses_missing_storages(tmp_path, files):
    p = tmp_path / "missing.ckpt"
    _rezip(files["slim.ckpt"], p, drop={"data/1"})
    with pytest.raises(CheckpointError, match="refers to storage data/1, which the archive does not contain"):
        load_state_dict(p)
    save_with_fakes(
        p,
        {
            "w": torch.zeros(4),
            "bad": FakeCall(
                FakeGlobal("torch._utils._rebuild_tensor_v2"),
                (FakeStorage("FloatStorage", "99", 4), 0, (4,), (1,), False, collections.OrderedDict()),
            ),
        },
    )
    with pytest.raises(CheckpointError, match="refers to storage data/99"):
        load_state_dict(p)


def _tensor_on_storage_0(path, numel, offset, size, stride, storage_type="FloatStorage"):
    """``{'bad': a tensor described by hand on data/0, 'real': zeros(4) (record data/0, 16 bytes)}``."""
    rebuild = FakeGlobal("torch._utils._rebuild_tensor_v2")
    bad = FakeCall(rebuild, (FakeStorage(storage_type, "0", numel), offset, size, stride, False, {}))
    save_with_fakes(path, {"bad": bad, "real": torch.zeros(4)})


@pytest.mark.parametrize(
    "offset, size, stride",
    [(0, (5,), (1,)), (0, (3,), (2,)), (2, (3,), (1,)), (0, (2, 2), (1, 3)), (0, (1 << 41,), (0,))],
)
def test_refuses_tensors_larger_than_their_storage(tmp_path, offset, size, stride):
    p = tmp_path / "oob.ckpt"
    _tensor_on_storage_0(p, 4, offset, size, stride)
    with pytest.raises(CheckpointError, match=r"needs \d+ bytes but its storage data/0 holds 16"):
        load_state_dict(p)


def test_accepts_a_tensor_that_exactly_fills_its_storage(tmp_path):
    p = tmp_path / "fits.ckpt"
    _tensor_on_storage_0(p, 4, 1, (3,), (1,))
    assert torch.equal(load_state_dict(p)["bad"], torch.zeros(3))
    _tensor_on_storage_0(p, 4, 0, (2, 2), (0, 3))  # stride-0 views (expand) are legal
    assert load_state_dict(p)["bad"].shape == (2, 2)


@pytest.mark.parametrize(
    "numel, size, stride, storage_type, message",
    [
        (5, (4,), (1,), "FloatStorage", r"storage data/0 should hold 5 x torch\.float32 but has 16 bytes"),
        (4, (-1,), (1,), "FloatStorage", "size is -1, not a non-negative integer"),
        (4, (2,), (1, 1), "FloatStorage", r"size \(2,\), stride \(1, 1\)"),
        (4, "ab", (1,), "FloatStorage", "size is 'ab', not a tuple"),
        (4, (2,), (1,), "NoSuchStorage", "malformed storage reference"),
    ],
)
def test_refuses_malformed_tensor_descriptions(tmp_path, numel, size, stride, storage_type, message):
    p = tmp_path / "bad.ckpt"
    _tensor_on_storage_0(p, numel, 0, size, stride, storage_type)
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(p)


def test_refuses_non_tensors_where_tensors_belong(tmp_path):
    p = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1), "n": 3}}, p)
    with pytest.raises(CheckpointError, match="state dict entry 'n' is int, not a tensor"):
        load_state_dict(p)
    torch.save({"epoch": 1, "weights": [torch.ones(1)]}, p)
    with pytest.raises(CheckpointError, match=r"found no state dict \(top level: \['epoch', 'weights'\]\): no dict of named tensors"):
        load_state_dict(p)
    save_with_fakes(p, {"w": FakeCall(FakeGlobal("torch._utils._rebuild_tensor_v2"), ("x", 0, (1,), (1,), False, {}))})
    with pytest.raises(CheckpointError, match="storage is str 'x', not a storage"):
        load_state_dict(p)


def _with_pickle(tmp_path, files, data: bytes):
    p = tmp_path / "crafted.ckpt"
    _rezip(files["slim.ckpt"], p, replace={"data.pkl": data})
    return p


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x02}q\x00)" + b"\x85" * 100_000 + b"K\x01s.", "nests values more than 200 levels deep"),
        (b"\x80\x02Nr\xff\xff\xff\x7f.", "memo entry 2147483647 out of sequence"),
        (b"\x80\x02X\x01\x00\x00\x00xQ.", "unknown persistent id 'x'"),
        (b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01", "not a valid pickle"),
        (b"\x80\x02K\x01K\x02K\x03s.", r"could not be unpickled \(TypeError"),
        (b"\x80\x02cbuiltins\nset\nq\x00h\x00)bN.", "tried to BUILD <allowed builtins.set>"),
        (b"\x80\x02c" + b"m" * 600 + b"\nx\n.", r"names a global 'm+\.\.\.m+\.x' of 602 characters"),
        (
            b"\x80\x02}\x8a\x82" + b"\x01" * 130 + b"K\x01s.",
            r"found no state dict \(top level: \[<int of 1033 bits>\]\)",
        ),
    ],
)
def test_refuses_hostile_pickles(tmp_path, files, data, message):
    with pytest.raises(CheckpointError, match=message):
        load_state_dict(_with_pickle(tmp_path, files, data))


def _chain(make: bytes, attach: bytes, n: int) -> bytes:
    """A pickle that nests ``n`` values through memo references (invisible to a stack-depth count):
    each link makes a value, memoises it (``r`` = LONG_BINPUT), fetches the previous link (``j`` =
    LONG_BINGET) and attaches it; the result is ``[last link]``."""
    ops = [b"\x80\x02" + make + b"r\x00\x00\x00\x00"]
    for i in range(1, n):
        ops.append(make + b"r" + struct.pack("<I", i) + b"j" + struct.pack("<I", i - 1) + attach + b"0")
    return b"".join(ops) + b"]j" + struct.pack("<I", n - 1) + b"a."


@pytest.mark.parametrize("make, attach", [(b"cfoo\nbar\n)R", b"\x85b"), (b"]", b"a")], ids=["BUILD", "APPEND"])
def test_deep_chains_through_the_memo_neither_crash_nor_recurse(tmp_path, files, make, attach):
    p = _with_pickle(tmp_path, files, _chain(make, attach, 50_000))
    with pytest.raises(CheckpointError, match=r"found no state dict \(top level: list\)"):
        load_state_dict(p)
    (last,) = read_torch_zip(p)
    if make != b"]":
        assert repr(last) == "<placeholder foo.bar()>" and type(last.state[0]).pickled_name == "foo.bar"


def test_refuses_a_corrupt_pickle_record_and_big_endian_files(tmp_path, files):
    p = tmp_path / "crc.ckpt"
    data = bytearray(files["slim.ckpt"].read_bytes())
    at = data.index(b"pytorch-lightning_version")
    data[at] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="record data.pkl fails its CRC check"):
        load_state_dict(p)
    _rezip(files["slim.ckpt"], p, replace={"byteorder": b"big"})
    with pytest.raises(CheckpointError, match="written big-endian.*byte-swapping is not implemented"):
        load_state_dict(p)


# --- fuzzing ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("fuzz") / "small.ckpt"
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    save_lightning_checkpoint(p, {"w": w, "w_t": w.t(), "h": torch.ones(2).half()}, training=True)
    return p.read_bytes()


def _mutations(max_pos: int):
    pos = st.integers(0, max_pos - 1)
    return st.lists(
        st.one_of(
            st.tuples(st.just("flip"), pos, st.integers(1, 255)),
            st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=8)),
            st.tuples(st.just("delete"), pos, st.integers(1, 64)),
            st.tuples(st.just("truncate"), pos, st.none()),
        ),
        min_size=1,
        max_size=4,
    )


def _mutate(data: bytes, mutations) -> bytes:
    """(kind, position, arg) edits, arg being the flip mask, the inserted bytes or the deleted length."""
    return apply_byte_damage(
        data,
        [(k, at, arg if k in ("flip", "delete") else 0, arg if k == "insert" else b"") for k, at, arg in mutations],
    )


def _load_or_refuse(path) -> None:
    try:
        out = load_state_dict(path)
    except CheckpointError:
        return
    for t in out.values():
        t.to(torch.float64).sum()  # touch every byte


FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.data())
def test_fuzz_file_bytes(tmp_path, small_ckpt, data):
    p = tmp_path / "fuzz.ckpt"
    p.write_bytes(_mutate(small_ckpt, data.draw(_mutations(len(small_ckpt)))))
    _load_or_refuse(p)


@FUZZ
@given(data=st.data())
def test_fuzz_pickle_bytes(tmp_path, small_ckpt, data):
    """Mutate data.pkl itself and re-zip it with a valid CRC, so the unpickler sees the damage."""
    src = tmp_path / "src.ckpt"
    src.write_bytes(small_ckpt)
    pkl = _data_pkl(src)
    mutated = _mutate(pkl, data.draw(_mutations(len(pkl))))
    p = tmp_path / "fuzz.ckpt"
    _rezip(src, p, replace={"data.pkl": mutated})
    _load_or_refuse(p)


def _u(text: str) -> bytes:
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


_GLOBALS = [
    "collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch._utils _rebuild_tensor",
    "torch._utils _rebuild_tensor_v3", "torch._utils _rebuild_parameter", "torch._tensor _rebuild_from_type_v2",
    "torch FloatStorage", "torch.storage UntypedStorage", "torch float16", "torch Size", "_codecs encode",
    "builtins set", "builtins frozenset", "builtins slice", "builtins complex", "__builtin__ bytes", "os system",
]  # fmt: skip
_SNIPPETS = [b"c" + g.replace(" ", "\n").encode() + b"\n" for g in _GLOBALS] + [
    *(bytes([c]) for c in b"(t)\x85\x86\x87}]suaebR\x81Q0212N\x88\x89\x8f\x90\x91\x92\x94\x93"),
    b"K\x00", b"K\x01", b"K\x04", b"J\xff\xff\xff\xff", b"G?\xf0\x00\x00\x00\x00\x00\x00", b"C\x02ab",
    _u("storage"), _u("0"), _u("1"), _u("cpu"), _u("latin1"), _u("state_dict"), _u("w"),
    b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"ios\nsystem\n", b"o",
]  # fmt: skip


@FUZZ
@given(snippets=st.lists(st.sampled_from(_SNIPPETS), min_size=1, max_size=60))
def test_fuzz_random_opcode_pickles(tmp_path, files, snippets):
    """Pickles assembled from opcodes and allow-listed or dangerous globals: refused or inert."""
    p = _with_pickle(tmp_path, files, b"\x80\x02" + b"".join(snippets) + b".")
    try:
        repr(read_torch_zip(p))
    except CheckpointError:
        pass
    _load_or_refuse(p)


def test_is_torch_zip(files, tmp_path):
    assert all(stl.is_torch_zip(p) for p in files.values())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hi")
    (tmp_path / "other.zip").write_bytes(buf.getvalue())
    assert not stl.is_torch_zip(tmp_path / "other.zip") and not stl.is_torch_zip(tmp_path / "missing.ckpt")
