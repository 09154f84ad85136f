"""fedwon's warm ClientApp worker: one long-lived process that runs a SuperNode's messages.

With ``flower-supernode --isolation subprocess`` (Flower's default) the SuperNode's SuperExec
starts a fresh ``flwr-clientapp`` process for every message, which imports Python, torch and
fedwon and loads the client's data again each time (5-10 s here, for a round that trains in
0.1 s). With ``--isolation process`` the SuperNode leaves running ClientApps to a process
started beside it; this is one. It

- asks the SuperNode's Runtime API for a ClientApp task every ``poll`` seconds (``AcquireTask``,
  as ``flower-superexec`` does), and runs each task in this process as ``flwr-clientapp --token``
  would: it pulls the message, the node's ``Context`` and the app bundle (FAB) with the task's
  token, calls the ClientApp, then pushes the reply and the updated ``Context``. The ``Context``
  is Flower's, per run: nothing of one run's state reaches another;
- keeps warm what is not run state: the interpreter, torch (its first optimizer's one-time
  imports paid at start), fedwon's ClientApp, and fedwon's
  per-process workspace (model, optimizer and the node's data, built once per training setup
  and reset for every message: :mod:`fedwon.clients.workspace`);
- answers a message whose ClientApp raises with Flower's error reply (what ``flwr-clientapp``
  sends), leaves the node's ``Context`` as it was, logs the traceback and serves the next one.

The ClientApp is the one imported at start (``fedwon.client_app:app``), not the bundle's copy
that ``flwr-clientapp`` would import: a run whose bundle names another ClientApp, or carries
source files of its package that differ from the ones imported here, is refused message by
message with an error reply naming the files (install the same fedwon on the node, or use
``--isolation subprocess``). With ``--parent-pid`` (its SuperNode) it exits when that process
is gone. Run ``python -m fedwon.deploy.worker --help``; :mod:`fedwon.deploy.supernode` starts it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import logging
import os
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from logging import DEBUG, ERROR, INFO, WARNING
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, NoReturn

import httpx
from flwr.app import Context, Error, Message
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import RetryInvoker
from flwr.supercore.retry.retry_invoker import exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from fedwon.deploy.errors import check_seconds

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_APP = "fedwon.client_app:app"
POLL_S = 0.1  # between two AcquireTask calls: a loopback HTTP call, ~1 ms of CPU each
CALL_RETRY_S = 30.0  # how long one Runtime API call of a task retries a transport error
# A task is handed out as soon as its message arrives, while the SuperNode still downloads the
# message's arrays: the pull waits for them in steps from 0.05 to 0.5 s (Flower's: 1 to 10 s,
# which a process that starts in seconds never meets, but a warm one always would).
PULL_BACKOFF_S = (0.05, 0.5)
PARENT_CHECK_S = 0.5
WAITING_NOTE_S = 30.0  # silence before "the Runtime API does not answer", and between two
NAME = "fedwon worker"


class WorkerError(Exception):
    """A bad setting of the worker: one line, said before it serves anything."""


class RuntimeApi:
    """How to reach the SuperNode's Runtime API (plain HTTP on loopback, or HTTPS)."""

    def __init__(self, address: str, root_certificates: str | None = None) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise WorkerError(f"--runtime-api-address must be HOST:PORT, got {address!r}")
        if root_certificates is not None and not Path(root_certificates).is_file():
            raise WorkerError(f"--root-certificates {root_certificates}: no such file")
        self.address = address
        self.root_certificates = root_certificates

    def client(self, token: str | None = None, retry: bool = False) -> RuntimeHttpClient:
        """A client of the API; with ``token`` it acts for that task, as flwr-clientapp."""
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.root_certificates is None,
            root_certificates=self.root_certificates,
            interceptors=interceptors,
            retry_invoker=_call_retry() if retry else None,
        )


