"""Federated data for fedwon: multi-domain data sets, partitioners and per-client access.

::

    from fedwon.datasets import DataSpec, load_federation
    fed = load_federation(DataSpec(dataset="digits-embedded", num_clients=10))  # 2 per domain
    x, y = fed.train_data(pid)          # float32 (N, 3, 28, 28) normalized, int64 (N,)
    fed.client_domain(pid), fed.test_data(pid), fed.domain_test_data("svhn")

Data sets (:data:`DATASETS`): ``digits-embedded`` (offline, built from data inside installed
packages), ``digits5``, ``office-caltech10``, ``domainnet`` (FedBN's files) and ``cifar10``
(python-version batches) under ``DataSpec.data_root``, and ``hf``: a Hugging Face
``DatasetDict`` saved with ``save_to_disk`` (:mod:`fedwon.datasets.hf`). Partitioners
(:data:`PARTITIONERS`): ``domain``, ``iid``, ``dirichlet``; ``natural_id`` and, for ``hf``,
``iid`` and ``dirichlet`` are Flower Datasets' (:mod:`fedwon.datasets.flwr_partition`).
Pickled files are read with a restricted unpickler (:mod:`fedwon.datasets.safe_pickle`). Every
data problem raises :class:`DataError`. See ``docs/data.md``.
"""

from fedwon.datasets.base import DatasetInfo, DomainArrays
from fedwon.datasets.errors import DataError, PartitionIdError, UnsafePickleError
from fedwon.datasets.federation import (
    Federation,
    build_federation,
    clear_federation_cache,
    load_domain_arrays,
    load_federation,
    validate_spec,
)
from fedwon.datasets.partition import DIRICHLET_SCOPES, PARTITIONERS
from fedwon.datasets.registry import DATASETS, spec_info
from fedwon.datasets.safe_pickle import load_pickle_file
from fedwon.datasets.spec import DataSpec

__all__ = [
    "DATASETS",
    "DIRICHLET_SCOPES",
    "PARTITIONERS",
    "DataError",
    "DataSpec",
    "DatasetInfo",
    "DomainArrays",
    "Federation",
    "PartitionIdError",
    "UnsafePickleError",
    "build_federation",
    "clear_federation_cache",
    "load_domain_arrays",
    "load_federation",
    "load_pickle_file",
    "spec_info",
    "validate_spec",
]
