"""A streaming, sharded on-disk store of per-example feature vectors.

ImageNet-sized feature sets (1.28M x 2048 f32 = 10 GB) do not fit a host comfortably, so the
extraction job appends fixed-size shards and readers memory-map them. Layout of a store:

    <dir>/index.json            {"format_version", "dim", "dtype", "count", "shards", "metadata"}
    <dir>/shard-00000.ids.npy   (rows,) example ids (ints or strings)
    <dir>/shard-00000.feats.npy (rows, dim) float32

The writer fills `<dir>.incomplete` and renames it to `<dir>` on close(), so a store that
exists is always complete; a crashed writer leaves only the `.incomplete` directory.
"""
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from sdr_jax.core import io
from sdr_jax.core.errors import SDRError

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
INCOMPLETE_SUFFIX = ".incomplete"
_DTYPE = np.float32


class FeatureStoreError(SDRError, ValueError):
    """A feature store is missing, incomplete, inconsistent or used with the wrong data."""


class FeatureWriter:
    """Appends (ids, features) to a new store; one writer per directory.

    Use as a context manager, or call close(): nothing is visible at `directory` before it.
    A leftover `<directory>.incomplete` from an interrupted writer is discarded on start.
    """

    def __init__(self, directory: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None,
                 shard_rows: int = 65536, overwrite: bool = False):
        self._final = os.fspath(directory)
        if os.path.exists(self._final) and not overwrite:
            raise FeatureStoreError(f"feature store {self._final} already exists; pass "
                                    "overwrite=True or choose another directory.")
        if shard_rows < 1:
            raise FeatureStoreError(f"shard_rows must be >= 1; got {shard_rows}.")
        self._metadata = dict(metadata or {})
        try:
            json.dumps(self._metadata)
        except TypeError as e:
            raise FeatureStoreError(f"feature store metadata must be JSON-serialisable: {e}") from e
        self._overwrite = overwrite
        self._tmp = self._final + INCOMPLETE_SUFFIX
        shutil.rmtree(self._tmp, ignore_errors=True)
        os.makedirs(self._tmp)
        self._shard_rows = shard_rows
        self._dim: int | None = None
        self._id_kind: str | None = None
        self._pending_ids: list[np.ndarray] = []
        self._pending_feats: list[np.ndarray] = []
        self._pending_rows = 0
        self._shards: list[dict[str, Any]] = []
        self._closed = False

    def write(self, ids: np.ndarray, feats: np.ndarray) -> None:
        """Appends a batch; `ids` (rows,) ints or strings, `feats` (rows, dim) floats."""
        if self._closed:
            raise FeatureStoreError(f"writer for {self._final} is already closed.")
        ids, feats = np.asarray(ids), np.asarray(feats)
        if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
            raise FeatureStoreError(f"feats must be a (rows, dim) float array; got {feats.dtype} "
                                    f"{feats.shape}.")
        if ids.shape != feats.shape[:1]:
            raise FeatureStoreError(f"ids must have shape ({feats.shape[0]},), one per feature "
                                    f"row; got {ids.shape}.")
        _check_id_dtype(ids.dtype)
        if self._id_kind is None:
            self._id_kind = ids.dtype.kind
        elif ids.dtype.kind != self._id_kind:
            raise FeatureStoreError(f"ids of dtype {ids.dtype} do not match the earlier ids "
                                    "(all integers or all strings).")
        if self._dim is None:
            self._dim = feats.shape[1]
        elif feats.shape[1] != self._dim:
            raise FeatureStoreError(f"feature dim {feats.shape[1]} does not match this store's "
                                    f"dim {self._dim}.")
        self._pending_ids.append(ids)
        self._pending_feats.append(feats.astype(_DTYPE, copy=False))
        self._pending_rows += len(ids)
        while self._pending_rows >= self._shard_rows:
            self._flush(self._shard_rows)

    def close(self) -> None:
        """Flushes, checks ids are unique, writes the index and publishes the store."""
        if self._closed:
            return
        if self._dim is None:
            self.abort()
            raise FeatureStoreError(f"no features were written to {self._final}.")
        if self._pending_rows:
            self._flush(self._pending_rows)
        all_ids = np.concatenate([io.read_npy(self._path(s["name"], "ids"))
                                  for s in self._shards])
        if len(np.unique(all_ids)) != len(all_ids):
            self.abort()
            raise FeatureStoreError(f"duplicate example ids written to {self._final}; every "
                                    "example must be written once.")
        index = {"format_version": FORMAT_VERSION, "dim": self._dim, "dtype": np.dtype(_DTYPE).name,
                 "count": int(len(all_ids)), "shards": self._shards, "metadata": self._metadata}
        io.write_json(os.path.join(self._tmp, INDEX_FILE), index)
        if self._overwrite and os.path.exists(self._final):
            shutil.rmtree(self._final)
        os.rename(self._tmp, self._final)
        self._closed = True

    def abort(self) -> None:
        """Discards everything written so far."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _flush(self, rows: int) -> None:
        ids = np.concatenate(self._pending_ids)
        feats = np.concatenate(self._pending_feats)
        name = f"shard-{len(self._shards):05d}"
        io.write_npy(self._path(name, "ids"), ids[:rows])
        io.write_npy(self._path(name, "feats"), feats[:rows])
        self._shards.append({"name": name, "count": rows})
        self._pending_ids, self._pending_feats = [ids[rows:]], [feats[rows:]]
        self._pending_rows -= rows

    def _path(self, name: str, kind: str) -> str:
        return os.path.join(self._tmp, f"{name}.{kind}.npy")


class FeatureStore:
    """Read access to a closed store: shards, random rows, mini-batch streams, or everything."""

    def __init__(self, directory: str | os.PathLike, *, expected_dim: int | None = None):
        self.directory = os.fspath(directory)
        index_path = os.path.join(self.directory, INDEX_FILE)
        if not os.path.isdir(self.directory):
            if os.path.isdir(self.directory + INCOMPLETE_SUFFIX):
                raise FeatureStoreError(f"feature store {self.directory} is incomplete (its writer "
                                        "was not closed); re-run the feature extraction.")
            raise FeatureStoreError(f"no feature store at {self.directory}; run the feature "
                                    "extraction first.")
        if not os.path.isfile(index_path):
            raise FeatureStoreError(f"feature store {self.directory} has no {INDEX_FILE}; it is "
                                    "incomplete or not a feature store.")
        index = io.read_json(index_path)
        if index.get("format_version") != FORMAT_VERSION:
            raise FeatureStoreError(f"feature store {self.directory} has format version "
                                    f"{index.get('format_version')}; this code reads "
                                    f"{FORMAT_VERSION}.")
        self.dim: int = index["dim"]
        self.metadata: dict[str, Any] = index["metadata"]
        if expected_dim is not None and expected_dim != self.dim:
            raise FeatureStoreError(f"feature store {self.directory} holds dim {self.dim} "
                                    f"features; expected {expected_dim}.")
        self._names = [s["name"] for s in index["shards"]]
        counts = [s["count"] for s in index["shards"]]
        if sum(counts) != index["count"]:
            raise FeatureStoreError(f"feature store {self.directory}: shard counts sum to "
                                    f"{sum(counts)}, index says {index['count']}.")
        self._offsets = np.cumsum([0] + counts)
        self._feats = [self._open(name, "feats", (count, self.dim))
                       for name, count in zip(self._names, counts)]
        self._ids_cache: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    @property
    def ids(self) -> np.ndarray:
        """All example ids in store order (small: one int or string per example)."""
        if self._ids_cache is None:
            self._ids_cache = np.concatenate([io.read_npy(self._file(n, "ids"))
                                              for n in self._names])
        return self._ids_cache

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Feature rows at global `indices` (any order), read shard by shard."""
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise FeatureStoreError(f"row indices must lie in [0, {len(self)}); got "
                                    f"[{indices.min()}, {indices.max()}].")
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        shard_of = np.searchsorted(self._offsets, sorted_idx, side="right") - 1
        out = np.empty((len(indices), self.dim), _DTYPE)
        bounds = np.searchsorted(shard_of, np.arange(len(self._feats) + 1))
        for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if hi > lo:
                out[order[lo:hi]] = self._feats[shard][sorted_idx[lo:hi] - self._offsets[shard]]
        return out

    def batches(self, batch_size: int, *, seed: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (ids, feats) mini-batches: in store order, or shuffled when `seed` is given."""
        order = (np.arange(len(self)) if seed is None
                 else np.random.default_rng(seed).permutation(len(self)))
        for start in range(0, len(self), batch_size):
            rows = order[start:start + batch_size]
            yield self.ids[rows], self.read(rows)

    def load_all(self, max_bytes: int = 4 << 30) -> tuple[np.ndarray, np.ndarray]:
        """(ids, feats) of the whole store in memory; refuses stores larger than `max_bytes`."""
        size = len(self) * self.dim * np.dtype(_DTYPE).itemsize
        if size > max_bytes:
            raise FeatureStoreError(f"feature store {self.directory} holds {size / 2**30:.1f} GiB, "
                                    f"more than max_bytes={max_bytes}; stream it with batches() "
                                    "or read().")
        return self.ids, np.concatenate([np.asarray(f) for f in self._feats])

    def _file(self, name: str, kind: str) -> str:
        return os.path.join(self.directory, f"{name}.{kind}.npy")

    def _open(self, name: str, kind: str, shape: tuple[int, ...]) -> np.ndarray:
        path = self._file(name, kind)
        if not os.path.isfile(path):
            raise FeatureStoreError(f"feature store {self.directory} is missing {path}.")
        array = np.load(path, mmap_mode="r")
        if array.shape != shape:
            raise FeatureStoreError(f"{path} has shape {array.shape}; the index says {shape}.")
        return array


def _check_id_dtype(dtype: np.dtype) -> None:
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.str_)):
        raise FeatureStoreError(f"example ids must be integers or strings; got dtype {dtype}.")
