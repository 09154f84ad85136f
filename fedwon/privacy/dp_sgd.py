"""Sample-level DP on a client: local DP-SGD with Opacus (``dp.level = "sample"``).

DP-SGD (Abadi et al., 2016) clips every *example's* gradient and adds Gaussian noise to
their sum at each step, so each client's model update is (epsilon, delta)-DP with respect
to any single training example of that client -- a different promise from user-level DP
(:mod:`fedwon.privacy.central_dp`), which protects a client's whole data set.

:func:`private_training` wraps a model and optimizer with Opacus' ``PrivacyEngine`` for one
client's training and removes every trace afterwards (hooks, ``grad_sample`` attributes), so
a worker can reuse its cached model for the next client. Per-layer clipping gives parameter h
the bound C_h of :func:`fedwon.privacy.layer_bounds` (one tensor = one layer, as for updates).

Supported models: ``norm="ws"`` (FedWon), ``"gn"``, ``"ln"``, ``"in"``, ``"none"``. Opacus
computes per-example gradients by exact layer type; ``WSConv2d`` (a Conv2d subclass with a
standardized weight and a ``gain``) is not in its registry and goes through Opacus' functorch
path, which differentiates the layer's own forward -- per-example gradients equal autograd's
(``tests/privacy/test_dp_sgd.py``). BatchNorm mixes the examples of a batch and is refused.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import cast

import torch
from flwr.app import ConfigRecord, RecordDict
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from fedwon.privacy import grad_samplers  # noqa: F401  (registers the WSConv2d grad sampler)
from fedwon.privacy.accounting import (
    Mechanism,
    calibrate_noise,
    calibrate_noise_after,
    history_epsilon,
)
from fedwon.privacy.clipping import check_clip_settings, layer_bounds
from fedwon.privacy.config import DPConfig

log = logging.getLogger(__name__)
# Poisson sampling makes empty batches on small clients (expected: they are a step of pure
# noise); Opacus would log a warning for each one.
logging.getLogger("opacus.data_loader").setLevel(logging.ERROR)


def check_dp_sgd_model(model: nn.Module) -> None:
    """Refuse models DP-SGD cannot train, naming the fix."""
    found = [
        name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, _BatchNorm)
    ]
    if found:
        raise ValueError(
            f"DP-SGD (dp.level='sample') cannot train BatchNorm layers {found[:3]}: "
            "per-example gradients are undefined when examples are normalized together; "
            "build the model with norm='gn' or norm='ws' (FedWon)"
        )


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters DP-SGD clips, in Opacus' order (``model.parameters()`` needing grads)."""
    return [p for p in model.parameters() if p.requires_grad]


def parameter_bounds(model: nn.Module, clip_norm: float, split: str = "uniform") -> list[float]:
    """Per-parameter clipping bounds for Opacus' ``clipping="per_layer"``."""
    return [float(b) for b in layer_bounds([p.numel() for p in trainable(model)], clip_norm, split)]


@dataclass
class PrivateTraining:
    """What a client's training loop uses inside :func:`private_training`.

    ``loader`` yields Poisson-sampled ``(x, y)`` batches (each example independently with
    rate ``sample_rate``; a batch may be empty) -- one pass is one epoch of ``steps_per_epoch``
    DP-SGD steps. ``optimizer`` clips per-example gradients, adds noise and steps.
    """

    model: nn.Module
    optimizer: DPOptimizer
    loader: DataLoader[tuple[torch.Tensor, ...]]
    sample_rate: float
    steps_per_epoch: int
    engine: PrivacyEngine

    def epsilon(self, delta: float) -> float:
        """Epsilon this client's training has spent so far in this context (its own steps)."""
        return float(self.engine.get_epsilon(delta))

    def history(self) -> list[Mechanism]:
        """The DP-SGD steps taken in this context, as Opacus' accountant recorded them."""
        return [(float(z), float(q), int(n)) for z, q, n in self.engine.accountant.history]


@contextmanager
def private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    noise_multiplier: float,
    clip_norm: float,
    clipping: str = "per_layer",
    split: str = "uniform",
    accountant: str = "rdp",
    generator: torch.Generator | None = None,
    secure_rng: bool = False,
) -> Iterator[PrivateTraining]:
    """DP-SGD on ``(x, y)`` with ``model``/``optimizer``, restored to plain ones on exit.

    The model object itself is trained (Opacus' ``wrap_model=False``), so its state dict keys
    are unchanged. ``generator`` seeds the noise (simulation); ``secure_rng`` uses Opacus'
    secure mode instead (it needs the ``torchcsprng`` package). Batches are sampled with
    torch's global generator (seeded per client and round by the ClientApp).
    """
    check_dp_sgd_model(model)
    check_clip_settings(clip_norm, clipping, split)
    if batch_size < 1 or len(y) < 1:
        raise ValueError(f"DP-SGD needs batch_size >= 1 and data, got {batch_size}, {len(y)}")
    max_grad_norm: float | list[float] = (
        parameter_bounds(model, clip_norm, split) if clipping == "per_layer" else clip_norm
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=min(batch_size, len(y)))
    model.train()  # Opacus refuses a model in eval mode (a cached one may come from evaluation)
    with warnings.catch_warnings():
        # Opacus warns about full backward hooks and secure mode; both are expected here.
        warnings.simplefilter("ignore")
        try:
            engine = PrivacyEngine(accountant=accountant, secure_mode=secure_rng)
        except ImportError as err:
            raise ImportError(
                f"dp.secure_rng with dp.level='sample' uses Opacus' secure mode: {err}"
            ) from None
        hooks, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            clipping=clipping,
            poisson_sampling=True,
            noise_generator=None if secure_rng else generator,
            wrap_model=False,
        )
    try:
        with warnings.catch_warnings():
            # the first layer's input needs no gradient: Opacus' full backward hooks say so
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            yield PrivateTraining(
                model=model,
                optimizer=dp_optimizer,
                loader=dp_loader,
                sample_rate=1 / len(dp_loader),
                steps_per_epoch=len(dp_loader),
                engine=engine,
            )
    finally:
        hooks.cleanup()
        for p in model.parameters():
            p.grad = None


