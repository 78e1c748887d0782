"""Batch normalisation that knows which channels the current path uses."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class MaskedBatchNorm(nn.Module):
    """BatchNorm over all but the last axis, with a channel mask for SDR paths.

    Why a custom BN: in a masked SDRnet every path runs the full-width layer, so
    the BN sees channels the path does not use. Their batch statistics are
    computed (static shapes) but must not leak into the running statistics of
    the sub-net that owns them: the running mean/var of a channel are updated
    only on steps whose path uses that channel (`mask`), and stay untouched
    otherwise. Per channel, statistics never mix channels, so the outputs of
    active channels do not depend on inactive ones.

    Across devices (`axis_name`, inside `jax.shard_map`) devices may run
    different paths in one SPMD step. The running-statistics update of a
    channel is the mean over the devices on which it is active, so the
    replicated running statistics stay identical on every device. With
    `sync_stats` (SyncBN) a channel is normalised with the batch statistics
    pooled over the devices on which it is active (a device that does not use
    the channel falls back to its local statistics; its output there is masked
    anyway), so a sub-net's BN never sees another sub-net's activations.

    Batch statistics are computed in float32 whatever the compute dtype.
    """

    use_running_average: Optional[bool] = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    axis_name: Optional[str] = None
    sync_stats: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
                 use_running_average: Optional[bool] = None) -> jax.Array:
        """Normalises `x` (..., C); `mask` (C,) bool marks the channels in use."""
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        channels = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        x32 = x.astype(jnp.float32)

        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = self._batch_stats(x32, mask)
            if not self.is_initializing():
                self._update_running(ra_mean, ra_var, mean, var, mask)

        y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (channels,), self.param_dtype)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (channels,), self.param_dtype)
        return y.astype(self.dtype)

    def _batch_stats(self, x32: jax.Array, mask: Optional[jax.Array]):
        axes = tuple(range(x32.ndim - 1))
        if self.axis_name is None or not self.sync_stats:
            mean = x32.mean(axes)
            return mean, jnp.square(x32 - mean).mean(axes)
        # Two-pass pooled statistics over the devices on which a channel is active.
        mean = self._active_device_mean(x32.mean(axes), mask, fallback=x32.mean(axes))
        var = self._active_device_mean(jnp.square(x32 - mean).mean(axes), mask,
                                       fallback=jnp.square(x32 - x32.mean(axes)).mean(axes))
        return mean, var

    def _active_device_mean(self, local: jax.Array, mask: Optional[jax.Array], fallback: jax.Array):
        """Mean of `local` (C,) over the devices where the channel is active.

        Devices hold equal local batches (static shapes), so this is the pooled
        statistic. Channels active on no device get `fallback`.
        """
        weight = jnp.ones_like(local) if mask is None else mask.astype(jnp.float32)
        total = jax.lax.psum(weight * local, self.axis_name)
        count = jax.lax.psum(weight, self.axis_name)
        return jnp.where(count > 0, total / jnp.maximum(count, 1.0), fallback)

    def _update_running(self, ra_mean, ra_var, mean, var, mask) -> None:
        if self.axis_name is not None:
            # The stats are only meaningful where this device runs the channel:
            # average over those devices so every replica gets the same update.
            mean = self._active_device_mean(mean, mask, fallback=ra_mean.value)
            var = self._active_device_mean(var, mask, fallback=ra_var.value)
            active = jax.lax.psum(jnp.ones(()) if mask is None else mask.astype(jnp.float32),
                                  self.axis_name) > 0
        else:
            active = True if mask is None else mask
        m = self.momentum
        ra_mean.value = jnp.where(active, m * ra_mean.value + (1 - m) * mean, ra_mean.value)
        ra_var.value = jnp.where(active, m * ra_var.value + (1 - m) * var, ra_var.value)
