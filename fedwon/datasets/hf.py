"""``hf``: your own images, as a Hugging Face ``datasets.DatasetDict`` saved with ``save_to_disk``.

``data_root`` is the folder ``DatasetDict.save_to_disk`` wrote, with splits ``train`` and
``test``. Three columns are read (names from the data section): ``image_column`` (a
``datasets.Image`` feature: any size, grey, RGB or palette), ``label_column`` (a ``ClassLabel``,
whose names give the number of classes, or integers ``0 … C-1``, where ``C`` is one more than the
largest label of either split) and, optionally, ``domain_column`` (strings, integers or a
``ClassLabel``): one domain per distinct value, in the order of first appearance in the training
split (a ``ClassLabel``: its names' order). Without a domain column every example is in one
domain, ``all``. Images become ``uint8`` ``(N, 3, S, S)`` like every other loader's (grey
repeated to three channels, resized bilinearly, antialiased, when they are not ``S × S``);
``S`` = ``image_size``, by default the side of the first training image.

The files are memory-mapped by ``datasets``; only the selected rows' images are decoded.
``datasets`` is an optional dependency (``pip install fedwon[hf]``): without it, naming
``dataset = "hf"`` is a one-line error saying so, and nothing else in fedwon needs it.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedwon.datasets.base import DatasetInfo, DomainArrays
from fedwon.datasets.errors import DataError
from fedwon.datasets.files import cap_indices
from fedwon.datasets.images import as_labels, resize_nchw
from fedwon.datasets.spec import DataSpec

if TYPE_CHECKING:
    import datasets

NAME = "hf"
NO_DOMAIN = "all"
SPLITS = ("train", "test")
EXTRA = "pip install 'fedwon[hf]'"
LAYOUT = (
    "a datasets.DatasetDict saved with save_to_disk, splits 'train' and 'test', an image column "
    "(datasets.Image), an integer or ClassLabel label column and optionally a domain column"
)


def require_datasets() -> Any:
    """The ``datasets`` module, or a one-line error naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"dataset 'hf' needs Hugging Face datasets: {EXTRA}") from None
    datasets.disable_progress_bars()  # a bar per cast or save would bury the run's own lines
    return datasets


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def open_saved(root: str) -> datasets.DatasetDict:
    """The saved ``DatasetDict`` at ``root`` with both splits, or one line saying what it is."""
    datasets = require_datasets()
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data_root {root!r} is not a folder; expected {LAYOUT}")
    try:
        saved = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(
            f"data_root {root!r} is not a data set saved with save_to_disk ({_one_line(err)})"
        ) from None
    if isinstance(saved, datasets.Dataset):
        raise DataError(
            f"data_root {root!r} holds one Dataset without splits; save a "
            "DatasetDict(train=..., test=...) instead"
        )
    missing = [s for s in SPLITS if s not in saved]
    if missing:
        raise DataError(
            f"data_root {root!r} has splits {list(saved)}, missing {missing}; "
            "fedwon needs 'train' and 'test'"
        )
    return saved


@dataclass(frozen=True)
class Columns:
    """What the data section says to read, and what was found in the files."""

    image: str
    label: str
    domain: str | None
    num_classes: int
    domains: tuple[str, ...]
    image_size: int


def _check_columns(split: str, ds: datasets.Dataset, spec: DataSpec) -> None:
    datasets = require_datasets()
    wanted = [("image_column", spec.image_column), ("label_column", spec.label_column)]
    if spec.domain_column is not None:
        wanted.append(("domain_column", spec.domain_column))
    for key, name in wanted:
        if name not in ds.features:
            raise DataError(
                f"split {split!r} has no column {name!r} ({key}); its columns: {list(ds.features)}"
            )
    image = ds.features[spec.image_column]
    if not isinstance(image, datasets.Image):
        raise DataError(
            f"column {spec.image_column!r} (image_column) of split {split!r} is not an image "
            f"column: its feature is {_feature_name(image)}; expected datasets.Image"
        )
    label = ds.features[spec.label_column]
    integer = isinstance(label, datasets.Value) and label.dtype.startswith(("int", "uint"))
    if not (isinstance(label, datasets.ClassLabel) or integer):
        raise DataError(
            f"column {spec.label_column!r} (label_column) of split {split!r} holds "
            f"{_feature_name(label)}; expected integer class labels or a ClassLabel"
        )


def _feature_name(feature: object) -> str:
    dtype = getattr(feature, "dtype", None)
    kind = type(feature).__name__
    return f"{kind}({dtype})" if isinstance(dtype, str) and kind == "Value" else kind


def _labels(ds: datasets.Dataset, column: str) -> np.ndarray:
    return np.asarray(ds.data.column(column).to_numpy(zero_copy_only=False))


def _domain_names(saved: datasets.DatasetDict, column: str | None) -> tuple[str, ...]:
    if column is None:
        return (NO_DOMAIN,)
    datasets = require_datasets()
    feature = saved["train"].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return tuple(feature.names)
    values = saved["train"].data.column(column).to_pylist()
    return tuple(dict.fromkeys(str(v) for v in values))  # first appearance


