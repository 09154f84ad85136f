"""The ``dp.*`` settings of a run (recipe table ``[dp]``, overrides ``dp.clip_norm=0.5``).

:class:`DPConfig` validates each value on its own (one-line errors naming the valid choices);
:func:`check_dp_run` checks it against the rest of the run (cohort, population, model) once,
before anything starts. Zero means "not set" for the optional numbers, because Flower's
ConfigRecord, which carries the settings to clients, has no ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import field_validator, model_validator

from fedwon.common.section import (
    Hint,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveFloat,
    Section,
)
from fedwon.privacy.clipping import MAX_CLIP_NORM
from fedwon.privacy.mechanisms import MECHANISMS
from fedwon.strategies.participation import Participation

DP_PREFIX = "dp."

# noise_multiplier and target_epsilon (set one of them), max_epsilon (0 = no cap)
Unset = Annotated[NonNegativeFloat, Hint("0 = not set")]


class DPConfig(Section):
    """Differential privacy of a run. Disabled by default; unknown keys are refused.

    * ``level``: ``user`` -- central DP on client updates (clip each update, the server adds
      Gaussian noise to their sum); ``sample`` -- local DP-SGD on each client (Opacus), which
      protects single training examples, not whole clients.
    * ``clip_norm`` C; ``clipping`` flat|per_layer; ``split`` uniform|dim (per-layer bounds).
    * ``noise_multiplier`` z, or ``target_epsilon`` to calibrate z before the run (set one).
    * ``delta``; ``max_epsilon`` (0 = no cap): the run stops after the last round within it.
    * ``accountant`` rdp|prv; ``population`` N for the sample rate q = m / N, or M / N with
      ``noise_cohort_size`` (0 = the number of simulated clients).
    * ``secure_rng``: OS-CSPRNG noise (deployment) instead of seeded noise (simulation).
    * ``placement``: where user-level clipping happens -- ``server`` (simulation) or
      ``client`` (a ClientApp mod: an unclipped update never leaves the client).
    * ``noise_cohort_size`` M (user level; 0 = the sampled cohort m): population-scale
      simulation. The m sampled clients train, but the noise on their average is that of a
      cohort of M >= m (std z*C/M) and epsilon is accounted at q = M / N -- pfl-research's
      ``noise_scale`` = m/M. What M clients' own updates would add is not simulated.
    * ``mechanism`` (user level): ``gaussian`` -- the fixed bound ``clip_norm``;
      ``adaptive_clipping`` -- a bound that starts at ``initial_clip_norm`` and tracks the
      ``target_unclipped_quantile`` of the update norms with step ``clip_learning_rate``,
      from a count noised with std ``unclipped_count_stddev`` (0 = the noise cohort / 20);
      z (``noise_multiplier`` or calibrated) is what the update and the count cost together
      (:mod:`fedwon.privacy.mechanisms`); ``bandmf`` -- DP-FTRL with banded matrix
      factorization: noise correlated over ``bands`` rounds (0 = as many as the cyclic
      schedule allows), C ``factorization`` ``optimized`` or ``sqrt``; needs
      ``participation = "cyclic"`` and is accounted without amplification by sampling
      (:mod:`fedwon.privacy.bandmf`). A mechanism's own keys are refused under another.
    """

    enabled: bool = False
    level: Literal["user", "sample"] = "user"
    clip_norm: PositiveFloat = 1.0
    clipping: Literal["flat", "per_layer"] = "per_layer"
    split: Literal["uniform", "dim"] = "uniform"
    noise_multiplier: Unset = 0.0  # 0 = calibrate from target_epsilon
    target_epsilon: Unset = 0.0  # 0 = not set
    delta: Annotated[OpenUnitInterval, Hint("e.g. 1e-5 or 1/population")] = 1e-5
    max_epsilon: Unset = 0.0  # 0 = no cap
    accountant: Literal["rdp", "prv"] = "rdp"
    population: Annotated[NonNegativeInt, Hint("0 = the number of simulated clients")] = 0
    secure_rng: bool = False
    placement: Literal["server", "client"] = "server"
    noise_cohort_size: Annotated[NonNegativeInt, Hint("0 = the sampled cohort")] = 0
    mechanism: str = "gaussian"  # a name in fedwon.privacy.mechanisms.MECHANISMS
    initial_clip_norm: PositiveFloat = 0.1  # adaptive_clipping: C_1 (Andrew et al.'s default)
    # adaptive_clipping: gamma, the share left unclipped
    target_unclipped_quantile: Annotated[
        OpenUnitInterval, Hint("the share of updates left unclipped; 0.5 = the median")
    ] = 0.5
    # adaptive_clipping: eta, the geometric step
    clip_learning_rate: Annotated[PositiveFloat, Hint("Andrew et al. recommend 0.2")] = 0.2
    # adaptive_clipping: sigma_b
    unclipped_count_stddev: Annotated[NonNegativeFloat, Hint("0 = the noise cohort / 20")] = 0.0
    # bandmf: b, rounds a noise stays correlated over
    bands: Annotated[NonNegativeInt, Hint("0 = as many as the cyclic groups")] = 0
    factorization: Literal["optimized", "sqrt"] = "optimized"  # bandmf: how C is chosen

    @field_validator("clip_norm", "initial_clip_norm")
    @classmethod
    def _below_overflow(cls, value: float) -> float:
        if value > MAX_CLIP_NORM:
            raise ValueError(
                f"{value:g} is beyond {MAX_CLIP_NORM:g}: a bound that large clips nothing and "
                "its noise (noise_multiplier x clip_norm) overflows float32 updates; typical "
                "bounds are 0.01-10"
            )
        return value

    @field_validator("mechanism")
    @classmethod
    def _known_mechanism(cls, value: str) -> str:
        if value not in MECHANISMS:
            raise ValueError(f"unknown mechanism {value!r}; choose one of {list(MECHANISMS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DPConfig:
        if not self.enabled:
            self._check_unused()
            return self
        if (self.noise_multiplier > 0) == (self.target_epsilon > 0):
            raise ValueError(
                "set exactly one of dp.noise_multiplier (> 0) or dp.target_epsilon "
                f"(> 0), got noise_multiplier={self.noise_multiplier}, "
                f"target_epsilon={self.target_epsilon}"
            )
        if self.max_epsilon and self.target_epsilon > self.max_epsilon:
            raise ValueError(
                f"dp.target_epsilon={self.target_epsilon} exceeds dp.max_epsilon={self.max_epsilon}"
            )
        if self.level == "sample" and self.max_epsilon:
            raise ValueError(
                "dp.max_epsilon caps user-level epsilon; dp.level='sample' reports each "
                "client's own epsilon instead: set dp.max_epsilon=0 or dp.level='user'"
            )
        if self.level == "sample" and self.placement == "client":
            raise ValueError(
                "dp.placement applies to dp.level='user' (where updates are clipped); "
                "DP-SGD (dp.level='sample') always clips on the client: leave placement='server'"
            )
        if self.level == "sample" and self.noise_cohort_size:
            raise ValueError(
                f"dp.noise_cohort_size={self.noise_cohort_size} scales the server's noise on "
                "the clients' average (dp.level='user'); DP-SGD (dp.level='sample') adds its "
                "noise on each client: set dp.noise_cohort_size=0 or dp.level='user'"
            )
        self._check_mechanism()
        return self

    def _check_mechanism(self) -> None:
        """``dp.mechanism`` against the level and the other keys: a user-level mechanism
        with DP-SGD, a mechanism's own keys set under another one (they would be ignored), and
        the chosen mechanism's own rules."""
        default = type(self).model_fields["mechanism"].default
        if self.level == "sample" and self.mechanism != default:
            raise ValueError(
                f"dp.mechanism={self.mechanism!r} is a user-level mechanism (it clips and noises "
                "client updates on the server); DP-SGD (dp.level='sample') clips each example's "
                f"gradient to dp.clip_norm: set dp.mechanism={default!r} or dp.level='user'"
            )
        chosen = MECHANISMS[self.mechanism]
        changed = frozenset(self._changed())
        for name, other in MECHANISMS.items():
            for key in other.keys:
                if key in changed and key not in chosen.keys:
                    raise ValueError(
                        f"{DP_PREFIX}{key} is read by dp.mechanism={name!r} only; with "
                        f"dp.mechanism={self.mechanism!r} it would be ignored: set "
                        f"dp.mechanism={name!r} or remove {DP_PREFIX}{key}"
                    )
        chosen.check_config(self, changed)

    def _changed(self) -> list[str]:
        """The fields set away from their defaults (``enabled`` aside)."""
        return [
            name
            for name, field in type(self).model_fields.items()
            if name != "enabled" and getattr(self, name) != field.default
        ]

    def noise_cohort(self, sampled: int) -> int:
        """M: the cohort the noise and the sample rate are those of -- ``noise_cohort_size``,
        or the ``sampled`` cohort m when it is 0 (no population-scale simulation)."""
        return self.noise_cohort_size or sampled

    def _check_unused(self) -> None:
        """With DP off, any dp.* setting away from its default is refused: a ``[dp]`` table
        whose ``enabled = true`` line was forgotten would otherwise train with no privacy at
        all while its author believes otherwise."""
        changed = [f"{DP_PREFIX}{name}" for name in self._changed()]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} set but dp.enabled is false, so the run would train "
                "without differential privacy; set dp.enabled=true (or remove the dp.* keys)"
            )

    def describe(self, population: int = 0, simulated: int = 0) -> str:
        """One line for a run's banner: whether DP is on, at which level and target, and
        (user level) the population its epsilon is stated for -- and, with
        ``noise_cohort_size``, that the noise and q are a larger cohort's while only the
        sampled one trains, so nobody reads the run as M clients' training."""
        if not self.enabled:
            return "DP off"
        if self.level == "user" and population > simulated > 0:
            scope = f", epsilon stated for a population of {population} (simulated: {simulated})"
        elif self.level == "user" and population:
            scope = f", population {population}"
        else:
            scope = ""
        if self.level == "user" and self.noise_cohort_size:
            scope += (
                f", noise and sample rate of a cohort of {self.noise_cohort_size} clients"
                + (f" (q = {self.noise_cohort_size}/{population})" if population else "")
                + " simulated: only the sampled cohort trains"
            )
        level = "user-level" if self.level == "user" else "sample-level (DP-SGD)"
        if self.target_epsilon:
            noise = f"target epsilon {self.target_epsilon:g}"
        else:
            noise = f"noise multiplier {self.noise_multiplier:g}"
        cap = f", max epsilon {self.max_epsilon:g}" if self.max_epsilon else ""
        if self.level == "user" and self.mechanism == "adaptive_clipping":
            clip = (
                f"adaptive clip from {self.initial_clip_norm:g} toward the "
                f"{self.target_unclipped_quantile:g} quantile of update norms"
            )
        else:
            clip = f"clip {self.clip_norm:g}"
        if self.level == "user" and self.mechanism == "bandmf":
            bands = f"{self.bands} bands" if self.bands else "bands = cyclic groups"
            per = "" if self.target_epsilon else " per participation"
            noise = f"BandMF ({bands}, {self.factorization} C), {noise}{per}"
        return f"DP {level}: {noise} at delta {self.delta:g}{cap}, {clip}{scope}"

    # ---- (de)serialisation (Flower's ConfigRecord carries flat scalars) -----------------------
    def to_flat(self, prefix: str = DP_PREFIX) -> dict[str, bool | int | float | str]:
        """``{"dp.enabled": ..., ...}``: the form recipes' overrides and ConfigRecords use."""
        return {f"{prefix}{k}": v for k, v in self.model_dump().items()}

    @classmethod
    def from_flat(cls, values: dict[str, Any], prefix: str = DP_PREFIX) -> DPConfig:
        """The ``dp.*`` entries of a flat dict (other keys ignored) as a validated DPConfig."""
        return cls(**{k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)})


