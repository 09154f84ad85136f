"""Privacy accounting: epsilon spent by T rounds of the subsampled Gaussian mechanism.

Each round samples a cohort of m clients out of a population of N (sample rate q = m / N) and
releases the noisy mean of their clipped updates (noise multiplier z). Sampling amplifies
privacy: a client is in any given round only with probability q. We compose T rounds with
Opacus' accountants, used standalone:

* ``"rdp"`` -- Rényi DP of the sampled Gaussian mechanism (Mironov 2017; Mironov, Talwar &
  Zhang 2019), converted to (epsilon, delta). This is the accountant that reproduces Apple's
  ml-pfl4asr Table 1 (z 0.6144, q 0.00295, T 2034 -> epsilon 7.2 at delta 1e-9).
* ``"prv"`` -- numerical composition of privacy loss random variables (Gopi, Lee & Wutschitz
  2021): tighter (6.3 instead of 7.2 in the example above), ~10x slower per call.

Both assume *Poisson* sampling with rate q. Flower samples a fixed-size cohort uniformly
without replacement; treating that as Poisson sampling at q = m / N is the standard
approximation (Apple's paper, Opacus with shuffled batches) and is what these numbers mean.

Only the model updates are accounted for: metrics that clients report (``train_loss``, ...)
are not privatized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")


def check_accounting_args(
    noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str
) -> None:
    """One-line errors for arguments no accountant can use."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose one of {list(ACCOUNTANTS)}")
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if rounds < 0 or int(rounds) != rounds:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def sample_rate(clients_per_round: int, population: int) -> float:
    """q = m / N: the chance that a given client is in a round's cohort."""
    if population < 1 or not 1 <= clients_per_round <= population:
        raise ValueError(
            f"need 1 <= clients_per_round <= population, got {clients_per_round} and {population}"
        )
    return clients_per_round / population


def _opacus_accountant(accountant: str) -> Any:
    """A fresh Opacus accountant (imported here: Opacus takes seconds to import, and runs
    without DP should not pay for it)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    return RDPAccountant() if accountant == "rdp" else PRVAccountant()


def rdp_orders() -> list[float]:
    """The Rényi orders Opacus' RDP accountant optimizes over (its defaults)."""
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


def compute_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon spent after ``rounds`` rounds at noise multiplier z and sample rate q.

    ``inf`` without noise, 0 after zero rounds. This is Opacus' accountant called directly;
    :class:`PrivacyLedger` gives the same numbers with per-round caching.
    """
    check_accounting_args(noise_multiplier, sample_rate, rounds, delta, accountant)
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = _opacus_accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(rounds))]
    return float(acc.get_epsilon(delta=delta))


@lru_cache(maxsize=256)
def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (to within ``tolerance`` in epsilon) meeting a budget.

    Returns z with ``target_epsilon - tolerance <= compute_epsilon(z, ...) <= target_epsilon``
    (Opacus' bisection, ``get_noise_multiplier``). Cached: each call costs seconds (a dozen
    RDP curves), and runs that differ only in what they do with the noise share it.
    """
    from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

    check_accounting_args(1.0, sample_rate, rounds, delta, accountant)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target_epsilon must be a positive finite number, got {target_epsilon}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 to calibrate noise, got {rounds}")
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=int(rounds),
                accountant=accountant,
                epsilon_tolerance=tolerance,
            )
        )
    except ValueError:
        raise ValueError(
            f"target_epsilon={target_epsilon} is out of reach at delta={delta}, sample rate "
            f"{sample_rate:g} and {rounds} rounds even with noise multiplier {MAX_SIGMA:g}; "
            "raise target_epsilon or lower num_rounds"
        ) from None


@lru_cache(maxsize=1024)
def _rdp_per_round(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one round (or DP-SGD step) at every order (compute_rdp is linear in the number
    of steps). Cached per (z, q): a DP-SGD client's q depends on its data size, so a run sees
    as many pairs as distinct client sizes."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    return np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=rdp_orders()
        ),
        dtype=np.float64,
    )


Mechanism = tuple[float, float, int]  # (noise multiplier, sample rate, steps), as Opacus records


def merge_history(history: Sequence[Mechanism]) -> list[Mechanism]:
    """``history`` with consecutive entries of the same (z, q) merged and empty ones dropped,
    as Opacus' accountants record steps. Merging makes a run that was stopped and resumed at
    the same noise compose *exactly* like an uninterrupted one (one ``curve * steps`` product
    instead of two summed)."""
    merged: list[Mechanism] = []
    for z, q, steps in history:
        if not steps:
            continue
        if merged and merged[-1][:2] == (float(z), float(q)):
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + int(steps))
        else:
            merged.append((float(z), float(q), int(steps)))
    return merged


