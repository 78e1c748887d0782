"""The versioned assignments file: example id -> leaf cluster -> SDR path, plus the tree.

File format (one `.npz`, no pickles; written to a temp file and renamed, so never partial):
  metadata          0-d string: JSON {"format_version", "num_groups", "num_blocks",
                    "num_examples", "provenance": {checkpoint, config, dataset, split, ...}}
  ids               (n,) example ids (ints or strings), in the order of the feature store
  leaves            (n,) int32 leaf id == path index sum_l p_l * G**l
  paths             (n, L) int32 path codes p_0..p_{L-1} (block 0 first)
  sizes_depth{s}    (G**s,) examples per tree node at depth s = 1..L
  centroids_level{l} (G**l, G, D) float32 centroids that split each depth-l node G ways

Tree convention: the depth-s node of an example is fixed by its last s path codes, the
node id is their path index sum_j p_{L-s+j} * G**j = leaf // G**(L-s), so the depth-1
split is block L-1's choice and the leaves under a node form one contiguous id range.
"""
import dataclasses
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from sdr_jax.core import io
from sdr_jax.core.errors import SDRError
from sdr_jax.core.paths import PathSpec

FORMAT_VERSION = 1


class AssignmentsError(SDRError, ValueError):
    """An assignments file is missing, malformed, or does not fit the model or dataset."""


@dataclasses.dataclass(frozen=True, eq=False)
class Assignments:
    """Cluster assignments of a dataset, organised as the SDR path tree (G-way, L levels)."""

    ids: np.ndarray
    leaves: np.ndarray
    num_groups: int
    num_blocks: int
    centroids: tuple[np.ndarray, ...]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "ids", np.asarray(self.ids))
        object.__setattr__(self, "leaves", np.asarray(self.leaves, np.int32))
        object.__setattr__(self, "centroids",
                           tuple(np.asarray(c, np.float32) for c in self.centroids))
        g, depth = self.num_groups, self.num_blocks
        if g < 1 or depth < 1:
            raise AssignmentsError(f"num_groups and num_blocks must be >= 1; got {g}, {depth}.")
        if self.ids.ndim != 1 or self.ids.shape != self.leaves.shape:
            raise AssignmentsError(f"ids {self.ids.shape} and leaves {self.leaves.shape} must be "
                                   "1-D and of equal length.")
        if len(np.unique(self.ids)) != len(self.ids):
            raise AssignmentsError("example ids must be unique.")
        if self.leaves.size and (self.leaves.min() < 0 or self.leaves.max() >= g**depth):
            raise AssignmentsError(f"leaf ids must lie in [0, {g**depth}) for G={g}, L={depth}.")
        if len(self.centroids) != depth:
            raise AssignmentsError(f"expected {depth} centroid levels; got {len(self.centroids)}.")
        for level, c in enumerate(self.centroids):
            if c.ndim != 3 or c.shape[:2] != (g**level, g):
                raise AssignmentsError(f"centroids of level {level} must have shape "
                                       f"({g**level}, {g}, dim); got {c.shape}.")
        try:
            json.dumps(self.provenance)
        except TypeError as e:
            raise AssignmentsError(f"provenance must be JSON-serialisable: {e}") from e

    @property
    def num_leaves(self) -> int:
        return self.num_groups**self.num_blocks

    @property
    def spec(self) -> PathSpec:
        """The path space; it knows the tree's node order."""
        return PathSpec(self.num_blocks, self.num_groups)

    @property
    def paths(self) -> np.ndarray:
        """(n, L) path codes of every example's leaf."""
        return self.spec.index_to_path(self.leaves)

    def node_ids(self, depth: int) -> np.ndarray:
        """(n,) id of every example's tree node at `depth` (0 = root, L = leaf)."""
        self._check_depth(depth)
        return self.spec.suffix_node_of_leaf(self.leaves, depth)

    def sizes(self, depth: int) -> np.ndarray:
        """(G**depth,) number of examples under every node at `depth`."""
        return np.bincount(self.node_ids(depth), minlength=self.num_groups**depth)

    def indices_for(self, partial_path: Sequence[int]) -> np.ndarray:
        """Sorted row indices of the examples under a partial path (leading blocks -1)."""
        depth, node = self._node_of(partial_path)
        return np.flatnonzero(self.node_ids(depth) == node)

    def ids_for(self, partial_path: Sequence[int]) -> np.ndarray:
        """Ids of the examples under a partial path: the union of the leaves below it."""
        return self.ids[self.indices_for(partial_path)]

    def save(self, path: str | os.PathLike) -> None:
        """Writes the file atomically (temp file in the same directory, then rename)."""
        path = os.fspath(path)
        metadata = {"format_version": FORMAT_VERSION, "num_groups": self.num_groups,
                    "num_blocks": self.num_blocks, "num_examples": int(len(self.ids)),
                    "provenance": self.provenance}
        arrays = {"metadata": np.array(json.dumps(metadata)), "ids": self.ids,
                  "leaves": self.leaves, "paths": self.paths}
        arrays.update({f"sizes_depth{s}": self.sizes(s) for s in range(1, self.num_blocks + 1)})
        arrays.update({f"centroids_level{l}": c for l, c in enumerate(self.centroids)})
        io.write_npz(path, arrays)

    def _check_depth(self, depth: int) -> None:
        if not 0 <= depth <= self.num_blocks:
            raise AssignmentsError(f"depth must lie in [0, {self.num_blocks}]; got {depth}.")

    def _node_of(self, partial_path: Sequence[int]) -> tuple[int, int]:
        """(depth, node id) of a partial path such as (-1, -1, 2, 0) (last blocks fixed)."""
        codes = np.asarray(partial_path)
        g, blocks = self.num_groups, self.num_blocks
        if codes.shape != (blocks,) or not np.issubdtype(codes.dtype, np.integer):
            raise AssignmentsError(f"a partial path has {blocks} int codes (one per block); "
                                   f"got {partial_path!r}.")
        if codes.min() < -1 or codes.max() >= g:
            raise AssignmentsError(f"path codes must lie in [0, {g}) or be -1 (free); got "
                                   f"{partial_path!r}.")
        free = int(np.sum(codes == -1))
        if np.any(codes[:free] != -1):
            raise AssignmentsError(f"only the leading blocks of a partial path may be free (-1); "
                                   f"got {partial_path!r}.")
        return self.spec.suffix_node(codes)