@dataclass(frozen=True)
class DPRunCheck:
    """What :func:`check_dp_run` concluded: the sample rate and any warnings to log."""

    population: int
    sample_rate: float
    warnings: tuple[str, ...]


def check_dp_run(
    dp: DPConfig,
    *,
    clients_per_round: int,
    min_clients: int,
    num_clients: int,
    norm: str,
    agc_clip: float = 0.0,
    proximal_mu: float = 0.0,
    participation: Participation | None = None,
    num_rounds: int = 0,
) -> DPRunCheck:
    """Check ``dp`` against the run; raise ValueError (one line) or return warnings.

    Refused: a user-level DP run that may aggregate fewer replies than it sampled (the noise
    and the 1/m average are calibrated to the full cohort m), a population smaller than the
    cohort, DP-SGD on a BatchNorm model, with AGC or with FedProx's proximal term (Opacus
    replaces the gradient by its own clipped, noised one, so either would be silently
    dropped), a ``noise_cohort_size`` M below the cohort (it would add *more* noise than the
    cohort's own while accounting at a lower q: a simulation of nothing) or above the
    population (q = M / N > 1), a ``dp.noise_multiplier`` the mechanism cannot reach with that
    cohort (adaptive clipping: z must stay below twice the unclipped count's noise, whose
    default is M/20), a ``participation`` schedule the mechanism's accounting does not hold
    for (amplification by sampling with cyclic groups, BandMF with uniform sampling) or
    settings the mechanism cannot honour over ``num_rounds`` rounds of that schedule (BandMF:
    more bands than cyclic groups or rounds). The sample rate is M / N (m / N without
    ``noise_cohort_size``).
    Warned: delta >= 1/population (a mechanism that publishes one random client's data
    outright is (0, 1/N)-DP, so such a delta means little).
    """
    population = dp.population or num_clients
    if not dp.enabled:
        return DPRunCheck(population, clients_per_round / max(population, 1), ())
    noise_cohort = dp.noise_cohort(clients_per_round)
    if noise_cohort < clients_per_round:
        raise ValueError(
            f"dp.noise_cohort_size={noise_cohort} is below the {clients_per_round} clients "
            "sampled per round: it simulates the noise of a larger cohort; set it >= "
            f"{clients_per_round} (or 0 for the sampled cohort)"
        )
    if clients_per_round <= population < noise_cohort:
        raise ValueError(
            f"dp.noise_cohort_size={noise_cohort} is larger than the population of "
            f"{population} (q = M / N would exceed 1); raise dp.population to at least "
            f"{noise_cohort} or lower dp.noise_cohort_size"
        )
    if clients_per_round > population:
        raise ValueError(
            f"dp.population={population} is smaller than the {clients_per_round} clients "
            "sampled per round; set dp.population to the number of clients that could be sampled"
        )
    if dp.level == "user" and min_clients < clients_per_round:
        raise ValueError(
            f"dp.enabled with min_clients={min_clients} below the {clients_per_round} clients "
            "sampled per round: the noise and the average are calibrated to the full cohort, "
            f"so set min_clients={clients_per_round}"
        )
    if dp.level == "sample" and norm == "bn":
        raise ValueError(
            "dp.level='sample' (DP-SGD) cannot train BatchNorm: per-example gradients are "
            "undefined when examples are normalized together; use norm='gn' or norm='ws' (FedWon)"
        )
    if dp.level == "sample" and agc_clip > 0:
        raise ValueError(
            f"dp.level='sample' with agc_clip={agc_clip}: DP-SGD overwrites the gradient AGC "
            "clips with its own clipped, noised one; set agc_clip=0 (DP-SGD clipping replaces it)"
        )
    if dp.level == "sample" and proximal_mu > 0:
        raise ValueError(
            f"dp.level='sample' with proximal_mu={proximal_mu}: DP-SGD steps with per-example "
            "gradients of the data loss only, so FedProx's proximal term would be ignored; "
            "set proximal_mu=0 (or use dp.level='user')"
        )
    if dp.level == "user":
        mechanism = MECHANISMS[dp.mechanism]
        schedule = participation or Participation(
            "uniform", max(num_clients, clients_per_round), clients_per_round
        )
        if schedule.mode not in mechanism.participation_modes:
            raise ValueError(_participation_refusal(dp.mechanism, schedule.mode))
        mechanism.check_run(dp, schedule, num_rounds)
        if dp.noise_multiplier:  # a calibrated z is checked once known
            mechanism.check_noise(dp, dp.noise_multiplier, noise_cohort)
    warnings: list[str] = []
    if dp.delta >= 1 / population:
        warnings.append(
            f"dp.delta={dp.delta:g} is >= 1/population (1/{population}); a delta that large "
            "allows leaking a whole client's data with that probability; use delta << 1/population"
        )
    return DPRunCheck(population, noise_cohort / population, tuple(warnings))


def _participation_refusal(mechanism: str, mode: str) -> str:
    """Why ``dp.mechanism`` cannot be accounted under participation ``mode`` (one line)."""
    if mode == "cyclic":
        return (
            f"dp.mechanism={mechanism!r} is accounted with amplification by sampling (each "
            "client in a round with probability q = m/N), but participation='cyclic' picks the "
            "cohort by a fixed schedule: set participation='uniform', or dp.mechanism='bandmf' "
            "(accounted for cyclic participation)"
        )
    return (
        f"dp.mechanism={mechanism!r} correlates its noise across rounds and needs each client to "
        "come back no sooner than dp.bands rounds later, which uniform random sampling does not "
        "ensure (a client can be drawn in consecutive rounds): set participation='cyclic' "
        "(server section)"
    )
