"""``TrainSpec``: the train section of a run -- how every client trains locally.

Local epochs, batch size, SGD's learning rate, momentum and weight decay, adaptive gradient
clipping (``agc_clip``, 0 = off; ``agc_rule``: which parameters it clips, see
:data:`fedwon.clients.train.AGC_RULES`) and the device (a node's own ``device`` overrides it).
It travels to clients unchanged in every message.
"""

from __future__ import annotations

from typing import Literal

from fedwon.common.section import NonNegativeFloat, PositiveFloat, PositiveInt, Section


class TrainSpec(Section):
    """Local training of one client, one round."""

    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.01
    momentum: NonNegativeFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    agc_clip: NonNegativeFloat = 0.0  # adaptive gradient clipping factor; 0 = off
    agc_rule: Literal["all_but_head", "nfnets"] = "all_but_head"  # which parameters AGC clips
    device: Literal["auto", "cpu", "cuda"] = "auto"
