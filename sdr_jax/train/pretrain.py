"""Pre-training with any SSL method (`config.method.name`: SimSiam, BYOL, ...) on the pool D0.

The step (`train/step.py`) runs under `jax.shard_map` over the data axis: params are replicated,
the batch is split, batch norm synchronises its batch statistics over the axis (so 8 devices
compute exactly what one device computes on the whole batch). Running BN statistics (SyncBN:
view 1's update, then view 2's), the method's state (BYOL's target network) and the logged
metrics (the loss, `collapse_std` as the std over the global batch of view 1's projections)
are functions of the global batch too.
"""
from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from sdr_jax import methods, models
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.data import input_pipeline
from sdr_jax.train import step as step_lib
from sdr_jax.train import trainer as trainer_lib

DATA_AXIS = mesh_lib.DATA_AXIS
TrainMetrics = step_lib.metrics_collection("collapse_std")


def make_train_step(method: methods.SSLMethod, model, tx: optax.GradientTransformation,
                    mesh: Mesh, path: jax.Array):
    """One jitted SPMD step `(state, global batch) -> (state, metrics)`; the state is donated.

    `model` must be built with `bn_axis_name=DATA_AXIS`.
    """

    def loss_fn(params, state, batch):
        loss, batch_stats, method_state, (out1, _) = method.forward(
            model, params, state.batch_stats, state.method_state, batch["view1"], batch["view2"],
            path)
        return loss, (batch_stats, method_state,
                      {"collapse_std": methods.collapse_std(out1["z"], DATA_AXIS)})

    return step_lib.make_step(loss_fn, tx, mesh, metrics=TrainMetrics,
                              after_update=trainer_lib.method_update(method))


class PretrainTrainer(trainer_lib.Trainer):

    def __init__(self, config: ConfigDict, workdir: str):
        super().__init__(config, workdir)
        self.name = f"{self.method.name} pre-training"
        self.train_model = models.build_model(config.model, bn_axis_name=DATA_AXIS)

    def make_data(self, first_step: int, data_state: dict | None):
        cfg = self.config
        data_iter = iter(input_pipeline.pretrain_dataset(
            self.source, batch_size=mesh_lib.local_batch_size(cfg.optim.batch_size, self.mesh),
            seed=cfg.seed, aug_cfg=cfg.data.aug, num_workers=cfg.data.num_workers,
            process_index=jax.process_index(), process_count=jax.process_count()))
        if data_state is not None:
            input_pipeline.set_iterator_state(data_iter, data_state["iterator"])
        return data_iter

    def data_state(self, data_iter) -> dict:
        return {"iterator": input_pipeline.get_iterator_state(data_iter).decode()}

    def make_step_fn(self):
        train_step = make_train_step(self.method, self.train_model, self.tx, self.mesh,
                                     self.full_path)
        return lambda state, batch: train_step(state, mesh_lib.shard_batch(batch, self.mesh))


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains (resuming from the workdir's latest checkpoint); returns final kNN results."""
    return trainer_lib.fit(PretrainTrainer, config, workdir)
