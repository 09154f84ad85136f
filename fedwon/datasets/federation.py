"""``load_federation(spec)``: the per-process cached, partitioned data set clients read from.

Building a :class:`Federation` loads (or builds) every selected domain once, pools the domains,
runs the partitioner, sets each client's validation share aside (``spec.val_fraction``, see
:mod:`fedwon.datasets.validation`) and then lays the pooled train, validation and test images out
*client by client* in one float32 tensor each (normalized, NCHW). A client's data is then a slice
of that tensor — a view, no copy — so ``train_data(pid)`` costs microseconds however often a
cross-device run asks. Domains of the data set that no client holds (domain generalization) are
read on demand by :meth:`Federation.heldout_test_data`. The whole object is cached per process
by :func:`load_federation` (``functools.lru_cache`` on the frozen :class:`DataSpec`).

The returned tensors are shared by every caller in the process: treat them as read-only (copy
before modifying in place).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from fedwon.datasets.base import DatasetInfo, DomainArrays, rng_for
from fedwon.datasets.errors import DataError, PartitionIdError
from fedwon.datasets.flwr_partition import PARTITION_NAMES, partitioner_for
from fedwon.datasets.images import normalize
from fedwon.datasets.partition import (
    DIRICHLET_SCOPES,
    Assignment,
    PartitionOptions,
    Pool,
    clients_per_domain,
)
from fedwon.datasets.registry import select_domains, spec_info
from fedwon.datasets.spec import DataSpec, check_fields
from fedwon.datasets.validation import validation_split

FEDERATION_CACHE_SIZE = 8


@dataclass(frozen=True)
class Resolved:
    """A validated spec with its defaults filled in."""

    info: DatasetInfo
    domains: tuple[str, ...]
    image_size: int


def validate_spec(spec: DataSpec) -> Resolved:
    """Check everything about ``spec`` that can be checked without reading data.

    Raises :class:`DataError` with a one-line message naming the bad value and the valid choices.
    """
    if not isinstance(spec, DataSpec):
        raise DataError(f"expected a DataSpec, got {type(spec).__name__}")
    check_fields(spec)
    info = spec_info(spec)
    if info.resolve is not None:  # its domains are in the files data_root should name
        raise DataError(f"dataset {info.name!r} needs data_root; expected layout: {info.layout}")
    domains = select_domains(info, spec.domains)
    if spec.partition not in PARTITION_NAMES:
        raise DataError(f"unknown partition {spec.partition!r}; valid: {list(PARTITION_NAMES)}")
    if spec.partition == "natural_id" and spec.num_clients != len(domains):
        raise DataError(
            f"partition 'natural_id' gives one client per domain: set num_clients={len(domains)} "
            f"for the domains {list(domains)} (got {spec.num_clients})"
        )
    if spec.dirichlet_scope not in DIRICHLET_SCOPES:
        raise DataError(
            f"unknown dirichlet_scope {spec.dirichlet_scope!r}; valid: {list(DIRICHLET_SCOPES)}"
        )
    per_domain = spec.partition == "domain" or (
        spec.partition == "dirichlet" and spec.dirichlet_scope == "domain"
    )
    if per_domain:
        clients_per_domain(spec.num_clients, domains, spec.partition)
    if info.needs_root and not spec.data_root:
        raise DataError(f"dataset {info.name!r} needs data_root; expected layout: {info.layout}")
    return Resolved(info, domains, spec.image_size or info.default_image_size)


def load_domain_arrays(spec: DataSpec) -> dict[str, DomainArrays]:
    """Load the selected domains of ``spec`` (``uint8`` arrays, before partitioning)."""
    resolved = validate_spec(spec)
    arrays = resolved.info.loader(spec, resolved.domains, resolved.image_size)
    for name in resolved.domains:
        for split, labels in (("training", arrays[name].train_y), ("test", arrays[name].test_y)):
            # a domain without test images would silently vanish from every result
            if len(labels) == 0:
                raise DataError(f"dataset {spec.dataset!r}: domain {name!r} has no {split} images")
    return arrays


def make_pool(arrays: dict[str, DomainArrays], domains: tuple[str, ...], classes: int) -> Pool:
    def ids(split: str) -> np.ndarray:
        sizes = [len(getattr(arrays[d], f"{split}_y")) for d in domains]
        return np.repeat(np.arange(len(domains)), sizes)

    return Pool(
        train_y=np.concatenate([arrays[d].train_y for d in domains]),
        train_d=ids("train"),
        test_y=np.concatenate([arrays[d].test_y for d in domains]),
        test_d=ids("test"),
        domains=domains,
        num_classes=classes,
    )


def _client_major(pooled: np.ndarray, parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``pooled`` reordered client by client, and the clients' start offsets."""
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return pooled[order], offsets


