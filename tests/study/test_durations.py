"""The study's closing line says how long its rounds took in a unit that reads: the quick study's
seconds used to print as "0.00 h"."""

from dataclasses import dataclass
from typing import Any

import pytest

from fedwon.cli.study import human_duration, summary_line


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0 s"),
        (12.34, "12.3 s"),
        (59.9, "59.9 s"),
        (60, "1.0 min"),
        (754, "12.6 min"),
        (3600, "1.00 h"),
        (4.2 * 3600, "4.20 h"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


@dataclass
class Record:  # the fields summary_line reads of a RunRecord
    status: str
    seconds: float
    ok: bool = True


def test_the_quick_study_line_says_seconds() -> None:
    records: list[Any] = [Record("trained", 9.5), Record("cached", 3.0), Record("recorded", 0)]
    line = summary_line(records)
    assert line.startswith("3 runs: 1 trained, 0 resumed, 2 reused, 0 failed")
    assert line.endswith("12.5 s spent on them now")
