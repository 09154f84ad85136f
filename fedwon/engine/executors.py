"""Executors: where the fast engine runs ClientApp messages.

This module owns the two ways a batch of jobs (message + node context) is executed:

* ``InProcessExecutor`` runs them one after the other in the calling process — no Ray, no
  serialization.
* ``RayExecutor`` keeps a few long-lived Ray actors (one per ``cpus_per_client`` CPUs /
  ``gpus_per_client`` GPUs); each imports the ClientApp by reference once and runs many
  clients sequentially, so model, optimizer and data caches live as long as the actor. A
  batch costs *one* remote call per actor, not one per message, and content shared by many
  messages (the global model) is put in Ray's object store once per batch, not once per
  actor or message; there is no polling anywhere.

Contexts travel with the jobs and come back updated, so the driver stays the single owner of
client state: any actor can serve any node (balanced batches), and an actor that dies loses
nothing but the replies of the batch it was running (they become error replies).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message, Metadata, RecordDict
from flwr.common.constant import ErrorCode

from . import fastarrays
from .worker import ClientAppRef, ClientRunner, Job, Outcome, error_reply, find_app_reference

logger = logging.getLogger(__name__)

Results = list[Outcome | None]

#: Consecutive actor deaths tolerated before a run is failed instead of retried.
MAX_CONSECUTIVE_ACTOR_FAILURES = 3


class Executor(ABC):
    """Runs batches of jobs and returns one outcome per job (None: timed out)."""

    @property
    @abstractmethod
    def num_workers(self) -> int:
        """Number of parallel workers (0 for in-process)."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources before the first batch (so start-up is not billed to round 1)."""

    @abstractmethod
    def execute(self, jobs: Sequence[Job], deadline: float | None) -> Results:
        """Run ``jobs``; results align with ``jobs``; ``deadline`` is a ``time.monotonic``."""

    def iter_execute(self, jobs: Sequence[Job], deadline: float | None) -> Iterator[Outcome | None]:
        """The outcomes of ``jobs`` one at a time, in order (default: :meth:`execute`'s list)."""
        yield from self.execute(jobs, deadline)

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release whatever ``start`` acquired."""


# ---- in-process -------------------------------------------------------------------------


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class InProcessExecutor(Executor):
    """Runs every client sequentially in the calling thread (deterministic, zero IPC)."""

    def __init__(self, client_app: ClientAppRef) -> None:
        self._runner = ClientRunner(client_app)

    @property
    def num_workers(self) -> int:
        """In-process execution has no separate workers."""
        return 0

    def execute(self, jobs: Sequence[Job], deadline: float | None) -> Results:
        """Run the jobs in order; stop starting new ones once the deadline has passed."""
        return self._runner.run_batch(jobs, remaining(deadline))

    def iter_execute(self, jobs: Sequence[Job], deadline: float | None) -> Iterator[Outcome | None]:
        """Run each job when its outcome is asked for: nothing of a reply outlives its use."""
        return self._runner.iter_batch(jobs, remaining(deadline), streamed=True)


# ---- Ray --------------------------------------------------------------------------------


@dataclass(slots=True)
class WireJob:
    """A job as sent to an actor: the message without its content when the content is one
    of the batch's shared ``RecordDict`` objects (sent separately, once)."""

    metadata: Metadata
    slot: int  # index into the contents sent with the batch; -1: ``message`` is complete
    message: Message | None
    context: Context

    def to_job(self, contents: Sequence[RecordDict]) -> Job:
        """Rebuild the job on the actor side."""
        if self.slot < 0:
            assert self.message is not None
            return Job(self.message, self.context)
        msg = Message(content=contents[self.slot], metadata=self.metadata)  # type: ignore[call-overload]
        return Job(msg, self.context)


def to_wire(jobs: Sequence[Job]) -> tuple[list[WireJob], list[RecordDict]]:
    """Split jobs into wire jobs and the distinct contents they share (by identity)."""
    contents: list[RecordDict] = []
    slots: dict[int, int] = {}
    wire: list[WireJob] = []
    for job in jobs:
        msg = job.message
        if not msg.has_content():
            wire.append(WireJob(msg.metadata, -1, msg, job.context))
            continue
        slot = slots.setdefault(id(msg.content), len(contents))
        if slot == len(contents):
            contents.append(msg.content)
        wire.append(WireJob(msg.metadata, slot, None, job.context))
    return wire, contents


