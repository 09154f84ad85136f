"""Turning Flower's exit codes and log lines into one-line explanations."""

from pathlib import Path

from fedwon.deploy.diagnose import (
    connection_retries,
    current_round,
    exit_reason,
    joined,
    last_error,
    logged_exit_code,
    retrying,
    supernode_exit,
    waiting_for_nodes,
)

# Lines as Flower 1.39 writes them (with its colour codes).
SERVER_LOG = """$ flwr run . fedwon-local --stream
\x1b[92mINFO \x1b[0m:      [ROUND 1/3]
\x1b[92mINFO \x1b[0m:      configure_train: Sampled 2 nodes (out of 2)
\x1b[92mINFO \x1b[0m:      [ROUND 2/3]
\x1b[92mINFO \x1b[0m:      Waiting for nodes to connect: 1 connected (minimum required: 2).
"""
CLI_LOG = """$ flwr run . fedwon-local --stream
Using SuperLink: fedwon-local (127.0.0.1:8000)
╭─ Error ──────────────────────────────────────────────────────────────────────╮
│ Connection to the SuperLink is unavailable. Please check your network        │
│ connection and 'address' in the SuperLink connection configuration.          │
╰──────────────────────────────────────────────────────────────────────────────╯
"""


def test_exit_reasons() -> None:
    assert "not registered" in exit_reason(305)
    assert exit_reason(-9) == "killed by SIGKILL"
    assert exit_reason(303).startswith("exit code 303: The private key for SuperNode auth")
    assert exit_reason(77) == "exit code 77"


def test_progress_and_waiting_are_read_from_the_server_log() -> None:
    assert current_round(SERVER_LOG) == (2, 3)
    assert waiting_for_nodes(SERVER_LOG) == (1, 2)
    assert waiting_for_nodes(SERVER_LOG + "[ROUND 3/3]\n") is None  # no longer waiting
    assert current_round("") is None


def test_connection_problems_name_the_likely_cause_and_the_log() -> None:
    log = "\n".join(["Connection attempt failed, retrying in 1.2 seconds"] * 4)
    assert connection_retries(log) == 4
    tls = retrying("supernode-0", Path("logs/n.log"), 4, superlink_tls=True)
    assert tls.startswith("supernode-0 cannot connect to the SuperLink (4 attempts failed): ")
    assert "the SuperLink uses TLS" in tls and "not --insecure" in tls
    assert tls.endswith("; see logs/n.log") and "\n" not in tls
    assert "--insecure on both or neither" in retrying("n", Path("x"), 3, superlink_tls=False)


# The tails of SuperNode logs seen with Flower 1.39 (the process exit status was 1 each time).
REFUSED = """\x1b[91mERROR \x1b[0m:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
The SuperNode could not establish a connection to the SuperLink.
"""
UNTRUSTED = """\x1b[91mERROR \x1b[0m:     SSL/TLS handshake error detected.
\x1b[91mERROR \x1b[0m:     Exit Code: 305
Failed to initialize the connection to the SuperLink.
failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:44971: Tls handshake \
failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED
"""


def test_supernode_exits_are_explained_from_their_logs() -> None:
    log = Path("logs/supernode-2.log")
    refused = supernode_exit("supernode-2", 1, log, REFUSED)
    assert refused.startswith("supernode-2 was refused by the SuperLink (")
    assert "public key is not registered" in refused and refused.endswith(f"see {log}")
    untrusted = supernode_exit("supernode-2", 1, log, UNTRUSTED)
    assert untrusted.startswith("supernode-2 cannot connect to the SuperLink (TLS handshake")
    assert "does not trust the SuperLink's certificate" in untrusted
    assert supernode_exit("n", -9, log, "INFO: ok\n") == f"n exited (killed by SIGKILL); see {log}"
    assert supernode_exit("n", 1, log, "Exit Code: 303\n").startswith("n exited (exit code 303: ")
    assert logged_exit_code(REFUSED) == 305 and logged_exit_code("") is None
    assert joined("INFO :      SuperNode ID: 5234154807932694344") and not joined(REFUSED)


def test_last_error_finds_the_telling_line() -> None:
    assert last_error(CLI_LOG) == (
        "Connection to the SuperLink is unavailable. Please check your network connection "
        "and 'address' in the SuperLink connection configuration."
    )
    text = "Traceback (most recent call last):\n  File x\nValueError: bad partition\nbye\n"
    assert last_error(text) == "ValueError: bad partition"
    assert last_error("") == "(empty log)"
    server = (
        "  File x, in _usable\n"
        "fedwon.strategies.round_control.RoundFailedError: round 1 train: 0 of 2 clients\n"
        "\x1b[91mERROR \x1b[0m:     Exit Code: 201\n"
        "An unhandled exception occurred in the ServerApp.\n"
    )
    assert last_error(server) == "RoundFailedError: round 1 train: 0 of 2 clients"
    assert last_error("ERROR :  Exit Code: 1\nERROR :  boom\nbye") == "ERROR :  boom"
