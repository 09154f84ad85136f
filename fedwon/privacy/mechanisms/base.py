"""The one interface of a user-level DP mechanism: clip -> noise -> account, with its state.

A *mechanism* makes one round's release of the clients' average differentially private at the
user level, and says what that costs:

* **clip** -- :meth:`UserMechanism.clip_rule`: the bound (and its per-layer split) every update
  of round r is clipped to, on the server or, with ``dp.placement = "client"``, on each client;
* **noise** -- :meth:`UserMechanism.release`: the sum of the clipped updates, how many of them
  the clipping left untouched and who they came from (:class:`RoundSum`) in, the private *mean*
  out, in place. The mechanism may update its state here (adaptive clipping moves its bound);
* **account** -- :attr:`UserMechanism.ledger`: epsilon after round r, the rounds within a cap,
  and the ``(z, q, rounds)`` history a checkpoint keeps. Every round is accounted at the noise
  it actually used;
* **state** -- :meth:`UserMechanism.state`: what a checkpoint must hold for a resumed run to
  continue exactly (JSON-able, None for a stateless mechanism); a resumed run hands it back in
  :attr:`MechanismSetting.state`. Seeded noise is drawn from a generator seeded by (run seed,
  round), so no generator state needs saving;
* **participation** -- :meth:`UserMechanism.eligible`: which clients may be sampled in a round
  (all of them unless ``constrains_participation``), and :attr:`RoundSum.participants`: whose
  updates were summed. DP-FTRL with banded matrix factorization needs both (a client may come
  back only after a minimum separation; its noise is correlated across rounds, which is state).
  ``participation_modes`` names the schedules (``participation`` in the server section,
  :class:`~fedwon.strategies.participation.Participation`) the accounting holds for:
  amplification by sampling needs ``uniform`` random sampling, BandMF ``cyclic`` groups. The
  run's schedule and number of rounds reach the mechanism in :class:`MechanismSetting`, its
  checks (:meth:`UserMechanism.check_run`) and its calibration (:meth:`UserMechanism.calibrate`).

:class:`~fedwon.privacy.CentralDP` is the plumbing around a mechanism (messages, the arrays
sent, update buffers, the inner strategy, the budget stop); the mechanism does the maths.
Adding one is one file in this package (a subclass) and one line in
:data:`fedwon.privacy.mechanisms.MECHANISMS`; its own ``dp.*`` keys, if it has any, are fields of
:class:`~fedwon.privacy.DPConfig` that it lists in ``keys`` (set under another mechanism they
are refused) and checks in :meth:`UserMechanism.check_config`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from fedwon.privacy.accounting import Mechanism, PrivacyLedger, calibrate_noise_after
from fedwon.privacy.clipping import check_clip_settings
from fedwon.strategies.participation import Participation


class DPSettings(Protocol):
    """The ``dp.*`` settings every mechanism may read: what :class:`~fedwon.privacy.DPConfig`
    has (which imports this package, so mechanisms name its fields through this protocol; a
    mechanism with keys of its own extends it in its file)."""

    @property
    def clip_norm(self) -> float: ...
    @property
    def clipping(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def noise_multiplier(self) -> float: ...
    @property
    def target_epsilon(self) -> float: ...
    @property
    def delta(self) -> float: ...
    @property
    def accountant(self) -> str: ...
    @property
    def secure_rng(self) -> bool: ...
    @property
    def noise_cohort_size(self) -> int: ...


@dataclass(frozen=True)
class ClipRule:
    """How a round's updates are clipped: total bound C, ``flat`` or ``per_layer``, and the
    per-layer split (see :func:`fedwon.privacy.clip_update`)."""

    clip_norm: float
    clipping: str = "per_layer"
    split: str = "uniform"


@dataclass(frozen=True)
class MechanismSetting:
    """What a run tells its mechanism besides the ``dp`` section: the noise multiplier z it is
    accounted at (``dp.noise_multiplier``, or calibrated to ``dp.target_epsilon``), the sample
    rate q, the cohort m noise and average are calibrated for, the noise seed, and -- for a
    resumed run -- the accounting history of the rounds already run and the mechanism's state
    at the checkpoint (None: a fresh run); the run's ``num_rounds`` and ``participation``
    schedule (None: uniform sampling, as before the schedule existed)."""

    noise_multiplier: float
    sample_rate: float
    expected_clients: int
    seed: int = 0
    prior: Sequence[Mechanism] = ()
    state: Mapping[str, Any] | None = None
    num_rounds: int = 0
    participation: Participation | None = None


@dataclass(frozen=True)
class GaussianSettings:
    """What every clip-and-Gaussian-noise mechanism is built from (``gaussian``,
    ``adaptive_clipping``, ``bandmf``; :class:`~fedwon.privacy.CentralDP` by keyword): one
    list, validated here once, whoever builds the mechanism.

    Args:
        noise_multiplier: z; the noise std on the sum is z * clip_norm (times m / M).
        clip_norm: C, the bound on each client's update (total over layers); adaptive
            clipping's bound for its first round here.
        expected_clients: m, the cohort size sampled per round (the average divides by it).
        sample_rate: q, for accounting (M / population with ``noise_cohort``; BandMF, not
            amplified by sampling, does not read it).
        delta: the delta epsilon is reported at.
        clipping, split: see :func:`fedwon.privacy.clip_update`.
        accountant: ``"rdp"`` or ``"prv"``.
        seed: noise seed (simulation); with ``secure_rng`` the OS CSPRNG is used instead.
        noise_cohort: M >= m for a population-scale simulation (0 = the cohort m; BandMF
            does not read it, and its config refuses ``dp.noise_cohort_size``).
        prior: the ``(z, q, rounds)`` history of the rounds a resumed run has already run.
    """

    noise_multiplier: float
    clip_norm: float
    expected_clients: int
    sample_rate: float
    delta: float
    clipping: str = "per_layer"
    split: str = "uniform"
    accountant: str = "rdp"
    seed: int = 0
    secure_rng: bool = False
    noise_cohort: int = 0
    prior: Sequence[Mechanism] = ()

    def __post_init__(self) -> None:
        check_clip_settings(self.clip_norm, self.clipping, self.split)
        if self.expected_clients < 1:
            raise ValueError(f"expected_clients must be >= 1, got {self.expected_clients}")
        if self.noise_cohort and self.noise_cohort < self.expected_clients:
            raise ValueError(
                f"noise_cohort={self.noise_cohort} is below "
                f"expected_clients={self.expected_clients}: it simulates the noise of a larger "
                "cohort (0 = the cohort itself)"
            )

    @classmethod
    def from_config(
        cls, dp: DPSettings, setting: MechanismSetting, clip_norm: float | None = None
    ) -> GaussianSettings:
        """The settings a run's ``dp`` section and ``setting`` give; ``clip_norm`` another
        bound than ``dp.clip_norm`` (adaptive clipping's)."""
        return cls(
            noise_multiplier=setting.noise_multiplier,
            clip_norm=dp.clip_norm if clip_norm is None else clip_norm,
            expected_clients=setting.expected_clients,
            sample_rate=setting.sample_rate,
            delta=dp.delta,
            clipping=dp.clipping,
            split=dp.split,
            accountant=dp.accountant,
            seed=setting.seed,
            secure_rng=dp.secure_rng,
            noise_cohort=dp.noise_cohort_size,
            prior=setting.prior,
        )


@dataclass
class RoundSum:
    """One round's sum of clipped updates, as the DP wrapper hands it to the mechanism.

    ``sums``: one float32 tensor per layer (the mechanism turns it into the private mean in
    place); ``clients``: how many updates it holds; ``unclipped``: how many of them the clipping
    left untouched (on the client with ``dp.placement = "client"``: as each client reported);
    ``participants``: the node ids whose updates were summed.
    """

    sums: list[torch.Tensor]
    clients: int
    unclipped: int
    participants: tuple[int, ...] = ()


class UserMechanism(ABC):
    """A user-level DP mechanism: clip -> noise -> account, with state that checkpoints.

    Subclasses set ``name`` (the ``dp.mechanism`` value) and implement :meth:`from_config`,
    :meth:`clip_rule` and :meth:`release`; they own an accounting :attr:`ledger`.
    """

    #: the ``dp.mechanism`` value that selects this mechanism
    name: ClassVar[str]
    #: the ``dp.*`` fields only this mechanism reads (refused when set under another one)
    keys: ClassVar[tuple[str, ...]] = ()
    #: release needs the unclipped count: with client-side clipping each reply must report it
    counts_unclipped: ClassVar[bool] = False
    #: :meth:`eligible` may exclude clients (the DP wrapper then samples among the rest)
    constrains_participation: ClassVar[bool] = False
    #: :meth:`state` is not None: a resumed run must find it in the checkpoint
    stateful: ClassVar[bool] = False
    #: the ``participation`` schedules this mechanism's accounting holds for
    participation_modes: ClassVar[tuple[str, ...]] = ("uniform",)

    ledger: PrivacyLedger
    expected_clients: int
    noise_cohort: int

    # ---- configuration --------------------------------------------------------------------------
    @classmethod
    def check_config(cls, dp: DPSettings, changed: frozenset[str]) -> None:
        """Refuse (ValueError, one line) ``dp`` settings this mechanism cannot honour;
        ``changed``: the ``dp`` fields set away from their defaults. Nothing by default."""
        return None

    @classmethod
    def check_noise(cls, dp: DPSettings, noise_multiplier: float, noise_cohort: int) -> None:
        """Refuse (ValueError, one line) a noise multiplier z this mechanism cannot reach with
        a cohort of ``noise_cohort`` (checked once z is known: given, or calibrated). Nothing
        by default."""
        return None

    @classmethod
    def check_run(cls, dp: DPSettings, participation: Participation, num_rounds: int) -> None:
        """Refuse (ValueError, one line) ``dp`` settings this mechanism cannot honour with the
        run's schedule: ``participation`` (already one of ``participation_modes``) over
        ``num_rounds`` rounds. Nothing by default."""
        return None

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
        """z for ``dp.target_epsilon`` over rounds 1..``num_rounds``, composed with the
        ``prior`` rounds a resumed run has run (ValueError, one line, when out of reach). By
        default the subsampled Gaussian mechanism at ``sample_rate`` every round
        (:func:`~fedwon.privacy.accounting.calibrate_noise_after`)."""
        done = sum(steps for _, _, steps in prior)
        return calibrate_noise_after(
            prior, dp.target_epsilon, dp.delta, sample_rate, num_rounds - done, dp.accountant
        )

    @classmethod
    @abstractmethod
    def from_config(cls, dp: DPSettings, setting: MechanismSetting) -> UserMechanism:
        """The mechanism a run's ``dp`` section describes."""

    # ---- one round ------------------------------------------------------------------------------
    @abstractmethod
    def clip_rule(self, server_round: int) -> ClipRule:
        """How round ``server_round``'s updates are clipped."""

    @abstractmethod
    def release(self, server_round: int, total: RoundSum) -> None:
        """Turn ``total.sums`` (clipped updates, summed) into the round's private mean in place;
        update the mechanism's state."""

    def round_metrics(self) -> dict[str, float]:
        """Metrics of the round just released, for its row in metrics.jsonl (e.g. the bound)."""
        return {}

    def eligible(self, server_round: int, node_ids: Sequence[int]) -> list[int]:
        """The nodes that may be sampled in ``server_round`` (read only when
        ``constrains_participation``)."""
        return list(node_ids)

    # ---- accounting and state ---------------------------------------------------------------
    @property
    def noise_multiplier(self) -> float:
        """z: the noise multiplier every round is accounted at (that of the composed release)."""
        return self.ledger.noise_multiplier

    @abstractmethod
    def noise_std_on_mean(self, clip_norm: float | None = None) -> float:
        """Per-coordinate noise std on the released mean (at bound ``clip_norm``, default the
        current one)."""

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of this mechanism (JSON-able; None: nothing)."""
        return None

    def describe(self) -> dict[str, Any]:
        """This mechanism's entries of summary.json's ``privacy`` block."""
        return {"mechanism": self.name}
