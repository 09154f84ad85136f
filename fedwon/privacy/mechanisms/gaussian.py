"""``gaussian``: a fixed clipping bound and Gaussian noise on the sum (DP-FedAvg, Apple's recipe).

Every sampled client's update is clipped to C (flat, or per layer with sum_h C_h^2 = C^2), the
clipped updates are summed with equal weights, N(0, (z*C)^2) is added per coordinate and the sum
is divided by the expected cohort m (with ``dp.noise_cohort_size`` M: std z*C*m/M on the sum,
z*C/M on the mean). Accounted as the subsampled Gaussian mechanism at z and q (Opacus' RDP or
PRV accountant, :class:`~fedwon.privacy.PrivacyLedger`). No state beyond the ledger: the noise
of round r is drawn from a generator seeded by (run seed, r).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedwon.privacy.accounting import Mechanism, PrivacyLedger
from fedwon.privacy.clipping import check_clip_settings
from fedwon.privacy.mechanisms.base import (
    ClipRule,
    DPSettings,
    MechanismSetting,
    RoundSum,
    UserMechanism,
)
from fedwon.privacy.noise import noise_std, privatize_sum_, round_generator


class GaussianMechanism(UserMechanism):
    """Fixed clipping + the Gaussian mechanism on the sum.

    Args:
        noise_multiplier: z; the noise std on the sum is z * clip_norm (times m / M).
        clip_norm: C, the bound on each client's update (total over layers).
        expected_clients: m, the cohort size sampled per round (the average divides by it).
        sample_rate: q, for accounting (M / population with ``noise_cohort``).
        delta: the delta epsilon is reported at.
        clipping, split: see :func:`fedwon.privacy.clip_update`.
        accountant: ``"rdp"`` or ``"prv"``.
        seed: noise seed (simulation); with ``secure_rng`` the OS CSPRNG is used instead.
        noise_cohort: M >= m for a population-scale simulation (0 = the cohort m).
        prior: the ``(z, q, rounds)`` history of the rounds a resumed run has already run.
    """

    name = "gaussian"

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float,
        expected_clients: int,
        sample_rate: float,
        delta: float,
        clipping: str = "per_layer",
        split: str = "uniform",
        accountant: str = "rdp",
        seed: int = 0,
        secure_rng: bool = False,
        noise_cohort: int = 0,
        prior: Sequence[Mechanism] = (),
    ) -> None:
        check_clip_settings(clip_norm, clipping, split)
        if expected_clients < 1:
            raise ValueError(f"expected_clients must be >= 1, got {expected_clients}")
        if noise_cohort and noise_cohort < expected_clients:
            raise ValueError(
                f"noise_cohort={noise_cohort} is below expected_clients={expected_clients}: "
                "it simulates the noise of a larger cohort (0 = the cohort itself)"
            )
        self.ledger = PrivacyLedger(noise_multiplier, sample_rate, delta, accountant, prior)
        self.clip_norm = float(clip_norm)
        self.clipping = clipping
        self.split = split
        self.expected_clients = int(expected_clients)
        self.noise_cohort = int(noise_cohort)
        self.seed = seed
        self.secure_rng = secure_rng

    @staticmethod
    def settings(dp: DPSettings, setting: MechanismSetting) -> dict[str, Any]:
        """The constructor arguments every Gaussian-noise mechanism takes from a run."""
        return {
            "noise_multiplier": setting.noise_multiplier,
            "expected_clients": setting.expected_clients,
            "sample_rate": setting.sample_rate,
            "delta": dp.delta,
            "clipping": dp.clipping,
            "split": dp.split,
            "accountant": dp.accountant,
            "seed": setting.seed,
            "secure_rng": dp.secure_rng,
            "noise_cohort": dp.noise_cohort_size,
            "prior": setting.prior,
        }

    @classmethod
    def from_config(cls, dp: DPSettings, setting: MechanismSetting) -> GaussianMechanism:
        return cls(clip_norm=dp.clip_norm, **cls.settings(dp, setting))

    def clip_rule(self, server_round: int) -> ClipRule:
        return ClipRule(self.clip_norm, self.clipping, self.split)

    def generator(self, server_round: int) -> torch.Generator | None:
        """Round ``server_round``'s noise generator: seeded by (seed, round), or None for the
        OS CSPRNG (``secure_rng``)."""
        return None if self.secure_rng else round_generator(self.seed, server_round)

    def release(self, server_round: int, total: RoundSum) -> None:
        privatize_sum_(
            total.sums,
            self.noise_multiplier,
            self.clip_norm,
            self.expected_clients,
            self.generator(server_round),
            self.noise_cohort,
        )

    def noise_std_on_mean(self, clip_norm: float | None = None) -> float:
        return noise_std(
            self.noise_multiplier,
            self.clip_norm if clip_norm is None else clip_norm,
            self.expected_clients,
            self.noise_cohort,
        )
