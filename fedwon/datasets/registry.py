"""The data-set registry :data:`DATASETS`: name → :class:`~fedwon.datasets.base.DatasetInfo`."""

from __future__ import annotations

from fedwon.datasets import cifar10, digits5, domainnet, embedded_digits, hf, office_caltech
from fedwon.datasets.base import DatasetInfo
from fedwon.datasets.errors import DataError
from fedwon.datasets.spec import CHOICES, DataSpec

DATASETS: dict[str, DatasetInfo] = {
    "digits-embedded": DatasetInfo(
        name="digits-embedded",
        domains=embedded_digits.DOMAINS,
        num_classes=10,
        default_image_size=28,
        needs_root=False,
        loader=embedded_digits.load_embedded,
        layout="built offline from scikit-learn and matplotlib data; no files needed",
    ),
    "digits5": DatasetInfo(
        name="digits5",
        domains=digits5.DOMAINS,
        num_classes=10,
        default_image_size=28,
        needs_root=True,
        loader=digits5.load_digits5,
        layout=digits5.LAYOUT,
    ),
    "office-caltech10": DatasetInfo(
        name="office-caltech10",
        domains=office_caltech.DOMAINS,
        num_classes=10,
        default_image_size=256,
        needs_root=True,
        loader=office_caltech.load_office_caltech,
        layout=office_caltech.LAYOUT,
    ),
    "domainnet": DatasetInfo(
        name="domainnet",
        domains=domainnet.DOMAINS,
        num_classes=10,
        default_image_size=256,
        needs_root=True,
        loader=domainnet.load_domainnet,
        layout=domainnet.LAYOUT,
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        domains=cifar10.DOMAINS,
        num_classes=10,
        default_image_size=32,
        needs_root=True,
        loader=cifar10.load_cifar10,
        layout=cifar10.LAYOUT,
    ),
    hf.NAME: DatasetInfo(
        name=hf.NAME,
        domains=(hf.NO_DOMAIN,),  # the real ones come from the domain column: resolve
        num_classes=0,
        default_image_size=0,
        needs_root=True,
        loader=hf.load_hf,
        layout=hf.LAYOUT,
        resolve=hf.resolve_info,
    ),
}
CHOICES["dataset"] = DATASETS  # what a data section may name


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``, or a :class:`DataError` listing the valid names."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown dataset {name!r}; valid: {list(DATASETS)}") from None


def spec_info(spec: DataSpec) -> DatasetInfo:
    """The registry entry for ``spec.dataset`` with the facts its files decide filled in (the
    domains, classes and image size of a saved Hugging Face data set); static entries as they
    are. Reading them needs ``data_root``: without it, the static entry."""
    info = dataset_info(spec.dataset)
    if info.resolve is None or not spec.data_root:
        return info
    return info.resolve(spec)


def select_domains(info: DatasetInfo, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """Validated domain subset, in the order given (``None``: all domains, canonical order)."""
    if requested is None:
        return info.domains
    if len(requested) == 0:
        raise DataError(f"domains is empty; choose from {list(info.domains)} or pass None")
    for d in requested:
        if d not in info.domains:
            raise DataError(
                f"unknown domain {d!r} for dataset {info.name!r}; valid: {list(info.domains)}"
            )
    if len(set(requested)) != len(requested):
        raise DataError(f"domains {list(requested)} lists a domain twice")
    return tuple(requested)
