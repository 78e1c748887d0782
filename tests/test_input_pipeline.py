"""Tests for sdr_jax.data.input_pipeline on in-memory sources (lists of record dicts)."""
import itertools
import json
import math

import numpy as np
import pytest

from sdr_jax.data import augment
from sdr_jax.data import input_pipeline

_ID_OFFSET = 1000  # ids differ from positions, so mixing the two up is caught.


def _source(n: int, size: int = 32, seed: int = 0) -> list[dict]:
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return [{"image": images[i], "id": _ID_OFFSET + i, "label": i % 5} for i in range(n)]


def _ids(source: list[dict]) -> set[int]:
    return {record["id"] for record in source}


def _take(ds, count: int) -> list[dict]:
    return list(itertools.islice(iter(ds), count))


def _assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _identity_aug(size: int = 32):
    """Augmentation that returns the image unchanged (full crop, no random ops)."""
    cfg = augment.default_aug_config(size)
    cfg.crop_scale = (1.0, 1.0)
    cfg.crop_ratio = (1.0, 1.0)
    cfg.flip_prob = cfg.jitter_prob = cfg.grayscale_prob = cfg.blur_prob = 0.0
    return cfg


def test_batch_structure_and_views_belong_to_their_ids():
    source = _source(20)
    batches = _take(input_pipeline.pretrain_dataset(source, batch_size=4, seed=0,
                                              aug_cfg=_identity_aug()), 6)
    for batch in batches:
        assert set(batch) == {"view1", "view2", "id", "label"}
        assert batch["view1"].shape == batch["view2"].shape == (4, 32, 32, 3)
        assert batch["view1"].dtype == np.uint8
        assert batch["id"].dtype == batch["label"].dtype == np.int64
        for row, record_id in enumerate(batch["id"]):
            record = source[record_id - _ID_OFFSET]
            np.testing.assert_array_equal(batch["view1"][row], record["image"])
            np.testing.assert_array_equal(batch["view2"][row], record["image"])
            assert batch["label"][row] == record["label"]


def test_two_views_differ_and_image_size_follows_config():
    batch = _take(input_pipeline.pretrain_dataset(_source(16), batch_size=8, seed=0,
                                            aug_cfg=augment.default_aug_config(24)), 1)[0]
    assert batch["view1"].shape == (8, 24, 24, 3)
    for row in range(8):
        assert not np.array_equal(batch["view1"][row], batch["view2"][row])


def test_same_seed_same_batches_other_seed_other_batches():
    source, cfg = _source(24), augment.default_aug_config(32)
    make = lambda seed: _take(input_pipeline.pretrain_dataset(source, batch_size=6, seed=seed,
                                                        aug_cfg=cfg), 5)
    first = make(7)
    _assert_batches_equal(first, make(7))
    other = make(8)
    assert not np.array_equal(first[0]["id"], other[0]["id"])
    assert not np.array_equal(first[0]["view1"], other[0]["view1"])


def test_epochs_are_reshuffled_permutations():
    source = _source(12)
    batches = _take(input_pipeline.pretrain_dataset(source, batch_size=3, seed=0, num_epochs=2,
                                              aug_cfg=_identity_aug()), 100)
    ids = np.concatenate([batch["id"] for batch in batches])
    assert len(ids) == 24  # Exactly two epochs, then the iterator ends.
    epoch1, epoch2 = ids[:12], ids[12:]
    assert set(epoch1) == set(epoch2) == _ids(source)
    assert not np.array_equal(epoch1, epoch2)
    assert not np.array_equal(epoch1, np.sort(epoch1))


@pytest.mark.parametrize("count", [1, 3])
def test_process_shards_are_disjoint_and_cover_one_epoch(count):
    source = _source(31)
    per_process = []
    for index in range(count):
        batches = _take(input_pipeline.pretrain_dataset(
            source, batch_size=1, seed=0, num_epochs=1, aug_cfg=_identity_aug(),
            process_index=index, process_count=count), 100)
        per_process.append([int(b["id"][0]) for b in batches])
    flat = [i for ids in per_process for i in ids]
    assert len(flat) == len(set(flat)) == 31
    assert set(flat) == _ids(source)
    assert max(map(len, per_process)) - min(map(len, per_process)) <= 1


def test_indices_restrict_the_records():
    source = _source(40)
    indices = np.array([3, 5, 8, 13, 21, 34, 2, 1])
    batches = _take(input_pipeline.pretrain_dataset(source, batch_size=4, seed=1, num_epochs=1,
                                              aug_cfg=_identity_aug(), indices=indices), 100)
    ids = np.concatenate([batch["id"] for batch in batches])
    assert sorted(ids) == sorted(indices + _ID_OFFSET)
    # Sharding applies to the selected records.
    halves = [np.concatenate([b["id"] for b in _take(input_pipeline.pretrain_dataset(
        source, batch_size=2, seed=1, num_epochs=1, aug_cfg=_identity_aug(), indices=indices,
        process_index=p, process_count=2), 100)]) for p in range(2)]
    assert not set(halves[0]) & set(halves[1])
    assert set(halves[0]) | set(halves[1]) == set(indices + _ID_OFFSET)


