"""Data-aware progressive SDR training with SiamKD (DESIGN §2.4-2.5), one SPMD step per stage.

Loss of a step, for the SSL method M of `config.method` (SimSiam, BYOL, ...): M(SDRnet; D0) +
mean over sampled paths of [M(sub-net; its subset) + λ · KD(sub-net → SDRnet)], KD being SiamKD
(negative cosine of a second predictor's output against the stop-gradient SDRnet projection of
the same image) or the L2 baseline, whatever M is (`methods/distill.py`). With
`sdr.freeze_shared`, the bracket's gradient reaches only the entries some path lacks (a path's
own groups, the SiamKD predictor): what every sub-net shares learns from M(SDRnet; D0) alone.

Distribution: the D0 batch is split over all devices and its batch norm is synchronised (SyncBN:
the SDRnet sees one global batch). The sampled paths are split over the devices too — every
device trains its own path(s) on its own subset batch in the same SPMD step, the path being
per-device data — with batch statistics per path, so each sub-net's BN sees exactly its own data,
on one device or on many. Several paths per device run one after another (a static
Python loop), so one device computes the same loss and gradients as many.

Running BN statistics are a function of the global batch and the paths, not of their layout:
they are updated once per step, by the SDRnet's pass over D0 (SyncBN over the global batch;
view 1's update, then view 2's, as in SimSiam; the method's state, e.g. BYOL's target network,
likewise). The sub-net passes normalise with their own batch statistics but do not update the
shared running ones. Why not: on one device the per-path loop would apply one momentum update
per path and view in sequence, across devices one averaged update, so the effective momentum
would depend on the layout (up to 0.7 apart for one step of 8 paths); a layout-free average of
the per-path statistics would be possible but buys nothing, since every sub-net's statistics are
recalibrated on its task's images before it is evaluated (`route`, the evaluation protocol), and
the SDRnet's own kNN uses the D0 statistics, which are its statistics. Logged metrics are
layout-free too: `collapse_std_sdrnet` is the std over the global D0 batch; the per-path terms
are computed on a path's whole batch, which lies on one device.

The host ships cropped and flipped uint8 views; the step applies each view's colour
augmentations on the device (`photometric.augment_views`): D0's views keyed by (seed, step,
view, index in the global D0 batch), each sub-net batch's by (seed, step, view, path slot,
index in the slot's batch), so a step's inputs are the same on any layout and after a resume.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from sdr_jax import methods, models
from sdr_jax.methods import distill
from sdr_jax.models import compact as compact_lib
from sdr_jax.models import export
from sdr_jax.data import assignments as assignments_lib
from sdr_jax.data import photometric, sdr_batches
from sdr_jax.core.errors import ConfigError
from sdr_jax.core.progressive import ProgressiveSchedule
from sdr_jax.train import checkpoint as checkpoint_lib
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train import step as step_lib
from sdr_jax.train import trainer as trainer_lib
from sdr_jax.train.state import TrainState

DATA_AXIS = mesh_lib.DATA_AXIS
SDRMetrics = step_lib.metrics_collection(
    "loss_sdrnet", "loss_subnet", "loss_kd", "collapse_std_sdrnet", "collapse_std_subnet",
    "collapse_std_subnet_min")


def sdr_loss(method: methods.SSLMethod, sdrnet_model, subnet_model, params, state: TrainState,
             batch: dict, full_path: jax.Array, *, kd: str, kd_weight: float, with_subnets: bool,
             compact_stage: Optional[int] = None, freeze_shared: bool = False):
    """This device's share of the SDR loss: (loss, (batch_stats, method_state, metric values)).

    Must run under `jax.shard_map` over DATA_AXIS (the BN statistics use it). With
    `compact_stage`, the sub-nets (paths of that progressive stage) run at their own width
    (`models/compact.py`); the SiamKD teacher, the SDRnet, stays masked. `freeze_shared`: the
    sub-net terms see the shared entries through a stop-gradient (module docstring).
    """
    loss_sdrnet, batch_stats, method_state, (out1, _) = method.forward(
        sdrnet_model, params, state.batch_stats, state.method_state, batch["d0_view1"],
        batch["d0_view2"], full_path)
    values = {"loss_sdrnet": loss_sdrnet,
              "collapse_std_sdrnet": methods.collapse_std(out1["z"], DATA_AXIS)}  # global batch
    if not with_subnets:
        zero = jnp.zeros((), jnp.float32)
        values.update(loss_subnet=zero, loss_kd=zero, collapse_std_subnet=zero,
                      collapse_std_subnet_min=zero)
        return loss_sdrnet, (batch_stats, method_state, _global(values))

    student = (subnet_model if compact_stage is None
               else compact_lib.CompactSubnets(subnet_model, compact_stage))
    student_params = (_freeze_shared(subnet_model, params, state.batch_stats) if freeze_shared
                      else params)

    def one_path(path, view1, view2):
        # Train-mode BN (batch statistics); the running-statistics updates (the network's and
        # the method state's) are dropped (module docstring: only the SDRnet's D0 pass updates
        # them, whatever the layout).
        loss, _, _, outs = method.forward(student, student_params, state.batch_stats,
                                          state.method_state, view1, view2, path)
        return loss, jnp.stack([outs[0]["kd"], outs[1]["kd"]]), methods.collapse_std(outs[0]["z"])

    # A Python loop over this device's paths (a static count: one on an 8-accelerator host).
    # `lax.scan` here, even with unroll=True, made the step 6x slower on XLA:CPU
    # (bench/sdr_step.py); compile time grows with the number of paths per device.
    num_paths = batch["paths"].shape[0]
    per_path = [one_path(batch["paths"][i], batch["sub_view1"][i], batch["sub_view2"][i])
                for i in range(num_paths)]
    loss_sub, kd_predictions, stds = (jnp.stack(terms) for terms in zip(*per_path))
    if kd_weight:
        # The SiamKD teacher (the SDRnet) on every path's two views: one vmapped pass.
        views = jnp.stack([batch["sub_view1"], batch["sub_view2"]], axis=1)  # (paths, 2, b, ...)
        loss_kd = distill.distill_losses(
            kd, subnet_model, params, state.batch_stats,
            kd_predictions.reshape(-1, *kd_predictions.shape[2:]),
            views.reshape(-1, *views.shape[2:]), full_path).reshape(num_paths, 2).mean(axis=1)
    else:  # no distillation: the teacher pass is skipped (the same gradients; loss_kd logs 0)
        loss_kd = jnp.zeros((num_paths,), jnp.float32)
    values.update(loss_subnet=loss_sub.mean(), loss_kd=loss_kd.mean(),
                  collapse_std_subnet=stds.mean(),
                  collapse_std_subnet_min=jax.lax.pmin(jax.lax.stop_gradient(stds).min(),
                                                         DATA_AXIS))
    return (loss_sdrnet + jnp.mean(loss_sub + kd_weight * loss_kd),
            (batch_stats, method_state, _global(values)))


KD_HEAD = "kd_predictor"  # the SiamKD predictor's params (models/simsiam.py): sub-nets' alone


def _freeze_shared(model, params, batch_stats):
    """`params` with a stop-gradient on the entries every sub-net shares (the SiamKD predictor
    excepted: only sub-nets use it). The mask depends on shapes only, so it is computed from
    zeros of the params' shapes: constants in the step, never the step's values."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    shared = export.shared_entries(model, {"params": zeros, "batch_stats": batch_stats})
    shared[KD_HEAD] = jax.tree.map(jnp.zeros_like, shared[KD_HEAD])
    return jax.tree.map(lambda p, s: jnp.where(s, jax.lax.stop_gradient(p), p), params, shared)


