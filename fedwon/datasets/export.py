"""Write the embedded digits as a Hugging Face ``DatasetDict`` on disk (``fedwon data export``).

The result is what ``dataset = "hf"`` reads (:mod:`fedwon.datasets.hf`): splits ``train`` and
``test``, columns ``image`` (lossless PNG, ``3 × 28 × 28``), ``label`` (``ClassLabel`` ``0`` …
``9``) and ``domain`` (the domain's name), rows domain after domain in the embedded data set's
order. It exists so that the Hugging Face path can be shown and tested without a network, and so
that a user has a known-good example of the format next to their own data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedwon.datasets.errors import DataError
from fedwon.datasets.federation import load_domain_arrays
from fedwon.datasets.hf import require_datasets
from fedwon.datasets.spec import DataSpec

EMBEDDED = "digits-embedded"


def _split(images: list[np.ndarray], labels: list[np.ndarray], names: list[str]) -> dict:
    pictures = [Image.fromarray(x.transpose(1, 2, 0)) for xs in images for x in xs]
    domain = [n for xs, n in zip(images, names, strict=True) for _ in range(len(xs))]
    return {
        "image": pictures,
        "label": np.concatenate(labels).tolist(),
        "domain": domain,
    }


def export_embedded(
    out: str | Path,
    *,
    train_per_domain: int | None = None,
    test_per_domain: int | None = None,
    seed: int = 0,
    domains: tuple[str, ...] | None = None,
) -> Path:
    """Save the embedded digits (sizes, seed and domains as a data section would build them)
    to ``out`` with ``save_to_disk``; ``out`` must not exist or be empty. Returns ``out``."""
    datasets = require_datasets()
    path = Path(out).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DataError(f"--out {str(out)!r} exists and is not an empty folder; choose a new one")
    spec = DataSpec(
        dataset=EMBEDDED,
        train_per_domain=train_per_domain,
        test_per_domain=test_per_domain,
        seed=seed,
        domains=domains,
        num_clients=len(domains) if domains else 5,
    )
    arrays = load_domain_arrays(spec)
    names = list(arrays)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(c) for c in range(10)]),
            "domain": datasets.Value("string"),
        }
    )
    splits = {}
    for split in ("train", "test"):
        columns = _split(
            [getattr(arrays[d], f"{split}_x") for d in names],
            [getattr(arrays[d], f"{split}_y") for d in names],
            names,
        )
        splits[split] = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path
