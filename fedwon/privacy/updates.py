"""A client's model update as data: reply arrays minus the arrays it was sent, and back.

DP clips and noises *updates*, while Flower messages carry *weights*. Both the server-side DP
wrapper and the client-side clipping mod convert between the two here, so they agree on what
the update is:

* the layers are the floating-point entries of the ArrayRecord that was sent, in its order
  (one tensor = one layer, see :mod:`fedwon.privacy.clipping`);
* non-floating entries (BatchNorm's ``num_batches_tracked`` counters when a strategy shares
  them) carry no learned signal but do reveal how many batches a client ran, so they are not
  part of the release: every reply's value is replaced by the value that was sent, and
  :func:`hold_fixed` puts the sent value back after the inner strategy aggregated (a weighted
  mean turns an int64 counter into float64, which the next round would then take for a
  learned entry and clip and noise with the weights);
* every entry keeps the dtype and shape it was sent with (a 0-d counter stays 0-d: numpy's
  ``ascontiguousarray`` would make it shape ``(1,)``, which the client's reply does not match).

Floating buffers that are not trained by gradients (BatchNorm's running mean and variance)
*are* learned entries here: they are averages of a client's activations, so they are clipped
with the weights and noised like them (see docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedwon.common.records import as_array
from fedwon.engine.fastarrays import payload_view


class UpdateMismatchError(ValueError):
    """A reply's arrays do not have the keys/shapes of the arrays that were sent."""


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Decode an ArrayRecord once into numpy arrays (by key, in order)."""
    return {key: array.numpy() for key, array in record.items()}


def is_learned(array: np.ndarray) -> bool:
    """Whether an entry is part of the update (floating point) or held fixed (counters)."""
    return bool(np.issubdtype(array.dtype, np.floating))


def update_tensors(
    reply: ArrayRecord,
    sent: Mapping[str, np.ndarray],
    who: str = "a client",
    out: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """``reply - sent`` for every floating entry, as float32 tensors.

    Written into ``out`` (float32 CPU tensors by key, e.g. reused every round: fresh large
    arrays cost page faults) or into freshly allocated tensors.
    """
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
        value = payload_view(reply[key])  # the payload itself, or a view of the .npy bytes
        if value.shape != base.shape:
            raise UpdateMismatchError(
                f"{who} replied with shape {value.shape} for {key!r}, sent {base.shape}"
            )
        # one pass over the reply's bytes: decode and subtract
        if out is None:
            update[key] = torch.from_numpy(np.subtract(value, base, dtype=np.float32))
        else:
            np.subtract(value, base, out=out[key].numpy(), dtype=np.float32)
            update[key] = out[key]
    return update


def apply_update(sent: Mapping[str, np.ndarray], update: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``sent + update`` as an ArrayRecord in ``sent``'s key order and dtypes.

    Entries without an update (non-floating ones) are the sent values.
    """
    out: dict[str, Array] = {}
    for key, base in sent.items():
        if key in update:
            out[key] = as_array(base + update[key].numpy().astype(base.dtype, copy=False))
        else:
            out[key] = as_array(base)
    return ArrayRecord(out)


def hold_fixed(aggregated: ArrayRecord, sent: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``aggregated`` with every entry that is not learned put back to the value sent.

    The released replies already carry the sent counters, but the inner strategy's mean
    returns them as float64 (and a server optimizer could in principle move them): the
    global model must keep them exactly as they were, integer dtype and shape included, or
    the next round would count them as learned and the clients' replies would not match.
    """
    fixed = {key for key, base in sent.items() if not is_learned(base)}
    if not fixed:
        return aggregated
    return ArrayRecord(
        {key: as_array(sent[key]) if key in fixed else array for key, array in aggregated.items()}
    )