def _global(values: dict) -> dict:
    return {k: jax.lax.pmean(v, DATA_AXIS) for k, v in values.items()}


def make_sdr_step(method: methods.SSLMethod, sdrnet_model, subnet_model,
                  tx: optax.GradientTransformation, mesh: Mesh, full_path: jax.Array, *, kd: str,
                  kd_weight: float, with_subnets: bool, aug_cfg: ConfigDict | None,
                  seed: int = 0, compact_stage: Optional[int] = None,
                  freeze_shared: bool = False):
    """One jitted SPMD step `(state, global batch) -> (state, metrics)`, state donated.

    `sdrnet_model`: built with bn_axis_name=DATA_AXIS (SyncBN); `subnet_model`: the same with
    sync_bn=False (per-path batch statistics). `with_subnets=False` is progressive stage 0.
    Every view gets the photometric augmentations of `aug_cfg` on the device (module
    docstring); `aug_cfg=None`: the views are used as they come. `compact_stage`: the sub-nets
    run compact (`sdr.subnet_exec='compact'`), for the paths of this stage only (one step
    function, one compile, per stage); None: masked, any stage. `freeze_shared`: `sdr_loss`.
    """
    def loss_fn(params, state, batch):
        return sdr_loss(method, sdrnet_model, subnet_model, params, state, batch, full_path,
                        kd=kd, kd_weight=kd_weight, with_subnets=with_subnets,
                        compact_stage=compact_stage, freeze_shared=freeze_shared)

    return step_lib.make_step(loss_fn, tx, mesh, metrics=SDRMetrics,
                              after_update=trainer_lib.method_update(method),
                              prepare_batch=None if aug_cfg is None else device_augment(aug_cfg,
                                                                                         seed))


