"""Flower's deployment Grid with a prompter wait for replies (a ServerApp on a SuperLink).

Flower 1.39's ``HttpGrid.send_and_receive`` (the Grid a ServerApp gets from a SuperLink) pushes
a round's messages, then pulls the replies every 3 s, a hard-coded wait
(``flwr/superlink/grid/http_grid.py``): a train or evaluate phase takes a multiple of 3 s however
fast the SuperNodes answer, at least 6 s per round with evaluation. :class:`PromptReplies` wraps
any Grid and does the same with its own ``push_messages``/``pull_messages`` (the Grid's public
API) every ``poll`` seconds; everything else is delegated. Each pull is one call to the
SuperLink on its own machine. Flower's simulation grid already polls at 0.1 s, the fast engine's
returns replies directly: neither needs it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.grid.grid import NodeInfo

from .proxy import GridProxy

POLL_S = 0.2


class PromptReplies(GridProxy):
    """``inner``, with ``send_and_receive`` pulling replies every ``poll`` seconds."""

    def __init__(self, inner: Grid, poll: float = POLL_S) -> None:
        super().__init__(inner)
        self.poll = poll

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """What Flower's ``send_and_receive`` does (all replies, or those in by ``timeout``
        seconds), pulling every ``poll`` seconds instead of every 3."""
        pending = set(self.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < end:
            pulled = list(self.pull_messages(pending))
            replies += pulled
            pending -= {m.metadata.reply_to_message_id for m in pulled}
            if not pending:
                break
            time.sleep(self.poll)
        return replies
