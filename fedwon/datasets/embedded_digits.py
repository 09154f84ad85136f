"""``digits-embedded``: five offline digit domains built from data that ships inside packages.

Sources (no network): scikit-learn's 1,797 real handwritten digits (``load_digits``, 8×8, 17 grey
levels), scikit-learn's two sample photographs (``load_sample_images``) and matplotlib's bundled
TrueType fonts (DejaVu, STIX, Computer Modern). From them this module renders five visually
distinct domains of the ten digit classes, in the spirit of Digits-5 (all ``3×28×28``):

``mnist``    clean handwritten: white strokes on black, sources upsampled to a 20×20 box in a
             28×28 frame (as MNIST), random affine (rotation, scale, shear, shift) and stroke
             thickness (soft dilation/erosion).
``mnist_m``  handwritten blended with photo texture, MNIST-M's ``|patch − digit|`` rule; patches
             are random crops (28–84 px, flipped) of the photographs.
``svhn``     house-number look: large digit, random background and contrasting foreground colours,
             fragments of neighbouring digits left and right, lighting gradient, blur, noise.
``usps``     low resolution: thicker digits filling the frame, downsampled to 16×16 and back.
``synth``    printed digits rendered from 21 matplotlib fonts at 7 rotation angles, two-colour
             gradient backgrounds, contrasting foreground, slight blur and noise.

Train/test independence: for each domain the *sources* are split (class-stratified, 70 % / 30 %)
before any augmentation — scikit-learn digits by index, printed digits by ``(font, rotation)``
pair, photographs by region (a 4×5 grid of blocks, 7 of 20 for test) — and each split's images
(and the neighbouring-digit clutter) are drawn only from its own sources. Classes are balanced
(counts differ by at most one). Everything is drawn from generators seeded by
``(seed, domain, split)``.

The build (all five domains, default 743 train + 400 test each) takes about a second and is cached
on disk (:mod:`fedwon.datasets.cache`), keyed by :data:`BUILDER_VERSION`, the sizes, the seed and
the versions of the packages whose data or numerics it depends on.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedwon.datasets.base import DomainArrays, rng_for
from fedwon.datasets.cache import load_or_build
from fedwon.datasets.images import resize_nchw
from fedwon.datasets.spec import DataSpec

DOMAINS: tuple[str, ...] = ("mnist", "mnist_m", "svhn", "usps", "synth")
NUM_CLASSES = 10
SIZE = 28
DEFAULT_TRAIN_PER_DOMAIN = 743
DEFAULT_TEST_PER_DOMAIN = 400
TEST_SOURCE_FRACTION = 0.3
BUILDER_VERSION = 2

FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)
SYNTH_ANGLES: tuple[float, ...] = (-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0)
PHOTO_BLOCKS = (4, 5)  # rows, cols of the grid that splits each photo into train/test blocks

Rendered = tuple[np.ndarray, np.ndarray]
"""``(uint8 images (N, 3, 28, 28), int64 labels)``"""


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def handwritten_sources() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's digits as ``(1797, 1, 28, 28)`` stroke masks in [0, 1] and their labels.

    Each 8×8 image is upsampled (bicubic) into a 20×20 box centred in a 28×28 frame, like MNIST,
    and its contrast is sharpened so that strokes look pen-drawn rather than blocky.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    box = F.interpolate(small, size=(20, 20), mode="bicubic", align_corners=False).clamp(0, 1)
    box = torch.sigmoid((box - 0.5) * 10.0)
    box = (box - box.amin(dim=(2, 3), keepdim=True)).clamp(min=0)
    box = box / box.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)
    return F.pad(box, (4, 4, 4, 4)), digits.target.astype(np.int64)


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=1)
def font_glyphs() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Every digit in every font of :data:`FONT_FILES` as a ``(1, 28, 28)`` mask.

    Rendered with PIL at 64×64 (digit height ≈ 36 px), downsampled with antialiasing; returns
    ``(glyphs (F*10, 1, 28, 28), labels, font index)``.
    """
    from PIL import Image, ImageDraw, ImageFont

    masks, labels, fonts = [], [], []
    for fi, name in enumerate(FONT_FILES):
        font = ImageFont.truetype(str(font_dir() / name), 44)
        for digit in range(NUM_CLASSES):
            canvas = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(canvas).text((32, 32), str(digit), fill=255, font=font, anchor="mm")
            masks.append(np.asarray(canvas, dtype=np.float32) / 255.0)
            labels.append(digit)
            fonts.append(fi)
    big = torch.from_numpy(np.stack(masks))[:, None]
    glyphs = F.interpolate(big, size=(SIZE, SIZE), mode="bilinear", antialias=True)
    return glyphs.clamp(0, 1), np.array(labels, np.int64), np.array(fonts, np.int64)


