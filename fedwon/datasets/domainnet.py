"""``domainnet``: FedBN's 10-class DomainNet subset (six sites).

Layout under ``data_root`` (FedBN's ``domainnet_dataset.zip`` split files plus the DomainNet site
archives unpacked into ``DomainNet/``)::

    DomainNet/clipart_train.pkl   DomainNet/clipart_test.pkl   (same for the other sites)
    DomainNet/clipart/<class>/<image>.jpg ...   (paths as listed in the pickles)

Classes: bird, feather, headphones, ice_cream, teapot, tiger, whale, windmill, wine_glass, zebra.
See :mod:`fedwon.datasets.image_lists` for path resolution, sizes and decoding.
"""

from __future__ import annotations

from fedwon.datasets.base import DomainArrays
from fedwon.datasets.image_lists import ImageListFormat, load_image_lists
from fedwon.datasets.spec import DataSpec

DOMAINS: tuple[str, ...] = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
CLASSES: tuple[str, ...] = (
    "bird",
    "feather",
    "headphones",
    "ice_cream",
    "teapot",
    "tiger",
    "whale",
    "windmill",
    "wine_glass",
    "zebra",
)
FORMAT = ImageListFormat(
    dataset="domainnet",
    subdir="DomainNet",
    classes=CLASSES,
    fedbn_train_fraction=0.05,
)
LAYOUT = FORMAT.layout


def load_domainnet(
    spec: DataSpec, domains: tuple[str, ...], image_size: int
) -> dict[str, DomainArrays]:
    """Loader for :data:`fedwon.datasets.DATASETS` (``domainnet``)."""
    return load_image_lists(spec, domains, image_size, FORMAT)
