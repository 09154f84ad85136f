"""A node's own copy of its client's ``Context.state`` on its disk (node config ``state-dir``).

Flower keeps a SuperNode's ``Context.state`` in memory, for one run: a restarted SuperNode, or a
resumed run (a new ``flwr run``, hence a new, empty ``Context``), would restart FedBN's local
layers from the initial model and forget a DP-SGD client's step history. A node given a
``state-dir`` therefore also writes its client's state after every training round, as
``<state-dir>/<run key>/round-<r>.pb`` (Flower's protobuf encoding, as checkpoints: no pickle),
and a client whose ``Context.state`` is still empty continues from the latest round saved
*before* the round it is asked to train (or at the round it evaluates). So a resumed run
continues from exactly its checkpoint's round, even if the nodes had trained further before the
server stopped, and a SuperNode restarted mid-run continues from its last round.

The run key is a hash of the run's identity (the server's run directory, which a resumed run
writes to again; without one, Flower's run id), the client's partition and its training setup
(:meth:`~fedwon.protocol.ClientConfig.fingerprint`): state never crosses from one run to another.
Saving round ``r`` deletes the rounds ``>= r`` a previous attempt left behind; earlier rounds are
kept (any of them may be a checkpoint to resume from): a run's folder grows by the state's size
per round trained (FedBN's ``cnn``: 43 kB), and may be deleted once the run is finished.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

ROUND_FILE = re.compile(r"round-(\d+)\.pb")


class NodeStateDir:
    """The saved states of one client of one run, under a node's state directory ``root``."""

    def __init__(self, root: str | Path, run: str, partition: int, setup: str) -> None:
        key = hashlib.sha1(json.dumps([run, partition, setup]).encode()).hexdigest()[:16]
        self.path = Path(root) / key
        self.about = {"run": run, "partition": partition, "setup": setup}

    def rounds(self) -> list[int]:
        """The rounds saved, oldest first."""
        if not self.path.is_dir():
            return []
        found = (ROUND_FILE.fullmatch(p.name) for p in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def file(self, server_round: int) -> Path:
        return self.path / f"round-{server_round:06d}.pb"

    def save(self, state: RecordDict, server_round: int) -> None:
        """Keep ``state`` as the client's state after ``server_round`` (atomically: a reader
        never sees half a file); forget rounds from this one on saved by an earlier attempt."""
        self.path.mkdir(parents=True, exist_ok=True)
        about = self.path / "run.json"
        if not about.exists():
            about.write_text(json.dumps(self.about, indent=2) + "\n")
        for stale in self.rounds():
            if stale >= server_round:
                self.file(stale).unlink(missing_ok=True)
        part = self.file(server_round).with_suffix(".part")
        part.write_bytes(recorddict_to_proto(state).SerializeToString())
        part.replace(self.file(server_round))

    def load(self, before: int) -> tuple[int, RecordDict] | None:
        """The latest state saved before round ``before`` and its round, if any."""
        earlier = [r for r in self.rounds() if r < before]
        if not earlier:
            return None
        proto = ProtoRecordDict()
        proto.ParseFromString(self.file(earlier[-1]).read_bytes())
        return earlier[-1], recorddict_from_proto(proto)