def split_validation(
    parts: list[np.ndarray], labels: np.ndarray, fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's train share (pool indices) cut into (fit, validation) pool indices."""
    fit, val = [], []
    for pid, part in enumerate(parts):
        keep, held = validation_split(labels[part], fraction, rng_for(seed, "validation", pid))
        fit.append(part[keep])
        val.append(part[held])
    return fit, val


class Federation:
    """Partitioned data of one :class:`DataSpec`; client ``pid`` is partition id ``pid``.

    Attributes: ``spec``, ``domains`` (selected, in client order), ``num_clients``,
    ``num_classes``, ``in_channels``, ``image_size``; for inspection, ``pool`` (pooled labels and
    domain ids), ``assignment`` (each client's pool indices, see
    :mod:`fedwon.datasets.partition`; its train shares *before* the validation split) and
    ``validation`` (each client's validation pool indices, empty when ``val_fraction`` is 0).
    """

    def __init__(self, spec: DataSpec, resolved: Resolved, arrays: dict[str, DomainArrays]) -> None:
        self.spec = spec
        self.domains: list[str] = list(resolved.domains)
        self.num_clients: int = spec.num_clients
        self.num_classes: int = resolved.info.num_classes
        self.in_channels: int = 3
        self.image_size: int = resolved.image_size
        pool = make_pool(arrays, resolved.domains, self.num_classes)
        options = PartitionOptions(
            num_clients=spec.num_clients,
            alpha=float(spec.alpha),
            dirichlet_scope=spec.dirichlet_scope,
            seed=spec.seed,
        )
        partitioner = partitioner_for(spec.dataset, spec.partition)
        self.assignment: Assignment = partitioner(pool, options)
        self.pool = pool
        fit, self.validation = split_validation(
            self.assignment.train, pool.train_y, float(spec.val_fraction), spec.seed
        )
        pooled_train = np.concatenate([arrays[d].train_x for d in resolved.domains])
        train_u8, self._train_offsets = _client_major(pooled_train, fit)
        val_u8, self._val_offsets = _client_major(pooled_train, self.validation)
        test_u8, self._test_offsets = _client_major(
            np.concatenate([arrays[d].test_x for d in resolved.domains]), self.assignment.test
        )
        self._train_x = normalize(train_u8)
        self._val_x = normalize(val_u8)
        self._test_x = normalize(test_u8)
        self._train_y = torch.from_numpy(pool.train_y[np.concatenate(fit)])
        self._val_y = torch.from_numpy(pool.train_y[np.concatenate(self.validation)])
        test_order = np.concatenate(self.assignment.test)
        self._test_y = torch.from_numpy(pool.test_y[test_order])
        self._test_row_domain = pool.test_d[test_order]
        self._domain_test: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._heldout_test: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- clients -------------------------------------------------------------------------------

    def _check_pid(self, pid: int) -> int:
        if isinstance(pid, bool) or not isinstance(pid, (int, np.integer)):
            raise PartitionIdError(
                f"partition id must be an integer, got {pid!r} (num_clients={self.num_clients})"
            )
        if not 0 <= int(pid) < self.num_clients:
            raise PartitionIdError(
                f"partition id {pid} out of range: num_clients={self.num_clients} "
                f"(valid ids 0..{self.num_clients - 1})"
            )
        return int(pid)

    def client_domain(self, pid: int) -> str:
        """The client's domain (for ``iid``/global ``dirichlet``: the domain of most of its
        training samples)."""
        return self.domains[self.assignment.domain_of[self._check_pid(pid)]]

    def clients_of_domain(self, domain: str) -> list[int]:
        """Partition ids whose :meth:`client_domain` is ``domain``."""
        d = self._domain_index(domain)
        return [pid for pid, dom in enumerate(self.assignment.domain_of) if dom == d]

    def train_data(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x float32 (N, C, H, W) normalized, y int64 (N,))`` — views, do not modify.

        What the client trains on: its training share minus its validation share.
        """
        p = self._check_pid(pid)
        a, b = int(self._train_offsets[p]), int(self._train_offsets[p + 1])
        return self._train_x[a:b], self._train_y[a:b]

    def val_data(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's validation share (empty when ``val_fraction`` is 0 or it is too small);
        disjoint from :meth:`train_data`, drawn from the same training share."""
        p = self._check_pid(pid)
        a, b = int(self._val_offsets[p]), int(self._val_offsets[p + 1])
        return self._val_x[a:b], self._val_y[a:b]

    def test_data(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's share of the test set (see :mod:`fedwon.datasets.partition`)."""
        p = self._check_pid(pid)
        a, b = int(self._test_offsets[p]), int(self._test_offsets[p + 1])
        return self._test_x[a:b], self._test_y[a:b]

    def num_train(self, pid: int) -> int:
        p = self._check_pid(pid)
        return int(self._train_offsets[p + 1] - self._train_offsets[p])

    def num_val(self, pid: int) -> int:
        p = self._check_pid(pid)
        return int(self._val_offsets[p + 1] - self._val_offsets[p])

    def num_test(self, pid: int) -> int:
        p = self._check_pid(pid)
        return int(self._test_offsets[p + 1] - self._test_offsets[p])

    def client_data(self, pid: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A client's ``"train"``, ``"val"`` or ``"test"`` data (what an evaluation split names)."""
        readers = {"train": self.train_data, "val": self.val_data, "test": self.test_data}
        if split not in readers:
            raise DataError(f"unknown data split {split!r}; valid: {list(readers)}")
        return readers[split](pid)

    def label_counts(self, pid: int, split: str = "train") -> np.ndarray:
        """Per-class sample counts of a client's ``"train"``, ``"val"`` or ``"test"`` data."""
        _, y = self.client_data(pid, split)
        return np.bincount(y.numpy(), minlength=self.num_classes)

    # -- domains -------------------------------------------------------------------------------

    def _domain_index(self, domain: str) -> int:
        if domain not in self.domains:
            raise DataError(f"unknown domain {domain!r}; this federation has {self.domains}")
        return self.domains.index(domain)

    def domain_test_data(self, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole test set of ``domain`` (order unspecified; a view when contiguous)."""
        if domain not in self._domain_test:
            rows = np.flatnonzero(self._test_row_domain == self._domain_index(domain))
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                a, b = int(rows[0]), int(rows[-1]) + 1
                self._domain_test[domain] = (self._test_x[a:b], self._test_y[a:b])
            else:
                index = torch.from_numpy(rows)
                self._domain_test[domain] = (self._test_x[index], self._test_y[index])
        return self._domain_test[domain]

    @property
    def heldout_domains(self) -> list[str]:
        """Domains of the data set that no client of this federation holds (domain
        generalization: train on the others, test on these), in the data set's order."""
        return [d for d in spec_info(self.spec).domains if d not in self.domains]

    def heldout_test_data(self, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The test set of a held-out ``domain`` (see :attr:`heldout_domains`), normalized as
        the clients' data; the same images :meth:`domain_test_data` gives in a federation that
        trains on ``domain``. Loaded on first use and kept."""
        if domain not in self._heldout_test:
            if domain not in self.heldout_domains:
                raise DataError(
                    f"domain {domain!r} is not held out of this federation; held-out domains: "
                    f"{self.heldout_domains} (a training domain's test set is domain_test_data)"
                )
            self._heldout_test[domain] = load_heldout_test_data(self.spec, domain)
        return self._heldout_test[domain]

    def describe(self) -> str:
        """One line: data set, partition and client sizes."""
        sizes = np.diff(self._train_offsets)
        val = f" val={len(self._val_y)}" if len(self._val_y) else ""
        return (
            f"{self.spec.dataset} {self.domains} partition={self.spec.partition} "
            f"clients={self.num_clients} train/client min={sizes.min()} "
            f"median={int(np.median(sizes))} max={sizes.max()}{val} test={len(self._test_y)} "
            f"image={self.in_channels}x{self.image_size}x{self.image_size}"
        )

    def __repr__(self) -> str:
        return f"Federation({self.describe()})"


def load_heldout_test_data(spec: DataSpec, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images and labels of ``domain`` under ``spec``'s settings (size caps, image size,
    seed), whichever domains ``spec`` selects: loaders draw each domain independently."""
    alone = spec.model_copy(update=dict(domains=(domain,), partition="domain", num_clients=1))
    arrays = load_domain_arrays(alone)[domain]
    return normalize(arrays.test_x), torch.from_numpy(np.asarray(arrays.test_y, dtype=np.int64))


def build_federation(spec: DataSpec) -> Federation:
    """Build a :class:`Federation` without the per-process cache."""
    resolved = validate_spec(spec)
    return Federation(spec, resolved, load_domain_arrays(spec))


@functools.lru_cache(maxsize=FEDERATION_CACHE_SIZE)
def _cached_federation(spec: DataSpec) -> Federation:
    return build_federation(spec)


def load_federation(spec: DataSpec) -> Federation:
    """The :class:`Federation` for ``spec``, built once per process and then reused."""
    validate_spec(spec)  # also rejects unhashable field values before the cache sees them
    return _cached_federation(spec)


def clear_federation_cache() -> None:
    """Forget every cached :class:`Federation` of this process."""
    _cached_federation.cache_clear()
