"""SDR path arithmetic: path <-> index, progressive stages, and channel masks.

This is the one module that knows how paths and channel groups are laid out
(DESIGN.md §2.3, §2.4); models, trainer, clustering and routing all ask it.

Conventions:
  * L SDR blocks, G individual groups per block. A path is an int32 array of
    shape (L,); entry l is a group of block l in 0..G-1, or ALL (= -1) for all
    groups of that block. The SDRnet is the path of all ALL.
  * Index of a full path: sum_l p_l * G**l (block 0 least significant), so the
    top-level (coarsest) cluster is index // G**(L-1) = p_{L-1}.
  * Progressive stage s in 0..L: the last s blocks vary, the first L-s are ALL.
  * Channels of a block: [shared | g_0 | ... | g_{G-1}].
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core.errors import ConfigError

ALL = -1


@dataclasses.dataclass(frozen=True)
class PathSpec:
    """Shape of the path space: `num_blocks` SDR blocks of `num_groups` groups.

    `num_groups == 0` is a plain network (SimSiam): its only path is the full
    path and its only progressive stage is 0.
    """

    num_blocks: int
    num_groups: int

    def __post_init__(self):
        if self.num_blocks < 1:
            raise ValueError(f"PathSpec needs at least one SDR block, got num_blocks={self.num_blocks}.")
        if self.num_groups < 0:
            raise ValueError(f"PathSpec num_groups must be >= 0, got {self.num_groups}.")

    @classmethod
    def from_config(cls, model_cfg: Any) -> "PathSpec":
        """From a `model_config()` ConfigDict (uses `sdr.stages`, `sdr.num_groups`)."""
        return cls(len(tuple(model_cfg.sdr.stages)), int(model_cfg.sdr.num_groups))

    @property
    def num_paths(self) -> int:
        """Number of full paths, G**L (1 for a plain network: the full path)."""
        return self.num_groups**self.num_blocks if self.num_groups else 1

    @property
    def max_stage(self) -> int:
        """Last progressive stage: L, or 0 for a plain network."""
        return self.num_blocks if self.num_groups else 0

    # -- validation ---------------------------------------------------------

    def validate(self, path: Any, *, allow_all: bool = True) -> np.ndarray:
        """Returns `path` as int32 array (..., L); ValueError if malformed."""
        arr = np.asarray(path)
        if arr.ndim == 0 or arr.shape[-1] != self.num_blocks:
            raise ValueError(
                f"A path must have shape (..., {self.num_blocks}) (one entry per SDR block), "
                f"got shape {arr.shape}.")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"A path must hold integers, got dtype {arr.dtype}.")
        low = ALL if allow_all else 0
        if ((arr < low) | (arr >= self.num_groups)).any():
            allowed = f"{low}..{self.num_groups - 1}" if self.num_groups else f"only ALL ({ALL})"
            raise ValueError(
                f"Path entries must be in {allowed} (G={self.num_groups} groups, ALL={ALL}); "
                f"got {arr.tolist()}.")
        return arr.astype(np.int32)

    def stage_of(self, path: Any) -> int:
        """Progressive stage of one path: the number of trailing non-ALL entries.

        ValueError if the ALL entries do not form a prefix (such a path is in
        no progressive stage).
        """
        arr = self.validate(path)
        if arr.ndim != 1:
            raise ValueError(f"stage_of takes one path of shape ({self.num_blocks},), got {arr.shape}.")
        fixed = arr != ALL
        stage = int(fixed.sum())
        if fixed[: self.num_blocks - stage].any():
            raise ValueError(
                f"Path {arr.tolist()} is in no progressive stage: its ALL entries must come first.")
        return stage

    # -- index <-> path -----------------------------------------------------

    def index_to_path(self, index: Any) -> np.ndarray:
        """Full path(s) (..., L) of path index(es) (...)."""
        if self.num_groups == 0:
            raise ValueError("A plain network (num_groups=0) has no indexed paths; use full_path().")
        idx = np.asarray(index, dtype=np.int64)
        if ((idx < 0) | (idx >= self.num_paths)).any():
            raise ValueError(f"Path index must be in 0..{self.num_paths - 1}, got {idx.tolist()}.")
        weights = self.num_groups ** np.arange(self.num_blocks)
        return ((idx[..., None] // weights) % self.num_groups).astype(np.int32)

    def path_to_index(self, path: Any) -> np.ndarray:
        """Index(es) (...) of full path(s) (..., L) (no ALL entries)."""
        if self.num_groups == 0:
            raise ValueError("A plain network (num_groups=0) has no indexed paths.")
        arr = self.validate(path, allow_all=False).astype(np.int64)
        return arr @ (self.num_groups ** np.arange(self.num_blocks))

    # -- sets of paths ------------------------------------------------------

    def full_path(self) -> np.ndarray:
        """The SDRnet: every block uses all its groups."""
        return np.full((self.num_blocks,), ALL, np.int32)

    def all_paths(self) -> np.ndarray:
        """All G**L full paths (G**L, L), row i has index i."""
        return self.index_to_path(np.arange(self.num_paths))

    def stage_paths(self, stage: int) -> np.ndarray:
        """Paths of progressive stage `stage`: (G**stage, L), last `stage` blocks vary."""
        self._check_stage(stage)
        if stage == 0:
            return self.full_path()[None]
        digits = PathSpec(stage, self.num_groups).all_paths()
        prefix = np.full((digits.shape[0], self.num_blocks - stage), ALL, np.int32)
        return np.concatenate([prefix, digits], axis=1)

    def _check_stage(self, stage: int) -> None:
        if not 0 <= stage <= self.max_stage:
            raise ValueError(f"Progressive stage must be in 0..{self.max_stage}, got {stage}.")

    # -- prefixes, suffixes, the tree ---------------------------------------

    def paths_with_prefix(self, prefix: Any) -> np.ndarray:
        """Full paths whose first k blocks equal `prefix` (k,), in index order."""
        pre = self._check_part(prefix)
        rest = self.num_blocks - pre.size
        if rest == 0:
            return pre[None]
        tails = PathSpec(rest, self.num_groups).all_paths()
        return np.concatenate([np.broadcast_to(pre, (tails.shape[0], pre.size)), tails], axis=1)

    def paths_with_suffix(self, suffix: Any) -> np.ndarray:
        """Full paths whose last k blocks equal `suffix` (k,), in index order.

        These are the leaf clusters under the partial path `[ALL..., *suffix]`
        (DESIGN.md §2.4: its data is the union of their data).
        """
        suf = self._check_part(suffix)
        rest = self.num_blocks - suf.size
        if rest == 0:
            return suf[None]
        heads = PathSpec(rest, self.num_groups).all_paths()
        return np.concatenate([heads, np.broadcast_to(suf, (heads.shape[0], suf.size))], axis=1)

    def prefix_nodes(self, depth: int) -> np.ndarray:
        """The nodes of the prefix tree (routing's) at `depth` in 0..L: (G**depth, L) paths whose
        first `depth` blocks are fixed and the rest ALL. Block 0 is the most significant digit
        of a node's position, so the children of node i are nodes i*G .. i*G+G-1 one level down.
        """
        if not 0 <= depth <= self.num_blocks or (depth and not self.num_groups):
            raise ValueError(f"A prefix-tree depth must be in 0..{self.max_stage}, got {depth}.")
        if depth == 0:
            return self.full_path()[None]
        digits = PathSpec(depth, self.num_groups).all_paths()[:, ::-1]
        rest = np.full((digits.shape[0], self.num_blocks - depth), ALL, np.int32)
        return np.concatenate([digits, rest], axis=1)

    def suffix_node(self, path: Any) -> tuple[int, int]:
        """(depth, node) of a stage path in the suffix tree (clustering's): depth = its stage,
        node = the index of its last `depth` entries (block L-depth least significant), so the
        leaves under it are the contiguous indices node * G**(L-depth) + 0 .. G**(L-depth)-1."""
        depth = self.stage_of(path)
        fixed = np.asarray(path, np.int64)[self.num_blocks - depth:]
        return depth, int(fixed @ (self.num_groups ** np.arange(depth)))

    def suffix_node_of_leaf(self, leaf: Any, depth: int) -> np.ndarray:
        """The depth-`depth` suffix-tree node(s) above leaf index(es) `leaf`."""
        if not 0 <= depth <= self.num_blocks:
            raise ValueError(f"A suffix-tree depth must be in 0..{self.num_blocks}, got {depth}.")
        return np.asarray(leaf) // self.num_groups ** (self.num_blocks - depth)

    def leaves(self, path: Any) -> np.ndarray:
        """Indices of the full paths under a (partial) stage path."""
        stage = self.stage_of(path)
        suffix = np.asarray(path)[self.num_blocks - stage:]
        return self.path_to_index(self.paths_with_suffix(suffix))

    def parent(self, path: Any) -> np.ndarray:
        """The stage s-1 path containing a stage-s path (its first varying block -> ALL)."""
        stage = self.stage_of(path)
        if stage == 0:
            raise ValueError("The full path (the SDRnet) has no parent.")
        out = np.array(path, dtype=np.int32)
        out[self.num_blocks - stage] = ALL
        return out

    def _check_part(self, part: Any) -> np.ndarray:
        arr = np.asarray(part, dtype=np.int64).reshape(-1)
        if arr.size > self.num_blocks or ((arr < 0) | (arr >= self.num_groups)).any():
            raise ValueError(
                f"A prefix/suffix holds at most {self.num_blocks} groups in 0..{self.num_groups - 1}, "
                f"got {arr.tolist()}.")
        return arr.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ChannelLayout:
    """Channels of one width inside an SDR block: [shared | g_0 | ... | g_{G-1}]."""

    channels: int
    shared: int
    num_groups: int

    @classmethod
    def make(cls, channels: int, num_groups: int, shared_fraction: float, where: str = "") -> "ChannelLayout":
        """Splits `channels`; ValueError (naming `where`) if the groups do not divide."""
        if num_groups < 1:
            raise ConfigError(f"{where}: a channel layout needs num_groups >= 1, got {num_groups}.")
        if not 0.0 <= shared_fraction < 1.0:
            raise ConfigError(f"{where}: shared_fraction must be in [0, 1), got {shared_fraction}.")
        shared = round(shared_fraction * channels)
        if abs(shared - shared_fraction * channels) > 1e-6:
            raise ConfigError(
                f"{where}: shared_fraction={shared_fraction} of {channels} channels is not a whole "
                f"number; choose a width or fraction that divides.")
        if (channels - shared) % num_groups:
            raise ConfigError(
                f"{where}: the {channels - shared} individual channels ({channels} total, {shared} "
                f"shared) do not split into {num_groups} groups; change width, shared_fraction or "
                f"num_groups.")
        return cls(channels, shared, num_groups)

    @property
    def group_width(self) -> int:
        return (self.channels - self.shared) // self.num_groups

    @property
    def group_ids(self) -> np.ndarray:
        """Static (C,) int32: group of every channel, -1 for shared channels."""
        ids = np.full((self.channels,), -1, np.int32)
        ids[self.shared:] = np.repeat(np.arange(self.num_groups, dtype=np.int32), self.group_width)
        return ids


def block_mask(layout: ChannelLayout, p: Any) -> jax.Array:
    """Bool mask (..., C) of the channels path entry `p` (...) uses; traceable in `p`."""
    ids = jnp.asarray(layout.group_ids)
    p = jnp.asarray(p)[..., None]
    return (ids == -1) | (ids == p) | (p == ALL)


def active_channels(layout: ChannelLayout, p: int) -> np.ndarray:
    """Static indices of the channels path entry `p` (a Python int) uses, for export."""
    if not ALL <= int(p) < layout.num_groups:
        raise ValueError(f"Path entry must be in {ALL}..{layout.num_groups - 1}, got {p}.")
    ids = layout.group_ids
    return np.flatnonzero((ids == -1) | (ids == p) | (p == ALL))


def group_channels(layout: ChannelLayout, p: jax.Array) -> jax.Array:
    """Indices of the channels group `p` (a traced value, not ALL) uses, in the order of
    `active_channels`: the shared ones, then the group's. Static size, traced values."""
    group = layout.shared + p * layout.group_width + jnp.arange(layout.group_width)
    return jnp.concatenate([jnp.arange(layout.shared), group]).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class StagePath:
    """A path of progressive stage `stage` whose group entries are traced values.

    Its first L - stage entries are ALL, statically (the stage is a Python int); the others are
    groups, read from `values` (L,) (a traced int array, its ALL entries ignored). Indexing gives
    ALL or the traced group, so the channels a path keeps have static counts and traced indices:
    what compact execution (models/compact.py) needs to gather a sub-net's weights without
    recompiling for every path.
    """

    values: Any
    stage: int

    def __getitem__(self, block: int):
        return ALL if block < len(self) - self.stage else self.values[block]

    def __len__(self) -> int:
        return self.values.shape[-1]


@dataclasses.dataclass(frozen=True)
class SDRLayout:
    """Which network stages are SDR blocks and how their channels split."""

    stages: tuple[int, ...]
    num_groups: int
    shared_fraction: float = 0.5

    def __post_init__(self):
        stages = tuple(int(s) for s in self.stages)
        if not stages or list(stages) != sorted(set(stages)) or stages[0] < 0:
            raise ConfigError(f"SDR stages must be distinct increasing stage indices, got {self.stages}.")
        object.__setattr__(self, "stages", stages)
        if self.num_groups < 1:
            raise ConfigError(f"An SDR layout needs num_groups >= 1, got {self.num_groups}.")

    @property
    def path_spec(self) -> PathSpec:
        return PathSpec(len(self.stages), self.num_groups)

    def block_of(self, stage: int) -> Optional[int]:
        """SDR block index (path entry) of network stage `stage`, or None."""
        return self.stages.index(stage) if stage in self.stages else None

    def layout(self, stage: int, channels: int) -> ChannelLayout:
        return ChannelLayout.make(channels, self.num_groups, self.shared_fraction,
                                  where=f"SDR stage {stage} ({channels} channels)")
