"""FedAvg: every parameter and buffer averaged, weighted by ``num-examples`` (McMahan et al.)."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedwon.strategies.round_control import RoundControl


class FedAvg(RoundControl, FlowerFedAvg):
    """Flower's FedAvg with fedwon's round control (seeded sampling, fault handling, history)."""
