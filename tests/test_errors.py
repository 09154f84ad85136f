"""Failures as one line: a client's error reason from either engine, a command's exception."""

import pytest

from fedwon.common.errors import error_line, failure_line

# What Flower's simulation engine (Ray) put in the error reply of tests/app/faulty_client.py
# (shortened: the real one repeats the frames; ANSI colour codes included)
FLOWER_REASON = """<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=17467, ip=192.0.2.2, actor_id=4288476c7a16, repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7f752f078490>)
  File "/venv/lib/python3.11/site-packages/flwr/clientapp/client_app.py", line 161, in __call__
    return self._registered_funcs[full_name](message, context)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/repo/tests/app/faulty_client.py", line 18, in train
    raise RuntimeError("simulated client crash")
RuntimeError: simulated client crash

The above exception was the direct cause of the following exception:

\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=17467, ip=192.0.2.2, actor_id=4288476c7a16)
  File "/venv/lib/python3.11/site-packages/flwr/simulation/ray_transport/ray_actor.py", line 65, in run
    raise ClientAppException(str(ex)) from ex
flwr.clientapp.client_app.ClientAppException:
Exception ClientAppException occurred. Message: simulated client crash'>"""  # noqa: E501

FAST_REASON = (
    "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException "
    "occurred. Message: ValueError: norm='bn' cannot train with batch size 1'>"
)


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        (FLOWER_REASON, "RuntimeError: simulated client crash"),
        (FAST_REASON, "ValueError: norm='bn' cannot train with batch size 1"),
        ("<class 'ZeroDivisionError'>:<'division by zero'>", "ZeroDivisionError: division by zero"),
        ("client exploded", "client exploded"),
        ("", "no reason given"),
    ],
    ids=["flower-engine", "fast-engine", "supernode", "plain", "empty"],
)
def test_a_client_failure_is_one_line_naming_the_root_exception(reason: str, line: str) -> None:
    assert failure_line(reason) == line


def test_a_long_reason_is_cut() -> None:
    assert len(failure_line("x " * 1000, limit=80)) == 80


def test_error_line() -> None:
    assert error_line(ValueError("lr: must be\n > 0"), with_type=False) == "lr: must be > 0"
    assert error_line(KeyError("x")) == "KeyError: 'x'"
    assert error_line(RuntimeError()) == "RuntimeError"
