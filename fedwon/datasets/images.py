"""Image-array plumbing shared by every loader: validation, layout, resizing, normalization.

Loaders hand over ``uint8`` arrays in whatever layout their files use; this module checks them
(one-line :class:`DataError` naming the file on a bad shape, dtype or label) and brings them to the
package's internal layout — ``uint8`` ``(N, 3, H, W)`` with ``H == W == image_size`` — and finally
to the float tensors clients train on, normalized with mean = std = 0.5 per channel like FedBN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from fedwon.datasets.errors import DataError

MEAN = 0.5
STD = 0.5
_RESIZE_CHUNK = 2048


def as_nchw_uint8(images: object, source: str) -> np.ndarray:
    """Validate an image array and return it as ``uint8`` ``(N, C, H, W)`` with C in {1, 3}.

    Accepted layouts: ``(N, H, W)`` (grey), ``(N, H, W, C)`` and ``(N, C, H, W)`` with C in {1, 3}.
    """
    if not isinstance(images, np.ndarray):
        raise DataError(f"{source}: images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise DataError(f"{source}: images must have dtype uint8, got {images.dtype}")
    if images.ndim == 3:
        nchw = images[:, None, :, :]
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        nchw = images.transpose(0, 3, 1, 2)
    elif images.ndim == 4 and images.shape[1] in (1, 3):
        nchw = images
    else:
        raise DataError(
            f"{source}: images have shape {images.shape}; expected (N, H, W), (N, H, W, C) or "
            "(N, C, H, W) with C in {1, 3}"
        )
    if 0 in nchw.shape[2:]:
        # an empty image cannot be resized or learned from (torch fails deep in interpolate)
        raise DataError(
            f"{source}: images have shape {images.shape}, i.e. height {nchw.shape[2]} and width "
            f"{nchw.shape[3]}; every image needs at least 1x1 pixels"
        )
    return np.ascontiguousarray(nchw)


def as_labels(labels: object, n: int, num_classes: int, source: str) -> np.ndarray:
    """Validate integer class labels for ``n`` images; return ``int64`` ``(n,)``."""
    array = np.asarray(labels)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise DataError(f"{source}: labels have shape {array.shape}; expected ({n},)")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {array.dtype}")
    if array.shape[0] != n:
        raise DataError(f"{source}: {array.shape[0]} labels for {n} images")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        bad = int(array[(array < 0) | (array >= num_classes)][0])
        raise DataError(f"{source}: label {bad} out of range; expected 0..{num_classes - 1}")
    return array


def to_three_channels(x: np.ndarray) -> np.ndarray:
    """Grey ``(N, 1, H, W)`` → ``(N, 3, H, W)`` by repetition; RGB passes through."""
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


def resize_nchw(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize of ``uint8`` ``(N, C, H, W)`` to ``size × size``."""
    if x.shape[2] == size and x.shape[3] == size:
        return x
    out = np.empty((x.shape[0], x.shape[1], size, size), dtype=np.uint8)
    for start in range(0, x.shape[0], _RESIZE_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + _RESIZE_CHUNK])).float()
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + _RESIZE_CHUNK] = resized.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def standardize(images: np.ndarray, size: int) -> np.ndarray:
    """Internal layout: ``uint8`` ``(N, 3, size, size)``."""
    return resize_nchw(to_three_channels(images), size)


def normalize(x: np.ndarray) -> torch.Tensor:
    """``uint8`` ``(N, C, H, W)`` → float32 tensor with mean = std = 0.5 normalization."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    return t.div_(255.0).sub_(MEAN).div_(STD)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`, back to [0, 1] floats (for previews)."""
    return (x * STD + MEAN).clamp(0.0, 1.0)


def load_image_file(path: Path, size: int) -> np.ndarray:
    """Read one image file as RGB, resize to ``size × size``; ``uint8`` ``(3, size, size)``."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()
    except FileNotFoundError as exc:
        raise DataError(f"missing image file {path}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
