"""Safe, lazy reader for PyTorch zip checkpoints (``.ckpt``, ``.pt``, ``.pth``, diffusers ``.bin``).

Why (security): ``torch.save`` writes a pickle, and unpickling calls whatever the pickle names. Users
load Paint-by-Example checkpoints downloaded from strangers, so this module never calls ``torch.load``
and never imports or looks up a name taken from a pickle. Its own ``pickle.Unpickler`` subclass maps a
short allow-list (tensor rebuilders, storage types, ``collections.OrderedDict``, a few pure-data
builtins) to implementations written here; every other name (Lightning callbacks, numpy scalars,
``os.system``...) becomes an inert :class:`Placeholder` that records its name and arguments and does
nothing else. ``torch.load(weights_only=True)`` would be safe but refuses the official Lightning
*training* checkpoint, whose pickle names Lightning and numpy classes.

Why (memory): tensors come back as :class:`LazyTensor` descriptors; only those the caller asks for
are built, zero-copy, on a copy-on-write mmap of the file, so a 12.6 GB training checkpoint's 5.2 GB
state dict loads without reading its 7.4 GB of optimizer state.

Facts about the format, from torch's own writer (``torch/serialization.py``): the file is a zip
archive whose records sit under one folder ``<archive>/`` and are stored uncompressed (ZIP_STORED);
``<archive>/data.pkl`` is the pickled object, in which a tensor is
``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])``
(offset, size and stride counted in elements) and a storage is the persistent id
``('storage', torch.<Type>Storage, key, location, numel)`` whose bytes are the record
``<archive>/data/<key>``; ``<archive>/byteorder`` says ``little`` or ``big`` (files without it are read
as little-endian). ``location`` (e.g. ``cuda:0``) is ignored: everything loads on the CPU.
"""

from __future__ import annotations

import io
import logging
import math
import mmap
import os
import pickle
import pickletools
import reprlib
import struct
import sys
import zipfile
import zlib

import torch

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "LazyTensor",
    "Placeholder",
    "check_pickle",
    "is_torch_zip",
    "load_state_dict",
    "read_torch_zip",
]

_MAX_PICKLE_BYTES = 64 << 20  # the 12.6 GB official checkpoint's data.pkl is well under 1 MB
_MAX_DEPTH = 200  # nesting guard: CPython's tuple hash recurses without a limit and segfaults
_MAX_GLOBALS = 10_000  # distinct placeholder classes one pickle may create
_MAX_NUMEL = 1 << 40
_REDOWNLOAD = "the file is damaged, incomplete or tampered with; download it again from a source you trust"
_RESAVE = "re-save it with a current torch in a trusted environment, or convert it to .safetensors"

# torch.<Type>Storage -> element dtype (legacy typed storages still name the tensors' dtype in pickles)
_STORAGES = (
    "Float:float32 Half:float16 BFloat16:bfloat16 Double:float64 Long:int64 Int:int32 Short:int16 Char:int8 "
    "Byte:uint8 Bool:bool ComplexFloat:complex64 ComplexDouble:complex128 Untyped:uint8"
)
_TORCH_NAMES = {
    f"torch.{s}Storage": ("storage", getattr(torch, d)) for s, d in (x.split(":") for x in _STORAGES.split())
}
_TORCH_NAMES["torch.storage.UntypedStorage"] = ("storage", torch.uint8)
_DTYPE_NAMES = (
    "float32 float float16 half bfloat16 float64 double int64 long int32 int int16 short int8 uint8 bool complex64 "
    "cfloat complex128 cdouble uint16 uint32 uint64 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz"
)
_TORCH_NAMES.update({f"torch.{n}": ("dtype", getattr(torch, n)) for n in _DTYPE_NAMES.split() if hasattr(torch, n)})


class CheckpointError(ValueError):
    """A checkpoint was refused. The message names the file, the problem and the fix."""


class _Malformed(CheckpointError):
    """Raised while unpickling, before the file name is known; re-raised as CheckpointError with it."""


