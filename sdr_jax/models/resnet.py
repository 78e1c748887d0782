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
from sdr_jax.core.errors import ConfigError
from sdr_jax.models.batchnorm import MaskedBatchNorm

ModuleDef = Any
Mask = Optional[jax.Array]


def _masked(x: jax.Array, mask: Mask) -> jax.Array:
    # `where`, not a product: inactive channels are exactly 0 even if they overflow.
    return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))


def _conv(features: int, kernel: int, strides: int, name: str, dtype: Any) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (strides, strides), padding=[(pad, pad)] * 2,
                   use_bias=False, dtype=dtype, name=name)


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
        y = _conv(self.filters, 3, self.strides, "conv1", self.dtype)(x)
        y = _masked(nn.relu(self.norm(name="bn1")(y, inner_mask, not train)), inner_mask)
        y = _conv(self.filters, 3, 1, "conv2", self.dtype)(y)
        # Zero-init the last BN scale (SimSiam's zero_init_residual).
        y = _masked(self.norm(name="bn2", scale_init=nn.initializers.zeros)(y, outer_mask, not train),
                    outer_mask)
        return _masked(nn.relu(y + _shortcut(self, x, outer_mask, train)), outer_mask)


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
        y = _conv(self.filters, 1, 1, "conv1", self.dtype)(x)
        y = _masked(nn.relu(self.norm(name="bn1")(y, inner_mask, not train)), inner_mask)
        y = _conv(self.filters, 3, self.strides, "conv2", self.dtype)(y)
        y = _masked(nn.relu(self.norm(name="bn2")(y, inner_mask, not train)), inner_mask)
        y = _conv(self.filters * 4, 1, 1, "conv3", self.dtype)(y)
        y = _masked(self.norm(name="bn3", scale_init=nn.initializers.zeros)(y, outer_mask, not train),
                    outer_mask)
        return _masked(nn.relu(y + _shortcut(self, x, outer_mask, train)), outer_mask)


def _shortcut(block: nn.Module, x: jax.Array, outer_mask: Mask, train: bool) -> jax.Array:
    out = block.filters * block.expansion
    if block.identity_select is not None:
        return x[..., np.asarray(block.identity_select)]
    if x.shape[-1] == out and block.strides == 1:
        return x
    y = _conv(out, 1, block.strides, "proj_conv", block.dtype)(x)
    return _masked(block.norm(name="proj_bn")(y, outer_mask, not train), outer_mask)


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


def stage_filters(stage_sizes: Sequence[int], width: float,
                  stage_widths: Optional[Sequence[int]] = None) -> tuple[int, ...]:
    """Block width ('filters') of every stage: 64*width*2**s unless given explicitly."""
    if stage_widths is not None:
        if len(stage_widths) != len(stage_sizes):
            raise ConfigError(f"stage_widths {tuple(stage_widths)} must give one width per stage "
                              f"({len(stage_sizes)} stages).")
        return tuple(int(w) for w in stage_widths)
    base = 64 * width
    if base != int(base) or base < 1:
        raise ConfigError(f"width={width} gives {base} base channels; 64*width must be a positive integer.")
    return tuple(int(base) * 2**s for s in range(len(stage_sizes)))


def stage_layouts(filters: Sequence[int], expansion: int, sdr: Optional[paths.SDRLayout]):
    """(inner, outer) ChannelLayouts of every stage (None for non-SDR stages).

    Raises ValueError naming the stage and widths if the groups do not divide.
    """
    if sdr is not None and sdr.stages[-1] >= len(filters):
        raise ConfigError(f"SDR stages {sdr.stages} name a stage the network does not have "
                          f"({len(filters)} stages).")
    layouts = []
    for s, f in enumerate(filters):
        if sdr is None or sdr.block_of(s) is None:
            layouts.append((None, None))
        else:
            layouts.append((sdr.layout(s, f), sdr.layout(s, f * expansion)))
    return tuple(layouts)


class ResNet(nn.Module):
    """ResNet returning the global-average-pooled feature; optional SDR stages.

    Call it whole (`__call__(x, path, train)`) or stage-wise (`stem`, `stage`,
    `pool`), so routing can evaluate all paths as a tree over shared prefixes.
    `x` is already normalised (SimSiam does that).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    width: float = 1.0
    stage_widths: Optional[tuple[int, ...]] = None
    stem_kind: str = "imagenet"
    sdr: Optional[paths.SDRLayout] = None
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_axis_name: Optional[str] = None
    sync_bn: bool = True
    # Compact exports only: the first block's identity shortcut keeps these stem
    # channels (an SDR stage 0 whose shortcut is the identity in the SDRnet).
    identity_select: Optional[tuple[int, ...]] = None

    def setup(self):
        if self.stem_kind not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {self.stem_kind!r}.")
        filters = stage_filters(self.stage_sizes, self.width, self.stage_widths)
        layouts = stage_layouts(filters, self.block_cls.expansion, self.sdr)
        norm = functools.partial(MaskedBatchNorm, momentum=self.bn_momentum, dtype=self.dtype,
                                 axis_name=self.bn_axis_name, sync_stats=self.sync_bn)
        big = self.stem_kind == "imagenet"
        self.stem_conv = _conv(int(64 * self.width), 7 if big else 3, 2 if big else 1, None, self.dtype)
        self.stem_bn = norm()
        self.stages = [
            ResNetStage(n, f, 1 if s == 0 else 2, self.block_cls, norm, inner, outer, self.dtype,
                        self.identity_select if s == 0 else None)
            for s, (n, f, (inner, outer)) in enumerate(zip(self.stage_sizes, filters, layouts))]

    def __call__(self, x: jax.Array, path: Optional[jax.Array], train: bool) -> jax.Array:
        if self.sdr is not None:
            path = jnp.asarray(path)
            if path.shape != (len(self.sdr.stages),):
                raise ValueError(f"path must have shape ({len(self.sdr.stages)},) (one entry per SDR "
                                 f"block), got {path.shape}.")
        x = self.stem(x, train)
        for s in range(len(self.stage_sizes)):
            x = self.stage(x, s, self.path_entry(path, s), train)
        return self.pool(x)

    def path_entry(self, path: Optional[jax.Array], stage: int) -> Optional[jax.Array]:
        """The path entry driving network stage `stage` (None if it is not SDR)."""
        block = None if self.sdr is None else self.sdr.block_of(stage)
        return None if block is None else path[block]

    def stem(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.relu(self.stem_bn(self.stem_conv(x.astype(self.dtype)), None, not train))
        if self.stem_kind == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        return x

    def stage(self, x: jax.Array, stage: int, p: Optional[jax.Array], train: bool) -> jax.Array:
        """Applies network stage `stage` with its path entry `p` (ignored if not SDR)."""
        return self.stages[stage](x, p, train)

    @staticmethod
    def pool(x: jax.Array) -> jax.Array:
        return x.astype(jnp.float32).mean(axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
# Test-only: one block per stage, 8 base channels.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock, width=0.125)
ResNetTinyBottleneck = functools.partial(ResNetTiny, block_cls=Bottleneck)
