"""Client-side clipping for central DP: a ClientApp mod, so no unclipped update leaves a client.

``ClientApp(mods=[dp_clipping_mod])`` pairs with ``CentralDP(..., placement="client")``, which
puts the clip settings into the train ConfigRecord (the shape of Flower's ``fixedclipping_mod``
and ``DifferentialPrivacyClientSideFixedClipping``, with per-layer clipping). The mod runs the
app, computes the update ``reply - received`` exactly as the server would
(:mod:`fedwon.privacy.updates`), clips it with :func:`fedwon.privacy.clip_update` and replies
``received + clipped update``, reporting in its metrics whether the clipping left the update
untouched (``dp-unclipped``: 1 or 0), which adaptive clipping counts (the server sees only the
clipped update).

Messages without the settings pass through untouched, so one ClientApp serves DP and non-DP
runs alike; a server expecting clipped replies refuses one that is not (``ClientClippingError``).
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedwon.common.records import CLIP_NORM_KEY, CLIPPING_KEY, METRICS, SPLIT_KEY, UNCLIPPED_KEY
from fedwon.privacy.clipping import clip_tensors_
from fedwon.privacy.updates import apply_update, arrays_of, update_tensors

log = logging.getLogger(__name__)


def _clip_settings(content: RecordDict) -> tuple[float, str, str] | None:
    """(clip_norm, clipping, split) from whichever ConfigRecord carries them, or None."""
    for record in content.config_records.values():
        if CLIP_NORM_KEY in record:
            return (
                float(record[CLIP_NORM_KEY]),  # type: ignore[arg-type]
                str(record.get(CLIPPING_KEY, "flat")),
                str(record.get(SPLIT_KEY, "uniform")),
            )
    return None


def _error_reply(msg: Message, reason: str) -> Message:
    log.error("%s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this client's update (flat or per layer) before the reply leaves the node."""
    settings = _clip_settings(msg.content) if msg.has_content() else None
    if settings is None or msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, context)
    clip_norm, clipping, split = settings
    received_records = list(msg.content.array_records.items())
    if len(received_records) != 1:
        return _error_reply(msg, "dp_clipping_mod expects exactly one ArrayRecord to train on")
    received = arrays_of(received_records[0][1])

    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    records = list(reply.content.array_records.items())
    if len(records) != 1:
        return _error_reply(msg, "dp_clipping_mod expects exactly one ArrayRecord in the reply")
    key, record = records[0]
    try:
        update = update_tensors(record, received, "this client")
        factors = clip_tensors_(list(update.values()), clip_norm, clipping, split)
    except ValueError as err:
        return _error_reply(msg, f"dp_clipping_mod: {err}")
    reply.content[key] = apply_update(received, update)
    metrics = next(iter(reply.content.metric_records.values()), None)
    if metrics is None:
        metrics = reply.content[METRICS] = MetricRecord()
    metrics[UNCLIPPED_KEY] = int(bool((factors >= 1.0).all()))
    return reply
