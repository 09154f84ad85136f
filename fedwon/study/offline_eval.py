"""Evaluate a finished run's final model on data its clients never tested on during the run.

Three evaluations the study needs and a run does not perform:

* **validation accuracy** — each client's final model (global arrays plus, for FedBN, the
  client's own normalization layers) on its validation share (``Federation.val_data``); what
  the study ranks grid points by, so that test accuracy never chooses a hyper-parameter;
* **held-out-domain accuracy** — the final global model on the test set of each domain no client
  trained on (``Federation.heldout_test_data``). FedBN has no normalization layers for a domain
  it never saw; it gets the *average* of its clients' local layers (affine parameters and running
  statistics, unweighted), the natural choice and the one the report states;
* **FedBN with averaged normalization layers** — each client's test data scored by that same
  averaged model instead of the client's own layers (``split_accuracy(..., averaged=True)``):
  under label skew, how much of FedBN's accuracy comes from layers fitted to each client's own
  class mix.

Both read the run directory's final checkpoint — the global arrays and the client states the
fast engine snapshots into it (:func:`final_states`) — and rebuild each model exactly as the
client does, so the test split evaluated this way reproduces the run's own last round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedwon.clients import evaluate, local_arrays
from fedwon.config import RunConfig
from fedwon.datasets import Federation, load_federation
from fedwon.run.checkpoint import load_checkpoint

__all__ = ["FinalStates", "average_states", "final_states", "heldout_accuracy", "split_accuracy"]

State = dict[str, torch.Tensor]


@dataclass
class FinalStates:
    """A finished run's final model: initial state, global arrays, each client's local arrays."""

    model: torch.nn.Module
    initial: State
    global_arrays: State
    local: dict[int, State]  # partition id -> local arrays (FedBN); empty for shared-only methods

    def client_state(self, pid: int) -> State:
        """What client ``pid`` evaluates with: initial ← global ← its own local arrays."""
        return {**self.initial, **self.global_arrays, **self.local.get(pid, {})}


def final_states(run_dir: str | Path, cfg: RunConfig, federation: Federation) -> FinalStates:
    """Read the final checkpoint of ``run_dir`` (refusing one that stopped before the end).

    The clients' local arrays come from the client states the checkpoint snapshots (the fast
    engine's contexts), read as a client reads its own (:func:`local_arrays`).
    """
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    if ckpt.round != cfg.server.num_rounds:
        raise ValueError(
            f"{run_dir} is not finished: its checkpoint is at round {ckpt.round} of "
            f"{cfg.server.num_rounds}; resume it before evaluating"
        )
    client_cfg = cfg.client_config()
    model = cfg.model_spec.initial_model(federation.num_classes, federation.in_channels, cfg.seed)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    global_arrays = dict(ckpt.arrays.to_torch_state_dict())
    owner = client_cfg.fingerprint()
    local: dict[int, State] = {}
    for pid, state in (ckpt.client_states or {}).items():
        arrays = local_arrays(state, owner)
        if arrays:
            local[pid] = arrays
    if ckpt.client_states is None and set(initial) - set(global_arrays):
        raise ValueError(
            f"{run_dir}: the checkpoint holds no client states (engine {cfg.engine.engine!r}), "
            "so the clients' local layers are unknown; run with engine='fast' to evaluate it "
            "offline"
        )
    return FinalStates(model, initial, global_arrays, local)


@dataclass(frozen=True)
class Accuracy:
    """Accuracy averaged over domains (each domain's examples pooled over its clients)."""

    mean: float
    per_domain: dict[str, float]
    examples: int

    def as_dict(self) -> dict[str, object]:
        return {"accuracy": self.mean, "per_domain": self.per_domain, "examples": self.examples}


def _domain_average(correct: dict[str, int], total: dict[str, int]) -> Accuracy:
    per_domain = {d: correct[d] / total[d] for d in total if total[d] > 0}
    mean = sum(per_domain.values()) / len(per_domain) if per_domain else float("nan")
    return Accuracy(mean, per_domain, sum(total.values()))


def split_accuracy(
    run_dir: str | Path, cfg: RunConfig, split: str = "val", *, averaged: bool = False
) -> Accuracy:
    """Each client's final model on its ``split`` data; per-domain pooled, then domain mean.

    ``averaged``: every client evaluates the model with the *average* of the clients' local
    layers instead of its own (the same for shared-only methods). Clients without data in
    ``split`` (too small for a validation share) are left out.
    """
    fed = load_federation(cfg.data)
    states = final_states(run_dir, cfg, fed)
    if averaged:  # one model for every client: global arrays + the mean of the local ones
        mean = average_states(list(states.local.values()))
        states.global_arrays, states.local = {**states.global_arrays, **mean}, {}
    correct = dict.fromkeys(fed.domains, 0)
    total = dict.fromkeys(fed.domains, 0)
    loaded_shared = False
    for pid in range(fed.num_clients):
        x, y = fed.client_data(pid, split)
        if len(y) == 0:
            continue
        if pid in states.local or not loaded_shared:  # one load serves every shared-only client
            states.model.load_state_dict(states.client_state(pid))
            loaded_shared = pid not in states.local
        stats = evaluate(states.model, x, y)
        domain = fed.client_domain(pid)
        correct[domain] += round(stats.accuracy * stats.num_examples)
        total[domain] += stats.num_examples
    return _domain_average(correct, total)


def average_states(states: list[State]) -> State:
    """Element-wise mean of same-keyed states (integer counters rounded back to integers)."""
    if not states:
        return {}
    out: State = {}
    for key in states[0]:
        stacked = torch.stack([s[key].to(torch.float64) for s in states])
        mean = stacked.mean(dim=0)
        dtype = states[0][key].dtype
        out[key] = (mean.round() if not dtype.is_floating_point else mean).to(dtype)
    return out


def heldout_accuracy(
    run_dir: str | Path, cfg: RunConfig, domains: Sequence[str] | None = None
) -> Accuracy:
    """The final global model on the test set of each held-out domain (all of them, or
    ``domains``; FedBN: averaged local layers, see the module docstring); per domain, and
    their mean."""
    fed = load_federation(cfg.data)
    if not fed.heldout_domains:
        raise ValueError(
            f"{run_dir} trains on every domain of {cfg.data.dataset}: nothing is held out"
        )
    domains = list(fed.heldout_domains if domains is None else domains)
    states = final_states(run_dir, cfg, fed)
    shared = {
        **states.initial,
        **states.global_arrays,
        **average_states(list(states.local.values())),
    }
    states.model.load_state_dict(shared)
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for domain in domains:
        x, y = fed.heldout_test_data(domain)
        stats = evaluate(states.model, x, y)
        correct[domain] = round(stats.accuracy * stats.num_examples)
        total[domain] = stats.num_examples
    return _domain_average(correct, total)
