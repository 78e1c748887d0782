"""SimSiam pre-training: the jitted data-parallel step and the training loop.

The step runs under `jax.shard_map` over the data axis: params are replicated, the batch is split,
batch norm synchronises its batch statistics over the axis (so 8 devices compute exactly what one
device computes on the whole batch). The loss is `pmean`'d, and with shard_map's replication
checking the gradient of the replicated params is then already the all-device mean: no further
`pmean(grads)` (that would divide by the device count once more; tests compare with one device).
Running BN statistics (SyncBN: view 1's update, then view 2's) and the logged metrics (the loss,
`collapse_std` as the std over the global batch) are functions of the global batch too.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from clu import metrics as clu_metrics
from jax.sharding import Mesh, PartitionSpec as P
from ml_collections import ConfigDict

from sdr_jax import models
from sdr_jax.methods import losses
from sdr_jax.data import input_pipeline
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train import trainer as trainer_lib
from sdr_jax.train.state import TrainState

DATA_AXIS = mesh_lib.DATA_AXIS


TrainMetrics = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_output("loss"),
    collapse_std=clu_metrics.Average.from_output("collapse_std"))


def simsiam_forward(model, params, batch_stats, batch, path):
    """Both views through the network (BN statistics per view, as in SimSiam); returns
    (local loss, new batch_stats, z of view 1)."""
    out1, new = model.apply({"params": params, "batch_stats": batch_stats}, batch["view1"], path,
                            train=True, mutable=["batch_stats"])
    out2, new = model.apply({"params": params, "batch_stats": new["batch_stats"]}, batch["view2"],
                            path, train=True, mutable=["batch_stats"])
    loss = losses.simsiam_loss(out1["p"], out2["p"], out1["z"], out2["z"])
    return loss, new["batch_stats"], out1["z"]


def make_train_step(model, tx: optax.GradientTransformation, mesh: Mesh, path: jax.Array
                    ) -> Callable[[TrainState, dict], tuple[TrainState, TrainMetrics]]:
    """One jitted SPMD step `(state, global batch) -> (state, metrics)`; the state is donated.

    `model` must be built with `bn_axis_name=DATA_AXIS`.
    """

    def step(state: TrainState, batch: dict):
        def loss_fn(params):
            loss, batch_stats, z = simsiam_forward(model, params, state.batch_stats, batch, path)
            return jax.lax.pmean(loss, DATA_AXIS), (batch_stats, z)

        (loss, (batch_stats, z)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
        metrics = TrainMetrics.single_from_model_output(
            loss=loss, collapse_std=losses.collapse_std(z, DATA_AXIS))  # over the global batch
        return state, metrics

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)


class SimSiamTrainer(trainer_lib.Trainer):
    name = "SimSiam"

    def __init__(self, config: ConfigDict, workdir: str):
        super().__init__(config, workdir)
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

    def make_step_fn(self, data_iter):
        train_step = make_train_step(self.train_model, self.tx, self.mesh, self.full_path)
        return lambda state, step: train_step(state, mesh_lib.shard_batch(next(data_iter),
                                                                          self.mesh))


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains SimSiam (resuming from the workdir's latest checkpoint); returns final kNN results."""
    return trainer_lib.fit(SimSiamTrainer, config, workdir)
