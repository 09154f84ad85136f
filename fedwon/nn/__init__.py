"""Layers for normalization-free federated learning.

``WSConv2d`` (scaled weight standardization), ``StdConv2d`` (plain weight standardization, the
WS+GN baseline's conv), ``adaptive_clip_grad`` (AGC), activation gains, and the ``norm`` kinds
that select a model's normalization (``make_norm``, ``conv_layer_for``) plus the type-based test
for normalization layers.
"""

from fedwon.nn.activations import ACTIVATION_GAINS, activation_gain
from fedwon.nn.agc import adaptive_clip_grad, unitwise_norm
from fedwon.nn.norms import (
    NORM_FREE_KINDS,
    NORM_KINDS,
    NORM_LAYER_TYPES,
    check_norm_kind,
    conv_layer_for,
    gn_groups,
    has_norm_layers,
    is_norm_layer,
    make_norm,
)
from fedwon.nn.std_conv import StdConv2d, plain_standardize_weight
from fedwon.nn.ws_conv import WSConv2d, standardize_weight

__all__ = [
    "ACTIVATION_GAINS",
    "NORM_FREE_KINDS",
    "NORM_KINDS",
    "NORM_LAYER_TYPES",
    "StdConv2d",
    "WSConv2d",
    "activation_gain",
    "adaptive_clip_grad",
    "check_norm_kind",
    "conv_layer_for",
    "gn_groups",
    "has_norm_layers",
    "is_norm_layer",
    "make_norm",
    "plain_standardize_weight",
    "standardize_weight",
    "unitwise_norm",
]
