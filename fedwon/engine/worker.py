"""Running ClientApp messages inside one process (the driver or a Ray actor).

This module owns what happens to a message once it has reached a process that holds the
ClientApp: loading the ClientApp by reference (``"module:attr"``), giving Flower's
``TaskIdentity`` the values Flower's runtime would set (so ``Message(...)`` works in user
code), giving each client its own copy of the message's records (Flower serializes every
message, so one client never sees another's tampering), calling the ClientApp, and turning
any exception into the error reply Flower sends
(``Error(CLIENT_APP_RAISED_EXCEPTION)``), so a faulty client never hangs or kills a run.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from .fastarrays import clone_array_record, lazy_snapshots

logger = logging.getLogger(__name__)

ClientAppRef = ClientApp | str


class ClientAppLoadError(ImportError):
    """The ``client_app`` reference cannot be imported or is not a ``ClientApp``."""


@dataclass(slots=True)
class Job:
    """One instruction message and the destination node's context."""

    message: Message
    context: Context


@dataclass(slots=True)
class Outcome:
    """What one job produced: the reply, and the updated context (None if the app raised)."""

    reply: Message
    context: Context | None


def load_client_app(ref: ClientAppRef) -> ClientApp:
    """Resolve ``"package.module:attr"`` (or pass a ``ClientApp`` through), clearly failing.

    Ray workers import the ClientApp this way instead of unpickling closures from the
    driver's ``__main__``, which is what breaks Flower runs started from scripts.
    """
    if isinstance(ref, ClientApp):
        return ref
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ClientAppLoadError(
            f"client_app must be a ClientApp or a 'module:attribute' string, got {ref!r}"
        )
    module_name, attr_path = ref.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as ex:
        raise ClientAppLoadError(
            f"Cannot import module {module_name!r} of client_app {ref!r}: {ex}"
        ) from ex
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ClientAppLoadError(f"Module {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    if not isinstance(obj, ClientApp):
        raise ClientAppLoadError(f"{ref!r} is a {type(obj).__name__}, not a flwr ClientApp")
    return obj


def find_app_reference(app: ClientApp) -> str | None:
    """The ``"module:attr"`` under which ``app`` is importable, if any (not ``__main__``).

    Lets ``run_fast`` accept a ClientApp object and still have Ray workers import it by
    reference; the defining module is found through the app's registered functions.
    """
    funcs: dict[str, Any] = getattr(app, "_registered_funcs", {})
    modules = {getattr(fn, "__module__", None) for fn in funcs.values()}
    for module_name in sorted(m for m in modules if m and m != "__main__"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, value in vars(module).items():
            if value is app:
                return f"{module_name}:{name}"
    return None


@contextmanager
def task_identity(run_id: int, node_id: int, task_id: int = 1) -> Iterator[None]:
    """Set Flower's process-wide ``TaskIdentity`` for the duration of a task, then restore.

    Outside Flower's runtime these are unset and ``Message(...)`` raises; the engine sets
    them for the ServerApp (node ``SUPERLINK_NODE_ID``) and for every client message.
    """
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task_id, run_id, node_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def isolated_message(message: Message) -> Message:
    """A copy of ``message`` whose records can be mutated without touching the original.

    Strategies send one shared ``RecordDict`` to every node. Each client gets its own
    records and ``Array`` objects; array values are shared, which is safe because they are
    never written (``.npy`` bytes, or the engine's read-only payloads: ``fastarrays``) and
    ``Array.numpy()`` hands out copies. Microseconds instead of a deep copy per client.
    """
    if not message.has_content():
        return message
    content = RecordDict()
    for key, record in message.content.items():
        content[key] = isolated_record(record)
    # what ``Message(content=content, metadata=...)``, Flower's internal constructor path,
    # stores, without re-checking arguments that come from a valid message
    new = object.__new__(Message)
    new.__dict__.update(_metadata=_copy_metadata(message.metadata), _content=content, _error=None)
    return new


def _copy_metadata(metadata: Metadata) -> Metadata:
    """A shallow copy of ``metadata`` (all its fields are immutable values), without the
    ``copy.copy`` machinery: the per-message cost shows in profiles at 1,000s of messages."""
    new = object.__new__(Metadata)
    new.__dict__.update(metadata.__dict__)
    return new


def isolated_record(record: ArrayRecord | MetricRecord | ConfigRecord) -> Any:
    """A copy of one record that shares nothing mutable with ``record``."""
    if isinstance(record, ArrayRecord):
        return clone_array_record(record)
    new = record.copy()
    data = new.__dict__["_data"]
    for key, value in data.items():
        if isinstance(value, list):  # config/metric values may be lists: copy those
            data[key] = list(value)
    return new


def error_reply(message: Message, code: int, ex: BaseException) -> Message:
    """An error reply worded like Flower's simulation engine words it."""
    reason = str(type(ex)) + ":<'" + str(ex) + "'>"
    return Message(Error(code=code, reason=reason), reply_to=message)


class ClientRunner:
    """Runs jobs one after the other with one loaded ClientApp.

    Lives in the driver (in-process executor) or in a long-lived Ray actor, so the
    ClientApp's per-process caches (model, data) are built once and reused by every client.
    """

    def __init__(self, app: ClientAppRef) -> None:
        self.app = load_client_app(app)

    def run_one(self, job: Job) -> Outcome:
        """Call the ClientApp on one message; exceptions become error replies."""
        msg, ctx = isolated_message(job.message), job.context
        md = msg.metadata
        try:
            # ``task_identity``, inline (a generator context manager per client shows)
            saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = (
                1,
                md.run_id,
                md.dst_node_id,
            )
            try:
                reply = self.app(msg, ctx)
            finally:
                TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
            if not isinstance(reply, Message):
                raise TypeError(f"ClientApp returned {type(reply).__name__}, not a Message")
        except Exception as ex:
            # the error reply carries the failure to the ServerApp, which reports it (once,
            # on one line); the traceback is for debugging
            logger.debug(
                "ClientApp raised on node %s (%s):\n%s",
                ctx.node_id,
                msg.metadata.message_type,
                traceback.format_exc(),
            )
            wrapped = ClientAppException(f"{type(ex).__name__}: {ex}")
            return Outcome(error_reply(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, wrapped), None)
        return Outcome(reply, ctx)

    def run_batch(self, jobs: Sequence[Job], time_budget: float | None) -> list[Outcome | None]:
        """Run jobs in order until ``time_budget`` seconds have passed (None: no limit).

        Jobs not started before the budget ran out get ``None`` (no reply, like a Flower
        message that timed out); a job that finishes late is still returned.
        """
        return list(self.iter_batch(jobs, time_budget))

    def iter_batch(
        self, jobs: Sequence[Job], time_budget: float | None, *, streamed: bool = False
    ) -> Iterator[Outcome | None]:
        """:meth:`run_batch`, one job per request (the budget starts now).

        ``streamed``: each reply is expected to be consumed (folded into a sum) and dropped
        before the next job is asked for, so replies snapshot the ClientApp's tensors
        copy-on-write instead of copying them (``fastarrays.lazy_snapshots``): no copy at
        all when the reply is gone by the time the next client writes its model, one copy
        (by torch, at that write) when it is not.
        """
        deadline = None if time_budget is None else time.monotonic() + time_budget

        def outcomes() -> Iterator[Outcome | None]:
            for job in jobs:
                if deadline is not None and time.monotonic() >= deadline:
                    yield None
                    continue
                saved = lazy_snapshots(streamed)
                try:
                    outcome = self.run_one(job)
                finally:
                    lazy_snapshots(saved)
                yield outcome
                del outcome  # the consumer's now: not held while the next client runs

        return outcomes()
