"""CPU time of one SimSiam training step: this project's JAX step next to the same model in PyTorch.

For every batch size and image size it times, in one run and side by side:
  * JAX: `sdr_jax.train.pretrain.make_train_step` (jitted, default CPU backend), built as in
    `bench/train_step.py`: `simsiam_config`, `models.build_model`, `optim.make_optimizer`,
    `create_train_state`, synthetic uint8 batches (two views);
  * PyTorch eager (`torch.set_num_threads(2)`), with a small module written below that mirrors
    the architecture exactly (parameter counts are printed for both and must match);
  * PyTorch `torch.compile` (inductor; forward of both views + loss compiled, backward through
    AOTAutograd, SGD step eager), unless `--no_compile` or it fails (the error is printed).

Model: ResNet-18 x0.25 (stage widths 16/32/64/128, BasicBlocks 2/2/2/2, zero-init last BN of
each block), 'small' stem (3x3 stride-1 conv + BN + ReLU, no max-pool), global average pool,
projector 3 x (Linear 512 no bias + BN (+ReLU)), last BN without affine, predictor Linear 128
(no bias) + BN + ReLU + Linear 512 (bias). Per-view BN statistics (each view is its own forward),
symmetric negative-cosine loss with stop-gradient on z, SGD momentum 0.9, weight decay 5e-4 on
every parameter, predictor at a fixed lr (SimSiam's fix_pred_lr), cosine lr elsewhere. The
uint8 -> float normalisation is inside the step for both frameworks. Each step is timed on its own
(JAX: `block_until_ready`); the median over `--steps` steps after `--warmup` steps is reported as
ms/step (wall) and images/s (images of the batch per second, two views each); `cpu ms` is the
process CPU time per step (both cores busy -> about 2x wall).

PyTorch is an optional bench dependency only (not in setup.py): `pip install torch` (on Linux the
PyPI wheel pulls the CUDA libraries; a `+cpu` wheel is enough here).

  python bench/torch_cpu_step.py                          # batches 64,128 x sizes 16,32
  python bench/torch_cpu_step.py --batches=64 --sizes=16 --steps=3 --warmup=1 --no_compile

Measured 2026-11-26 08:07 UTC on a quiet machine (load 0.6 before, 1.5 after): 2-core CPU, no
accelerator; jax 0.10.2 (1 CPU device), torch 2.13.0+cpu (2 threads); `python
bench/torch_cpu_step.py` (3 warm-up + 10 timed steps). ms/step (median), images/s in brackets,
ratio to JAX:

  batch size | JAX jit       | torch eager         | torch.compile
  -----------+---------------+---------------------+--------------------
    64   16  | 174 (369)     |  62 (1026) 0.36x    |  55 (1169) 0.32x
    64   32  | 410 (156)     | 182 (352)  0.44x    | 172 (371)  0.42x
   128   16  | 332 (385)     | 105 (1225) 0.31x    | 100 (1281) 0.30x
   128   32  | 871 (147)     | 351 (364)  0.40x    | 350 (366)  0.40x

PyTorch eager runs this step 2.3-3.2x faster than XLA:CPU here (the STYLE.md trap; the CPU
demo's budget is set by it). JAX's CPU time is ~1.7x its wall time, torch's ~2x. Two earlier
runs beside test jobs gave 0.35-0.89x, i.e. the same direction with more noise.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax import methods, models
from sdr_jax.config_base import simsiam_config
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train import optim, pretrain
from sdr_jax.train.state import create_train_state

TORCH_THREADS = 2
ARCH, WIDTH, STEM, PROJ_DIM, PRED_DIM = "resnet18", 0.25, "small", 512, 128
MOMENTUM, WEIGHT_DECAY, BASE_LR, NUM_STEPS = 0.9, 5e-4, 0.05, 1000


def _import_torch():
    try:
        import torch
    except ImportError as e:
        sys.exit(f"bench/torch_cpu_step.py needs PyTorch, an optional bench dependency that "
                 f"sdr_jax does not install: pip install torch  ({e})")
    return torch


def _config(image_size: int, batch: int):
    config = simsiam_config(dataset="mosaic", image_size=image_size, arch=ARCH, width=WIDTH,
                            stem=STEM, proj_dim=PROJ_DIM, pred_dim=PRED_DIM)
    config.optim.batch_size = batch
    config.optim.base_lr = BASE_LR
    config.optim.momentum = MOMENTUM
    config.optim.weight_decay = WEIGHT_DECAY
    return config


def _batch(batch: int, image_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
            for k in ("view1", "view2")}


def _timed(step_fn, warmup: int, steps: int) -> tuple[float, float, float]:
    """(median wall ms, median process-CPU ms, first-call s) of `step_fn()` (which must block)."""
    start = time.perf_counter()
    step_fn()
    first_s = time.perf_counter() - start
    for _ in range(warmup):
        step_fn()
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        step_fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu), first_s


# ----------------------------------------------------------------------------------------- JAX
def jax_step(batch: int, image_size: int):
    """(step closure, parameter count, loss after the first call)."""
    config = _config(image_size, batch)
    mesh = mesh_lib.make_data_mesh()
    model = models.build_model(config.model)
    path = jnp.asarray(models.path_spec(config.model).full_path())
    tx, _ = optim.make_optimizer(config.optim, NUM_STEPS)
    state = jax.jit(lambda r: create_train_state(model, tx, r, image_size, path),
                    out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    step = pretrain.make_train_step(methods.build(config.method, 1000),
                                    models.build_model(config.model, bn_axis_name="data"), tx,
                                    mesh, path, aug_cfg=None)  # the PyTorch step has none
    data = mesh_lib.shard_batch(_batch(batch, image_size), mesh)
    box = {"state": state, "metrics": None}

    def run():
        box["state"], box["metrics"] = step(box["state"], data)
        jax.block_until_ready(box["state"])

    return run, n_params, box


# ------------------------------------------------------------------------------------- PyTorch
def torch_simsiam(torch):
    nn, F = torch.nn, torch.nn.functional
    bn_momentum = 1 - 0.9  # flax momentum 0.9 == torch momentum 0.1; eps 1e-5 in both

    def bn(c, affine=True):
        return nn.BatchNorm2d(c, momentum=bn_momentum, affine=affine)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = bn(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = bn(cout)
            nn.init.zeros_(self.bn2.weight)  # zero_init_residual, as in resnet.py
            self.proj = None
            if cin != cout or stride != 1:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), bn(cout))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return F.relu(y + (x if self.proj is None else self.proj(x)))

    class SimSiam(nn.Module):
        def __init__(self, stage_sizes=(2, 2, 2, 2), widths=(16, 32, 64, 128),
                     proj_dim=PROJ_DIM, pred_dim=PRED_DIM):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), bn(widths[0]),
                                      nn.ReLU())
            blocks, cin = [], widths[0]
            for s, (n, w) in enumerate(zip(stage_sizes, widths)):
                for i in range(n):
                    blocks.append(BasicBlock(cin, w, (1 if s == 0 else 2) if i == 0 else 1))
                    cin = w
            self.blocks = nn.Sequential(*blocks)
            layers, d = [], cin
            for i in range(3):
                last = i == 2
                layers += [nn.Linear(d, proj_dim, bias=False),
                           nn.BatchNorm1d(proj_dim, momentum=bn_momentum, affine=not last)]
                if not last:
                    layers.append(nn.ReLU())
                d = proj_dim
            self.projector = nn.Sequential(*layers)
            self.predictor = nn.Sequential(
                nn.Linear(proj_dim, pred_dim, bias=False),
                nn.BatchNorm1d(pred_dim, momentum=bn_momentum), nn.ReLU(),
                nn.Linear(pred_dim, proj_dim))

        def forward(self, images_nhwc_uint8):
            x = (images_nhwc_uint8.permute(0, 3, 1, 2).float() - self.mean) / self.std
            feature = self.blocks(self.stem(x)).mean(dim=(2, 3))
            z = self.projector(feature)
            return z, self.predictor(z)

    return SimSiam()


def torch_step(torch, batch: int, image_size: int, compiled: bool):
    """(step closure, parameter count, loss box)."""
    F = torch.nn.functional
    torch.manual_seed(0)
    model = torch_simsiam(torch).train()
    n_params = sum(p.numel() for p in model.parameters())
    peak = BASE_LR * batch / 256  # optim.peak_learning_rate
    pred = list(model.predictor.parameters())
    pred_ids = {id(p) for p in pred}
    rest = [p for p in model.parameters() if id(p) not in pred_ids]
    opt = torch.optim.SGD([{"params": rest}, {"params": pred}], lr=peak, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda t: 0.5 * (1 + np.cos(np.pi * min(t, NUM_STEPS) / NUM_STEPS)), lambda t: 1.0])

    def neg_cos(p, z):
        return -(F.normalize(p, dim=-1, eps=1e-6) * F.normalize(z.detach(), dim=-1, eps=1e-6)
                 ).sum(-1).mean()

    def forward_loss(v1, v2):
        z1, p1 = model(v1)  # BN statistics per view, as in methods.two_views
        z2, p2 = model(v2)
        return 0.5 * (neg_cos(p1, z2) + neg_cos(p2, z1)), z1

    fwd = torch.compile(forward_loss) if compiled else forward_loss
    data = {k: torch.from_numpy(v) for k, v in _batch(batch, image_size).items()}
    box = {"loss": None}

    def run():
        opt.zero_grad(set_to_none=True)
        loss, z1 = fwd(data["view1"], data["view2"])
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # the JAX step's collapse monitor
            F.normalize(z1.detach(), dim=-1).std(0, unbiased=False).mean()
        box["loss"] = loss.detach()

    return run, n_params, box


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--sizes", default="16,32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no_compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    torch = _import_torch()
    torch.set_num_threads(TORCH_THREADS)
    print(f"jax {jax.__version__} ({jax.device_count()} {jax.devices()[0].platform} device(s)), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); ResNet-18 x0.25 small "
          f"stem, proj 3x512, pred 512-128-512; median of {args.steps} steps after "
          f"{args.warmup} warm-up")
    header = (f"{'batch':>5} {'size':>4} {'framework':<14} {'params':>9} {'ms/step':>9} "
              f"{'images/s':>9} {'cpu ms':>8} {'first s':>8} {'loss':>8} {'vs JAX':>7}")
    print(header)
    compile_error = None
    for batch in (int(b) for b in args.batches.split(",")):
        for size in (int(s) for s in args.sizes.split(",")):
            runs = [("jax (jit)", None)] + [("torch eager", False)]
            if not args.no_compile and compile_error is None:
                runs.append(("torch.compile", True))
            jax_ms = None
            for name, compiled in runs:
                try:
                    if compiled is None:
                        fn, n, box = jax_step(batch, size)
                    else:
                        fn, n, box = torch_step(torch, batch, size, compiled)
                    ms, cpu_ms, first_s = _timed(fn, args.warmup, args.steps)
                except Exception as e:  # torch.compile may not work on every CPU/toolchain
                    if not compiled:
                        raise
                    compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    print(f"{batch:>5} {size:>4} {name:<14} failed: {compile_error}")
                    continue
                loss = float(box["metrics"].compute()["loss"]) if compiled is None else \
                    float(box["loss"])
                jax_ms = ms if compiled is None else jax_ms
                print(f"{batch:>5} {size:>4} {name:<14} {n:>9,} {ms:>9.1f} "
                      f"{1e3 * batch / ms:>9.1f} {cpu_ms:>8.1f} {first_s:>8.1f} {loss:>8.4f} "
                      f"{ms / jax_ms:>6.2f}x", flush=True)
    print("vs JAX = ms/step / JAX ms/step (< 1: faster than JAX); images/s counts images of the "
          "batch (two views each); first s = first call (JAX/torch.compile: includes compile)")


if __name__ == "__main__":
    main()
