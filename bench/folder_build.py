"""Benchmark: building a folder dataset (sdr_jax/data/folder.py), images/s.

Writes N random-noise PNGs (noise: the worst case for compression) in --classes class folders
of a task layout (80% train, 20% test) into a temporary directory, unless --source names an
existing folder, then times `folder.build` with each resize policy into a temporary data_dir.

  python bench/folder_build.py --num_images=10000 --size=64
  python bench/folder_build.py --source=DIR

(Run from the repository root with the package installed, or with PYTHONPATH=. .)
"""
import argparse
import pathlib
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from sdr_jax.data import folder


def write_images(root: pathlib.Path, num_images: int, size: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(num_images):
        split = 'test' if (index // classes) % 5 == 0 else 'train'
        directory = root / split / f'class_{index % classes}'
        directory.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f'{index}.png', compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--source', help='an image folder (default: generated)')
    parser.add_argument('--num_images', type=int, default=10_000)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--classes', type=int, default=10)
    args = parser.parse_args()
    tfds.disable_progress_bar()  # ours (stderr) remain
    with tempfile.TemporaryDirectory() as tmp:
        source = pathlib.Path(args.source) if args.source else pathlib.Path(tmp) / 'images'
        if not args.source:
            start = time.perf_counter()
            write_images(source, args.num_images, args.size, args.classes)
            print(f'wrote {args.num_images} {args.size}x{args.size} PNGs in '
                  f'{time.perf_counter() - start:.1f} s')
        for resize in folder.RESIZE_POLICIES:
            start = time.perf_counter()
            report = folder.build(source, 'bench', pathlib.Path(tmp) / f'tfds_{resize}',
                                  resize=resize)
            seconds = time.perf_counter() - start
            files = len(report.plan.files)
            written = sum(len(examples) for examples in report.plan.splits.values())
            print(f'resize={resize}: {files} files in {seconds:.1f} s = {files / seconds:.0f} '
                  f'images/s ({written} examples written over all splits, '
                  f'{report.size_bytes / 2**20:.1f} MiB)')


if __name__ == '__main__':
    main()
