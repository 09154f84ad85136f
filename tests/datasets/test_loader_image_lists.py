"""``office-caltech10`` and ``domainnet`` loaders on path-list pickles + tiny image folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedwon.datasets import (
    DataError,
    DataSpec,
    UnsafePickleError,
    build_federation,
    domainnet,
    office_caltech,
)


def write_site(
    root: Path,
    subdir: str,
    site: str,
    classes: tuple[str, ...],
    n_train: int,
    n_test: int,
    *,
    text_labels: bool = True,
) -> None:
    """FedBN layout: <root>/<subdir>/<site>_{train,test}.pkl listing images relative to root."""
    rng = np.random.default_rng(len(site) * 7 + n_train)
    for split, n in (("train", n_train), ("test", n_test)):
        paths, labels = [], []
        for i in range(n):
            c = i % len(classes)
            rel = f"{subdir}/{site}/{classes[c]}/{split}_{i:03d}.{'jpg' if i % 2 else 'png'}"
            file = root / rel
            file.parent.mkdir(parents=True, exist_ok=True)
            mode = "L" if i % 3 == 0 else "RGB"  # FedBN converts grey images to 3 channels
            size = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(file)
            paths.append(rel)
            labels.append(classes[c] if text_labels else c)
        pkl = root / subdir / f"{site}_{split}.pkl"
        pkl.write_bytes(pickle.dumps((np.array(paths), labels), protocol=4))


@pytest.fixture(scope="module")
def office_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("office")
    sizes = {"amazon": (24, 8), "caltech": (30, 9), "dslr": (12, 5), "webcam": (16, 6)}
    for site, (n_train, n_test) in sizes.items():
        write_site(root, "office_caltech_10", site, office_caltech.CLASSES, n_train, n_test)
    return root


@pytest.fixture(scope="module")
def domainnet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("domainnet")
    for i, site in enumerate(domainnet.DOMAINS):
        write_site(
            root, "DomainNet", site, domainnet.CLASSES, 40 + 10 * i, 6, text_labels=i % 2 == 0
        )
    return root


def test_office_loads_with_fedbn_default_sizes(office_root: Path) -> None:
    fed = build_federation(
        DataSpec(
            dataset="office-caltech10", data_root=str(office_root), num_clients=4, image_size=16
        )
    )
    assert fed.domains == ["amazon", "caltech", "dslr", "webcam"]
    for pid, n_test in enumerate((8, 9, 5, 6)):
        x, y = fed.train_data(pid)
        assert x.shape == (6, 3, 16, 16)  # FedBN: half the smallest site's train list (12 // 2)
        assert x.dtype == torch.float32 and float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        assert fed.num_test(pid) == n_test
        assert int(y.max()) < 10


def test_office_pixels_match_the_files(office_root: Path) -> None:
    fed = build_federation(
        DataSpec(
            dataset="office-caltech10",
            data_root=str(office_root),
            domains=("dslr",),
            num_clients=1,
            image_size=8,
            test_per_domain=5,
        )
    )
    paths, labels = pickle.loads((office_root / "office_caltech_10/dslr_test.pkl").read_bytes())
    expected = set()
    for p in paths:
        img = Image.open(office_root / p).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)
        expected.add(np.asarray(img).transpose(2, 0, 1).tobytes())
    x, y = fed.test_data(0)
    pixels = ((x * 0.5 + 0.5) * 255).round().to(torch.uint8).numpy()
    assert {img.tobytes() for img in pixels} == expected
    assert sorted(y.tolist()) == sorted(office_caltech.CLASSES.index(t) for t in labels)


def test_domainnet_loads_int_and_text_labels_with_caps(domainnet_root: Path) -> None:
    spec = DataSpec(
        dataset="domainnet",
        data_root=str(domainnet_root),
        num_clients=6,
        image_size=12,
        train_per_domain=20,
    )
    fed = build_federation(spec)
    assert fed.domains == list(domainnet.DOMAINS)
    for pid in range(6):
        _, y = fed.train_data(pid)
        assert len(y) == 20 and np.bincount(y.numpy(), minlength=10).tolist() == [2] * 10
        assert fed.test_data(pid)[0].shape == (6, 3, 12, 12)
    default = build_federation(
        DataSpec(
            dataset="domainnet",
            data_root=str(domainnet_root),
            domains=("real", "sketch"),
            num_clients=2,
            image_size=8,
        )
    )
    assert default.num_train(0) == default.num_train(1) == 4  # FedBN: 5 % of the smallest (80)


def test_unknown_class_and_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for site in office_caltech.DOMAINS:
        write_site(root, "office_caltech_10", site, office_caltech.CLASSES, 10, 4)
    pkl = root / "office_caltech_10" / "webcam_test.pkl"
    paths, labels = pickle.loads(pkl.read_bytes())
    pkl.write_bytes(pickle.dumps((paths, ["spaceship", *labels[1:]])))
    spec = DataSpec(dataset="office-caltech10", data_root=str(root), num_clients=4, image_size=8)
    with pytest.raises(
        DataError, match=r"webcam_test\.pkl: unknown class 'spaceship'; valid: \['back_pack'"
    ):
        build_federation(spec)
    pkl.write_bytes(pickle.dumps((paths, labels)))
    (root / str(paths[0])).unlink()
    with pytest.raises(
        DataError, match=rf"missing image file .*{paths[0]} \(listed in .*webcam_test\.pkl\)"
    ):
        build_federation(spec)


def test_missing_list_file_names_layout(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"missing file .*DomainNet/clipart_train\.pkl; expected layout: "
        r"<data_root>/DomainNet/<site>_train\.pkl",
    ):
        build_federation(DataSpec(dataset="domainnet", data_root=str(tmp_path), num_clients=6))


def test_image_list_pickle_is_restricted(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(tmp_path / "pwned"), "w"))

    root = tmp_path / "data"
    (root / "DomainNet").mkdir(parents=True)
    (root / "DomainNet" / "clipart_train.pkl").write_bytes(pickle.dumps((Payload(), [0])))
    with pytest.raises(UnsafePickleError, match=r"clipart_train\.pkl"):
        build_federation(
            DataSpec(dataset="domainnet", data_root=str(root), domains=("clipart",), num_clients=1)
        )
    assert not (tmp_path / "pwned").exists()