def load(path: str | os.PathLike, *, num_groups: int | None = None,
         num_blocks: int | None = None, dataset_ids: np.ndarray | None = None) -> Assignments:
    """Reads and validates an assignments file.

    Args:
      path: the `.npz` file written by `Assignments.save`.
      num_groups, num_blocks: the model's G and L (e.g. from its PathSpec); checked if given.
      dataset_ids: the ids of the dataset the assignments will be used with; if given, they
        must be exactly the assigned ids (in any order).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AssignmentsError(f"no assignments file at {path}; run the clustering job first.")
    try:
        arrays = io.read_npz(path)
        metadata = json.loads(str(arrays.pop("metadata")))
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # A truncated, empty or overwritten file: what numpy's zip reader raises for each.
        raise AssignmentsError(f"{path} is not a readable assignments file "
                               f"({type(e).__name__}: {e}); re-run the clustering job.") from e
    if metadata.get("format_version") != FORMAT_VERSION:
        raise AssignmentsError(f"{path} has format version {metadata.get('format_version')}; "
                               f"this code reads version {FORMAT_VERSION}.")
    g, blocks = metadata["num_groups"], metadata["num_blocks"]
    for name, want, got in (("num_groups (G)", num_groups, g), ("num_blocks (L)", num_blocks,
                                                                 blocks)):
        if want is not None and want != got:
            raise AssignmentsError(f"{path} was clustered with {name}={got}, but the model "
                                   f"expects {want}; re-run clustering for this model.")
    try:
        result = Assignments(ids=arrays["ids"], leaves=arrays["leaves"], num_groups=g,
                             num_blocks=blocks,
                             centroids=tuple(arrays[f"centroids_level{l}"] for l in range(blocks)),
                             provenance=metadata["provenance"])
        stored_sizes = [arrays[f"sizes_depth{s}"] for s in range(1, blocks + 1)]
        stored_paths = arrays["paths"]
    except KeyError as e:
        raise AssignmentsError(f"{path} lacks the array {e}; the file is damaged.") from e
    if not np.array_equal(stored_paths, result.paths) or not all(
            np.array_equal(s, result.sizes(d + 1)) for d, s in enumerate(stored_sizes)):
        raise AssignmentsError(f"{path}: the stored paths/sizes disagree with the leaves; the "
                               "file is damaged or uses another path convention.")
    if dataset_ids is not None:
        _check_same_ids(result.ids, np.asarray(dataset_ids), path)
    return result


def _check_same_ids(assigned: np.ndarray, dataset: np.ndarray, path: str) -> None:
    missing = np.setdiff1d(dataset, assigned)
    extra = np.setdiff1d(assigned, dataset)
    if len(assigned) != len(dataset) or missing.size or extra.size:
        raise AssignmentsError(
            f"{path} does not match the dataset: {len(assigned)} assigned vs {len(dataset)} "
            f"dataset ids, {missing.size} dataset ids unassigned (e.g. {missing[:3].tolist()}), "
            f"{extra.size} assigned ids not in the dataset (e.g. {extra[:3].tolist()}); "
            "cluster this dataset/split.")

