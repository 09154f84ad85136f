"""``bandmf``: DP-FTRL with banded matrix factorization as a user-level mechanism.

The maths (factorization, sensitivity, correlated noise, accounting) is
:mod:`fedwon.privacy.bandmf`; this is the mechanism around it. Each round:

* **clip** -- every update to ``dp.clip_norm`` S (flat or per layer), as ``gaussian`` does;
* **noise** -- the sum gets z S w_t, where w_t = (C^-1 Z)_t is built from fresh N(0, 1) draws
  (seeded by (run seed, round), or the OS CSPRNG) and the last b - 1 noises, then is divided
  by the cohort m. z is the noise multiplier *per participation*;
* **account** -- epsilon after round r composes the Gaussian mechanism at z over the
  ceil(r / G) participations a client can have had (sample rate 1, no amplification);
* **participation** -- the run must use ``participation = "cyclic"`` with G = N/m >= b groups;
  :meth:`BandMF.eligible` refuses to let any client train sooner than G rounds after it last
  did, so the sensitivity the accounting assumes is enforced, not only planned;
* **state** -- the last b - 1 noise vectors (model-sized, float32: kept in
  ``checkpoint/privacy_state.npz``), the coefficients of C, the round, and each client's last
  round; a resumed run continues all of it bit for bit.

Keys: ``dp.bands`` (0 = G, capped at ``num_rounds``), ``dp.factorization`` (``optimized`` |
``sqrt``). Refused with it: ``dp.max_epsilon`` (the noise is set for the whole schedule; epsilon
is reported every round), ``dp.noise_cohort_size`` and ``dp.population`` (they state an
amplification by sampling that cyclic participation does not have).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np
import torch

from fedwon.privacy.accounting import Mechanism
from fedwon.privacy.bandmf import (
    BandedFactorization,
    BandMFLedger,
    CorrelatedNoise,
    calibrate_bandmf,
    factorize,
    participations,
)
from fedwon.privacy.mechanisms.base import (
    ClipRule,
    DPSettings,
    GaussianSettings,
    MechanismSetting,
    RoundSum,
    UserMechanism,
)
from fedwon.privacy.noise import round_generator, standard_normal
from fedwon.strategies.participation import Participation

log = logging.getLogger(__name__)


class BandMFSettings(DPSettings, Protocol):
    """The ``dp.*`` keys BandMF reads besides the common ones (fields of
    :class:`~fedwon.privacy.DPConfig`)."""

    @property
    def bands(self) -> int: ...
    @property
    def factorization(self) -> str: ...
    @property
    def max_epsilon(self) -> float: ...
    @property
    def population(self) -> int: ...


def resolved_bands(bands: int, participation: Participation, num_rounds: int) -> int:
    """b: ``dp.bands``, or (0) the most the schedule allows -- its G cyclic groups -- capped
    at ``num_rounds``."""
    return min(bands or participation.min_separation, num_rounds)


class BandMF(UserMechanism):
    """DP-FTRL with a b-banded Toeplitz factorization of the prefix-sum workload.

    Args:
        settings: ``noise_multiplier`` is z per participation (the noise std on the sum is
            z * clip_norm * the row norm of C^-1); ``sample_rate`` and ``noise_cohort`` are
            not read (no amplification by sampling); ``prior`` is the ``(z, 1.0, rounds)``
            history of a resumed run's rounds.
        min_separation: G, the fewest rounds between two participations of one client.
        factorization: C (its coefficients and horizon).
        kind: how C was chosen (``optimized`` or ``sqrt``), for the summary.
        state: the mechanism's state at a resumed run's checkpoint.
    """

    name = "bandmf"
    keys = ("bands", "factorization")
    constrains_participation = True
    stateful = True
    participation_modes = ("cyclic",)
    ledger: BandMFLedger

    def __init__(
        self,
        settings: GaussianSettings,
        *,
        min_separation: int,
        factorization: BandedFactorization,
        kind: str = "optimized",
        state: dict[str, Any] | None = None,
    ) -> None:
        noise_multiplier = settings.noise_multiplier
        if not noise_multiplier > 0:
            raise ValueError(f"BandMF needs a noise multiplier > 0, got {noise_multiplier}")
        if factorization.bands > min_separation:
            raise ValueError(
                f"{factorization.bands} bands need clients >= {factorization.bands} rounds "
                f"apart; the schedule separates them by {min_separation}"
            )
        self.ledger = BandMFLedger(
            noise_multiplier, settings.delta, min_separation, settings.accountant, settings.prior
        )
        self.clip_norm = float(settings.clip_norm)
        self.clipping, self.split = settings.clipping, settings.split
        self.expected_clients = int(settings.expected_clients)
        self.noise_cohort = 0
        self.min_separation = int(min_separation)
        self.factorization = factorization
        self.kind = kind
        self.seed, self.secure_rng = settings.seed, settings.secure_rng
        done = self.ledger.start
        self.last_round: dict[int, int] = {}  # node id -> the last round it was let train in
        history: list[torch.Tensor] = []
        if state is not None:
            if int(state["round"]) != done:
                raise ValueError(
                    f"the BandMF state is at round {state['round']}, the privacy ledger at "
                    f"round {done}"
                )
            noise = np.asarray(state["noise"], dtype=np.float32)
            history = [torch.from_numpy(row.copy()) for row in noise]
            self.last_round = {int(k): int(v) for k, v in state["last_round"].items()}
        self.noise = CorrelatedNoise(factorization, history, done)
        self.resumed_at = done

    # ---- configuration --------------------------------------------------------------------------
    @classmethod
    def check_config(cls, dp: DPSettings, changed: frozenset[str]) -> None:
        own = cast(BandMFSettings, dp)
        reasons = {
            "max_epsilon": "BandMF sets its noise for the whole schedule (epsilon after each "
            "round is reported); set dp.target_epsilon or dp.noise_multiplier instead",
            "noise_cohort_size": "it scales noise for a sample rate q = M/N, and BandMF is "
            "not amplified by sampling",
            "population": "it states the population a sample rate q = m/N amplifies over, and "
            "BandMF's epsilon depends on the participations (num_rounds / cyclic groups) only",
        }
        for key, why in reasons.items():
            if key in changed:
                raise ValueError(
                    f"dp.{key}={getattr(own, key):g} does not apply to dp.mechanism='bandmf': "
                    f"{why}; remove dp.{key}"
                )

    @classmethod
    def check_run(cls, dp: DPSettings, participation: Participation, num_rounds: int) -> None:
        bands = cast(BandMFSettings, dp).bands
        groups = participation.min_separation
        if bands > groups:
            raise ValueError(
                f"dp.bands={bands} exceeds the {groups} cyclic groups ({participation.num_clients} "
                f"clients / clients_per_round={participation.cohort}): a client trains every "
                f"{groups} rounds, closer than the {bands} rounds its noise stays correlated; set "
                f"dp.bands <= {groups} (0 = {groups}) or train fewer clients per round"
            )
        if bands > num_rounds:
            raise ValueError(
                f"dp.bands={bands} exceeds num_rounds={num_rounds}: the noise cannot be "
                f"correlated over more rounds than the run has; set dp.bands <= {num_rounds}"
            )

    @classmethod
    def calibrate(
        cls,
        dp: DPSettings,
        *,
        sample_rate: float,
        num_rounds: int,
        prior: Sequence[Mechanism] = (),
        participation: Participation | None = None,
    ) -> float:
        """z per participation such that the ceil(num_rounds / G) participations of the run
        cost ``dp.target_epsilon`` (sample rate 1). A resumed run keeps the z it started with
        (its noise is one release with C): refused when that no longer fits the target."""
        if participation is None or not participation.cyclic:
            raise ValueError("dp.mechanism='bandmf' needs participation='cyclic'")
        k = participations(num_rounds, participation.min_separation)
        if not prior:
            return calibrate_bandmf(dp.target_epsilon, dp.delta, k, dp.accountant)
        z = prior[-1][0]
        ledger = BandMFLedger(z, dp.delta, participation.min_separation, dp.accountant, prior)
        spent = ledger.epsilon(num_rounds)
        if spent > dp.target_epsilon:
            raise ValueError(
                f"dp.mechanism='bandmf' started at noise multiplier {z:.4g}, which over "
                f"num_rounds={num_rounds} ({k} participations) spends epsilon {spent:.4g} > "
                f"dp.target_epsilon={dp.target_epsilon:g}; its correlated noise cannot change "
                "mid-run: keep num_rounds as it was"
            )
        return z

    @classmethod
    def from_config(cls, dp: DPSettings, setting: MechanismSetting) -> BandMF:
        own = cast(BandMFSettings, dp)
        participation = setting.participation
        if participation is None or not participation.cyclic:
            raise ValueError("dp.mechanism='bandmf' needs participation='cyclic'")
        n = max(setting.num_rounds, 1)
        state = dict(setting.state) if setting.state is not None else None
        if state is not None:
            if int(state["min_separation"]) != participation.min_separation:
                raise ValueError(
                    f"the BandMF run started with {state['min_separation']} cyclic groups; "
                    f"this one has {participation.min_separation}"
                )
            coefficients = tuple(float(c) for c in state["coefficients"])
            fresh = factorize(n, resolved_bands(own.bands, participation, n), own.factorization)
            if fresh.coefficients != coefficients:
                log.info(
                    "BandMF continues the C it started with (%d bands, fit to its first "
                    "horizon); a run of %d rounds from scratch would fit another",
                    len(coefficients),
                    n,
                )
            factorization = BandedFactorization(coefficients, max(n, len(coefficients)))
        else:
            factorization = factorize(
                n, resolved_bands(own.bands, participation, n), own.factorization
            )
        return cls(
            GaussianSettings.from_config(dp, setting),
            min_separation=participation.min_separation,
            factorization=factorization,
            kind=own.factorization,
            state=state,
        )

    # ---- one round ------------------------------------------------------------------------------
    def clip_rule(self, server_round: int) -> ClipRule:
        return ClipRule(self.clip_norm, self.clipping, self.split)

    def eligible(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        """``node_ids`` -- the round's cyclic group -- once each is checked to be >= G rounds
        past its last round (recorded here: every node let in is counted as trained). A
        client offered sooner, or, in a resumed run past the first G rounds, a node never seen
        (node ids renumbered by the restart) is refused: the accounting assumes neither."""
        for node in node_ids:
            last = self.last_round.get(node)
            if last is not None and server_round - last < self.min_separation:
                raise RuntimeError(
                    f"round {server_round}: node {node} trained in round {last}, fewer than the "
                    f"{self.min_separation} rounds dp.mechanism='bandmf' needs between a "
                    "client's participations (its sensitivity and epsilon assume them)"
                )
            if last is None and self.resumed_at >= self.min_separation:
                raise RuntimeError(
                    f"round {server_round}: node {node} never trained in the "
                    f"{self.resumed_at} rounds before the resume, though every client of a "
                    f"cyclic schedule trains within {self.min_separation}: the node ids changed "
                    "(Flower's engine renumbers nodes in each process), so BandMF cannot tell "
                    "when each client last trained; resume BandMF runs with engine='fast'"
                )
        for node in node_ids:
            self.last_round[node] = server_round
        return list(node_ids)

    def generator(self, server_round: int) -> torch.Generator | None:
        return None if self.secure_rng else round_generator(self.seed, server_round)

    def release(self, server_round: int, total: RoundSum) -> None:
        """sum + z S w_t, divided by m: w_t from this round's N(0, 1) draws (one draw of
        sum(numel) normals for all layers, as ``gaussian`` draws them) and the history."""
        count = sum(t.numel() for t in total.sums)
        fresh = standard_normal(count, self.generator(server_round))
        noise = self.noise.step(server_round, fresh)
        sigma = self.noise_multiplier * self.clip_norm
        offset = 0
        for tensor in total.sums:
            chunk = noise[offset : offset + tensor.numel()].view(tensor.shape)
            tensor.add_(chunk.to(tensor.dtype), alpha=sigma)
            tensor.div_(self.expected_clients)
            offset += tensor.numel()

    # ---- accounting and state -------------------------------------------------------------------
    def noise_std_on_mean(self, clip_norm: float | None = None) -> float:
        """The per-coordinate noise std on the mean released in the last round run (round 1's
        before any): z S ||row t of C^-1|| / m."""
        bound = self.clip_norm if clip_norm is None else clip_norm
        row = self.factorization.noise_std(max(self.noise.last_round, 1))
        return self.noise_multiplier * bound * row / self.expected_clients

    def state(self) -> dict[str, Any]:
        return {
            "mechanism": self.name,
            "round": self.noise.last_round,
            "coefficients": list(self.factorization.coefficients),
            "min_separation": self.min_separation,
            "last_round": {str(k): v for k, v in sorted(self.last_round.items())},
            "noise": self.noise.state(),
        }

    def describe(self) -> dict[str, Any]:
        n = self.factorization.num_rounds
        return {
            "mechanism": self.name,
            "bands": self.factorization.bands,
            "factorization": self.kind,
            "min_separation": self.min_separation,
            "participations": self.ledger.participations(n),
            "error_ratio_vs_independent_noise": self.factorization.error_ratio(),
            "epsilon_accounting": (
                "Gaussian mechanism composed over each client's participations at sample "
                f"rate 1 (no amplification), {self.ledger.accountant.upper()}"
            ),
        }
