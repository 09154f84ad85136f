"""Fakes for the DP strategy tests: a stub Grid, a small model's arrays, client replies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedwon.privacy import CentralDP


class StubGrid:
    """Only what Flower strategies call while configuring a round."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(100, 100 + n))

    def get_node_ids(self) -> Iterable[int]:
        return self.ids


def model_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A small 'model': conv weight + bias, fc weight, and an integer BN-style counter."""
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "conv.bias": np.zeros(8, np.float32),
        "fc.weight": rng.normal(size=(10, 32)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Arrays with their own dtypes and shapes (a 0-d counter stays 0-d)."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def client_delta(node: int, scale: float, template: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A deterministic update per node (floating entries only)."""
    rng = np.random.default_rng(1000 + node)
    return {
        k: (scale * rng.normal(size=v.shape)).astype(v.dtype)
        for k, v in template.items()
        if np.issubdtype(v.dtype, np.floating)
    }


def reply(
    instruction: Message,
    delta: dict[str, np.ndarray],
    num_examples: int = 10,
    counter: int = 99,
    loss: float = 1.0,
) -> Message:
    """What a client sends back: received arrays + delta (its counter changed to ``counter``).

    Like a real client, it loads what it received into *its own* model and replies with that
    model's tensors: the dtypes and shapes of :func:`model_arrays` (a 0-d int64 counter),
    whatever the server sent.
    """
    sent = {k: a.numpy() for k, a in instruction.content["arrays"].items()}
    model = model_arrays()
    new = {}
    for k, v in sent.items():
        own = model.get(k, v)  # arrays of other test 'models' keep what was sent
        value = v + delta[k] if k in delta else np.array(counter)
        new[k] = np.asarray(value).astype(own.dtype).reshape(own.shape)
    content = RecordDict(
        {
            "arrays": record(new),
            "metrics": MetricRecord({"num-examples": num_examples, "train_loss": loss}),
            "client": ConfigRecord({"partition-id": instruction.metadata.dst_node_id}),
        }
    )
    return Message(content, reply_to=instruction)


COHORT = 4


def fedavg(n: int = COHORT) -> FedAvg:
    return FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n
    )


def central_dp(inner: Any = None, **kwargs: Any) -> CentralDP:
    settings: dict[str, Any] = dict(
        noise_multiplier=0.0,
        clip_norm=1.0,
        expected_clients=COHORT,
        sample_rate=0.04,
        delta=1e-5,
        clipping="per_layer",
        split="uniform",
    )
    settings.update(kwargs)
    return CentralDP(inner or fedavg(), **settings)
