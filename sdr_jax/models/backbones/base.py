"""The backbone interface: what export, routing, BN recalibration and reports ask of a network.

A backbone is a Flax module with the fields of `Backbone` (width, stage_widths, stem_kind, sdr,
dtype and the BN settings) plus its own, keyword-only (e.g. ResNet's `stage_sizes`). It is
applied whole (`__call__(x, path, train)`) or stage-wise: `stem`, then `stage(x, s, p, train)`
for every network stage, then `pool` (which has no variables). Routing's prefix tree runs these
levels (level 0 = stem, level s+1 = stage s) and keeps, per tree node, the BN statistics of each
level's top-level children (`level_scopes`). What the SDR masks need is `channel_widths()`: per
stage the channel widths its groups split (output last); `channel_layouts()` derives every
layout from it, the one place that does. `export(variables, path)` returns the compact plain
backbone of a path, its variables, and the feature channels it keeps (the heads' input rows).

A new backbone subclasses `Backbone`, implements `channel_widths`, `setup` and `export`
(`slice_conv_bn` slices a conv + BN pair), and lists its archs in `backbones/__init__.py`.
`export` also runs inside the jitted SDR step on a `paths.StagePath` (traced groups): compact
execution of sub-nets (models/compact.py). Written with `active_channels`, `plain` and
`slice_conv_bn`/`take`, which accept traced channel indices, it needs nothing more.
`stem`, `stage` and `level_scopes` have defaults for the layout both backbones here use: the
stem of `setup_stem` and a list `self.stages` of stage modules named `stages_{s}`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core import paths
from sdr_jax.core.errors import ConfigError
from sdr_jax.models.batchnorm import MaskedBatchNorm

Variables = dict[str, Any]
STEMS = ("imagenet", "small")
# Fields a network shares with its backbone (SimSiam keeps them in step).
SHARED_FIELDS = ("dtype", "bn_momentum", "bn_axis_name", "sync_bn")


class Backbone(nn.Module):
    """Base class of the backbones; see the module docstring for the contract.

    Subclasses add their fields keyword-only: `class MyNet(Backbone, kw_only=True)`.
    """

    width: float = 1.0
    # Explicit widths per stage instead of 64*width*2**s: the compact sub-nets of `export`.
    stage_widths: Optional[tuple[int, ...]] = None
    stem_kind: str = "imagenet"
    sdr: Optional[paths.SDRLayout] = None
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_axis_name: Optional[str] = None
    sync_bn: bool = True

    # Fields whose values are classes: saved by name, looked up here on load.
    named_fields: ClassVar[dict[str, dict[str, Any]]] = {}

    # -- what a backbone implements ---------------------------------------------------------

    def channel_widths(self) -> tuple[tuple[int, ...], ...]:
        """Per network stage, the channel widths its SDR groups split (output width last)."""
        raise NotImplementedError

    def stem(self, x: jax.Array, train: bool) -> jax.Array:
        """The default stem (`setup_stem`): conv -> BN -> ReLU, then on 'imagenet' a max pool."""
        x = nn.relu(self.stem_bn(self.stem_conv(x.astype(self.dtype)), None, not train))
        if self.stem_kind == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        return x

    def stage(self, x: jax.Array, stage: int, p: Optional[jax.Array], train: bool) -> jax.Array:
        """Network stage `stage` with its path entry `p` (None or ignored if not SDR); by
        default the stage modules of `setup`'s list `self.stages`."""
        return self.stages[stage](x, p, train)

    def level_scopes(self) -> tuple[tuple[str, ...], ...]:
        """Per routing level (stem, then every stage): the names of its top-level children;
        by default the default stem's and `stages_{s}`."""
        return (("stem_conv", "stem_bn"),) + tuple((f"stages_{s}",) for s in range(self.num_stages))

    def export(self, variables: Variables, path: np.ndarray
               ) -> tuple["Backbone", Variables, np.ndarray]:
        """(compact plain backbone, its {'params', 'batch_stats'}, kept feature channels) of one
        validated path; in eval mode its feature equals the masked one on those channels."""
        raise NotImplementedError

    # -- derived, shared by every backbone -------------------------------------------------

    def setup_stem(self) -> None:
        """Call from `setup`: the default stem's layers (7x7/2 on 'imagenet', 3x3/1 on 'small',
        64*width channels)."""
        check_stem(self.stem_kind)
        big = self.stem_kind == "imagenet"
        self.stem_conv = conv(base_width(self.width), 7 if big else 3, 2 if big else 1, None,
                              self.dtype)
        self.stem_bn = norm_layer(self)()

    @property
    def num_stages(self) -> int:
        return len(self.channel_widths())

    def channel_layouts(self) -> tuple[Optional[tuple[paths.ChannelLayout, ...]], ...]:
        """Per stage, the ChannelLayout of every width of `channel_widths` (None: not SDR).

        ConfigError naming the stage and widths if the groups do not divide.
        """
        widths = self.channel_widths()
        if self.sdr is not None and self.sdr.stages[-1] >= len(widths):
            raise ConfigError(f"SDR stages {self.sdr.stages} name a stage the network does not "
                             f"have ({len(widths)} stages).")
        return tuple(None if self.sdr is None or self.sdr.block_of(s) is None
                     else tuple(self.sdr.layout(s, w) for w in ws)
                     for s, ws in enumerate(widths))

    def active_channels(self, path: Any) -> tuple[tuple[Any, ...], ...]:
        """Per stage, the indices of the channels `path` uses, one array per width.

        Static NumPy arrays for a concrete path; for a `paths.StagePath` (traced groups) the
        stages it drives get traced index arrays of static size (`paths.group_channels`), so
        `export` then gathers a compact sub-net inside a jitted function (models/compact.py).
        """
        out = []
        for s, (widths, layouts) in enumerate(zip(self.channel_widths(), self.channel_layouts())):
            p = None if layouts is None else path[self.sdr.block_of(s)]
            traced = isinstance(p, jax.core.Tracer)
            if layouts is None or (not traced and int(p) == paths.ALL):
                out.append(tuple(np.arange(w) for w in widths))
            elif traced:
                out.append(tuple(paths.group_channels(layout, p) for layout in layouts))
            else:
                out.append(tuple(paths.active_channels(layout, int(p)) for layout in layouts))
        return tuple(out)

    def path_entry(self, path: Optional[jax.Array], stage: int) -> Optional[jax.Array]:
        """The path entry driving network stage `stage` (None if it is not SDR)."""
        block = None if self.sdr is None else self.sdr.block_of(stage)
        return None if block is None else path[block]

    def __call__(self, x: jax.Array, path: Optional[jax.Array], train: bool) -> jax.Array:
        if self.sdr is not None:
            path = jnp.asarray(path)
            if path.shape != (len(self.sdr.stages),):
                raise ValueError(f"path must have shape ({len(self.sdr.stages)},) (one entry per "
                                 f"SDR block), got {path.shape}.")
        x = self.stem(x, train)
        for s in range(self.num_stages):
            x = self.stage(x, s, self.path_entry(path, s), train)
        return self.pool(x)

    @staticmethod
    def pool(x: jax.Array) -> jax.Array:
        """Global average pooling, in float32 (no variables)."""
        return x.astype(jnp.float32).mean(axis=(1, 2))

    # -- the exported sub-net's file ---------------------------------------------------------

    def to_fields(self) -> dict[str, Any]:
        """JSON-ready constructor fields (for a compact, sdr=None backbone)."""
        if self.sdr is not None:
            raise ValueError("only a compact (sdr=None) backbone is saved; export it first.")
        fields = {}
        for f in dataclasses.fields(self):
            if f.name in ("parent", "name", "sdr"):
                continue
            value = getattr(self, f.name)
            if f.name in self.named_fields:
                value = value.__name__
            elif f.name == "dtype":
                value = jnp.dtype(value).name
            elif isinstance(value, tuple):
                value = list(value)
            fields[f.name] = value
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "Backbone":
        """The backbone `to_fields` describes."""
        kwargs = {}
        for key, value in fields.items():
            if key in cls.named_fields:
                value = cls.named_fields[key][value]
            elif key == "dtype":
                value = jnp.dtype(value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)


