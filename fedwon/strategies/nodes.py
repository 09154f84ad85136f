"""Which connected nodes a round samples from, when real nodes die, stall and come back.

In simulation every node is always there. On real SuperNodes Flower's SuperLink lists a node
as connected until it has missed its heartbeats for ``HEARTBEAT_PATIENCE`` x 30 s (60 s in
Flower 1.39, not configurable), so a node killed or frozen mid-round is still listed, and
sampled, for up to a minute after it stopped answering. :class:`NodeTracker` remembers the
nodes that let a round time out and leaves them out of sampling for that window (each one then
costs at most one ``round_timeout``, not one per round), logs each node once when it is lost
and once when it is back, and :class:`NodeView` shows an inner strategy only the nodes chosen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE
from flwr.serverapp import Grid

from fedwon.engine.proxy import GridProxy

# How long a node that missed a deadline is left out: the SuperLink's own window for declaring
# it offline. Later, a node still (or again) listed has sent heartbeats: it is alive.
UNRESPONSIVE_S = float(HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL)


class NodeView(GridProxy):
    """``grid`` as an inner strategy samples it: only ``nodes`` are connected.

    A fixed list, not a live one, so the node count Flower's sampling reads twice (to size the
    sample, then to wait for it) cannot change in between and leave it waiting for a node that
    just died.
    """

    def __init__(self, grid: Grid, nodes: Sequence[int]) -> None:
        super().__init__(grid)
        self.nodes = list(nodes)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)


class NodeTracker:
    """Nodes that missed a deadline (left out of sampling for :data:`UNRESPONSIVE_S`) and nodes
    logged as lost (logged again, once, when they are back)."""

    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.suspects: dict[int, float] = {}  # node id -> when it missed a deadline
        self.lost: set[int] = set()
        self._previous: Sequence[int] | None = None

    def available(self, server_round: int, nodes: Sequence[int], floor: int) -> Sequence[int]:
        """The connected ``nodes`` a round may sample: all but those that missed a deadline in
        the last :data:`UNRESPONSIVE_S`, unless that leaves fewer than ``floor`` (then they get
        another chance rather than the round failing for want of nodes). ``nodes`` itself,
        unchanged, when nobody is left out (the simulation's case: no copy, no set)."""
        self._note_departures(server_round, nodes)
        chosen = nodes
        if self.suspects:
            now, listed = self.clock(), set(nodes)
            for node, since in list(self.suspects.items()):
                if node not in listed or now - since >= UNRESPONSIVE_S:
                    del self.suspects[node]  # gone (the SuperLink took over) or alive again
            kept = [n for n in nodes if n not in self.suspects]
            if len(kept) < len(nodes) and len(kept) >= floor:
                chosen = kept
        if self.lost:
            sampled = set(chosen)
            for node in sorted(self.lost & sampled):
                self.log.info("round %d: node %d is back and sampled again", server_round, node)
                self.lost.discard(node)
        return chosen

    def missed(self, server_round: int, phase: str, nodes: Iterable[int], timeout: float) -> None:
        """``nodes`` sent no reply within ``timeout``: leave them out for a while, log each once."""
        now = self.clock()
        for node in nodes:
            self.suspects[node] = now
            if node not in self.lost:
                self.lost.add(node)
                self.log.warning(
                    "round %d %s: node %d sent no reply within round_timeout=%g s (dead or "
                    "stalled): left out of sampling for %g s, then sampled again if the "
                    "SuperLink still (or again) lists it",
                    server_round,
                    phase,
                    node,
                    timeout,
                    UNRESPONSIVE_S,
                )

    def _note_departures(self, server_round: int, nodes: Sequence[int]) -> None:
        """Log once each node that is no longer connected (and was not already logged)."""
        previous, self._previous = self._previous, nodes  # kept as given: no copy per phase
        if previous is None or (len(previous) <= len(nodes) and not self.lost):
            return  # the common case: nobody left (a swap of nodes is caught at its return)
        listed = set(nodes)
        for node in sorted(n for n in previous if n not in listed and n not in self.lost):
            self.lost.add(node)
            self.log.warning(
                "round %d: node %d is no longer connected; rounds go on with the %d connected "
                "nodes",
                server_round,
                node,
                len(nodes),
            )
