"""Which one limits SimSiam training here: the train step or the input pipeline?

Prints, for one backbone/width/batch, the jitted SimSiam train step's images/s (two views per
image, synthetic uint8 batches, after compilation) next to the input pipeline's images/s
(image pairs from a source of the same image size, 0 workers), and their ratio.

  python bench/train_step.py                                   # ResNet-18 x0.25, 32x32, batch 128
  python bench/train_step.py --arch=resnet50 --width=1 --image_size=224 --batch=64 --stem=imagenet
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from pipeline import InMemorySource, pipeline_pairs_per_s
from sdr_jax import methods, models
from sdr_jax.config_base import simsiam_config
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train import optim, pretrain
from sdr_jax.train.state import create_train_state


def step_images_per_s(arch, width, stem, image_size, batch, repeats) -> tuple[float, float]:
    config = simsiam_config(dataset="mosaic", image_size=image_size, arch=arch, width=width,
                            stem=stem, proj_dim=512, pred_dim=128)
    mesh = mesh_lib.make_data_mesh()
    model = models.build_model(config.model)
    path = jnp.asarray(models.path_spec(config.model).full_path())
    tx, _ = optim.make_optimizer(config.optim, 1000)
    state = jax.jit(lambda r: create_train_state(model, tx, r, image_size, path),
                    out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(0))
    step = pretrain.make_train_step(methods.build(config.method, 1000),
                                    models.build_model(config.model, bn_axis_name="data"), tx,
                                    mesh, path, aug_cfg=config.data.aug)
    rng = np.random.default_rng(0)
    batch_np = {k: rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
                for k in ("view1", "view2")}
    data = mesh_lib.shard_batch(batch_np, mesh)
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        state, metrics = step(state, data)
    jax.block_until_ready(state)
    return batch * repeats / (time.perf_counter() - start), compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--stem", default="small")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    step_rate, compile_s = step_images_per_s(args.arch, args.width, args.stem, args.image_size,
                                             args.batch, args.repeats)
    sizes = (32, 32) if args.image_size == 32 else (256, 500)
    source = InMemorySource(length=4096, distinct=256, sizes=sizes)
    data_rate = pipeline_pairs_per_s(source, args.image_size, workers=0, batch_size=args.batch,
                                     warmup=2, batches=8)
    print(f"{args.arch} x{args.width}, {args.image_size}x{args.image_size}, batch {args.batch}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s); compile {compile_s:.1f} s")
    print(f"{'train step':<22} {step_rate:9.1f} images/s (two views each)")
    print(f"{'input pipeline (0 w.)':<22} {data_rate:9.1f} images/s (two views each)")
    limiter = "the train step" if step_rate < data_rate else "the input pipeline"
    print(f"pipeline / step = {data_rate / step_rate:.2f}x: {limiter} limits training here")


if __name__ == "__main__":
    main()
