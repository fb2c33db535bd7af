"""Read the official QS model, a pickled scikit-learn ``GaussianMixture``, without running anything in it.

``eval_tool/gmm/gmm_score_coco.py`` opens ``coco2017_gmm_k20`` with ``pickle.load``; this reader never does. Its
``pickle.Unpickler.find_class`` imports nothing. It maps:

* the numpy names a pickled array, dtype or scalar is made of (``numpy[._]core.multiarray._reconstruct`` /
  ``scalar``, ``numpy[._]core.numeric._frombuffer`` (protocol 5), ``numpy.ndarray``, ``numpy.dtype``,
  ``_codecs.encode``, ``copyreg._reconstructor`` with ``object``) to functions written here, which accept only
  numeric dtypes and build the arrays with ``np.frombuffer``;
* ``sklearn.mixture[._]gaussian_mixture.GaussianMixture`` to :class:`GaussianMixtureState`, an inert stand-in that
  keeps the state dict the pickle gives it (scikit-learn is not imported);
* every other name to an inert placeholder (:class:`pbe_core.weights.safe_torch_load.Placeholder`) that records its
  arguments and does nothing.

After loading, a pickle that names anything that would run code under ``pickle.load`` (``os.system``,
``builtins.exec``, ``subprocess.*``...: :func:`pbe_core.weights.safe_torch_load.code_names`) is refused with those names,
although nothing was run; so is a mixture whose fields are not plain arrays, or any other object.
"""

from __future__ import annotations

import io
import pickle
import re

import numpy as np

from ..weights.safe_torch_load import CheckpointError, Placeholder, PlaceholderType, check_pickle, code_names

#: the pickled names of scikit-learn's GaussianMixture (module moved in 0.22)
GAUSSIAN_MIXTURE_NAMES = frozenset(
    f"sklearn.mixture.{m}GaussianMixture" for m in ("_gaussian_mixture.", "gaussian_mixture.", "")
)
_MAX_BYTES = 1 << 30  # 20 full 512x512 components in 3 arrays of float64 are 126 MB
_MAX_ELEMENTS = 1 << 28
_NUMERIC = re.compile(r"^[biufc]\d{1,2}$")


class GmmPickleError(ValueError):
    """The pickle was refused; the message names the file, the reason and the fix."""


class _Malformed(Exception):
    """Raised inside the unpickler; re-raised as GmmPickleError with the file name."""


class _Inert:
    """Base of what this module hands the pickle: no ``__dict__``, no setattr, no BUILD unless a subclass allows."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise _Malformed(f"the pickle tried to set {name!r} on {self!r}")

    def __setstate__(self, state: object) -> None:
        raise _Malformed(f"the pickle tried to BUILD {self!r}")


class _Marker(_Inert):
    """A name the pickle may only pass as an argument (``numpy.ndarray``, ``builtins.object``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        raise _Malformed(f"the pickle called {self.name}, which a GaussianMixture pickle never calls")

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _Function(_Inert):
    """An allow-listed name: calls one of this module's functions."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: object, **kwargs: object) -> object:
        if kwargs:
            raise _Malformed(f"{self.name} was called with keyword arguments")
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


class _DType(_Inert):
    """``numpy.dtype(spec, align, copy)`` then BUILD ``(version, byteorder, ...)``: a numeric numpy dtype."""

    __slots__ = ("dtype",)

    def __init__(self, spec: object, align: object = False, copy: object = True) -> None:
        if type(spec) is not str or not _NUMERIC.match(spec):
            raise _Malformed(f"the pickle builds numpy.dtype({spec!r}); only plain numeric dtypes are accepted")
        object.__setattr__(self, "dtype", np.dtype(spec))

    def __setstate__(self, state: object) -> None:
        if type(state) is not tuple or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise _Malformed(f"numpy.dtype state {state!r:.80}")
        if any(s is not None for s in state[2:4]):  # subarray, fields
            raise _Malformed("the pickle builds a structured numpy dtype; only plain numeric dtypes are accepted")
        if state[1] in "<>":
            object.__setattr__(self, "dtype", self.dtype.newbyteorder(state[1]))

    def __repr__(self) -> str:
        return f"<dtype {self.dtype.str}>"


def _array(data: object, dtype: object, shape: object, order: str) -> np.ndarray:
    if not isinstance(dtype, _DType):
        raise _Malformed(f"an array's dtype is {dtype!r:.80}")
    if type(shape) is not tuple or not all(type(s) is int and 0 <= s < _MAX_ELEMENTS for s in shape):
        raise _Malformed(f"an array's shape is {shape!r:.80}")
    if type(data) is str:  # Python 2 pickles keep array bytes as latin-1 text
        data = data.encode("latin-1")
    if type(data) not in (bytes, bytearray):
        raise _Malformed(f"an array's data is {type(data).__name__}, not bytes (object arrays are refused)")
    count = int(np.prod(shape, dtype=np.int64))
    if count > _MAX_ELEMENTS or count * dtype.dtype.itemsize != len(data):
        raise _Malformed(f"an array of shape {shape} x {dtype.dtype} comes with {len(data)} bytes")
    flat = np.frombuffer(bytes(data), dtype=dtype.dtype, count=count)
    return flat.reshape(shape, order=order).astype(dtype.dtype.newbyteorder("="), copy=True)


class _ArrayState(_Inert):
    """``_reconstruct(ndarray, (0,), b'b')`` then BUILD ``(version, shape, dtype, fortran, data)``: holds ``array``."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        object.__setattr__(self, "array", None)

    def __setstate__(self, state: object) -> None:
        if self.array is not None:
            raise _Malformed("the pickle builds one array twice")
        if type(state) is tuple and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, data); version-less in old numpy
        if type(state) is not tuple or len(state) != 4 or type(state[2]) is not bool:
            raise _Malformed(f"numpy.ndarray state {state!r:.80}")
        shape, dtype, fortran, data = state
        object.__setattr__(self, "array", _array(data, dtype, shape, "F" if fortran else "C"))

    def __repr__(self) -> str:
        return f"<array {None if self.array is None else self.array.shape}>"


