"""Who trains in which round: ``participation`` (server section).

* ``uniform`` (default): Flower samples the round's cohort uniformly at random from the nodes
  (seeded by the round rules). User-level DP then accounts *amplification by sampling*: a
  client is in a round with probability q = m / N.
* ``cyclic``: the N clients are split into G = N / m fixed groups of m (node i of the sorted
  node ids is in group i mod G) and round t trains group (t - 1) mod G. Every client trains once
  every G rounds, never sooner -- the *minimum separation* DP-FTRL with banded matrix
  factorization (``dp.mechanism = "bandmf"``) needs for its sensitivity (a band of b <= G
  rounds never holds two participations of one client). Nothing is random, so there is no
  amplification by sampling: a mechanism accounted with one refuses this mode.

Evaluation is not affected (``fraction_evaluate`` samples as before). The groups are fixed by
the sorted node ids: stable in fedwon's fast engine (node ids follow the partitions), fixed for
one process with Flower's engine, whose node ids are drawn anew by each process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PARTICIPATION_MODES: tuple[str, ...] = ("uniform", "cyclic")
ParticipationMode = Literal["uniform", "cyclic"]


@dataclass(frozen=True)
class Participation:
    """The participation schedule of a run: ``mode``, the ``num_clients`` N and the
    ``cohort`` m trained per round. Cyclic needs m to divide N (equal groups: the noise and
    the average of a DP run are calibrated to m, and a short group would leave Flower's
    sampling waiting for clients it cannot have)."""

    mode: str = "uniform"
    num_clients: int = 1
    cohort: int = 1

    def __post_init__(self) -> None:
        if self.mode not in PARTICIPATION_MODES:
            raise ValueError(
                f"unknown participation {self.mode!r}; choose one of {list(PARTICIPATION_MODES)}"
            )
        if not 1 <= self.cohort <= self.num_clients:
            raise ValueError(
                f"need 1 <= clients per round <= num_clients, got {self.cohort} and "
                f"{self.num_clients}"
            )
        if self.cyclic and self.num_clients % self.cohort:
            divisors = [d for d in range(1, self.num_clients + 1) if self.num_clients % d == 0]
            near = sorted(divisors, key=lambda d: abs(d - self.cohort))[:2]
            raise ValueError(
                f"participation='cyclic' splits the {self.num_clients} clients into groups of "
                f"clients_per_round={self.cohort}, which must divide num_clients (e.g. "
                f"clients_per_round={' or '.join(str(d) for d in sorted(near))})"
            )

    @property
    def cyclic(self) -> bool:
        return self.mode == "cyclic"

    @property
    def groups(self) -> int:
        """G: the number of cyclic groups, N / m (0 for uniform sampling)."""
        return self.num_clients // self.cohort if self.cyclic else 0

    @property
    def min_separation(self) -> int:
        """The fewest rounds between two participations of one client: G under cyclic
        participation, 1 under uniform sampling (a client may be drawn in consecutive rounds)."""
        return self.groups if self.cyclic else 1

    def max_participations(self, rounds: int) -> int:
        """The most rounds of 1..``rounds`` one client can train in: ceil(rounds / G) under
        cyclic participation (group 0 trains first), ``rounds`` under uniform sampling."""
        return -(-rounds // self.min_separation)

    def group(self, server_round: int) -> int:
        """The group that trains in ``server_round`` (rounds count from 1)."""
        if not self.cyclic:
            raise ValueError("only cyclic participation has groups")
        return (server_round - 1) % self.groups

    def members(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        """The nodes of ``node_ids`` (all N of them) that train in ``server_round``."""
        nodes = sorted(node_ids)
        if len(nodes) != self.num_clients:
            raise ValueError(
                f"participation='cyclic' needs all {self.num_clients} nodes to place each in "
                f"its group; {len(nodes)} are connected"
            )
        group = self.group(server_round)
        return [node for i, node in enumerate(nodes) if i % self.groups == group]

    def describe(self) -> str:
        if not self.cyclic:
            return "uniform sampling"
        return (
            f"cyclic: {self.groups} groups of {self.cohort}, each trains every {self.groups} rounds"
        )