def dp_sgd_noise_multiplier(
    dp: DPConfig,
    *,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    num_rounds: int,
    server_round: int = 1,
    history: Sequence[Mechanism] = (),
) -> float:
    """This client's DP-SGD noise for round ``server_round``: dp.noise_multiplier, or
    calibrated to dp.target_epsilon.

    The calibrated noise assumes the client trains in each of the run's ``num_rounds``. When
    the steps it has already taken (``history``), composed with that noise for every round
    left, would pass the target -- a resumed run whose ``num_rounds`` was raised -- the
    remaining rounds are recalibrated against the history
    (:func:`~fedwon.privacy.accounting.calibrate_noise_after`), so no client ever ends above
    the target. In a run that was not extended the planned noise always fits and is kept.
    """
    if dp.noise_multiplier:
        return dp.noise_multiplier
    batch = min(batch_size, num_examples)
    z = calibrate_sample_noise(
        dp.target_epsilon, dp.delta, num_examples, batch, local_epochs, num_rounds, dp.accountant
    )
    if not history:
        return z
    steps_per_epoch = -(-num_examples // batch)
    left = steps_per_epoch * local_epochs * max(num_rounds - server_round + 1, 1)
    q = 1 / steps_per_epoch
    if history_epsilon([*history, (z, q, left)], dp.delta, dp.accountant) <= dp.target_epsilon:
        return z
    try:
        return calibrate_noise_after(history, dp.target_epsilon, dp.delta, q, left, dp.accountant)
    except ValueError as err:
        raise ValueError(f"DP-SGD on this client: {err}") from None


@lru_cache(maxsize=256)
def calibrate_sample_noise(
    target_epsilon: float,
    delta: float,
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    num_rounds: int,
    accountant: str = "rdp",
) -> float:
    """DP-SGD noise multiplier for a client to stay within ``target_epsilon`` over the run.

    Conservative: assumes the client trains in every one of ``num_rounds`` rounds (its real
    participation is lower, its real epsilon smaller). Cached per data-set size.
    """
    steps_per_epoch = -(-num_examples // batch_size)  # what the Poisson loader's len() is
    return calibrate_noise(
        target_epsilon,
        delta,
        1 / steps_per_epoch,
        steps_per_epoch * local_epochs * num_rounds,
        accountant,
    )


HISTORY_KEY = "fedwon.dp-sgd"  # Context.state: the client's DP-SGD steps over the run


@dataclass
class StepHistory:
    """Every DP-SGD step a client has taken in a run, kept in its ``Context.state``.

    A client's epsilon composes all its steps, over every round it was sampled in: the
    history travels with the client's state (spilled, checkpointed and restored by the fast
    engine like FedBN's local layers). Entries are Opacus' ``(z, q, steps)``; consecutive
    entries with the same (z, q) are merged, as Opacus' own accountant does.
    """

    entries: list[Mechanism] = field(default_factory=list)

    @classmethod
    def load(cls, state: RecordDict) -> StepHistory:
        record = state.config_records.get(HISTORY_KEY)
        if record is None:
            return cls()
        z, q, n = (cast(list[float], record[k]) for k in ("noise", "rate", "steps"))
        return cls([(float(a), float(b), int(c)) for a, b, c in zip(z, q, n, strict=True)])

    def save(self, state: RecordDict) -> None:
        state[HISTORY_KEY] = ConfigRecord(
            {
                "noise": [z for z, _, _ in self.entries],
                "rate": [q for _, q, _ in self.entries],
                "steps": [n for _, _, n in self.entries],
            }
        )

    def extend(self, steps: list[Mechanism]) -> None:
        for z, q, n in steps:
            if self.entries and self.entries[-1][:2] == (z, q):
                self.entries[-1] = (z, q, self.entries[-1][2] + n)
            elif n:
                self.entries.append((z, q, n))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.entries)

    def epsilon(self, delta: float, accountant: str = "rdp") -> float:
        """This client's epsilon over all its steps (:func:`history_epsilon`)."""
        return history_epsilon(self.entries, delta, accountant)
