"""Real SuperLink + SuperNodes on loopback (gRPC Fleet API), driven like ``fedwon deploy local``.

The first test runs in the default suite (~40 s on a busy 2-core machine, most of it Flower's
start-up: a warm worker per SuperNode runs its messages); the others are marked slow.
"""

import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from loopback import SMALL, assert_nothing_left, fitted, run_config_for

from fedwon.config import make_config, read_recipe
from fedwon.deploy.certs import make_certificates
from fedwon.deploy.diagnose import supernode_exit
from fedwon.deploy.errors import DeployError
from fedwon.deploy.keys import make_node_key, make_node_keys
from fedwon.deploy.local import APP_DIR, LocalFederation, LocalResult, Node, deploy_local
from fedwon.deploy.plan import node_config
from fedwon.run.checkpoint import load_checkpoint
from fedwon.run.directory import RunDir
from fedwon.simulation import run_simulation

RESULT_FILES = ("config.toml", "metrics.jsonl", "summary.json", "per_domain.csv", "accuracy.png")


WORKER_LINE = re.compile(r"fedwon worker \(pid (\d+)\): (\w+) message of run \d+ (done|failed)")


def worker_messages(log: str) -> list[tuple[int, str, str]]:
    """``(pid, message type, outcome)`` of each message a SuperNode's warm worker ran."""
    return [(int(pid), kind, outcome) for pid, kind, outcome in WORKER_LINE.findall(log)]


def test_two_supernodes_with_warm_workers_equal_the_same_run_simulated(tmp_path: Path) -> None:
    events: list[str] = []
    overrides = [*SMALL, "eval_every=2"]  # one evaluation (the last round): 3 messages per node
    result = deploy_local(tmp_path / "run", 2, 2, overrides=overrides, on_event=events.append)
    out = result.out
    rows = RunDir(out).metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["clients"] == 2 and r["dropped"] == 0 for r in rows)
    assert rows[0]["accuracy"] is None
    assert rows[-1]["accuracy"] > 0.16  # seeded: 0.21 after two tiny rounds (chance 0.1)
    assert result.summary["strategy"] == "fedwon"
    assert set(result.summary["final"]["per_domain"]) == {"mnist", "mnist_m"}
    for name in RESULT_FILES:
        assert (out / name).stat().st_size > 0, name
    for i in range(2):  # each node: one warm worker ran its 2 trainings and 1 evaluation
        log = (out / "logs" / f"supernode-{i}.log").read_text()
        ran = worker_messages(log)
        assert [(kind, outcome) for _, kind, outcome in ran] == [
            ("train", "done"),
            ("train", "done"),
            ("evaluate", "done"),
        ]
        assert len({pid for pid, _, _ in ran}) == 1  # the same process every round
        assert log.count("warm ClientApp worker ready") == 1
        assert "Start `flwr-clientapp` process" not in log
        assert "--insecure" in log.splitlines()[0] and "--isolation process" in log.splitlines()[0]
    assert "[ROUND 2/2]" in (out / "logs" / "flwr-run.log").read_text()
    assert (out / "logs" / "superlink.log").exists()
    assert "round 2/2" in events
    assert len(result.round_s) == 2 and result.wall_s > result.run_s > sum(result.round_s) > 0
    assert_nothing_left(out, result.ports)
    # the same run simulated: the same numbers (same seeds, one thread per client both ways)
    cfg = make_config(read_recipe(out / "config.toml"))
    simulated = run_simulation(cfg.replace(engine="fast", num_workers=0), tmp_path / "sim")
    for deployed_row, sim_row in zip(rows, simulated.rows, strict=True):
        deployed_row.pop("time_s"), sim_row.pop("time_s")
        assert deployed_row == sim_row


@pytest.mark.slow
def test_subprocess_isolation_starts_a_clientapp_per_message_with_the_same_results(
    tmp_path: Path,
) -> None:
    overrides = [*SMALL, "eval_every=2"]
    result = deploy_local(tmp_path / "run", 2, 2, overrides=overrides, isolation="subprocess")
    for i in range(2):  # each SuperNode trained twice and evaluated once, each in a ClientApp
        log = (result.out / "logs" / f"supernode-{i}.log").read_text()
        assert log.count("Start `flwr-clientapp` process") == 3
        assert worker_messages(log) == []
    cfg = make_config(read_recipe(result.out / "config.toml"))
    simulated = run_simulation(cfg.replace(engine="fast", num_workers=0), tmp_path / "sim")
    for deployed_row, sim_row in zip(result.rows, simulated.rows, strict=True):
        deployed_row.pop("time_s"), sim_row.pop("time_s")
        assert deployed_row == sim_row
    assert_nothing_left(result.out, result.ports)


