"""DP-FTRL with banded matrix factorization (BandMF): the maths, without the plumbing.

**What is released.** Round t sums the clipped updates of its cohort, x_t (each client's
update has L2 norm <= the clip bound S). Plain DP-FedAvg adds independent noise to every x_t;
the model after t rounds (FedAvg with server learning rate 1) is then the prefix sum
sum_{s<=t} x_s plus t independent noises, whose std grows as sqrt(t). The *matrix mechanism*
(Denisov et al. 2022; Choquette-Choo et al. 2023, "(Amplified) Banded Matrix Factorization: A
unified approach to private training") factorizes the prefix-sum workload A (n x n, lower
triangular ones, n = rounds) as A = B C, releases C X + sigma Z (Z standard normal) and
post-processes it with B: the model sees A X + sigma B Z. Equivalently -- and this is how it
runs online -- round t adds the *correlated* noise sigma (C^-1 Z)_t to x_t, and the prefix sums
of these noises have far less variance than independent ones (they are anti-correlated).

**Banded Toeplitz C.** fedwon's C is lower triangular, banded (``bands`` b: C[i, j] = 0 for
i - j >= b) and Toeplitz (C[i, j] = c_{i-j}), so that

* the online noise needs only the last b - 1 noise vectors: w_t = (Z_t - sum_{l=1}^{b-1} c_l
  w_{t-l}) / c_0 (:class:`CorrelatedNoise`) -- that history is the mechanism's state, saved
  with every checkpoint so a resumed run continues bit for bit;
* C (hence the noise of rounds 1..n) does not depend on the number of rounds beyond the
  coefficients: C of n rounds is the top-left block of C of 2n rounds;
* the error is cheap to compute: A C^-1 is lower-triangular Toeplitz with coefficients the
  prefix sums D of the power series d = 1/c(x), so ||A C^-1||_F^2 = sum_m (n - m) D_m^2, O(n b).

**Sensitivity (why the participation schedule matters).** If one client changes, X changes in
the rows of the rounds it took part in, each by a vector of norm <= S: C X changes by
sum_{i in pi} C[:, i] u_i^T. Column i of a b-banded C is non-zero only in rows i .. i+b-1, so
when any two participations are >= b rounds apart ("minimum separation" >= b) the columns are
orthogonal and the change has norm <= S sqrt(k) max_i ||C[:, i]|| for k participations
(Choquette-Choo et al. 2023, Theorem 2). fedwon normalizes the columns of C to norm 1 (a full
band; the last b - 1 columns, cut off by n, are shorter), so the sensitivity is S sqrt(k)
exactly; :func:`sensitivity` states it and ``tests/privacy/test_bandmf.py`` checks it against
the maximum over every participation pattern for small n. With participations closer than b
rounds it can be larger -- hence ``participation = "cyclic"`` (clients in G >= b fixed groups,
group t mod G trains in round t, each client every G rounds) and the guard that refuses a
client sampled sooner.

**Accounting.** The whole release C X + sigma Z with sigma = z S is the Gaussian mechanism with
L2 sensitivity S sqrt(k): Renyi-DP / PLD-wise exactly k compositions of the Gaussian mechanism
with noise multiplier z at sample rate 1 -- no amplification by sampling (the schedule is not
random). :class:`BandMFLedger` computes epsilon with Opacus' RDP (or PRV) accountant on the
history ``[(z, 1.0, k)]``; after r rounds k is the most participations any client has had,
ceil(r / G) under cyclic participation. z is therefore the noise multiplier *per
participation*, as in pfl-research's ``BandedMatrixFactorizationMechanism`` (whose accountant
composes ``num_compositions = ceil(n / min_separation)`` Gaussian mechanisms at sampling
probability 1).

**Choosing C** (:func:`factorize`): ``"optimized"`` minimises the mean squared error of the n
prefix sums, ||A C^-1||_F^2 at unit column norm (the sensitivity is then fixed), over the b
coefficients by L-BFGS; the coefficients are parameterised as positive and decreasing, which
keeps 1/c(x) stable (Enestrom-Kakeya: its poles lie outside the unit disc) and contains every
optimum found. ``"sqrt"`` is the closed-form baseline: the square root of A (Toeplitz with
c_j = binom(2j, j) / 4^j; Fichtenberger et al. 2023, Henzinger et al. 2023) cut to b bands and
column-normalised -- independent of n, so a run extended from n to 2n rounds has the noise of
a 2n-round run bit for bit. Both take well under a second for thousands of rounds. b = 1 is
C = I: independent noise (DP-SGD / DP-FedAvg without amplification), the baseline of
:func:`error_ratio`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from fedwon.privacy.accounting import Mechanism, PrivacyLedger, history_epsilon

FACTORIZATIONS: tuple[str, ...] = ("optimized", "sqrt")
# the IIR recursion of 1/c(x) must stay bounded: a larger inverse coefficient means a
# factorization whose per-round noise explodes (never seen for the parameterisation used)
MAX_INVERSE_COEFFICIENT = 1e3


def prefix_sum_workload(num_rounds: int) -> np.ndarray:
    """A: the n x n lower-triangular matrix of ones (the model after round t is the sum of
    the updates of rounds 1..t)."""
    return np.tril(np.ones((num_rounds, num_rounds)))


def sqrt_coefficients(bands: int) -> np.ndarray:
    """The first ``bands`` coefficients of sqrt(A) = (1 - x)^-1/2 (c_j = binom(2j, j) / 4^j),
    scaled to unit norm (the column norm of a full band)."""
    if bands < 1:
        raise ValueError(f"bands must be >= 1, got {bands}")
    c = np.ones(bands)
    for j in range(1, bands):
        c[j] = c[j - 1] * (2 * j - 1) / (2 * j)
    return c / np.linalg.norm(c)


def inverse_coefficients(coefficients: np.ndarray, num_rounds: int) -> np.ndarray:
    """d: the first ``num_rounds`` coefficients of the power series 1/c(x) -- C^-1 is the
    lower-triangular Toeplitz matrix of d (an IIR filter's impulse response)."""
    from scipy.signal import lfilter

    impulse = np.zeros(num_rounds)
    impulse[0] = 1.0
    return np.asarray(lfilter([1.0], np.asarray(coefficients, dtype=np.float64), impulse))


def toeplitz_matrix(coefficients: np.ndarray, num_rounds: int) -> np.ndarray:
    """The n x n lower-triangular banded Toeplitz matrix with first column ``coefficients``."""
    c = np.zeros(num_rounds)
    width = min(len(coefficients), num_rounds)
    c[:width] = coefficients[:width]
    rows = np.arange(num_rounds)
    lag = rows[:, None] - rows[None, :]
    return np.where(lag >= 0, c[np.clip(lag, 0, num_rounds - 1)], 0.0)


def mean_squared_error(coefficients: np.ndarray, num_rounds: int) -> float:
    """||A C^-1||_F^2 / ||A||_F^2 for the Toeplitz C of ``coefficients`` scaled to unit norm:
    the noise variance of the n prefix sums, averaged, relative to independent noise of the
    same sensitivity (C = I). Both mechanisms then cost the same epsilon."""
    return _loss_and_gradient(np.asarray(coefficients, dtype=np.float64), num_rounds)[0]


def _loss_and_gradient(coefficients: np.ndarray, num_rounds: int) -> tuple[float, np.ndarray]:
    """:func:`mean_squared_error` and its gradient in the (unnormalised) coefficients.

    With d = 1/c(x) and D its prefix sums, L = sum_m w_m D_m^2 (w_m = (n - m) / ||A||_F^2);
    dd_m/dc_l = -(d * d)_{m-l}, so dL/dc_l = -sum_m g_m (d * d)_{m-l} with g the reverse
    cumulative sum of 2 w D; the normalisation c / ||c|| projects the gradient.
    """
    from scipy.signal import fftconvolve

    n = num_rounds
    norm = float(np.linalg.norm(coefficients))
    c = coefficients / norm
    d = inverse_coefficients(c, n)
    prefix = np.cumsum(d)
    weights = np.arange(n, 0, -1, dtype=np.float64) / (n * (n + 1) / 2)
    loss = float(np.sum(weights * prefix * prefix))
    if not math.isfinite(loss):
        return math.inf, np.zeros_like(coefficients)
    g = np.cumsum((2 * weights * prefix)[::-1])[::-1]
    dd = fftconvolve(d, d)[:n]
    grad = np.array([-np.dot(g[lag:], dd[: n - lag]) for lag in range(len(c))])
    grad = (grad - c * float(c @ grad)) / norm
    return loss, grad


def optimize_coefficients(num_rounds: int, bands: int, max_iter: int = 500) -> np.ndarray:
    """The unit-norm banded Toeplitz coefficients that minimise :func:`mean_squared_error`
    for ``num_rounds`` rounds, by L-BFGS from the :func:`sqrt_coefficients` start.

    c_l = sum_{j >= l} exp(u_j): positive and decreasing whatever u, so 1/c(x) is stable
    (Enestrom-Kakeya) and the search never leaves the factorizations that can run online.
    """
    from scipy.optimize import minimize

    start = sqrt_coefficients(bands)
    if bands == 1:
        return start
    increments = start - np.append(start[1:], 0.0)

    def coefficients(u: np.ndarray) -> np.ndarray:
        return np.cumsum(np.exp(u)[::-1])[::-1]

    def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = _loss_and_gradient(coefficients(u), num_rounds)
        return loss, np.exp(u) * np.cumsum(grad)

    result = minimize(
        objective,
        np.log(increments),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter},
    )
    best = coefficients(result.x)
    best = best / np.linalg.norm(best)
    # never worse than the start (a line search that stopped early)
    if mean_squared_error(best, num_rounds) > mean_squared_error(start, num_rounds):
        return start
    return best


