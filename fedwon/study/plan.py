"""The two study plans: :data:`FULL` (``make report``) and :data:`QUICK` (``make report-quick``).

Both have the same parts, in the order they run: cross-device at batch size 1 and 2 (with
FedWon's AGC ablation, as in every tuned part), label skew without feature shift (one domain,
Dirichlet α 0.1 and 0.5) and with it, cross-silo, and domain generalization last (it reuses the
cross-silo choices). The vocabulary (methods, grids, arms) is :mod:`fedwon.study.part`.

FULL keeps the paper's ``cnn`` (14.2 M parameters) for cross-silo and domain generalization and
uses the narrow ``cnn-tiny`` (the same layers, 8/8/16 conv and 64/32 fc channels) where only
hundreds of rounds converge — cross-device and label skew; each part's title says its model.
It is sized from pilot runs on the project's 2-core machine, shared at the time with other jobs.

* **Cross-device pilots** (batch size 1, FedWon, AGC 0.32, 100 clients of 10 images, 10 per
  round). With the paper's ``cnn`` (lr 0.03): test accuracy 18% after 4 rounds, 45% after 20,
  training loss still falling, at 6-10 s a round: a round costs what its SGD steps cost, ~0.1 s
  per step at batch 1 or 2 whatever the batch (its 12.8 M-weight first linear layer dominates),
  and a first study sized to fit (64 rounds, 5 images a client) still sat near 20% validation
  accuracy after 32 rounds, far from converged. With ``cnn-tiny`` (lr 0.05): 14% after 10
  rounds, 40% after 50, 67.5% after 100, still climbing, at 0.3 s a round. Converged runs at
  batch size 1 are affordable only with the narrow model, so cross-device uses ``cnn-tiny``
  (the report says so) with 10 images a client — 7 to train on, 3 for validation (300
  validation images in all) — over 384 rounds, halving from 24.
* **Label-skew pilot** (one domain, Dirichlet 0.1, FedWon, ``cnn-tiny``, lr 0.05, 5 clients of
  50 images a round): test accuracy 20% after 32 rounds (the old schedule), 50% after 64, 64%
  after 128, then flat at 66-68% from round 144 to 256, at 0.12 s a round; so the label-skew
  parts run 192 rounds, halving from 12.
* **Cross-silo pilot** (FedWon, ``cnn``, the recipe's lr 0.05 with momentum, 743 images a
  client): test accuracy 57% after 2 rounds, 90% after 6, 94.1% after 10, 94.3% after 12, 95.1%
  after 16 (a round is 24 local steps); so cross-silo and domain generalization run 12 rounds,
  halving from 3.
* **Per-round cost** of every part (4-round pilots, one thread, CPU seconds: what a worker with
  a core to itself pays): cross-device (``cnn-tiny``, 100-round pilot) 0.3 s at batch 1 and
  0.2 s at batch 2 (+1 s per test evaluation of all 100 clients), label skew (``cnn-tiny``) on
  one domain 0.15 s, with feature shift 0.3 s (twice the clients a round; not piloted),
  cross-silo (``cnn``, 743 images a client) 16 s, domain generalization (four clients) 13 s
  (:data:`fedwon.study.budget.PILOT`).

What the schedules cost (``fedwon study --estimate --jobs 2``: runs and rounds counted from the
plan when nothing fails, +15% of the tuning for widening grids, priced at the pilot's speed)::

    cross_device           384 rounds:  3096 tuning +  5760 reported rounds,  79 runs ≈ 0.91 h
    cross_device_bs2       384 rounds:  4008 tuning +  8064 reported rounds, 101 runs ≈ 0.88 h
    label_skew_alpha01     192 rounds:  1776 tuning +  3456 reported rounds,  90 runs ≈ 0.32 h
    label_skew_alpha05     192 rounds:  1776 tuning +  3456 reported rounds,  90 runs ≈ 0.32 h
    label_skew             192 rounds:  1776 tuning +  3456 reported rounds,  90 runs ≈ 0.55 h
    cross_silo              12 rounds:   246 tuning +   288 reported rounds,  94 runs ≈ 2.80 h
    domain_generalization   12 rounds:     0 tuning +   540 reported rounds,  45 runs ≈ 2.12 h
    in all ≈ 7.9 h of one worker ≈ 4.0 h with --jobs 2 at the pilot's speed

so about 4 hours of wall time with ``make report JOBS=2`` on a quiet 2-core machine (more if the
cores are shared, or if grids widen more than allowed for). Cross-device's 384 rounds and label
skew's 192 are the paper's order of magnitude; cross-silo's 12 are far shorter than its
hundreds (each round holds 24 local steps; the pilot's plateau came first); whether each
chosen configuration converged is not assumed but measured: the report's convergence column
(the change of validation accuracy over the last 20% of rounds) says which did not.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedwon.study.halving import Ladder
from fedwon.study.part import (
    AGC_ARMS,
    METHODS,
    TUNING_SEED,
    Candidate,
    Method,
    Part,
    StudyPlan,
)

__all__ = ["FULL", "METHODS", "PLANS", "QUICK", "TUNING_SEED", "Candidate", "Method", "Part"]

CROSS_SILO_METHODS = tuple(METHODS)
CROSS_DEVICE_BS1_METHODS = ("fedavg_gn", "fedavg_ws_gn", "fedwon")
CROSS_DEVICE_BS2_METHODS = ("fedavg", "fedbn", "fedavg_gn", "fedavg_ws_gn", "fedwon")
LABEL_SKEW_METHODS = ("fedavg", "fedavg_gn", "fedbn", "fedwon")
DG_METHODS = ("fedavg", "fedbn", "fedwon")
BN_METHODS = ("fedavg", "fedbn")  # refused at batch size 1, shown as refused

# Cross-device (the recipe: 100 clients, 20 per domain, 10 sampled per round) with the narrow
# ``cnn-tiny`` (module docstring): 10 images per client, 3 of them for validation, 200 test
# images a domain.
_DEVICE = {
    "model": "cnn-tiny",
    "train_per_domain": 200,
    "val_fraction": 0.3,
    "test_per_domain": 200,
    "num_rounds": 384,
    "eval_every": 32,
    "checkpoint_every": 24,
}
# Label skew without feature shift: one domain (MNIST-M, neither saturated like MNIST nor as
# hard as SVHN), 10 clients, 5 per round, Dirichlet(α) class proportions.
_ONE_DOMAIN = {
    "model": "cnn-tiny",
    "domains": "mnist_m",
    "num_clients": 10,
    "clients_per_round": 5,
    "train_per_domain": 500,
    "test_per_domain": 400,
    "num_rounds": 192,
    "eval_every": 16,
    "checkpoint_every": 16,
}
# Label skew with feature shift: the recipe's 20 clients (4 per domain), 10 per round.
_SKEW = {
    "model": "cnn-tiny",
    "train_per_domain": 200,
    "test_per_domain": 200,
    "num_rounds": 192,
    "eval_every": 16,
    "checkpoint_every": 16,
}
# Cross-silo and domain generalization: FedBN's client size, 743 training images a domain.
_SILO_DATA = {"train_per_domain": 743, "test_per_domain": 400}

_GRID = {"lrs": (0.01, 0.03, 0.1), "fedwon_lrs": (0.03, 0.1)}  # SGD; widened where needed


def _cross_device(batch_size: int, methods: tuple[str, ...], **kw: Any) -> Part:
    return Part(
        name="cross_device" if batch_size == 1 else f"cross_device_bs{batch_size}",
        title=f"Cross-device at batch size {batch_size}: 100 clients, 10 per round, `cnn-tiny`",
        recipe="cross_device.toml",
        settings={**_DEVICE, "batch_size": batch_size},
        methods=methods,
        rung0=24,
        **_GRID,  # type: ignore[arg-type]
        **kw,
    )


def _one_domain_skew(alpha: float) -> Part:
    return Part(
        name=f"label_skew_alpha{str(alpha).replace('.', '')}",
        title=f"Label skew without feature shift: one domain, Dirichlet({alpha}), `cnn-tiny`",
        recipe="label_skew.toml",
        settings={**_ONE_DOMAIN, "alpha": alpha},
        methods=LABEL_SKEW_METHODS,
        rung0=12,
        fedbn_averaged=True,
        **_GRID,  # type: ignore[arg-type]
    )


FULL = StudyPlan(
    name="full",
    parts=(
        _cross_device(1, CROSS_DEVICE_BS1_METHODS, refused=BN_METHODS),
        _cross_device(2, CROSS_DEVICE_BS2_METHODS),
        _one_domain_skew(0.1),
        _one_domain_skew(0.5),
        Part(
            name="label_skew",
            title=(
                "Label skew with feature shift: Dirichlet(0.1) within each of five domains, "
                "`cnn-tiny`"
            ),
            recipe="label_skew.toml",
            settings=_SKEW,
            methods=LABEL_SKEW_METHODS,
            rung0=12,
            fedbn_averaged=True,
            **_GRID,  # type: ignore[arg-type]
        ),
        Part(
            name="cross_silo",
            title="Cross-silo, feature shift: digits-embedded, one client per domain",
            recipe="cross_silo.toml",
            settings={**_SILO_DATA, "num_rounds": 12, "eval_every": 6, "checkpoint_every": 3},
            methods=CROSS_SILO_METHODS,
            rung0=3,
            **_GRID,  # type: ignore[arg-type]
        ),
        Part(
            name="domain_generalization",
            title="Domain generalization: train on four domains, test on the held-out fifth",
            recipe="cross_silo.toml",
            settings={**_SILO_DATA, "num_rounds": 12, "eval_every": 12, "checkpoint_every": 6},
            methods=DG_METHODS,
            reuse="cross_silo",
            heldout=True,
        ),
    ),
)

_TINY = {"model": "cnn-tiny", "train_per_domain": 60, "test_per_domain": 40, "checkpoint_every": 0}
_QUICK_GRID = {
    "lrs": (0.03, 0.1),
    "fedwon_lrs": (0.03,),
    "agc_clips": (0.32,),
    "agc_arms": AGC_ARMS,
    "lr_ladder": Ladder((0.01, 0.03, 0.1)),  # widening bounded to keep the quick study quick
    "clip_ladder": Ladder((0.16, 0.32, 0.64)),
    "rung0": 1,
}
_QUICK_DEVICE = {"train_per_domain": 40, "num_clients": 20, "clients_per_round": 5}
_QUICK_ONE_DOMAIN = {"domains": "mnist_m", "num_clients": 4, "clients_per_round": 4}


def _quick(name: str, title: str, settings: dict[str, Any], seeds: tuple[int, ...] = (1,)) -> Part:
    """FULL's part ``name`` (methods, refusals, what it scores) on tiny data and rounds."""
    part = FULL.part(name)
    grid = {} if part.reuse else _QUICK_GRID
    return replace(
        part,
        title=title,
        settings={**_TINY, **settings},
        seeds=seeds,
        **grid,  # type: ignore[arg-type]
    )


