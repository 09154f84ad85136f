"""The Gaussian mechanism on the sum of clipped client updates.

Each sampled client contributes one update of L2 norm <= C (see :mod:`fedwon.privacy.clipping`),
weighted equally: the sum then changes by at most C when one client is added or removed, and
Gaussian noise of std ``z * C`` per coordinate makes the release (z-)differentially private.
The noisy sum is divided by the *expected* cohort size m (clients sampled per round), never by
the number of replies that arrived: that count depends on who took part, and dividing by it
would make the scale of the release data dependent.

Population-scale simulation (``noise_cohort``, ``dp.noise_cohort_size``): the sum's noise std
is scaled by m / M, so the *mean* of the m clients that trained carries the noise std z*C/M of a
cohort of M -- what pfl-research's ``noise_scale`` does. It is the noise a real cohort of M
would see. The simulated release itself is the m updates under noise multiplier z*m/M: its
epsilon is that of the deployment with M clients per round (q = M / N), not of the simulation.

Two sources of noise:

* simulation (``secure_rng=False``): a torch generator seeded from (run seed, round), so a run
  and its resumed continuation add exactly the same noise. Anyone who knows the seed can
  subtract the noise again: a seeded run demonstrates utility, it protects nobody.
* deployment (``secure_rng=True``): standard normals from the operating system's CSPRNG
  (``os.urandom``, Box-Muller in float64), each coordinate the sum of four draws divided by 2
  -- Opacus' ``secure_mode`` defence against floating-point attacks on Gaussian samplers
  (Holohan & Braghin 2021; Jin et al. 2022).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence

import numpy as np
import torch


def round_seed(seed: int, server_round: int) -> int:
    """A 63-bit seed per (run seed, round): independent streams, stable across resumes."""
    digest = hashlib.blake2b(f"fedwon-dp:{seed}:{server_round}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def round_generator(seed: int, server_round: int) -> torch.Generator:
    """The seeded CPU generator for one round's noise (simulation only)."""
    return torch.Generator().manual_seed(round_seed(seed, server_round))


def _os_uniform(count: int) -> np.ndarray:
    """``count`` uniforms in (0, 1) with 53 random bits each, from ``os.urandom``."""
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _os_standard_normal(count: int) -> np.ndarray:
    """Box-Muller on OS randomness: ``count`` independent N(0, 1) draws (float64)."""
    pairs = (count + 1) // 2
    u1, u2 = _os_uniform(pairs), _os_uniform(pairs)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * math.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


def secure_standard_normal(count: int) -> torch.Tensor:
    """N(0, 1) draws for real deployments: OS CSPRNG, four draws summed and halved per value."""
    total = _os_standard_normal(count)
    for _ in range(3):
        total += _os_standard_normal(count)
    return torch.from_numpy(total / 2.0)


def standard_normal(count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` N(0, 1) values (float32): seeded if ``generator`` is given, else OS-secure."""
    if generator is None:
        return secure_standard_normal(count).to(torch.float32)
    return torch.randn(count, generator=generator, dtype=torch.float32)


def standard_normal_value(generator: torch.Generator | None) -> float:
    """One N(0, 1) draw in float64 (a noised count's noise): the next draw of ``generator``,
    or OS-secure like :func:`secure_standard_normal`."""
    if generator is None:
        return float(secure_standard_normal(1)[0])
    return float(torch.randn(1, generator=generator, dtype=torch.float64)[0])


def noise_std(
    noise_multiplier: float, clip_norm: float, expected_clients: int, noise_cohort: int = 0
) -> float:
    """Per-coordinate std of the noise in the *averaged* update: z * C / M, where M is the
    ``noise_cohort`` a population-scale simulation states its noise for (0 = the cohort m)."""
    return noise_multiplier * clip_norm / (noise_cohort or expected_clients)


def noise_scale(expected_clients: int, noise_cohort: int = 0) -> float:
    """m / M: the factor on the sum's noise std that gives the average the noise of a cohort
    of M while m clients train (pfl-research's ``noise_scale``; 1 without ``noise_cohort``)."""
    if noise_cohort and noise_cohort < expected_clients:
        raise ValueError(
            f"noise_cohort must be >= the cohort of {expected_clients} (or 0), got {noise_cohort}"
        )
    return expected_clients / noise_cohort if noise_cohort else 1.0


def privatize_sum_(
    sums: Sequence[torch.Tensor],
    noise_multiplier: float,
    clip_norm: float,
    expected_clients: int,
    generator: torch.Generator | None,
    noise_cohort: int = 0,
) -> None:
    """Turn the sum of clipped updates into the private mean, in place.

    Adds N(0, (z*C*m/M)^2) to every coordinate of ``sums`` (float tensors, one per layer)
    and divides by ``expected_clients`` m, so the mean's noise std is z*C/M: M is
    ``noise_cohort`` (0 = m, the plain Gaussian mechanism N(0, (z*C)^2) on the sum). One draw
    of sum(numel) normals feeds all layers, so the noise does not depend on how the update is
    split into tensors; the draws are the same for any M (only their scale changes).
    """
    if expected_clients < 1:
        raise ValueError(f"expected_clients must be >= 1, got {expected_clients}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    std = noise_multiplier * clip_norm
    if noise_cohort:  # untouched otherwise: runs without it keep their noise bit for bit
        std *= noise_scale(expected_clients, noise_cohort)
    count = sum(t.numel() for t in sums)
    noise = standard_normal(count, generator) if std > 0 and count else None
    offset = 0
    for tensor in sums:
        if noise is not None:
            chunk = noise[offset : offset + tensor.numel()].view(tensor.shape)
            tensor.add_(chunk.to(tensor.dtype), alpha=std)
            offset += tensor.numel()
        tensor.div_(expected_clients)
