"""SimSiam pre-training: the jitted data-parallel step and the training loop.

The step runs under `jax.shard_map` over the data axis: params are replicated, the batch is split,
batch norm synchronises its batch statistics over the axis (so 8 devices compute exactly what one
device computes on the whole batch). The loss is `pmean`'d, and with shard_map's replication
checking the gradient of the replicated params is then already the all-device mean: no further
`pmean(grads)` (that would divide by the device count once more; tests compare with one device).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging
from clu import metrics as clu_metrics
from jax.sharding import Mesh, PartitionSpec as P
from ml_collections import ConfigDict

from sdr_jax import losses, models
from sdr_jax.data import datasets, pipeline
from sdr_jax.errors import ConfigError
from sdr_jax.eval import features as features_lib
from sdr_jax.train import checkpoint as checkpoint_lib
from sdr_jax.train import mesh as mesh_lib
from sdr_jax.train import loop, optim, reporting
from sdr_jax.train.state import TrainState, create_train_state

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
            loss=loss, collapse_std=jax.lax.pmean(losses.collapse_std(z), DATA_AXIS))
        return state, metrics

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)


def num_train_steps(config: ConfigDict, dataset_size: int) -> int:
    if config.train.num_steps > 0:
        return config.train.num_steps
    steps = config.train.num_epochs * dataset_size // config.optim.batch_size
    if steps <= 0:
        raise ConfigError(f"train.num_epochs={config.train.num_epochs} gives no step for "
                          f"{dataset_size} images at batch_size={config.optim.batch_size}.")
    return steps


class Trainer:
    """Everything a SimSiam run needs, built once from the config."""

    def __init__(self, config: ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.mesh = mesh_lib.make_data_mesh()
        mesh_lib.local_batch_size(config.optim.batch_size, self.mesh)  # validates the batch split
        self.model = models.build_model(config.model)
        self.train_model = models.build_model(config.model, bn_axis_name=DATA_AXIS)
        self.path = jnp.asarray(models.path_spec(config.model).full_path())
        self.source = datasets.open_source(config.data.dataset, config.data.split,
                                           config.data.data_dir or None, build_if_missing=True)
        self.num_steps = num_train_steps(config, len(self.source))
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, self.num_steps)

    def init_state(self) -> TrainState:
        init = lambda rng: create_train_state(self.model, self.tx, rng,  # noqa: E731
                                              self.config.data.image_size, self.path)
        return jax.jit(init, out_shardings=mesh_lib.replicated(self.mesh))(
            jax.random.PRNGKey(self.config.seed))

    def abstract_state(self) -> TrainState:
        return jax.eval_shape(lambda: create_train_state(
            self.model, self.tx, jax.random.PRNGKey(0), self.config.data.image_size, self.path))

    def data_iterator(self):
        cfg = self.config
        ds = pipeline.pretrain_dataset(
            self.source, batch_size=mesh_lib.local_batch_size(cfg.optim.batch_size, self.mesh),
            seed=cfg.seed, aug_cfg=cfg.data.aug, num_workers=cfg.data.num_workers,
            process_index=jax.process_index(), process_count=jax.process_count())
        return iter(ds)

    def feature_fn(self, state: TrainState):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return features_lib.jit_feature_fn(
            lambda images: self.model.apply(variables, images, self.path, train=False)["feature"],
            self.mesh)

    def knn_eval(self, state: TrainState) -> dict[str, float]:
        cfg = self.config.eval
        return dict(features_lib.knn_task_accuracies(
            self.feature_fn(state), cfg.knn_tasks, open_task=self._open_task, mesh=self.mesh,
            batch_size=cfg.batch_size, image_size=self.config.data.image_size, k=cfg.knn_k,
            temperature=cfg.knn_temperature, max_train=cfg.knn_max_train or None))

    def _open_task(self, name: str):
        # Tasks of the embedded pool are read from the same variant (e.g. mosaic/small) as the pool.
        dataset = self.config.data.dataset
        same_family = datasets.parse_name(dataset)[0] == datasets.TASKS[name].dataset \
            if name in datasets.TASKS else False
        train, test, task = datasets.open_task(name, self.config.data.data_dir or None,
                                               dataset=dataset if same_family else None,
                                               build_if_missing=True)
        return train, test, task.num_classes


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from the workdir's latest checkpoint) and returns the final kNN results."""
    checkpoint_lib.check_workdir_config(workdir, config)
    trainer = Trainer(config, workdir)
    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints)
    is_lead = jax.process_index() == 0
    writer = reporting.MetricWriter(workdir, enabled=is_lead)
    data_iter = trainer.data_iterator()
    restored = checkpointer.restore(trainer.abstract_state())
    if restored is None:
        state = trainer.init_state()
    else:
        state, data_state = restored
        state = jax.device_put(state, mesh_lib.replicated(trainer.mesh))
        pipeline.set_iterator_state(data_iter, data_state["iterator"])
        logging.info("Resumed from step %d.", int(state.step))
    first_step = int(state.step)
    train_step = make_train_step(trainer.train_model, trainer.tx, trainer.mesh, trainer.path)
    print(f"SimSiam: {trainer.num_steps} steps of {config.optim.batch_size} images on "
          f"{trainer.mesh.devices.size} device(s); workdir {workdir}", flush=True)

    def step_fn(state, step):
        return train_step(state, mesh_lib.shard_batch(next(data_iter), trainer.mesh))

    def monitor(state, step):
        return {f"knn/{k}": v for k, v in trainer.knn_eval(state).items()}

    try:
        result = loop.run(
            state=state, first_step=first_step, num_steps=trainer.num_steps,
            train_cfg=config.train, step_fn=step_fn, checkpointer=checkpointer, writer=writer,
            data_state=lambda: {"iterator": pipeline.get_iterator_state(data_iter).decode()},
            log_extras=lambda step: {"lr": float(trainer.lr_schedule(step - 1))},
            monitor=monitor)
        accuracies = {}
        if result.finished and config.eval.knn_tasks:
            accuracies = trainer.knn_eval(result.state)
            writer.write_scalars(trainer.num_steps, {f"knn/{k}": v for k, v in accuracies.items()})
    finally:
        checkpointer.close()
        writer.close()
    if is_lead and accuracies:
        print(format_knn_table(accuracies), flush=True)
    return {"step": int(result.state.step), "finished": result.finished, "knn": accuracies}


def format_knn_table(accuracies: dict[str, float]) -> str:
    width = max(len(k) for k in accuracies)
    lines = [f"{'task':<{width}}  kNN top-1", f"{'-' * width}  ---------"]
    lines += [f"{name:<{width}}  {100 * acc:8.2f}%" for name, acc in accuracies.items()]
    return "\n".join(lines)