def test_restored_iterator_yields_the_same_next_batch():
    source, cfg = _source(20), augment.default_aug_config(32)
    make = lambda: input_pipeline.pretrain_dataset(source, batch_size=4, seed=3, aug_cfg=cfg)
    iterator = iter(make())
    for _ in range(7):  # Crosses an epoch boundary (5 batches per epoch).
        next(iterator)
    state = input_pipeline.get_iterator_state(iterator)
    assert isinstance(state, bytes) and json.loads(state)
    expected = _take(iterator, 2)
    restored = iter(make())
    input_pipeline.set_iterator_state(restored, state)
    _assert_batches_equal(_take(restored, 2), expected)
    # A dict state (e.g. from an Orbax JSON item) works too.
    restored = iter(make())
    input_pipeline.set_iterator_state(restored, json.loads(state))
    _assert_batches_equal(_take(restored, 1), expected[:1])


def test_two_workers_match_zero_workers_and_restore():
    source, cfg = _source(24), augment.default_aug_config(32)
    make = lambda workers: input_pipeline.pretrain_dataset(source, batch_size=4, seed=5,
                                                     aug_cfg=cfg, num_workers=workers)
    reference = _take(make(0), 5)
    iterator = iter(make(2))
    try:
        head = [next(iterator) for _ in range(3)]
        state = input_pipeline.get_iterator_state(iterator)
        tail = [next(iterator) for _ in range(2)]
    finally:
        iterator.close()
    _assert_batches_equal(head + tail, reference)
    restored = iter(make(2))
    try:
        input_pipeline.set_iterator_state(restored, state)
        _assert_batches_equal([next(restored)], tail[:1])
    finally:
        restored.close()


def test_pretrain_errors_are_clear():
    source, cfg = _source(10), augment.default_aug_config(32)
    with pytest.raises(ValueError, match="batch_size 8 is larger than this process's shard of 5"):
        input_pipeline.pretrain_dataset(source, batch_size=8, seed=0, aug_cfg=cfg, process_count=2)
    with pytest.raises(ValueError, match="source is empty"):
        input_pipeline.pretrain_dataset([], batch_size=1, seed=0, aug_cfg=cfg)
    with pytest.raises(ValueError, match=r"indices out of range .* \[10, -1\]"):
        input_pipeline.pretrain_dataset(source, batch_size=1, seed=0, aug_cfg=cfg,
                                  indices=[0, 10, -1])
    with pytest.raises(ValueError, match="1-D integer"):
        input_pipeline.pretrain_dataset(source, batch_size=1, seed=0, aug_cfg=cfg, indices=[0.5])
    with pytest.raises(ValueError, match="process_index"):
        input_pipeline.pretrain_dataset(source, batch_size=1, seed=0, aug_cfg=cfg,
                                  process_index=2, process_count=2)
    bad_cfg = augment.default_aug_config(32)
    bad_cfg.grayscale_prob = 2.0
    with pytest.raises(ValueError, match="grayscale_prob"):
        input_pipeline.pretrain_dataset(source, batch_size=1, seed=0, aug_cfg=bad_cfg)


@pytest.mark.parametrize("count", [1, 2])
def test_eval_batches_cover_every_example_once_with_mask(count):
    source = _source(23, size=40)
    seen, per_process_batches = [], []
    for index in range(count):
        batches = list(input_pipeline.eval_batches(source, batch_size=8, image_size=32,
                                             process_index=index, process_count=count))
        per_process_batches.append(len(batches))
        for batch in batches:
            assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
            assert batch["mask"].dtype == bool
            mask = batch["mask"]
            assert not batch["image"][~mask].any() and not batch["id"][~mask].any()
            for image, label, record_id in zip(batch["image"][mask], batch["label"][mask],
                                               batch["id"][mask]):
                record = source[record_id - _ID_OFFSET]
                np.testing.assert_array_equal(image, augment.center_resize(record["image"], 32))
                assert label == record["label"]
                seen.append(int(record_id))
    assert sorted(seen) == sorted(_ids(source))
    # Same batch count on every process (lockstep), no fully padded batch beyond that.
    assert len(set(per_process_batches)) == 1
    assert per_process_batches[0] == math.ceil(math.ceil(23 / count) / 8)


def test_eval_process_without_records_still_yields_padded_batches():
    source = _source(1)
    batches = [list(input_pipeline.eval_batches(source, batch_size=4, image_size=32,
                                          process_index=p, process_count=2)) for p in range(2)]
    assert [len(b) for b in batches] == [1, 1]
    assert batches[0][0]["mask"].sum() == 1 and batches[1][0]["mask"].sum() == 0


def test_load_all_returns_the_source_in_order():
    source = _source(13)
    images, labels, ids = input_pipeline.load_all(source, 32)
    assert images.shape == (13, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(ids, [r["id"] for r in source])
    np.testing.assert_array_equal(labels, [r["label"] for r in source])
    np.testing.assert_array_equal(images, np.stack([r["image"] for r in source]))


def test_eval_errors_are_clear():
    with pytest.raises(ValueError, match="source is empty"):
        input_pipeline.eval_batches([], batch_size=4, image_size=32)
    with pytest.raises(ValueError, match="batch_size"):
        input_pipeline.eval_batches(_source(4), batch_size=0, image_size=32)
