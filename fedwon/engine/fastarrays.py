"""Flower's record layer, fast for a run: ``Array`` values stay arrays, ``.npy`` bytes on demand.

This module owns how the fast engine handles Flower's ``Array`` and the records carrying it.
``flwr.app.Array`` stores a tensor as ``.npy`` bytes: every ``ArrayRecord(model.state_dict())``
serialises the model, every ``.numpy()``/``.to_torch_state_dict()`` parses a header and copies
the payload, and FedAvg's ``aggregate_arrayrecords`` decodes every reply once more. In one
process none of that is needed: on the cross-device workload it was most of the engine's cost.

During a run (``fast_array_codec()``; ``install()`` in worker processes the engine owns):

* ``Array.from_numpy_ndarray`` (hence ``Array(ndarray)``, ``Array(tensor)``,
  ``ArrayRecord(state_dict)``, ``ArrayRecord(list_of_ndarrays)``) copies the input once into a
  private, read-only ndarray — the *payload* — and produces no bytes;
* ``Array.numpy`` returns a fresh writable copy of the payload (one copy, as before), and
  ``ArrayRecord.to_torch_state_dict`` copy-on-write clones of one tensor per payload (no
  copy unless the receiver writes: see ``_cow_tensor``);
* ``ArrayRecord.from_torch_state_dict`` (and ``ArrayRecord(state_dict)``, without Flower's
  type-check passes) does the same per tensor with less Python -- and, for a client whose
  reply the grid streams to the round rules' running mean (``lazy_snapshots``), takes a
  copy-on-write snapshot of each tensor instead of a copy (see "replies without a snapshot
  copy" below); ``ArrayRecord.from_array_dict`` (``ArrayRecord(dict_of_arrays)``) shares
  payloads instead of re-encoding them;
* Flower's ``aggregate_arrayrecords`` (used by ``FedAvg`` and its subclasses, ``MultiKrum``)
  is replaced by ``aggregate_arrayrecords`` below: the same arithmetic in the same order,
  bit for bit, reading each reply's values in place instead of through a copy, and handing
  on a server-computed payload (``adopt_result``: the streamed mean) as the mean of that one
  reply, since ``x * 1.0`` is ``x``;
* Flower's ``TypedDict`` item access and ``RecordDict.array_records``/``metric_records``/
  ``config_records`` behave as before without building typing objects or re-assigning every
  record on each call (dozens of times per message), and without the reference cycle of
  Flower's record views (which kept the message they were taken from alive until the garbage
  collector ran).

``Array.data`` itself is a property (installed once, kept for the process's life, so that
arrays created during a run stay valid after it): it returns the stored bytes, or encodes the
payload exactly as ``np.save`` would — cached header plus one payload copy — the first time
something asks (gRPC deflation, ``==``, ``repr``, a size in bytes). Pickling a lazy ``Array``
(Ray transfers, spilled client states, checkpoints) carries the payload as an ndarray, which
Ray sends without copying and which unpickles into a lazy ``Array`` again.

Payloads are never written after creation, so sharing one between the server's copy and
every client's copy is safe: each side gets its own ``Array`` objects, and ``numpy()`` hands
out copies. Anything unusual (object or structured dtypes, Fortran-ordered inputs, non-numpy
``stype``) takes Flower's original code path.
"""

from __future__ import annotations

import ast
import functools
import struct
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.message.arrayrecord import _check_key as _check_array_key
from flwr.app.message.arrayrecord import _check_value as _check_array_value
from flwr.app.message.recorddict import _check_key as _check_record_key
from flwr.app.message.recorddict import _SyncedDict
from flwr.app.message.typeddict import TypedDict
from flwr.common.constant import SType

_MAGIC = b"\x93NUMPY"
_MAX_CACHE = 4096
#: ``Array.__dict__`` key of a lazy array's payload (a private, read-only, C-ordered ndarray).
PAYLOAD_KEY = "_fedwon_payload"
#: ``Array.__dict__`` key marking a payload computed on the server (see :func:`adopt_result`).
EXACT_KEY = "_fedwon_exact"
_STRATEGY_PACKAGE = "flwr.serverapp.strategy"

_ORIG_NUMPY: Callable[[Array], np.ndarray] = Array.numpy
_ORIG_FROM_NUMPY: Any = Array.__dict__["from_numpy_ndarray"]  # the classmethod objects

# header bytes -> (dtype, shape, fortran_order, payload offset)
_decode_cache: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], bool, int]] = {}
# (dtype, shape) -> header bytes as np.save writes them
_encode_cache: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}
_dtype_names: dict[np.dtype[Any], str] = {}
_lock = threading.Lock()
_depth = 0


# ---- .npy headers ---------------------------------------------------------------------


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


