"""The one error type of ``fedwon.deploy``: its message is a single line that says what failed,
why (when known) and which log file to read, so the CLI can print it as is."""

import math


class DeployError(RuntimeError):
    """A deployment cannot start or did not finish; ``str(err)`` is one line."""


def check_seconds(name: str, value: float, error: type[Exception] = DeployError) -> None:
    """Refuse (with ``error``) a wait or interval that is not a number of seconds in (0, 60]."""
    if not (math.isfinite(value) and 0 < value <= 60):
        raise error(f"{name} must be a number of seconds in (0, 60], got {value:g}")
