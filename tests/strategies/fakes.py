"""A Grid that answers messages with a function, and reply builders, for strategy tests.

Flower strategies call only ``get_node_ids`` and ``send_and_receive``; ``Message(...)`` needs
Flower's task identity set, as inside its runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
BASE = 100  # node id of partition 0


class FakeGrid:
    """``n`` nodes (ids BASE + partition); ``respond(message, partition)`` makes each reply, or
    returns None for a node that never answers (dead or stalled: the timeout passes). Tests may
    change ``ids``, the connected nodes, between rounds."""

    def __init__(
        self, n: int, respond: Callable[[Message, int], Message | None] | None = None
    ) -> None:
        self.ids = list(range(BASE, BASE + n))
        self.respond = respond
        self.sent: list[list[Message]] = []

    def get_node_ids(self) -> Iterable[int]:
        return self.ids

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        batch = list(messages)
        self.sent.append(batch)
        assert self.respond is not None
        replies = [self.respond(m, m.metadata.dst_node_id - BASE) for m in batch]
        return [r for r in replies if r is not None]


def train_reply(
    msg: Message, pid: int, arrays: dict[str, np.ndarray], n: int = 10, loss: float = 1.0
) -> Message:
    """What fedwon's ClientApp answers to a train message."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n, "train_loss": loss}),
            "client": ConfigRecord({"partition-id": pid, "domain": f"d{pid % 2}"}),
        }
    )
    return Message(content, reply_to=msg)


def eval_reply(msg: Message, pid: int, accuracy: float, n: int = 10) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord({"accuracy": accuracy, "loss": 1.0, "num-examples": n}),
            "client": ConfigRecord({"partition-id": pid, "domain": f"d{pid % 2}"}),
        }
    )
    return Message(content, reply_to=msg)


def error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(code=0, reason=reason), reply_to=msg)
