"""``ModelSpec``: the model section of a run (``model``, ``norm``), and the run's initial model.

``norm = "auto"`` lets the method choose (FedWon: scaled WS; the others: BN); the run config
resolves it (:attr:`fedwon.config.RunConfig.resolved_norm`) before the section travels to
clients, which always receive the norm actually built.
"""

from __future__ import annotations

import torch
from pydantic import field_validator
from torch import nn

from fedwon.common.section import Section
from fedwon.models.registry import MODELS, build_model
from fedwon.nn import NORM_KINDS

AUTO_NORM = "auto"


class ModelSpec(Section):
    """Which model family, with which normalization (or ``auto``)."""

    model: str = "cnn"
    norm: str = AUTO_NORM

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of {sorted(MODELS)}")
        return value

    @field_validator("norm")
    @classmethod
    def _known_norm(cls, value: str) -> str:
        if value != AUTO_NORM and value not in NORM_KINDS:
            raise ValueError(
                f"unknown norm {value!r}; choose {AUTO_NORM!r} or one of {list(NORM_KINDS)}"
            )
        return value

    def initial_model(self, num_classes: int, in_channels: int, seed: int) -> nn.Module:
        """The run's initial model: the same seed gives the server and every client the same
        one. ``norm`` must be resolved (not ``auto``)."""
        if self.norm == AUTO_NORM:
            raise ValueError("resolve norm='auto' (the method's default) before building")
        torch.manual_seed(seed)
        return build_model(
            self.model, norm=self.norm, num_classes=num_classes, in_channels=in_channels
        )