class _Repr(reprlib.Repr):
    """Bounded repr for messages: placeholders and dict subclasses recurse through the level limit,
    never through ``__repr__`` (a pickle can nest them deeper than Python's recursion limit)."""

    def repr1(self, x: object, level: int) -> str:
        if isinstance(x, Placeholder):
            return f"<placeholder {type(x).pickled_name}{self.repr1(x.args, level - 1) if level > 0 else '(...)'}>"
        return self.repr_dict(x, level) if isinstance(x, dict) else super().repr1(x, level)

    def repr_int(self, x: int, level: int) -> str:  # repr() refuses ints over 4300 digits
        return super().repr_int(x, level) if x.bit_length() < 256 else f"<int of {x.bit_length()} bits>"


_short = _Repr().repr


def _kind(obj: object) -> str:
    if isinstance(obj, PlaceholderType):
        return f"the class {obj.pickled_name}"
    return type(obj).pickled_name if isinstance(obj, Placeholder) else type(obj).__name__


class _Inert:
    """Base for what this module hands to a pickle: no ``__dict__``, no setattr, no BUILD."""

    __slots__ = ()

    def __init__(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise _Malformed(f"the pickle tried to set {name!r} on {self!r}")

    def __setstate__(self, state: object) -> None:
        raise _Malformed(f"the pickle tried to BUILD {self!r}")


class PlaceholderType(type):
    """Metaclass of the per-name placeholder classes; refuses attribute writes (BUILD on a class)."""

    def __setattr__(cls, name: str, value: object) -> None:
        raise _Malformed(f"the pickle tried to set {name!r} on {cls!r}")

    def __repr__(cls) -> str:
        return f"<placeholder {cls.pickled_name}>"


class Placeholder(metaclass=PlaceholderType):
    """Inert stand-in for a global outside the allow-list, and for what calling it made.

    The class itself (``type(p)``, or the value the pickle used, e.g. a dict key) has ``pickled_name``,
    the dotted name the pickle gave, e.g. ``"numpy.core.multiarray.scalar"``. Instances record
    ``args``/``kwargs`` (REDUCE, NEWOBJ) and ``state`` (BUILD); nothing is imported or run.
    """

    __slots__ = ("args", "kwargs", "state")
    pickled_name = "?"

    def __new__(cls, *args: object, **kwargs: object) -> Placeholder:
        self = object.__new__(cls)
        for name, value in (("args", args), ("kwargs", kwargs), ("state", None)):
            object.__setattr__(self, name, value)
        return self

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setattr__(self, name: str, value: object) -> None:
        raise _Malformed(f"the pickle tried to set {name!r} on {self!r}")

    def __setstate__(self, state: object) -> None:
        object.__setattr__(self, "state", state)

    def __repr__(self) -> str:
        return _short(self)


class _PickledDict(dict):
    """``collections.OrderedDict`` from a pickle: a plain (ordered) dict that keeps BUILD state aside
    (state dicts carry ``_metadata`` that way) instead of in an instance ``__dict__`` that could
    shadow methods."""

    __slots__ = ("state",)

    def __setstate__(self, state: object) -> None:
        self.state = state


class _Callable(_Inert):
    """An allow-listed global: calls one of this module's own functions."""

    __slots__ = ("name", "fn")

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


class _TorchName(_Inert):
    """``torch.<Type>Storage`` (kind ``"storage"``) or ``torch.<dtype>`` (kind ``"dtype"``): a dtype marker,
    never the real torch object (a pickle's BUILD must not be able to reach torch's globals)."""

    __slots__ = ("name", "kind", "dtype")

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _Storage(_Inert):
    """One ``data/<key>`` record: ``numel`` elements of ``dtype`` starting at byte ``start`` of the file."""

    __slots__ = ("archive", "key", "dtype", "numel", "start", "bases")

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def base(self, dtype: torch.dtype) -> torch.Tensor:
        """The record as a 1-D ``dtype`` tensor on the mmap, built once per dtype so views share it."""
        if dtype not in self.bases:
            count = self.nbytes // dtype.itemsize
            t = torch.frombuffer(self.archive.mm, dtype=dtype, count=count, offset=self.start) if count else None
            if t is not None and self.start % dtype.itemsize:
                t = t.clone()  # misaligned (hand-made zip; torch aligns records): copy once
            self.bases[dtype] = t if t is not None else torch.empty(0, dtype=dtype)
        return self.bases[dtype]

    def __repr__(self) -> str:
        return f"<storage data/{self.key}: {self.numel} x {self.dtype}>"


class LazyTensor(_Inert):
    """A tensor described by the pickle but not read yet.

    ``shape`` (torch.Size), ``dtype`` (torch.dtype), ``stride`` and ``storage_offset`` (elements) are
    as saved; ``nbytes`` is ``numel * itemsize``; ``storage_key`` names the ``data/<key>`` record.
    :meth:`materialize` builds the tensor; tensors of one storage share memory.
    """

    __slots__ = ("storage", "dtype", "shape", "stride", "storage_offset", "requires_grad")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def storage_key(self) -> str:
        return self.storage.key

    def materialize(self) -> torch.Tensor:
        """Return a CPU tensor of ``shape``/``dtype``/``stride`` viewing a copy-on-write mmap of the
        file: zero-copy, pages are read when touched, and writes never reach the file.
        ``requires_grad`` is not restored (state-dict semantics)."""
        if math.prod(self.shape) == 0:
            return torch.empty_strided(self.shape, self.stride, dtype=self.dtype)
        base = self.storage.base(self.dtype)
        return torch.as_strided(base, self.shape, self.stride, self.storage_offset)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={tuple(self.shape)}, dtype={self.dtype}, storage=data/{self.storage.key})"


