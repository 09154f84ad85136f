"""Another process holding a directory's lock (:mod:`fedwon.run.lock`), for the tests that check
a second writer is refused: a real process, because a lock that only worked within one process
would not stop two ``fedwon`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from fedwon.run.lock import lock_dir\n"
    "with lock_dir(Path(sys.argv[1]), 'run directory'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


@contextmanager
def holder(directory: Path) -> Iterator[subprocess.Popen[str]]:
    """A process holding ``directory``'s lock until the block ends (then SIGKILLed, if alive)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
