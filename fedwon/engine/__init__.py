"""Fast simulation engine: Flower's programming model, direct message delivery.

Any Flower ``ServerApp`` (e.g. one whose main calls a Message-API ``Strategy.start``) and any
Flower ``ClientApp`` run unchanged; only delivery changes: ``FastGrid`` hands each batch of
messages to an executor (in-process, or a few long-lived Ray actors) and returns the replies,
with no link-state database and no polling.

    from fedwon.engine import run_fast
    context = run_fast(server_app, "my_pkg.client_app:app", num_supernodes=1000)
"""

from .contexts import ContextStore
from .executors import Executor, InProcessExecutor, RayExecutor
from .grid import NODE_ID_BASE, FastGrid
from .run import make_executor, run_fast
from .worker import ClientAppLoadError, load_client_app

__all__ = [
    "NODE_ID_BASE",
    "ClientAppLoadError",
    "ContextStore",
    "Executor",
    "FastGrid",
    "InProcessExecutor",
    "RayExecutor",
    "load_client_app",
    "make_executor",
    "run_fast",
]
