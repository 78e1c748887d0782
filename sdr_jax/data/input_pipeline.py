"""grain input pipelines: SimSiam pre-training batches and padded evaluation batches.

Sources are random-access: `len(source)` and `source[i]` -> dict with a uint8 (H, W, 3)
`image`, an int `id` and an int `label`. Images stay uint8 here: the host crops and flips,
the colour augmentations and the normalisation happen on the device (in the training step).

Every random choice is a function of (seed, process_index, position in the stream), and
batching happens on the `MapDataset` before `mp_prefetch`, so the workers split whole
batches: the same seed gives the same batches for any number of workers, and an iterator's
state is a small JSON-able dict.
"""
from collections.abc import Iterator, Sequence
import json
from typing import Any, Protocol

from absl import flags
import grain
import ml_collections
import numpy as np

from sdr_jax.data import augment as augment_lib
from sdr_jax.core.errors import ConfigError


class RandomAccessSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...


def allow_unparsed_absl_flags() -> None:
    """Lets grain run when the program never parsed absl flags (tests, notebooks, libraries).

    grain reads its `--grain_*` options through absl; some reads (e.g. the worker
    profiling flag when `mp_prefetch` starts workers) raise UnparsedFlagAccessError if
    flags are unparsed. Marking them parsed keeps every default; under `app.run` (flags
    already parsed) this does nothing. The one place in sdr_jax that handles this.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _Records:
    """The records of `source` at `positions` (after subset selection and sharding)."""

    def __init__(self, source: RandomAccessSource, positions: np.ndarray):
        self._source = source
        self._positions = positions

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._source[int(self._positions[index])]


class _TwoViews(grain.transforms.RandomMap):
    """Two independently cropped and flipped views of one record, each by its view's recipe
    (the colour augmentations run on the device, in the training step)."""

    def __init__(self, aug_cfg: ml_collections.ConfigDict):
        self._view_cfgs = [augment_lib.view_config(aug_cfg, v) for v in augment_lib.VIEWS]

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = np.asarray(record["image"])
        view1, view2 = (augment_lib.crop_and_flip(image, rng, cfg) for cfg in self._view_cfgs)
        return {
            "view1": view1,
            "view2": view2,
            "id": np.int64(record["id"]),
            "label": np.int64(record["label"]),
        }


def _process_seed(seed: int, process_index: int) -> int:
    """A 32-bit seed per (seed, process) so that hosts do not share augmentation draws."""
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def _check_process(process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count), got process_index="
                         f"{process_index}, process_count={process_count}.")


def _shard_positions(source: RandomAccessSource, indices: Sequence[int] | np.ndarray | None,
                     process_index: int, process_count: int) -> np.ndarray:
    """Source positions this process reads: `indices` (or all), then every `process_count`-th."""
    _check_process(process_index, process_count)
    size = len(source)
    if size == 0:
        raise ConfigError("the source is empty: build the dataset (or pick a split) that has data.")
    if indices is None:
        positions = np.arange(size, dtype=np.int64)
    else:
        positions = np.asarray(indices)
        if positions.ndim != 1 or positions.size == 0 or not np.issubdtype(positions.dtype,
                                                                            np.integer):
            raise ValueError(f"indices must be a non-empty 1-D integer array, got dtype "
                             f"{positions.dtype} shape {positions.shape}.")
        bad = (positions < 0) | (positions >= size)
        if bad.any():
            raise ValueError(f"indices out of range for a source of {size} records: "
                             f"{positions[bad][:5].tolist()} (showing up to 5).")
        positions = positions.astype(np.int64)
    return positions[process_index::process_count]


def pretrain_dataset(source: RandomAccessSource, *, batch_size: int, seed: int,
                     aug_cfg: ml_collections.ConfigDict, num_workers: int = 0,
                     process_index: int = 0, process_count: int = 1,
                     indices: Sequence[int] | np.ndarray | None = None,
                     num_epochs: int | None = None) -> grain.IterDataset:
    """Shuffled, repeated SimSiam batches for this process.

    Each batch is a dict: `view1`, `view2` uint8 (batch_size, S, S, 3) (cropped and flipped by
    `augment.crop_and_flip`, each with its view's recipe), `id` and `label`
    int64 (batch_size,). `batch_size` is per process. `indices` selects a subset of the
    source (e.g. one cluster); the selection is then sharded `process_index::process_count`.
    Epochs are reshuffled; batches run across epoch boundaries and only a final partial
    batch (when `num_epochs` is set) is dropped. `num_epochs=None` repeats forever.
    """
    augment_lib.validate_aug_config(aug_cfg)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}.")
    if num_epochs is not None and num_epochs < 1:
        raise ConfigError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}.")
    positions = _shard_positions(source, indices, process_index, process_count)
    if batch_size > len(positions):
        raise ConfigError(f"batch_size {batch_size} is larger than this process's shard of "
                          f"{len(positions)} records: lower batch_size or use more data.")
    allow_unparsed_absl_flags()
    process_seed = _process_seed(seed, process_index)
    ds = (grain.MapDataset.source(_Records(source, positions))
          .shuffle(seed=process_seed)
          .repeat(num_epochs)
          .random_map(_TwoViews(aug_cfg), seed=process_seed)
          .batch(batch_size, drop_remainder=True))
    # Elements are whole batches: a few in flight are enough and bound host memory.
    read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)
    iter_ds = ds.to_iter_dataset(read_options)
    if num_workers > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter_ds


def get_iterator_state(iterator: grain.DatasetIterator) -> bytes:
    """The iterator's position as JSON bytes, to store next to a model checkpoint."""
    return json.dumps(iterator.get_state(), sort_keys=True).encode("utf-8")


def set_iterator_state(iterator: grain.DatasetIterator, state: bytes | str | dict) -> None:
    """Moves `iterator` (fresh, from the same pipeline) to a saved state."""
    if isinstance(state, (bytes, str)):
        state = json.loads(state)
    iterator.set_state(state)


def eval_batches(source: RandomAccessSource, *, batch_size: int, image_size: int,
                 process_index: int = 0, process_count: int = 1
                 ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's shard, centre-resized, in padded static-shape batches.

    Batches hold `image` uint8 (batch_size, S, S, 3), `label`, `id` int64 and a bool `mask`
    of the real examples (padding is zeros). Every process yields the same number of
    batches, so collective eval steps stay in lockstep across hosts.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    positions = _shard_positions(source, None, process_index, process_count)
    largest_shard = -(-len(source) // process_count)
    num_batches = -(-largest_shard // batch_size)
    allow_unparsed_absl_flags()
    return _padded_batches(source, positions, batch_size, image_size, num_batches)


def _padded_batches(source: RandomAccessSource, positions: np.ndarray, batch_size: int,
                    image_size: int, num_batches: int) -> Iterator[dict[str, np.ndarray]]:
    records = (grain.MapDataset.source(_Records(source, positions))
               .map(lambda record: _eval_record(record, image_size))
               .to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)))
    records = iter(records)
    for _ in range(num_batches):
        batch = {
            "image": np.zeros((batch_size, image_size, image_size, 3), np.uint8),
            "label": np.zeros((batch_size,), np.int64),
            "id": np.zeros((batch_size,), np.int64),
            "mask": np.zeros((batch_size,), bool),
        }
        for row, record in zip(range(batch_size), records):
            for key in ("image", "label", "id"):
                batch[key][row] = record[key]
            batch["mask"][row] = True
        yield batch


def _eval_record(record: dict[str, Any], image_size: int) -> dict[str, Any]:
    return {"image": augment_lib.center_resize(np.asarray(record["image"]), image_size),
            "label": record["label"], "id": record["id"]}


def load_all(source: RandomAccessSource, image_size: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (n, S, S, 3), labels int64 (n,), ids int64 (n,)) of a small source."""
    images, labels, ids = [], [], []
    for batch in eval_batches(source, batch_size=256, image_size=image_size):
        mask = batch["mask"]
        images.append(batch["image"][mask])
        labels.append(batch["label"][mask])
        ids.append(batch["id"][mask])
    return np.concatenate(images), np.concatenate(labels), np.concatenate(ids)