class _RayWorker:
    """Body of a Ray actor: a ``ClientRunner`` that stays alive for the whole run."""

    def __init__(self, client_app: ClientAppRef, log_level: int, fast_arrays: bool) -> None:
        logging.getLogger("fedwon").setLevel(log_level)
        if fast_arrays:
            fastarrays.install()  # this process is ours for its whole life
        self._runner = ClientRunner(client_app)

    def ready(self) -> dict[str, Any]:
        """Answer once the ClientApp is imported; reports what the actor sees."""
        return {
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def run(
        self, wire: list[WireJob], time_budget: float | None, *contents: RecordDict
    ) -> tuple[Results, float]:
        """Run one batch (one remote call per actor and batch); also return busy seconds.

        ``contents`` arrive resolved from Ray's object store (top-level arguments).
        """
        t0 = time.perf_counter()
        out = self._runner.run_batch([w.to_job(contents) for w in wire], time_budget)
        return out, time.perf_counter() - t0


@functools.lru_cache(maxsize=1)
def _ray_actor_class() -> Any:
    """The Ray actor class, built once (Ray exports a class definition per ``ray.remote``)."""
    import ray

    return ray.remote(_RayWorker)


def actors_that_fit(nodes: list[dict[str, Any]], cpus: float, gpus: float) -> int:
    """How many actors with (cpus, gpus) each fit the cluster, node by node (like Flower).

    A GPU request on nodes without GPUs fits zero actors — never a pending actor that waits
    forever for a GPU that does not exist.
    """
    total = 0
    for node in nodes:
        res = node.get("Resources") or {}
        if not node.get("Alive", True) or not res:
            continue
        fit = int(res.get("CPU", 0) / cpus) if cpus > 0 else sys.maxsize
        if gpus > 0:
            fit = min(fit, int(res.get("GPU", 0) / gpus))
        total += fit
    return 0 if total >= sys.maxsize else total


def ray_pythonpath() -> str:
    """This process's ``sys.path`` for Ray workers, so they import what the driver imports."""
    parts = [p for p in sys.path if p]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(dict.fromkeys(parts))


class RayExecutor(Executor):
    """Long-lived Ray actors, one batch per actor per round.

    ``num_actors=None`` starts as many actors as fit ``cpus_per_client``/``gpus_per_client``
    (one per CPU by default). Ray is initialised only if needed and shut down only if this
    executor initialised it. ``fast_arrays`` installs the fast record layer in the actors
    (``Array`` values kept as arrays, sent through Ray's object store as ndarrays; see
    ``fastarrays``).
    """

    def __init__(
        self,
        client_app: ClientAppRef,
        *,
        num_actors: int | None = None,
        cpus_per_client: float = 1.0,
        gpus_per_client: float = 0.0,
        ray_init_args: dict[str, Any] | None = None,
        fast_arrays: bool = True,
    ) -> None:
        self._app_ref: ClientAppRef = client_app
        self._fast_arrays = fast_arrays
        if not isinstance(client_app, str):
            ref = find_app_reference(client_app)
            if ref is None:
                logger.warning(
                    "The ClientApp is not importable by reference (defined in __main__?); "
                    "Ray will pickle it, which fails for closures over __main__. Pass a "
                    "'module:attr' string to be safe."
                )
            else:
                self._app_ref = ref
        self._num_actors = num_actors
        self._cpus = cpus_per_client
        self._gpus = gpus_per_client
        self._init_args = dict(ray_init_args or {})
        self._owns_ray = False
        self._actors: list[Any] = []
        self._failures: list[int] = []
        self.busy_s: list[float] = []  # seconds each actor spent running ClientApps
        self.actor_info: list[dict[str, Any]] = []

    @property
    def num_workers(self) -> int:
        """Number of live actors."""
        return len(self._actors)

    def start(self) -> None:
        """Initialise Ray if needed, create the actors and wait until they have the app."""
        import ray  # imported lazily: in-process runs never pay Ray's import

        if not ray.is_initialized():
            self._init_ray(ray)
        fit = actors_that_fit(ray.nodes(), self._cpus, self._gpus)
        if fit == 0:
            raise RuntimeError(
                f"No Ray node can host a client with num_cpus={self._cpus}, "
                f"num_gpus={self._gpus} (cluster: {ray.cluster_resources()}); lower "
                "cpus_per_client/gpus_per_client (gpus_per_client must be 0 without GPUs)."
            )
        wanted = fit if self._num_actors is None else self._num_actors
        if wanted > fit:
            logger.warning("Only %d actors fit the cluster; using %d, not %d", fit, fit, wanted)
            wanted = fit
        self._actors = [self._new_actor(ray) for _ in range(wanted)]
        self._failures = [0] * wanted
        self.busy_s = [0.0] * wanted
        try:
            self.actor_info = ray.get([a.ready.remote() for a in self._actors])
        except ray.exceptions.RayError as ex:
            raise RuntimeError(
                f"Ray actors could not load the ClientApp {self._app_ref!r}; its module must "
                "be importable on every Ray node (PYTHONPATH or runtime_env). Cause: "
                f"{ex}"
            ) from ex
        logger.info("Ray executor: %d actors ready", wanted)

    def execute(self, jobs: Sequence[Job], deadline: float | None) -> Results:
        """Split the jobs over the actors, one remote call each, and gather in job order."""
        import ray

        if not self._actors:
            raise RuntimeError("RayExecutor.execute called before start()")
        results: Results = [None] * len(jobs)
        plan = self._assign(jobs)
        budget = remaining(deadline)
        stored: dict[int, Any] = {}  # id(content) -> ObjectRef: each content put once
        refs = {}
        for a, idx in plan.items():
            wire, contents = to_wire([jobs[i] for i in idx])
            for c in contents:
                if id(c) not in stored:
                    stored[id(c)] = ray.put(c)
            content_refs = [stored[id(c)] for c in contents]
            refs[self._actors[a].run.remote(wire, budget, *content_refs)] = a
        ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=budget)
        for ref in ready:
            actor = refs[ref]
            try:
                outs: Results
                outs, busy = ray.get(ref)
                self.busy_s[actor] += busy
                self._failures[actor] = 0
            except ray.exceptions.RayError as ex:
                batch = [jobs[i] for i in plan[actor]]
                outs = self._on_actor_failure(ray, actor, batch, ex)
            for i, out in zip(plan[actor], outs, strict=True):
                results[i] = out
        for ref in not_ready:
            self._on_timeout(ray, refs[ref])
        return results

    def shutdown(self) -> None:
        """Kill the actors; shut Ray down only if this executor started it."""
        if not self._actors and not self._owns_ray:
            return
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    # -- internals -----------------------------------------------------------------------

    def _init_ray(self, ray: Any) -> None:
        """``ray.init`` quietly, without dashboard, workers seeing the driver's sys.path."""
        args: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": True,
        }
        args.update(self._init_args)
        runtime_env = dict(args.pop("runtime_env", None) or {})
        env_vars = dict(runtime_env.get("env_vars", {}))
        env_vars.setdefault("PYTHONPATH", ray_pythonpath())
        runtime_env["env_vars"] = env_vars
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's accelerator env-var tip
            ray.init(runtime_env=runtime_env, **args)
        self._owns_ray = True

    def _new_actor(self, ray: Any) -> Any:
        """One actor reserving this client's resources (Ray sets CUDA_VISIBLE_DEVICES)."""
        actor_cls = _ray_actor_class()
        level = logging.getLogger("fedwon").getEffectiveLevel()
        return actor_cls.options(num_cpus=self._cpus, num_gpus=self._gpus).remote(
            self._app_ref, level, self._fast_arrays
        )

    def _assign(self, jobs: Sequence[Job]) -> dict[int, list[int]]:
        """Job indices per actor: round-robin over nodes, a node's jobs kept together.

        Keeping all messages to one node in one actor (in order) lets the second see the
        context the first one updated, exactly as sequential delivery would.
        """
        by_node: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            by_node.setdefault(job.message.metadata.dst_node_id, []).append(i)
        plan: dict[int, list[int]] = {}
        for k, idx in enumerate(by_node.values()):
            plan.setdefault(k % len(self._actors), []).extend(idx)
        return plan

    def _on_actor_failure(
        self, ray: Any, actor: int, jobs: list[Job], ex: BaseException
    ) -> Results:
        """Error replies for a dead actor's batch; replace the actor or fail the run."""
        self._failures[actor] += 1
        logger.error("Ray actor %d failed (%s); its %d messages fail", actor, ex, len(jobs))
        if self._failures[actor] >= MAX_CONSECUTIVE_ACTOR_FAILURES:
            raise RuntimeError(
                f"Ray actor {actor} died {self._failures[actor]} times in a row; stopping "
                f"the run. Last error: {ex}"
            ) from ex
        if isinstance(ex, ray.exceptions.RayActorError):
            self._replace_actor(ray, actor)
        code = ErrorCode.CLIENT_APP_CRASHED
        return [Outcome(error_reply(j.message, code, ex), None) for j in jobs]

    def _on_timeout(self, ray: Any, actor: int) -> None:
        """An actor still busy at the deadline is replaced, so no later batch queues behind
        a ClientApp that may never return; its messages get no reply (Flower semantics)."""
        logger.warning("Ray actor %d missed the deadline; replacing it", actor)
        self._replace_actor(ray, actor)

    def _replace_actor(self, ray: Any, actor: int) -> None:
        """Kill an actor and start a fresh one in its slot."""
        ray.kill(self._actors[actor])
        self._actors[actor] = self._new_actor(ray)
