"""The local training and evaluation loop: plain PyTorch, short enough to read top to bottom."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fedwon.nn import adaptive_clip_grad


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean training loss over all steps
    num_examples: int
    steps: int


@dataclass(frozen=True)
class EvalStats:
    loss: float
    accuracy: float
    num_examples: int


AGC_RULES = ("all_but_head", "nfnets")
"""Which parameters AGC clips (``agc_rule``): ``all_but_head`` -- every parameter but the final
classifier (fedwon's rule until now, common in PyTorch ports); ``nfnets`` -- DeepMind's NFNets
training script: convolution weights, gains and every bias, but no linear layer's weight (for
FedBN's ``cnn`` that leaves fc1/fc2, 97.7% of the parameters, unclipped). FedWon's own choice
is not documented, so the study ablates it."""


def clipped_parameters(model: nn.Module, rule: str = "all_but_head") -> list[nn.Parameter]:
    """Parameters AGC applies to under ``rule`` (see :data:`AGC_RULES`).

    fedwon models name their classifier (``head_name``); for other models it is the last Linear.
    """
    if rule == "nfnets":
        linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        return [p for p in model.parameters() if id(p) not in linear_weights]
    if rule != "all_but_head":
        raise ValueError(f"unknown agc_rule {rule!r}; choose one of {list(AGC_RULES)}")
    name = getattr(model, "head_name", None)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head_module = model.get_submodule(name) if name else (linears[-1] if linears else None)
    head = {id(p) for p in head_module.parameters()} if head_module is not None else set()
    return [p for p in model.parameters() if id(p) not in head]


def proximal_pairs(
    model: nn.Module, anchor: dict[str, torch.Tensor]
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, its global value) for every parameter named in ``anchor`` (detached copies
    on the parameter's device, so the term's gradient is mu·(w − w_global))."""
    return [
        (p, anchor[name].detach().to(p.device, p.dtype).clone())
        for name, p in model.named_parameters()
        if name in anchor
    ]


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether ``model`` normalizes with batch statistics in train mode (any BatchNorm,
    SyncBatchNorm or lazy variant, by module type), which a batch of one cannot give."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def batch_bounds(n: int, batch_size: int, *, min_batch: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of each mini-batch over ``n`` shuffled examples.

    The last partial batch is kept: with batch size 1 and one or two examples per client
    (cross-device) dropping it would drop the client. With ``min_batch=2`` (BatchNorm) a last
    batch of one is merged into the batch before it, and a client whose only example it is
    takes no step at all, so BatchNorm never sees a batch of one at any batch size.
    """
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if bounds and bounds[-1][1] - bounds[-1][0] < min_batch:
        last = bounds.pop()
        if bounds:
            bounds[-1] = (bounds[-1][0], last[1])
    return bounds


Batch = tuple[torch.Tensor, torch.Tensor]
# One epoch's mini-batches per call, e.g. the Poisson-sampled batches of DP-SGD
# (:func:`fedwon.privacy.private_training`), where a batch may be empty.
BatchSource = Callable[[], Iterable[Batch]]


def shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, bounds: list[tuple[int, int]], generator: torch.Generator
) -> Iterator[Batch]:
    """One epoch: a fresh permutation of ``(x, y)`` cut at ``bounds``."""
    order = torch.randperm(len(y), generator=generator).to(y.device)
    for start, stop in bounds:
        idx = order[start:stop]
        yield x[idx], y[idx]


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    agc_clip: float,
    generator: torch.Generator,
    agc_rule: str = "all_but_head",
    proximal_mu: float = 0.0,
    anchor: dict[str, torch.Tensor] | None = None,
    batches: BatchSource | None = None,
) -> TrainStats:
    """SGD over ``(x, y)`` for ``epochs`` passes in shuffled mini-batches.

    ``agc_clip > 0`` applies adaptive gradient clipping to the parameters ``agc_rule`` names
    (:data:`AGC_RULES`). ``proximal_mu > 0`` adds FedProx's term (mu/2)·||w − w_global||² to
    the loss, over the parameters named in ``anchor`` (the global values the client received:
    FedBN's local layers have no global value and are not pulled anywhere).

    ``x`` and ``y`` already live on the model's device (moved once per client, not per batch).
    Batches follow :func:`batch_bounds`: a BatchNorm model never trains on a batch of one (a
    last batch of one joins the previous batch; a lone example is skipped), any other model
    does (cross-device, batch size 1). ``batches`` replaces them with another source (called
    once per epoch; ``generator`` and ``batch_size`` are then unused): every batch is a step,
    and an empty one (Poisson sampling) counts in ``steps`` but not in the mean loss.
    """
    model.train()
    agc_params = clipped_parameters(model, agc_rule) if agc_clip > 0 else []
    prox = proximal_pairs(model, anchor or {}) if proximal_mu > 0 else []
    n = len(y)
    if batches is None:
        bounds = batch_bounds(n, batch_size, min_batch=2 if uses_batch_statistics(model) else 1)
        batches = partial(shuffled_batches, x, y, bounds, generator)
    total, steps, counted = 0.0, 0, 0
    for _ in range(epochs):
        for xb, yb in batches():
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            if len(yb):  # the mean loss of an empty batch is NaN
                total += float(loss.detach())
                counted += 1
            if prox:
                loss = loss + proximal_mu / 2 * sum(((p - g) ** 2).sum() for p, g in prox)
            loss.backward()
            if agc_params:
                adaptive_clip_grad(agc_params, clip_factor=agc_clip)
            optimizer.step()
            steps += 1
    if not counted and n:  # no example seen (BatchNorm with one example, or empty Poisson
        # batches only): report the model's loss on the data instead of none
        return TrainStats(loss=evaluate(model, x, y).loss, num_examples=n, steps=steps)
    return TrainStats(loss=total / max(counted, 1), num_examples=n, steps=steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> EvalStats:
    """Mean cross-entropy and accuracy of ``model`` in eval mode (BN uses running statistics)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    n = len(y)
    return EvalStats(loss=loss_sum / max(n, 1), accuracy=correct / max(n, 1), num_examples=n)
