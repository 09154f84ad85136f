"""The cross-device workload on apple/pfl-research 0.6.0, the fastest simulator we compare with.

Same data, model, clients per round and local training as ``benchmarks.workloads``, run the
way pfl's own PyTorch examples run it: ``FederatedAveraging`` on a ``SimulatedBackend`` (users
trained one after another in this process, one model updated in place, no serialization),
uniform user weights (pfl's default), ``send_metrics_to_platform=False``, no evaluation after
the first round. The users of each round are the same as Flower's ``FedAvg`` samples with the
same seed. pfl is an optional dependency (``pip install -e '.[bench]'``): ``available()`` says
whether it can be imported, and nothing here imports it before ``pfl_fedavg`` runs.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import workloads as w

PFL_VERSION = "0.6.0"


def available() -> bool:
    """Whether pfl can be imported here (the ``bench`` extra is installed)."""
    return importlib.util.find_spec("pfl") is not None


class PflNet(w.Net):
    """The benchmark CNN with the ``loss``/``metrics`` methods pfl's ``PyTorchModel`` calls."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of one batch, as ``workloads.train_local`` minimises it."""
        self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> dict[str, Any]:
        """Summed loss weighted by examples (only used in pfl's first-round evaluation)."""
        from pfl.metrics import Weighted

        self.eval() if eval else self.train()
        loss = float(F.cross_entropy(self(x), y, reduction="sum"))
        return {"loss": Weighted(loss, len(y))}


def cohort_sampler(num_clients: int, per_round: int, seed: int) -> Callable[[], int]:
    """pfl asks for one user id at a time; hand out the ids Flower's ``FedAvg`` would sample
    (``random.sample`` seeded like the ServerApp), one round's cohort after another."""
    rng = random.Random(seed)
    queue: list[int] = []

    def sample() -> int:
        if not queue:
            queue.extend(rng.sample(range(num_clients), per_round))
        return queue.pop(0)

    return sample


def pfl_fedavg(
    num_rounds: int,
    num_clients: int = w.NUM_CLIENTS,
    clients_per_round: int = w.CLIENTS_PER_ROUND,
    seed: int = w.SEED,
    round_times: list[w.Stamp] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the workload on pfl; timestamps before round 1 and after every round."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    times = round_times if round_times is not None else []

    class Timestamps(TrainingProcessCallback):  # type: ignore[misc]
        """Records when each central iteration ended."""

        def after_central_iteration(
            self, aggregate_metrics: Any, model: Any, *, central_iteration: int
        ) -> tuple[bool, Any]:
            times.append(w.stamp())
            return False, Metrics()

    def make_dataset(user_id: int) -> Any:
        x, y = w.client_data(user_id, num_clients)
        return Dataset(raw_data=[x, y], user_id=user_id)

    net = PflNet()
    net.load_state_dict(w.make_model(seed).state_dict())
    model = PyTorchModel(
        model=net,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0),  # new = old + mean diff
    )
    users = FederatedDataset(make_dataset, cohort_sampler(num_clients, clients_per_round, seed))
    params = NNAlgorithmParams(
        central_num_iterations=num_rounds,
        evaluation_frequency=10**9,  # pfl always evaluates round 0; never again
        train_cohort_size=clients_per_round,
        val_cohort_size=0,
    )
    times.append(w.stamp())
    FederatedAveraging().run(
        algorithm_params=params,
        backend=SimulatedBackend(training_data=users, val_data=users),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=w.LR, local_num_epochs=w.LOCAL_EPOCHS, local_batch_size=1
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=None),
        callbacks=[Timestamps()],
        send_metrics_to_platform=False,
    )
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
