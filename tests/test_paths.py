"""Path arithmetic: index round trips, progressive stages, the tree, channel masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdr_jax.core import paths
from sdr_jax.core.paths import ALL, ChannelLayout, PathSpec


@pytest.mark.parametrize("blocks,groups", [(4, 4), (3, 2), (1, 3)])
def test_index_round_trip_and_digit_order(blocks, groups):
    spec = PathSpec(blocks, groups)
    idx = np.arange(spec.num_paths)
    all_paths = spec.all_paths()
    assert all_paths.shape == (groups**blocks, blocks) and all_paths.dtype == np.int32
    np.testing.assert_array_equal(spec.path_to_index(all_paths), idx)
    np.testing.assert_array_equal(spec.index_to_path(idx), all_paths)
    assert len({tuple(p) for p in all_paths}) == spec.num_paths
    # Block 0 least significant; the last block is the top-level cluster.
    for i, p in zip(idx, all_paths):
        assert i == sum(int(g) * groups**l for l, g in enumerate(p))
        assert i // groups ** (blocks - 1) == p[-1]


def test_index_of_256_path_config():
    spec = PathSpec(4, 4)
    assert spec.num_paths == 256
    np.testing.assert_array_equal(spec.index_to_path(1 + 2 * 4 + 3 * 64), [1, 2, 0, 3])
    np.testing.assert_array_equal(spec.path_to_index([[3, 3, 3, 3], [0, 0, 0, 1]]), [255, 64])


def test_stage_paths_grow_from_the_last_block():
    spec = PathSpec(3, 2)
    np.testing.assert_array_equal(spec.stage_paths(0), [[ALL, ALL, ALL]])
    np.testing.assert_array_equal(spec.stage_paths(1), [[ALL, ALL, 0], [ALL, ALL, 1]])
    assert spec.stage_paths(2).shape == (4, 3) and (spec.stage_paths(2)[:, 0] == ALL).all()
    np.testing.assert_array_equal(spec.stage_paths(3), spec.all_paths())
    for s in range(4):
        assert all(spec.stage_of(p) == s for p in spec.stage_paths(s))
    with pytest.raises(ValueError, match="stage"):
        spec.stage_paths(4)


def test_parent_leaves_prefix_suffix():
    spec = PathSpec(3, 2)
    np.testing.assert_array_equal(spec.parent([1, 0, 1]), [ALL, 0, 1])
    np.testing.assert_array_equal(spec.parent([ALL, 0, 1]), [ALL, ALL, 1])
    with pytest.raises(ValueError, match="no parent"):
        spec.parent(spec.full_path())
    with pytest.raises(ValueError, match="no progressive stage"):
        spec.stage_of([0, ALL, 1])
    # The leaves under a stage path are the full paths sharing its suffix.
    leaves = spec.leaves([ALL, 0, 1])
    np.testing.assert_array_equal(spec.index_to_path(leaves), [[0, 0, 1], [1, 0, 1]])
    assert sorted(spec.leaves(spec.full_path())) == list(range(8))
    # The top-level cluster of a stage-1 path is its last entry.
    assert set(spec.leaves([ALL, ALL, 1]) // 4) == {1}
    np.testing.assert_array_equal(spec.paths_with_prefix([1]), [[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(spec.paths_with_suffix([1, 1]), [[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="prefix/suffix"):
        spec.paths_with_prefix([2])


def test_prefix_tree_and_suffix_tree_node_order():
    spec = PathSpec(3, 2)
    np.testing.assert_array_equal(spec.prefix_nodes(0), [[ALL, ALL, ALL]])
    np.testing.assert_array_equal(spec.prefix_nodes(2), [[0, 0, ALL], [0, 1, ALL], [1, 0, ALL],
                                                         [1, 1, ALL]])
    for depth in range(3):  # the children of prefix node i are nodes i*G .. i*G+G-1
        parents, children = spec.prefix_nodes(depth), spec.prefix_nodes(depth + 1)
        np.testing.assert_array_equal(children[:, :depth], np.repeat(parents[:, :depth], 2, 0))
    assert sorted(spec.path_to_index(spec.prefix_nodes(3))) == list(range(8))
    with pytest.raises(ValueError, match="depth"):
        spec.prefix_nodes(4)
    # Suffix tree (clustering's): a stage path's node holds the leaves under it, contiguously.
    for path in np.concatenate([spec.stage_paths(s) for s in range(4)]):
        depth, node = spec.suffix_node(path)
        assert depth == spec.stage_of(path)
        np.testing.assert_array_equal(np.flatnonzero(spec.suffix_node_of_leaf(np.arange(8), depth)
                                                     == node), np.sort(spec.leaves(path)))


@pytest.mark.parametrize("bad,match", [
    ([0, 1, 2], r"shape \(\.\.\., 4\)"),
    ([0, 1, 2, 4], "entries must be in"),
    ([0, -2, 1, 1], "entries must be in"),
    ([0.0, 1, 1, 1], "integers"),
])
def test_validate_rejects_bad_paths(bad, match):
    with pytest.raises(ValueError, match=match):
        PathSpec(4, 4).validate(bad)


def test_full_paths_only_where_an_index_is_needed():
    spec = PathSpec(2, 2)
    with pytest.raises(ValueError, match="entries must be in 0..1"):
        spec.path_to_index([ALL, 0])
    with pytest.raises(ValueError, match="index must be in 0..3"):
        spec.index_to_path(4)


def test_plain_network_spec():
    spec = PathSpec(4, 0)
    assert spec.num_paths == 1 and spec.max_stage == 0
    np.testing.assert_array_equal(spec.validate(spec.full_path()), [ALL] * 4)
    np.testing.assert_array_equal(spec.stage_paths(0), np.full((1, 4), ALL))
    with pytest.raises(ValueError):
        spec.validate([0, ALL, ALL, ALL])


def test_channel_layout_and_masks():
    layout = ChannelLayout.make(16, 4, 0.5)
    assert (layout.shared, layout.group_width) == (8, 2)
    np.testing.assert_array_equal(layout.group_ids, [-1] * 8 + [0, 0, 1, 1, 2, 2, 3, 3])
    for p in [ALL, 0, 1, 2, 3]:
        want = np.zeros(16, bool)
        want[:8] = True
        want[8:] = True if p == ALL else False
        if p != ALL:
            want[8 + 2 * p: 10 + 2 * p] = True
        np.testing.assert_array_equal(jax.jit(paths.block_mask, static_argnums=0)(layout, jnp.int32(p)), want)
        np.testing.assert_array_equal(paths.active_channels(layout, p), np.flatnonzero(want))
    # A sub-net with shared 0.5 and G=4 keeps 62.5% of the channels.
    assert paths.active_channels(layout, 2).size / 16 == 0.625
    batched = paths.block_mask(layout, jnp.array([0, ALL]))
    assert batched.shape == (2, 16) and batched[1].all()


def test_channel_layout_errors_name_the_problem():
    with pytest.raises(ValueError, match="stage 2.*do not split into 3 groups"):
        ChannelLayout.make(16, 3, 0.5, where="stage 2")
    with pytest.raises(ValueError, match="not a whole number"):
        ChannelLayout.make(10, 2, 0.25)
    with pytest.raises(ValueError, match="shared_fraction"):
        ChannelLayout.make(8, 2, 1.0)
