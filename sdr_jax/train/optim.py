"""The optimiser: SGD with momentum and L2 weight decay (SimSiam) or LARS (BYOL), cosine lr
with optional linear warm-up, optionally a fixed predictor lr."""
from __future__ import annotations

import jax
import optax
from ml_collections import ConfigDict

from sdr_jax.core.errors import ConfigError

OPTIMIZERS = ("sgd", "lars")


def peak_learning_rate(optim_cfg: ConfigDict) -> float:
    """The linear scaling rule of SimSiam: lr = base_lr * batch_size / 256."""
    return optim_cfg.base_lr * optim_cfg.batch_size / 256


def learning_rate_schedule(optim_cfg: ConfigDict, num_steps: int) -> optax.Schedule:
    peak = peak_learning_rate(optim_cfg)
    warmup = min(optim_cfg.warmup_steps, num_steps - 1)
    if warmup > 0:
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, num_steps)
    return optax.cosine_decay_schedule(peak, max(num_steps, 1))


def make_optimizer(optim_cfg: ConfigDict, num_steps: int,
                   predictors: tuple[str, ...] = ("predictor",)
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (optimiser, backbone lr schedule).

    With `fix_pred_lr` the `predictors` (top-level modules of the params, named exactly: the
    method's, `SSLMethod.predictors`) keep the peak lr throughout (SimSiam §4.2: a decaying
    predictor lr hurts, the predictor must keep adapting to the latest representations);
    everything else follows the cosine schedule. That is SimSiam's predictor h only: the SDR
    SiamKD head (`kd_predictor`) is no part of SimSiam and the SDR sources give it no lr of its
    own, so it follows the schedule like the backbone and projector.
    """
    if optim_cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optim.optimizer={optim_cfg.optimizer!r}; choose one of "
                          f"{', '.join(OPTIMIZERS)}.")
    schedule = learning_rate_schedule(optim_cfg, num_steps)

    def sgd(lr):
        if optim_cfg.optimizer == "lars":
            # As BYOL (and SimCLR): biases and BN parameters (the 1-D leaves) get neither
            # weight decay nor the layer-wise trust ratio.
            def matrices(params):
                return jax.tree.map(lambda p: p.ndim > 1, params)
            return optax.lars(lr, weight_decay=optim_cfg.weight_decay,
                              weight_decay_mask=matrices, trust_ratio_mask=matrices,
                              momentum=optim_cfg.momentum)
        return optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay),
                           optax.sgd(lr, momentum=optim_cfg.momentum))

    if not optim_cfg.fix_pred_lr:
        return sgd(schedule), schedule
    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "predictor" if path[0].key in predictors else "rest", params)

    tx = optax.multi_transform(
        {"rest": sgd(schedule), "predictor": sgd(peak_learning_rate(optim_cfg))}, labels)
    return tx, schedule
