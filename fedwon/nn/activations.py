"""Activation gains for normalization-free networks.

Without normalization layers nothing re-standardizes the activations, so each
scaled weight-standardized convolution multiplies its output by the gain γ of the
activation that *feeds* it: γ = 1 / std(act(z)) for z ~ N(0, 1). That keeps the
signal at unit variance through depth (Brock et al., "Characterizing signal
propagation to close the performance gap in unnormalized ResNets", 2021).

The constants are the empirically measured values used by DeepMind's NFNets code
and timm (`_nonlin_gamma`); keeping them identical makes our models comparable
with those references.
"""

from __future__ import annotations

__all__ = ["ACTIVATION_GAINS", "activation_gain"]

_RELU_GAIN = 1.7139588594436646

ACTIVATION_GAINS: dict[str, float] = {
    "relu": _RELU_GAIN,
    # ReLU6 clips at 6, which a unit-variance signal almost never reaches, so it
    # propagates variance like ReLU (timm uses ReLU's gain for it as well).
    "relu6": _RELU_GAIN,
    "gelu": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "swish": 1.7881293296813965,
    "identity": 1.0,
    "linear": 1.0,
}


def activation_gain(name: str) -> float:
    """Return γ for activation ``name``; unknown names fail loudly.

    A silent default of 1.0 would under-scale a ReLU network by ~1.7x per layer,
    which shows up only as mysteriously slow training, so we raise instead.
    """
    try:
        return ACTIVATION_GAINS[name.lower()]
    except KeyError:
        valid = ", ".join(sorted(ACTIVATION_GAINS))
        raise ValueError(f"unknown activation {name!r}; valid activations: {valid}") from None