def _parsed_header(data: bytes) -> tuple[np.dtype[Any], tuple[int, ...], bool, int] | None:
    """The (cached) parse of ``data``'s .npy header; None if not plain, complete .npy."""
    offset = _header_span(data)
    if offset is None:
        return None
    key = data[:offset]
    parsed = _decode_cache.get(key)
    if parsed is None:
        parsed = _parse_header(key, offset)
        if parsed[0].hasobject:
            return None
        if len(_decode_cache) < _MAX_CACHE:
            _decode_cache[key] = parsed
    dtype, shape, _, offset = parsed
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - offset < count * dtype.itemsize:
        return None  # truncated: let numpy raise its own error
    return parsed


def _header_only(ndarray: np.ndarray) -> bytes:
    """Header bytes exactly as ``np.save`` writes them (computed once per dtype/shape)."""
    key = (ndarray.dtype, ndarray.shape)
    header = _encode_cache.get(key)
    if header is None:
        buf = BytesIO()
        np.save(buf, ndarray, allow_pickle=False)
        full = buf.getvalue()
        header = full[: len(full) - ndarray.nbytes]
        if len(_encode_cache) < _MAX_CACHE:
            _encode_cache[key] = header
    return header


def _payload_bytes(ndarray: np.ndarray) -> Any:
    """The array's bytes without an intermediate copy (``tobytes`` where buffers can't)."""
    if ndarray.size == 0:
        return b""
    try:
        return memoryview(ndarray).cast("B")  # type: ignore[arg-type]
    except (TypeError, ValueError):  # e.g. datetime64 has no buffer format
        return ndarray.tobytes()


def encode(payload: np.ndarray) -> bytes:
    """``np.save`` bytes of a C-ordered array: cached header + one payload copy."""
    return b"".join((_header_only(payload), _payload_bytes(payload)))


# ---- lazy arrays ------------------------------------------------------------------------


def _lazy_eligible(ndarray: Any) -> bool:
    """Whether ``ndarray`` can be kept as a payload and encoded later byte-identically."""
    return (
        isinstance(ndarray, np.ndarray)
        and not ndarray.dtype.hasobject
        and ndarray.dtype.names is None
        and (ndarray.flags.c_contiguous or not ndarray.flags.f_contiguous)
    )


def _dtype_name(dtype: np.dtype[Any]) -> str:
    """``str(dtype)`` (what Flower stores), cached: numpy computes it in Python each time."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = str(dtype)
    return name


def adopt(payload: np.ndarray) -> Array:
    """An ``Array`` whose payload *is* ``payload`` (no copy): the caller gives it up.

    ``payload`` must be a C-contiguous ndarray nobody else writes to; it is made read-only.
    """
    payload.flags.writeable = False
    arr = object.__new__(Array)
    d = arr.__dict__
    d["dtype"] = _dtype_name(payload.dtype)
    d["shape"] = tuple(payload.shape)
    d["stype"] = SType.NUMPY
    d[PAYLOAD_KEY] = payload
    return arr


def adopt_result(payload: np.ndarray) -> Array:
    """:func:`adopt` for the result of arithmetic on the server (a mean, a sum): its values
    hold no signalling NaN, so multiplying them by 1.0 leaves every bit as it is, and
    :func:`aggregate_arrayrecords` may hand such an array on as FedAvg's mean of one reply
    (weight factor 1.0) instead of computing ``value * 1.0`` into a new array. Outside a run
    (no payloads), a plain ``Array``."""
    if not (_saved and _lazy_eligible(payload) and payload.flags.c_contiguous):
        return Array(payload)
    base: Any = payload.base
    torch = sys.modules.get("torch")
    if torch is not None and type(base) is torch.Tensor and base.numel() == payload.size:
        # from :func:`empty_result`: the tensor is what clients' tensors are cloned from
        interface = {
            "shape": payload.shape,
            "typestr": payload.dtype.str,
            "data": (base.data_ptr(), True),
            "version": 3,
        }
        payload = np.asarray(_CowMemory(interface, base))
    arr = adopt(payload)
    arr.__dict__[EXACT_KEY] = True
    return arr


def empty_result(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A writable array for a result the server computes and then hands to clients (a mean,
    for :func:`adopt_result`): torch memory during a run when torch has the dtype, so that
    clients' ``to_torch_state_dict`` clone it copy-on-write rather than copying it first."""
    dtype = np.dtype(dtype)
    torch = sys.modules.get("torch")
    if not _saved or torch is None or not _torch_supports(dtype) or not cow_tensors_work():
        return np.empty(shape, dtype)
    out: np.ndarray = torch.from_numpy(np.empty(0, dtype)).new_empty(shape).numpy()
    return out


