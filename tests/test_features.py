"""Feature store: sharded writes, atomic close, reads, and clear errors."""
import json
import os

import numpy as np
import pytest

from sdr_jax.core import io
from sdr_jax.jobs.cluster.store import FeatureStore, FeatureStoreError, FeatureWriter


def _data(n=103, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.permutation(10 * n)[:n], rng.normal(size=(n, dim)).astype(np.float32)


def _write(directory, ids, feats, batch=17, shard_rows=40, metadata=None):
    with FeatureWriter(directory, shard_rows=shard_rows, metadata=metadata) as writer:
        for start in range(0, len(ids), batch):
            writer.write(ids[start:start + batch], feats[start:start + batch])


def test_round_trip_across_shards(tmp_path):
    ids, feats = _data()
    _write(tmp_path / "store", ids, feats, metadata={"checkpoint": "ckpt/7"})
    store = FeatureStore(tmp_path / "store", expected_dim=6)
    assert store.shape == (103, 6) and store.metadata == {"checkpoint": "ckpt/7"}
    index = io.read_json(tmp_path / "store" / "index.json")
    assert [shard["count"] for shard in index["shards"]] == [40, 40, 23]
    np.testing.assert_array_equal(store.ids, ids)
    all_ids, all_feats = store.load_all()
    np.testing.assert_array_equal(all_ids, ids)
    np.testing.assert_array_equal(all_feats, feats)
    rows = np.array([102, 0, 41, 39, 40, 41, 7])
    np.testing.assert_array_equal(store.read(rows), feats[rows])


def test_shuffled_batches_cover_every_example_once(tmp_path):
    ids, feats = _data()
    _write(tmp_path / "store", ids, feats)
    batches = list(FeatureStore(tmp_path / "store").batches(25, seed=1))
    got_ids = np.concatenate([b[0] for b in batches])
    got_feats = np.concatenate([b[1] for b in batches])
    assert sorted(got_ids) == sorted(ids) and not np.array_equal(got_ids, ids)
    lookup = dict(zip(ids.tolist(), feats))
    np.testing.assert_array_equal(got_feats, np.stack([lookup[i] for i in got_ids.tolist()]))


def test_string_ids(tmp_path):
    ids = np.array([f"train_{i}" for i in range(10)])
    _write(tmp_path / "store", ids, np.ones((10, 3), np.float32), batch=4, shard_rows=3)
    np.testing.assert_array_equal(FeatureStore(tmp_path / "store").ids, ids)


def test_nothing_visible_before_close_and_crash_leaves_incomplete(tmp_path):
    ids, feats = _data()
    writer = FeatureWriter(tmp_path / "store", shard_rows=10)
    writer.write(ids, feats)
    assert not os.path.exists(tmp_path / "store")
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore(tmp_path / "store")
    writer.close()
    assert len(FeatureStore(tmp_path / "store")) == 103


def test_exception_inside_writer_discards_it(tmp_path):
    ids, feats = _data()
    with pytest.raises(RuntimeError):
        with FeatureWriter(tmp_path / "store") as writer:
            writer.write(ids, feats)
            raise RuntimeError("extraction failed")
    assert os.listdir(tmp_path) == []


def test_missing_and_damaged_stores(tmp_path):
    with pytest.raises(FeatureStoreError, match="no feature store"):
        FeatureStore(tmp_path / "nope")
    ids, feats = _data()
    _write(tmp_path / "store", ids, feats)
    with pytest.raises(FeatureStoreError, match="expected 7"):
        FeatureStore(tmp_path / "store", expected_dim=7)
    os.remove(tmp_path / "store" / "shard-00001.feats.npy")
    with pytest.raises(FeatureStoreError, match="missing"):
        FeatureStore(tmp_path / "store")
    os.remove(tmp_path / "store" / "index.json")
    with pytest.raises(FeatureStoreError, match="index.json"):
        FeatureStore(tmp_path / "store")


def test_index_count_and_version_are_checked(tmp_path):
    ids, feats = _data()
    _write(tmp_path / "store", ids, feats)
    index_path = tmp_path / "store" / "index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "count": 5}))
    with pytest.raises(FeatureStoreError, match="shard counts"):
        FeatureStore(tmp_path / "store")
    index_path.write_text(json.dumps({**index, "format_version": 99}))
    with pytest.raises(FeatureStoreError, match="format version"):
        FeatureStore(tmp_path / "store")


def test_bad_writes(tmp_path):
    writer = FeatureWriter(tmp_path / "store")
    writer.write(np.arange(3), np.zeros((3, 4), np.float32))
    with pytest.raises(FeatureStoreError, match="dim 5"):
        writer.write(np.arange(3, 6), np.zeros((3, 5), np.float32))
    with pytest.raises(FeatureStoreError, match="one per feature row"):
        writer.write(np.arange(2), np.zeros((3, 4), np.float32))
    with pytest.raises(FeatureStoreError, match="strings"):
        writer.write(np.array(["a", "b", "c"]), np.zeros((3, 4), np.float32))
    writer.write(np.arange(2), np.zeros((2, 4), np.float32))  # ids 0 and 1 again
    with pytest.raises(FeatureStoreError, match="duplicate"):
        writer.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(FeatureStoreError, match="already exists"):
        _write(tmp_path / "s2", *_data())
        FeatureWriter(tmp_path / "s2")
