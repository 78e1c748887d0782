"""Throughput of the SimSiam input: host image pairs/s per core, before and after moving the colour
augmentations to the device, and the device augmentations' share of a SimSiam step.

One pair = one source image turned into two views (view1 + view2). Host columns, one process
(one core), in the same run:
  * `all on host`: the pre-device pipeline, `augment.augment` twice per image (crop, flip,
    colour jitter, grayscale, blur on the host);
  * `crop+flip`: what the host does now, `augment.crop_and_flip` twice per image (the colour
    work runs in the jitted step, `photometric.augment_views`);
  * `grain, N workers`: the whole training input pipeline (`input_pipeline.pretrain_dataset`,
    crop+flip) with N grain worker processes (`--workers`, '' for none).
Device: the jitted SimSiam step (ResNet-18 x0.25, 32 px, batch 256 by default) timed with and
without its device augmentations, alternating, in the same process; the share is the difference
over the step with them.

  python bench/pipeline.py                          # 32x32 in-memory + 224 px ImageNet-like
  python bench/pipeline.py --dataset=mosaic         # also the built mosaic pool
  python bench/pipeline.py --step_batch=0           # host columns only
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


def host_pairs_per_s(view_fn, source, image_size: int, pairs: int) -> float:
    """Pairs/s of `view_fn(image, rng, cfg)` called twice per image in this process (one core)."""
    cfg = augment.view_config(augment.default_aug_config(image_size), 1)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(pairs):
        image = source[i]["image"]
        view_fn(image, rng, cfg)
        view_fn(image, rng, cfg)
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


def device_aug_share(arch: str, width: float, image_size: int, batch: int, repeats: int
                     ) -> tuple[float, float]:
    """(seconds per SimSiam step with the device augmentations, without them)."""
    import jax
    import jax.numpy as jnp

    from sdr_jax import methods, models
    from sdr_jax.config_base import simsiam_config
    from sdr_jax.core import mesh as mesh_lib
    from sdr_jax.train import optim, pretrain
    from sdr_jax.train.state import create_train_state

    config = simsiam_config(dataset="mosaic", image_size=image_size, arch=arch, width=width,
                            stem="small", proj_dim=512, pred_dim=128)
    mesh = mesh_lib.make_data_mesh()
    model = models.build_model(config.model)
    path = jnp.asarray(models.path_spec(config.model).full_path())
    tx, _ = optim.make_optimizer(config.optim, 1000)
    init = jax.jit(lambda r: create_train_state(model, tx, r, image_size, path),
                   out_shardings=mesh_lib.replicated(mesh))
    rng = np.random.default_rng(0)
    data = mesh_lib.shard_batch(
        {k: rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
         for k in ("view1", "view2")}, mesh)
    runs = {}
    for name, aug_cfg in (("with", config.data.aug), ("without", None)):
        step = pretrain.make_train_step(methods.build(config.method, 1000),
                                        models.build_model(config.model, bn_axis_name="data"),
                                        tx, mesh, path, aug_cfg=aug_cfg)
        state, _ = step(init(jax.random.PRNGKey(0)), data)  # compiles
        runs[name] = [step, jax.block_until_ready(state), []]
    for _ in range(repeats):  # alternating, so a busy machine slows both alike
        for run in runs.values():
            step, state, times = run
            start = time.perf_counter()
            run[1] = jax.block_until_ready(step(state, data)[0])
            times.append(time.perf_counter() - start)
    return tuple(float(np.median(runs[name][2])) for name in ("with", "without"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256, help="timed pairs per host cell")
    parser.add_argument("--workers", default="", help="comma-separated grain worker counts")
    parser.add_argument("--batch_size", type=int, default=64, help="grain pipeline batch")
    parser.add_argument("--batches", type=int, default=8, help="timed grain batches per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed grain batches per cell")
    parser.add_argument("--dataset", choices=["synthetic", "mosaic"], default="synthetic")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir for --dataset=mosaic")
    parser.add_argument("--step_arch", default="resnet18")
    parser.add_argument("--step_width", type=float, default=0.25)
    parser.add_argument("--step_image_size", type=int, default=32)
    parser.add_argument("--step_batch", type=int, default=256, help="0: no device timing")
    parser.add_argument("--step_repeats", type=int, default=5)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",") if w]

    cases = [("in-memory 32x32", InMemorySource(4096, 512, (32, 32)), 32),
             ("ImageNet-like 256-500px", InMemorySource(4096, 64, (256, 500)), 224)]
    if args.dataset == "mosaic":
        from sdr_jax.data import datasets  # The dataset registry (data branch).
        cases.append(("mosaic pool 32x32",
                      datasets.open_source("mosaic", "pool", args.data_dir), 32))

    header = ["source", "out", "all on host", "crop+flip", "speed-up"]
    header += [f"grain, {w} workers" for w in workers]
    print(f"host image pairs/s (2 views each), one process; {args.pairs} pairs per cell")
    print(" | ".join(f"{h:>24}" if i == 0 else f"{h:>12}" for i, h in enumerate(header)))
    for name, source, size in cases:
        old = host_pairs_per_s(augment.augment, source, size, args.pairs)
        new = host_pairs_per_s(augment.crop_and_flip, source, size, args.pairs)
        row = [f"{name:>24}", f"{size:>12}", f"{old:>12.0f}", f"{new:>12.0f}",
               f"{new / old:>11.1f}x"]
        row += [f"{pipeline_pairs_per_s(source, size, w, args.batch_size, args.warmup, args.batches):>12.0f}"
                for w in workers]
        print(" | ".join(row), flush=True)

    if args.step_batch:
        with_aug, without = device_aug_share(args.step_arch, args.step_width,
                                             args.step_image_size, args.step_batch,
                                             args.step_repeats)
        print(f"\nSimSiam step, {args.step_arch} x{args.step_width}, {args.step_image_size} px, "
              f"batch {args.step_batch} (median of {args.step_repeats}): {with_aug:.3f} s with "
              f"the device augmentations, {without:.3f} s without; their share "
              f"{100 * (with_aug - without) / with_aug:.1f}%")


if __name__ == "__main__":
    main()