def _call_retry() -> RetryInvoker:
    """Retry a task's call through a brief outage, give up on anything else at once. (Flower's
    own HTTP retry signals its process on a refused token: it would stop the whole worker.)"""

    def give_up(err: Exception) -> bool:
        return isinstance(err, httpx.HTTPStatusError) and err.response.status_code not in (
            httpx.codes.SERVICE_UNAVAILABLE,
            httpx.codes.GATEWAY_TIMEOUT,
        )

    return RetryInvoker(
        wait_gen_factory=lambda: exponential(base_delay=0.2, max_delay=2),
        recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None,
        max_time=CALL_RETRY_S,
        should_giveup=give_up,
    )


def source_digests(root: Path, top: str) -> dict[str, str]:
    """``{path in the bundle: sha256}`` of the Python sources of the package (or module) ``top``
    found at ``root`` (its directory, or its ``.py`` file)."""
    if root.is_file():
        return {f"{top}.py": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        f"{top}/{p.relative_to(root).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


class ServedApp:
    """The ClientApp this worker serves, imported once, and which runs' bundles it may serve."""

    def __init__(self, ref: str) -> None:
        module_name, _, attribute = ref.partition(":")
        if not module_name or not attribute:
            raise WorkerError(f"--app must be MODULE:ATTRIBUTE, got {ref!r}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise WorkerError(
                f"cannot import the ClientApp's module {module_name!r}: {err}"
            ) from None
        app: Any = module
        for name in attribute.split("."):
            app = getattr(app, name, None)
        if not isinstance(app, ClientApp):
            raise WorkerError(f"{ref!r} is not a flwr ClientApp")
        self.ref = ref
        self.app: ClientApp = app
        self.top = module_name.split(".")[0]
        self.sources = source_digests(_source_root(sys.modules[self.top]), self.top)
        self._verdicts: dict[str, str | None] = {}

    def refusal(self, fab: Fab) -> str | None:
        """Why this worker must not run the app bundle ``fab`` (None: it may), once per bundle.

        ``flwr-clientapp`` would import the bundle's own copy of the package: this worker runs
        a bundle only if that copy (when it holds one) is the code imported here."""
        if fab.hash_str not in self._verdicts:
            self._verdicts[fab.hash_str] = self._judge(fab.content)
        return self._verdicts[fab.hash_str]

    def _judge(self, content: bytes) -> str | None:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            names = bundle.namelist()
            pyproject = tomllib.loads(bundle.read("pyproject.toml").decode())
            ref = pyproject.get("tool", {}).get("flwr", {}).get("app", {})
            ref = ref.get("components", {}).get("clientapp")
            if ref != self.ref:
                return (
                    f"the run's app names the ClientApp {ref!r} but this {NAME} serves "
                    f"{self.ref!r}: start the SuperNode with --isolation subprocess"
                )
            bundled = {
                n: hashlib.sha256(bundle.read(n)).hexdigest()
                for n in names
                if n == f"{self.top}.py" or (n.startswith(f"{self.top}/") and n.endswith(".py"))
            }
        if bundled and bundled != self.sources:
            differ = sorted({p for p, _ in set(bundled.items()) ^ set(self.sources.items())})
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            return (
                f"the run's app bundle holds another version of {self.top!r} than this {NAME} "
                f"imported ({', '.join(differ[:3])}{more} differ): install the same version "
                "on this node, or start the SuperNode with --isolation subprocess"
            )
        return None


def _source_root(module: ModuleType) -> Path:
    path = Path(module.__file__ or "")
    return path.parent if hasattr(module, "__path__") else path


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Fab]:
    """The task's message, the node's Context and the app bundle: what ``flwr-clientapp``'s
    ``pull_task_input`` does (flwr.supernode.runtime.run_clientapp), waiting less between two
    pulls of a message's arrays that are not in yet (:data:`PULL_BACKOFF_S`)."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        max_tries_per_object=None,  # bounded by Flower's max_time (2 h), as its own pulls
        initial_backoff=PULL_BACKOFF_S[0],
        backoff_cap=PULL_BACKOFF_S[1],
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as flwr-clientapp sets it
    return message, context, fab_from_proto(res.fab)


def warm_up() -> float:
    """Pay now what a process's first training pays (its seconds): torch imports
    ``torch._dynamo`` when the first optimizer is built, 1.5-4 s here."""
    start = time.monotonic()
    if "torch" in sys.modules:
        import torch

        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    return time.monotonic() - start


def _heartbeat(client: RuntimeHttpClient) -> Callable[[], bool]:
    """Keep the task's token alive. Unlike Flower's own heartbeat, a task the SuperNode no
    longer knows does not signal this process (it would stop the worker, not the task)."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            if not client.SendTaskHeartbeat(request).success:
                log(WARNING, "%s: the SuperNode no longer expects this task's reply", NAME)
        except Exception:  # an HTTP error, or a broken answer
            return False  # retried by the sender, with backoff
        return True

    return beat


