"""A plain VGG-style CNN with SDR stages: the second backbone, and the smallest example of one.

Stem (conv + BN + ReLU), then stages of `stage_sizes[s]` 3x3 conv + BN + ReLU layers of one
width each (every stage after the first starts with a 2x2 max pool), then global average
pooling. An SDR stage masks all its layers with one channel layout, driven by its path entry.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core import paths
from sdr_jax.models.backbones.base import (Backbone, Variables, base_width, conv,
                                           masked, norm_layer, plain, slice_conv_bn, stage_filters)


class VGGStage(nn.Module):
    """[2x2 max pool] then `num_convs` x (3x3 conv -> BN -> ReLU), masked by `layout`."""

    num_convs: int
    filters: int
    pool: bool
    norm: Any
    layout: Optional[paths.ChannelLayout] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, p: Optional[jax.Array], train: bool) -> jax.Array:
        mask = None if self.layout is None else paths.block_mask(self.layout, p)
        if self.pool:
            x = nn.max_pool(x, (2, 2), (2, 2))
        for i in range(self.num_convs):
            x = conv(self.filters, 3, 1, f"conv_{i}", self.dtype)(x)
            x = masked(nn.relu(self.norm(name=f"bn_{i}")(x, mask, not train)), mask)
        return x


class VGG(Backbone, kw_only=True):
    """VGG-style backbone; widths 64*width*2**s per stage (or `stage_widths`, compact nets)."""

    stage_sizes: Sequence[int]  # 3x3 conv layers per stage

    def channel_widths(self) -> tuple[tuple[int, ...], ...]:
        return tuple((f,) for f in stage_filters(self.stage_sizes, self.width, self.stage_widths))

    def setup(self):
        self.setup_stem()
        norm = norm_layer(self)
        self.stages = [
            VGGStage(n, f, s > 0, norm, None if layouts is None else layouts[0], self.dtype)
            for s, (n, (f,), layouts) in enumerate(
                zip(self.stage_sizes, self.channel_widths(), self.channel_layouts()))]

    def export(self, variables: Variables, path: np.ndarray
               ) -> tuple["VGG", Variables, np.ndarray]:
        kept = [out for (out,) in self.active_channels(path)]
        params, stats = plain(variables["params"]), plain(variables["batch_stats"])
        prev = np.arange(base_width(self.width))
        for s, out in enumerate(kept):
            for i in range(self.stage_sizes[s]):
                slice_conv_bn(params[f"stages_{s}"], stats[f"stages_{s}"], f"conv_{i}", f"bn_{i}",
                              prev, out)
                prev = out
        compact = self.clone(stage_widths=tuple(out.size for out in kept), sdr=None)
        return compact, {"params": params, "batch_stats": stats}, prev


VGGNet = functools.partial(VGG, stage_sizes=(2, 2, 2, 2))
# Test-only: one conv per stage, 8 base channels.
VGGTiny = functools.partial(VGG, stage_sizes=(1, 1, 1, 1), width=0.125)

ARCHS = {"vgg": VGGNet, "vgg_tiny": VGGTiny}
