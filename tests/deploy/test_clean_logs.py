"""A deployment's logs read as text: Flower's colour codes are gone once its processes stop."""

import sys
from pathlib import Path

from fedwon.deploy.processes import ProcessSet

COLOURED = (  # what Flower's console handler writes: coloured level names
    r"print('\x1b[92mINFO \x1b[0m:      Starting Flower SuperLink');"
    r"print('\x1b[91mERROR\x1b[0m: x')"
)


def test_logs_lose_their_colour_codes_when_the_processes_stop(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "superlink.log"
    with ProcessSet(grace=2.0) as processes:
        process = processes.start("superlink", [sys.executable, "-c", COLOURED], log)
        process.popen.wait(timeout=30)
        assert "\x1b[" in log.read_text()  # written as Flower writes it
        assert process.log_text().splitlines()[1:] == [
            "INFO :      Starting Flower SuperLink",
            "ERROR: x",
        ]
    text = log.read_text()
    assert "\x1b" not in text
    assert "INFO :      Starting Flower SuperLink\nERROR: x\n" in text