@lru_cache(maxsize=32)
def _factorize(num_rounds: int, bands: int, kind: str) -> tuple[float, ...]:
    if kind == "sqrt":
        return tuple(sqrt_coefficients(bands).tolist())
    return tuple(optimize_coefficients(num_rounds, bands).tolist())


@dataclass(frozen=True)
class BandedFactorization:
    """The banded Toeplitz C of a run: its unit-norm coefficients c_0..c_{b-1} (c_0 > 0) and
    the number of rounds n it is used for. B = A C^-1 is never needed online."""

    coefficients: tuple[float, ...]
    num_rounds: int

    def __post_init__(self) -> None:
        c = np.asarray(self.coefficients, dtype=np.float64)
        if c.ndim != 1 or not len(c) or not np.all(np.isfinite(c)) or not c[0] > 0:
            raise ValueError(
                f"banded coefficients need c_0 > 0 and finite values, got {self.coefficients}"
            )
        if not math.isclose(float(np.linalg.norm(c)), 1.0, rel_tol=1e-9):
            raise ValueError("banded coefficients must have unit norm (unit column norm)")
        if self.num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {self.num_rounds}")
        d = inverse_coefficients(c, max(self.num_rounds, len(c)))
        if not np.all(np.abs(d) < MAX_INVERSE_COEFFICIENT):
            raise ValueError("these banded coefficients have an unstable inverse (1/c(x))")

    @property
    def bands(self) -> int:
        return len(self.coefficients)

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.coefficients, dtype=np.float64)

    def matrix(self) -> np.ndarray:
        """C (n x n)."""
        return toeplitz_matrix(self.array, self.num_rounds)

    def inverse(self) -> np.ndarray:
        """d: C^-1 = Toeplitz(d)."""
        return inverse_coefficients(self.array, self.num_rounds)

    def decoder(self) -> np.ndarray:
        """B = A C^-1 (n x n), so that B C = A."""
        return toeplitz_matrix(np.cumsum(self.inverse()), self.num_rounds)

    def column_norms(self) -> np.ndarray:
        """||C[:, i]||: 1 for a full band, less for the last b - 1 columns."""
        return np.asarray(np.linalg.norm(self.matrix(), axis=0))

    def noise_std(self, server_round: int) -> float:
        """Std of round t's noise per unit of sigma: ||row t of C^-1|| = sqrt(sum_{j<t} d_j^2)
        (t counts from 1). Above 1 for b > 1 -- each round's noise is larger than independent
        noise, but anti-correlated with the rounds before it, so its prefix sums are smaller."""
        if server_round < 1:
            raise ValueError(f"rounds count from 1, got {server_round}")
        d = inverse_coefficients(self.array, server_round)
        return float(np.sqrt(np.sum(d * d)))

    def error_ratio(self) -> float:
        """RMSE of the noise on the n prefix sums (the FedAvg model) relative to independent
        noise at the same epsilon: sqrt(||A C^-1||_F^2 / ||A||_F^2); 1 for b = 1."""
        return math.sqrt(mean_squared_error(self.array, self.num_rounds))


