"""``DataSpec``: the hashable description of a federated data set (the per-process cache key).

Only the spec's own fields are checked here (types and ranges); checks that need the data-set
registry (dataset and domain names, ``num_clients`` versus the number of domains) live in
:func:`fedwon.datasets.federation.validate_spec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedwon.datasets.errors import DataError


@dataclass(frozen=True)
class DataSpec:
    """What data, split how among how many clients. Frozen and hashable.

    ``train_per_domain`` / ``test_per_domain``: the number of images per domain built for
    ``digits-embedded`` (defaults 743 / 400) and an optional class-balanced cap for real data
    (for ``digits5`` the number of training images also decides how many of FedBN's 743-image
    partition files are read; default one file, like FedBN).
    ``image_size``: side of the square images clients see (default per data set: 28 for digits,
    32 for CIFAR-10, 256 for Office-Caltech-10 and DomainNet).
    ``val_fraction``: share of each client's training data held back for validation (see
    :mod:`fedwon.datasets.validation`); 0 keeps all of it for training.
    """

    dataset: str = "digits-embedded"
    data_root: str | None = None
    partition: str = "domain"
    num_clients: int = 5
    alpha: float = 0.5
    dirichlet_scope: str = "domain"
    domains: tuple[str, ...] | None = None
    train_per_domain: int | None = None
    test_per_domain: int | None = None
    image_size: int | None = None
    val_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        # recipes (TOML/JSON) give lists; keep the spec hashable
        if isinstance(self.domains, list):
            object.__setattr__(self, "domains", tuple(self.domains))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not _is_int(value) or value <= 0:  # type: ignore[operator]
        raise DataError(f"{name} must be a positive integer, got {value!r}")


def check_fields(spec: DataSpec) -> None:
    """Type/range checks of the spec's fields, one clear :class:`DataError` per problem."""
    _check_positive_int("num_clients", spec.num_clients, optional=False)
    _check_positive_int("train_per_domain", spec.train_per_domain, optional=True)
    _check_positive_int("test_per_domain", spec.test_per_domain, optional=True)
    _check_positive_int("image_size", spec.image_size, optional=True)
    if not _is_int(spec.seed) or spec.seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {spec.seed!r}")
    alpha = spec.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise DataError(f"alpha must be a finite number > 0, got {alpha!r}")
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    frac = spec.val_fraction
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1:
        raise DataError(f"val_fraction must be a number in [0, 1), got {frac!r}")
    if spec.domains is not None and not isinstance(spec.domains, tuple):
        raise DataError(f"domains must be a tuple of names or None, got {spec.domains!r}")
    if spec.data_root is not None and not isinstance(spec.data_root, str):
        raise DataError(f"data_root must be a string path or None, got {spec.data_root!r}")