class PrivacyLedger:
    """Epsilon of a run's rounds at a fixed delta: the rounds already run, then more at the
    current noise.

    ``prior`` is the history of the rounds run before this process (``(z, q, rounds)``
    segments, Opacus' form, read from the run's checkpoint): a resumed run may continue at
    another noise multiplier, and every round is accounted at the noise it actually used.
    ``epsilon(r)`` composes ``prior`` with rounds ``len(prior)+1 .. r`` at ``noise_multiplier``.

    A DP run asks after every round; Opacus' RDP accountant recomputes the RDP curve from
    scratch on each call (tens of ms, more than a cross-device round). The ledger computes it
    once per (z, q) and scales it by the number of rounds -- exactly Opacus' arithmetic
    (``compute_rdp`` returns r times the one-step curve), so the numbers agree bit for bit.
    PRV values are cached per round count (each costs ~0.1-0.5 s).
    """

    def __init__(
        self,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        accountant: str = "rdp",
        prior: Sequence[Mechanism] = (),
    ) -> None:
        check_accounting_args(noise_multiplier, sample_rate, 0, delta, accountant)
        for z, q, steps in prior:
            check_accounting_args(z, q, steps, delta, accountant)
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.accountant = accountant
        self.prior = merge_history(prior)
        self.start = sum(steps for _, _, steps in self.prior)
        self._cache: dict[int, float] = {0: 0.0}

    def history(self, rounds: int) -> list[Mechanism]:
        """The ``(z, q, rounds)`` segments of rounds 1..``rounds`` (what a checkpoint keeps)."""
        if rounds < self.start:
            raise ValueError(
                f"rounds 1..{self.start} were run before this ledger; ask for >= {self.start}, "
                f"got {rounds}"
            )
        extra = (self.noise_multiplier, self.sample_rate, rounds - self.start)
        return merge_history([*self.prior, extra])

    def epsilon(self, rounds: int) -> float:
        """Epsilon spent after ``rounds`` rounds (0 for none, inf without noise)."""
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        cached = self._cache.get(rounds)
        if cached is None:
            cached = self._cache[rounds] = history_epsilon(
                self.history(rounds), self.delta, self.accountant
            )
        return cached

    def rounds_within(self, max_epsilon: float, horizon: int) -> int:
        """The last round up to ``horizon`` whose epsilon is within ``max_epsilon``
        (``start`` .. ``horizon``; ``start`` when not even the next round fits).

        Epsilon grows with the number of rounds, so a bisection needs ~log2(horizon) values.
        """
        if horizon < self.start:
            raise ValueError(f"horizon must be >= {self.start} (rounds already run), got {horizon}")
        if self.epsilon(horizon) <= max_epsilon:
            return horizon
        low, high = self.start, horizon  # epsilon(high) > max; low fits or is what was run
        while high - low > 1:
            mid = (low + high) // 2
            if self.epsilon(mid) <= max_epsilon:
                low = mid
            else:
                high = mid
        return low


def calibrate_noise_after(
    prior: Sequence[Mechanism],
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """The noise multiplier for ``rounds`` more rounds so that, composed with ``prior`` (the
    rounds already run), epsilon ends within ``target_epsilon``.

    What a resumed run under ``dp.target_epsilon`` uses: the noise of the rounds already run
    cannot change, so the remaining ones absorb what is left of the budget. The previous
    noise is kept when it still fits (an interrupted run resumed with the same ``num_rounds``
    continues bit for bit); otherwise z is found by Opacus' bisection on the *composed*
    epsilon (``target - tolerance <= epsilon <= target``). Without ``prior`` this is
    :func:`calibrate_noise`. A budget the rounds already run have spent is refused.
    """
    from opacus.accountants.utils import MAX_SIGMA

    prior = merge_history(prior)
    if not prior:
        return calibrate_noise(target_epsilon, delta, sample_rate, rounds, accountant, tolerance)
    check_accounting_args(1.0, sample_rate, rounds, delta, accountant)
    done = sum(steps for _, _, steps in prior)

    def composed(z: float) -> float:
        return history_epsilon([*prior, (z, sample_rate, rounds)], delta, accountant)

    if composed(prior[-1][0]) <= target_epsilon:
        return prior[-1][0]
    spent = history_epsilon(prior, delta, accountant)
    if spent >= target_epsilon:
        raise ValueError(
            f"the {done} rounds already run spent epsilon {spent:.4g} of "
            f"dp.target_epsilon={target_epsilon:g}: no budget is left for {rounds} more rounds"
        )
    low, high = 0.0, 10.0
    eps_high = composed(high)
    while eps_high > target_epsilon:
        low, high = high, 2 * high
        if high > MAX_SIGMA:
            raise ValueError(
                f"the {done} rounds already run spent epsilon {spent:.4g}; "
                f"dp.target_epsilon={target_epsilon:g} leaves too little for {rounds} more "
                f"rounds even at noise multiplier {MAX_SIGMA:g}; raise target_epsilon or lower "
                "num_rounds"
            )
        eps_high = composed(high)
    while target_epsilon - eps_high > tolerance:
        mid = (low + high) / 2
        eps = composed(mid)
        if eps <= target_epsilon:
            high, eps_high = mid, eps
        else:
            low = mid
    return high


def history_epsilon(history: Sequence[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of a composition of subsampled Gaussian mechanisms at ``delta``.

    ``history`` is Opacus' accountant history: ``(z, q, steps)`` entries, e.g. every DP-SGD
    step a client has taken over a run (its q is its own batch / data size; z may change
    between entries). RDP gives exactly Opacus' ``RDPAccountant(history).get_epsilon`` (the
    same sum of per-entry curves), from the cached one-step curve of each (z, q): ~0.1 ms
    instead of the ~100 ms Opacus takes to recompute the curve on every call. PRV is Opacus'
    ``PRVAccountant`` called directly. 0 for an empty history.
    """
    for z, q, steps in history:
        check_accounting_args(z, q, steps, delta, accountant)
    history = [(float(z), float(q), int(steps)) for z, q, steps in history if steps]
    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):
        return math.inf
    if accountant == "prv":
        acc = _opacus_accountant("prv")
        acc.history = history
        return float(acc.get_epsilon(delta=delta))
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum([_rdp_per_round(z, q) * steps for z, q, steps in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=rdp_orders(), rdp=rdp, delta=delta)
    return float(eps)