@functools.lru_cache(maxsize=1)
def photos() -> tuple[torch.Tensor, ...]:
    """scikit-learn's sample photographs as float ``(3, H, W)`` tensors in [0, 1]."""
    from sklearn.datasets import load_sample_images

    return tuple(
        torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float() / 255.0
        for im in load_sample_images().images
    )


def split_sources(
    labels: np.ndarray, rng: np.random.Generator, test_fraction: float = TEST_SOURCE_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified split of source indices into disjoint (train, test) pools."""
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels with class counts differing by at most one, in random order."""
    offset = int(rng.integers(NUM_CLASSES))
    return rng.permutation((np.arange(n) + offset) % NUM_CLASSES).astype(np.int64)


def draw_sources(
    labels: np.ndarray, pool: np.ndarray, pool_labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each wanted label, a source from ``pool`` with that label, using sources evenly."""
    out = np.empty(len(labels), dtype=np.int64)
    for c in range(NUM_CLASSES):
        slots = np.flatnonzero(labels == c)
        candidates = rng.permutation(pool[pool_labels[pool] == c])
        reps = -(-len(slots) // len(candidates))
        out[slots] = np.tile(candidates, reps)[: len(slots)]
    return out


# ---------------------------------------------------------------------------------------------
# Geometric and photometric operations (batched torch)
# ---------------------------------------------------------------------------------------------


def random_affine(
    x: torch.Tensor,
    rng: np.random.Generator,
    *,
    rotate: tuple[float, float],
    scale: tuple[float, float],
    shear: float,
    shift: float,
    shift_x: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Per-sample affine warp: rotation (degrees), scale, shear and shift (pixels).

    ``shift_x`` overrides the horizontal shift range (used to place neighbouring digits).
    """
    n = x.shape[0]
    angle = np.deg2rad(rng.uniform(*rotate, size=n))
    s = rng.uniform(*scale, size=n)
    sh = rng.uniform(-shear, shear, size=n)
    tx = rng.uniform(*shift_x, size=n) if shift_x else rng.uniform(-shift, shift, size=n)
    ty = rng.uniform(-shift, shift, size=n)
    cos, sin = np.cos(angle), np.sin(angle)
    forward = np.empty((n, 2, 2))
    forward[:, 0, 0], forward[:, 0, 1] = s * cos, s * (cos * sh - sin)
    forward[:, 1, 0], forward[:, 1, 1] = s * sin, s * (sin * sh + cos)
    inverse = np.linalg.inv(forward)
    t = np.stack([tx, ty], axis=1) * 2.0 / x.shape[-1]
    theta = np.concatenate([inverse, -(inverse @ t[:, :, None])], axis=2)
    grid = F.affine_grid(torch.from_numpy(theta).float(), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def vary_thickness(x: torch.Tensor, tau: np.ndarray) -> torch.Tensor:
    """Soft stroke-width change: ``tau > 0`` blends towards a 3×3 dilation, ``< 0`` erosion."""
    t = torch.from_numpy(tau).float().view(-1, 1, 1, 1)
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return torch.where(t >= 0, x + t * (dilated - x), x + (-t) * (eroded - x))


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Per-sample 5×5 Gaussian blur (``sigma`` in pixels; 0 = none)."""
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    s = torch.from_numpy(np.maximum(sigma, 1e-3)).float().view(-1, 1)
    k1 = torch.exp(-(offsets**2) / (2 * s**2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)  # (n, 5)
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    rows = torch.zeros(n, x.shape[1], h + 4, w)
    for i in range(5):
        rows += k1[:, i].view(n, 1, 1, 1) * padded[:, :, :, i : i + w]
    out = torch.zeros_like(x)
    for i in range(5):
        out += k1[:, i].view(n, 1, 1, 1) * rows[:, :, i : i + h, :]
    return out


def contrasting_colours(
    n: int, rng: np.random.Generator, min_gap: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random background and foreground RGB colours whose luminances differ by ``min_gap``."""
    weights = np.array([0.299, 0.587, 0.114])
    bg = rng.uniform(0, 1, size=(n, 3))
    fg = rng.uniform(0, 1, size=(n, 3))
    gap = (fg - bg) @ weights
    weak = np.abs(gap) < min_gap
    direction = np.where((bg @ weights) > 0.5, -1.0, 1.0)[:, None]
    fg[weak] = np.clip(bg[weak] + direction[weak] * rng.uniform(0.45, 0.7, (weak.sum(), 1)), 0, 1)
    return (
        torch.from_numpy(bg).float().view(n, 3, 1, 1),
        torch.from_numpy(fg).float().view(n, 3, 1, 1),
    )


def linear_ramp(n: int, rng: np.random.Generator) -> torch.Tensor:
    """Per-sample ramp in [-1, 1] along a random direction, ``(n, 1, 28, 28)``."""
    angle = rng.uniform(0, 2 * np.pi, size=n)
    coords = torch.linspace(-1, 1, SIZE)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    c = torch.from_numpy(np.cos(angle)).float().view(n, 1, 1, 1)
    s = torch.from_numpy(np.sin(angle)).float().view(n, 1, 1, 1)
    return (c * xx + s * yy) / np.sqrt(2.0)


def add_noise(x: torch.Tensor, sigma: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    return x + torch.from_numpy(sigma).float().view(-1, 1, 1, 1) * noise


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1)


# ---------------------------------------------------------------------------------------------
# Photo patches (MNIST-M textures)
# ---------------------------------------------------------------------------------------------


def photo_blocks(split: str) -> list[tuple[int, int, int]]:
    """``(photo, row, col)`` blocks of the :data:`PHOTO_BLOCKS` grid that ``split`` crops from.

    Blocks with ``(row + col) % 3 == 0`` (7 of 20 per photo) are the test region, so both
    splits see every part of both photographs but never the same pixels.
    """
    rows, cols = PHOTO_BLOCKS
    want_test = split == "test"
    return [
        (pi, r, c)
        for pi in range(len(photos()))
        for r in range(rows)
        for c in range(cols)
        if ((r + c) % 3 == 0) == want_test
    ]


def photo_patches(n: int, split: str, rng: np.random.Generator) -> torch.Tensor:
    """``n`` random square crops (28–84 px, random flips) resized to 28×28, ``(n, 3, 28, 28)``.

    Each crop lies inside one block of its split (:func:`photo_blocks`).
    """
    pics = photos()
    blocks = photo_blocks(split)
    chosen = rng.integers(len(blocks), size=n)
    out = torch.empty(n, 3, SIZE, SIZE)
    u = (2 * torch.arange(SIZE, dtype=torch.float64) + 1) / SIZE - 1  # pixel centres in [-1, 1]
    for pi, pic in enumerate(pics):
        idx = np.flatnonzero([blocks[b][0] == pi for b in chosen])
        if len(idx) == 0:
            continue
        _, h, w = pic.shape
        bh, bw = h / PHOTO_BLOCKS[0], w / PHOTO_BLOCKS[1]
        r = np.array([blocks[b][1] for b in chosen[idx]])
        c = np.array([blocks[b][2] for b in chosen[idx]])
        half = np.minimum(rng.uniform(14, 42, size=len(idx)), min(bh, bw) / 2 - 1)
        cx = c * bw + rng.uniform(half, bw - half)
        cy = r * bh + rng.uniform(half, bh - half)
        flip_x = rng.choice([-1.0, 1.0], size=len(idx))
        flip_y = rng.choice([-1.0, 1.0], size=len(idx))
        hx = torch.from_numpy(half * flip_x).view(-1, 1, 1)
        hy = torch.from_numpy(half * flip_y).view(-1, 1, 1)
        px = torch.from_numpy(cx).view(-1, 1, 1) + u.view(1, 1, -1) * hx
        py = torch.from_numpy(cy).view(-1, 1, 1) + u.view(1, -1, 1) * hy
        gx = (px + 0.5) * 2 / w - 1
        gy = (py + 0.5) * 2 / h - 1
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1).float()  # (m, 28, 28, 2)
        sampled = F.grid_sample(
            pic[None], grid.reshape(1, -1, SIZE, 2), mode="bilinear", align_corners=False
        )
        out[idx] = sampled.view(3, len(idx), SIZE, SIZE).permute(1, 0, 2, 3)
    return out


# ---------------------------------------------------------------------------------------------
# Domains
# ---------------------------------------------------------------------------------------------


def _handwritten(src: np.ndarray) -> torch.Tensor:
    return handwritten_sources()[0][torch.from_numpy(src)]


def render_mnist(src: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    x = random_affine(
        _handwritten(src), rng, rotate=(-12, 12), scale=(0.9, 1.1), shear=0.15, shift=1.5
    )
    x = vary_thickness(x, rng.uniform(-0.6, 0.2, size=len(src)))
    return grey_to_rgb(x.clamp(0, 1))


def render_mnist_m(src: np.ndarray, rng: np.random.Generator, split: str) -> torch.Tensor:
    x = random_affine(
        _handwritten(src), rng, rotate=(-12, 12), scale=(0.9, 1.1), shear=0.15, shift=1.5
    )
    x = vary_thickness(x, rng.uniform(0.0, 0.8, size=len(src))).clamp(0, 1)
    return (photo_patches(len(src), split, rng) - x).abs()


def render_svhn(src: np.ndarray, rng: np.random.Generator, pool: np.ndarray) -> torch.Tensor:
    n = len(src)
    glyphs = handwritten_sources()[0]
    main = random_affine(
        glyphs[torch.from_numpy(src)], rng, rotate=(-8, 8), scale=(1.0, 1.2), shear=0.2, shift=1.0
    )
    mask = vary_thickness(main, rng.uniform(0.0, 0.8, size=n))
    for side in (-1.0, 1.0):
        neighbour_src = rng.choice(pool, size=n)
        offset = (side * 16.0, side * 20.0) if side > 0 else (side * 20.0, side * 16.0)
        neighbour = random_affine(
            glyphs[torch.from_numpy(neighbour_src)],
            rng,
            rotate=(-8, 8),
            scale=(1.0, 1.2),
            shear=0.2,
            shift=1.0,
            shift_x=offset,
        )
        present = torch.from_numpy(rng.uniform(size=n) < 0.8).float().view(n, 1, 1, 1)
        mask = torch.maximum(mask, present * vary_thickness(neighbour, rng.uniform(0.0, 0.8, n)))
    mask = mask.clamp(0, 1)
    bg, fg = contrasting_colours(n, rng)
    img = bg * (1 - mask) + fg * mask
    light = torch.from_numpy(rng.uniform(0.0, 0.35, size=(n, 1, 1, 1))).float()
    img = img * (1 + light * linear_ramp(n, rng))
    img = gaussian_blur(img, rng.uniform(0.3, 1.1, size=n))
    return add_noise(img, rng.uniform(0.02, 0.08, size=n), rng).clamp(0, 1)


def render_usps(src: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    x = random_affine(
        _handwritten(src), rng, rotate=(-8, 8), scale=(1.2, 1.35), shear=0.1, shift=1.0
    )
    x = vary_thickness(x, rng.uniform(0.0, 0.6, size=len(src))).clamp(0, 1)
    low = F.interpolate(x, size=(16, 16), mode="area")
    up = F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return grey_to_rgb(up.clamp(0, 1) ** 0.8)


def render_synth(src: np.ndarray, angle: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    n = len(src)
    glyphs = font_glyphs()[0][torch.from_numpy(src)]
    rot = np.asarray(SYNTH_ANGLES)[angle]
    # each source has a base angle (its rotation bin); jitter ±2° around it
    mask = torch.empty_like(glyphs)
    for a in np.unique(rot):
        sel = np.flatnonzero(rot == a)
        mask[sel] = random_affine(
            glyphs[sel], rng, rotate=(a - 2.0, a + 2.0), scale=(1.0, 1.3), shear=0.1, shift=1.5
        )
    mask = mask.clamp(0, 1)
    c1, fg = contrasting_colours(n, rng, min_gap=0.35)
    c2 = (c1 + torch.from_numpy(rng.uniform(-0.2, 0.2, size=(n, 3, 1, 1))).float()).clamp(0, 1)
    ramp = (linear_ramp(n, rng) + 1) / 2
    bg = c1 * (1 - ramp) + c2 * ramp
    img = bg * (1 - mask) + fg * mask
    img = gaussian_blur(img, rng.uniform(0.2, 0.7, size=n))
    return add_noise(img, rng.uniform(0.0, 0.03, size=n), rng).clamp(0, 1)


def _synth_sources() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synth sources are ``(glyph, angle bin)`` pairs: returns glyph index, angle index, label."""
    _, labels, _ = font_glyphs()
    g, a = np.meshgrid(np.arange(len(labels)), np.arange(len(SYNTH_ANGLES)), indexing="ij")
    return g.ravel(), a.ravel(), labels[g.ravel()]


def render_split(domain: str, n: int, split: str, pool: np.ndarray, seed: int) -> Rendered:
    """Render ``n`` balanced images of ``domain`` for ``split`` from source ``pool``."""
    rng = rng_for(seed, "embedded-render", domain, split)
    labels = balanced_labels(n, rng)
    if domain == "synth":
        glyph, angle, source_labels = _synth_sources()
        chosen = draw_sources(labels, pool, source_labels, rng)
        images = render_synth(glyph[chosen], angle[chosen], rng)
        return to_uint8(images), labels
    source_labels = handwritten_sources()[1]
    src = draw_sources(labels, pool, source_labels, rng)
    if domain == "mnist":
        images = render_mnist(src, rng)
    elif domain == "mnist_m":
        images = render_mnist_m(src, rng, split)
    elif domain == "svhn":
        images = render_svhn(src, rng, pool)
    elif domain == "usps":
        images = render_usps(src, rng)
    else:
        raise ValueError(f"unknown embedded domain {domain!r}; valid: {list(DOMAINS)}")
    return to_uint8(images), labels


def domain_source_split(domain: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The disjoint (train, test) source pools of ``domain`` (indices into its sources)."""
    rng = rng_for(seed, "embedded-sources", domain)
    labels = _synth_sources()[2] if domain == "synth" else handwritten_sources()[1]
    return split_sources(labels, rng)


def build_domain(domain: str, n_train: int, n_test: int, seed: int) -> DomainArrays:
    train_pool, test_pool = domain_source_split(domain, seed)
    train_x, train_y = render_split(domain, n_train, "train", train_pool, seed)
    test_x, test_y = render_split(domain, n_test, "test", test_pool, seed)
    return DomainArrays(train_x, train_y, test_x, test_y)


def build_embedded_digits(
    train_per_domain: int = DEFAULT_TRAIN_PER_DOMAIN,
    test_per_domain: int = DEFAULT_TEST_PER_DOMAIN,
    seed: int = 0,
) -> dict[str, DomainArrays]:
    """Build all five domains in memory (no cache); ``uint8`` ``(N, 3, 28, 28)`` images."""
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # identical numerics whatever the machine's core count
        return {d: build_domain(d, train_per_domain, test_per_domain, seed) for d in DOMAINS}
    finally:
        torch.set_num_threads(torch_threads)


def cache_params(train_per_domain: int, test_per_domain: int, seed: int) -> dict[str, object]:
    """Everything the built arrays depend on (package versions read without importing them)."""
    return {
        "version": BUILDER_VERSION,
        "train": train_per_domain,
        "test": test_per_domain,
        "seed": seed,
        **{
            pkg: _version(pkg) for pkg in ("torch", "numpy", "scikit-learn", "matplotlib", "pillow")
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package).split("+")[0]
    except PackageNotFoundError:
        return "unknown"


def cached_embedded_digits(
    train_per_domain: int = DEFAULT_TRAIN_PER_DOMAIN,
    test_per_domain: int = DEFAULT_TEST_PER_DOMAIN,
    seed: int = 0,
) -> dict[str, DomainArrays]:
    """:func:`build_embedded_digits` through the on-disk cache."""

    def build() -> dict[str, np.ndarray]:
        built = build_embedded_digits(train_per_domain, test_per_domain, seed)
        return {f"{d}/{k}": getattr(a, k) for d, a in built.items() for k in _FIELDS}

    def complete(flat: dict[str, np.ndarray]) -> bool:
        """Every domain's four arrays, at the sizes asked for (else: rebuilt)."""
        sizes = dict(zip(_FIELDS, (train_per_domain,) * 2 + (test_per_domain,) * 2, strict=True))
        return all(
            f"{d}/{k}" in flat and len(flat[f"{d}/{k}"]) == n
            for d in DOMAINS
            for k, n in sizes.items()
        )

    flat = load_or_build(
        "digits-embedded", cache_params(train_per_domain, test_per_domain, seed), build, complete
    )
    return {d: DomainArrays(*(flat[f"{d}/{k}"] for k in _FIELDS)) for d in DOMAINS}


_FIELDS = ("train_x", "train_y", "test_x", "test_y")


def load_embedded(
    spec: DataSpec, domains: tuple[str, ...], image_size: int
) -> dict[str, DomainArrays]:
    """Loader for :data:`fedwon.datasets.DATASETS` (``digits-embedded``)."""
    n_train = spec.train_per_domain or DEFAULT_TRAIN_PER_DOMAIN
    n_test = spec.test_per_domain or DEFAULT_TEST_PER_DOMAIN
    built = cached_embedded_digits(n_train, n_test, spec.seed)
    return {
        d: DomainArrays(
            resize_nchw(built[d].train_x, image_size),
            built[d].train_y,
            resize_nchw(built[d].test_x, image_size),
            built[d].test_y,
        )
        for d in domains
    }
