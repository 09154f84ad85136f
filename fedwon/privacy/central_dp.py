"""User-level central DP as a wrapper around any Flower Message-API strategy.

``CentralDP(strategy, ...)`` has the shape of Flower's
``DifferentialPrivacyServerSideFixedClipping`` and goes further: per-layer clipping,
accounting *with* amplification by sampling (Opacus' RDP or PRV accountant, see
:mod:`fedwon.privacy.accounting`), any inner aggregator, and a budget cap. One round:

1. ``configure_train``: refuse a round that would exceed ``max_epsilon``; let the inner
   strategy sample the cohort and build its messages; remember the arrays they carry. With
   ``placement="client"`` the clip settings travel in the train ConfigRecord
   (:data:`CLIP_NORM_KEY`, ...) and :func:`fedwon.privacy.dp_clipping_mod` clips on the client.
2. ``aggregate_train``: per reply, the update is ``reply - sent``; clip it (flat or per layer)
   to the round's bound (the mechanism's ``clip_rule``);
   sum the clipped updates, **each client weighted equally** (a data-size weight would let one
   client move the sum by more than C), counting those the clipping left untouched; the
   mechanism (:mod:`fedwon.privacy.mechanisms`, ``dp.mechanism``) turns the sum into the private
   mean -- ``gaussian``: add N(0, (z*C)^2) per coordinate and divide by the *expected* cohort
   size m (with ``noise_cohort`` M, population-scale simulation, the noise std on the sum is
   z*C*m/M, so the average carries a cohort of M's noise z*C/M); ``adaptive_clipping``: the
   same with a raised noise multiplier, plus a noisy count that moves the bound.
3. The inner strategy then aggregates replies whose arrays all equal ``sent + noisy mean``:
   any weighted average of identical arrays is that array, so FedAvg returns it, FedAvgM and
   FedOpt (FedAdam, FedYogi, FedAdagrad, LAMB) see the noisy mean as their pseudo-gradient
   ``aggregate - sent``, and FedProx's proximal term is unaffected. The clients' metrics
   (``train_loss``, ``num-examples``) reach the inner strategy unchanged. For the mean-based
   aggregators (:data:`MEAN_AGGREGATORS`, and subclasses that keep their ``aggregate_train``)
   the N identical replies are collapsed into one carrying the clients' metrics already
   aggregated by the inner strategy's own function: the same result for 1/N of the work (the
   inner average would otherwise cost as much as a whole FedAvg round). Other strategies
   (median, Krum, ...) get the N replies.
   Entries that are not learned (integer counters, see :mod:`fedwon.privacy.updates`) are
   put back to the sent values afterwards: the global model keeps their dtype and shape.
4. The train MetricRecord gains ``epsilon`` (spent after this round),
   ``clipped_fraction`` (share of the cohort whose update was clipped; a server-side
   diagnostic, not privatized -- like the clients' other metrics) and the mechanism's own
   round metrics (adaptive clipping: ``clip_norm``, the round's bound).

Rounds are numbered as the strategy sees them: the wrapper must receive *absolute* round numbers
(a resumed run's offset already applied), since epsilon after round r and round r's noise seed
are functions of r alone. Sensitivity analysis assumes every client trains at most once per
round and the cohort has at most ``expected_clients`` members (checked).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from fedwon.common.records import (
    CLIP_NORM_KEY,
    CLIPPED_METRIC,
    CLIPPING_KEY,
    EPSILON_METRIC,
    SPLIT_KEY,
    UNCLIPPED_KEY,
)
from fedwon.privacy.accounting import Mechanism, PrivacyLedger, sample_rate
from fedwon.privacy.clipping import NonFiniteUpdateError, clip_factors
from fedwon.privacy.config import DPConfig
from fedwon.privacy.mechanisms import (
    MECHANISMS,
    ClipRule,
    GaussianMechanism,
    GaussianSettings,
    MechanismSetting,
    RoundSum,
    UserMechanism,
)
from fedwon.privacy.train_wrapper import TrainWrapper
from fedwon.privacy.updates import (
    apply_update,
    arrays_of,
    hold_fixed,
    is_learned,
    update_tensors,
)
from fedwon.strategies.aggregation import reply_weight
from fedwon.strategies.aggregators import AGGREGATORS
from fedwon.strategies.nodes import NodeView
from fedwon.strategies.participation import Participation

log = logging.getLogger(__name__)

# Keys of the train ConfigRecord with placement="client" (read by dp_clipping_mod).


# A client-clipped update reaches the server as (w + clip(u)) - w, which float rounding can
# lengthen by ~1e-6 relative; beyond this factor the client did not clip at all.
CLIENT_CLIP_SLACK = 1e-3

# Strategies whose aggregate_train is a weighted mean of the replies' arrays (then a server
# step): for them one reply with the released arrays equals N identical ones. The aggregator
# registry says which (its ``weighted_mean`` flag), so a new mean-based aggregator is
# registered once and DP weighs it right.
MEAN_AGGREGATORS: tuple[type[FedAvg], ...] = tuple(
    a.cls for a in AGGREGATORS.values() if a.weighted_mean
)


class BudgetExhaustedError(PrivacyBudgetExhausted):
    """The next round would spend more than ``max_epsilon``."""


class ClientClippingError(RuntimeError):
    """With placement="client" a reply exceeded its bound: that client did not clip."""


class CentralDP(TrainWrapper):
    """Clip, sum with equal weights, add noise, average over the expected cohort: a user-level
    mechanism (:mod:`fedwon.privacy.mechanisms`) around any Flower strategy.

    ``CentralDP(strategy, noise_multiplier=..., clip_norm=..., ...)`` runs the ``gaussian``
    mechanism (fixed clipping); :meth:`around` runs any mechanism, :meth:`from_config` the one
    a run's ``dp.mechanism`` names. The wrapper does the plumbing (messages, the arrays sent,
    updates, the inner strategy, the budget stop), the mechanism the maths (clip rule, noise,
    accounting, state).

    Args:
        strategy: the inner strategy (sampling, messages, aggregation, evaluation).
        placement: ``"server"`` clips here; ``"client"`` sends the clip settings and expects
            clipped replies (re-applying the bound, which only absorbs float rounding).
        max_epsilon: refuse rounds beyond this budget (0 = no cap); see
            :meth:`rounds_within_budget` to plan a run that ends within it.
        settings: the ``gaussian`` mechanism's, by keyword: the fields of
            :class:`~fedwon.privacy.mechanisms.GaussianSettings` (``noise_multiplier``,
            ``clip_norm``, ``expected_clients``, ``sample_rate``, ``delta`` and the optional
            rest). With ``noise_cohort`` M, ``sample_rate`` should be M / population; ``prior``
            is the history a resumed run's epsilon composes with the rounds run here.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        placement: Literal["server", "client"] = "server",
        max_epsilon: float = 0.0,
        **settings: Any,
    ) -> None:
        mechanism = GaussianMechanism(GaussianSettings(**settings))
        self._attach(strategy, mechanism, placement, max_epsilon)

    def _attach(
        self, strategy: Strategy, mechanism: UserMechanism, placement: str, max_epsilon: float
    ) -> None:
        """Wrap ``strategy`` around ``mechanism`` (already validated by its constructor); the
        wrapper checks only its own settings."""
        _check_wrapper_settings(placement, max_epsilon)
        super().__init__()
        self.strategy = strategy
        self.mechanism = mechanism
        self.placement = placement
        self.max_epsilon = float(max_epsilon)
        self.epsilon_spent = 0.0
        self._sent: dict[str, np.ndarray] | None = None
        self._rule: ClipRule | None = None
        self._buffers: tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    @classmethod
    def around(
        cls,
        strategy: Strategy,
        mechanism: UserMechanism,
        *,
        placement: Literal["server", "client"] = "server",
        max_epsilon: float = 0.0,
    ) -> CentralDP:
        """``mechanism`` (any :class:`~fedwon.privacy.mechanisms.UserMechanism`) around
        ``strategy``."""
        wrapper = cls.__new__(cls)
        wrapper._attach(strategy, mechanism, placement, max_epsilon)
        return wrapper

    def __repr__(self) -> str:
        return f"CentralDP({self.strategy!r})"

    # the mechanism's settings, as this wrapper has always exposed them
    @property
    def ledger(self) -> PrivacyLedger:
        return self.mechanism.ledger

    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier

    @property
    def clip_norm(self) -> float:
        """The clipping bound of the next round (fixed, or the adaptive bound's current value)."""
        return self.mechanism.clip_rule(0).clip_norm

    @property
    def clipping(self) -> str:
        return self.mechanism.clip_rule(0).clipping

    @property
    def split(self) -> str:
        return self.mechanism.clip_rule(0).split

    @property
    def expected_clients(self) -> int:
        return self.mechanism.expected_clients

    @property
    def noise_cohort(self) -> int:
        return self.mechanism.noise_cohort

    @classmethod
    def from_config(
        cls,
        strategy: Strategy,
        dp: DPConfig,
        *,
        expected_clients: int,
        population: int,
        num_rounds: int,
        seed: int,
        prior: Sequence[Mechanism] = (),
        state: Mapping[str, Any] | None = None,
        participation: Participation | None = None,
    ) -> CentralDP:
        """The wrapper a run's ``dp.*`` settings describe (user level): the mechanism
        ``dp.mechanism`` names, around ``strategy``.

        ``population`` is ``dp.population`` or, when that is 0, the number of simulated
        clients (:func:`fedwon.privacy.check_dp_run` resolves it). With ``dp.target_epsilon``
        the noise multiplier is calibrated here so that rounds 1..``num_rounds`` end within
        it; a resumed run's rounds already run (``prior``) keep the noise they used and the
        remaining ones get what is left of the budget (:func:`calibrate_noise_after`).
        ``state`` is the mechanism's state at a resumed run's checkpoint; ``participation``
        the run's schedule (None: uniform sampling).
        """
        z, q = planned_noise(
            dp,
            expected_clients=expected_clients,
            population=population,
            num_rounds=num_rounds,
            prior=prior,
            participation=participation,
        )
        setting = MechanismSetting(
            z, q, expected_clients, seed, tuple(prior), state, num_rounds, participation
        )
        mechanism = MECHANISMS[dp.mechanism].from_config(dp, setting)
        return cls.around(strategy, mechanism, placement=dp.placement, max_epsilon=dp.max_epsilon)

    # ---- budget ---------------------------------------------------------------------------------
    def rounds_within_budget(self, num_rounds: int) -> int:
        """How many of rounds 1..num_rounds fit in ``max_epsilon`` (all of them without a cap).

        The server runs ``min(num_rounds, this)`` rounds and says why it stopped early.
        """
        if not self.max_epsilon:
            return num_rounds
        return self.ledger.rounds_within(self.max_epsilon, num_rounds)

    def summary(self) -> None:
        mechanism = self.mechanism
        log.info(
            "central DP (%s): z=%g, C=%g (%s%s, clipped on the %s), m=%d, noise of M=%d, q=%g, "
            "delta=%g, %s, max_epsilon=%s, %s noise",
            mechanism.name,
            self.noise_multiplier,
            self.clip_norm,
            self.clipping,
            f"/{self.split}" if self.clipping == "per_layer" else "",
            self.placement,
            self.expected_clients,
            self.noise_cohort or self.expected_clients,
            self.ledger.sample_rate,
            self.ledger.delta,
            self.ledger.accountant,
            self.max_epsilon or "none",
            "OS-secure" if getattr(mechanism, "secure_rng", False) else "seeded",
        )
        self.strategy.summary()

    # ---- training -------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.max_epsilon and self.ledger.epsilon(server_round) > self.max_epsilon:
            last = self.ledger.rounds_within(self.max_epsilon, server_round)
            raise BudgetExhaustedError(
                f"round {server_round} would spend epsilon "
                f"{self.ledger.epsilon(server_round):.4g} > dp.max_epsilon={self.max_epsilon:g} "
                f"(delta {self.ledger.delta:g}); round {last} was the last within budget"
            )
        rule = self._rule = self.mechanism.clip_rule(server_round)
        if self.placement == "client":
            config[CLIP_NORM_KEY] = rule.clip_norm
            config[CLIPPING_KEY] = rule.clipping
            config[SPLIT_KEY] = rule.split
        if self.mechanism.constrains_participation:
            grid = self._eligible_grid(server_round, grid)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if len(messages) > self.expected_clients:
            raise ValueError(
                f"round {server_round}: the strategy sampled {len(messages)} clients, more than "
                f"the {self.expected_clients} that noise and accounting were calibrated for"
            )
        self._sent = arrays_of(_single_array_record(messages[0].content)) if messages else None
        return messages

    def _eligible_grid(self, server_round: int, grid: Grid) -> Grid:
        """``grid`` as the inner strategy samples from it: only the nodes the mechanism lets
        take part in this round (refused when fewer than the cohort, which Flower's sampling
        would wait for forever)."""
        allowed = self.mechanism.eligible(server_round, list(grid.get_node_ids()))
        if len(allowed) < self.expected_clients:
            raise RuntimeError(
                f"round {server_round}: dp.mechanism={self.mechanism.name!r} lets only "
                f"{len(allowed)} clients take part, fewer than the cohort of "
                f"{self.expected_clients}"
            )
        return NodeView(grid, allowed)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        usable = [msg for msg in replies if not msg.has_error()]
        if not usable or self._sent is None:
            return self.strategy.aggregate_train(server_round, usable)
        sent = self._sent
        noisy_mean, clipped = self._noisy_mean(server_round, usable, sent)
        released = apply_update(sent, noisy_mean)
        arrays, metrics = self.strategy.aggregate_train(
            server_round, self._inner_replies(usable, released)
        )
        if arrays is not None:
            arrays = hold_fixed(arrays, sent)
        self.epsilon_spent = self.ledger.epsilon(server_round)
        if metrics is not None:
            metrics[EPSILON_METRIC] = self.epsilon_spent
            metrics[CLIPPED_METRIC] = clipped / len(usable)
            for key, value in self.mechanism.round_metrics().items():
                metrics[key] = value
        log.info(
            "round %d: DP mean of %d updates (%d clipped), epsilon %.4g at delta %g",
            server_round,
            len(usable),
            clipped,
            self.epsilon_spent,
            self.ledger.delta,
        )
        return arrays, metrics

    def _noisy_mean(
        self, server_round: int, replies: list[Message], sent: dict[str, np.ndarray]
    ) -> tuple[dict[str, torch.Tensor], int]:
        """(sum of clipped updates + noise) / m, and how many updates the clipping changed.

        Streams the replies through one update buffer into one sum (both reused across
        rounds): each reply's bytes are read once, clipping is folded into the accumulation.
        The mechanism then turns the sum into the private mean.
        """
        rule = self._rule or self.mechanism.clip_rule(server_round)
        update_buf, total = self._scratch(sent)
        sums = list(total.values())
        for tensor in sums:
            tensor.zero_()
        summed: list[int] = []
        unclipped = 0
        for msg in replies:
            who = f"node {msg.metadata.src_node_id}"
            update = update_tensors(_single_array_record(msg.content), sent, who, out=update_buf)
            tensors = list(update.values())
            try:
                factors = clip_factors(tensors, rule.clip_norm, rule.clipping, rule.split).tolist()
            except NonFiniteUpdateError as err:
                # dropping a client costs no privacy (the noise is calibrated to m anyway)
                log.warning("round %d: %s dropped from the DP sum: %s", server_round, who, err)
                continue
            smallest = min(factors, default=1.0)
            untouched = smallest >= 1.0
            if self.placement == "client":
                if smallest < 1 - CLIENT_CLIP_SLACK:
                    raise ClientClippingError(
                        f"{who} sent an update {1 / smallest:.3g}x over its clipping bound "
                        "although dp.placement='client'; install fedwon.privacy.dp_clipping_mod "
                        "in the ClientApp's mods"
                    )
                untouched = self._reported_unclipped(msg, who, untouched)
            unclipped += untouched
            summed.append(msg.metadata.src_node_id)
            for acc, tensor, factor in zip(sums, tensors, factors, strict=True):
                acc.add_(tensor, alpha=min(factor, 1.0))
        round_sum = RoundSum(sums, len(summed), unclipped, tuple(summed))
        self.mechanism.release(server_round, round_sum)
        return total, len(summed) - unclipped

    def _reported_unclipped(self, msg: Message, who: str, fallback: bool) -> bool:
        """Whether a client-clipped update was left untouched, as the client's mod reported
        it (the server only sees the clipped update). A mechanism that counts unclipped
        updates needs the report; fixed clipping falls back to the server's own check."""
        for record in msg.content.metric_records.values():
            if UNCLIPPED_KEY in record:
                return bool(record[UNCLIPPED_KEY])
        if self.mechanism.counts_unclipped:
            raise ClientClippingError(
                f"{who} did not report whether its clipping left its update untouched "
                f"({UNCLIPPED_KEY!r}), which dp.mechanism={self.mechanism.name!r} counts; "
                "install this fedwon's fedwon.privacy.dp_clipping_mod in the ClientApp's mods"
            )
        return fallback

    def _scratch(
        self, sent: dict[str, np.ndarray]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(update buffer, sum) float32 tensors for the learned entries of ``sent``, cached."""
        layout = tuple((k, v.shape) for k, v in sent.items() if is_learned(v))
        if self._buffers is None or self._buffers[0] != layout:
            update = {k: torch.empty(shape, dtype=torch.float32) for k, shape in layout}
            total = {k: torch.empty(shape, dtype=torch.float32) for k, shape in layout}
            self._buffers = (layout, update, total)
        return self._buffers[1], self._buffers[2]

    def _inner_replies(self, replies: list[Message], released: ArrayRecord) -> list[Message]:
        """What the inner strategy aggregates: every reply with the released arrays, or, for
        a mean-based aggregator, a single such reply with the clients' metrics aggregated."""
        inner = self.strategy
        if not averages_replies(inner):
            return [_with_arrays(msg, released) for msg in replies]
        assert isinstance(inner, FedAvg)
        contents = [msg.content for msg in replies]
        key = inner.weighted_by_key
        validate_message_reply_consistency(contents, key, check_arrayrecord=True)
        metrics = inner.train_metrics_aggr_fn(contents, key)
        metrics[key] = sum(reply_weight(c, key) for c in contents)
        (array_key,) = contents[0].array_records.keys()
        (metric_key,) = contents[0].metric_records.keys()
        content = RecordDict({array_key: released, metric_key: metrics})
        return [make_message(metadata=replies[0].metadata, content=content)]


def _check_wrapper_settings(placement: str, max_epsilon: float) -> None:
    if placement not in ("server", "client"):
        raise ValueError(f"unknown placement {placement!r}; choose 'server' or 'client'")
    if max_epsilon < 0:
        raise ValueError(f"max_epsilon must be >= 0 (0 = no cap), got {max_epsilon}")


def planned_noise(
    dp: DPConfig,
    *,
    expected_clients: int,
    population: int,
    num_rounds: int,
    prior: Sequence[Mechanism] = (),
    participation: Participation | None = None,
) -> tuple[float, float]:
    """``(z, q)``: the noise multiplier of the rounds still to run and the sample rate M / N
    (M = ``dp.noise_cohort_size``, or the sampled cohort m when it is 0).

    ``dp.noise_multiplier`` as given, or calibrated so that rounds 1..``num_rounds``, composed
    with the ``prior`` rounds a resumed run has already run, end within ``dp.target_epsilon``
    (the mechanism's :meth:`~fedwon.privacy.mechanisms.UserMechanism.calibrate`: by default
    :func:`~fedwon.privacy.accounting.calibrate_noise_after`; BandMF composes participations
    of the ``participation`` schedule). z is what every round is accounted at;
    ``dp.mechanism`` checks it can reach it (adaptive clipping: z below twice the count's
    noise). ValueError (one line) when out of reach.
    """
    mechanism = MECHANISMS[dp.mechanism]
    noise_cohort = dp.noise_cohort(expected_clients)
    q = sample_rate(noise_cohort, population)
    done = sum(steps for _, _, steps in prior)
    if dp.noise_multiplier:
        z = dp.noise_multiplier
    elif num_rounds > done:
        z = mechanism.calibrate(
            dp, sample_rate=q, num_rounds=num_rounds, prior=prior, participation=participation
        )
    else:
        z = prior[-1][0]  # nothing left to run: the last noise used stands for the ledger
    mechanism.check_noise(dp, z, noise_cohort)
    return z, q


def averages_replies(strategy: Strategy) -> bool:
    """Whether ``strategy`` aggregates arrays by a weighted mean (see MEAN_AGGREGATORS)."""
    if not isinstance(strategy, FedAvg):
        return False
    owner = next(c for c in type(strategy).__mro__ if "aggregate_train" in c.__dict__)
    return owner in MEAN_AGGREGATORS


def _single_array_record(content: RecordDict) -> ArrayRecord:
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ValueError(
            f"a DP update needs exactly one ArrayRecord per message, got {len(records)}"
        )
    return records[0]


def _with_arrays(msg: Message, arrays: ArrayRecord) -> Message:
    """A copy of reply ``msg`` carrying ``arrays`` (the original is untouched).

    Each copy gets its own record (sharing the Array payloads): some strategies consume the
    records they aggregate (FedMedian pops every entry).
    """
    (key,) = msg.content.array_records.keys()
    own = ArrayRecord(dict(arrays.items()))
    content = RecordDict({k: (own if k == key else v) for k, v in msg.content.items()})
    return make_message(metadata=msg.metadata, content=content)
