"""Where a client keeps the arrays the server never sees (FedBN's normalization layers).

They live in Flower's ``Context.state`` — the one per-client state Flower gives every node,
in its simulation engine, in fedwon's fast engine (which spills states past
``client_state_budget_mb`` to disk and snapshots them into checkpoints) and on real SuperNodes
(where it persists between the rounds of a run). Nothing is sent to or stored by the server.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

STATE_KEY = "fedwon.local"
OWNER_KEY = "fedwon.local.owner"  # which training setup the arrays belong to


def local_arrays(state: RecordDict, owner: str) -> dict[str, torch.Tensor] | None:
    """The local arrays a client state holds for the setup ``owner`` (the message config's
    :meth:`~fedwon.protocol.ClientConfig.fingerprint`), if any: what a client loads, and what
    reading a checkpoint's client states needs."""
    if STATE_KEY not in state.array_records:
        return None
    tag = state.config_records.get(OWNER_KEY)
    if tag is None or tag.get("tag") != owner:
        return None
    return dict(state.array_records[STATE_KEY].to_torch_state_dict())


class ContextStateStore:
    """A client's local arrays in ``context.state[STATE_KEY]`` as an ArrayRecord, tagged with
    the training setup (``owner``) they belong to."""

    def __init__(self, context: Context, owner: str) -> None:
        self.context = context
        self.owner = owner

    def load(self) -> dict[str, torch.Tensor] | None:
        """The arrays saved by this client's previous message of the run, if any."""
        return local_arrays(self.context.state, self.owner)

    def save(self, arrays: dict[str, torch.Tensor]) -> None:
        """Keep ``arrays`` (copied to the CPU: the context may be pickled or spilled)."""
        cpu = {k: v.detach().cpu() for k, v in arrays.items()}
        self.context.state[STATE_KEY] = ArrayRecord(cpu)
        self.context.state[OWNER_KEY] = ConfigRecord({"tag": self.owner})
