"""Folder datasets: counts, ids, lookup by name, bad input, and a pool and task used end to end."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import simsiam_mosaic
from sdr_jax.data import datasets, folder, sources, tasks
from tests import fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = 'colours'


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('images') / 'colours'
    return root, fixtures.make_image_folder(root)


@pytest.fixture(scope='module')
def built(image_folder, tmp_path_factory):
    root, _ = image_folder
    data_dir = tmp_path_factory.mktemp('tfds')
    return data_dir, folder.build(root, NAME, data_dir)


def ids(source):
    return {int(example['id']) for example in source.__getitems__(list(range(len(source))))}


def test_counts_and_examples(image_folder, built):
    root, want = image_folder
    data_dir, report = built
    splits = ('train', 'val', 'test', 'pool')
    assert {s: len(datasets.open_source(NAME, s, data_dir)) for s in splits} == {
        s: want[s] for s in splits}
    assert [path for path, _ in report.plan.unreadable] == want['unreadable']
    assert report.plan.cross_split == want['cross_split']
    assert report.plan.class_names == list(fixtures.FOLDER_CLASSES)
    assert report.plan.pool_label_names == [*fixtures.FOLDER_CLASSES, 'extra']

    test = datasets.open_source(NAME, 'test', data_dir)
    example = test[0]
    assert example['image'].dtype == np.uint8 and example['image'].shape == (64, 64, 3)
    assert 0 <= int(example['label']) < 3
    # As in mosaic, test images never enter the pool; train ones do.
    pool = datasets.open_source(NAME, 'pool', data_dir)
    assert not ids(test) & ids(pool)
    assert ids(datasets.open_source(NAME, 'train', data_dir)) <= ids(pool)
    # The id names the original pixels.
    copy = folder.read_rgb(root / 'test' / 'blue' / 'copy_of_train.png')
    digest = sources.content_hashes([copy])[0]
    assert report.plan.ids[digest] == int(digest[:8], 16) >> 1
    assert report.plan.ids[digest] in ids(test)

    table = folder.format_report(report)
    assert 'skipped 1 unreadable file(s): train/red/broken.jpg' in table
    total = next(line for line in table.splitlines() if line.startswith('total'))
    assert total.split() == ['total', *(str(want[s]) for s in ('train', 'val', 'test', 'pool'))]
    assert 'size on disk' in table


def test_ids_stable_across_rebuilds_and_resize_policies(image_folder, built, tmp_path):
    root, _ = image_folder
    data_dir, _ = built
    again = folder.build(root, NAME, tmp_path, resize='keep')
    for split in ('train', 'test', 'pool'):
        first = datasets.open_source(NAME, split, data_dir)
        second = datasets.open_source(NAME, split, tmp_path)
        assert ids(first) == ids(second)
    kept = datasets.open_source(NAME, 'pool', tmp_path)
    assert {kept[i]['image'].shape for i in range(len(kept))} > {(70, 50, 3)}  # sizes kept
    assert again.plan.splits == folder.build(root, NAME, tmp_path, overwrite=True).plan.splits


def test_ids_fit_int32_and_clashes_resolve_the_same_way_every_time():
    clash = ['ffffffff' + '0' * 32, 'fffffffe' + '1' * 32, '12345678' + '2' * 32]  # 2 share 31 bits
    ids = folder.assign_ids(clash)
    assert len(set(ids.values())) == 3 and max(ids.values()) < 2**31
    assert ids == folder.assign_ids(reversed(clash))
    assert ids[clash[1]] == 2**31 - 1 and ids[clash[0]] == 0  # the next free value, wrapped


def test_found_by_name_like_a_registered_task(built, tmp_path):
    data_dir, _ = built
    task = tasks.get_task(NAME, data_dir)
    assert (task.dataset, task.train_split, task.test_split, task.num_classes) == (
        NAME, 'train+val', 'test', 3)
    train, test, _ = tasks.open_task(NAME, data_dir, pool_dataset=NAME)
    assert (len(train), len(test)) == (fixtures.FOLDER_SPLIT_SIZES['train'] * 3 - 1 + 6, 10)
    with pytest.raises(tasks.UnknownTaskError, match=f'Did you mean {NAME}.*Known tasks:.*mnist'):
        tasks.get_task('colors', data_dir)
    with pytest.raises(datasets.UnknownDatasetError, match=f'Did you mean {NAME}'):
        datasets.open_source('colors', 'pool', data_dir)
    with pytest.raises(tasks.UnknownTaskError, match='unknown task'):
        tasks.get_task(NAME, tmp_path)  # another data_dir

    pool_only = tmp_path / 'pool_src'
    shutil.copytree(built[1].plan.source_dir / 'extra', pool_only / 'a')
    folder.build(pool_only, 'unlabelled', tmp_path)
    assert len(datasets.open_source('unlabelled', 'pool', tmp_path)) == fixtures.FOLDER_UNLABELLED
    with pytest.raises(tasks.UnknownTaskError, match='without labels'):
        tasks.get_task('unlabelled', tmp_path)


def _save(path, seed=0, size=(24, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _task_tree(root, classes=('a', 'b'), splits=('train', 'test')):
    for seed, (split, name) in enumerate((s, c) for s in splits for c in classes):
        _save(root / split / name / f'{seed}.png', seed)
    return root


BAD = {
    'empty': (lambda root: root.mkdir(), {}, 'holds no image files'),
    'missing': (lambda root: None, {}, 'is not a directory'),
    'all unreadable': (lambda root: (root.mkdir(), (root / 'x.jpg').write_bytes(b'junk')), {},
                       'none of the 1 image files'),
    'strict': (lambda root: (_task_tree(root), (root / 'train' / 'a' / 'x.png').write_bytes(b'')),
               {'strict': True}, r'1 unreadable image file\(s\).*drop --strict'),
    'no test images': (lambda root: (_task_tree(root), _save(root / 'train' / 'c' / '9.png', 9)),
                       {}, "class 'c' has no readable test images"),
    'one class': (lambda root: _task_tree(root, classes=('a',)), {}, 'at least two'),
    'no test split': (lambda root: _task_tree(root, splits=('train',)), {},
                      'has a train/ folder but no test/'),
    'image outside a class': (lambda root: (_task_tree(root), _save(root / 'test' / 'x.png')),
                              {}, 'is not in a class folder'),
    'registered task': (_task_tree, {'name': 'mnist'}, 'registered task'),
    'mosaic': (_task_tree, {'name': 'mosaic'}, 'registered task or dataset'),
    'tfds dataset': (_task_tree, {'name': 'beans'}, 'is a TFDS dataset'),
    'bad name': (_task_tree, {'name': 'My-Data'}, 'lower case letters'),
    'bad resize': (_task_tree, {'resize': 'stretch'}, 'resize must be one of'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_is_refused_and_leaves_nothing(case, tmp_path):
    make, options, message = BAD[case]
    options = dict(options)
    source, data_dir = tmp_path / 'src', tmp_path / 'tfds'
    make(source)
    with pytest.raises(folder.FolderError, match=message) as error:
        folder.build(source, options.pop('name', 'mine'), data_dir, **options)
    assert '\n' not in str(error.value)
    assert not data_dir.exists() or not any(data_dir.iterdir())


def test_rebuild_needs_overwrite_and_a_failed_one_keeps_the_old(tmp_path, monkeypatch):
    source, data_dir = _task_tree(tmp_path / 'src'), tmp_path / 'tfds'
    folder.build(source, 'mine', data_dir)
    before = ids(datasets.open_source('mine', 'pool', data_dir))
    with pytest.raises(folder.FolderError, match='exists.*--overwrite'):
        folder.build(source, 'mine', data_dir)
    _save(source / 'train' / 'a' / 'new.png', seed=99)

    def broken(self, path):
        raise KeyboardInterrupt  # interrupted while writing

    monkeypatch.setattr(folder._FolderBuilder, '_image', broken)
    with pytest.raises(KeyboardInterrupt):
        folder.build(source, 'mine', data_dir, overwrite=True)
    assert sorted(os.listdir(data_dir)) == ['mine']  # no temporary directory left
    assert ids(datasets.open_source('mine', 'pool', data_dir)) == before
    monkeypatch.undo()
    folder.build(source, 'mine', data_dir, overwrite=True)
    assert len(ids(datasets.open_source('mine', 'pool', data_dir))) == len(before) + 1
    (data_dir / 'other').mkdir()
    with pytest.raises(folder.FolderError, match='is not a folder dataset'):
        folder.build(source, 'other', data_dir, overwrite=True)


def _run(script, *args):
    env = {**os.environ, 'PYTHONPATH': str(REPO),
           'XLA_FLAGS': fixtures.xla_flags(2)}
    return subprocess.run([sys.executable, str(REPO / 'launch' / script), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_cli_builds_table_and_grid_and_errors_in_one_line(image_folder, tmp_path):
    root, want = image_folder
    args = ('--dataset=folder', f'--source={root}', f'--name={NAME}', f'--data_dir={tmp_path}')
    out = _run('build_data.py', *args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[1].split() == ['class', 'train', 'val', 'test', 'pool']
    assert out.stdout.splitlines()[-1] == f'sample grid: {tmp_path / NAME / "samples.png"}'
    assert Image.open(tmp_path / NAME / 'samples.png').size[0] > 500
    assert 'writing pool' in out.stderr  # the progress bars

    again = _run('build_data.py', *args, '--strict', '--overwrite')
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        'error: 1 unreadable image file(s) under '
        f'{root} (e.g. train/red/broken.jpg: OSError: Truncated File Read); drop --strict to '
        'skip them.')
    assert os.listdir(tmp_path) == [NAME]  # the first build, untouched
    assert len(datasets.open_source(NAME, 'pool', tmp_path)) == want['pool']


@pytest.mark.slow
def test_pool_trains_and_task_routes_and_evaluates_end_to_end(built, tmp_path):
    """A tiny SDRnet trained (SimSiam) on the folder pool with a kNN monitor on the folder task,
    then routed and evaluated on it by the launch scripts, by name only."""
    from sdr_jax.train import pretrain as simsiam

    data_dir, _ = built
    config = simsiam_mosaic.get_config('tiny').unlock()
    config.data.dataset = NAME
    config.data.data_dir = str(data_dir)
    config.model.sdr.num_groups = 2
    config.eval.knn_tasks = (NAME,)
    workdir = str(tmp_path / 'run')
    result = simsiam.train_and_evaluate(config.lock(), workdir)
    assert result['finished'] and 0.0 <= result['knn'][NAME] <= 1.0

    out = str(tmp_path / 'out')
    routed = _run('route.py', '--config=configs/route.py:tiny', f'--task={NAME}',
                  f'--workdir={workdir}', f'--out={out}')
    assert routed.returncode == 0, routed.stderr[-2000:]
    ranking = json.load(open(os.path.join(out, 'route', NAME, 'ranking.json')))
    assert len(ranking['paths']) == 16
    evaluated = _run('evaluate.py', '--config=configs/route.py:tiny', f'--task={NAME}',
                     f'--workdir={os.path.join(out, "route", NAME, "best_subnet")}')
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    knn = float(evaluated.stdout.split('kNN ')[1].split()[0])
    assert knn == pytest.approx(100 * ranking['routed']['knn']['test']['accuracy'], abs=1e-2)
