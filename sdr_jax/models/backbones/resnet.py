"""ResNet backbone whose stages can be SDR blocks (masked channel groups).

The path is data: an SDR stage builds its channel masks in-graph from its
path entry, so one jitted function serves every path (DESIGN.md §2.3).
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core import paths
from sdr_jax.models.backbones.base import (Backbone, Variables, base_width, conv,
                                           masked, norm_layer, plain, slice_conv_bn, stage_filters)

ModuleDef = Any
Mask = Optional[jax.Array]


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block; every BN output is masked (inner == outer width)."""

    filters: int
    strides: int
    norm: ModuleDef
    dtype: Any = jnp.float32
    identity_select: Optional[tuple[int, ...]] = None  # see ResNet.identity_select
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, inner_mask: Mask, outer_mask: Mask, train: bool):
        y = conv(self.filters, 3, self.strides, "conv1", self.dtype)(x)
        y = masked(nn.relu(self.norm(name="bn1")(y, inner_mask, not train)), inner_mask)
        y = conv(self.filters, 3, 1, "conv2", self.dtype)(y)
        # Zero-init the last BN scale (SimSiam's zero_init_residual).
        y = masked(self.norm(name="bn2", scale_init=nn.initializers.zeros)(y, outer_mask, not train),
                    outer_mask)
        return masked(nn.relu(y + _shortcut(self, x, outer_mask, train)), outer_mask)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4) residual block; inner and outer widths masked alike."""

    filters: int
    strides: int
    norm: ModuleDef
    dtype: Any = jnp.float32
    identity_select: Optional[tuple[int, ...]] = None  # see ResNet.identity_select
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x, inner_mask: Mask, outer_mask: Mask, train: bool):
        y = conv(self.filters, 1, 1, "conv1", self.dtype)(x)
        y = masked(nn.relu(self.norm(name="bn1")(y, inner_mask, not train)), inner_mask)
        y = conv(self.filters, 3, self.strides, "conv2", self.dtype)(y)
        y = masked(nn.relu(self.norm(name="bn2")(y, inner_mask, not train)), inner_mask)
        y = conv(self.filters * 4, 1, 1, "conv3", self.dtype)(y)
        y = masked(self.norm(name="bn3", scale_init=nn.initializers.zeros)(y, outer_mask, not train),
                    outer_mask)
        return masked(nn.relu(y + _shortcut(self, x, outer_mask, train)), outer_mask)


def _shortcut(block: nn.Module, x: jax.Array, outer_mask: Mask, train: bool) -> jax.Array:
    out = block.filters * block.expansion
    if block.identity_select is not None:
        select = block.identity_select  # a tuple, or traced indices in a compact sub-net
        return x[..., np.asarray(select) if isinstance(select, tuple) else select]
    if x.shape[-1] == out and block.strides == 1:
        return x
    y = conv(out, 1, block.strides, "proj_conv", block.dtype)(x)
    return masked(block.norm(name="proj_bn")(y, outer_mask, not train), outer_mask)


class ResNetStage(nn.Module):
    """`num_blocks` blocks; with layouts, an SDR block driven by one path entry."""

    num_blocks: int
    filters: int
    strides: int
    block_cls: ModuleDef
    norm: ModuleDef
    inner_layout: Optional[paths.ChannelLayout] = None
    outer_layout: Optional[paths.ChannelLayout] = None
    dtype: Any = jnp.float32
    identity_select: Optional[tuple[int, ...]] = None

    @nn.compact
    def __call__(self, x, p, train: bool):
        inner = None if self.inner_layout is None else paths.block_mask(self.inner_layout, p)
        outer = None if self.outer_layout is None else paths.block_mask(self.outer_layout, p)
        for i in range(self.num_blocks):
            block = self.block_cls(self.filters, self.strides if i == 0 else 1, self.norm, self.dtype,
                                   self.identity_select if i == 0 else None, name=f"block_{i}")
            x = block(x, inner, outer, train)
        return x


class ResNet(Backbone, kw_only=True):
    """ResNet returning the global-average-pooled feature; optional SDR stages.

    Call it whole (`__call__(x, path, train)`) or stage-wise (`stem`, `stage`,
    `pool`), so routing can evaluate all paths as a tree over shared prefixes.
    `x` is already normalised (SimSiam does that).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    # Compact exports only: the first block's identity shortcut keeps these stem
    # channels (an SDR stage 0 whose shortcut is the identity in the SDRnet).
    identity_select: Optional[tuple[int, ...]] = None

    named_fields: ClassVar[dict[str, dict[str, Any]]] = {
        "block_cls": {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}}

    def channel_widths(self) -> tuple[tuple[int, ...], ...]:
        """(inner, outer) width of every stage: its blocks' 'filters' and filters * expansion."""
        filters = stage_filters(self.stage_sizes, self.width, self.stage_widths)
        return tuple((f, f * self.block_cls.expansion) for f in filters)

    def setup(self):
        self.setup_stem()
        norm = norm_layer(self)
        self.stages = [
            ResNetStage(n, inner, 1 if s == 0 else 2, self.block_cls, norm,
                        *(layouts or (None, None)), self.dtype,
                        self.identity_select if s == 0 else None)
            for s, (n, (inner, _), layouts) in enumerate(
                zip(self.stage_sizes, self.channel_widths(), self.channel_layouts()))]

    def export(self, variables: Variables, path: np.ndarray
               ) -> tuple["ResNet", Variables, np.ndarray]:
        stage_idx = self.active_channels(path)  # (inner, outer) channel indices per stage
        stem_width = base_width(self.width)
        first_out = stage_idx[0][1]
        # In the SDRnet an identity shortcut of stage 0 adds the full stem output and
        # the block mask drops the unused channels: the compact net selects them.
        identity = self.channel_widths()[0][1] == stem_width and first_out.size < stem_width
        compact = self.clone(
            stage_widths=tuple(inner.size for inner, _ in stage_idx), sdr=None,
            identity_select=_index_field(first_out) if identity else None)

        params, stats = plain(variables["params"]), plain(variables["batch_stats"])
        prev = np.arange(stem_width)
        for s, (inner, outer) in enumerate(stage_idx):
            for b in range(self.stage_sizes[s]):
                block_params = params[f"stages_{s}"][f"block_{b}"]
                block_stats = stats[f"stages_{s}"][f"block_{b}"]
                convs = {"conv1": (prev, inner), "conv2": (inner, outer), "proj_conv": (prev, outer)}
                if self.block_cls is Bottleneck:
                    convs.update(conv2=(inner, inner), conv3=(inner, outer))
                for name, (cin, cout) in convs.items():
                    if name in block_params:
                        slice_conv_bn(block_params, block_stats, name, name.replace("conv", "bn"),
                                      cin, cout)
                prev = outer
        return compact, {"params": params, "batch_stats": stats}, prev


def _index_field(index: Any) -> Any:
    """Channel indices as a module field: a tuple of ints (saved with an export), or the traced
    array itself inside a jitted compact sub-net (models/compact.py)."""
    return index if isinstance(index, jax.core.Tracer) else tuple(int(i) for i in index)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
# Test-only: one block per stage, 8 base channels.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, width=0.125)
ResNetTinyBottleneck = functools.partial(ResNetTiny, block_cls=Bottleneck)

# arch name (model.arch) -> the partial fixing its stage sizes, block and default width.
ARCHS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "tiny": ResNetTiny,  # tests and CPU smoke runs
    "tiny_bottleneck": ResNetTinyBottleneck,
}
