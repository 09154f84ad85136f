"""The offline ``digits-embedded`` domains: shapes, balance, determinism, distinctness, cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedwon.datasets import DomainArrays
from fedwon.datasets.base import rng_for
from fedwon.datasets.cache import cache_path
from fedwon.datasets.embedded_digits import (
    DEFAULT_TEST_PER_DOMAIN,
    DEFAULT_TRAIN_PER_DOMAIN,
    DOMAINS,
    build_embedded_digits,
    cache_params,
    cached_embedded_digits,
    domain_source_split,
    draw_sources,
    font_glyphs,
    handwritten_sources,
    photo_patches,
)


def test_five_domains_shapes_and_dtypes(
    small_embedded: dict[str, DomainArrays], small_sizes: tuple[int, int]
) -> None:
    n_train, n_test = small_sizes
    assert tuple(small_embedded) == DOMAINS == ("mnist", "mnist_m", "svhn", "usps", "synth")
    for arrays in small_embedded.values():
        assert arrays.train_x.shape == (n_train, 3, 28, 28)
        assert arrays.test_x.shape == (n_test, 3, 28, 28)
        assert arrays.train_x.dtype == arrays.test_x.dtype == np.uint8
        assert arrays.train_y.dtype == arrays.test_y.dtype == np.int64


def test_classes_balanced(small_embedded: dict[str, DomainArrays]) -> None:
    for arrays in small_embedded.values():
        for y in (arrays.train_y, arrays.test_y):
            counts = np.bincount(y, minlength=10)
            assert counts.max() - counts.min() <= 1 and len(counts) == 10


def test_same_seed_identical_other_seed_differs(
    small_embedded: dict[str, DomainArrays], small_sizes: tuple[int, int]
) -> None:
    again = build_embedded_digits(*small_sizes, seed=0)
    other = build_embedded_digits(*small_sizes, seed=1)
    for d in DOMAINS:
        assert np.array_equal(again[d].train_x, small_embedded[d].train_x)
        assert np.array_equal(again[d].test_y, small_embedded[d].test_y)
        assert not np.array_equal(other[d].train_x, small_embedded[d].train_x)


def _stats(x: np.ndarray) -> np.ndarray:
    """Per-domain pixel statistics: channel means, std, saturation, edge energy."""
    f = x.astype(np.float64) / 255.0
    saturation = (f.max(axis=1) - f.min(axis=1)).mean()
    edges = np.abs(np.diff(f, axis=3)).mean()
    return np.array([*f.mean(axis=(0, 2, 3)), f.std(), saturation, edges])


def test_domains_are_visually_distinct(small_embedded: dict[str, DomainArrays]) -> None:
    stats = {d: _stats(a.train_x) for d, a in small_embedded.items()}
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1 :]:
            gap = np.abs(stats[a] - stats[b]).max()
            assert gap > 0.03, f"{a} and {b} look alike: {stats[a]} vs {stats[b]}"
    # the grey domains are grey, the others coloured
    for d in ("mnist", "usps"):
        assert stats[d][4] == 0.0
    for d in ("mnist_m", "svhn", "synth"):
        assert stats[d][4] > 0.1


def test_train_and_test_sources_are_disjoint() -> None:
    for domain in DOMAINS:
        train_pool, test_pool = domain_source_split(domain, seed=0)
        assert len(np.intersect1d(train_pool, test_pool)) == 0
        n_sources = len(font_glyphs()[1]) * 7 if domain == "synth" else 1797
        assert len(train_pool) + len(test_pool) == n_sources
        assert 0.25 < len(test_pool) / n_sources < 0.35


def test_draw_sources_stays_in_pool_and_matches_labels() -> None:
    labels = handwritten_sources()[1]
    train_pool, _ = domain_source_split("mnist", seed=0)
    rng = rng_for(0, "test")
    wanted = np.repeat(np.arange(10), 50)
    drawn = draw_sources(wanted, train_pool, labels, rng)
    assert np.isin(drawn, train_pool).all()
    assert np.array_equal(labels[drawn], wanted)
    # sources used evenly: no source of a class used twice before all were used once
    for c in range(10):
        uses = np.bincount(drawn[wanted == c])
        assert uses[uses > 0].max() - uses[uses > 0].min() <= 1


def test_photo_patches_train_and_test_differ() -> None:
    train = photo_patches(64, "train", rng_for(0, "p"))
    test = photo_patches(64, "test", rng_for(0, "p"))
    assert train.shape == (64, 3, 28, 28) and not np.allclose(train.numpy(), test.numpy())


def test_disk_cache_written_reused_and_rebuilt_when_corrupt(
    small_embedded: dict[str, DomainArrays], small_sizes: tuple[int, int], data_cache_dir: Path
) -> None:
    path = cache_path("digits-embedded", cache_params(*small_sizes, 0))
    assert path.is_file() and path.parent == data_cache_dir
    reloaded = cached_embedded_digits(*small_sizes, seed=0)
    assert np.array_equal(reloaded["svhn"].train_x, small_embedded["svhn"].train_x)
    path.write_bytes(b"not a zip")
    rebuilt = cached_embedded_digits(*small_sizes, seed=0)
    assert np.array_equal(rebuilt["synth"].test_x, small_embedded["synth"].test_x)
    assert path.stat().st_size > 1000
    assert not list(data_cache_dir.glob("*.tmp"))


def test_a_cache_with_mismatched_lengths_is_rebuilt_like_a_truncated_one(
    small_embedded: dict[str, DomainArrays], small_sizes: tuple[int, int], data_cache_dir: Path
) -> None:
    path = cache_path("digits-embedded", cache_params(*small_sizes, 0))
    cached_embedded_digits(*small_sizes, seed=0)  # written
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["usps/train_y"] = arrays["usps/train_y"][:-3]  # labels shorter than images
    del arrays["mnist/test_x"]
    np.savez(path, **arrays)
    rebuilt = cached_embedded_digits(*small_sizes, seed=0)
    assert np.array_equal(rebuilt["usps"].train_y, small_embedded["usps"].train_y)
    assert np.array_equal(rebuilt["mnist"].test_x, small_embedded["mnist"].test_x)
    with np.load(path) as npz:  # and the file was replaced by the rebuilt arrays
        assert len(npz["usps/train_y"]) == small_sizes[0] and "mnist/test_x" in npz.files


def test_default_size_build_is_fast_and_deterministic() -> None:
    start = time.perf_counter()
    first = build_embedded_digits()
    elapsed = time.perf_counter() - start
    assert elapsed < 15.0
    second = build_embedded_digits()
    for d in DOMAINS:
        assert first[d].train_x.shape[0] == DEFAULT_TRAIN_PER_DOMAIN
        assert first[d].test_x.shape[0] == DEFAULT_TEST_PER_DOMAIN
        assert np.array_equal(first[d].train_x, second[d].train_x)
        assert np.array_equal(first[d].test_x, second[d].test_x)


@pytest.mark.parametrize("domain", DOMAINS)
def test_images_use_the_range(small_embedded: dict[str, DomainArrays], domain: str) -> None:
    x = small_embedded[domain].train_x
    assert x.min() < 40 and x.max() > 200