def is_lazy(arr: Array) -> bool:
    """Whether ``arr`` holds a payload whose bytes were not produced yet."""
    return PAYLOAD_KEY in arr.__dict__


def array_nbytes(arr: Array) -> int:
    """Bytes held by ``arr`` (payload or .npy data), without producing bytes."""
    payload = arr.__dict__.get(PAYLOAD_KEY)
    return int(payload.nbytes) if payload is not None else len(arr.data)


def clone_array(arr: Array) -> Array:
    """A new ``Array`` with the same values, sharing the (immutable) payload or bytes.

    What each client gets instead of the server's object: reassigning its fields cannot
    touch the server's ``Array``, and nothing can write into a shared payload.
    """
    if type(arr) is not Array:  # a user subclass: let it copy itself
        import copy

        return copy.copy(arr)
    src = arr.__dict__
    new = object.__new__(Array)
    d = new.__dict__
    d["dtype"] = src["dtype"]
    d["shape"] = tuple(src["shape"])
    d["stype"] = src["stype"]
    payload = src.get(PAYLOAD_KEY)
    if payload is not None:
        d[PAYLOAD_KEY] = payload
        if EXACT_KEY in src:  # a property of the (shared) values
            d[EXACT_KEY] = True
    else:
        d["data"] = src["data"]
    return new


def clone_array_record(record: ArrayRecord) -> ArrayRecord:
    """A new ``ArrayRecord`` of cloned ``Array`` objects (no bytes produced, no copies)."""
    new = record.copy()
    data = cast(dict[str, Array], new.__dict__["_data"])
    for key, arr in data.items():
        data[key] = clone_array(arr)
    return new


def payload_view(arr: Array) -> np.ndarray:
    """The array's values as a read-only ndarray, without copying when possible.

    For server-side code that only reads (aggregation, NaN/Inf checks): a view of the
    payload or of the .npy bytes; ``arr.numpy()`` (a copy) when neither applies.
    """
    payload = arr.__dict__.get(PAYLOAD_KEY)
    if payload is not None:
        return cast(np.ndarray, payload.view())
    if arr.stype == SType.NUMPY:
        data = arr.data
        parsed = _parsed_header(data) if isinstance(data, bytes) else None
        if parsed is not None and not parsed[2]:
            dtype, shape, _, offset = parsed
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    view = arr.numpy()
    view.flags.writeable = False
    return view


def _data_get(self: Array) -> bytes:
    """``Array.data``: the stored bytes, or the payload encoded now (and then kept)."""
    d = self.__dict__
    data = d.get("data")
    if data is None:
        payload = d.get(PAYLOAD_KEY)
        if payload is None:
            raise AttributeError("'Array' object has no attribute 'data'")
        data = encode(payload)
        d["data"] = data
        d.pop(PAYLOAD_KEY, None)  # one representation at a time: bytes from now on
    return cast(bytes, data)


def _data_set(self: Array, value: bytes) -> None:
    """Assigning ``Array.data`` replaces the payload (Flower's ``__setattr__`` runs first)."""
    self.__dict__["data"] = value
    self.__dict__.pop(PAYLOAD_KEY, None)


def _rebuild(dtype: str, shape: tuple[int, ...], stype: str, payload: np.ndarray) -> Array:
    """Unpickle a lazy ``Array`` (in any process: the ``data`` property is ensured first)."""
    _ensure_lazy_data()
    arr = adopt(payload if payload.flags.c_contiguous else np.ascontiguousarray(payload))
    arr.__dict__.update(dtype=dtype, shape=tuple(shape), stype=stype)
    return arr


def _reduce_ex(self: Array, protocol: Any) -> Any:
    """Pickle a lazy ``Array`` as its payload ndarray (out of band under Ray), others as
    Flower's dataclass pickles them."""
    payload = self.__dict__.get(PAYLOAD_KEY)
    if payload is None:
        return object.__reduce_ex__(self, protocol)
    return _rebuild, (self.dtype, self.shape, self.stype, payload)


def _ensure_lazy_data() -> None:
    """Make ``Array.data`` a property and lazy arrays picklable (once, for the process).

    Kept after runs on purpose: lazy arrays a run leaves behind (the final model, client
    states) must keep producing their bytes. Arrays holding bytes behave exactly as before.
    """
    if not isinstance(Array.__dict__.get("data"), property):
        Array.data = property(_data_get, _data_set)  # type: ignore[assignment]
        Array.__reduce_ex__ = _reduce_ex  # type: ignore[method-assign,assignment]


# ---- the methods installed for a run ------------------------------------------------------


