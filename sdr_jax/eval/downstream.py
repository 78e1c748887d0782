"""kNN and linear-probe accuracy of one network on a downstream task, to compare a routed
sub-net with its baselines: an exported sub-net (route's best_subnet/), the SDRnet (all
groups) or one of its paths, or a plain SimSiam run.

BN statistics follow `config.bn` as in routing: a training run's path is recalibrated on the
task's train images ('recalibrate') or uses the running statistics ('running'); an exported
sub-net already carries the statistics it was exported with.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from ml_collections import ConfigDict

from sdr_jax import paths, route
from sdr_jax.data import tasks
from sdr_jax.errors import ConfigError
from sdr_jax.eval import features as features_lib
from sdr_jax.eval.knn import knn_accuracy
from sdr_jax.eval.linear import linear_probe_accuracy
from sdr_jax.models import build_model, export, path_spec
from sdr_jax.train import checkpoint, mesh as mesh_lib


def parse_path(spec: paths.PathSpec, text: Optional[str]) -> np.ndarray:
    """'' / None / 'all' -> the SDRnet; '5' -> path index 5; '1,0,all,1' -> entries."""
    if not text or text.strip().lower() == "all":
        return spec.full_path()
    parts = [p.strip().lower() for p in text.split(",")]
    try:
        if len(parts) == 1:
            return spec.index_to_path(int(parts[0]))
        return spec.validate([paths.ALL if p == "all" else int(p) for p in parts])
    except ValueError as e:
        raise ConfigError(f"--path={text!r}: {str(e).splitlines()[0]}") from e


def evaluate(config: ConfigDict, workdir: str, task_name: str,
             path: Optional[str] = None) -> dict:
    """{'network', 'task', 'knn', 'linear', ...} of the network in `workdir` on `task_name`."""
    route.check_bn_mode(config.bn)
    if os.path.exists(os.path.join(workdir, "model.json")):
        if path:
            raise ConfigError(f"{workdir} is an exported sub-net (one path); drop --path.")
        model, variables = route.load_exported(workdir)
        meta = route.exported_meta(workdir)
        network = f"exported sub-net, path {meta['path']} (bn={meta['bn']})"
        pool_dataset, data_dir, image_size = meta["pool_dataset"], meta["data_dir"], \
            meta["image_size"]
        path_arr = None
    else:
        run_config, variables, _ = checkpoint.load_run(workdir)
        model = build_model(run_config.model)
        spec = path_spec(run_config.model)
        path_arr = parse_path(spec, path) if spec.num_groups else spec.full_path()
        if not spec.num_groups and path:
            raise ConfigError(f"{workdir} is a plain SimSiam run (one path); drop --path.")
        kind = "SimSiam" if not spec.num_groups else (
            "SDRnet" if (path_arr == paths.ALL).all() else f"SDRnet path {path_arr.tolist()}")
        network = f"{kind} (bn={config.bn})"
        pool_dataset, data_dir = run_config.data.dataset, run_config.data.data_dir
        image_size = run_config.data.image_size
    data_dir = config.data_dir or data_dir or None
    image_size = config.image_size or image_size
    train_src, test_src, task = tasks.open_task(task_name, data_dir, pool_dataset=pool_dataset)
    if path_arr is not None and config.bn == "recalibrate":
        batches = route.recal_batches(train_src, batch_size=config.batch_size,
                                      image_size=image_size, num_images=config.bn_recal_images)
        if not batches:
            raise ConfigError("BN recalibration needs at least one full batch of train images; "
                              "lower batch_size or use bn='running'.")
        variables = export.recalibrate_bn(model, variables, path_arr, batches)

    mesh = mesh_lib.make_data_mesh()
    feature_fn = features_lib.jit_feature_fn(
        lambda images: model.apply(variables, images, path_arr, False)["feature"], mesh)
    extract = dict(batch_size=config.batch_size, image_size=image_size, mesh=mesh)
    train_x, train_y, _ = features_lib.extract_features(
        feature_fn, train_src, max_examples=config.max_train or None, **extract)
    test_x, test_y, _ = features_lib.extract_features(
        feature_fn, test_src, max_examples=config.max_test or None, **extract)
    result = {
        "network": network, "task": task_name, "num_train": len(train_y), "num_test": len(test_y),
        "knn": knn_accuracy(train_x, train_y, test_x, test_y, k=config.knn_k,
                            temperature=config.knn_temperature, num_classes=task.num_classes),
        "linear": linear_probe_accuracy(train_x, train_y, test_x, test_y,
                                        num_classes=task.num_classes,
                                        num_steps=config.linear_steps,
                                        learning_rate=config.linear_lr,
                                        weight_decay=config.linear_weight_decay),
    }
    print(f"{network} on {task_name} ({result['num_train']} train / {result['num_test']} test): "
          f"kNN {result['knn']:.4f}  linear {result['linear']:.4f}", flush=True)
    return result
