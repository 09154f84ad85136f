"""``adaptive_clipping``: the clipping bound tracks a quantile of the update norms (Andrew et al.
2021, "Differentially Private Learning with Adaptive Clipping", arXiv:1905.03871).

Round t clips every update to the current bound C_t and, besides the noisy sum, releases a
noisy count of the updates the clipping left untouched (b_i = 1 when client i's update is
within its bound)::

    b~      = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2     (m: the expected cohort)
    C_t+1   = C_t * exp(-eta * (b~ - gamma))

so C grows while fewer than a fraction gamma of the updates fit and shrinks while more do: it
settles at the gamma-quantile of the update norms (``dp.target_unclipped_quantile``; 0.5 = the
median), moving by at most a factor exp(eta) per round (``dp.clip_learning_rate``, 0.2 as
recommended).

**Privacy.** The centred count has sensitivity 1/2, so with noise sigma_b it is a Gaussian
mechanism of noise multiplier 2*sigma_b; released with the sum (noise multiplier z_upd) in the
same round on the same sampled cohort, the pair is one Gaussian mechanism of noise multiplier
z with z^-2 = z_upd^-2 + (2 sigma_b)^-2 (Andrew et al., Theorem 1). fedwon keeps z -- given as
``dp.noise_multiplier`` or calibrated to ``dp.target_epsilon`` -- as what every round is
accounted at, and raises the updates' noise to ``z_upd = (z^-2 - (2 sigma_b)^-2)^-1/2``, the
count's cost thus inside epsilon. That needs z < 2 sigma_b: sigma_b defaults to M/20 (M the
noise cohort, m without ``dp.noise_cohort_size``), the paper's recommendation (the noised
fraction then has std 1/20). With ``dp.noise_cohort_size`` both noises are scaled by m/M, so the
mean and the fraction carry a cohort of M's noise (std z_upd*C/M and sigma_b/M) and epsilon is
accounted at q = M/N.

**Per-layer clipping: one bound, split by the existing rule.** With ``dp.clipping =
"per_layer"`` the mechanism adapts the *total* bound C and splits it as fixed clipping does
(``uniform``: C/sqrt(H), ``dim``: by size), and b_i = 1 when *no* layer of client i was clipped
-- so C tracks the gamma-quantile of the smallest total bound that leaves an update untouched.
Why not one adaptive bound per layer: H counts would each cost privacy (their composed
sensitivity grows as sqrt(H)/2, so each count's noise would have to grow by sqrt(H) to cost
what one count costs, and their quantile estimates would get that much noisier), while one
count keeps the sensitivity analysis, the z_upd formula and Apple's split unchanged; the split
already sets how the layers share C.

**Client placement.** Each round the server sends C_t (``dp-clip-norm``) and each client's
:func:`fedwon.privacy.dp_clipping_mod` clips and reports its b_i (``dp-unclipped``) -- seen by
the trusted server only, like the clipped update itself; a lying client can only bias the
quantile, never the privacy (the count's sensitivity is 1/2 whatever a client reports).

**State.** C_t+1 is the mechanism's state (saved with every checkpoint, restored on resume);
both noises of round t come from the generator seeded by (run seed, t), the count's drawn after
the update's, so a resumed run continues bit for bit.

Flower 1.39's ``DifferentialPrivacyServerSideAdaptiveClipping`` / ``ClientSide`` apply the same
geometric rule, but count *clipped* updates where the paper counts unclipped ones (its
``norm_bit`` is ``scaling_factor < 1``), so their bound moves away from the target quantile,
and they noise a round's aggregate with the bound *after* its update (C_t+1), not the bound its
updates were clipped to; ``tests/privacy/test_adaptive_clipping.py`` pins both against this
implementation.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, cast

from fedwon.common.records import CLIP_NORM_METRIC
from fedwon.privacy.clipping import MAX_CLIP_NORM
from fedwon.privacy.mechanisms.base import (
    DPSettings,
    GaussianSettings,
    MechanismSetting,
    RoundSum,
)
from fedwon.privacy.mechanisms.gaussian import GaussianMechanism
from fedwon.privacy.noise import noise_scale, noise_std, privatize_sum_, standard_normal_value


class AdaptiveSettings(DPSettings, Protocol):
    """The ``dp.*`` keys of adaptive clipping (fields of :class:`~fedwon.privacy.DPConfig`)."""

    @property
    def initial_clip_norm(self) -> float: ...
    @property
    def target_unclipped_quantile(self) -> float: ...
    @property
    def clip_learning_rate(self) -> float: ...
    @property
    def unclipped_count_stddev(self) -> float: ...


DEFAULTS = {
    "initial_clip_norm": 0.1,
    "target_unclipped_quantile": 0.5,
    "clip_learning_rate": 0.2,
}
# Andrew et al.: sigma_b = (expected cohort) / 20, so the noised fraction has std 1/20
COHORT_PER_COUNT_STDDEV = 20


def default_count_stddev(noise_cohort: int) -> float:
    """sigma_b when ``dp.unclipped_count_stddev`` is 0: the noise cohort M over 20."""
    return noise_cohort / COHORT_PER_COUNT_STDDEV


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """z_upd = (z^-2 - (2 sigma_b)^-2)^-1/2: the updates' noise multiplier that, released with
    a count of noise ``count_stddev`` (sensitivity 1/2), composes to ``noise_multiplier`` z
    (Andrew et al. 2021, Theorem 1). 0 for z = 0 (no noise at all: tests only)."""
    if noise_multiplier == 0:
        return 0.0
    if not noise_multiplier < 2 * count_stddev:
        raise ValueError(
            f"noise multiplier {noise_multiplier:.4g} needs an unclipped count's noise std above "
            f"{noise_multiplier / 2:.4g} (the count alone costs noise multiplier 2*sigma_b, "
            f"which must exceed z), got {count_stddev:.4g}"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def composed_noise_multiplier(update_multiplier: float, count_stddev: float) -> float:
    """z = (z_upd^-2 + (2 sigma_b)^-2)^-1/2: what a round releasing the sum at noise
    multiplier ``update_multiplier`` and the count at noise ``count_stddev`` costs."""
    if update_multiplier == 0 or count_stddev == 0:
        return 0.0
    return float((update_multiplier**-2 + (2 * count_stddev) ** -2) ** -0.5)


class AdaptiveClipping(GaussianMechanism):
    """Quantile-tracking clipping bound + the Gaussian mechanism on the sum and on the count.

    Args:
        settings: as :class:`GaussianMechanism`'s, but ``noise_multiplier`` is the z every
            round is accounted at and ``clip_norm`` the bound of the first round run here
            (C_1, or a resumed run's current bound).
        initial_clip_norm: C_1 (None: ``settings.clip_norm``).
        target_unclipped_quantile: gamma in (0, 1), the share of updates left unclipped.
        clip_learning_rate: eta > 0, the geometric step.
        unclipped_count_stddev: sigma_b, the count's noise std (None: M/20). 0 only without
            noise (z = 0: a test setting, as in Flower).
    """

    name = "adaptive_clipping"
    keys = (
        "initial_clip_norm",
        "target_unclipped_quantile",
        "clip_learning_rate",
        "unclipped_count_stddev",
    )
    counts_unclipped = True
    stateful = True

    def __init__(
        self,
        settings: GaussianSettings,
        *,
        initial_clip_norm: float | None = None,
        target_unclipped_quantile: float = DEFAULTS["target_unclipped_quantile"],
        clip_learning_rate: float = DEFAULTS["clip_learning_rate"],
        unclipped_count_stddev: float | None = None,
    ) -> None:
        super().__init__(settings)
        if not 0 < target_unclipped_quantile < 1:
            raise ValueError(
                f"target_unclipped_quantile must be in (0, 1), got {target_unclipped_quantile}"
            )
        if not (clip_learning_rate > 0 and math.isfinite(clip_learning_rate)):
            raise ValueError(f"clip_learning_rate must be > 0, got {clip_learning_rate}")
        cohort = self.noise_cohort or self.expected_clients
        count_stddev = (
            default_count_stddev(cohort)
            if unclipped_count_stddev is None
            else unclipped_count_stddev
        )
        if not (count_stddev >= 0 and math.isfinite(count_stddev)):
            raise ValueError(f"unclipped_count_stddev must be >= 0, got {count_stddev}")
        self.initial_clip_norm = float(
            settings.clip_norm if initial_clip_norm is None else initial_clip_norm
        )
        self.target_unclipped_quantile = float(target_unclipped_quantile)
        self.clip_learning_rate = float(clip_learning_rate)
        self.unclipped_count_stddev = float(count_stddev)
        self.update_noise_multiplier = update_noise_multiplier(
            settings.noise_multiplier, count_stddev
        )
        self.last_clip_norm: float | None = None  # the bound of the last round released
        self.noisy_unclipped_fraction: float | None = None  # b~ of that round

    @classmethod
    def check_config(cls, dp: DPSettings, changed: frozenset[str]) -> None:
        if "clip_norm" in changed:
            raise ValueError(
                f"dp.clip_norm={dp.clip_norm:g} is a fixed bound, but "
                "dp.mechanism='adaptive_clipping' adapts its bound, starting from "
                f"dp.initial_clip_norm: set dp.initial_clip_norm={dp.clip_norm:g} and remove "
                "dp.clip_norm (or use dp.mechanism='gaussian')"
            )

    @classmethod
    def check_noise(cls, dp: DPSettings, noise_multiplier: float, noise_cohort: int) -> None:
        own = cast(AdaptiveSettings, dp).unclipped_count_stddev
        count_stddev = own or default_count_stddev(noise_cohort)
        if noise_multiplier < 2 * count_stddev:
            return
        source = (
            f"dp.noise_multiplier={noise_multiplier:g}"
            if dp.noise_multiplier
            else f"noise multiplier {noise_multiplier:.4g} (calibrated to "
            f"dp.target_epsilon={dp.target_epsilon:g})"
        )
        given = (
            f"dp.unclipped_count_stddev={count_stddev:g}"
            if own
            else f"its default {count_stddev:g} (a cohort of {noise_cohort} / 20)"
        )
        raise ValueError(
            f"{source} is out of reach of adaptive clipping with {given}: the unclipped count "
            "alone costs noise multiplier 2*sigma_b, which must exceed z (Andrew et al. 2021, "
            f"Thm 1); set dp.unclipped_count_stddev above {noise_multiplier / 2:.4g}, sample "
            "more clients per round, or lower the noise"
        )

    @classmethod
    def from_config(cls, dp: DPSettings, setting: MechanismSetting) -> AdaptiveClipping:
        own = cast(AdaptiveSettings, dp)
        clip_norm = own.initial_clip_norm
        if setting.state is not None:
            clip_norm = float(setting.state["clip_norm"])
        return cls(
            GaussianSettings.from_config(dp, setting, clip_norm=clip_norm),
            initial_clip_norm=own.initial_clip_norm,
            target_unclipped_quantile=own.target_unclipped_quantile,
            clip_learning_rate=own.clip_learning_rate,
            unclipped_count_stddev=own.unclipped_count_stddev or None,
        )

    def release(self, server_round: int, total: RoundSum) -> None:
        generator = self.generator(server_round)
        bound, m = self.clip_norm, self.expected_clients
        privatize_sum_(
            total.sums, self.update_noise_multiplier, bound, m, generator, self.noise_cohort
        )
        std = self.unclipped_count_stddev * noise_scale(m, self.noise_cohort)
        noise = std * standard_normal_value(generator) if std > 0 else 0.0
        # the centred count sum(b_i - 1/2) has sensitivity 1/2; + m/2 (public) shifts it back
        fraction = (total.unclipped - total.clients / 2 + noise + m / 2) / m
        step = math.exp(-self.clip_learning_rate * (fraction - self.target_unclipped_quantile))
        self.last_clip_norm, self.noisy_unclipped_fraction = bound, fraction
        # post-processing: capped where a bound's noise would overflow float32 updates
        self.clip_norm = min(bound * step, MAX_CLIP_NORM)

    def round_metrics(self) -> dict[str, float]:
        return {} if self.last_clip_norm is None else {CLIP_NORM_METRIC: self.last_clip_norm}

    def noise_std_on_mean(self, clip_norm: float | None = None) -> float:
        return noise_std(
            self.update_noise_multiplier,
            self.clip_norm if clip_norm is None else clip_norm,
            self.expected_clients,
            self.noise_cohort,
        )

    def state(self) -> dict[str, Any]:
        return {"mechanism": self.name, "clip_norm": self.clip_norm}

    def describe(self) -> dict[str, Any]:
        return {
            "mechanism": self.name,
            "initial_clip_norm": self.initial_clip_norm,
            "target_unclipped_quantile": self.target_unclipped_quantile,
            "clip_learning_rate": self.clip_learning_rate,
            "unclipped_count_stddev": self.unclipped_count_stddev,
            "update_noise_multiplier": self.update_noise_multiplier,
        }
