"""``DataSpec``: the data section of a run, and the hashable description of a federated data
set (the per-process cache key of :func:`~fedwon.datasets.load_federation`).

It is the run config's ``data`` section as it is (:mod:`fedwon.config` composes it; clients
receive it unchanged in every message), so its keys are the recipe keys ``dataset``,
``data_root``, ``partition``, ``num_clients``, ``alpha``, ``dirichlet_scope``, ``domains``,
``train_per_domain``, ``test_per_domain``, ``image_size``, ``val_fraction``, and for
``dataset = "hf"`` the column names ``image_column``, ``label_column``, ``domain_column`` (plus
the run's ``seed``, which partitions the data). Recipes write "not set" as 0 or an empty string;
here it is ``None``. Field checks (types, ranges, names in the registries) run on
construction; :func:`check_fields` repeats the field checks for specs built without
validation (``model_copy``), and :func:`fedwon.datasets.federation.validate_spec` adds what
needs the data set's metadata (domains, ``num_clients`` against the number of domains).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from pydantic import field_serializer, model_validator

from fedwon.common.section import Section
from fedwon.datasets.errors import DataError

IN_CHANNELS = 3  # every fedwon data set yields RGB images (grey domains are replicated)
CHOICES: dict[str, Collection[str]] = {"dataset": (), "partition": (), "dirichlet_scope": ()}
"""The names a data section may use, filled in by the registries that define them when the
package loads (:mod:`fedwon.datasets.registry`, :mod:`fedwon.datasets.partition`): this
module imports no loader, so every loader can take a :class:`DataSpec`."""


class DataSpec(Section):
    """What data, split how among how many clients. Frozen and hashable.

    ``train_per_domain`` / ``test_per_domain``: the number of images per domain built for
    ``digits-embedded`` (defaults 743 / 400) and an optional class-balanced cap for real data
    (for ``digits5`` the number of training images also decides how many of FedBN's 743-image
    partition files are read; default one file, like FedBN).
    ``image_size``: side of the square images clients see (default per data set: 28 for digits,
    32 for CIFAR-10, 256 for Office-Caltech-10 and DomainNet).
    ``val_fraction``: share of each client's training data held back for validation (see
    :mod:`fedwon.datasets.validation`); 0 keeps all of it for training (a run's default is
    0.1, see :mod:`fedwon.config`).
    ``image_column`` / ``label_column`` / ``domain_column``: which columns of a saved Hugging
    Face data set (``dataset = "hf"``, :mod:`fedwon.datasets.hf`) hold the images, the class
    labels and the domain of each example; without a domain column every example is in one
    domain, ``all``. Other data sets ignore them (their files fix the layout).
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
    image_column: str = "image"
    label_column: str = "label"
    domain_column: str | None = None
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _recipe_form(cls, values: Any) -> Any:
        """Recipes' "not set" (0, "") is None here; ``domains`` may be a list of names or a
        comma-separated string (``--set domains=mnist,usps``)."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for key in ("train_per_domain", "test_per_domain", "image_size"):
            if values.get(key) == 0 and not isinstance(values.get(key), bool):
                values[key] = None
        for key in ("data_root", "domain_column"):
            if values.get(key) == "":
                values[key] = None
        domains = values.get("domains")
        if isinstance(domains, str):
            names = tuple(d.strip() for d in domains.split(",") if d.strip())
            values["domains"] = names or None
        elif isinstance(domains, list | tuple):
            if not all(isinstance(d, str) for d in domains):
                raise ValueError(f"domains must be names, got {domains!r}")
            values["domains"] = tuple(domains) or None
        return values

    @model_validator(mode="after")
    def _checked(self) -> DataSpec:
        for key, choices in CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise ValueError(f"unknown {key} {value!r}; choose one of {sorted(choices)}")
        try:
            check_fields(self)
        except DataError as err:
            raise ValueError(str(err)) from None
        return self

    @field_serializer("domains")
    def _comma_separated(self, domains: tuple[str, ...] | None) -> str | None:
        """The recipe form of ``domains`` (TOML, Flower's records): comma-separated names."""
        return ",".join(domains) if domains else None

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Recipe keys, without ``seed`` (the run's own key) and unset values."""
        return {k: v for k, v in super().to_flat().items() if k != "seed"}


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
    columns = {"image_column": spec.image_column, "label_column": spec.label_column}
    if spec.domain_column is not None:
        columns["domain_column"] = spec.domain_column
    for key, name in columns.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{key} must be a column name, got {name!r}")
    if len(set(columns.values())) < len(columns):
        # one column cannot be both the image and the label: a typo, caught before reading
        raise DataError(f"{', '.join(columns)} must name different columns, got {columns}")