def norm_layer(backbone: Backbone):
    """The MaskedBatchNorm factory of a backbone's BN settings."""
    return functools.partial(MaskedBatchNorm, momentum=backbone.bn_momentum, dtype=backbone.dtype,
                             axis_name=backbone.bn_axis_name, sync_stats=backbone.sync_bn)


# On the CPU, a convolution whose input has at most CPU_PATCHES_MAX_PIXELS pixels (H * W) runs
# as one matmul over im2col patches: XLA:CPU's own convolutions of tiny maps are several times
# slower (forward + backward, batch 64: 2x2 x 128 -> 128 10.9 vs 1.8 ms; 4x4 x 64 -> 128 stride 2
# 4.2 vs 1.0 ms), which makes the demo's 16x16 SimSiam step ~1.4x faster; on larger maps they
# are not (whole step at 32x32: level). `bench/cpu_conv.py` measures both. Other backends always
# use `lax.conv_general_dilated`. 0 turns the patches off.
CPU_PATCHES_MAX_PIXELS = 16
NHWC = ("NHWC", "HWIO", "NHWC")


def conv(features: int, kernel: int, strides: int, name: Optional[str], dtype: Any) -> nn.Conv:
    """A bias-free, 'same'-padded square convolution."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), (strides, strides), padding=[(pad, pad)] * 2,
                   use_bias=False, dtype=dtype, name=name, conv_general_dilated=_conv)


def _conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
          dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
          preferred_element_type=None):
    """`lax.conv_general_dilated` for `nn.Conv` (NHWC, HWIO, explicit padding); small maps on the
    CPU as im2col patches @ kernel. Same parameters, same values to float rounding."""
    kwargs = dict(precision=precision, preferred_element_type=preferred_element_type)
    xla = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                            padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                            dimension_numbers=dimension_numbers,
                            feature_group_count=feature_group_count,
                            batch_group_count=batch_group_count, **kwargs)
    standard = (lhs.ndim == 4 and not isinstance(padding, str)
                and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
                and set(lhs_dilation or (1,)) == set(rhs_dilation or (1,)) == {1}
                and feature_group_count == batch_group_count == 1)
    if not (standard and cpu_patches_pay(lhs.shape)):
        return xla(lhs, rhs)
    patches = functools.partial(patches_conv, window_strides=window_strides, padding=padding,
                                **kwargs)
    return jax.lax.platform_dependent(lhs, rhs, cpu=patches, default=xla)


def cpu_patches_pay(lhs_shape: Sequence[int]) -> bool:
    """Whether a standard NHWC convolution of this input shape runs as patches on the CPU."""
    return lhs_shape[1] * lhs_shape[2] <= CPU_PATCHES_MAX_PIXELS


def patches_conv(lhs, rhs, *, window_strides, padding, precision, preferred_element_type):
    """NHWC x HWIO convolution as one matmul: the kernel's taps are strided slices of the padded
    input, concatenated on the channel axis (tap-major, as `rhs.reshape(-1, cout)` orders them)."""
    kh, kw, cin, cout = rhs.shape
    (sh, sw), (ph, pw) = window_strides, padding
    x = jnp.pad(lhs, ((0, 0), tuple(ph), tuple(pw), (0, 0)))
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    taps = [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] for i in range(kh)
            for j in range(kw)]
    x = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return jnp.einsum("nhwk,ko->nhwo", x, rhs.reshape(kh * kw * cin, cout), precision=precision,
                      preferred_element_type=preferred_element_type)


def masked(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    # `where`, not a product: inactive channels are exactly 0 even if they overflow.
    return x if mask is None else jnp.where(mask, x, jnp.zeros((), x.dtype))


def check_stem(stem_kind: str) -> None:
    if stem_kind not in STEMS:
        raise ConfigError(f"stem must be one of {STEMS}, got {stem_kind!r}.")


def stage_filters(stage_sizes: Sequence[int], width: float,
                  stage_widths: Optional[Sequence[int]] = None) -> tuple[int, ...]:
    """Width ('filters') of every stage: 64*width*2**s unless given explicitly (compact nets)."""
    if stage_widths is not None:
        if len(stage_widths) != len(stage_sizes):
            raise ConfigError(f"stage_widths {tuple(stage_widths)} must give one width per stage "
                             f"({len(stage_sizes)} stages).")
        return tuple(int(w) for w in stage_widths)
    return tuple(base_width(width) * 2**s for s in range(len(stage_sizes)))


def base_width(width: float) -> int:
    """64*width channels (the stem's), ConfigError unless a positive integer."""
    base = 64 * width
    if base != int(base) or base < 1:
        raise ConfigError(f"width={width} gives {base} base channels; 64*width must be a positive "
                         "integer.")
    return int(base)


def plain(tree: Any) -> Any:
    """A mutable nested-dict NumPy copy of a variables tree (traced leaves are kept: inside a
    jitted function `export` gathers from them, and gradients flow back through the gather)."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: plain(v) for k, v in tree.items()}
    return tree if isinstance(tree, jax.core.Tracer) else np.asarray(tree)


def take(array: Any, index: Any, axis: int) -> Any:
    """`array` restricted to entries `index` along `axis`: NumPy indexing for static indices
    (`array` itself when they are all of them, in order), a gather for traced ones."""
    if isinstance(index, np.ndarray):
        if index.size == array.shape[axis] and (index == np.arange(index.size)).all():
            return array
        return np.take(array, index, axis) if isinstance(array, np.ndarray) else \
            jnp.take(array, index, axis)
    return jnp.take(array, index, axis, unique_indices=True, indices_are_sorted=True)


def slice_conv_bn(params: dict, stats: dict, conv_name: str, bn_name: str, cin: np.ndarray,
                  cout: np.ndarray) -> None:
    """In place: keep input channels `cin` and output channels `cout` of a conv and its BN.

    `params` and `stats` are the (plain, mutable) variables of the module holding both.
    """
    params[conv_name]["kernel"] = take(take(params[conv_name]["kernel"], cin, -2), cout, -1)
    for tree in (params, stats):
        for key in tree[bn_name]:
            tree[bn_name][key] = take(tree[bn_name][key], cout, 0)
