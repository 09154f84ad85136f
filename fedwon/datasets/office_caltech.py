"""``office-caltech10``: FedBN's Office-Caltech-10 split (sites amazon, caltech, dslr, webcam).

Layout under ``data_root`` (FedBN's ``office_caltech_10_dataset.zip`` unpacked)::

    office_caltech_10/amazon_train.pkl   office_caltech_10/amazon_test.pkl   (same for the others)
    office_caltech_10/amazon/<class>/<image>.jpg ...   (paths as listed in the pickles)

See :mod:`fedwon.datasets.image_lists` for path resolution, sizes and decoding.
"""

from __future__ import annotations

from fedwon.datasets.base import DomainArrays
from fedwon.datasets.image_lists import ImageListFormat, load_image_lists
from fedwon.datasets.spec import DataSpec

DOMAINS: tuple[str, ...] = ("amazon", "caltech", "dslr", "webcam")
CLASSES: tuple[str, ...] = (
    "back_pack",
    "bike",
    "calculator",
    "headphones",
    "keyboard",
    "laptop_computer",
    "monitor",
    "mouse",
    "mug",
    "projector",
)
FORMAT = ImageListFormat(
    dataset="office-caltech10",
    subdir="office_caltech_10",
    classes=CLASSES,
    fedbn_train_fraction=0.5,
)
LAYOUT = FORMAT.layout


def load_office_caltech(
    spec: DataSpec, domains: tuple[str, ...], image_size: int
) -> dict[str, DomainArrays]:
    """Loader for :data:`fedwon.datasets.DATASETS` (``office-caltech10``)."""
    return load_image_lists(spec, domains, image_size, FORMAT)
