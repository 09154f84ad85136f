"""``dataset = "hf"``: the exported embedded digits read back, split by Flower Datasets'
partitioners, trained on; and every bad input as one line naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.config import load_config
from fedwon.datasets import DataError, DataSpec, build_federation, load_domain_arrays
from fedwon.datasets.export import export_embedded
from fedwon.run.directory import RunDir
from fedwon.run.recorder import per_domain
from fedwon.simulation import run_simulation

datasets = pytest.importorskip("datasets")  # the optional extra: fedwon[hf]
pytest.importorskip("flwr_datasets")

TRAIN, TEST = 40, 20  # per domain
SIMS = Path(__file__).resolve().parents[2] / "sims"
DOMAINS = ["mnist", "mnist_m", "svhn", "usps", "synth"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded digits at a small size, saved as a DatasetDict."""
    return export_embedded(
        tmp_path_factory.mktemp("hf") / "digits", train_per_domain=TRAIN, test_per_domain=TEST
    )


def hf_spec(root: Path, **changes: Any) -> DataSpec:
    values: dict[str, Any] = dict(
        dataset="hf", data_root=str(root), domain_column="domain", partition="natural_id"
    )
    return DataSpec(**{**values, **changes})


def test_export_writes_the_documented_format(exported: Path) -> None:
    saved = datasets.load_from_disk(str(exported))
    assert sorted(saved) == ["test", "train"]
    for split, n in (("train", TRAIN), ("test", TEST)):
        ds = saved[split]
        assert list(ds.features) == ["image", "label", "domain"]
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["label"].names == [str(c) for c in range(10)]
        assert len(ds) == 5 * n and list(dict.fromkeys(ds["domain"])) == DOMAINS


