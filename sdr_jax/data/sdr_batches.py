"""SDR training batches: per step, a batch of the whole pool (D0) for the SDRnet and, from
progressive stage 1 on, one batch per sampled path drawn from that path's data subset (the union
of the leaf clusters under it, DESIGN §2.4).

A step's batch is a pure function of (seed, step): its paths, its D0 images (epoch-wise
permutations of the pool), its subset images and its crops and flips (the colour augmentations
run on the device, keyed by (seed, step) too: train/sdr.py). The pipeline is therefore a
grain `MapDataset` indexed by step and its whole state is the next step: a resumed run, on any
number of workers or hosts, sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

from typing import Any

import grain
import ml_collections
import numpy as np

from sdr_jax.data.assignments import Assignments
from sdr_jax.data import augment as augment_lib
from sdr_jax.data import input_pipeline
from sdr_jax.data.records import iter_records
from sdr_jax.core.errors import ConfigError
from sdr_jax.core.progressive import ProgressiveSchedule


def record_ids(source) -> np.ndarray:
    """The example id of every record of `source`, in record order (ArrayRecord order is
    shuffled, the clustering keys on ids)."""
    return np.fromiter((r["id"] for r in iter_records(source)), np.int64, count=len(source))


class SDRBatches:
    """Random access, by step, to this process's share of every SDR training batch.

    Element `step` (1-based) is a dict: `d0_view1`, `d0_view2` uint8 (B0_local, S, S, 3) and,
    when the step's stage is >= 1, `paths` int32 (P_local, L), `sub_view1`, `sub_view2` uint8
    (P_local, b, S, S, 3). Paths are sampled for the whole step identically on every process;
    each process builds the batches of its contiguous slice of them.
    """

    def __init__(self, source, assignments: Assignments, schedule: ProgressiveSchedule, *,
                 source_ids: np.ndarray, d0_batch_size: int, paths_per_step: int,
                 subnet_batch_size: int, seed: int, aug_cfg: ml_collections.ConfigDict,
                 process_index: int = 0, process_count: int = 1):
        augment_lib.validate_aug_config(aug_cfg)
        for name, value in (("d0_batch_size", d0_batch_size), ("paths_per_step", paths_per_step)):
            if value % process_count:
                raise ConfigError(f"{name}={value} does not split over {process_count} processes.")
        self._source = source
        self._schedule = schedule
        self._seed = seed
        self._view_cfgs = [augment_lib.view_config(aug_cfg, v) for v in augment_lib.VIEWS]
        self._d0_global = d0_batch_size
        self._d0_local = d0_batch_size // process_count
        self._d0_offset = process_index * self._d0_local
        self._paths_local = paths_per_step // process_count
        self._paths_offset = process_index * self._paths_local
        self._paths_per_step = paths_per_step
        self._subnet_batch_size = subnet_batch_size
        # Record positions of the examples of every trainable partial path (the union of the
        # leaf clusters under it), for every progressive stage.
        position_of = {int(i): p for p, i in enumerate(source_ids)}
        unknown = [int(i) for i in assignments.ids if int(i) not in position_of][:3]
        if unknown or len(assignments.ids) != len(source_ids):
            raise ConfigError(
                f"the assignments file covers {len(assignments.ids)} examples but the dataset "
                f"has {len(source_ids)} (ids not in the dataset, e.g. {unknown}): it was made "
                f"for another dataset or split; re-run launch/cluster.py on this one.")
        positions = np.asarray([position_of[int(i)] for i in assignments.ids], np.int64)
        self._members = {}
        for stage in range(1, schedule.spec.num_blocks + 1):
            for path in schedule.spec.stage_paths(stage):
                members = positions[assignments.indices_for(path)]
                if members.size == 0:
                    raise ConfigError(f"no example of the assignments falls under path "
                                      f"{path.tolist()}; re-run clustering (or use fewer groups).")
                self._members[tuple(path)] = members

    def __len__(self) -> int:  # grain needs a length; steps never run out in practice
        return 2 ** 62

    def __getitem__(self, step: int) -> dict[str, Any]:
        step = int(step)
        plan = self.plan(step)
        # Random draws are keyed by global batch position (D0 image, path slot), never by
        # process, so any split over hosts and devices gives the same global batch.
        d0_rngs = [np.random.default_rng([self._seed, step, 0xA0, self._d0_offset + j])
                   for j in range(self._d0_local)]
        view1, view2 = self._two_views(plan["d0_records"], d0_rngs)
        batch = {"d0_view1": view1, "d0_view2": view2}
        if "paths" not in plan:
            return batch
        views = []
        for slot, records in zip(plan["slots"], plan["sub_records"]):
            rng = np.random.default_rng([self._seed, step, 0x5B, slot])
            views.append(self._two_views(records, [rng] * len(records)))
        batch["paths"] = plan["paths"]
        batch["sub_view1"] = np.stack([v[0] for v in views])
        batch["sub_view2"] = np.stack([v[1] for v in views])
        return batch

    def plan(self, step: int) -> dict[str, np.ndarray]:
        """Which records this process reads at `step`: `d0_records` (B0_local,) and, from stage 1
        on, its `paths` (P_local, L), their global `slots` and `sub_records` (P_local, b)."""
        size = len(self._source)
        start = (step - 1) * self._d0_global + self._d0_offset
        epochs, offsets = np.divmod(np.arange(start, start + self._d0_local), size)
        d0_records = np.empty(self._d0_local, np.int64)
        for epoch in np.unique(epochs):
            permutation = np.random.default_rng([self._seed, int(epoch), 0xD0]).permutation(size)
            d0_records[epochs == epoch] = permutation[offsets[epochs == epoch]]
        plan = {"d0_records": d0_records}
        if self._schedule.stage_at(step) == 0:
            return plan
        paths = self._schedule.sample_paths(self._seed, step, self._paths_per_step)
        slots = np.arange(self._paths_offset, self._paths_offset + self._paths_local)
        plan["paths"] = paths[slots].astype(np.int32)
        plan["slots"] = slots
        plan["sub_records"] = np.stack([self._subset_records(step, s, paths[s]) for s in slots])
        return plan

    def _subset_records(self, step: int, slot: int, path: np.ndarray) -> np.ndarray:
        members = self._members[tuple(path)]
        rng = np.random.default_rng([self._seed, step, 0x5C, slot])
        return rng.choice(members, self._subnet_batch_size,
                          replace=self._subnet_batch_size > len(members))

    def _two_views(self, records: np.ndarray, rngs: list[np.random.Generator]):
        """Two cropped and flipped views of each record (each by its view's recipe), the i-th
        drawing from rngs[i]; the colour augmentations run on the device (train/sdr.py)."""
        images = [np.asarray(r["image"]) for r in self._read([int(i) for i in records])]
        views = [[augment_lib.crop_and_flip(image, rng, cfg) for cfg in self._view_cfgs]
                 for image, rng in zip(images, rngs)]
        return np.stack([v[0] for v in views]), np.stack([v[1] for v in views])

    def _read(self, positions: list[int]) -> list[dict]:
        if hasattr(self._source, "__getitems__"):
            return self._source.__getitems__(positions)
        return [self._source[i] for i in positions]


def sdr_dataset(batches: SDRBatches, first_step: int, num_steps: int, num_workers: int = 0
                ) -> grain.IterDataset:
    """Steps first_step..num_steps of `batches` as a grain iterator (worker processes build
    whole steps; order and content do not depend on the number of workers)."""
    input_pipeline.allow_unparsed_absl_flags()
    ds = grain.MapDataset.range(first_step, num_steps + 1).map(batches.__getitem__)
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
    if num_workers > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter_ds
