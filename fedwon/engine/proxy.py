"""``GridProxy``: a Flower ``Grid`` that hands every call to another Grid.

fedwon wraps the Grid a ServerApp gets to change one thing at a time: how often replies are
pulled (:class:`~fedwon.engine.replies.PromptReplies`), which nodes a strategy may sample
(:class:`fedwon.strategies.nodes.NodeView`, also the DP wrapper's eligible nodes). Each
subclasses this and overrides only that, so the forwarding of Flower's Grid contract is
written once, here: the engine is the lowest layer every wrapper may import.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class GridProxy(Grid):
    """``inner`` unchanged. ``get_nodes`` is Grid's own (built from :meth:`get_node_ids`),
    so a subclass that lists other nodes lists them there too."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)