def test_natural_id_clients_hold_exactly_the_domain_partition_s_examples(exported: Path) -> None:
    builtin = DataSpec(train_per_domain=TRAIN, test_per_domain=TEST, val_fraction=0.25)
    hf = hf_spec(exported, val_fraction=0.25)
    raw_builtin, raw_hf = load_domain_arrays(builtin), load_domain_arrays(hf)
    for d in DOMAINS:  # the uint8 images and labels themselves, before any normalization
        for field in ("train_x", "train_y", "test_x", "test_y"):
            assert np.array_equal(getattr(raw_builtin[d], field), getattr(raw_hf[d], field))
    a, b = build_federation(builtin), build_federation(hf)
    assert b.domains == a.domains == DOMAINS and b.num_classes == 10 and b.image_size == 28
    for pid in range(5):
        assert b.client_domain(pid) == a.client_domain(pid)
        for split in ("train", "val", "test"):
            (xa, ya), (xb, yb) = a.client_data(pid, split), b.client_data(pid, split)
            assert len(yb) > 0 and torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize(
    ("changes", "clients"),
    [
        ({"partition": "dirichlet", "num_clients": 10, "alpha": 0.5}, 10),
        ({"partition": "dirichlet", "num_clients": 6, "dirichlet_scope": "global"}, 6),
        ({"partition": "iid", "num_clients": 7}, 7),
    ],
)
def test_flower_partitions_are_disjoint_complete_non_empty_and_seeded(
    exported: Path, changes: dict[str, Any], clients: int
) -> None:
    fed = build_federation(hf_spec(exported, **changes))
    assert fed.num_clients == clients
    train = np.concatenate(fed.assignment.train)
    test = np.concatenate(fed.assignment.test)
    assert sorted(train.tolist()) == list(range(5 * TRAIN))
    assert sorted(test.tolist()) == list(range(5 * TEST))
    assert min(len(p) for p in fed.assignment.train) > 0
    if changes.get("dirichlet_scope", "domain") == "domain" and changes["partition"] != "iid":
        for pid, part in enumerate(fed.assignment.train):  # one domain per client, as fedwon's
            assert set(fed.pool.train_d[part]) == {pid // 2}
    again = build_federation(hf_spec(exported, **changes))
    assert all(
        np.array_equal(p, q)
        for p, q in zip(fed.assignment.train, again.assignment.train, strict=True)
    )
    other = build_federation(hf_spec(exported, **changes, seed=1))
    assert any(
        not np.array_equal(p, q)
        for p, q in zip(fed.assignment.train, other.assignment.train, strict=True)
    )


def test_without_a_domain_column_every_example_is_in_domain_all(exported: Path) -> None:
    fed = build_federation(hf_spec(exported, domain_column=None, partition="iid", num_clients=4))
    assert fed.domains == ["all"] and fed.num_train(0) == 5 * TRAIN // 4


@pytest.mark.parametrize(
    "settings",
    [
        ["partition=natural_id", "num_clients=5"],
        ["partition=dirichlet", "num_clients=10", "alpha=1.0"],
    ],
)
def test_the_exported_digits_train_through_dataset_hf(
    exported: Path, tmp_path: Path, settings: list[str]
) -> None:
    cfg = load_config(
        SIMS / "cross_silo.toml",
        [
            "dataset=hf",
            f"data_root={exported}",
            "domain_column=domain",
            "model=cnn-tiny",
            "num_rounds=2",
            "num_workers=0",
            *settings,
        ],
    )
    run_simulation(cfg, tmp_path / "run")
    rows = RunDir(tmp_path / "run").metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert sorted(per_domain(rows[-1])) == sorted(DOMAINS)
    assert 0.0 <= rows[-1]["accuracy"] <= 1.0


# -- bad input: one line naming it ----------------------------------------------------------


def _tiny(path: Path, **columns: Any) -> Path:
    """Six 4×4 RGB images in two domains (``a``, ``b``) and three classes, the same rows in
    both splits; ``columns`` replaces a column."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)) for _ in range(6)]
    values = {"image": images, "label": [0, 1, 2, 0, 1, 2], "domain": ["a"] * 3 + ["b"] * 3}
    ds = datasets.Dataset.from_dict({**values, **columns})  # PIL images: a datasets.Image column
    datasets.DatasetDict(train=ds, test=ds).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    ("make", "changes", "message"),
    [
        (
            lambda p: _tiny(p),
            {"label_column": "class"},
            r"split 'train' has no column 'class' \(label_column\); its columns: "
            r"\['image', 'label', 'domain'\]",
        ),
        (
            lambda p: _tiny(p),
            {"domain_column": "site"},
            r"split 'train' has no column 'site' \(domain_column\)",
        ),
        (
            lambda p: _tiny(p),
            {"image_column": "domain", "domain_column": None},
            r"column 'domain' \(image_column\) of split 'train' is not an image column: its "
            r"feature is Value\(string\); expected datasets.Image",
        ),
        (
            lambda p: _tiny(p, label=["x", "y", "z", "x", "y", "z"]),
            {},
            r"column 'label' \(label_column\) of split 'train' holds Value\(string\); expected "
            "integer class labels or a ClassLabel",
        ),
        (
            lambda p: _tiny(p, label=[0, 1, -1, 0, 1, 2]),
            {},
            r"\[train\] labels: label -1 out of range; expected 0\.\.2",
        ),
        (
            lambda p: (p.mkdir(), p)[1],
            {},
            r"is not a data set saved with save_to_disk",
        ),
        (
            lambda p: p,
            {},
            r"data_root '.*' is not a folder",
        ),
        (
            lambda p: (datasets.Dataset.from_dict({"label": [0]}).save_to_disk(str(p)), p)[1],
            {},
            r"holds one Dataset without splits; save a DatasetDict\(train=\.\.\., test=\.\.\.\)",
        ),
        (
            lambda p: _tiny(p),
            {"partition": "natural_id", "num_clients": 3},
            r"partition 'natural_id' gives one client per domain: set num_clients=2 for the "
            r"domains \['a', 'b'\] \(got 3\)",
        ),
        (
            lambda p: _tiny(p),
            {"partition": "iid", "num_clients": 8, "domain_column": None},
            r"partition 'iid' \(Flower Datasets\) leaves client 6 without training examples "
            r"\(6 examples, num_clients=8\)",
        ),
        (
            lambda p: _tiny(p),
            {"partition": "dirichlet", "num_clients": 8, "dirichlet_scope": "global"},
            r"partition 'dirichlet' \(Flower Datasets' DirichletPartitioner\) leaves a client "
            r"empty: 6 examples in the pool for 8 clients",
        ),
    ],
)
def test_bad_input_is_one_line_naming_it(
    tmp_path: Path, make: Any, changes: dict[str, Any], message: str
) -> None:
    root = make(tmp_path / "data")
    spec = DataSpec(
        **{
            "dataset": "hf",
            "data_root": str(root),
            "domain_column": "domain",
            "partition": "iid",
            "num_clients": 2,
            **changes,
        }
    )
    with pytest.raises(DataError, match=message) as info:
        build_federation(spec)
    assert "\n" not in str(info.value)


def test_bad_column_settings_are_refused_in_the_data_section() -> None:
    with pytest.raises(ValueError, match=r"image_column, label_column must name different"):
        DataSpec(dataset="hf", image_column="x", label_column="x")
    with pytest.raises(ValueError, match=r"label_column must be a column name, got ' '"):
        DataSpec(dataset="hf", label_column=" ")
    with pytest.raises(DataError, match=r"dataset 'hf' needs data_root; expected layout: a "):
        build_federation(DataSpec(dataset="hf"))


def test_data_export_command_writes_and_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    args = ["data", "export", "--out", str(out), "--train-per-domain", "10"]
    result = CliRunner().invoke(cli, [*args, "--test-per-domain", "10"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "dataset=hf" in result.output
    assert len(datasets.load_from_disk(str(out))["train"]) == 50
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2
    errors = [line for line in again.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --out {str(out)!r} exists and is not an empty folder; choose a new one"
    ]
