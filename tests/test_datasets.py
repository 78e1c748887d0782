"""open_source / prepare_mosaic / TASKS, and the build_data launcher."""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from sdr_jax.data import datasets, mosaic, sources
from tests import fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = fixtures.tiny_mosaic_config()


@pytest.fixture(scope='module')
def source_tree(tiny_mosaic):
    return tiny_mosaic[0]


@pytest.fixture(scope='module')
def data_dir(tiny_mosaic):
    return tiny_mosaic[2]  # built with TINY from source_tree, once per session


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f'network access attempted: {args[1:]}')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


def test_open_mosaic_split(data_dir):
    source = datasets.open_source('mosaic', 'fashion_test', data_dir, builder_config=TINY)
    assert len(source) == 10
    example = source[0]
    assert example['image'].shape == (32, 32, 3) and example['image'].dtype == np.uint8
    assert int(example['id']) // mosaic.ID_STRIDE == int(example['domain']) == 0
    assert int(source[-1]['id']) == int(source[len(source) - 1]['id'])
    batch = source.__getitems__([0, 3])
    assert [int(e['id']) for e in batch] == [int(source[0]['id']), int(source[3]['id'])]
    with pytest.raises(IndexError):
        source[len(source)]
    with pytest.raises(TypeError):
        source['0']


def test_tasks_describe_the_built_splits(data_dir):
    assert set(datasets.TASKS) == set(mosaic.DOMAIN_NAMES)
    for task in datasets.TASKS.values():
        train = datasets.open_source(task.dataset, task.train_split, data_dir, builder_config=TINY)
        test = datasets.open_source(task.dataset, task.test_split, data_dir, builder_config=TINY)
        labels = [int(e['label']) for e in train.__getitems__(list(range(len(train))))]
        assert len(test) > 0 and 0 <= min(labels) and max(labels) < task.num_classes
    assert datasets.TASKS['clipart'].num_classes == len(sources.CLIPART_CLASSES)


def test_unknown_split(data_dir):
    with pytest.raises(sources.DataError, match="no split 'cars_test'"):
        datasets.open_source('mosaic', 'cars_test', data_dir, builder_config=TINY)


def test_mosaic_not_prepared(tmp_path):
    with pytest.raises(datasets.DatasetNotPreparedError, match='build_data.py'):
        datasets.open_source('mosaic/small', 'pool', tmp_path)
    with pytest.raises(sources.DataError, match='unknown mosaic config'):
        datasets.open_source('mosaic/huge', 'pool', tmp_path)


def test_build_if_missing(tmp_path, source_tree, monkeypatch):
    # Without manual_dir the builder reads the installed sources; point it at the fixture.
    monkeypatch.setattr(sources.SourceRoots, 'installed',
                        classmethod(lambda cls: cls.under(source_tree)))
    source = datasets.open_source('mosaic', 'pool', tmp_path, build_if_missing=True,
                                  builder_config=TINY)
    assert len(source) > 0


def test_unknown_dataset(tmp_path, no_network):
    with pytest.raises(datasets.UnknownDatasetError, match='cifar10') as error:
        datasets.open_source('cifar1O', 'train', tmp_path)
    assert '\n' not in str(error.value)


def test_unprepared_tfds_dataset_never_downloads(tmp_path, no_network):
    with pytest.raises(datasets.DatasetNotPreparedError,
                       match='tfds build cifar10 .*--file_format=array_record'):
        datasets.open_source('cifar10', 'train', tmp_path, build_if_missing=True)
    assert not any(tmp_path.iterdir())


class _GrayRecords:
    """Stands in for a TFDS data source of a gray dataset with string ids."""

    def __init__(self, n):
        self.records = [{'image': np.full((5, 5, 1), i, np.uint8), 'label': i, 'id': f'r{i}'}
                        for i in range(n)]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __getitems__(self, indices):
        return [self.records[i] for i in indices]


def test_tfds_records_get_rgb_images_and_index_ids():
    source = datasets.ExampleSource(_GrayRecords(4), 'fake', 'train', has_ids=False)
    example = source[2]
    assert example['image'].shape == (5, 5, 3) and (example['image'] == 2).all()
    assert example['id'] == 2 and example['tfds_id'] == 'r2'
    assert [e['id'] for e in source.__getitems__([3, 1])] == [3, 1]


def _run_cli(*args, env=None):
    env = {**os.environ, 'PYTHONPATH': str(REPO), **(env or {})}
    return subprocess.run([sys.executable, str(REPO / 'launch' / 'build_data.py'), *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_cli_builds_and_draws_grid(tmp_path, source_tree):
    grid = tmp_path / 'grid.png'
    result = _run_cli('--config=small', f'--data_dir={tmp_path / "data"}',
                      f'--manual_dir={source_tree}', f'--grid={grid}')
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in mosaic.DOMAIN_NAMES}
    assert set(rows) == set(mosaic.DOMAIN_NAMES)
    assert rows['emoji_twitter'][:2] == [str(len(sources.EMOJI_CLASSES)), '0']  # not in pool
    assert grid.stat().st_size > 10_000


@pytest.mark.slow
def test_cli_error_is_one_line(tmp_path):
    manual = tmp_path / 'sources'
    fixtures.make_source_tree(manual, n_per_class=1)
    for path in sorted((manual / 'fashion-mnist').iterdir()):
        path.unlink()
    result = _run_cli('--config=small', f'--data_dir={tmp_path / "data"}',
                      f'--manual_dir={manual}')
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith('error: ') and 'Fashion-MNIST' in result.stderr
    assert not (tmp_path / 'data').exists()