class Worker:
    """Acquire the SuperNode's ClientApp tasks and run them in this process, one at a time."""

    def __init__(self, api: RuntimeApi, app: ServedApp, poll: float = POLL_S) -> None:
        self.api = api
        self.app = app
        self.poll = poll
        self.stop = threading.Event()
        self.served = 0

    def serve(self) -> None:
        """Run tasks until :attr:`stop` is set (or the process is signalled)."""
        acquirer = self.api.client()
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        waiting_since: float | None = None
        noted = 0.0
        try:
            while not self.stop.is_set():
                try:
                    response = acquirer.AcquireTask(request)
                except httpx.HTTPError as err:  # not up yet, or gone (then the parent is too)
                    now = time.monotonic()
                    waiting_since = waiting_since or now
                    if now - waiting_since >= WAITING_NOTE_S and now - noted >= WAITING_NOTE_S:
                        noted = now
                        log(
                            WARNING,
                            "%s: the Runtime API at %s has not answered for %.0f s (%s)",
                            NAME,
                            self.api.address,
                            now - waiting_since,
                            err,
                        )
                    self.stop.wait(min(1.0, 10 * self.poll))
                    continue
                if waiting_since is not None:
                    waiting_since, noted = None, 0.0
                    log(DEBUG, "%s: connected to the Runtime API at %s", NAME, self.api.address)
                if response.HasField("task") and response.token:
                    self.run_task(response.token)
                else:
                    self.stop.wait(self.poll)
        finally:
            acquirer.close()

    def run_task(self, token: str) -> bool:
        """Run one task as ``flwr-clientapp --token`` does; whether its ClientApp succeeded."""
        start = pulled = ran = time.monotonic()
        client = self.api.client(token, retry=True)
        beats = self.api.client(token)
        heartbeat = HeartbeatSender(_heartbeat(beats))
        message: Message | None = None
        context: Context | None = None
        reply: Message | None = None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            heartbeat.start()
            message, context, fab = pull_task_input(client)
            pulled = time.monotonic()
            refused = self.app.refusal(fab)
            if refused is not None:
                raise LoadClientAppError(refused)
            reply = self.app.app(message=message, context=context)
            ran = time.monotonic()
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:  # the message fails, the worker serves the next one
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = str(type(err)) + ":<'" + str(err) + "'>"  # flwr-clientapp's wording
            if isinstance(err, LoadClientAppError):
                code, details = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, str(err)
                log(ERROR, "%s: %s", NAME, err)
            else:
                log(ERROR, "%s: the ClientApp raised an exception", NAME, exc_info=err)
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            # a failed message leaves the node's Context as it was (no half-written state)
            push_task_output(
                client, context if status == SubStatus.COMPLETED else None, status, details
            )
        except Exception as err:
            log(ERROR, "%s: could not hand the reply to the SuperNode: %s", NAME, err)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
            beats.close()
        self.served += 1
        kind = message.metadata.message_type if message is not None else "unread"
        run = message.metadata.run_id if message is not None else "?"
        outcome = "done" if status == SubStatus.COMPLETED else "failed"
        end = time.monotonic()
        log(
            INFO,
            "%s (pid %d): %s message of run %s %s in %.2f s (pull %.2f, app %.2f, reply %.2f)",
            NAME,
            os.getpid(),
            kind,
            run,
            outcome,
            end - start,
            pulled - start,
            max(ran - pulled, 0.0),
            end - max(ran, pulled),
        )
        return status == SubStatus.COMPLETED


