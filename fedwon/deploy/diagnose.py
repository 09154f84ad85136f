"""Recognising how a deployment fails, from exit codes and log lines, as one-line explanations.

Flower reports most deployment mistakes only indirectly: a SuperNode that does not trust the
SuperLink's certificate retries forever ("Connection attempt failed"), one whose key is not
registered exits with code 305, and a server missing a node waits ("Waiting for nodes to
connect"). These helpers turn such signs into a sentence that names the cause and the log file.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from flwr.supercore.exit.exit_code import EXIT_CODE_HELP, ExitCode

CONNECTION_RETRY = "Connection attempt failed"
TLS_HANDSHAKE = "SSL/TLS handshake error detected"
NOT_ACTIVATED = "Failed to activate SuperNode"
WAITING_FOR_NODES = re.compile(
    r"Waiting for nodes to connect: (\d+) connected \(minimum required: (\d+)\)"
)
ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
# Enough retries to be sure it is not a SuperLink still starting (Flower backs off between them).
RETRIES_BEFORE_FAILING = 3


def exit_reason(code: int) -> str:
    """What an exit code means: a signal, one of Flower's documented codes, or just the code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == ExitCode.SUPERNODE_CONNECTION_ERROR:
        return (
            "exit code 305: the SuperLink refused it or could not be reached "
            "(with --auth: its public key is not registered)"
        )
    help_text = EXIT_CODE_HELP.get(code, "")
    return f"exit code {code}" + (f": {help_text}" if help_text else "")


def joined(supernode_log: str) -> bool:
    """Whether a SuperNode was admitted: Flower logs the id the SuperLink gave it."""
    return "SuperNode ID:" in supernode_log


def connection_retries(log_text: str) -> int:
    """How often a SuperNode failed to reach the SuperLink (it retries forever by default)."""
    return log_text.count(CONNECTION_RETRY)


UNTRUSTED_CAUSE = (
    "it does not trust the SuperLink's certificate: --root-certificates must be the CA that "
    "signed it, and the certificate's SANs must include the address dialled"
)
RETRY_CAUSES = {
    True: "the SuperLink uses TLS: does the SuperNode dial it with --root-certificates (not "
    "--insecure), at the right Fleet API address?",
    False: "is the SuperLink running on that Fleet API address, and do both sides agree on "
    "TLS (--insecure on both or neither)?",
}


def connection_problem(name: str, log: Path, detail: str, cause: str) -> str:
    """A SuperNode that cannot connect: what it saw (``detail``) and the likely ``cause``."""
    return f"{name} cannot connect to the SuperLink ({detail}): {cause}; see {log}"


def retrying(name: str, log: Path, retries: int, superlink_tls: bool) -> str:
    """A SuperNode that keeps retrying (Flower retries forever by default)."""
    detail = f"{retries} attempts failed"
    return connection_problem(name, log, detail, RETRY_CAUSES[superlink_tls])


def logged_exit_code(log_text: str) -> int | None:
    """The exit code Flower logged ("Exit Code: 305"): SuperNodes exit with status 1 after
    logging it, so the process status alone does not say why."""
    found = re.findall(r"Exit Code: (\d+)", log_text)
    return int(found[-1]) if found else None


def supernode_exit(name: str, code: int, log: Path, log_text: str) -> str:
    """One line on why a SuperNode exited, from its log first and its exit status second."""
    if TLS_HANDSHAKE in log_text or "CERTIFICATE_VERIFY_FAILED" in log_text:
        return connection_problem(name, log, "TLS handshake failed", UNTRUSTED_CAUSE)
    if NOT_ACTIVATED in log_text:
        return (
            f"{name} was refused by the SuperLink ({NOT_ACTIVATED!r}, exit code 305): its "
            f"public key is not registered (flwr supernode register <key>.pub); see {log}"
        )
    flower_code = logged_exit_code(log_text)
    reason = exit_reason(code if flower_code is None else flower_code)
    return f"{name} exited ({reason}); see {log}"


EXCEPTION_LINE = re.compile(r"^(?:[\w]+\.)*(\w+(?:Error|Exception|Exit)\b.*)")


def last_error(log_text: str) -> str:
    """The most telling part of a failed process's log, on one line: the last error box the
    ``flwr`` CLI drew, else the last exception (without its module path), else the last
    ``ERROR`` line other than Flower's exit-code notice, else the last line."""
    lines = [strip_ansi(line).strip() for line in log_text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("$ ")]
    tops = [i for i, line in enumerate(lines) if line.startswith("╭")]
    if tops:
        box = []
        for line in lines[tops[-1] + 1 :]:
            if line.startswith("╰"):
                break
            box.append(line.strip("│ "))
        return " ".join(" ".join(box).split())
    for line in reversed(lines):
        if match := EXCEPTION_LINE.match(line):
            return match.group(1)
    for line in reversed(lines):
        if line.startswith("ERROR") and "Exit Code:" not in line:
            return line
    return lines[-1] if lines else "(empty log)"


def strip_ansi(text: str) -> str:
    """Flower colours its log levels; logs are read without the escape codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def current_round(server_log: str) -> tuple[int, int] | None:
    """``(round, of)`` of the last round the ServerApp started, from its streamed log."""
    found = ROUND.findall(server_log)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def waiting_for_nodes(server_log: str) -> tuple[int, int] | None:
    """``(connected, required)`` if the ServerApp's last word is that it waits for nodes."""
    lines = [line for line in strip_ansi(server_log).splitlines() if line.strip()]
    if lines and (match := WAITING_FOR_NODES.search(lines[-1])):
        return int(match.group(1)), int(match.group(2))
    return None