def fast_numpy(self: Array) -> np.ndarray:
    """``Array.numpy``: a copy of the payload, or a cached-header single-copy decode."""
    payload = self.__dict__.get(PAYLOAD_KEY)
    if payload is not None and self.stype == SType.NUMPY:
        return cast(np.ndarray, payload.copy())
    if self.stype != SType.NUMPY:
        return _ORIG_NUMPY(self)
    data = self.data
    parsed = _parsed_header(data) if isinstance(data, bytes) else None
    if parsed is None:
        return _ORIG_NUMPY(self)
    dtype, shape, fortran, offset = parsed
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if fortran:
        return flat.reshape(shape[::-1]).transpose().copy(order="K")
    return flat.reshape(shape).copy()


def _lazy_from_numpy_ndarray(cls: type[Array], ndarray: np.ndarray) -> Array:
    """``Array.from_numpy_ndarray``: one copy into a payload, no bytes."""
    if not _lazy_eligible(ndarray):
        return cast(Array, _ORIG_FROM_NUMPY.__func__(cls, ndarray))
    if type(ndarray) is np.ndarray and ndarray.flags.c_contiguous:
        return adopt(ndarray.copy())
    return adopt(np.array(ndarray, order="C", copy=True))


def _lazy_from_torch_state_dict(
    cls: type[ArrayRecord], state_dict: dict[str, Any], *, keep_input: bool = True
) -> ArrayRecord:
    """``ArrayRecord.from_torch_state_dict``: one copy per tensor into a payload.

    Flower's loop per tensor (``detach().cpu().numpy()``, ``Array.from_numpy_ndarray``,
    a type-checked ``record[k] = ...``) costs ~10 µs of Python, i.e. more than copying a
    small tensor; this does the same with one copy and no bytes.
    """
    record = ArrayRecord()
    data = record.__dict__["_data"]
    for key in list(state_dict.keys()):
        tensor = state_dict[key] if keep_input else state_dict.pop(key)
        if not isinstance(key, str):
            raise TypeError(f"Key must be of type `str` but `{type(key)}` was passed.")
        data[key] = _array_from_tensor(tensor)
    return record


_ORIG_RECORD_INIT: Any = ArrayRecord.__init__


def _record_init(self: ArrayRecord, *args: Any, **kwargs: Any) -> None:
    """``ArrayRecord.__init__``: ``ArrayRecord(state_dict)`` (a dict of tensors, what a
    ClientApp replies with) goes straight to ``from_torch_state_dict``'s arrays, without
    Flower's three passes of type checks over the dict and a second record to copy from;
    anything else takes Flower's constructor."""
    arg = args[0] if len(args) == 1 and not kwargs else None
    torch = sys.modules.get("torch")
    if type(arg) in (dict, OrderedDict) and arg and torch is not None:
        tensor = torch.Tensor
        if all(type(k) is str and isinstance(v, tensor) for k, v in arg.items()):
            d = self.__dict__
            d["_check_key_fn"] = _check_array_key
            d["_check_value_fn"] = _check_array_value
            d["_data"] = {k: _array_from_tensor(v) for k, v in arg.items()}
            return
    _ORIG_RECORD_INIT(self, *args, **kwargs)


def _array_from_tensor(tensor: Any) -> Array:
    """A lazy ``Array`` holding a copy of ``tensor`` (Flower's path for anything unusual)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if getattr(_snapshots, "lazy", False):
        snapshot = _cow_array(tensor)
        if snapshot is not None:
            return snapshot
    if not tensor.is_cpu:
        ndarray = tensor.cpu().numpy()  # a fresh copy already: adopt it when C-ordered
        if ndarray.flags.c_contiguous and _lazy_eligible(ndarray):
            return adopt(ndarray)
        return Array.from_numpy_ndarray(ndarray)
    try:
        ndarray = tensor.numpy()
    except (TypeError, RuntimeError):  # e.g. bfloat16: Flower's path raises its own error
        return Array.from_numpy_ndarray(tensor.detach().cpu().numpy())
    if ndarray.flags.c_contiguous:  # tensors are never object or structured arrays
        return adopt(ndarray.copy())
    return Array.from_numpy_ndarray(ndarray)


def _sharing_from_array_dict(
    cls: type[ArrayRecord], array_dict: dict[str, Array], *, keep_input: bool = True
) -> ArrayRecord:
    """``ArrayRecord.from_array_dict``: new ``Array`` objects sharing payloads or bytes."""
    record = ArrayRecord()
    for key, arr in array_dict.items():
        record[key] = clone_array(arr)
    if not keep_input:
        array_dict.clear()
    return record


# ---- torch tensors without a copy: copy-on-write clones of one tensor per payload -----------
#
# ``to_torch_state_dict()`` must give every ClientApp tensors it may modify. PyTorch can make
# copy-on-write clones (``torch._lazy_clone``): the clone shares the memory until either side
# writes — any write, through torch ops, ``.data``, ``.numpy()`` or ``data_ptr()``, first
# gives the writer its own copy. So each payload gets one torch tensor (a copy made once, on
# the first decode: the global model once per round) and each client a clone of it, which
# ``load_state_dict`` only reads. Used only if a self-test shows writes stay private.

_torch_sources: dict[int, tuple[weakref.ref[np.ndarray], Any]] = {}
_torch_dtypes: dict[np.dtype[Any], bool] = {}


@functools.lru_cache(maxsize=1)
def cow_tensors_work() -> bool:
    """Whether this torch makes copy-on-write clones whose writes stay private."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "_lazy_clone"):
        return False
    try:
        source = torch.zeros(4)
        clones = [torch._lazy_clone(source) for _ in range(3)]
        clones[0].add_(1.0)
        clones[1].numpy()[0] = 5.0
        clones[2].data.mul_(2.0).add_(3.0)
        private = [c.tolist() for c in clones] == [[1.0] * 4, [5.0, 0, 0, 0], [3.0] * 4]
        return private and source.tolist() == [0.0] * 4
    except (RuntimeError, TypeError, AttributeError):
        return False


