"""kNN and linear-probe accuracy of one network on a downstream task, to compare a routed
sub-net with its baselines: an exported sub-net (route's best_subnet/), the SDRnet (all
groups) or one of its paths, or a plain SimSiam run.

Every score follows the protocol of `eval/protocol.py` (the routing's split: memory = train
minus the routing-validation part, queries = the test split); the raw-pixel and random-init
baselines come with it. BN statistics follow `config.bn` as in routing: a training run's
path is recalibrated on the task's train images ('recalibrate') or uses the running statistics
('running'); an exported sub-net already carries the statistics it was exported with.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
from ml_collections import ConfigDict

from sdr_jax.core import paths

from sdr_jax.core.errors import ConfigError
from sdr_jax.eval import protocol
from sdr_jax.models import build_model, export, path_spec
from sdr_jax.train import checkpoint
from sdr_jax.core import mesh as mesh_lib


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


def evaluate(config: ConfigDict, workdir: str, task_name: str, path: Optional[str] = None,
             baselines: bool = True) -> dict:
    """kNN and linear-probe scores of the network in `workdir` on `task_name` (protocol.py):
    {'network', 'task', 'knn': {'validation', 'test'}, 'linear', 'split' sizes, 'protocol'}
    plus, with `baselines`, the raw-pixel and random-init columns on the same split."""
    protocol.check_config(config)
    if os.path.exists(os.path.join(workdir, "model.json")):
        if path:
            raise ConfigError(f"{workdir} is an exported sub-net (one path); drop --path.")
        model, variables = export.load_exported(workdir)
        meta = export.exported_meta(workdir)
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
    evaluation = protocol.Evaluation(
        config, task_name, data_dir=config.data_dir or data_dir or None,
        pool_dataset=pool_dataset, image_size=config.image_size or image_size,
        mesh=mesh_lib.make_data_mesh())
    # An exported sub-net already carries the BN statistics it was routed with.
    scores = evaluation.network(model, variables, path_arr, linear=True,
                                recalibrate=path_arr is not None)
    split = evaluation.data.audit(config)
    result = {"network": network, "task": task_name, **scores,
              "split": {key: split[key] for key in ("val_fraction", "split_seed", "num_validation",
                                                    "num_memory", "num_test")},
              "protocol": protocol.describe(config)}
    if baselines:
        result["baselines"] = {"pixels": evaluation.pixels(),
                               "random_init": evaluation.random_init(model, path_arr,
                                                                     linear=True)}
    print(format_result(result), flush=True)
    return result


def format_result(result: dict) -> str:
    """One line per column: kNN and linear probe on the test queries, with 95% intervals."""
    split = result["split"]
    rows = [(result["network"], result)] + [
        (label, result["baselines"][key]) for key, label in (("pixels", "raw pixels"),
                                                             ("random_init", "random init"))
        if "baselines" in result]
    width = max(len(label) for label, _ in rows)
    lines = [f"{result['task']}: memory {split['num_memory']}, validation "
             f"{split['num_validation']} (seed {split['split_seed']}), test {split['num_test']}; "
             "% [95% Wilson interval] on test"]
    for label, scores in rows:
        linear = scores["linear"]
        probe = (f"  linear {protocol.format_cell(linear['test'])} (wd {linear['weight_decay']:g}"
                 " chosen on validation)" if linear else "")
        lines.append(f"{label:<{width}}  kNN {protocol.format_cell(scores['knn']['test'])}{probe}")
    return "\n".join(lines)
