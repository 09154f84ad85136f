"""The warm ClientApp worker against a SuperNode's real Runtime API (served in this process),
and the one-line refusals of the worker and the SuperNode launcher."""

from __future__ import annotations

import hashlib
import io
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_tree,
    iterate_object_tree,
)
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.main import create_app
from flwr.supernode.nodestate import NodeState, NodeStateFactory

from fedwon.deploy import supernode, worker
from fedwon.deploy.network import free_ports
from fedwon.deploy.worker import RuntimeApi, ServedApp, Worker, source_digests

NODE_ID = 7
Capture = pytest.CaptureFixture[str]
PYPROJECT = '[tool.flwr.app.components]\nclientapp = "{app}"\nserverapp = "x:app"\n'


def fab(files: dict[str, bytes]) -> Fab:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, content in files.items():
            bundle.writestr(name, content)
    content = buffer.getvalue()
    return Fab(hashlib.sha256(content).hexdigest(), content, {})


class Node:
    """A SuperNode's state and Runtime API, without the SuperLink: tasks are put in by hand."""

    def __init__(self, state: NodeState, address: str) -> None:
        self.state = state
        self.address = address

    def add_run(self, run_id: int, bundle: Fab) -> None:
        run = Run.create_empty(run_id)
        run.fab_hash, run.series_id = bundle.hash_str, run_id
        self.state.store_run(run)
        self.state.store_fab(bundle)
        context = Context(run_id, NODE_ID, {}, RecordDict(), {})
        self.state.set_run_series_context(run_id, context)

    def send(self, run_id: int, fail: bool = False) -> str:
        """Queue a train message of ``run_id`` and its ClientApp task, as the SuperNode does."""
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
        config = ConfigRecord({"fail": fail})
        message = Message(RecordDict({"config": config}), dst_node_id=NODE_ID, message_type="train")
        message.metadata.__dict__["_message_id"] = message.object_id
        self.state.store_message(message)
        store = self.state.object_store
        store.preregister(run_id, get_object_tree(message))
        for object_id, obj in get_all_nested_objects(message).items():
            store.put(object_id, obj.deflate())
        task = self.state.create_task(
            TaskType.CLIENT_APP, run_id, self.state.get_run(run_id).fab_hash
        )  # type: ignore[union-attr]
        assert task is not None
        return message.object_id

    def replies(self, count: int, timeout: float = 60) -> dict[str, Message]:
        """The first ``count`` replies, by the message they answer (once all their objects are
        in: a reply is stored before the worker pushes its contents)."""
        pending: list[Message] = []
        found: dict[str, Message] = {}
        store = self.state.object_store
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            pending += self.state.get_messages(is_reply=True)
            for reply in list(pending):
                tree = store.get_object_tree(reply.metadata.message_id)
                contents = {t.object_id: store.get(t.object_id) for t in iterate_object_tree(tree)}
                if all(contents.values()):
                    pending.remove(reply)
                    found[reply.metadata.reply_to_message_id] = inflate_object_from_contents(
                        reply.metadata.message_id,
                        contents,  # type: ignore[arg-type]
                    )
            time.sleep(0.05)
        assert len(found) == count, f"{len(found)} replies of {count}"
        return found

    def count(self, run_id: int) -> object:
        context = self.state.get_run_series_context(run_id)
        assert context is not None
        record = context.state.config_records.get("count")
        return None if record is None else record["n"]