def _torch_supports(dtype: np.dtype[Any]) -> bool:
    """Whether torch has this numpy dtype (native byte order, no strings or dates)."""
    ok = _torch_dtypes.get(dtype)
    if ok is None:
        try:
            sys.modules["torch"].from_numpy(np.empty(0, dtype=dtype))
            ok = True
        except (TypeError, ValueError, RuntimeError):  # e.g. datetime64, big-endian
            ok = False
        _torch_dtypes[dtype] = ok
    return ok


def _torch_source(payload: np.ndarray) -> Any:
    """The torch tensor holding a copy of ``payload`` (made once per payload, cached while
    the payload lives); clients get copy-on-write clones of it. A copy-on-write snapshot's
    payload already has one: its clone (which nothing writes)."""
    owner = payload.base
    if type(owner) is _CowMemory:
        return owner.clone
    key = id(payload)
    entry = _torch_sources.get(key)
    if entry is not None and entry[0]() is payload:
        return entry[1]
    torch = sys.modules["torch"]
    source = torch.empty(payload.shape, dtype=torch.from_numpy(np.empty(0, payload.dtype)).dtype)
    source.numpy()[...] = payload  # before any clone exists: a plain write into torch memory
    _torch_sources[key] = (weakref.ref(payload, lambda _: _torch_sources.pop(key, None)), source)
    return source


def _cow_tensor(arr: Array) -> Any:
    """A tensor with ``arr``'s values that its receiver may modify: a copy-on-write clone
    where possible, else Flower's ``torch.from_numpy(arr.numpy())``."""
    torch = sys.modules["torch"]
    payload = arr.__dict__.get(PAYLOAD_KEY)
    owner = getattr(payload, "base", None)
    if type(owner) is _CowMemory and arr.stype == SType.NUMPY:
        return torch._lazy_clone(owner.clone)  # a snapshot or a streamed mean: torch memory
    if (
        payload is not None
        and arr.stype == SType.NUMPY
        and _torch_supports(payload.dtype)
        and cow_tensors_work()
    ):
        return torch._lazy_clone(_torch_source(payload))
    return torch.from_numpy(arr.numpy())


def _cow_to_torch_state_dict(self: ArrayRecord, *, keep_input: bool = True) -> Any:
    """``ArrayRecord.to_torch_state_dict`` handing out copy-on-write clones (see above)."""
    if "torch" not in sys.modules:
        raise RuntimeError("PyTorch is required to use to_torch_state_dict")
    state: OrderedDict[str, Any] = OrderedDict()
    for key in list(self.keys()):
        arr = self[key] if keep_input else self.pop(key)
        state[key] = _cow_tensor(arr)
    return state


# ---- replies without a snapshot copy: copy-on-write clones of the live tensors -----------------
#
# ``ArrayRecord(model.state_dict())`` in a ClientApp must snapshot the tensors: the next client
# of the process trains the same cached model. When the grid streams replies (the round rules'
# running mean folds each reply and lets it go before the next client runs), the engine runs
# each client under ``lazy_snapshots()``: the record's payloads are then read-only views of
# copy-on-write clones of the tensors (``torch._lazy_clone``), made without copying. Whoever
# writes a tensor while its snapshot lives -- the ClientApp after building its reply, the next
# client's ``load_state_dict``, the optimizer -- first gets its own copy from torch, so the
# snapshot keeps the values it was taken with; once the snapshot is gone (folded and dropped),
# torch hands the memory back to the tensor on its next write, without a copy. Memory torch
# does not own (``torch.from_numpy``, shared memory) cannot be cloned this way and is copied as
# before. What copy-on-write cannot see are raw pointers taken earlier: a ClientApp that keeps
# ``tensor.numpy()`` views of its parameters from one call to the next and writes through them
# (rather than through torch) must not run streamed rounds with ``fast_arrays``.