def _reconstruct(cls: object, shape: object, code: object) -> _ArrayState:
    if not (isinstance(cls, _Marker) and cls.name == "numpy.ndarray"):
        raise _Malformed(f"_reconstruct builds {cls!r:.80}, not a numpy.ndarray")
    return _ArrayState()


def _frombuffer(data: object, dtype: object, shape: object, order: object) -> np.ndarray:
    if isinstance(data, memoryview):
        data = data.tobytes()
    if order not in ("C", "F"):
        raise _Malformed(f"_frombuffer order {order!r:.20}")
    return _array(data, dtype, shape, order)


def _scalar(dtype: object, data: object = None) -> object:
    if not isinstance(dtype, _DType) or type(data) not in (bytes, str):
        raise _Malformed(f"numpy scalar({dtype!r:.40}, {type(data).__name__})")
    return _array(data, dtype, (), "C")[()].item()


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    if type(text) is not str or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise _Malformed(f"_codecs.encode({type(text).__name__}, {encoding!r:.20}) is not a bytes literal")
    return text.encode(encoding)


class GaussianMixtureState:
    """Stand-in for scikit-learn's ``GaussianMixture``: keeps the pickled state dict in ``state``, runs nothing."""

    __slots__ = ("state",)

    def __new__(cls, *args: object) -> GaussianMixtureState:
        if args:
            raise _Malformed("the pickle creates a GaussianMixture with arguments")
        self = object.__new__(cls)
        object.__setattr__(self, "state", None)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise _Malformed(f"the pickle tried to set {name!r} on a GaussianMixture")

    def __setstate__(self, state: object) -> None:
        if self.state is not None or type(state) is not dict:
            raise _Malformed("a GaussianMixture's state is not one dict")
        object.__setattr__(self, "state", state)


def _reconstructor(cls: object, base: object, state: object) -> GaussianMixtureState:
    """``copyreg._reconstructor`` as protocols 0/1 pickle plain objects: only ``GaussianMixture`` on ``object``."""
    if cls is not GaussianMixtureState or not (isinstance(base, _Marker) and base.name == "builtins.object") or state is not None:
        raise _Malformed(f"copyreg._reconstructor({cls!r:.60}, {base!r:.40}) is not a GaussianMixture")
    return GaussianMixtureState()


_FUNCTIONS = {"_codecs.encode": _encode}
for _core in ("numpy.core", "numpy._core"):
    _FUNCTIONS[f"{_core}.multiarray._reconstruct"] = _reconstruct
    _FUNCTIONS[f"{_core}.multiarray.scalar"] = _scalar
    _FUNCTIONS[f"{_core}.numeric._frombuffer"] = _frombuffer
for _copyreg in ("copyreg", "copy_reg"):
    _FUNCTIONS[f"{_copyreg}._reconstructor"] = _reconstructor
_MARKERS = {"numpy.ndarray": "numpy.ndarray", "builtins.object": "builtins.object", "__builtin__.object": "builtins.object"}


