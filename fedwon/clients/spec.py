"""``TrainSpec``: the train section of a run -- how every client trains locally.

Local epochs, batch size, SGD's learning rate, momentum and weight decay, adaptive gradient
clipping (``agc_clip``, 0 = off) and the device (a node's own ``device`` overrides it). It
travels to clients unchanged in every message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from fedwon.section import Section


class TrainSpec(Section):
    """Local training of one client, one round."""

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    agc_clip: float = 0.0  # adaptive gradient clipping factor; 0 = off
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("local_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("lr")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value

    @field_validator("momentum", "weight_decay", "agc_clip")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value