_snapshots = threading.local()


class _CowMemory:
    """Owns a snapshot's memory: the copy-on-write clone, kept alive with every view of it,
    and the array interface numpy builds the (read-only) payload from."""

    __slots__ = ("__array_interface__", "clone")

    def __init__(self, interface: dict[str, Any], clone: Any) -> None:
        self.__array_interface__ = interface
        self.clone = clone


#: (address, torch dtype, shape) of a tensor snapshotted before -> (the array interface of
#: its memory, numpy's dtype name, the shape as a tuple). A model's tensors keep their memory
#: from one client to the next (see above), so each snapshot after the first finds these.
_cow_layouts: dict[tuple[int, Any, Any], tuple[dict[str, Any], str, tuple[int, ...]]] = {}


def _cow_array(tensor: Any, *, tested: bool = False) -> Array | None:
    """A lazy ``Array`` whose payload is a copy-on-write snapshot of ``tensor`` (see above),
    made without copying; None where that cannot be done (not on the CPU, not contiguous,
    empty, no numpy dtype, memory torch does not own, a torch without copy-on-write).
    ``tested``: called by the self-test (which it must not wait for, nor leave a cache for)."""
    if not (tested or cow_snapshots_work()) or not (tensor.is_cpu and tensor.is_contiguous()):
        return None
    address = tensor.data_ptr()  # before the clone: afterwards it would copy
    key = (address, tensor.dtype, tensor.shape)
    layout = _cow_layouts.get(key)
    if layout is None:
        layout = _cow_layout(tensor, address)
        if layout is None:
            return None
        if not tested:
            if len(_cow_layouts) >= _MAX_CACHE:
                _cow_layouts.clear()
            _cow_layouts[key] = layout
    try:
        clone = sys.modules["torch"]._lazy_clone(tensor)
    except RuntimeError:  # memory torch does not own (from numpy, shared): copy it
        return None
    interface, dtype_name, shape = layout
    payload = np.asarray(_CowMemory(interface, clone))  # read-only: see the interface
    arr = object.__new__(Array)
    d = arr.__dict__
    d["dtype"], d["shape"], d["stype"], d[PAYLOAD_KEY] = dtype_name, shape, SType.NUMPY, payload
    return arr


def _cow_layout(tensor: Any, address: int) -> tuple[dict[str, Any], str, tuple[int, ...]] | None:
    """What :func:`_cow_array` caches for ``tensor``'s memory, or None where a snapshot
    cannot be taken (empty, or no numpy dtype)."""
    if tensor.numel() == 0:
        return None
    try:
        dtype = tensor.numpy().dtype  # a dtype numpy has (not bfloat16, ...)
    except (TypeError, RuntimeError):
        return None
    shape = tuple(tensor.shape)
    interface = {"shape": shape, "typestr": dtype.str, "data": (address, True), "version": 3}
    return interface, _dtype_name(dtype), shape


def lazy_snapshots(enabled: bool) -> bool:
    """Whether ``ArrayRecord(state_dict)`` in this thread takes copy-on-write snapshots
    instead of copies (see above; for a client whose reply is folded before the next client
    runs) from now on; returns the previous setting, to restore afterwards."""
    saved: bool = getattr(_snapshots, "lazy", False)
    _snapshots.lazy = enabled
    return saved


@functools.lru_cache(maxsize=1)
def cow_snapshots_work() -> bool:
    """Whether this torch keeps a snapshot's values when the tensor is then written in every
    way a ClientApp writes a model (torch ops, ``load_state_dict``, foreach copies, a new
    ``.numpy()`` view)."""
    torch = sys.modules.get("torch")
    if torch is None or not cow_tensors_work() or not hasattr(torch._C, "_is_cow_tensor"):
        return False
    try:
        layer = torch.nn.Linear(3, 1)
        with torch.no_grad():
            layer.weight.copy_(torch.arange(3.0))
        weight = layer.weight.detach()

        def snapshot() -> np.ndarray | None:
            arr = _cow_array(weight, tested=True)
            return None if arr is None else arr.__dict__[PAYLOAD_KEY]

        snapshots = [snapshot()]
        with torch.no_grad():
            layer.weight.add_(1.0)  # the layer gets its own copy; the snapshot keeps its own
        snapshots.append(snapshot())
        layer.load_state_dict({"weight": torch.zeros(1, 3), "bias": torch.zeros(1)})
        snapshots.append(snapshot())
        torch._foreach_copy_([weight], [torch.full((1, 3), 7.0)])
        snapshots.append(snapshot())
        weight.numpy()[0, 0] = 9.0  # a new numpy view writes the tensor's own memory
        seen = [s.tolist() if s is not None else None for s in snapshots]
        want = [[[0.0, 1.0, 2.0]], [[1.0, 2.0, 3.0]], [[0.0, 0.0, 0.0]], [[7.0, 7.0, 7.0]]]
        return seen == want and weight.tolist() == [[9.0, 7.0, 7.0]]
    except (RuntimeError, TypeError, AttributeError, ValueError):
        return False


