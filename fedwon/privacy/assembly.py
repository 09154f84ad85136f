"""Assembling a run's differential privacy: the DP wrapper its ``dp`` section asks for.

:class:`PrivacyWrap` is the ``wrap`` the server gives :func:`fedwon.strategies.build_strategy`:
the caller's own wrapper, then :class:`~fedwon.privacy.CentralDP` (user level) or
:class:`~fedwon.privacy.ClientEpsilons` (sample level) around it, so the round rules stay
outermost. It also plans the run's last round under ``dp.max_epsilon``, continues a resumed
run's privacy ledger and writes the ``privacy`` block of ``summary.json``. What it needs of the
run besides the dp section is :class:`DPRun`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedwon.common.records import CLIP_NORM_METRIC
from fedwon.common.section import ConfigError
from fedwon.privacy.accounting import Mechanism
from fedwon.privacy.central_dp import CentralDP
from fedwon.privacy.client_epsilons import ClientEpsilons
from fedwon.privacy.config import DPConfig, DPRunCheck
from fedwon.privacy.mechanisms import MECHANISMS
from fedwon.strategies.participation import Participation

log = logging.getLogger(__name__)
Row = dict[str, Any]


@dataclass(frozen=True)
class DPRun:
    """What DP needs to know of a run besides its ``dp`` section: the cohort it calibrates
    noise and averages for, the checked population, the number of rounds, the seed and who
    trains when (``participation``; None: uniform sampling)."""

    dp: DPConfig
    check: DPRunCheck
    expected_clients: int
    num_clients: int
    num_rounds: int
    seed: int
    participation: Participation | None = None


class PrivacyWrap:
    """The ``wrap`` that :func:`build_strategy` applies: the caller's wrapper, then (with
    ``dp.enabled``) fedwon's DP wrapper around it -- :class:`~fedwon.privacy.CentralDP` at
    user level, :class:`~fedwon.privacy.ClientEpsilons` at sample level (the clients run
    DP-SGD) -- so the round rules stay outermost and DP sees only the replies they kept.

    A resumed user-level run continues the privacy ledger of its checkpoint (``prior``, see
    :func:`prior_history`): the rounds
    already run keep the noise they used, and epsilon (reported, capped by ``dp.max_epsilon``,
    targeted by ``dp.target_epsilon``) is always that of every round of the run composed.
    """

    def __init__(
        self,
        run: DPRun,
        wrap: Callable[[Strategy], Strategy] | None = None,
        prior: Sequence[Mechanism] = (),
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.run, self.wrap = run, wrap
        self.dp: CentralDP | None = None
        self.sample_dp: ClientEpsilons | None = None
        self.check = run.check
        self.prior = list(prior)
        self.prior_state = state
        for warning in self.check.warnings:
            log.warning("%s", warning)

    def __call__(self, strategy: Strategy) -> Strategy:
        inner = self.wrap(strategy) if self.wrap is not None else strategy
        dp = self.run.dp
        if not dp.enabled:
            return inner
        if dp.level == "sample":
            self.sample_dp = ClientEpsilons(inner)
            return self.sample_dp
        try:
            self.dp = CentralDP.from_config(
                inner,
                dp,
                expected_clients=self.run.expected_clients,
                population=self.check.population,
                num_rounds=self.run.num_rounds,
                seed=self.run.seed,
                prior=self.prior,
                state=self.prior_state,
                participation=self.run.participation,
            )
        except ValueError as err:  # a budget out of reach: the user's settings
            raise ConfigError(str(err)) from None
        return self.dp

    def history(self, rounds: int) -> list[tuple[float, float, int]] | None:
        """The privacy ledger's ``(z, q, rounds)`` segments of rounds 1..``rounds`` (None
        without user-level DP): what a checkpoint keeps."""
        return None if self.dp is None else self.dp.ledger.history(rounds)

    def state(self) -> dict[str, Any] | None:
        """The user-level mechanism's state after the last round run (None without one, or
        for a stateless mechanism): what a checkpoint keeps besides the ledger, so that a
        resumed run continues it exactly (adaptive clipping: the next round's bound)."""
        return None if self.dp is None else self.dp.mechanism.state()

    def last_round(self, start_round: int = 0) -> int:
        """The last round the run may take: ``num_rounds``, or fewer under ``dp.max_epsilon``
        (``start_round`` when a resumed run has spent its budget already)."""
        if self.dp is None:
            return self.run.num_rounds
        last = self.dp.rounds_within_budget(self.run.num_rounds)
        if last < self.run.num_rounds:
            log.warning(
                "dp.max_epsilon=%g allows %d of the %d rounds (epsilon %.3f after round %d): "
                "the run stops after round %d",
                self.run.dp.max_epsilon,
                last,
                self.run.num_rounds,
                self.dp.ledger.epsilon(last),
                last,
                last,
            )
        return last

    def summary(self, rows: list[Row]) -> dict[str, Any]:
        """The ``privacy`` block of summary.json (empty without DP). Epsilon is that of the
        rounds recorded in the run directory (all of them, over every process that ran
        some), never only of the rounds run by this process."""
        if self.sample_dp is not None:
            dp = self.run.dp
            epsilons = [r["epsilon"] for r in rows if r.get("epsilon") is not None]
            return {
                "privacy": {
                    "level": "sample",
                    "epsilon": max(epsilons, default=0.0),  # the worst client's, over the run
                    "delta": dp.delta,
                    "noise_multiplier": dp.noise_multiplier or None,  # None: per client
                    "target_epsilon": dp.target_epsilon or None,
                    "accountant": dp.accountant,
                    "clip_norm": dp.clip_norm,
                    "clipping": dp.clipping,
                }
            }
        if self.dp is None:
            return {}
        ledger = self.dp.ledger
        mechanism = self.dp.mechanism
        done = max((int(r["round"]) for r in rows), default=0)
        last = self.dp.rounds_within_budget(self.run.num_rounds)
        bounds = [r[CLIP_NORM_METRIC] for r in rows if r.get(CLIP_NORM_METRIC) is not None]
        clip_norm = bounds[-1] if bounds else self.dp.clip_norm  # the last round's (adaptive)
        return {
            "privacy": {
                "level": "user",
                **mechanism.describe(),
                "epsilon": ledger.epsilon(done),
                "delta": ledger.delta,
                "noise_multiplier": ledger.noise_multiplier,
                "noise_history": [
                    {"noise_multiplier": z, "sample_rate": q, "rounds": n}
                    for z, q, n in ledger.history(done)
                ],
                "sample_rate": ledger.sample_rate,
                "target_epsilon": self.run.dp.target_epsilon or None,
                "max_epsilon": self.run.dp.max_epsilon or None,
                "accountant": ledger.accountant,
                "clip_norm": clip_norm,
                "clipping": self.dp.clipping,
                "placement": self.dp.placement,
                "noise_std_on_mean": mechanism.noise_std_on_mean(clip_norm),
                **population_statement(
                    self.check.population,
                    self.run.num_clients,
                    self.dp.expected_clients,
                    self.dp.noise_cohort,
                ),
                "rounds_within_budget": last,
                "stopped_by_budget": last < self.run.num_rounds,
            }
        }


def prior_history(
    run: DPRun, checkpoint_round: int, history: Sequence[Mechanism] | None
) -> list[Mechanism]:
    """The noise history of the rounds a resumed user-level DP run has already run (its
    checkpoint's ``history`` at round ``checkpoint_round``).

    A checkpoint without one (written by an older fedwon, which did not record the noise of
    each round) is refused: its rounds' noise cannot be known, and a guessed one could state
    an epsilon below the truth."""
    if checkpoint_round == 0 or not (run.dp.enabled and run.dp.level == "user"):
        return []
    if history is None:
        raise ConfigError(
            "cannot resume this DP run: its checkpoint holds no privacy ledger (it was written "
            "by an older fedwon that did not record each round's noise), so the epsilon of its "
            f"{checkpoint_round} rounds cannot be verified; start the run again"
        )
    covered = sum(n for _, _, n in history)
    if covered != checkpoint_round:
        raise ConfigError(
            f"cannot resume this DP run: its checkpoint's privacy ledger covers {covered} "
            f"rounds, but the checkpoint is at round {checkpoint_round}"
        )
    return list(history)


def prior_state(
    run: DPRun, checkpoint_round: int, state: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The user-level mechanism's state at a resumed run's checkpoint (None for a new run or a
    stateless mechanism). A stateful mechanism's checkpoint without it, or with another
    mechanism's, is refused: its next round could not continue where the run stopped."""
    dp = run.dp
    if checkpoint_round == 0 or not (dp.enabled and dp.level == "user"):
        return None
    if not MECHANISMS[dp.mechanism].stateful:
        return None
    if state is None or state.get("mechanism") != dp.mechanism:
        found = (
            "no mechanism state" if state is None else f"the state of {state.get('mechanism')!r}"
        )
        raise ConfigError(
            f"cannot resume this DP run: its checkpoint holds {found}, but "
            f"dp.mechanism={dp.mechanism!r} continues from its state at round "
            f"{checkpoint_round} (e.g. the adaptive clipping bound); start the run again"
        )
    return dict(state)


def population_statement(
    population: int, simulated: int, cohort: int = 0, noise_cohort: int = 0
) -> dict[str, Any]:
    """What an epsilon is stated for, in plain words: the population sampled from (the
    simulated clients, or an extrapolation to a larger population: q = M / N with N beyond
    the clients that exist in the simulation) and, for a population-scale simulation
    (``noise_cohort`` M above the trained ``cohort`` m), that the noise and the sample rate
    are a cohort of M's while only m clients train -- so a reader does not take the run's
    accuracy for that of M clients' training."""
    extrapolated = population > simulated
    statement = (
        f"epsilon stated for a population of {population} (simulated: {simulated} clients)"
        if extrapolated
        else f"epsilon for the {simulated} simulated clients"
    )
    block: dict[str, Any] = {
        "population": population,
        "simulated_clients": simulated,
        "population_extrapolated": extrapolated,
    }
    if cohort:
        noise_cohort = noise_cohort or cohort
        scaled = noise_cohort > cohort
        block |= {
            "trained_clients_per_round": cohort,
            "noise_cohort_size": noise_cohort,
            "noise_cohort_simulated": scaled,
        }
        if scaled:
            statement += (
                f"; simulated: the noise on the average of a cohort of {noise_cohort} clients "
                f"(std z*C/{noise_cohort}) and the sample rate q = {noise_cohort}/{population}; "
                f"not simulated: {noise_cohort} clients' own updates -- only {cohort} train per "
                f"round, assumed representative of {noise_cohort}"
            )
    return {**block, "statement": statement}
