"""Does pre-training learn? SimSiam for N steps with kNN probes on held-out *train* images.

Chooses recipes without touching any test split: per task, the kNN memory is the first
`--memory` train images and the queries the next `--queries` train images (a validation
split). Every probe recalibrates BN on the memory images. Raw pixels (mean-centred, cosine)
and the step-0 network (random init) are printed as the references.

  python bench/learn_probe.py --steps=1600 --every=800              # the mosaic recipe
  python bench/learn_probe.py --steps=400 --set optim.batch_size=256 --set optim.base_lr=0.05

`--set field=value` overrides any config field (Python literals are parsed). Prints the loss
and collapse std every 25 steps with the seconds per step, and a kNN row every `--every` steps.
"""
import argparse
import ast
import time

import jax
import numpy as np

from sdr_jax.config_base import load_config_file
from sdr_jax.data import datasets, input_pipeline, tasks
from sdr_jax.eval.features import Prefix
from sdr_jax.eval.knn import knn_accuracy
from sdr_jax.models import export
from sdr_jax.train import pretrain


def held_out(task_names, image_size, memory, queries, data_dir=None):
    out = {}
    for name in task_names:
        train, _, task = tasks.open_task(name, data_dir)
        prefix = Prefix(train, min(memory + queries, len(train)))
        images, labels, _ = input_pipeline.load_all(prefix, image_size)
        out[name] = (images[:memory], labels[:memory], images[memory:], labels[memory:],
                     task.num_classes)
    return out


def pixel_knn(data, k, t):
    out = {}
    for name, (mx, my, qx, qy, c) in data.items():
        mx = mx.reshape(len(mx), -1).astype(np.float32)
        qx = qx.reshape(len(qx), -1).astype(np.float32)
        mean = mx.mean(0)
        out[name] = knn_accuracy(mx - mean, my, qx - mean, qy, k=k, temperature=t, num_classes=c)
    return out


def network_knn(model, variables, path, data, k, t, recal_batch=256):
    feat = jax.jit(lambda v, x: model.apply(v, x, path, False)["feature"])
    out = {}
    for name, (mx, my, qx, qy, c) in data.items():
        batches = [mx[i:i + recal_batch] for i in range(0, len(mx) - recal_batch + 1, recal_batch)]
        v = export.recalibrate_bn(model, variables, path, batches)
        f = lambda x: np.concatenate([np.asarray(feat(v, x[i:i + 500]))  # noqa: E731
                                      for i in range(0, len(x), 500)])
        out[name] = knn_accuracy(f(mx), my, f(qx), qy, k=k, temperature=t, num_classes=c)
    return out


def fmt(name, accs):
    return f"{name:<14}" + "".join(f"{100 * a:7.1f}" for a in accs.values()) + \
        f"  | mean {100 * np.mean(list(accs.values())):5.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/simsiam_mosaic.py")
    p.add_argument("--set", action="append", default=[], help="field=value overrides")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--memory", type=int, default=1000)
    p.add_argument("--queries", type=int, default=400)
    args = p.parse_args()
    config = load_config_file(args.config)
    config.unlock()
    for item in args.set:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        node[leaf] = value
    config.train.num_steps = args.steps
    task_names = list(datasets.TASKS)
    data = held_out(task_names, config.data.image_size, args.memory, args.queries,
                    config.data.data_dir or None)
    print(" " * 14 + "".join(f"{n[:6]:>7}" for n in task_names))
    print(fmt("raw pixels", pixel_knn(data, config.eval.knn_k, config.eval.knn_temperature)))

    trainer = pretrain.PretrainTrainer(config, workdir="")  # no checkpoints: nothing is written
    state = trainer.init_state()
    data_iter = trainer.make_data(0, None)
    step_fn = trainer.make_step_fn()
    path = trainer.full_path

    def probe(label):
        v = {"params": state.params, "batch_stats": state.batch_stats}
        print(fmt(label, network_knn(trainer.model, v, path, data, config.eval.knn_k,
                                     config.eval.knn_temperature)), flush=True)

    probe("step 0")
    start, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        state, metrics = step_fn(state, next(data_iter))
        if step % 25 == 0 or step == args.steps:
            m = metrics.compute()
            losses.append(float(m["loss"]))
            print(f"  step {step}: loss {float(m['loss']):.3f} std {float(m['collapse_std']):.4f}"
                  f" ({(time.perf_counter() - start) / step:.2f} s/step)", flush=True)
        if step % args.every == 0 or step == args.steps:
            probe(f"step {step}")


if __name__ == "__main__":
    main()
