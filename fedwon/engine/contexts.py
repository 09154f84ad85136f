"""Per-node ``Context`` storage for the fast engine (driver side).

This module owns every virtual node's Flower ``Context`` between two messages. Flower's
simulation keeps one ``Context`` per node for the whole run; with 10,000 clients that is
10,000 objects created up front. Here contexts are created lazily on a node's first message,
and a context whose ``state`` is still empty after a message is *not* kept: it is rebuilt
identically (same ``node_config``, ``run_config``, empty ``state``) the next time that node is
sampled. Memory therefore grows only with what ClientApps store in ``context.state``
(FedBN's local layers, counters, ...), never with the population size.

Optionally, states past a byte budget are spilled to disk (least recently used first, one
pickle file per node) and loaded back when the node is sampled again.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.app.user_config import UserConfig

from .fastarrays import array_nbytes

logger = logging.getLogger(__name__)

NodeConfigFn = Callable[[int], UserConfig]


def state_nbytes(state: RecordDict) -> int:
    """Approximate in-memory size of a ``context.state`` (array payloads dominate).

    Exact sizes would need a pickle per message; this estimate only has to decide when to
    spill, so arrays count their byte payload and every scalar entry a flat 64 bytes.
    """
    total = 0
    for record in state.values():
        if isinstance(record, ArrayRecord):
            total += sum(array_nbytes(arr) for arr in record.values())
        elif isinstance(record, ConfigRecord | MetricRecord):
            for value in record.values():
                total += len(value) if isinstance(value, str | bytes) else 64
        else:  # pragma: no cover - RecordDict admits only the three record types
            total += 64
    return total


class ContextStore:
    """Lazily created, state-only-when-needed per-node ``Context`` objects.

    ``get`` returns the node's live context (creating or un-spilling it); ``put`` hands it
    back after a message and decides whether to keep it (non-empty state), drop it (empty
    state) or spill older states (over ``budget_bytes``).
    """

    def __init__(
        self,
        run_id: int,
        run_config: UserConfig,
        node_config_fn: NodeConfigFn,
        *,
        budget_bytes: int | None = None,
        spill_dir: str | Path | None = None,
    ) -> None:
        self._run_id = run_id
        self._run_config: UserConfig = dict(run_config)
        self._node_config_fn = node_config_fn
        self._budget = budget_bytes
        self._spill_root = Path(spill_dir) if spill_dir is not None else None
        self._spill_dir: Path | None = None
        self._live: OrderedDict[int, Context] = OrderedDict()  # LRU order: oldest first
        self._sizes: dict[int, int] = {}
        self._spilled: set[int] = set()
        self._total = 0

    @property
    def run_config(self) -> UserConfig:
        """The run config every context starts from (read-only by convention)."""
        return self._run_config

    def __len__(self) -> int:
        """Number of contexts held in memory (the ones with a non-empty state)."""
        return len(self._live)

    @property
    def num_spilled(self) -> int:
        """Number of node states currently on disk."""
        return len(self._spilled)

    @property
    def bytes_in_memory(self) -> int:
        """Estimated bytes of the states held in memory."""
        return self._total

    def get(self, node_id: int) -> Context:
        """The node's context: the live one, the spilled one loaded back, or a fresh one."""
        ctx = self._live.get(node_id)
        if ctx is not None:
            return ctx
        state = self._unspill(node_id) if node_id in self._spilled else RecordDict()
        return self._new_context(node_id, state)

    def put(self, node_id: int, context: Context) -> None:
        """Take back a context after a message: keep it only if its state holds something."""
        self._forget(node_id)
        if len(context.state) == 0:
            return
        size = state_nbytes(context.state)
        self._live[node_id] = context
        self._sizes[node_id] = size
        self._total += size
        self._spill_over_budget(keep=node_id)

    def snapshot(self) -> dict[int, RecordDict]:
        """Every stored node state (in memory or spilled), by node id: what a checkpoint saves.

        The states are the live objects (spilled ones loaded back); callers serialise them
        before the next message can change them.
        """
        states = {node_id: ctx.state for node_id, ctx in self._live.items()}
        states.update((node_id, self._unspill(node_id)) for node_id in self._spilled)
        return dict(sorted(states.items()))

    def restore(self, states: dict[int, RecordDict]) -> None:
        """Replace every stored state by ``states`` (a resumed run's checkpoint)."""
        for node_id in list(self._live) + list(self._spilled):
            self._forget(node_id)
        for node_id, state in states.items():
            self.put(node_id, self._new_context(node_id, state))

    def close(self) -> None:
        """Delete spilled files (the store is unusable for spilled nodes afterwards)."""
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None
        self._spilled.clear()

    # -- internals -----------------------------------------------------------------------

    def _new_context(self, node_id: int, state: RecordDict) -> Context:
        """Build the context Flower would have created for this node.

        ``run_config`` is copied per context so that a ClientApp mutating it cannot affect
        other nodes (and the change can be detected, as Flower does).
        """
        return Context(
            run_id=self._run_id,
            node_id=node_id,
            node_config=self._node_config_fn(node_id),
            state=state,
            run_config=dict(self._run_config),
        )

    def _forget(self, node_id: int) -> None:
        """Drop any stored copy of the node (live or spilled) before storing a new one."""
        old = self._live.pop(node_id, None)
        if old is not None:
            self._total -= self._sizes.pop(node_id)
        if node_id in self._spilled:
            self._spilled.discard(node_id)
            self._spill_path(node_id).unlink(missing_ok=True)

    def _spill_over_budget(self, keep: int) -> None:
        """Write least recently used states to disk until the budget holds again."""
        if self._budget is None:
            return
        while self._total > self._budget and self._live:
            node_id = next(iter(self._live))
            if node_id == keep and len(self._live) == 1:
                break  # one state larger than the budget: keep the one just used
            if node_id == keep:
                self._live.move_to_end(node_id)
                continue
            ctx = self._live.pop(node_id)
            self._total -= self._sizes.pop(node_id)
            with open(self._spill_path(node_id), "wb") as fh:
                pickle.dump(ctx.state, fh, protocol=pickle.HIGHEST_PROTOCOL)
            self._spilled.add(node_id)

    def _unspill(self, node_id: int) -> RecordDict:
        """Load a spilled state back (the file is removed when the context is put back)."""
        with open(self._spill_path(node_id), "rb") as fh:
            state: RecordDict = pickle.load(fh)
        return state

    def _spill_path(self, node_id: int) -> Path:
        """File holding one node's spilled state (directory created on first use)."""
        if self._spill_dir is None:
            if self._spill_root is not None:
                self._spill_root.mkdir(parents=True, exist_ok=True)
            self._spill_dir = Path(tempfile.mkdtemp(prefix="fedwon-ctx-", dir=self._spill_root))
            logger.info("Spilling client states past %s bytes to %s", self._budget, self._spill_dir)
        return self._spill_dir / f"{node_id}.pkl"