class _Unpickler(pickle.Unpickler):  # restricted: find_class never imports, see the module docstring
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.placeholders: dict[str, PlaceholderType] = {}

    def find_class(self, module: str, name: str) -> object:
        dotted = f"{module}.{name}"
        if len(dotted) > 256:
            raise _Malformed(f"the pickle names a global of {len(dotted)} characters")
        if dotted in GAUSSIAN_MIXTURE_NAMES:
            return GaussianMixtureState
        if dotted == "numpy.dtype":
            return _DType
        if dotted in _FUNCTIONS:
            return _Function(dotted, _FUNCTIONS[dotted])
        if dotted in _MARKERS:
            return _Marker(_MARKERS[dotted])
        if dotted not in self.placeholders:
            if len(self.placeholders) >= 1000:
                raise _Malformed("the pickle names more than 1000 different globals")
            ns = {"__slots__": (), "pickled_name": dotted, "__module__": __name__}
            self.placeholders[dotted] = PlaceholderType("Placeholder", (Placeholder,), ns)
        return self.placeholders[dotted]

    def persistent_load(self, pid: object) -> object:
        raise _Malformed("the pickle refers to external (persistent) objects")


def _plain(value: object, where: str) -> object:
    """The pickled field as plain data: arrays, numbers, strings, None (else refused with its name)."""
    if isinstance(value, _ArrayState):
        if value.array is None:
            raise _Malformed(f"{where} is an array whose data never came")
        return value.array
    if value is None or type(value) in (bool, int, float, str, np.ndarray):
        return value
    kind = type(value).pickled_name if isinstance(value, Placeholder) else type(value).__name__
    raise _Malformed(f"{where} is {kind}, not an array or a number")


def read_gaussian_mixture_pickle(path: str) -> dict:
    """The fields of a pickled ``GaussianMixture`` that scoring needs, as numpy arrays and Python values.

    Returns ``{"weights_", "means_", "covariance_type", and "precisions_cholesky_" / "covariances_" where present,
    "n_features_in_", "_sklearn_version" where present}``. Raises :class:`GmmPickleError`.
    """
    with open(path, "rb") as f:
        data = f.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise GmmPickleError(f"{path} is larger than {_MAX_BYTES >> 20} MB; a 20-component GMM is far smaller")
    if data[:1] != b"\x80" and data[:1] not in (b"(", b"c", b"}", b"]"):
        raise GmmPickleError(f"{path} is not a pickle (it starts with {data[:8]!r}); give the GMM pickle or its .npz")
    try:
        check_pickle(data)  # nesting depth and memo order, before the C unpickler sees it
        unpickler = _Unpickler(data)
        obj = unpickler.load()
    except (_Malformed, CheckpointError) as e:
        raise GmmPickleError(f"{path} was refused: {str(e).replace('data.pkl', 'the pickle')}") from None
    except Exception as e:  # UnpicklingError, EOFError, TypeError, ...: not a pickle this reader accepts
        raise GmmPickleError(f"{path} could not be unpickled ({type(e).__name__}: {str(e)[:200]})") from None
    bad = code_names(unpickler.placeholders)
    if bad:
        raise GmmPickleError(
            f"{path} is unsafe: its pickle names {', '.join(bad[:5])}, which would run code on your machine if it "
            f"were opened with pickle.load (as the official gmm_score_coco.py does). Nothing in it was run. Delete it "
            f"and get the GMM from a source you trust, or use a .npz (python -m pbe_core.eval gmm-convert)."
        )
    if not isinstance(obj, GaussianMixtureState) or obj.state is None:
        kind = type(obj).pickled_name if isinstance(obj, Placeholder) else type(obj).__name__
        raise GmmPickleError(
            f"{path} holds {kind}, not a scikit-learn GaussianMixture; give the QS model coco2017_gmm_k20 "
            f"(BayesianGaussianMixture and pipelines are not supported)"
        )
    state = obj.state
    needed = ("weights_", "means_", "covariance_type")
    missing = [k for k in needed if k not in state]
    if missing or not ("precisions_cholesky_" in state or "covariances_" in state):
        raise GmmPickleError(f"{path} is a GaussianMixture that was never fitted (it lacks {missing or 'covariances_'})")
    out = {}
    try:
        for key in (*needed, "precisions_cholesky_", "covariances_", "n_features_in_", "_sklearn_version"):
            if key in state:
                out[key] = _plain(state[key], key)
    except _Malformed as e:
        raise GmmPickleError(f"{path} was refused: {e}") from None
    return out
