"""Cost of an SDR step: against a SimSiam step of the same backbone and batch, and with a path
space of 256 (4 groups x 4 blocks) against one of 16 (2 x 4) at the same number of sampled paths.

Every SDR row runs twice: sub-nets masked at full width and compact at their own width
(`sdr.subnet_exec`, models/compact.py; compiled for the stage of the sampled paths, all-group
paths of stage 4 here), in the same run.

SDR trains, per step, the SDRnet on the D0 batch plus `paths` sub-nets on `subnet_batch` images
each (with the SDRnet as SiamKD teacher on those images), so its step does more work than
SimSiam's by design; what must not grow is the cost with the size of the path space (masks make
every path the same static-shape computation). Also prints compile counts and XLA's memory
analysis (temporaries + arguments) of each compiled step. Synthetic uint8 batches, one device.

  python bench/sdr_step.py                    # ResNet-18 x0.25, 32x32, batch 128, 4 paths x 32
  python bench/sdr_step.py --arch=resnet50 --width=1 --image_size=224 --stem=imagenet \
      --dtype=bfloat16 --batch=256 --paths=2 --subnet_batch=128 --proj_dim=2048 \
      --pred_dim=512 --rows=4x4-masked,4x4-compact       # issue 15's GPU row (R50, bf16)

`--rows` picks the SDR rows (`<G>x4-<masked|compact>`; the SimSiam row always runs): each row
is a compile, a minute each for ResNet-50 on a GPU.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax import methods, models
from sdr_jax.config_base import sdr_config, simsiam_config
from sdr_jax.core.paths import PathSpec
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train import optim, pretrain, sdr
from sdr_jax.train.state import create_train_state


def _state(model_cfg, tx, image_size, mesh):
    model = models.build_model(model_cfg)
    path = jnp.asarray(models.path_spec(model_cfg).full_path())
    return jax.jit(lambda r: create_train_state(model, tx, r, image_size, path),
                   out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(0)), path


def _time(step, state, batch, repeats):
    start = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, _ = step(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), compile_s, state


def _memory_mib(step, state, batch) -> float:
    analysis = step.lower(state, batch).compile().memory_analysis()
    return (analysis.temp_size_in_bytes + analysis.argument_size_in_bytes) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--paths", type=int, default=4)
    parser.add_argument("--subnet_batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stem", default="small", choices=["small", "imagenet"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--proj_dim", type=int, default=512)
    parser.add_argument("--pred_dim", type=int, default=128)
    parser.add_argument("--rows", default=",".join(ROWS), help="SDR rows, from " + ",".join(ROWS))
    args = parser.parse_args()
    wanted = args.rows.split(",")
    if unknown := sorted(set(wanted) - set(ROWS)):
        parser.error(f"unknown --rows {unknown}; choose from {','.join(ROWS)}")
    mesh = mesh_lib.make_data_mesh(jax.devices()[:1])
    size, rng = args.image_size, np.random.default_rng(0)
    images = lambda *shape: rng.integers(0, 256, shape + (size, size, 3), dtype=np.uint8)  # noqa
    common = dict(dataset="mosaic", image_size=size, arch=args.arch, width=args.width,
                  stem=args.stem, proj_dim=args.proj_dim, pred_dim=args.pred_dim)
    rows = []
    print(f"{args.arch} x{args.width} {args.dtype}, {size}x{size}, D0 batch {args.batch}, SDR: "
          f"{args.paths} paths x {args.subnet_batch} images per step, 1 "
          f"{jax.devices()[0].platform} device")
    print(f"{'step':<20} {'space':>6} {'ms/step':>9} {'vs SimSiam':>10} {'compile s':>10} "
          f"{'compiles':>8} {'XLA MiB':>8}", flush=True)

    base = simsiam_config(**common)
    base.model.dtype = args.dtype
    tx, _ = optim.make_optimizer(base.optim, 1000)
    state, path = _state(base.model, tx, size, mesh)
    step = pretrain.make_train_step(methods.build(base.method, 1000),
                                    models.build_model(base.model, bn_axis_name="data"), tx,
                                    mesh, path, aug_cfg=base.data.aug)
    batch = mesh_lib.shard_batch({"view1": images(args.batch), "view2": images(args.batch)}, mesh)
    seconds, compile_s, state = _time(step, state, batch, args.repeats)
    memory = _memory_mib(step, state, batch)  # after: with a compilation cache, a cache hit
    _add(rows, ("SimSiam", 1, seconds, compile_s, step._cache_size(), memory))

    for groups, execution in (_parse_row(row) for row in ROWS if row in wanted):
        cfg = sdr_config(**common, num_groups=groups)
        cfg.model.dtype = args.dtype
        spec = PathSpec(num_blocks=4, num_groups=groups)
        tx, _ = optim.make_optimizer(cfg.optim, 1000)
        state, full = _state(cfg.model, tx, size, mesh)
        step = sdr.make_sdr_step(
            methods.build(cfg.method, 1000), models.build_model(cfg.model, bn_axis_name="data"),
            models.build_model(cfg.model, bn_axis_name="data", sync_bn=False), tx, mesh, full,
            kd="siamkd", kd_weight=1.0, with_subnets=True, aug_cfg=cfg.data.aug,
            compact_stage=spec.num_blocks if execution == "compact" else None)
        paths = spec.all_paths()[rng.choice(spec.num_paths, args.paths, replace=False)]
        batch = mesh_lib.shard_batch({
            "d0_view1": images(args.batch), "d0_view2": images(args.batch),
            "paths": paths.astype(np.int32), "sub_view1": images(args.paths, args.subnet_batch),
            "sub_view2": images(args.paths, args.subnet_batch)}, mesh)
        seconds, compile_s, state = _time(step, state, batch, args.repeats)
        memory = _memory_mib(step, state, batch)
        # Other paths of the same space: the step must not compile again.
        for _ in range(2):
            paths = spec.all_paths()[rng.choice(spec.num_paths, args.paths, replace=False)]
            batch["paths"] = mesh_lib.shard_batch({"p": paths.astype(np.int32)}, mesh)["p"]
            state, _ = step(state, batch)
        _add(rows, (f"SDR {groups}x4 {execution}", spec.num_paths, seconds, compile_s,
                    step._cache_size(), memory))
    by_name = {row[0]: row for row in rows}
    for name in ("masked", "compact"):
        small, large = by_name.get(f"SDR 2x4 {name}"), by_name.get(f"SDR 4x4 {name}")
        if small and large:
            print(f"{name}: 256-path space / 16-path space step time: {large[2] / small[2]:.2f}x")
    for groups in (2, 4):
        masked = by_name.get(f"SDR {groups}x4 masked")
        compact = by_name.get(f"SDR {groups}x4 compact")
        if masked and compact:
            print(f"compact / masked SDR step ({groups ** 4} paths): "
                  f"{compact[2] / masked[2]:.2f}x")


def _add(rows: list, row: tuple) -> None:
    """Appends a row and prints it at once (a run stopped at a time cap keeps what it did)."""
    rows.append(row)
    name, space, seconds, compile_s, compiles, memory = row
    print(f"{name:<20} {space:>6} {1000 * seconds:>9.0f} {seconds / rows[0][2]:>9.2f}x "
          f"{compile_s:>10.1f} {compiles:>8} {memory:>8.0f}", flush=True)


ROWS = ("2x4-masked", "4x4-masked", "2x4-compact", "4x4-compact")


def _parse_row(row: str) -> tuple[int, str]:
    groups, execution = row.split("-")
    return int(groups.split("x")[0]), execution


if __name__ == "__main__":
    main()