def aggregate_arrayrecords(records: list[RecordDict], weighting_metric_name: str) -> ArrayRecord:
    """Flower's ``aggregate_arrayrecords``, bit for bit, reading replies in place.

    Same weights, same order, same numpy arithmetic (``x * w`` rounded to the sum's dtype,
    then ``+=``) as ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords``; only
    the per-reply copy made by ``value.numpy()`` and the per-reply product array are gone
    (one scratch array per key is reused), and the sums become the result's payloads.
    """
    weights: list[float] = []
    for record in records:
        metricrecord = next(iter(record.metric_records.values()))
        weights.append(cast(float, metricrecord[weighting_metric_name]))
    total_weight = sum(weights)
    weight_factors = [w / total_weight for w in weights]
    sums: dict[str, Any] = {}
    scratch: dict[str, np.ndarray] = {}
    # FedAvg's mean of one reply (the round rules' streamed mean): ``x * 1.0`` is ``x``
    one = len(records) == 1 and weight_factors[0] == 1.0 and len(records[0].array_records) == 1
    for record, weight in zip(records, weight_factors, strict=True):
        for record_item in record.array_records.values():
            for key, value in record_item.items():
                view = payload_view(value)
                if one and key not in sums and _times_one_is_identity(value, view):
                    sums[key] = value.__dict__[PAYLOAD_KEY]  # x * 1.0 == x: share it
                elif key not in sums:
                    sums[key] = view * weight
                else:
                    sums[key] += _product(view, weight, sums[key], scratch, key)
    result = ArrayRecord()
    for key, total in sums.items():
        total = np.asarray(total)
        result[key] = (
            adopt(total) if _lazy_eligible(total) and total.flags.c_contiguous else Array(total)
        )
    return result


def _times_one_is_identity(arr: Array, view: np.ndarray) -> bool:
    """Whether ``view * 1.0`` would be ``arr``'s payload bit for bit, in its dtype: a float
    payload computed on the server (:func:`adopt_result`: no signalling NaN)."""
    return (
        arr.__dict__.get(EXACT_KEY, False)
        and PAYLOAD_KEY in arr.__dict__
        and view.dtype.kind == "f"
        and np.result_type(view, 1.0) == view.dtype
    )


def _product(
    view: np.ndarray, weight: float, total: Any, scratch: dict[str, np.ndarray], key: str
) -> Any:
    """``view * weight``, written into a reused scratch array when that gives the same
    dtype and shape as the running sum (numpy then runs the very same loop)."""
    if not isinstance(total, np.ndarray) or view.shape != total.shape or view.ndim == 0:
        return view * weight
    buf = scratch.get(key)
    if buf is None:
        buf = scratch[key] = np.empty_like(total)
    if np.result_type(view, weight) != buf.dtype:
        return view * weight
    return np.multiply(view, weight, out=buf)


def _strategy_modules() -> Iterator[Any]:
    """Loaded Flower strategy modules that hold Flower's ``aggregate_arrayrecords``."""
    from flwr.serverapp.strategy import strategy_utils

    original = strategy_utils.__dict__["aggregate_arrayrecords"]
    for name, module in list(sys.modules.items()):
        loaded = getattr(module, "__dict__", None) or {}
        if name.startswith(_STRATEGY_PACKAGE) and loaded.get("aggregate_arrayrecords") is original:
            yield module


# ---- Flower's typed dicts without per-call typing overhead -----------------------------
#
# ``flwr.app``'s ``TypedDict`` (base of ``ArrayRecord``, ``RecordDict``, ...) evaluates
# ``cast(Callable[[K], None], ...)``/``cast(dict[K, V], ...)`` on every item access: a new
# typing object per call, ~1 µs each, dozens of times per message. Same behaviour without:


def _typed_setitem(self: TypedDict[Any, Any], key: Any, value: Any) -> None:
    d = self.__dict__
    d["_check_key_fn"](key)
    d["_check_value_fn"](value)
    d["_data"][key] = value


def _typed_getitem(self: TypedDict[Any, Any], item: Any) -> Any:
    return self.__dict__["_data"][item]