def factorize(num_rounds: int, bands: int, kind: str = "optimized") -> BandedFactorization:
    """The b-banded factorization of the n-round prefix-sum workload (see the module doc).

    ``bands`` is capped at ``num_rounds`` (more bands than rounds change nothing). Cached:
    a run, its resume and the tests ask for the same one.
    """
    if kind not in FACTORIZATIONS:
        raise ValueError(f"unknown factorization {kind!r}; choose one of {list(FACTORIZATIONS)}")
    if num_rounds < 1 or bands < 1:
        raise ValueError(f"need num_rounds >= 1 and bands >= 1, got {num_rounds} and {bands}")
    return BandedFactorization(_factorize(num_rounds, min(bands, num_rounds), kind), num_rounds)


def sensitivity(
    factorization: BandedFactorization, participations: int, min_separation: int
) -> float:
    """L2 sensitivity of C X per unit clip bound when one client takes part at most
    ``participations`` times, any two of them >= ``min_separation`` rounds apart: sqrt(k)
    times the largest column norm (orthogonal columns; Choquette-Choo et al. 2023, Thm 2) --
    exact unless every k-th participation falls in the last b - 1 rounds, whose columns are
    shorter (then an upper bound: the accounting stays conservative). Refused when the
    separation is below the band: columns then overlap and this bound would understate the
    sensitivity."""
    if min_separation < factorization.bands:
        raise ValueError(
            f"a minimum separation of {min_separation} rounds is below the {factorization.bands} "
            "bands: a client's participations would share rows of C"
        )
    return math.sqrt(participations) * float(factorization.column_norms().max())


