"""The mosaic builder on fixture sources: split sizes, disjointness, stable ids, failed builds."""
import collections

import numpy as np
import pytest

from sdr_jax.data import datasets, mosaic, sources
from tests import fixtures

# Small caps so that some domains hit them and others do not.
TINY = fixtures.tiny_mosaic_config()


@pytest.fixture(scope='module')
def source_tree(tiny_mosaic):
    root, counts, _ = tiny_mosaic
    return root, counts


def _read_all(builder) -> dict[str, list[dict]]:
    out = {}
    for split in builder.info.splits.keys():
        source = builder.as_data_source(split=split)
        out[split] = source.__getitems__(list(range(len(source))))
    return out


def _build(tmp_path_factory, source_tree):
    root, _ = source_tree
    data_dir = tmp_path_factory.mktemp('data')
    return _read_all(datasets.prepare_mosaic(data_dir, TINY, manual_dir=root))


@pytest.fixture(scope='module')
def built(tiny_mosaic):
    root, _, data_dir = tiny_mosaic  # built once per session; read here
    return _read_all(datasets.prepare_mosaic(data_dir, TINY, manual_dir=root))


def _hash(example) -> str:
    return sources.content_hashes(example['image'][None])[0]


def test_plan_domain_caps_and_fraction():
    plan = mosaic.plan_domain(100, TINY, in_pool=True)
    assert plan.test == range(0, 10) and plan.train == range(10, 25)
    assert plan.pool == range(10, 40)
    small = mosaic.plan_domain(12, TINY, in_pool=False)
    assert small.test == range(0, 3) and small.train == range(3, 12) and len(small.pool) == 0


def test_split_sizes(built, source_tree):
    _, counts = source_tree
    pool_by_domain = collections.Counter(e['domain'] for e in built[mosaic.POOL_SPLIT])
    for index, domain in enumerate(mosaic.DOMAINS):
        plan = mosaic.plan_domain(counts[domain.name], TINY, domain.in_pool)
        assert len(built[mosaic.test_split(domain.name)]) == len(plan.test)
        assert len(built[mosaic.train_split(domain.name)]) == len(plan.train)
        assert pool_by_domain[index] == len(plan.pool)
    assert pool_by_domain[mosaic.DOMAIN_NAMES.index('emoji_twitter')] == 0
    # The fixture makes some domains hit the caps and others not.
    assert len(built['fashion_train']) == TINY.train_per_task
    assert len(built['emoji_test']) == counts['emoji'] // 4 < TINY.test_per_task


def test_test_images_never_in_pool(built):
    pool_hashes = {_hash(e) for e in built[mosaic.POOL_SPLIT]}
    for domain in mosaic.DOMAIN_NAMES:
        test_hashes = {_hash(e) for e in built[mosaic.test_split(domain)]}
        train_hashes = {_hash(e) for e in built[mosaic.train_split(domain)]}
        assert not test_hashes & pool_hashes
        assert not test_hashes & train_hashes


def test_fields_ids_and_ranges(built):
    image_of_id = {}
    for split, examples in built.items():
        ids = [int(e['id']) for e in examples]
        assert len(set(ids)) == len(ids), split
        for example in examples:
            domain = int(example['domain'])
            assert example['image'].shape == (32, 32, 3) and example['image'].dtype == np.uint8
            assert int(example['id']) // mosaic.ID_STRIDE == domain
            assert 0 <= example['label'] < len(mosaic.DOMAINS[domain].class_names)
            if split != mosaic.POOL_SPLIT:
                assert split.startswith(mosaic.DOMAIN_NAMES[domain] + '_')
            # The same id is the same image in every split.
            assert image_of_id.setdefault(int(example['id']), _hash(example)) == _hash(example)
    # Ranks follow the content-hash order.
    fashion = sorted(built['fashion_train'], key=lambda e: int(e['id']))
    assert [_hash(e) for e in fashion] == sorted(_hash(e) for e in fashion)


def test_ids_stable_across_builds(built, tmp_path_factory, source_tree):
    again = _build(tmp_path_factory, source_tree)
    for split, examples in built.items():
        assert ({(int(e['id']), _hash(e), int(e['label'])) for e in examples} ==
                {(int(e['id']), _hash(e), int(e['label'])) for e in again[split]})


