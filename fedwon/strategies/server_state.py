"""The server optimizer state of a strategy stack, for checkpoints.

Flower's stateful aggregators keep their state in plain attributes: FedAdam/FedYogi/FedAdagrad
(``m_t``, ``v_t``: dicts of arrays), FedAvgM (``momentum_vector``: a list of arrays). Without
them a resumed run restarts the server optimizer and no longer equals an uninterrupted one.
This module flattens those attributes of every strategy in a wrapper chain (wrappers hold the
next one in ``.strategy``, as Flower's DP wrappers and :class:`RoundRules` do) into named
arrays, and puts them back.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import Strategy

#: Attributes that hold server optimizer state in Flower's (and fedwon's) aggregators.
STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector")


def strategy_chain(strategy: Strategy) -> list[Strategy]:
    """``strategy`` and every strategy it wraps, outermost first."""
    chain = [strategy]
    while isinstance(getattr(chain[-1], "strategy", None), Strategy):
        chain.append(chain[-1].strategy)  # type: ignore[attr-defined]
    return chain


def snapshot_server_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """Named copies of every optimizer-state array: ``<depth>/<attribute>/<key or #index>``."""
    flat: dict[str, np.ndarray] = {}
    for depth, s in enumerate(strategy_chain(strategy)):
        for attr in STATE_ATTRIBUTES:
            value = getattr(s, attr, None)
            if isinstance(value, dict):
                flat.update({f"{depth}/{attr}/{k}": np.array(v) for k, v in value.items()})
            elif isinstance(value, list):
                flat.update({f"{depth}/{attr}/#{i}": np.array(v) for i, v in enumerate(value)})
    return flat


def restore_server_state(strategy: Strategy, flat: dict[str, np.ndarray]) -> None:
    """Put a :func:`snapshot_server_state` back into a freshly built strategy of the same stack."""
    chain = strategy_chain(strategy)
    values: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, array in flat.items():
        level, attr, key = name.split("/", 2)
        if int(level) >= len(chain) or attr not in STATE_ATTRIBUTES:
            raise ValueError(f"checkpoint server state {name!r} does not fit this strategy stack")
        values.setdefault((int(level), attr), {})[key] = array
    for (depth, attr), entries in values.items():
        if all(k.startswith("#") for k in entries):
            state: object = [entries[f"#{i}"] for i in range(len(entries))]
        else:
            state = entries
        setattr(chain[depth], attr, state)
