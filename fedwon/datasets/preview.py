"""Picture of a federated data set: one row per domain, two samples of each class.

``python -m fedwon.datasets.preview docs/img/digits_embedded.png`` writes the embedded-digits grid
shipped in the docs; ``--split test``, ``--seed`` and ``--per-class`` change what is shown, and
``--dataset``/``--data-root`` preview a real data set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedwon.datasets.base import DomainArrays
from fedwon.datasets.embedded_digits import DOMAINS, cached_embedded_digits


def sample_grid(
    data: dict[str, DomainArrays], per_class: int = 2, split: str = "train", num_classes: int = 10
) -> np.ndarray:
    """``uint8`` HWC mosaic: a row per domain, ``per_class`` images of each class per row."""
    rows = []
    for arrays in data.values():
        x = arrays.train_x if split == "train" else arrays.test_x
        y = arrays.train_y if split == "train" else arrays.test_y
        tiles = []
        for c in range(num_classes):
            idx = np.flatnonzero(y == c)[:per_class]
            tiles += [x[i] for i in idx] + [np.zeros_like(x[0])] * (per_class - len(idx))
        rows.append(np.concatenate([_pad(t) for t in tiles], axis=2))
    return np.concatenate(rows, axis=1).transpose(1, 2, 0)


def _pad(tile: np.ndarray, width: int = 1) -> np.ndarray:
    return np.pad(tile, ((0, 0), (width, width), (width, width)), constant_values=255)


def save_grid(mosaic: np.ndarray, names: list[str], path: Path, scale: float = 3.0) -> None:
    """Save the mosaic with domain names on the left (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = mosaic.shape[:2]
    fig, ax = plt.subplots(figsize=(w * scale / 100 + 1.0, h * scale / 100))
    ax.imshow(mosaic, interpolation="nearest")
    row_h = h / len(names)
    ax.set_yticks([row_h * (i + 0.5) for i in range(len(names))], names)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--dataset", default="digits-embedded")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    if args.dataset == "digits-embedded":
        data = cached_embedded_digits(seed=args.seed)
        names = list(DOMAINS)
    else:
        from fedwon.datasets.federation import load_domain_arrays
        from fedwon.datasets.spec import DataSpec

        spec = DataSpec(dataset=args.dataset, data_root=args.data_root, seed=args.seed)
        data = load_domain_arrays(spec)
        names = list(data)
    save_grid(sample_grid(data, args.per_class, args.split), names, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