def participations(rounds: int, min_separation: int) -> int:
    """The most times one client can take part in rounds 1..``rounds`` when any two of its
    rounds are >= ``min_separation`` apart: ceil(rounds / min_separation)."""
    if min_separation < 1:
        raise ValueError(f"min_separation must be >= 1, got {min_separation}")
    return -(-rounds // min_separation)


def bandmf_epsilon(
    noise_multiplier: float, participations: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon of BandMF with noise multiplier z per participation and k participations:
    k compositions of the Gaussian mechanism at sample rate 1 (Opacus' RDP or PRV; PRV's
    subsampling code takes log(1 - q) = log 0 at q = 1, harmlessly: silenced)."""
    with np.errstate(divide="ignore"):
        return history_epsilon([(noise_multiplier, 1.0, participations)], delta, accountant)


def calibrate_bandmf(
    target_epsilon: float, delta: float, participations: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier z per participation for ``target_epsilon`` with k participations
    (Opacus' bisection at sample rate 1 and k steps, within 0.01 of the target)."""
    from fedwon.privacy.accounting import calibrate_noise

    return calibrate_noise(target_epsilon, delta, 1.0, participations, accountant)


class BandMFLedger(PrivacyLedger):
    """Epsilon after round r of a BandMF run: the Gaussian mechanism composed over the
    participations of rounds 1..r (ceil(r / G) with minimum separation G), at sample rate 1.

    The checkpointed history stays ``[(z, 1.0, rounds)]`` -- one segment of rounds at noise z,
    as :func:`fedwon.privacy.assembly.prior_history` expects -- but epsilon composes the
    *participations*, not the rounds: a client is in at most one round of every G.
    BandMF's noise cannot change within a run (sigma scales every row of C alike): a prior
    history at another z is refused.
    """

    def __init__(
        self,
        noise_multiplier: float,
        delta: float,
        min_separation: int,
        accountant: str = "rdp",
        prior: Sequence[Mechanism] = (),
    ) -> None:
        super().__init__(noise_multiplier, 1.0, delta, accountant, prior)
        for z, q, _ in self.prior:
            if (z, q) != (self.noise_multiplier, 1.0):
                raise ValueError(
                    f"dp.mechanism='bandmf' ran its first rounds at noise multiplier {z:g}: "
                    f"its correlated noise cannot continue at {self.noise_multiplier:g}"
                )
        if min_separation < 1:
            raise ValueError(f"min_separation must be >= 1, got {min_separation}")
        self.min_separation = int(min_separation)

    def participations(self, rounds: int) -> int:
        """k after ``rounds`` rounds: the most participations of any client."""
        return participations(rounds, self.min_separation)

    def epsilon(self, rounds: int) -> float:
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        cached = self._cache.get(rounds)
        if cached is None:
            cached = self._cache[rounds] = bandmf_epsilon(
                self.noise_multiplier, self.participations(rounds), self.delta, self.accountant
            )
        return cached


class CorrelatedNoise:
    """The online C^-1 Z: round t's noise w_t = (Z_t - sum_{l=1}^{b-1} c_l w_{t-l}) / c_0,
    from its fresh standard normals Z_t and the last b - 1 noises (the state a checkpoint
    keeps; pfl-research's ``ForwardSubstitution``). float32, in a fixed order of operations,
    so a run restored from its history continues bit for bit.
    """

    def __init__(
        self,
        factorization: BandedFactorization,
        history: Sequence[torch.Tensor] = (),
        last_round: int = 0,
    ) -> None:
        self.factorization = factorization
        self.coefficients = [float(c) for c in factorization.coefficients]
        if len(history) > len(self.coefficients) - 1:
            raise ValueError(
                f"a noise history of {len(history)} rounds for {factorization.bands} bands "
                f"(at most {factorization.bands - 1})"
            )
        if len(history) < min(last_round, len(self.coefficients) - 1):
            raise ValueError(
                f"the noise history holds {len(history)} rounds, but round {last_round} needs "
                f"{min(last_round, len(self.coefficients) - 1)}"
            )
        self.history = [h.to(torch.float32).clone() for h in history]  # oldest first
        self.last_round = int(last_round)

    def step(self, server_round: int, fresh: torch.Tensor) -> torch.Tensor:
        """Round ``server_round``'s noise from ``fresh`` N(0, 1) draws (float32, 1-d); rounds
        must come one after the other (the recursion is over consecutive rows of C)."""
        if server_round != self.last_round + 1:
            raise RuntimeError(
                f"BandMF's correlated noise is at round {self.last_round}; round "
                f"{server_round} cannot follow it (rounds run one after the other)"
            )
        if self.history and fresh.shape != self.history[-1].shape:
            raise RuntimeError(
                f"the update has {fresh.numel()} entries, the noise history "
                f"{self.history[-1].numel()}: the model changed within a BandMF run"
            )
        noise = fresh.to(torch.float32).clone()
        for lag, past in enumerate(reversed(self.history), start=1):
            noise.sub_(past, alpha=self.coefficients[lag])
        noise.div_(self.coefficients[0])
        keep = len(self.coefficients) - 1
        if keep:
            self.history = [*self.history, noise.clone()][-keep:]
        self.last_round = server_round
        return noise

    def state(self) -> np.ndarray:
        """The noise history as one (rounds, entries) float32 array (oldest first)."""
        if not self.history:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.stack(self.history).numpy().copy()