_DEVICE_Q = "(quick: 20 clients, 5 per round)"
_SKEW_Q = "Label skew without feature shift (quick: one domain, Dirichlet({}))"
_TWO_ROUNDS = {"num_rounds": 2, "eval_every": 1}
QUICK = StudyPlan(
    name="quick",
    parts=(
        _quick(
            "cross_device",
            f"Cross-device at batch size 1 {_DEVICE_Q}",
            {**_QUICK_DEVICE, "batch_size": 1, **_TWO_ROUNDS},
        ),
        _quick(
            "cross_device_bs2",
            f"Cross-device at batch size 2 {_DEVICE_Q}",
            {**_QUICK_DEVICE, "batch_size": 2, **_TWO_ROUNDS},
        ),
        _quick(
            "label_skew_alpha01",
            _SKEW_Q.format(0.1),
            {**_QUICK_ONE_DOMAIN, "alpha": 0.1, **_TWO_ROUNDS},
        ),
        _quick(
            "label_skew_alpha05",
            _SKEW_Q.format(0.5),
            {**_QUICK_ONE_DOMAIN, "alpha": 0.5, **_TWO_ROUNDS},
        ),
        _quick(
            "label_skew",
            "Label skew with feature shift (quick: 10 clients, 5 per round)",
            {"num_clients": 10, "clients_per_round": 5, **_TWO_ROUNDS},
        ),
        _quick(
            "cross_silo",
            FULL.part("cross_silo").title + " (quick: cnn-tiny, tiny data)",
            {"num_rounds": 2},
            seeds=(1, 2),
        ),
        _quick(
            "domain_generalization",
            FULL.part("domain_generalization").title + " (quick)",
            {"num_rounds": 2},
        ),
    ),
)

PLANS: dict[str, StudyPlan] = {FULL.name: FULL, QUICK.name: QUICK}
