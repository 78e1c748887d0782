"""What pre-training and SDR training share: the run's set-up, resume, the loop and final kNN.

A kind of training subclasses `Trainer` with its data and step (`make_data`, `make_step_fn`)
and calls `fit(trainer)`; the SSL method (`config.method`) is built here for every kind.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from sdr_jax import methods, models
from sdr_jax.data import datasets, tasks
from sdr_jax.core.errors import ConfigError
from sdr_jax.eval import features as features_lib
from sdr_jax.train import checkpoint as checkpoint_lib
from sdr_jax.train import loop, optim, reporting
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train.state import TrainState, create_train_state

DATA_AXIS = mesh_lib.DATA_AXIS


def check_config(config: ConfigDict) -> None:
    """The schedule, cadence and evaluation fields every run needs; the model, data and method
    fields are checked by building them (`Trainer.__init__`, `Trainer.abstract_state`)."""
    train = config.train
    for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
        if train[field] < 1:
            raise ConfigError(f"train.{field}={train[field]}; it must be >= 1.")
    for field in ("num_steps", "max_steps_per_run", "knn_every"):
        if train[field] < 0:
            raise ConfigError(f"train.{field}={train[field]}; it must be >= 0 (0 = "
                              f"{_ZERO_MEANS[field]}).")
    if not config.optim.base_lr > 0:
        raise ConfigError(f"optim.base_lr={config.optim.base_lr}; it must be > 0.")
    for name in config.eval.knn_tasks:  # folder tasks are found in the run's data_dir
        tasks.get_task(name, config.data.data_dir or None)


_ZERO_MEANS = {"num_steps": "use train.num_epochs", "max_steps_per_run": "no limit",
               "knn_every": "only at the end"}


def num_train_steps(config: ConfigDict, dataset_size: int) -> int:
    if config.train.num_steps > 0:
        return config.train.num_steps
    steps = config.train.num_epochs * dataset_size // config.optim.batch_size
    if steps <= 0:
        raise ConfigError(f"train.num_epochs={config.train.num_epochs} gives no step for "
                          f"{dataset_size} images at batch_size={config.optim.batch_size}.")
    return steps


class Trainer:
    """The model, data source, optimiser and evaluation of a run, built once from its config."""

    name = "training"

    def __init__(self, config: ConfigDict, workdir: str):
        check_config(config)
        self.config = config
        self.workdir = workdir
        self.mesh = mesh_lib.make_data_mesh()
        mesh_lib.local_batch_size(config.optim.batch_size, self.mesh)  # validates the batch split
        self.model = models.build_model(config.model)
        self.full_path = jnp.asarray(models.path_spec(config.model).full_path())
        self.source = datasets.open_source(config.data.dataset, config.data.split,
                                           config.data.data_dir or None, build_if_missing=True)
        if config.data.domains:
            self.source = datasets.restrict_to_domains(self.source, config.data.domains)
        self.num_steps = num_train_steps(config, len(self.source))
        self.method = methods.build(config.method, self.num_steps)
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, self.num_steps,
                                                         self.method.predictors)

    # -- what a kind of training provides -----------------------------------------------------
    def make_data(self, first_step: int, data_state: dict | None) -> Iterator:
        raise NotImplementedError

    def data_state(self, data_iter: Iterator) -> dict:
        raise NotImplementedError

    def make_step_fn(self) -> Callable[[TrainState, Any], tuple[TrainState, Any]]:
        """`(state, host batch) -> (state, metrics)`: shards the batch and runs the jitted step."""
        raise NotImplementedError

    def log_extras(self, step: int) -> dict[str, float]:
        return {"lr": float(self.lr_schedule(step - 1)), **self.method.log_extras(step)}

    # -- shared -------------------------------------------------------------------------------
    def _create_state(self, rng):
        return create_train_state(self.model, self.tx, rng, self.config.data.image_size,
                                  self.full_path, self.method)

    def init_state(self) -> TrainState:
        return jax.jit(self._create_state, out_shardings=mesh_lib.replicated(self.mesh))(
            jax.random.PRNGKey(self.config.seed))

    def abstract_state(self) -> TrainState:
        return jax.eval_shape(self._create_state, jax.random.PRNGKey(0))

    def feature_fn(self, state: TrainState, path: jax.Array | None = None):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        path = self.full_path if path is None else path
        return features_lib.jit_feature_fn(
            lambda images: self.model.apply(variables, images, path, train=False)["feature"],
            self.mesh)

    def knn_eval(self, state: TrainState) -> dict[str, float]:
        cfg = self.config.eval
        return dict(features_lib.knn_task_accuracies(
            self.feature_fn(state), cfg.knn_tasks, open_task=self._open_task, mesh=self.mesh,
            batch_size=cfg.batch_size, image_size=self.config.data.image_size, k=cfg.knn_k,
            temperature=cfg.knn_temperature, max_train=cfg.knn_max_train or None))

    def _open_task(self, name: str):
        train, test, task = tasks.open_task(name, self.config.data.data_dir or None,
                                            pool_dataset=self.config.data.dataset,
                                            build_if_missing=True)
        return train, test, task.num_classes


def method_update(method: methods.SSLMethod) -> Callable[[TrainState], TrainState]:
    """The method's state update after an optimiser step, for `step.make_step(after_update=)`."""
    def update(state: TrainState) -> TrainState:
        return state.replace(method_state=method.after_update(state.method_state, state.params,
                                                              state.step))
    return update


def fit(trainer_cls: type[Trainer], config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from the workdir's latest checkpoint) and returns the final kNN results.

    The whole config is validated (the trainer and the state's shapes built) before anything is
    written to the workdir: a typo must not leave a `config.json` that refuses the fixed command.
    """
    trainer = trainer_cls(config, workdir)
    abstract_state = trainer.abstract_state()
    with checkpoint_lib.workdir_lock(workdir):
        checkpoint_lib.check_workdir_config(workdir, config)
        return _fit_locked(trainer, abstract_state, config, workdir)


def _fit_locked(trainer: Trainer, abstract_state: Any, config: ConfigDict, workdir: str
                ) -> dict[str, Any]:
    checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.train.keep_checkpoints)
    is_lead = jax.process_index() == 0
    writer = reporting.MetricWriter(workdir, enabled=is_lead)
    restored = checkpointer.restore(abstract_state)
    if restored is None:
        state, data_state = trainer.init_state(), None
    else:
        state, data_state = restored
        state = jax.device_put(state, mesh_lib.replicated(trainer.mesh))
    first_step = int(state.step)
    data_iter = trainer.make_data(first_step, data_state)
    if is_lead:
        resumed = f", resuming at step {first_step}" if first_step else ""
        print(f"{trainer.name}: {trainer.num_steps} steps of {config.optim.batch_size} images on "
              f"{trainer.mesh.devices.size} device(s); workdir {workdir}{resumed}", flush=True)

    def monitor(state, step):
        return {f"knn/{k}": v for k, v in trainer.knn_eval(state).items()}

    try:
        result = loop.run(
            state=state, first_step=first_step, num_steps=trainer.num_steps,
            train_cfg=config.train, batches=data_iter, step_fn=trainer.make_step_fn(),
            checkpointer=checkpointer, writer=writer,
            data_state=lambda: trainer.data_state(data_iter), log_extras=trainer.log_extras,
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