def test_missing_source_midway_leaves_nothing(tmp_path):
    manual = tmp_path / 'sources'
    fixtures.make_source_tree(manual, n_per_class=1)
    # Clipart is read after four other domains.
    for path in sorted((manual / 'openclipart').rglob('*'), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    data_dir = tmp_path / 'data'
    with pytest.raises(sources.SourceMissingError, match='openclipart'):
        datasets.prepare_mosaic(data_dir, TINY, manual_dir=manual)
    assert not data_dir.exists()
    # In a data_dir that already holds other data, only what the build made is removed.
    (tmp_path / 'shared' / 'other_dataset').mkdir(parents=True)
    with pytest.raises(sources.SourceMissingError):
        datasets.prepare_mosaic(tmp_path / 'shared', TINY, manual_dir=manual)
    assert [p.name for p in (tmp_path / 'shared').iterdir()] == ['other_dataset']


def test_manual_dir_must_hold_sources(tmp_path):
    (tmp_path / 'empty').mkdir()
    for manual in (tmp_path / 'nope', tmp_path / 'empty'):
        with pytest.raises(sources.SourceMissingError, match='not a directory with sources'):
            datasets.prepare_mosaic(tmp_path / 'data', TINY, manual_dir=manual)


def test_ids_agree_across_configs(built, tmp_path, source_tree):
    root, _ = source_tree
    other = mosaic.MosaicConfig(name='other', pool_per_domain=5, train_per_task=40,
                                test_per_task=3)
    rebuilt = _read_all(datasets.prepare_mosaic(tmp_path, other, manual_dir=root))
    hash_of = {int(e['id']): _hash(e) for examples in built.values() for e in examples}
    shared = [e for examples in rebuilt.values() for e in examples if int(e['id']) in hash_of]
    assert len(shared) > 100
    assert all(hash_of[int(e['id'])] == _hash(e) for e in shared)


def test_export_builds_the_same_dataset(tmp_path, source_tree, built):
    """A build from the compact export equals the build from the sources, split by split."""
    from sdr_jax.data import mosaic_export
    root, _ = source_tree
    export_dir = tmp_path / 'export'
    export_dir.mkdir()
    kept = mosaic.export(str(export_dir / mosaic_export.FILE_NAME), TINY, str(root))
    assert set(kept) == set(mosaic.DOMAIN_NAMES)
    # Gray domains are stored as one channel, colour ones as three.
    stored = np.load(export_dir / mosaic_export.FILE_NAME)
    assert stored['fashion/images'].ndim == 3 and stored['emoji/images'].ndim == 4
    rebuilt = _read_all(datasets.prepare_mosaic(tmp_path / 'data', TINY, manual_dir=export_dir))
    assert rebuilt.keys() == built.keys()
    for split, examples in built.items():
        assert len(rebuilt[split]) == len(examples), split
        for mine, theirs in zip(rebuilt[split], examples):
            assert int(mine['id']) == int(theirs['id']) and mine['label'] == theirs['label']
            np.testing.assert_array_equal(mine['image'], theirs['image'])


def test_export_too_short_for_a_config_is_refused(tmp_path, source_tree):
    from sdr_jax.data import mosaic_export
    root, _ = source_tree
    fewer = mosaic.MosaicConfig(name='fewer', pool_per_domain=2, train_per_task=2,
                                test_per_task=1)
    (tmp_path / 'export').mkdir()
    mosaic.export(str(tmp_path / 'export' / mosaic_export.FILE_NAME), fewer, str(root))
    with pytest.raises(sources.DataError, match='export with --config=tiny'):
        datasets.prepare_mosaic(tmp_path / 'data', TINY, manual_dir=tmp_path / 'export')
    assert not (tmp_path / 'data' / 'mosaic').exists()  # nothing half-written


def test_corrupt_export_is_refused(tmp_path):
    from sdr_jax.data import mosaic_export
    (tmp_path / mosaic_export.FILE_NAME).write_bytes(b'not a zip')
    with pytest.raises(sources.DataError, match='not a readable mosaic export'):
        mosaic_export.load(tmp_path / mosaic_export.FILE_NAME)
