"""Layer-wise gradient normalization on the server: FedLAMB (``aggregator = "lamb"``).

Apple's recipe for DP federated training of deep models ("Enabling DP FL for speech
recognition") pairs per-layer clipping with a server optimizer that normalizes each layer's
step -- LAMB (You et al., 2020). The averaged client update (noisy under DP) is the server's
pseudo-gradient g = aggregate - w, and for every layer h (one tensor, as in clipping):

    m_t = b1 m + (1 - b1) g          v_t = b2 v + (1 - b2) g^2        (Adam moments)
    u_h = m_t / (1 - b1^t) / (sqrt(v_t / (1 - b2^t)) + eps) - weight_decay * w_h
    r_h = phi(||w_h||) / ||u_h||     (1 if either norm is 0: zero-initialised biases)
    w_h <- w_h + lr * r_h * u_h

so each layer moves by ``lr * phi(||w_h||)`` in norm whatever the scale of its gradient: the
heterogeneity across layers that clipping and noise make worse is removed. phi clamps the
weight norm to ``[phi_min, phi_max]`` (identity by default). Signs follow Flower's FedOpt
family: g points *towards* the clients' models, so steps are added and weight decay subtracted.

Built like Flower's FedAdam (a subclass of ``FedOpt``: same arguments ``eta`` = server lr,
``beta_1``, ``beta_2``, ``tau`` = eps; the moments in FedOpt's ``m_t``/``v_t``, which fedwon's
checkpoints save and restore). The bias-correction step t is the round number, so a resumed
run (absolute round numbers, restored moments) continues exactly; FedAdam uses round + 1.
Non-floating arrays (BatchNorm counters) take the FedAvg aggregate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy.fedopt import FedOpt

from fedwon.common.records import as_array


def trust_ratio(weight_norm: float, step_norm: float) -> float:
    """||w|| / ||u||, or 1 where either is zero (no scale to match, or nothing to scale)."""
    if weight_norm > 0 and step_norm > 0:
        return weight_norm / step_norm
    return 1.0


class FedLAMB(FedOpt):
    """FedOpt with LAMB's layer-wise trust ratio (see the module docstring)."""

    def __init__(
        self,
        *,
        eta: float = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        tau: float = 1e-6,
        weight_decay: float = 0.0,
        phi_min: float = 0.0,
        phi_max: float = math.inf,
        **kwargs: Any,
    ) -> None:
        if not eta > 0:
            raise ValueError(f"LAMB's server learning rate (eta) must be > 0, got {eta}")
        if not (0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ValueError(f"LAMB's betas must be in [0, 1), got {beta_1}, {beta_2}")
        if not tau > 0 or weight_decay < 0 or not 0 <= phi_min <= phi_max:
            raise ValueError(
                f"LAMB needs tau > 0, weight_decay >= 0 and 0 <= phi_min <= phi_max, got "
                f"tau={tau}, weight_decay={weight_decay}, phi=[{phi_min}, {phi_max}]"
            )
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau, **kwargs)
        self.weight_decay = weight_decay
        self.phi_min = phi_min
        self.phi_max = phi_max
        self.last_trust_ratios: dict[str, float] = {}

    def phi(self, weight_norm: float) -> float:
        """LAMB's scaling function: the weight norm clamped to ``[phi_min, phi_max]``."""
        return min(max(weight_norm, self.phi_min), self.phi_max)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        aggregated, metrics = super().aggregate_train(server_round, replies)
        if aggregated is None:
            return aggregated, metrics
        delta, m_t, aggregated_nd = self._compute_deltat_and_mt(aggregated)
        assert self.current_arrays is not None  # checked by _compute_deltat_and_mt
        if not self.v_t:
            self.v_t = {k: np.zeros_like(v) for k, v in delta.items()}
        self.v_t = {
            k: self.beta_2 * v + (1 - self.beta_2) * delta[k] ** 2 for k, v in self.v_t.items()
        }
        t = max(server_round, 1)  # the moments have seen rounds 1..t
        m_scale = 1.0 / (1.0 - self.beta_1**t)
        v_scale = 1.0 / (1.0 - self.beta_2**t)

        new: dict[str, np.ndarray] = {}
        ratios: dict[str, float] = {}
        for key, w in self.current_arrays.items():
            if not np.issubdtype(w.dtype, np.floating):
                new[key] = aggregated_nd[key]
                continue
            u = m_t[key] * m_scale / (np.sqrt(self.v_t[key] * v_scale) + self.tau)
            if self.weight_decay:
                u = u - self.weight_decay * w
            ratio = trust_ratio(
                self.phi(float(np.linalg.norm(w.astype(np.float64)))),
                float(np.linalg.norm(u.astype(np.float64))),
            )
            ratios[key] = ratio
            new[key] = (w + (self.eta * ratio) * u).astype(w.dtype, copy=False)
        self.last_trust_ratios = ratios
        return ArrayRecord({k: as_array(v) for k, v in new.items()}), metrics  # 0-d stays 0-d
