"""SimSiam projection and prediction MLPs."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdr_jax.models.batchnorm import MaskedBatchNorm


class Projector(nn.Module):
    """`num_layers` x (Linear + BN (+ReLU)); the last BN has no affine, no ReLU."""

    dim: int = 2048
    num_layers: int = 3
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_axis_name: Optional[str] = None
    sync_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.dim, use_bias=False, dtype=self.dtype, name=f"dense_{i}")(x)
            x = MaskedBatchNorm(momentum=self.bn_momentum, use_scale=not last, use_bias=not last,
                                axis_name=self.bn_axis_name, sync_stats=self.sync_bn,
                                dtype=self.dtype, name=f"bn_{i}")(x, None, not train)
            if not last:
                x = nn.relu(x)
        return x


class Predictor(nn.Module):
    """Linear -> BN -> ReLU -> Linear bottleneck (2048 -> 512 -> 2048 on ImageNet)."""

    hidden_dim: int = 512
    out_dim: int = 2048
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_axis_name: Optional[str] = None
    sync_bn: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype, name="dense_0")(x)
        x = MaskedBatchNorm(momentum=self.bn_momentum, axis_name=self.bn_axis_name,
                            sync_stats=self.sync_bn, dtype=self.dtype, name="bn_0")(x, None, not train)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="dense_1")(nn.relu(x))
