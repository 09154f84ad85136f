"""Byte-identical, faster ``.npy`` encoding/decoding for Flower's ``Array``.

This module owns one optimisation of Flower's own data structure. ``flwr.app.Array`` stores
every tensor as ``.npy`` bytes: ``Array.from_numpy_ndarray`` calls ``np.save`` and
``Array.numpy`` calls ``np.load``, which parses the text header with ``ast.literal_eval`` and
copies the payload twice. A tutorial ClientApp converts its whole ``state_dict`` twice per
message and FedAvg decodes every reply once more, so on the cross-device workload this
header parsing and copying was the largest engine-side cost after training itself.

The fast path keeps the format and the results exactly: headers are produced by ``np.save``
itself (once per dtype/shape, then cached) and parsed by ``np.load``'s own parser (once per
distinct header, then cached); payloads are copied once. Anything unusual (object or
structured dtypes, non C-contiguous inputs, non-.npy data) goes to Flower's original code.
``fast_array_codec()`` installs it for the duration of a run (re-entrant) and restores
Flower's methods afterwards; ``install()`` is for worker processes the engine owns.
"""

from __future__ import annotations

import ast
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.common.constant import SType

_MAGIC = b"\x93NUMPY"
_MAX_CACHE = 4096

_ORIG_NUMPY: Callable[[Array], np.ndarray] = Array.numpy
_ORIG_FROM_NUMPY: Any = Array.__dict__["from_numpy_ndarray"]  # the classmethod object

# header bytes -> (dtype, shape, fortran_order, payload offset)
_decode_cache: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], bool, int]] = {}
# (dtype, shape) -> header bytes as np.save writes them
_encode_cache: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}
_lock = threading.Lock()
_depth = 0


def _header_span(data: bytes) -> int | None:
    """Length of the .npy preamble + header (payload offset), or None if not .npy."""
    if len(data) < 10 or data[:6] != _MAGIC:
        return None
    major = data[6]
    if major == 1:
        return 10 + struct.unpack_from("<H", data, 8)[0]
    if major in (2, 3) and len(data) >= 12:
        return 12 + struct.unpack_from("<I", data, 8)[0]
    return None


def _parse_header(header: bytes, offset: int) -> tuple[np.dtype[Any], tuple[int, ...], bool, int]:
    """Decode a header exactly as ``np.load`` does (numpy's own descr -> dtype)."""
    text = header[10 if header[6] == 1 else 12 : offset].decode("latin1")
    d = ast.literal_eval(text)
    dtype = np.lib.format.descr_to_dtype(d["descr"])
    return dtype, tuple(d["shape"]), bool(d["fortran_order"]), offset


def fast_numpy(self: Array) -> np.ndarray:
    """``Array.numpy`` with a cached header parse and a single payload copy."""
    if self.stype != SType.NUMPY:
        return _ORIG_NUMPY(self)
    data = self.data
    offset = _header_span(data)
    if offset is None:
        return _ORIG_NUMPY(self)
    key = data[:offset]
    parsed = _decode_cache.get(key)
    if parsed is None:
        parsed = _parse_header(key, offset)
        if parsed[0].hasobject:
            return _ORIG_NUMPY(self)
        if len(_decode_cache) < _MAX_CACHE:
            _decode_cache[key] = parsed
    dtype, shape, fortran, offset = parsed
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - offset < count * dtype.itemsize:
        return _ORIG_NUMPY(self)  # truncated: let numpy raise its own error
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if fortran:
        return flat.reshape(shape[::-1]).transpose().copy(order="K")
    return flat.reshape(shape).copy()


def _fast_from_numpy_ndarray(cls: type[Array], ndarray: np.ndarray) -> Array:
    """``Array.from_numpy_ndarray`` with a cached header and a single payload copy."""
    if (
        not isinstance(ndarray, np.ndarray)
        or ndarray.dtype.hasobject
        or ndarray.dtype.names is not None
        or not ndarray.flags.c_contiguous
    ):
        return _ORIG_FROM_NUMPY.__func__(cls, ndarray)
    key = (ndarray.dtype, ndarray.shape)
    header = _encode_cache.get(key)
    if header is None:
        header = _header_only(ndarray)
        if len(_encode_cache) < _MAX_CACHE:
            _encode_cache[key] = header
    data = b"".join((header, _payload(ndarray)))
    return Array(dtype=str(ndarray.dtype), shape=tuple(ndarray.shape), stype=SType.NUMPY, data=data)


def _payload(ndarray: np.ndarray) -> Any:
    """The array's bytes without an intermediate copy (``tobytes`` where buffers can't)."""
    if ndarray.size == 0:
        return b""
    try:
        return memoryview(ndarray).cast("B")  # type: ignore[arg-type]
    except (TypeError, ValueError):  # e.g. datetime64 has no buffer format
        return ndarray.tobytes()


def _header_only(ndarray: np.ndarray) -> bytes:
    """Header bytes exactly as ``np.save`` writes them (computed once per dtype/shape)."""
    buf = BytesIO()
    np.save(buf, ndarray, allow_pickle=False)
    full = buf.getvalue()
    return full[: len(full) - ndarray.nbytes]


def install() -> None:
    """Install the fast codec (idempotent); used in worker processes owned by the engine."""
    Array.numpy = fast_numpy  # type: ignore[method-assign]
    Array.from_numpy_ndarray = classmethod(_fast_from_numpy_ndarray)  # type: ignore[method-assign,assignment]


def uninstall() -> None:
    """Restore Flower's original methods."""
    Array.numpy = _ORIG_NUMPY  # type: ignore[method-assign,assignment]
    Array.from_numpy_ndarray = _ORIG_FROM_NUMPY  # type: ignore[method-assign]


@contextmanager
def fast_array_codec(enabled: bool = True) -> Iterator[None]:
    """Use the fast codec inside the ``with`` block (nested blocks are fine)."""
    global _depth
    if not enabled:
        yield
        return
    with _lock:
        if _depth == 0:
            install()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                uninstall()