@pytest.mark.slow
def test_a_failing_node_gets_error_replies_from_the_same_worker_which_ends_with_its_supernode(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    cfg = fitted(2, "min_clients=1")
    with LocalFederation(root) as federation:
        federation.start_superlink()
        federation.start_node(0, node_config(cfg, 0, 2))
        broken = {**node_config(cfg, 1, 2), "dataset": "no-such-dataset"}  # fails every message
        bad = federation.start_node(1, broken)
        federation.run(APP_DIR, run_config_for(root, cfg), timeout=400)
        log = bad.process.log_text()
        ran = worker_messages(log)
        assert ran and all(outcome == "failed" for _, _, outcome in ran)
        assert len({pid for pid, _, _ in ran}) == 1  # the errors did not end the worker
        assert "the ClientApp raised an exception" in log and "no-such-dataset" in log
        worker = ran[0][0]
        os.kill(bad.process.pid, signal.SIGKILL)  # the SuperNode alone, not its worker
        deadline = time.monotonic() + 10
        while worker_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not worker_alive(worker), "the worker outlived its SuperNode"
        ports = federation.ports
    rows = RunDir(root).metrics()
    # node 1 failed its train and its evaluate message in both rounds
    assert [(r["clients"], r["dropped"]) for r in rows] == [(1, 2), (1, 2)]
    assert_nothing_left(root, ports)


def worker_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_two_deployments_side_by_side(tmp_path: Path) -> None:
    results: dict[str, object] = {}

    def deploy(name: str) -> None:
        try:
            results[name] = deploy_local(tmp_path / name, 1, 1, overrides=SMALL, timeout=500)
        except Exception as err:  # reported below, with the other run's outcome
            results[name] = err

    threads = [threading.Thread(target=deploy, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    a, b = results["a"], results["b"]
    assert isinstance(a, LocalResult) and isinstance(b, LocalResult), results
    assert not set(a.ports) & set(b.ports)
    for result in (a, b):
        assert [r["clients"] for r in result.rows] == [1]
        assert_nothing_left(result.out, result.ports)


@pytest.mark.slow
def test_the_same_run_over_tls(tmp_path: Path) -> None:
    result = deploy_local(tmp_path / "run", 2, 2, overrides=SMALL, tls=True)
    logs = result.out / "logs"
    ca = result.out / "deploy" / "certs" / "ca.crt"
    for i in range(2):
        command = (logs / f"supernode-{i}.log").read_text().splitlines()[0]
        assert f"--root-certificates {ca}" in command and "--insecure" not in command
    assert "--insecure" not in (logs / "superlink.log").read_text().splitlines()[0]
    assert [r["clients"] for r in result.rows] == [2, 2]
    assert_nothing_left(result.out, result.ports)


@pytest.mark.slow
def test_auth_refuses_an_unregistered_supernode_while_registered_ones_train(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    cfg = fitted(2)
    with LocalFederation(root, tls=True, auth=True) as federation:
        federation.start_superlink()
        keys = make_node_keys(root / "deploy" / "keys", 2)
        stranger = make_node_key(tmp_path / "elsewhere", "stranger")
        for key in keys:
            federation.register(key)
        intruder = federation.start_node(9, node_config(cfg, 0, 2), key=stranger, required=False)
        for i, key in enumerate(keys):
            federation.start_node(i, node_config(cfg, i, 2), key=key)
        federation.run(APP_DIR, run_config_for(root, cfg), timeout=600)
        ports = federation.ports
    assert intruder.process.exit_code is not None
    assert "Start `flwr-clientapp`" not in intruder.process.log_text()
    assert "public key is not registered" in supernode_exit(
        "supernode-9", 1, intruder.process.log, intruder.process.log_text()
    )
    assert [r["clients"] for r in RunDir(root).metrics()] == [2, 2]
    assert_nothing_left(root, ports)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mistake", "detail"), [("other CA", "TLS handshake failed"), ("no TLS", "attempts failed")]
)
def test_a_supernode_that_cannot_reach_a_tls_superlink_is_explained(
    tmp_path: Path, mistake: str, detail: str
) -> None:
    root = tmp_path / "run"
    other_ca = make_certificates(tmp_path / "other").ca_cert if mistake == "other CA" else None
    start = time.monotonic()
    with LocalFederation(root, tls=True) as federation:
        federation.start_superlink()
        values = node_config(fitted(1), 0, 1)
        federation.start_node(0, values, root_certificates=other_ca, insecure=other_ca is None)
        with pytest.raises(DeployError, match=r"^supernode-0 cannot connect") as caught:
            while time.monotonic() - start < 120:
                federation.check()
                time.sleep(0.5)
        ports = federation.ports
    message = str(caught.value)
    assert message.startswith("supernode-0 cannot connect to the SuperLink (")
    assert detail in message.split(":")[0]
    cause = "does not trust the SuperLink's certificate" if other_ca else "(not --insecure)"
    assert cause in message
    assert message.endswith(f"see {root / 'logs' / 'supernode-0.log'}")
    assert_nothing_left(root, ports)


def stop_when_training(node: Node, sig: signal.Signals) -> threading.Thread:
    """Send ``sig`` to a SuperNode and its ClientApp or warm worker (its process group) once it
    has received a train message."""

    def watch() -> None:
        while "Receiving: train message" not in node.process.log_text():
            time.sleep(0.2)
        os.killpg(node.process.pid, sig)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# round_timeout: well above an honest reply here (a ClientApp start plus Flower's 3 s polls),
# short enough that the run with a dead node stays a default-suite test
DEAD_NODE_RUN = ("eval_every=2", "round_timeout=30")


def test_killing_a_supernode_mid_run_leaves_the_survivor_to_finish(tmp_path: Path) -> None:
    root = tmp_path / "run"
    cfg = fitted(2, "min_clients=1", *DEAD_NODE_RUN)
    events: list[str] = []
    with LocalFederation(root) as federation:
        federation.start_superlink()
        federation.start_node(0, node_config(cfg, 0, 2))
        victim = federation.start_node(1, node_config(cfg, 1, 2))  # as deploy local starts it
        stop_when_training(victim, signal.SIGKILL)  # a crash: node and ClientApp vanish at once
        start = time.monotonic()
        federation.run(APP_DIR, run_config_for(root, cfg), timeout=400, on_event=events.append)
        elapsed = time.monotonic() - start
        ports = federation.ports
    assert victim.process.exit_code == -signal.SIGKILL
    assert any("supernode-1 exited (killed by SIGKILL" in e for e in events)
    rows = RunDir(root).metrics()
    # round 1: node 1 was asked and never answered (dropped after the timeout); round 2 went on
    # with the survivor alone, not waiting for the dead node
    assert [(r["round"], r["clients"], r["dropped"]) for r in rows] == [(1, 1, 1), (2, 1, 0)]
    assert rows[-1]["accuracy"] is not None
    summary = RunDir(root).summary()
    assert summary is not None and summary["rounds_with_missing_nodes"] == 2
    server_log = (root / "logs" / "flwr-run.log").read_text()
    assert server_log.count("sent no reply within round_timeout=30 s") == 1  # logged once
    assert rows[0]["time_s"] >= 30 and elapsed < 300  # it cost one timeout, not a hang
    assert_nothing_left(root, ports)


@pytest.mark.slow
def test_a_dead_node_stops_the_run_when_the_survivors_are_fewer_than_min_clients(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    cfg = fitted(2, "min_clients=2", *DEAD_NODE_RUN)
    with LocalFederation(root) as federation:
        federation.start_superlink()
        federation.start_node(0, node_config(cfg, 0, 2))
        stop_when_training(federation.start_node(1, node_config(cfg, 1, 2)), signal.SIGKILL)
        with pytest.raises(DeployError, match=r"1 of 2 clients .*fewer than min_clients=2"):
            federation.run(APP_DIR, run_config_for(root, cfg), timeout=400)
        ports = federation.ports
    assert_nothing_left(root, ports)


@pytest.mark.slow
def test_a_stalled_supernode_costs_one_timeout_and_the_run_finishes(tmp_path: Path) -> None:
    root = tmp_path / "run"
    cfg = fitted(2, "min_clients=1", *DEAD_NODE_RUN)
    with LocalFederation(root) as federation:
        federation.start_superlink()
        federation.start_node(0, node_config(cfg, 0, 2))
        stalled = federation.start_node(1, node_config(cfg, 1, 2))
        stop_when_training(stalled, signal.SIGSTOP)  # frozen mid-round: alive, silent
        try:
            federation.run(APP_DIR, run_config_for(root, cfg), timeout=400)
        finally:
            os.killpg(stalled.process.pid, signal.SIGCONT)  # so that it can be stopped
        ports = federation.ports
    rows = RunDir(root).metrics()
    assert [(r["round"], r["clients"], r["dropped"]) for r in rows] == [(1, 1, 1), (2, 1, 0)]
    summary = RunDir(root).summary()
    assert summary is not None and summary["rounds_with_missing_nodes"] == 2
    assert_nothing_left(root, ports)


NEWER_SERVER = '''
"""A server one release ahead: every instruction carries a config key clients never heard of."""
from collections.abc import Iterable
from logging import INFO

from flwr.app import Message
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedwon.server_app import app as fedwon_server

NEW_KEY = "x-newer-server-setting"


class NewerGrid(Grid):
    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def _add_key(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for message in messages:
            for record in message.content.config_records.values():
                record[NEW_KEY] = 1
        log(INFO, "newer server: %s added to %d messages", NEW_KEY, len(messages))
        return messages

    def set_run(self, run):
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.inner.get_node_ids()

    def push_messages(self, messages):
        return self.inner.push_messages(self._add_key(messages))

    def pull_messages(self, message_ids):
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self.inner.send_and_receive(self._add_key(messages), timeout=timeout)


app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    fedwon_server(NewerGrid(grid), context)
'''


@pytest.mark.slow
def test_a_server_newer_than_its_clients_still_trains(tmp_path: Path) -> None:
    app = tmp_path / "newer_app"
    app.mkdir()
    (app / "newer_server.py").write_text(NEWER_SERVER)
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(
        pyproject.replace('"fedwon.server_app:app"', '"newer_server:app"')
    )
    result = deploy_local(tmp_path / "run", 2, 2, overrides=SMALL, app_dir=app, timeout=400)
    server_log = (result.out / "logs" / "flwr-run.log").read_text()
    assert "newer server: x-newer-server-setting added to 2 messages" in server_log
    assert [r["clients"] for r in result.rows] == [2, 2]
    assert_nothing_left(result.out, result.ports)


@pytest.mark.slow
def test_fedbn_over_grpc_equals_the_same_run_simulated(tmp_path: Path) -> None:
    overrides = [*SMALL, "strategy=fedbn", "lr=0.05", "local_epochs=2"]
    deployed = deploy_local(tmp_path / "grpc", 2, 2, overrides=overrides)
    cfg = make_config(read_recipe(deployed.out / "config.toml"))
    simulated = run_simulation(cfg.replace(engine="fast", num_workers=0), tmp_path / "sim")
    assert len(deployed.rows) == len(simulated.rows) == 2
    for grpc_row, sim_row in zip(deployed.rows, simulated.rows, strict=True):
        grpc_row.pop("time_s"), sim_row.pop("time_s")
        assert grpc_row == sim_row
    grpc_arrays = load_checkpoint(deployed.out).arrays
    assert grpc_arrays.keys() == simulated.arrays.keys()
    for key in grpc_arrays:
        np.testing.assert_array_equal(
            grpc_arrays[key].numpy(), simulated.arrays[key].numpy(), err_msg=key
        )
    assert_nothing_left(deployed.out, deployed.ports)


@pytest.mark.slow
def test_fedbn_resumed_on_restarted_supernodes_keeps_their_local_layers(tmp_path: Path) -> None:
    """Two rounds of FedBN, every process stopped, then new SuperNodes (new workers, the same
    node state directories) resume the run to four: the same run as four rounds straight, so
    the clients' BN layers came back from their nodes' disks, not from the initial model."""
    root = tmp_path / "run"
    two = fitted(2, "strategy=fedbn", "lr=0.05", "checkpoint_every=1")
    four = two.replace(num_rounds=4)
    with LocalFederation(root) as federation:
        federation.start_superlink()
        for i in range(2):
            federation.start_node(i, node_config(two, i, 2))
        federation.run(APP_DIR, run_config_for(root, two), timeout=400)
    assert [r["round"] for r in RunDir(root).metrics()] == [1, 2]
    with LocalFederation(root) as federation:  # the same root: the same node state directories
        federation.start_superlink()
        for i in range(2):
            federation.start_node(i, node_config(four, i, 2))
        federation.run(APP_DIR, {**run_config_for(root, four), "resume": True}, timeout=400)
        ports = federation.ports
    deployed = RunDir(root).metrics()
    simulated = run_simulation(four.replace(engine="fast", num_workers=0), tmp_path / "sim")
    assert [r["round"] for r in deployed] == [1, 2, 3, 4]
    for grpc_row, sim_row in zip(deployed, simulated.rows, strict=True):
        grpc_row.pop("time_s"), sim_row.pop("time_s")
        assert grpc_row == sim_row
    grpc_arrays = load_checkpoint(root).arrays
    for key in grpc_arrays:
        np.testing.assert_array_equal(
            grpc_arrays[key].numpy(), simulated.arrays[key].numpy(), err_msg=key
        )
    assert_nothing_left(root, ports)