@contextmanager
def runtime_api() -> Iterator[Node]:
    factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    state = factory.state()
    state.set_node_id(NODE_ID)
    port = free_ports(1)[0]
    app = create_app(state_factory=factory)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield Node(state, f"127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serving(node: Node) -> Iterator[Worker]:
    running = Worker(RuntimeApi(node.address), ServedApp("echo_app:app"), poll=0.01)
    thread = threading.Thread(target=running.serve, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.stop.set()
        thread.join(30)


def test_one_worker_runs_every_task_and_answers_a_failure_with_flowers_error_reply() -> None:
    app_bundle = fab({"pyproject.toml": PYPROJECT.format(app="echo_app:app").encode()})
    other_bundle = fab({"pyproject.toml": PYPROJECT.format(app="other:app").encode()})
    with runtime_api() as node:
        node.add_run(1, app_bundle)
        node.add_run(2, app_bundle)
        node.add_run(3, other_bundle)
        first, failing, third = node.send(1), node.send(1, fail=True), node.send(1)
        other_run = node.send(2)
        refused = node.send(3)
        with serving(node) as running:
            replies = node.replies(5)
        assert running.served == 5
    assert replies[first].content.metric_records["metrics"]["n"] == 1
    error = replies[failing].error
    assert error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "asked to fail" in error.reason
    # the failed message left the run's Context as it was: the third message counts 2
    assert replies[third].content.metric_records["metrics"]["n"] == 2
    assert node.count(1) == 2
    # another run starts from its own, empty Context
    assert replies[other_run].content.metric_records["metrics"]["n"] == 1
    assert replies[refused].error.code == ErrorCode.LOAD_CLIENT_APP_EXCEPTION
    assert "--isolation subprocess" in replies[refused].error.reason


def test_a_bundle_with_other_sources_of_the_package_is_refused(tmp_path: Path) -> None:
    served = ServedApp("fedwon.client_app:app")
    pyproject = PYPROJECT.format(app="fedwon.client_app:app").encode()
    root = Path(sys.modules["fedwon"].__file__ or "").parent
    same = {name: (root.parent / name).read_bytes() for name in served.sources}
    assert served.refusal(fab({"pyproject.toml": pyproject, **same})) is None
    assert served.refusal(fab({"pyproject.toml": pyproject})) is None  # imports the installed one
    changed = {**same, "fedwon/client_app.py": b"app = None\n"}
    reason = served.refusal(fab({"pyproject.toml": pyproject, **changed}))
    assert reason is not None and "fedwon/client_app.py" in reason
    assert "another version of 'fedwon'" in reason
    module = tmp_path / "solo.py"
    module.write_text("x = 1\n")
    assert source_digests(module, "solo") == {"solo.py": hashlib.sha256(b"x = 1\n").hexdigest()}


def one_line_exit(main: Callable[[list[str]], None], argv: list[str], capsys: Capture) -> str:
    """The one line ``main(argv)`` prints before exiting with status 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--poll", "0"], "--poll must be a number of seconds in (0, 60], got 0"),
        (["--runtime-api-address", "localhost"], "--runtime-api-address must be HOST:PORT"),
        (["--app", "no_such_module:app"], "cannot import the ClientApp's module"),
        (["--app", "fedwon.client_app:nothing"], "is not a flwr ClientApp"),
    ],
)
def test_bad_worker_settings_are_one_line(args: list[str], message: str, capsys: Capture) -> None:
    line = one_line_exit(worker.main, args, capsys)
    assert line.startswith("fedwon worker: ") and message in line


def test_bad_supernode_settings_are_one_line(tmp_path: Path, capsys: Capture) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    cases = [
        (["--poll-interval", "-1"], "--poll-interval must be a number of seconds in (0, 60]"),
        (["--node-config", "partition-id=-1"], "--node-config: node config 'partition-id'"),
        (["--node-config", "partition-id=x"], "--node-config: The provided configuration string"),
        (["--node-config", f'state-dir="{blocked}/x"'], "cannot be written"),
        (
            ["--isolation", "process", "--ssl-certfile", "c.pem", "--ssl-keyfile", "k"],
            "--ssl-certfile needs --ssl-ca-certfile",
        ),
    ]
    for args, message in cases:
        ours, flower, _ = supernode.parse(args)
        with pytest.raises(
            supernode.LaunchError, match=message.replace("(", r"\(").replace("]", r"\]")
        ):
            supernode.check(ours, flower)
    line = one_line_exit(supernode.main, ["--poll-interval", "nan"], capsys)
    assert line.startswith("fedwon supernode: --poll-interval must be")


def test_the_supernode_polls_at_the_interval_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    supernode.set_poll_interval(0.3)
    loop.time.sleep(3)  # the loop's wait after an empty poll
    loop.time.sleep(0.5)  # its wait for the ClientApp's reply
    assert slept == pytest.approx([0.3, 0.05])
    assert loop.time.monotonic is time.monotonic  # everything else is the real module
    backoff = loop.pull_objects.keywords  # type: ignore[attr-defined]
    assert backoff == pytest.approx({"initial_backoff": 0.1, "backoff_cap": 1.0})