def _int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= 1 << 62:
        raise _Malformed(f"{what} is {_short(value)}, not a non-negative integer")
    return value


def _ints(value: object, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or len(value) > 64:
        raise _Malformed(f"{what} is {_short(value)}, not a tuple of at most 64 integers")
    return tuple(_int(v, what) for v in value)


def _lazy(storage, offset, size, stride, requires_grad=False, metadata=None, dtype=None) -> LazyTensor:
    """Validate one tensor against its storage (never reads out of bounds) and describe it."""
    if not isinstance(storage, _Storage):
        raise _Malformed(f"a tensor's storage is {_kind(storage)} {_short(storage)}, not a storage")
    dtype = storage.dtype if dtype is None else dtype
    offset, size, stride = _int(offset, "storage offset"), _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or type(requires_grad) is not bool:
        raise _Malformed(f"a tensor has size {size}, stride {stride}, requires_grad {_short(requires_grad)}")
    if metadata and (type(metadata) is not _PickledDict and type(metadata) is not dict or any(metadata.values())):
        raise _Malformed(f"a tensor carries metadata {_short(metadata)} (conj/neg bits are not supported)")
    numel = math.prod(size)
    end = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1 if numel else offset
    if numel > _MAX_NUMEL or end * dtype.itemsize > storage.nbytes:
        raise _Malformed(
            f"a tensor of size {size}, stride {stride}, offset {offset} ({dtype}) needs {end * dtype.itemsize} "
            f"bytes but its storage data/{storage.key} holds {storage.nbytes}"
        )
    fields = {"shape": torch.Size(size), "stride": stride, "storage_offset": offset, "requires_grad": requires_grad}
    return LazyTensor(storage=storage, dtype=dtype, **fields)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None) -> LazyTensor:
    if not isinstance(dtype, _TorchName) or dtype.kind != "dtype":
        raise _Malformed(f"a tensor's dtype is {_short(dtype)}")
    return _lazy(storage, offset, size, stride, requires_grad, metadata, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None) -> LazyTensor:
    if not isinstance(data, LazyTensor):
        raise _Malformed(f"a parameter wraps {_kind(data)} {_short(data)}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> object:
    """Tensors with Python attributes: ``func(*args)`` when func is an allowed rebuilder (attrs dropped)."""
    if not (isinstance(func, _Callable) and func.name.startswith("torch._utils._rebuild") and type(args) is tuple):
        raise _Malformed(f"_rebuild_from_type_v2 got {_short(func)}")
    return func(*args)


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: ``str.encode``, latin-1/utf-8 only."""
    if type(text) is not str or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Malformed(f"_codecs.encode{_short((text, encoding))} is not a bytes literal")
    return text.encode(encoding)


def _bytes_like(kind: type, *args: object) -> object:
    if len(args) == 0 or len(args) == 1 and type(args[0]) in (bytes, bytearray):
        return kind(*args)
    return kind(_encode(*args))  # (str, encoding); never an int count, which would allocate


def _complex(real: object = 0, imag: object = 0) -> complex:
    if type(real) not in (int, float) or type(imag) not in (int, float):
        raise _Malformed(f"complex{_short((real, imag))}")
    return complex(real, imag)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None) -> LazyTensor:
    return _lazy(storage, offset, size, stride, requires_grad, metadata)  # hooks: ignored, as torch warns


_FUNCTIONS = {
    "collections.OrderedDict": _PickledDict,
    "torch._utils._rebuild_tensor": lambda storage, offset, size, stride: _lazy(storage, offset, size, stride),
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": lambda size=(): _ints(size, "torch.Size"),
    "_codecs.encode": _encode,
}
_BUILTINS = {"set": set, "frozenset": frozenset, "slice": slice, "complex": _complex}
_BUILTINS.update(bytes=lambda *a: _bytes_like(bytes, *a), bytearray=lambda *a: _bytes_like(bytearray, *a))
_FUNCTIONS.update(
    {f"{m}.{n}": f for m in ("builtins", "__builtin__") for n, f in _BUILTINS.items()}
)  # py2: __builtin__

_INPLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})

#: Modules (and their submodules) whose names a weights file has no reason to mention: under ``torch.load`` calling
#: them runs code, starts processes or reaches files and the network. Used only to *report* a file that names them
#: (this reader never calls anything a pickle names, so this list is not what keeps it safe).
CODE_MODULES = frozenset(
    "os posix nt subprocess sys runpy importlib pkgutil imp shutil socket pty code codeop ctypes pickle _pickle "
    "marshal types operator functools webbrowser multiprocessing asyncio threading _thread signal urllib http "
    "requests ftplib smtplib telnetlib tempfile io _io commands popen2 timeit pdb bdb cProfile profile trace "
    "inspect gc shelve dbm torch.hub torch.package".split()
)
#: builtins that run code or reach the system (``builtins.list`` and friends are harmless data constructors)
_CODE_BUILTINS = frozenset(
    "eval exec compile open __import__ getattr setattr delattr globals locals vars breakpoint input exit quit help "
    "execfile reload file apply".split()
)
#: single names outside those modules that load or run code
CODE_NAMES = frozenset(
    {f"{m}.{n}" for m in ("builtins", "__builtin__") for n in _CODE_BUILTINS}
    | {"torch.load", "torch.jit.load", "torch.serialization.load", "numpy.load", "joblib.load"}
)
_HARMLESS = frozenset({"types.SimpleNamespace"})  # Lightning hyper-parameters


def code_names(names) -> list[str]:
    """The pickled global names among ``names`` that would run code or reach the system when called."""
    out = []
    for name in names:
        parts = name.split(".")
        in_module = any(".".join(parts[:i]) in CODE_MODULES for i in range(1, len(parts)))
        if name in CODE_NAMES or (in_module and name not in _HARMLESS):
            out.append(name)
    return sorted(out)


def _check_pickle(data: bytes) -> None:
    """Dry-run the pickle's stack with ``pickletools.genops`` before the C unpickler sees it.

    Rejects what the real unpickler cannot survive: nesting deeper than ``_MAX_DEPTH`` (hashing a
    deeply nested tuple as a dict key segfaults CPython) and memo indices out of sequence (a huge
    ``LONG_BINPUT`` index makes the C unpickler allocate and zero a memo of that size). Depth is
    tracked conservatively: every value is one deeper than what it was built from.
    """
    stack: list[int | None] = []  # depth of each value; None is a MARK
    memo: dict[int, int] = {}
    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(memo) if name == "MEMOIZE" else arg
                if index > len(memo) or stack[-1] is None:
                    raise _Malformed(f"data.pkl stores memo entry {index} out of sequence at byte {pos}")
                memo[index] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("MARK", "DUP"):
                stack.append(None if name == "MARK" else stack[-1])
            elif name == "POP":
                stack.pop()
            else:
                popped: list[int | None] = []
                below = len(op.stack_before)
                if pickletools.markobject in op.stack_before:
                    while stack[-1] is not None:
                        popped.append(stack.pop())
                    stack.pop()
                    below = op.stack_before.index(pickletools.markobject)
                popped += [stack.pop() for _ in range(below)]
                if None in popped:
                    raise _Malformed(f"data.pkl has a misplaced MARK at byte {pos}")
                if name in _INPLACE:  # the container is the bottom value and stays on the stack
                    depth = max(popped[-1], 1 + max(popped[:-1], default=0))
                else:
                    depth = 1 + max(popped, default=-1)
                if depth > _MAX_DEPTH:
                    raise _Malformed(f"data.pkl nests values more than {_MAX_DEPTH} levels deep")
                stack += [depth] * len(op.stack_after)
    except _Malformed:
        raise
    except Exception as e:  # genops' ValueError, stack underflow, unknown memo key
        raise _Malformed(f"data.pkl is not a valid pickle ({type(e).__name__}: {_short(str(e))})") from None


def check_pickle(data: bytes) -> None:
    """:func:`_check_pickle` for the pack's other restricted unpicklers (the QS model reader,
    :mod:`pbe_core.eval.gmm_pickle`): raises :class:`CheckpointError` for nesting deeper than ``_MAX_DEPTH`` or memo
    entries out of sequence. Its messages call the pickle "data.pkl"."""
    _check_pickle(data)


class _Unpickler(pickle.Unpickler):  # restricted: find_class never imports, see the module docstring
    """Resolves names only from ``_FUNCTIONS``/torch storage and dtype names, else to placeholders."""

    def __init__(self, data: bytes, archive: _Archive) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.archive = archive
        self.placeholders: dict[str, PlaceholderType] = {}
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        dotted = f"{module}.{name}"
        if len(dotted) > 512:
            raise _Malformed(f"data.pkl names a global {_short(dotted)} of {len(dotted)} characters")
        if dotted in _FUNCTIONS:
            return _Callable(name=dotted, fn=_FUNCTIONS[dotted])
        if dotted in _TORCH_NAMES:
            kind, dtype = _TORCH_NAMES[dotted]
            return _TorchName(name=dotted, kind=kind, dtype=dtype)
        if dotted not in self.placeholders:
            if len(self.placeholders) >= _MAX_GLOBALS:
                raise _Malformed(f"data.pkl names more than {_MAX_GLOBALS} different globals")
            ns = {"__slots__": (), "pickled_name": dotted, "__module__": __name__}
            self.placeholders[dotted] = PlaceholderType("Placeholder", (Placeholder,), ns)
        return self.placeholders[dotted]

    def persistent_load(self, pid: object) -> _Storage:
        if type(pid) is not tuple or len(pid) != 5 or type(pid[0]) is not str or pid[0] != "storage":
            raise _Malformed(f"data.pkl has an unknown persistent id {_short(pid)}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _TorchName) or stype.kind != "storage" or type(key) is not str or len(key) > 64:
            raise _Malformed(f"data.pkl has a malformed storage reference {_short(pid)}")
        if type(location) is not str:
            raise _Malformed(f"storage data/{key} has location {_short(location)}")
        numel = _int(numel, f"the element count of storage data/{key}")
        storage = self.storages.get(key)
        if storage is None:
            span = self.archive.span(f"data/{key}")
            if span is None:
                raise _Malformed(f"data.pkl refers to storage data/{key}, which the archive does not contain")
            if numel * stype.dtype.itemsize > span[1]:
                raise _Malformed(f"storage data/{key} should hold {numel} x {stype.dtype} but has {span[1]} bytes")
            storage = _Storage(archive=self.archive, key=key, dtype=stype.dtype, numel=numel, start=span[0], bases={})
            self.storages[key] = storage
        elif (storage.dtype, storage.numel) != (stype.dtype, numel):
            raise _Malformed(f"storage data/{key} is referenced as two different types or sizes")
        return storage


def _not_a_zip(path: str, head: bytes, size: int) -> str:
    """Name what the file is instead, for the refusal message."""
    text = head.lstrip().lower()
    if size == 0:
        return "is empty (0 bytes): the download or copy did not finish; download the file again"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in text:
        return (
            "is not a PyTorch zip checkpoint (found an HTML page: probably a failed download); download the file again"
        )
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the checkpoint; run `git lfs pull` or download the file itself"
    if len(head) > 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < size:
        return "is a .safetensors file, not a torch zip; load it with the safetensors loader"
    if head[:1] == b"\x80" or head[257:262] == b"ustar":
        return f"uses the legacy (pre-1.6) torch.save format, which this safe reader does not read; {_RESAVE}"
    return f"is not a PyTorch zip checkpoint (it starts with {head[:16]!r}); check that it is the right file"


class _Archive:
    """A torch zip file: its record table and a copy-on-write mmap of the whole file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(512)
            if not head.startswith(b"PK\x03\x04"):
                raise CheckpointError(f"{self.path} {_not_a_zip(self.path, head, size)}")
            try:
                with zipfile.ZipFile(f) as zf:
                    infos = zf.infolist()
            except Exception as e:  # BadZipFile, struct.error, UnicodeDecodeError, ...: all mean "damaged"
                raise CheckpointError(
                    f"{self.path} is a truncated or damaged zip archive ({type(e).__name__}: {e}); {_REDOWNLOAD}"
                ) from None
            self.size = size
            self.records = {info.filename: info for info in infos}
            pickles = sorted(n for n in self.records if n.endswith("/data.pkl") and n.count("/") == 1)
            if len(pickles) != 1:
                found = "no" if not pickles else "several"
                raise CheckpointError(
                    f"{self.path} is a zip archive with {found} <folder>/data.pkl, so not a "
                    f"torch.save checkpoint (entries: {_short(sorted(self.records))})"
                )
            self.prefix = pickles[0][: -len("data.pkl")]
            self.spans = {n: self._locate(f, i) for n, i in self.records.items() if n.startswith(self.prefix)}
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def error(self, problem: str, fix: str = _REDOWNLOAD) -> CheckpointError:
        return CheckpointError(f"{self.path}: {problem}; {fix}")

    def _locate(self, f: io.BufferedReader, info: zipfile.ZipInfo) -> tuple[int, int] | tuple[str, str]:
        """(first byte, size) of a record's data, from its local header; else (problem, fix).

        Headers are read through the file, not the mmap: touching each header page of the map would
        add every record's neighbourhood to RSS (the kernel maps pages around a fault)."""
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            fix = "decompress and re-save it with torch.save, or convert it to .safetensors"
            return f"record {info.filename} is compressed; torch never compresses records", fix
        h = info.header_offset
        f.seek(max(h, 0))
        header = f.read(30)
        if h < 0 or len(header) < 30 or header[:4] != b"PK\x03\x04":
            return f"record {info.filename} has no local zip header", _REDOWNLOAD
        start = h + 30 + sum(struct.unpack_from("<HH", header, 26))
        if start + info.file_size > self.size:
            return f"record {info.filename} runs past the end of the file (truncated)", _REDOWNLOAD
        return start, info.file_size

    def span(self, name: str) -> tuple[int, int] | None:
        """(first byte, size) of record ``<archive>/name`` in the file, or None if there is no such record."""
        span = self.spans.get(self.prefix + name)
        if span is not None and type(span[0]) is str:
            raise self.error(*span)
        return span

    def read(self, name: str, limit: int) -> bytes | None:
        span = self.span(name)
        if span is None:
            return None
        if span[1] > limit:
            raise self.error(f"record {name} is {span[1]} bytes, more than the {limit} this reader accepts", _RESAVE)
        data = self.mm[span[0] : span[0] + span[1]]
        crc = self.records[self.prefix + name].CRC
        if crc and zlib.crc32(data) != crc:  # torch can be told to skip CRCs (then 0)
            raise self.error(f"record {name} fails its CRC check")
        return data

    def load(self) -> object:
        order = self.read("byteorder", 16)
        if order not in (None, b"little", b"big"):
            raise self.error(f"its byteorder record says {order!r}")
        if (order or b"little").decode() != sys.byteorder:
            raise self.error(
                f"it was written {(order or b'little').decode()}-endian and this machine is "
                f"{sys.byteorder}-endian; byte-swapping is not implemented",
                "convert it to .safetensors on a machine of its byte order",
            )
        data = self.read("data.pkl", _MAX_PICKLE_BYTES)
        if data is None:
            raise self.error("data.pkl is missing")
        try:
            _check_pickle(data)
            unpickler = _Unpickler(data, self)
            obj = unpickler.load()
        except _Malformed as e:
            raise self.error(str(e)) from None
        except CheckpointError:
            raise
        except Exception as e:  # UnpicklingError, TypeError, MemoryError, ...: the pickle is malformed
            raise self.error(f"data.pkl could not be unpickled ({type(e).__name__}: {_short(str(e))})") from None
        self.pickled_names = tuple(sorted(unpickler.placeholders))
        if unpickler.placeholders:
            log.info(
                "%s names %d globals outside the allow-list, kept as inert placeholders: %s",
                self.path,
                len(unpickler.placeholders),
                ", ".join(sorted(unpickler.placeholders)),
            )
        return obj


