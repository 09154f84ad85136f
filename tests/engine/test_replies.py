"""A deployed ServerApp's Grid pulls replies every 0.2 s instead of Flower's 3 s, with the same
answer: every reply, or those in by the timeout."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from fedwon.engine.replies import PromptReplies


class SlowNodes:
    """A Grid whose replies arrive ``delay`` seconds after the push, one node after another."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pulls = 0
        self.pushed_at = 0.0

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        waited = time.monotonic() - self.pushed_at
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid))
            for mid in message_ids
            if waited >= self.delays[int(mid[1:])]
        ]


def test_every_reply_comes_back_as_soon_as_it_is_in() -> None:
    inner = SlowNodes([0.0, 0.3, 0.5])
    grid = PromptReplies(inner, poll=0.05)  # type: ignore[arg-type]
    start = time.monotonic()
    replies = list(grid.send_and_receive(["a", "b", "c"]))  # type: ignore[list-item]
    took = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert 0.5 <= took < 1.5  # Flower's own grid: 3 s
    assert inner.pulls >= 3


def test_a_timeout_returns_the_replies_in_by_then() -> None:
    grid = PromptReplies(SlowNodes([0.0, 30.0]), poll=0.05)  # type: ignore[arg-type]
    start = time.monotonic()
    replies = list(grid.send_and_receive(["a", "b"], timeout=0.3))  # type: ignore[list-item]
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert time.monotonic() - start < 2
