"""Distillation of a sub-net towards the SDRnet (DESIGN §2.5), whatever the SSL method.

Each sub-net's SiamKD head (`kd`, a second predictor) predicts the SDRnet's projection z of the
same image; the SDRnet side is the teacher: stop-gradient, one way. SiamKD scores the
prediction in SimSiam's negative-cosine form; the L2 baseline by squared distance.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sdr_jax import methods
from sdr_jax.core.errors import ConfigError


def siamkd_loss(kd_prediction: jax.Array, teacher_z: jax.Array) -> jax.Array:
    """SiamKD: a sub-net predicts the SDRnet's projection of the same image, one way
    (stop-gradient on the teacher), in SimSiam's negative-cosine form."""
    return methods.negative_cosine(kd_prediction, teacher_z)


def l2_distill_loss(kd_prediction: jax.Array, teacher_z: jax.Array) -> jax.Array:
    """The L2 distillation baseline: mean squared error to the stop-gradient teacher, averaged
    over examples *and* dimensions (PyTorch's `mse_loss`). Summing over the 512 dimensions of
    the un-normalised projection instead gives a loss ~500x SimSiam's, and the SDR step
    diverged to NaN within 40 steps at the mosaic recipe's learning rate."""
    teacher_z = jax.lax.stop_gradient(teacher_z).astype(jnp.float32)
    return jnp.mean((kd_prediction.astype(jnp.float32) - teacher_z) ** 2)


KD_LOSSES = {"siamkd": siamkd_loss, "l2": l2_distill_loss}


def check(kind: str) -> None:
    if kind not in KD_LOSSES:
        raise ConfigError(f"sdr.kd={kind!r}; choose one of {sorted(KD_LOSSES)}.")


def distill_losses(kind: str, model, params, batch_stats, kd_predictions: jax.Array,
                   views: jax.Array, teacher_path: jax.Array) -> jax.Array:
    """(n,) KD(student's `kd` prediction -> the teacher's z), one per batch of n batches.

    `kd_predictions`: (n, b, d), the students' `kd` outputs on `views` (n, b, H, W, C). The
    teacher is `model` on `teacher_path` (the SDRnet: all groups) with the stop-gradient
    `params`, in train mode on the same images: each batch's BN uses that batch's statistics
    (they are not kept). The n teacher passes are one vmapped pass: one trace, and convolutions
    over n*b images instead of n over b.
    """
    kd_fn = KD_LOSSES[kind]
    variables = {"params": jax.lax.stop_gradient(params), "batch_stats": batch_stats}

    def teacher_z(view):
        outputs, _ = model.apply(variables, view, teacher_path, train=True,
                                 mutable=["batch_stats"])
        return outputs["z"]

    return jax.vmap(kd_fn)(kd_predictions, jax.vmap(teacher_z)(views))