def is_torch_zip(path: str | os.PathLike) -> bool:
    """True if ``path`` is what ``torch.save`` writes: a zip archive with one ``<folder>/data.pkl``.

    A truncated download of one also counts (its first local header names ``<folder>/data.pkl``), so a
    caller that dispatches on this sends it to :func:`load_state_dict`, which says what is wrong.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(30 + 256)
        name_len = struct.unpack_from("<H", head, 26)[0] if len(head) >= 30 else 0
        name = head[30 : 30 + name_len]
        if head.startswith(b"PK\x03\x04") and name.endswith(b"/data.pkl") and name.count(b"/") == 1:
            return True
        _Archive(path)
    except (CheckpointError, OSError):
        return False
    return True


def read_torch_zip(path: str | os.PathLike) -> object:
    """Unpickle ``path`` safely and lazily; no tensor data is read.

    Returns the saved object tree: dicts (``OrderedDict`` comes back as a dict subclass), lists,
    tuples, scalars, :class:`LazyTensor` for each tensor and :class:`Placeholder` for anything built
    from a name outside the allow-list. Raises :class:`CheckpointError` for anything malformed.
    """
    return _Archive(path).load()


#: how deep below the top level :func:`load_state_dict` looks for the state dict (Lightning: 1; wrappers such as
#: ``{"model": {"state_dict": ...}}`` or ``{"module": ...}``: 2-3)
STATE_DICT_SEARCH_DEPTH = 4


def _tensor_dicts(top: object, max_depth: int = STATE_DICT_SEARCH_DEPTH) -> list[tuple[tuple[str, ...], dict]]:
    """``(path, dict)`` of every non-empty dict whose keys are all strings and values all tensors, at most
    ``max_depth`` levels below ``top`` (``path`` = the entry names leading to it; ``()`` = ``top`` itself)."""
    found = []
    level: list[tuple[tuple[str, ...], object]] = [((), top)]
    for _ in range(max_depth + 1):
        below = []
        for path, obj in level:
            if not isinstance(obj, dict) or not obj:
                continue
            items = list(dict.items(obj))
            if all(type(k) is str and isinstance(v, LazyTensor) for k, v in items):
                found.append((path, obj))
                continue
            below += [((*path, k), v) for k, v in items if type(k) is str and isinstance(v, dict)]
        level = below
    return found


def _entry_name(path: tuple[str, ...]) -> str:
    return "/".join(path) or "<top level>"


def load_state_dict(
    path: str | os.PathLike, *, key: str | tuple[str, ...] | None = "auto", refuse_code: bool = False,
    score=len,
) -> dict[str, torch.Tensor]:
    """Load only the state dict of a torch zip checkpoint, as CPU tensors on a copy-on-write mmap.

    ``key="auto"`` takes the top-level ``"state_dict"`` entry if there is one (Lightning checkpoints), else the
    top-level dict itself if every value is a tensor (diffusers ``.bin``), else the dict of tensors found below the
    top level (up to :data:`STATE_DICT_SEARCH_DEPTH` levels: files re-saved by other tools wrap it, e.g.
    ``{"model": {...}}``) with the highest ``score(names)`` (default: the most tensors; the Paint-by-Example loader
    counts its own key names); two with the same score are refused with both names. ``key=None`` takes the top-level
    dict; a string takes that top-level entry, a tuple of strings the entry at that path, and ``"a/b"`` is
    ``("a", "b")``. Only that dict's tensors are materialised (dtype, shape, stride and storage sharing as saved);
    optimizer state, callbacks etc. stay unread. Returns ``{name: tensor}`` in file order; raises
    :class:`CheckpointError`.

    ``refuse_code``: also refuse a file whose pickle names anything that would run code under ``torch.load``
    (:func:`code_names`), wherever in the file: nothing was run here, but such a file is malicious or tampered with,
    and its tensors are not to be trusted either.
    """
    archive = _Archive(path)
    top = archive.load()
    bad = code_names(archive.pickled_names) if refuse_code else []
    if bad:
        raise CheckpointError(
            f"{archive.path} is unsafe: its pickle names {', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}, which would run code on your machine if the file "
            f"were opened with torch.load. Nothing in it was run. Delete the file and get the model from a source "
            f"you trust (a .safetensors file cannot carry code)"
        )
    keys = _short(list(top)) if isinstance(top, dict) else _kind(top)
    if isinstance(key, str) and key != "auto":
        key = tuple(key.split("/"))
    if key == "auto":
        if isinstance(top, dict) and isinstance(dict.get(top, "state_dict"), dict):
            key = ("state_dict",)
        else:
            found = sorted(_tensor_dicts(top), key=lambda pd: score(list(pd[1])), reverse=True)
            if not found:
                raise archive.error(
                    f"found no state dict (top level: {keys}): no dict of named tensors there or up to "
                    f"{STATE_DICT_SEARCH_DEPTH} levels below it",
                    "it is not a model checkpoint this loader reads (a whole pickled model object, for instance); "
                    "save the model's state_dict() with torch.save or safetensors",
                )
            if len(found) > 1 and score(list(found[0][1])) == score(list(found[1][1])):
                a, b = _entry_name(found[0][0]), _entry_name(found[1][0])
                raise archive.error(
                    f"holds several state dicts that could be the model's: {a!r} and {b!r}",
                    f"convert the one you mean into its own file, e.g. python -m pbe_core.convert {archive.path} "
                    f"model.safetensors --key {a}",
                )
            key = found[0][0]
            if key:
                log.info("%s: the state dict is the entry %r", archive.path, _entry_name(key))
    sd: object = top
    for part in key or ():
        sd = dict.get(sd, part) if isinstance(sd, dict) and type(part) is str else None
    if not isinstance(sd, dict):
        raise archive.error(
            f"entry {_entry_name(tuple(key or ()))!r} is not a dict of tensors (top level: {keys})",
            "name another entry (--key of python -m pbe_core.convert)",
        )
    out: dict[str, torch.Tensor] = {}
    for name, value in dict.items(sd):
        if type(name) is not str or not isinstance(value, LazyTensor):
            raise archive.error(
                f"state dict entry {_short(name)} is {_kind(value)}, not a tensor",
                "the checkpoint is not a plain state dict; re-save it with only tensors",
            )
        out[name] = value.materialize()
    log.info(
        "%s: loaded %d tensors (%.1f MB) of state dict %r",
        archive.path,
        len(out),
        sum(v.nbytes for v in dict.values(sd)) / 1e6,
        _entry_name(tuple(key or ())),
    )
    return out