def watch_parent(pid: int, on_gone: Callable[[], None]) -> threading.Thread:
    """Call ``on_gone`` once process ``pid`` has exited (a zombie counts as exited)."""

    def alive() -> bool:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat").read_text()
        except ProcessLookupError:
            return False
        except OSError:
            return True  # no /proc (not Linux): existence alone
        return stat[stat.rindex(")") + 2] != "Z"

    def watch() -> None:
        while alive():
            time.sleep(PARENT_CHECK_S)
        on_gone()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one would hit exit handlers
    raise SystemExit(0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fedwon.deploy.worker",
        description="Serve a SuperNode's ClientApp messages from one warm process (the "
        "SuperNode runs with --isolation process).",
    )
    p.add_argument(
        "--runtime-api-address",
        default="127.0.0.1:9094",
        help="the SuperNode's Runtime API, HOST:PORT (its --host and --port)",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--insecure", action="store_true", help="plain HTTP (the default; loopback only)"
    )
    tls.add_argument(
        "--root-certificates",
        help="CA certificate of a Runtime API served over HTTPS (the SuperNode's "
        "--ssl-ca-certfile)",
    )
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) ends")
    p.add_argument("--poll", type=float, default=POLL_S, help="seconds between task requests")
    p.add_argument("--app", default=DEFAULT_APP, help="the ClientApp served, MODULE:ATTRIBUTE")
    p.add_argument("--verbose", action="store_true", help="fedwon's DEBUG lines too")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # written to once warm
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        check_seconds("--poll", args.poll, WorkerError)
        if args.parent_pid is not None and args.parent_pid <= 0:
            raise WorkerError(f"--parent-pid must be a process id, got {args.parent_pid}")
        api = RuntimeApi(args.runtime_api_address, args.root_certificates)
        app = ServedApp(args.app)
    except WorkerError as err:
        print(f"{NAME}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)-8s: %(name)s: %(message)s"))
    fedwon_log = logging.getLogger("fedwon")
    fedwon_log.addHandler(handler)
    fedwon_log.setLevel(DEBUG if args.verbose else INFO)
    worker = Worker(api, app, args.poll)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.parent_pid is not None:

        def parent_gone() -> None:
            log(INFO, "%s: its SuperNode (pid %d) has exited: stopping", NAME, args.parent_pid)
            worker.stop.set()
            os.kill(os.getpid(), signal.SIGTERM)  # also ends a task in progress

        watch_parent(args.parent_pid, parent_gone)
    log(
        INFO,
        "%s (pid %d) serves %s for the Runtime API at %s (warmed up in %.1f s)",
        NAME,
        os.getpid(),
        app.ref,
        api.address,
        warm_up(),
    )
    if args.ready_fd is not None:  # the launcher starts the SuperNode now (fedwon.deploy.supernode)
        with contextlib.suppress(OSError):  # a launcher that no longer waits (a restart)
            os.write(args.ready_fd, b"1")
        os.close(args.ready_fd)
    try:
        worker.serve()
    except KeyboardInterrupt:
        pass
    finally:
        log(INFO, "%s (pid %d) stopped after %d messages", NAME, os.getpid(), worker.served)


if __name__ == "__main__":
    main()