def _typed_delitem(self: TypedDict[Any, Any], key: Any) -> None:
    del self.__dict__["_data"][key]


def _typed_iter(self: TypedDict[Any, Any]) -> Iterator[Any]:
    return iter(self.__dict__["_data"])


def _typed_len(self: TypedDict[Any, Any]) -> int:
    return len(self.__dict__["_data"])


def _typed_contains(self: TypedDict[Any, Any], key: object) -> bool:
    return key in self.__dict__["_data"]


def _typed_keys(self: TypedDict[Any, Any]) -> Any:
    return self.__dict__["_data"].keys()


def _typed_values(self: TypedDict[Any, Any]) -> Any:
    return self.__dict__["_data"].values()


def _typed_items(self: TypedDict[Any, Any]) -> Any:
    return self.__dict__["_data"].items()


@functools.cache
def _value_check(allowed: type) -> Callable[[Any], None]:
    """``_SyncedDict.check_value`` for one record type, bound to nothing."""

    def check_value(value: Any) -> None:
        if not isinstance(value, allowed):
            raise TypeError(
                f"Expected `{allowed.__name__}`, but "
                f"received `{type(value).__name__}` for the value."
            )

    return check_value


def _records_view(recorddict: RecordDict, allowed: type) -> Any:
    """What ``RecordDict.array_records`` (etc.) return: a ``_SyncedDict`` of the records of
    one type, built directly (Flower re-assigns every record into the ``RecordDict`` while
    building it, with two type checks each, on every property access). Flower's view holds
    its own bound ``check_value``, a reference cycle: the view, and the message it was taken
    from, would live until the garbage collector runs (a streamed reply, and its snapshot,
    past the next client); this one is freed as soon as it is dropped."""
    synced = object.__new__(_SyncedDict)
    d = synced.__dict__
    d["_check_key_fn"] = _check_record_key
    d["_check_value_fn"] = _value_check(allowed)
    d["_data"] = {k: v for k, v in recorddict.__dict__["_data"].items() if isinstance(v, allowed)}
    d["recorddict"] = recorddict
    d["allowed_type"] = allowed
    return synced


def _array_records(self: RecordDict) -> Any:
    """``RecordDict.array_records`` (see ``_records_view``)."""
    return _records_view(self, ArrayRecord)


def _metric_records(self: RecordDict) -> Any:
    """``RecordDict.metric_records`` (see ``_records_view``)."""
    return _records_view(self, MetricRecord)


def _config_records(self: RecordDict) -> Any:
    """``RecordDict.config_records`` (see ``_records_view``)."""
    return _records_view(self, ConfigRecord)


# ---- installing for a run ------------------------------------------------------------------

_saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, Flower's original)


def _patches() -> list[tuple[Any, str, Any]]:
    """What a run replaces: (class or module, attribute, replacement)."""
    return [
        (Array, "numpy", fast_numpy),
        (Array, "from_numpy_ndarray", classmethod(_lazy_from_numpy_ndarray)),
        (ArrayRecord, "from_array_dict", classmethod(_sharing_from_array_dict)),
        (ArrayRecord, "from_torch_state_dict", classmethod(_lazy_from_torch_state_dict)),
        (ArrayRecord, "__init__", _record_init),
        (ArrayRecord, "to_torch_state_dict", _cow_to_torch_state_dict),
        (TypedDict, "__setitem__", _typed_setitem),
        (TypedDict, "__getitem__", _typed_getitem),
        (TypedDict, "__delitem__", _typed_delitem),
        (TypedDict, "__iter__", _typed_iter),
        (TypedDict, "__len__", _typed_len),
        (TypedDict, "__contains__", _typed_contains),
        (TypedDict, "keys", _typed_keys),
        (TypedDict, "values", _typed_values),
        (TypedDict, "items", _typed_items),
        (RecordDict, "array_records", property(_array_records)),
        (RecordDict, "metric_records", property(_metric_records)),
        (RecordDict, "config_records", property(_config_records)),
        *((m, "aggregate_arrayrecords", aggregate_arrayrecords) for m in _strategy_modules()),
    ]


def install() -> None:
    """Install the fast record layer (idempotent); used as is in worker processes we own."""
    _ensure_lazy_data()
    if _saved:
        return
    for owner, name, new in _patches():
        _saved.append((owner, name, vars(owner)[name]))
        setattr(owner, name, new)


def uninstall() -> None:
    """Restore Flower's originals (lazy arrays stay valid: ``Array.data`` stays a property)."""
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


@contextmanager
def fast_array_codec(enabled: bool = True) -> Iterator[None]:
    """Use lazy payloads inside the ``with`` block (nested blocks are fine)."""
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
