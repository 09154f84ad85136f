"""Every name a message or reply carries: record names, metric keys, config keys set by
strategies and wrappers, and node-config keys.

The bottom of fedwon's layers: it imports nothing from fedwon, so the packages that build or
read messages (strategies, privacy, engine, the apps) all name keys from here, never as
literals. :mod:`fedwon.protocol` re-exports them beside what a message's config carries.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array

# ---- record names ---------------------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the shared model arrays (message and train reply)
CONFIG = "config"  # ConfigRecord: ClientConfig + Flower's keys (message)
METRICS = "metrics"  # MetricRecord: train or evaluate metrics (reply)
CLIENT = "client"  # ConfigRecord: who replied (reply)

# ---- keys in records ------------------------------------------------------------------------
WEIGHT_KEY = "num-examples"  # MetricRecord: the reply's aggregation weight
PARTITION_KEY = "partition-id"  # CLIENT record: the replying client's partition
DOMAIN_KEY = "domain"  # CLIENT record: the replying client's domain name
ROUND_KEY = "server-round"  # CONFIG record, set by Flower's strategies
PROXIMAL_MU_KEY = "proximal-mu"  # CONFIG record, set by Flower's FedProx
CLIP_NORM_KEY = "dp-clip-norm"  # CONFIG record, set by CentralDP(placement="client")
CLIPPING_KEY = "dp-clipping"  # flat | per_layer
SPLIT_KEY = "dp-split"  # uniform | dim
# train MetricRecord under DP: epsilon spent after the round. Sample level (DP-SGD): each reply
# carries its client's own epsilon and the round's aggregate is the max over its clients.
EPSILON_METRIC = "epsilon"
CLIPPED_METRIC = "clipped_fraction"  # train MetricRecord under DP: share of updates clipped
CLIP_NORM_METRIC = "clip_norm"  # train MetricRecord, adaptive clipping: the round's bound C_t
# train reply MetricRecord, set by dp_clipping_mod: 1 if clipping left the update untouched
UNCLIPPED_KEY = "dp-unclipped"
TRAIN_LOSS = "train_loss"
ACCURACY = "accuracy"
LOSS = "loss"

# ---- node config keys (``flower-supernode --node-config``) ----------------------------------
NODE_PARTITION = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DATA_ROOT = "data-root"
NODE_DATASET = "dataset"
NODE_DOMAIN = "domain"
NODE_THREADS = "threads"
NODE_DEVICE = "device"
NODE_STATE_DIR = "state-dir"  # where the node keeps its clients' states (fedwon.clients.node_state)
NODE_KEYS = (
    NODE_PARTITION,
    NODE_NUM_PARTITIONS,
    NODE_DATA_ROOT,
    NODE_DATASET,
    NODE_DOMAIN,
    NODE_THREADS,
    NODE_DEVICE,
    NODE_STATE_DIR,
)

# ---- run config keys (``flwr run --run-config``) that a client reads -------------------------
RUN_OUT_KEY = "out"  # the server's run directory: the run's identity, kept when it is resumed


def as_array(values: np.ndarray) -> Array:
    """An Array of ``values`` with their dtype and shape (0-d stays 0-d: ``np.ascontiguousarray``
    would make BatchNorm's 0-d counter (1,), which a client's reply then does not match)."""
    values = np.asarray(values)
    return Array(values if values.flags.c_contiguous else np.ascontiguousarray(values))
