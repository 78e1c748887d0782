"""Pre-training with any SSL method (`config.method.name`: SimSiam, BYOL, ...) on the pool D0.

The step (`train/step.py`) runs under `jax.shard_map` over the data axis: params are replicated,
the batch is split, batch norm synchronises its batch statistics over the axis (so 8 devices
compute exactly what one device computes on the whole batch). Running BN statistics (SyncBN:
view 1's update, then view 2's), the method's state (BYOL's target network) and the logged
metrics (the loss, `collapse_std` as the std over the global batch of view 1's projections)
are functions of the global batch too.

The host pipeline ships cropped and flipped uint8 views; the step applies each view's colour
augmentations on the device first (`photometric.augment_views`, keyed by (seed, step, view,
index in the global batch): the same on any number of devices, and the same after a resume).
"""
from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from sdr_jax import methods, models
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.data import input_pipeline, photometric
from sdr_jax.train import step as step_lib
from sdr_jax.train import trainer as trainer_lib

DATA_AXIS = mesh_lib.DATA_AXIS
TrainMetrics = step_lib.metrics_collection("collapse_std")


def make_train_step(method: methods.SSLMethod, model, tx: optax.GradientTransformation,
                    mesh: Mesh, path: jax.Array, *, aug_cfg: ConfigDict | None, seed: int = 0):
    """One jitted SPMD step `(state, global batch) -> (state, metrics)`; the state is donated.

    `model` must be built with `bn_axis_name=DATA_AXIS`. The batch's `view1` / `view2` get the
    photometric augmentations of `aug_cfg` (`config.data.aug`) on the device, drawn from
    `seed` and the step; `aug_cfg=None`: the views are used as they come.
    """

    def loss_fn(params, state, batch):
        loss, batch_stats, method_state, (out1, _) = method.forward(
            model, params, state.batch_stats, state.method_state, batch["view1"], batch["view2"],
            path)
        return loss, (batch_stats, method_state,
                      {"collapse_std": methods.collapse_std(out1["z"], DATA_AXIS)})

    return step_lib.make_step(loss_fn, tx, mesh, metrics=TrainMetrics,
                              after_update=trainer_lib.method_update(method),
                              prepare_batch=None if aug_cfg is None else device_augment(aug_cfg,
                                                                                         seed))


def device_augment(aug_cfg: ConfigDict, seed: int) -> step_lib.PrepareBatch:
    """`prepare_batch(batch, step)` for the step (under `jax.shard_map` over DATA_AXIS): each
    view's photometric augmentations, example i of the global batch drawing from
    fold_in(view_key(seed, step, view), i)."""
    def prepare_batch(batch, step):
        local = batch["view1"].shape[0]
        view1, view2 = photometric.augment_views(
            batch["view1"], batch["view2"], aug_cfg, seed, step,
            first_index=jax.lax.axis_index(DATA_AXIS) * local)
        return {**batch, "view1": view1, "view2": view2}
    return prepare_batch


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
                                     self.full_path, aug_cfg=self.config.data.aug,
                                     seed=self.config.seed)
        return lambda state, batch: train_step(state, mesh_lib.shard_batch(batch, self.mesh))


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains (resuming from the workdir's latest checkpoint); returns final kNN results."""
    return trainer_lib.fit(PretrainTrainer, config, workdir)
