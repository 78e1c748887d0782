"""The one training-step skeleton: value_and_grad -> optimiser update -> extra-state update,
under `jax.shard_map` over the data axis, jitted once with the state donated.

The cross-device gradient rule, written here once: `loss_fn` returns this device's mean loss
over its (equal) share of the batch; the step differentiates `pmean(loss)`, the global mean.
With shard_map's replication checking (`check_vma`), the gradient with respect to the
replicated params of that replicated loss is already the global-batch gradient: no further
`pmean(grads)` (that would divide by the device count once more; the tests compare 8 devices
with one device on the whole batch).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from clu import metrics as clu_metrics
from jax.sharding import Mesh, PartitionSpec as P

from sdr_jax.train.state import TrainState

# loss_fn(params, state, batch) -> (this device's loss, (batch_stats, method_state, metrics)).
# The metric values must already be global (reduced over the data axis where they need it).
LossFn = Callable[[Any, TrainState, Any], tuple[jax.Array, tuple[Any, Any, dict]]]
# prepare_batch(this device's share of the host batch, 1-based step) -> the loss's batch.
PrepareBatch = Callable[[Any, jax.Array], Any]


def metrics_collection(*names: str) -> type[clu_metrics.Collection]:
    """A clu Collection averaging `loss`, `names` and the step's gradient and update norms."""
    return clu_metrics.Collection.create(**{
        name: clu_metrics.Average.from_output(name)
        for name in ("loss", *names, "grad_norm", "update_norm")})


def make_step(loss_fn: LossFn, tx: optax.GradientTransformation, mesh: Mesh, *,
              metrics: type[clu_metrics.Collection],
              after_update: Callable[[TrainState], TrainState] | None = None,
              prepare_batch: PrepareBatch | None = None, batch_spec: Any = None
              ) -> Callable[[TrainState, Any], tuple[TrainState, clu_metrics.Collection]]:
    """`(state, global batch) -> (state, metrics)`, jitted SPMD, the state donated.

    `after_update(state)` sees the state with the new params, optimiser, batch and method state,
    `state.step` still the index of this step (0-based): e.g. BYOL's EMA of the target network,
    or a projection of the params (clustering's unit-norm centroids). `metrics` is a
    `metrics_collection(...)` naming the values `loss_fn` reports; `loss`, `grad_norm` (of the
    global gradient) and `update_norm` (of the optimiser's update) are added here. The batch is
    split over the mesh's axes on its leading dimension (`batch_spec` to change that).
    `prepare_batch(batch, step)` turns this device's share of the host batch into the model's
    input first (the device augmentations), `step` being the 1-based number of this step.
    """
    sharded = jax.shard_map(make_update(loss_fn, tx, mesh.axis_names, metrics=metrics,
                                        after_update=after_update, prepare_batch=prepare_batch),
                            mesh=mesh,
                            in_specs=(P(), P(mesh.axis_names) if batch_spec is None else batch_spec),
                            out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)


def make_update(loss_fn: LossFn, tx: optax.GradientTransformation, axes: Any, *,
                metrics: type[clu_metrics.Collection],
                after_update: Callable[[TrainState], TrainState] | None = None,
                prepare_batch: PrepareBatch | None = None
                ) -> Callable[[TrainState, Any], tuple[TrainState, clu_metrics.Collection]]:
    """The body of `make_step` for one device's share of the batch, to run inside a
    `jax.shard_map` over `axes` (e.g. in a `lax.scan` over batches, as the clustering job's
    on-device epochs)."""

    def step(state: TrainState, batch: Any):
        if prepare_batch is not None:
            batch = prepare_batch(batch, state.step + 1)

        def objective(params):
            loss, aux = loss_fn(params, state, batch)
            return jax.lax.pmean(loss, axes), aux

        (loss, (batch_stats, method_state, values)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state, method_state=method_state)
        if after_update is not None:
            new = after_update(new)
        report = metrics.single_from_model_output(
            loss=loss, grad_norm=optax.global_norm(grads),
            update_norm=optax.global_norm(updates), **values)
        return new.replace(step=state.step + 1), report

    return step