def _domain_ids(ds: datasets.Dataset, column: str | None, names: tuple[str, ...]) -> np.ndarray:
    """Index into ``names`` per row; a value the training split lacks is an error."""
    if column is None:
        return np.zeros(len(ds), dtype=np.int64)
    datasets = require_datasets()
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        raw = ds.data.column(column).to_pylist()
        values = [names[v] if v is not None and 0 <= v < len(names) else str(v) for v in raw]
    else:
        values = [str(v) for v in ds.data.column(column).to_pylist()]
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise DataError(
            f"domain column {column!r}: value(s) {unknown[:5]} are not domains of the training "
            f"split {list(names)}"
        )
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))


def _num_classes(saved: datasets.DatasetDict, column: str) -> int:
    datasets = require_datasets()
    feature = saved["train"].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return len(feature.names)
    top = [int(y.max()) for y in (_labels(saved[s], column) for s in SPLITS) if y.size]
    return max(top, default=-1) + 1


def _first_image_side(ds: datasets.Dataset, column: str) -> int:
    if len(ds) == 0:
        raise DataError("the 'train' split of the hf data set has no rows")
    width, height = _decode(ds.data.column(column)[0].as_py(), column).size
    return max(width, height)


@functools.lru_cache(maxsize=16)
def _columns(root: str, image: str, label: str, domain: str | None) -> Columns:
    """The facts of one saved data set, read once per process (validation runs per call)."""
    spec = DataSpec(
        dataset=NAME, data_root=root, image_column=image, label_column=label, domain_column=domain
    )
    saved = open_saved(root)
    for split in SPLITS:
        _check_columns(split, saved[split], spec)
    num_classes = _num_classes(saved, label)
    if num_classes < 1:
        raise DataError(f"label column {label!r}: no labels in data_root {root!r}")
    return Columns(
        image=image,
        label=label,
        domain=domain,
        num_classes=num_classes,
        domains=_domain_names(saved, domain),
        image_size=_first_image_side(saved["train"], image),
    )


def columns_of(spec: DataSpec) -> Columns:
    """The validated columns and facts of ``spec``'s saved data set."""
    if not spec.data_root:
        raise DataError(f"dataset 'hf' needs data_root; expected {LAYOUT}")
    return _columns(spec.data_root, spec.image_column, spec.label_column, spec.domain_column)


def resolve_info(spec: DataSpec) -> DatasetInfo:
    """:class:`DatasetInfo` of ``spec``'s saved data set (its domains, classes, image size), so
    that domain selection, model checks and per-domain metrics work as for built-in data."""
    cols = columns_of(spec)
    return DatasetInfo(
        name=NAME,
        domains=cols.domains,
        num_classes=cols.num_classes,
        default_image_size=cols.image_size,
        needs_root=True,
        loader=load_hf,
        layout=LAYOUT,
    )


def _decode(cell: Any, column: str) -> Image.Image:
    """One cell of an undecoded ``datasets.Image`` column (``{"bytes", "path"}``) as a PIL image."""
    data, path = (cell or {}).get("bytes"), (cell or {}).get("path")
    try:
        if data is not None:
            return Image.open(io.BytesIO(data))
        if path:
            return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"image column {column!r}: not a readable image ({err})") from None
    raise DataError(f"image column {column!r}: an empty cell (no bytes, no path)")


def _images(ds: datasets.Dataset, column: str, rows: np.ndarray, size: int) -> np.ndarray:
    """``uint8`` ``(len(rows), 3, size, size)``: the rows' images as RGB at ``size``."""
    out = np.empty((len(rows), 3, size, size), dtype=np.uint8)
    cells = ds.data.column(column).take(rows.astype(np.int64)).to_pylist()
    for i, cell in enumerate(cells):
        with _decode(cell, column) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        out[i] = resize_nchw(rgb[None], size)[0]
    return out


def _split_arrays(
    ds: datasets.Dataset, split: str, spec: DataSpec, cols: Columns, domains: tuple[str, ...]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    source = f"{spec.data_root} [{split}]"
    labels = as_labels(_labels(ds, cols.label), len(ds), cols.num_classes, f"{source} labels")
    domain_ids = _domain_ids(ds, cols.domain, cols.domains)
    cap = spec.train_per_domain if split == "train" else spec.test_per_domain
    size = spec.image_size or cols.image_size
    out = {}
    for name in domains:
        rows = np.flatnonzero(domain_ids == cols.domains.index(name))
        keep = cap_indices(labels[rows], cap, spec.seed, name, split)
        if keep is not None:
            rows = rows[keep]
        out[name] = (_images(ds, cols.image, rows, size), labels[rows])
    return out


def load_hf(spec: DataSpec, domains: tuple[str, ...], image_size: int) -> dict[str, DomainArrays]:
    """Loader for :data:`fedwon.datasets.DATASETS` (``hf``): the selected domains' rows of both
    splits, capped by ``train_per_domain`` / ``test_per_domain`` like real data."""
    cols = columns_of(spec)
    saved = open_saved(str(spec.data_root))
    sized = spec.model_copy(update={"image_size": image_size})
    train = _split_arrays(saved["train"], "train", sized, cols, domains)
    test = _split_arrays(saved["test"], "test", sized, cols, domains)
    return {d: DomainArrays(*train[d], *test[d]) for d in domains}


def clear_cache() -> None:
    """Forget what was read about saved data sets (a test rewrote one in place)."""
    _columns.cache_clear()
