"""The sample-grid picture command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedwon.datasets import DomainArrays
from fedwon.datasets.preview import sample_grid, save_grid


def test_grid_has_a_row_per_domain_and_classes_in_order(
    small_embedded: dict[str, DomainArrays], tmp_path: Path
) -> None:
    mosaic = sample_grid(small_embedded, per_class=2)
    assert mosaic.shape == (5 * 30, 20 * 30, 3) and mosaic.dtype == np.uint8
    first_tile = mosaic[1:29, 1:29].transpose(2, 0, 1)
    x, y = small_embedded["mnist"].train_x, small_embedded["mnist"].train_y
    assert np.array_equal(first_tile, x[np.flatnonzero(y == 0)[0]])
    out = tmp_path / "img" / "grid.png"
    save_grid(mosaic, list(small_embedded), out)
    with Image.open(out) as im:
        assert im.size[0] > 600 and im.size[1] > 150
