"""``FastGrid``: a Flower ``Grid`` that delivers messages straight to an executor.

This module owns message delivery for the fast engine. Flower's simulation routes every
message through a link-state database, a thread that sweeps *all* nodes for work every
0.1 s, one Ray call per message and a ServerApp-side poll every 0.1 s. Measured on the
cross-device workload (1,000 nodes, 10 per round) that is ~0.3 s per round, of which the
ClientApps use ~20 ms. ``FastGrid`` keeps the ``Grid`` contract that Flower strategies use
(``get_node_ids``, ``Message(...)``/``create_message``, ``push_messages``/``pull_messages``,
``send_and_receive``) and hands each batch of messages to an ``Executor`` in one call, then
returns the replies in the order the messages were sent (deterministic).

Nodes are virtual: ids ``NODE_ID_BASE + i`` for partition ``i``; their ``Context`` objects
live in a ``ContextStore`` (lazy, memory proportional to stored state only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import count
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.app.user_config import UserConfig
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from .contexts import ContextStore
from .executors import Executor
from .worker import Job, Outcome, error_reply

logger = logging.getLogger(__name__)

#: Node ids are ``NODE_ID_BASE + partition index``: stable, and far from partition ids so
#: that code mixing up node ids and partition ids fails in tests rather than in deployment.
NODE_ID_BASE = 1_000_000_000


class FastGrid(Grid):
    """Grid over ``num_nodes`` virtual nodes served by an ``Executor``.

    ``node_configs[i]`` is node ``i``'s ``context.node_config`` (default:
    ``{"partition-id": i, "num-partitions": num_nodes}``, as in Flower's simulation);
    ``run_config`` becomes every client's ``context.run_config``.
    """

    def __init__(
        self,
        executor: Executor,
        num_nodes: int,
        *,
        run: Run,
        run_config: UserConfig | None = None,
        node_configs: Sequence[UserConfig] | None = None,
        state_budget_bytes: int | None = None,
        spill_dir: str | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if node_configs is not None and len(node_configs) != num_nodes:
            raise ValueError(f"{len(node_configs)} node_configs for {num_nodes} nodes")
        self._executor = executor
        self._num_nodes = num_nodes
        self._node_configs = node_configs
        self._run = run
        self.contexts = ContextStore(
            run.run_id,
            run_config or {},
            self._node_config,
            budget_bytes=state_budget_bytes,
            spill_dir=spill_dir,
        )
        self._pending: dict[str, Message] = {}
        self._streaming = False
        # message ids as the SuperLink would set them: unique within the run, UUID-shaped (a
        # random prefix per grid and a counter: a uuid4 per message costs a syscall)
        self._id_prefix = str(uuid4())[:24]
        self._id_counter = count()
        self.stats = {"messages": 0, "batches": 0, "execute_s": 0.0}

    # -- nodes ---------------------------------------------------------------------------

    def node_id(self, partition: int) -> int:
        """Node id of partition ``partition``."""
        return NODE_ID_BASE + partition

    def partition_of(self, node_id: int) -> int:
        """Partition index of ``node_id`` (the node -> partition mapping)."""
        return node_id - NODE_ID_BASE

    def has_node(self, node_id: int) -> bool:
        """Whether ``node_id`` is one of this grid's nodes."""
        return 0 <= node_id - NODE_ID_BASE < self._num_nodes

    def get_node_ids(self) -> Iterable[int]:
        """All node ids (a ``range``: constant memory for any population)."""
        return range(NODE_ID_BASE, NODE_ID_BASE + self._num_nodes)

    def _node_config(self, node_id: int) -> UserConfig:
        """A fresh copy of the node's ``node_config`` (created on demand, never stored)."""
        i = self.partition_of(node_id)
        if self._node_configs is not None:
            return dict(self._node_configs[i])
        return {PARTITION_ID_KEY: i, NUM_PARTITIONS_KEY: self._num_nodes}

    # -- run -----------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        """Set the run (its id is what every context and message carries)."""
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        self._run = run

    @property
    def run(self) -> Run:
        """A copy of the run information."""
        return Run(**vars(self._run))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Deprecated in Flower in favour of ``Message(...)``; kept for older ServerApps."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    # -- delivery ------------------------------------------------------------------------

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver messages now; their replies wait for ``pull_messages``."""
        ids, replies = self._deliver(messages, deadline=None)
        self._pending.update((r.metadata.reply_to_message_id, r) for r in replies)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies to the given message ids that are available (each returned once)."""
        out = []
        for mid in message_ids:
            reply = self._pending.pop(mid, None)
            if reply is not None:
                out.append(reply)
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver a batch and return the replies that arrive within ``timeout`` seconds.

        Replies come in the order of ``messages``; a message whose ClientApp raised gets an
        error reply; a message not processed in time gets none (as in Flower).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._streaming:
            return self._stream(messages, deadline)
        _, replies = self._deliver(messages, deadline)
        return replies

    @contextmanager
    def streaming_replies(self) -> Iterator[None]:
        """While active, ``send_and_receive`` returns a one-shot iterator instead of a list:
        each client runs when its reply is asked for (in message order; with Ray, the batch
        runs at the first request). A consumer that folds replies into a sum — the round
        rules' streaming mean — then holds one reply at a time, not the whole cohort's."""
        self._streaming = True
        try:
            yield
        finally:
            self._streaming = False

    def snapshot_states(self) -> dict[int, RecordDict]:
        """Every node's ``context.state`` that holds something, by partition index."""
        return {self.partition_of(n): s for n, s in self.contexts.snapshot().items()}

    def restore_states(self, states: dict[int, RecordDict]) -> None:
        """Give nodes back the states of :meth:`snapshot_states` (resuming a run)."""
        bad = [p for p in states if not self.has_node(self.node_id(p))]
        if bad:
            raise ValueError(f"states for partitions {bad[:5]} that this grid does not have")
        self.contexts.restore({self.node_id(p): s for p, s in states.items()})

    def close(self) -> None:
        """Release the context store's spill files."""
        self.contexts.close()

    # -- internals -----------------------------------------------------------------------

    def _deliver(
        self, messages: Iterable[Message], deadline: float | None
    ) -> tuple[list[str], list[Message]]:
        """Validate and id the messages, run them as one batch, store contexts."""
        ids, jobs = self._jobs(messages)
        if not jobs:
            return ids, []
        return ids, list(self._replies(jobs, lambda: self._executor.execute(jobs, deadline)))

    def _stream(self, messages: Iterable[Message], deadline: float | None) -> Iterator[Message]:
        """Validate the messages now; run each one when its reply is asked for."""
        _, jobs = self._jobs(messages)
        if not jobs:
            return iter(())
        return self._replies(jobs, lambda: self._executor.iter_execute(jobs, deadline))

    def _jobs(self, messages: Iterable[Message]) -> tuple[list[str], list[Job]]:
        """Validate and id the messages; one job each (a node's messages share its context)."""
        jobs: list[Job] = []
        ids: list[str] = []
        batch_contexts: dict[int, Job] = {}
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = self._new_id()
            self._check_message(msg)
            dst = msg.metadata.dst_node_id
            if not self.has_node(dst):
                logger.error("Invalid destination node ID for Message: %s (dropped)", dst)
                continue
            # Messages to the same node in one batch share one context object.
            earlier = batch_contexts.get(dst)
            ctx = earlier.context if earlier is not None else self.contexts.get(dst)
            job = Job(msg, ctx)
            batch_contexts[dst] = job
            jobs.append(job)
            ids.append(msg.metadata.message_id)
        return ids, jobs

    def _replies(
        self, jobs: list[Job], run: Callable[[], Iterable[Outcome | None]]
    ) -> Iterator[Message]:
        """Replies to ``jobs`` from the outcomes ``run`` produces, contexts stored on the way."""
        self.stats["batches"] += 1
        self.stats["messages"] += len(jobs)
        t0 = time.perf_counter()
        outcomes = iter(run())
        for job in jobs:
            outcome = next(outcomes)
            self.stats["execute_s"] += time.perf_counter() - t0
            if outcome is not None:  # None: not processed before the deadline, no reply
                reply = outcome.reply
                if outcome.context is not None:
                    reply = self._store_context(job, outcome.context, reply)
                reply.metadata.__dict__["_message_id"] = self._new_id()
                yield reply
                del reply  # the consumer's now: not kept while the next client runs
            del outcome
            t0 = time.perf_counter()

    def _store_context(self, job: Job, ctx: Context, reply: Message) -> Message:
        """Keep the updated context; refuse (like Flower) one whose run_config changed."""
        if ctx.run_config != self.contexts.run_config:
            ex = ValueError(
                "The `run_config` field of the `Context` object cannot be modified "
                f"(node {ctx.node_id})."
            )
            logger.error("%s", ex)
            return error_reply(job.message, ErrorCode.UNKNOWN, ex)
        self.contexts.put(ctx.node_id, ctx)
        return reply

    def _new_id(self) -> str:
        """A new message id (``xxxxxxxx-xxxx-4xxx-xxxx-`` + 12 hex digits)."""
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    @staticmethod
    def _check_message(message: Message) -> None:
        """Reject what Flower's in-memory grid rejects (replies, expired TTLs, ...)."""
        md = message.metadata
        if not (md.message_id != "" and md.reply_to_message_id == "" and md.ttl > 0):
            raise ValueError(f"Invalid message: {message}")
