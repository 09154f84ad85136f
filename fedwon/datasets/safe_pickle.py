"""Restricted loading of user-supplied pickles (FedBN ``*.pkl`` files, CIFAR-10 batches).

A pickle is a program: ``pickle.load`` on a downloaded file can run arbitrary code. Every pickle
this package reads goes through :func:`load_pickle_file`, whose unpickler resolves only the globals
needed to rebuild numpy arrays, dtypes and scalars, plus a few inert builtins. Any other global
(``os.system``, ``builtins.eval``, a user class, ...) is refused with :class:`UnsafePickleError`
naming the file, before the payload can call it.

Two on-disk formats are accepted, whatever the file extension:

* a raw pickle (FedBN's ``pkl.dump((images, labels), f)``; CIFAR-10's python batches, which were
  written by Python 2 and are therefore decoded with ``encoding="latin1"``);
* a ``.npy`` file (``np.save`` of an object array, as ``np.load(..., allow_pickle=True)`` would
  read it): the header is parsed with :mod:`numpy.lib.format`; an object-dtype payload is itself a
  pickle and goes through the same restricted unpickler, a plain-dtype payload is read as raw bytes.
"""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy_format

from fedwon.datasets.errors import DataError, UnsafePickleError

NPY_MAGIC = b"\x93NUMPY"

_SAFE_BUILTINS = frozenset(
    {"set", "frozenset", "complex", "bytearray", "bytes", "slice", "range", "bool", "int", "float"}
    | {"str", "tuple", "list", "dict"}
)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy callables a pickled array/dtype/scalar may reference, under every module path
    numpy has used for them (``numpy.core`` in 1.x, ``numpy._core`` in 2.x)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return table


_NUMPY_GLOBALS = _numpy_globals()
_CODECS_ENCODE = ("_codecs", "encode")  # protocol-2 pickles write bytes as _codecs.encode(str)


def allowed_globals() -> list[str]:
    """Human-readable list of the globals the restricted unpickler admits."""
    names = [f"{m}.{n}" for m, n in _NUMPY_GLOBALS] + ["_codecs.encode"]
    return sorted(names) + [f"builtins.{n}" for n in sorted(_SAFE_BUILTINS)]


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy array reconstruction and inert builtins."""

    def __init__(self, file: io.BufferedIOBase, *, source: str, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[key]
        if key == _CODECS_ENCODE:
            import codecs

            return codecs.encode
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        raise UnsafePickleError(
            f"{self._source}: refused to unpickle global {module}.{name}; only numpy arrays "
            "and plain builtins are allowed (the file may be malicious or not a data file)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused a persistent id in the pickle")


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; ``source`` names it in errors."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except DataError:
        raise
    except Exception as exc:  # truncated / corrupt pickles raise many different types
        raise DataError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def _read_npy_header(f: io.BufferedReader, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(f)
    readers: dict[tuple[int, int], Callable[..., Any]] = {
        (1, 0): npy_format.read_array_header_1_0,
        (2, 0): npy_format.read_array_header_2_0,
    }
    reader = readers.get(version)
    if reader is None and hasattr(npy_format, "_read_array_header"):
        return npy_format._read_array_header(f, version)
    if reader is None:
        raise DataError(f"{source}: unsupported .npy format version {version}")
    shape, fortran, dtype = reader(f)
    return shape, fortran, dtype


def _load_npy(path: Path) -> Any:
    source = str(path)
    with path.open("rb") as f:
        try:
            shape, fortran, dtype = _read_npy_header(f, source)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{source}: corrupt .npy header ({exc})") from exc
        payload = f.read()
    if dtype.hasobject:
        array = safe_loads(payload, source=source)
        if not isinstance(array, np.ndarray):
            raise DataError(
                f"{source}: .npy object payload is {type(array).__name__}, not an array"
            )
        return array
    count = int(np.prod(shape)) if shape else 1
    if len(payload) < count * dtype.itemsize:
        raise DataError(f"{source}: truncated .npy file (expected {count} items of {dtype})")
    flat = np.frombuffer(payload, dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C")


def load_pickle_file(path: str | Path) -> Any:
    """Load a raw pickle or a ``.npy`` file at ``path`` without running untrusted code.

    Raises :class:`DataError` if the file is missing or unreadable and
    :class:`UnsafePickleError` if it references anything but numpy arrays and plain builtins.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing file {p}")
    with p.open("rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        return _load_npy(p)
    return safe_loads(p.read_bytes(), source=str(p))
