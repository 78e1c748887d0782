"""Throughput of the SimSiam input pipeline: image pairs/s for 0, 1, 2... grain workers.

One pair = one source image turned into two augmented views (view1 + view2).
The `augment only` column is a bare loop calling `augment` twice per image in this process:
the ceiling for 0 workers, so the grain overhead shows as the gap to it.

  python bench/input_pipeline.py                       # 32x32 in-memory + 224x224 ImageNet-like
  python bench/input_pipeline.py --dataset=mosaic      # also the built mosaic pool, if prepared
"""
import argparse
import itertools
import time

import numpy as np

from sdr_jax.data import augment
from sdr_jax.data import input_pipeline


class InMemorySource:
    """`distinct` random images (sizes drawn from `sizes`) served cyclically as `length` records."""

    def __init__(self, length: int, distinct: int, sizes: tuple[int, int], seed: int = 0):
        rng = np.random.default_rng(seed)
        self._images = [rng.integers(0, 256, (*rng.integers(sizes[0], sizes[1] + 1, size=2), 3),
                                     dtype=np.uint8) for _ in range(distinct)]
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        return {"image": self._images[index % len(self._images)], "id": index, "label": 0}


def augment_only_pairs_per_s(source, image_size: int, pairs: int) -> float:
    cfg = augment.default_aug_config(image_size)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(pairs):
        image = source[i]["image"]
        augment.augment(image, rng, cfg)
        augment.augment(image, rng, cfg)
    return pairs / (time.perf_counter() - start)


def pipeline_pairs_per_s(source, image_size: int, workers: int, batch_size: int,
                         warmup: int, batches: int) -> float:
    ds = input_pipeline.pretrain_dataset(source, batch_size=batch_size, seed=0,
                                   aug_cfg=augment.default_aug_config(image_size),
                                   num_workers=workers)
    iterator = iter(ds)
    try:
        for _ in range(warmup):  # Includes starting the worker processes.
            next(iterator)
        start = time.perf_counter()
        for _ in itertools.islice(iterator, batches):
            pass
        return batches * batch_size / (time.perf_counter() - start)
    finally:
        iterator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per cell")
    parser.add_argument("--dataset", choices=["synthetic", "mosaic"], default="synthetic")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir for --dataset=mosaic")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    cases = [("in-memory 32x32", InMemorySource(4096, 512, (32, 32)), 32),
             ("ImageNet-like 256-500px", InMemorySource(4096, 64, (256, 500)), 224)]
    if args.dataset == "mosaic":
        from sdr_jax.data import datasets  # The dataset registry (data branch).
        cases.append(("mosaic pool 32x32",
                      datasets.open_source("mosaic", "pool", args.data_dir), 32))

    header = ["source", "out", "augment only"] + [f"{w} workers" for w in workers]
    print(f"image pairs/s (2 views each), batch {args.batch_size}, {args.batches} timed batches;"
          " (ratio to the first worker column)")
    print(" | ".join(f"{h:>24}" if i == 0 else f"{h:>12}" for i, h in enumerate(header)))
    for name, source, size in cases:
        ceiling = augment_only_pairs_per_s(source, size, args.batch_size * 2)
        cells = [pipeline_pairs_per_s(source, size, w, args.batch_size, args.warmup,
                                      args.batches) for w in workers]
        row = [f"{name:>24}", f"{size:>12}", f"{ceiling:>12.0f}"]
        row += [f"{c:>7.0f} ({c / cells[0]:.2f}x)" for c in cells]
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
