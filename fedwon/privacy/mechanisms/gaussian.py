"""``gaussian``: a fixed clipping bound and Gaussian noise on the sum (DP-FedAvg, Apple's recipe).

Every sampled client's update is clipped to C (flat, or per layer with sum_h C_h^2 = C^2), the
clipped updates are summed with equal weights, N(0, (z*C)^2) is added per coordinate and the sum
is divided by the expected cohort m (with ``dp.noise_cohort_size`` M: std z*C*m/M on the sum,
z*C/M on the mean). Accounted as the subsampled Gaussian mechanism at z and q (Opacus' RDP or
PRV accountant, :class:`~fedwon.privacy.PrivacyLedger`). No state beyond the ledger: the noise
of round r is drawn from a generator seeded by (run seed, r).
"""

from __future__ import annotations

import torch

from fedwon.privacy.accounting import PrivacyLedger
from fedwon.privacy.mechanisms.base import (
    ClipRule,
    DPSettings,
    GaussianSettings,
    MechanismSetting,
    RoundSum,
    UserMechanism,
)
from fedwon.privacy.noise import noise_std, privatize_sum_, round_generator


class GaussianMechanism(UserMechanism):
    """Fixed clipping + the Gaussian mechanism on the sum, as ``settings`` describe."""

    name = "gaussian"

    def __init__(self, settings: GaussianSettings) -> None:
        self.ledger = PrivacyLedger(
            settings.noise_multiplier,
            settings.sample_rate,
            settings.delta,
            settings.accountant,
            settings.prior,
        )
        self.clip_norm = float(settings.clip_norm)
        self.clipping = settings.clipping
        self.split = settings.split
        self.expected_clients = int(settings.expected_clients)
        self.noise_cohort = int(settings.noise_cohort)
        self.seed = settings.seed
        self.secure_rng = settings.secure_rng

    @classmethod
    def from_config(cls, dp: DPSettings, setting: MechanismSetting) -> GaussianMechanism:
        return cls(GaussianSettings.from_config(dp, setting))

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
