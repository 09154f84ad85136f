"""A client's model update as data: reply arrays minus the arrays it was sent, and back.

DP clips and noises *updates*, while Flower messages carry *weights*. Both the server-side DP
wrapper and the client-side clipping mod convert between the two here, so they agree on what
the update is:

* the layers are the floating-point entries of the ArrayRecord that was sent, in its order
  (one tensor = one layer, see :mod:`fedwon.privacy.clipping`);
* non-floating entries (BatchNorm's ``num_batches_tracked`` counters when a strategy shares
  them) carry no learned signal but do reveal how many batches a client ran, so they are not
  part of the release: every reply's value is replaced by the value that was sent.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


class UpdateMismatchError(ValueError):
    """A reply's arrays do not have the keys/shapes of the arrays that were sent."""


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Decode an ArrayRecord once into numpy arrays (by key, in order)."""
    return {key: array.numpy() for key, array in record.items()}


def is_learned(array: np.ndarray) -> bool:
    """Whether an entry is part of the update (floating point) or held fixed (counters)."""
    return bool(np.issubdtype(array.dtype, np.floating))


def update_tensors(
    reply: ArrayRecord, sent: Mapping[str, np.ndarray], who: str = "a client"
) -> dict[str, torch.Tensor]:
    """``reply - sent`` for every floating entry, as float32 tensors (freshly allocated)."""
    if set(reply.keys()) != set(sent.keys()):
        missing = sorted(set(sent) - set(reply.keys()))[:3]
        extra = sorted(set(reply.keys()) - set(sent))[:3]
        raise UpdateMismatchError(
            f"{who} replied with other arrays than it was sent (missing {missing}, "
            f"unexpected {extra}); a DP update needs exactly the keys that were sent"
        )
    update: dict[str, torch.Tensor] = {}
    for key, base in sent.items():
        if not is_learned(base):
            continue
        value = reply[key].numpy()
        if value.shape != base.shape:
            raise UpdateMismatchError(
                f"{who} replied with shape {value.shape} for {key!r}, sent {base.shape}"
            )
        if value.dtype != np.float32 or not value.flags.writeable:
            value = np.array(value, dtype=np.float32)  # a copy we may overwrite
        update[key] = torch.from_numpy(value).sub_(_float32_tensor(base))
    return update


def _float32_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 tensor view of ``array`` (a copy only if it has another dtype)."""
    if array.dtype == np.float32 and array.flags.writeable:
        return torch.from_numpy(array)
    return torch.tensor(array, dtype=torch.float32)


def apply_update(sent: Mapping[str, np.ndarray], update: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``sent + update`` as an ArrayRecord in ``sent``'s key order and dtypes.

    Entries without an update (non-floating ones) are the sent values.
    """
    out: dict[str, Array] = {}
    for key, base in sent.items():
        if key in update:
            value = base + update[key].numpy().astype(base.dtype, copy=False)
            out[key] = Array(np.ascontiguousarray(value))
        else:
            out[key] = Array(np.ascontiguousarray(base))
    return ArrayRecord(out)
