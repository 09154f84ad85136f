"""The one error type of ``fedwon.deploy``: its message is a single line that says what failed,
why (when known) and which log file to read, so the CLI can print it as is."""


class DeployError(RuntimeError):
    """A deployment cannot start or did not finish; ``str(err)`` is one line."""