def device_augment(aug_cfg: ConfigDict, seed: int) -> step_lib.PrepareBatch:
    """`prepare_batch(batch, step)` for the SDR step (under `jax.shard_map` over DATA_AXIS): D0's
    views as pre-training's (`pretrain.device_augment`), and each path slot's sub-net batch
    from fold_in(view_key(seed, step, view), global slot)."""
    def prepare_batch(batch, step):
        batch = dict(batch)
        device = jax.lax.axis_index(DATA_AXIS)
        local = batch["d0_view1"].shape[0]
        batch["d0_view1"], batch["d0_view2"] = photometric.augment_views(
            batch["d0_view1"], batch["d0_view2"], aug_cfg, seed, step, first_index=device * local)
        if "paths" in batch:
            paths_local = batch["sub_view1"].shape[0]
            batch["sub_view1"], batch["sub_view2"] = photometric.augment_views(
                batch["sub_view1"], batch["sub_view2"], aug_cfg, seed, step,
                slots=device * paths_local + jnp.arange(paths_local))
        return batch
    return prepare_batch


class SDRTrainer(trainer_lib.Trainer):
    name = "SDR"

    def __init__(self, config: ConfigDict, workdir: str):
        super().__init__(config, workdir)
        cfg = config.sdr
        self.spec = models.path_spec(config.model)
        if self.spec.num_groups == 0:
            raise ConfigError("SDR training needs model.sdr.num_groups >= 1 (individual groups).")
        if not config.model.kd_head:
            raise ConfigError("SDR training needs model.kd_head=True (the SiamKD predictor).")
        distill.check(cfg.kd)
        if cfg.subnet_exec not in compact_lib.EXECUTIONS:
            raise ConfigError(f"sdr.subnet_exec={cfg.subnet_exec!r}; choose one of "
                              f"{compact_lib.EXECUTIONS}.")
        num_devices = self.mesh.devices.size
        self.paths_per_step = cfg.paths_per_step or num_devices
        if self.paths_per_step % num_devices:
            raise ConfigError(f"sdr.paths_per_step={self.paths_per_step} does not split over "
                              f"{num_devices} devices; use a multiple of {num_devices}.")
        self.schedule = ProgressiveSchedule.make(self.spec, self.num_steps, cfg.stage_fractions,
                                                 cfg.progressive)
        if not cfg.assignments:
            raise ConfigError("sdr.assignments is empty: run launch/cluster.py and pass "
                              "--config.sdr.assignments=CLUSTER_WORKDIR/assignments.npz.")
        self.assignments = assignments_lib.load(cfg.assignments, num_groups=self.spec.num_groups,
                                                num_blocks=self.spec.num_blocks)
        self.sdrnet_model = models.build_model(config.model, bn_axis_name=DATA_AXIS)
        self.subnet_model = models.build_model(config.model, bn_axis_name=DATA_AXIS,
                                               sync_bn=False)

    def init_state(self) -> TrainState:
        """A fresh state; with `sdr.init_from`, the SDRnet starts from a pre-training run's weights.

        Stage 0 of progressive training trains the SDRnet alone on D0, which is pre-training
        on the pool: a finished pre-training run (of the same method) of the same model size
        is that stage done already. Every parameter and BN statistic of the run is copied (the
        SDRnet with all groups is the same network); what pre-training lacks (the SiamKD
        predictor) keeps its fresh init, the method state is made afresh from the copied
        network (BYOL: the target starts as a copy of it) and the optimiser starts afresh.
        """
        state = super().init_state()
        source = self.config.sdr.init_from
        if not source:
            return state
        _, variables, step = checkpoint_lib.load_run(source)
        params = _graft(state.params, variables["params"], source)
        batch_stats = _graft(state.batch_stats, variables["batch_stats"], source)
        # The method state starts from the grafted network, as it starts from the initial one.
        method_state = self.method.init_state({"params": params, "batch_stats": batch_stats})
        params, batch_stats, method_state = jax.device_put((params, batch_stats, method_state),
                                                           mesh_lib.replicated(self.mesh))
        if jax.process_index() == 0:
            print(f"SDR: the SDRnet starts from {source} (step {step})", flush=True)
        return state.replace(params=params, batch_stats=batch_stats, method_state=method_state)

    def make_data(self, first_step: int, data_state: dict | None):
        cfg = self.config
        batches = sdr_batches.SDRBatches(
            self.source, self.assignments, self.schedule,
            source_ids=sdr_batches.record_ids(self.source),
            d0_batch_size=cfg.optim.batch_size, paths_per_step=self.paths_per_step,
            subnet_batch_size=cfg.sdr.subnet_batch_size or cfg.optim.batch_size // self.paths_per_step,
            seed=cfg.seed, aug_cfg=cfg.data.aug, process_index=jax.process_index(),
            process_count=jax.process_count())
        return iter(sdr_batches.sdr_dataset(batches, first_step + 1, self.num_steps,
                                            cfg.data.num_workers))

    def data_state(self, data_iter) -> dict:
        return {}  # a step's batch is a function of (seed, step): the step is the whole state

    def make_step_fn(self):
        cfg = self.config.sdr
        make = lambda with_subnets, stage=None: make_sdr_step(  # noqa: E731
            self.method, self.sdrnet_model, self.subnet_model, self.tx, self.mesh,
            self.full_path, kd=cfg.kd, kd_weight=cfg.kd_weight, with_subnets=with_subnets,
            aug_cfg=self.config.data.aug, seed=self.config.seed, compact_stage=stage,
            freeze_shared=cfg.freeze_shared)
        # One step function per progressive stage: stage 0 trains the SDRnet alone; compact
        # sub-nets change shapes with the stage, masked ones share one function for all stages.
        compact = cfg.subnet_exec == "compact"
        masked = None if compact else make(True)
        steps = {0: make(False)}
        steps.update({s: make(True, s) if compact else masked
                      for s in range(1, self.spec.max_stage + 1)})
        self.step_functions = steps  # tests count their compiles

        def step_fn(state, batch):
            stage = self.spec.stage_of(batch["paths"][0]) if "paths" in batch else 0
            return steps[stage](state, mesh_lib.shard_batch(batch, self.mesh))
        return step_fn

    def log_extras(self, step: int) -> dict[str, float]:
        stage = self.schedule.stage_at(step)
        return {**super().log_extras(step), "stage": stage,
                "path_space": self.schedule.space_size(stage)}


def _graft(target: Any, source: Any, where: str) -> Any:
    """`target` with every leaf that `source` has (same key path) replaced by the source's.

    A source leaf the target lacks, or one of another shape, means another model: an error."""
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(source)}
    used = set()

    def take(keypath, leaf):
        key = jax.tree_util.keystr(keypath)
        if key not in flat:
            return leaf
        if np.shape(flat[key]) != np.shape(leaf):
            raise ConfigError(f"sdr.init_from={where}: {key} has shape {np.shape(flat[key])} "
                              f"there but {np.shape(leaf)} in this SDRnet; use a SimSiam run of "
                              "the same model size.")
        used.add(key)
        return jnp.asarray(flat[key], leaf.dtype)

    grafted = jax.tree_util.tree_map_with_path(take, target)
    if set(flat) - used:
        missing = sorted(set(flat) - used)
        raise ConfigError(f"sdr.init_from={where}: {missing[0]} (and {len(missing) - 1} more) "
                          "has no place in this SDRnet; use a SimSiam run of the same model.")
    return grafted


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Progressive SDR training (resuming from the workdir); returns the SDRnet's final kNN."""
    return trainer_lib.fit(SDRTrainer, config, workdir)
