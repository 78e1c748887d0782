"""The evaluation protocol: split, intervals, noise markers, baselines vs independent NumPy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models_testlib import tiny_config
from sdr_jax.config_base import load_config_file
from sdr_jax.data import tasks
from sdr_jax.core.errors import ConfigError
from sdr_jax.eval import protocol
from sdr_jax.models import build_model, export, path_spec
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.train.state import init_variables
from test_eval import reference_knn


def route_config(**overrides):
    config = load_config_file("configs/route.py:tiny")
    for key, value in overrides.items():
        config[key] = value
    return config


def test_split_is_disjoint_seeded_and_independent_of_order():
    ids = np.arange(1000, 1100) * 7
    split = protocol.split_train(ids, val_fraction=0.2, seed=3)
    assert len(split.validation) == 20 and len(split.memory) == 80
    assert not set(split.validation) & set(split.memory)
    assert sorted([*split.validation, *split.memory]) == list(range(100))
    # The same ids in another order: the same images are held out.
    perm = np.random.default_rng(0).permutation(100)
    shuffled = protocol.split_train(ids[perm], val_fraction=0.2, seed=3)
    assert set(ids[perm][shuffled.validation]) == set(ids[split.validation])
    other = protocol.split_train(ids, val_fraction=0.2, seed=4)
    assert set(other.validation) != set(split.validation)
    assert len(protocol.split_train(ids[:3], val_fraction=0.01, seed=0).validation) == 1
    with pytest.raises(ConfigError, match="at least one each"):
        protocol.split_train(ids[:1], val_fraction=0.2, seed=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        protocol.check_config(route_config(val_fraction=1.0))


def test_task_data_refuses_ids_shared_by_train_and_test():
    config = route_config()
    with pytest.raises(ConfigError, match="both the train and the test"):
        protocol.TaskData.build("t", 2, (np.zeros(4), np.arange(4)),
                                (np.zeros(2), np.array([3, 9])), config)


def test_wilson_interval_matches_the_hand_computed_one():
    # 45 of 50 at 95%: p=0.9, z^2=3.8415 -> centre 0.87146, half-width 0.08506.
    low, high = protocol.wilson_interval(45, 50)
    assert low == pytest.approx(0.78640, abs=1e-4) and high == pytest.approx(0.95653, abs=1e-4)
    assert protocol.wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert protocol.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    cell = protocol.cell(45, 50)
    assert (cell["accuracy"], cell["low"], cell["high"]) == (0.9, low, high)


def test_mean_interval_and_noise_marker():
    a, b = protocol.cell(45, 50), protocol.cell(10, 20)
    z2 = 1.959963984540054 ** 2
    var = lambda c, n: ((c + z2 / 2) / (n + z2)) * (1 - (c + z2 / 2) / (n + z2)) / (n + z2)
    mean = protocol.mean_cell([a, b])
    half = math.sqrt(z2) * math.sqrt(var(45, 50) + var(10, 20)) / 2
    assert mean["accuracy"] == pytest.approx(0.7)
    assert (mean["low"], mean["high"]) == pytest.approx((0.7 - half, 0.7 + half))
    # 1000 queries: 52% vs 50% is noise, 60% vs 50% is not.
    ref = protocol.cell(500, 1000)
    assert protocol.versus(protocol.cell(520, 1000), ref) == "~"
    assert protocol.versus(protocol.cell(600, 1000), ref) == "+"
    assert protocol.versus(protocol.cell(400, 1000), ref) == "-"
    assert protocol.format_cell(protocol.cell(520, 1000), ref).endswith("~")
    assert protocol.versus(mean, protocol.mean_cell([ref, ref])) == "+"


def test_within_noise_is_a_paired_test_on_the_same_queries():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.7
    close = base.copy()                    # loses 4 of base's right answers, wins 3 back
    close[np.flatnonzero(base)[:4]] = False
    close[np.flatnonzero(~base)[:3]] = True
    correct = np.stack([
        base,                              # 0: the selected path
        close,                             # 1: one query behind: a tie
        base & (np.arange(400) % 3 != 0),  # 2: loses ~1/3 of base's right answers: beaten
        base.copy(),                       # 3: identical answers: a tie
    ])
    tied = protocol.within_noise(correct, 0)
    assert tied.tolist() == [True, True, False, True]
    # By hand for path 1: the differences, their mean and its standard error.
    d = base.astype(float) - correct[1]
    assert tied[1] == (d.mean() <= 1.96 * d.std(ddof=1) / math.sqrt(400))
    # A 2-point lead (the paths disagree on 10% of queries, the first wins 60% of those) is
    # noise on 250 queries and not on 4000.
    def pair(n):
        a, b = np.ones(n, bool), np.ones(n, bool)
        disagree = n // 10
        b[:disagree * 6 // 10] = False       # a wins these
        a[disagree * 6 // 10:disagree] = False  # b wins these
        return np.stack([a, b])
    short, long = pair(250), pair(4000)
    assert short.mean(1) @ [1, -1] == pytest.approx(0.02) == long.mean(1) @ [1, -1]
    assert protocol.within_noise(short, 0).tolist() == [True, True]
    assert protocol.within_noise(long, 0).tolist() == [True, False]


def test_linear_probe_weight_decay_is_the_validation_argmax():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    ids = np.arange(120)
    config = route_config(linear_weight_decays=(1e-4, 1e-2, 10.0))
    data = protocol.TaskData.build("t", 2, (y[:90], ids[:90]), (y[90:], ids[90:] + 1000), config)
    scores = protocol.linear_scores(x[:90], x[90:], data, config)
    sweep = scores["validation"]
    best = max(sweep.values())
    assert scores["weight_decay"] == min(float(wd) for wd, acc in sweep.items() if acc == best)
    assert scores["test"]["n"] == 30


@pytest.fixture(scope="module")
def evaluation(small_mosaic_dir):
    return protocol.Evaluation(route_config(), "mnist", data_dir=small_mosaic_dir,
                               pool_dataset="mosaic/small", image_size=32,
                               mesh=mesh_lib.make_data_mesh())


def _task_arrays(small_mosaic_dir, config):
    """Images, labels, ids of the capped splits, read straight from the sources (no pipeline)."""
    train_src, test_src, _ = tasks.open_task("mnist", small_mosaic_dir, pool_dataset="mosaic/small")
    out = []
    for src, limit in ((train_src, config.max_train), (test_src, config.max_test)):
        rows = [src[i] for i in range(min(len(src), limit) if limit else len(src))]
        out.append(tuple(np.stack([r[key] for r in rows]) for key in ("image", "label", "id")))
    return out


def test_split_of_a_task_is_disjoint_and_holds_every_capped_train_image(evaluation,
                                                                       small_mosaic_dir):
    (_, train_y, train_ids), (_, test_y, test_ids) = _task_arrays(small_mosaic_dir,
                                                                   evaluation.config)
    data = evaluation.data
    np.testing.assert_array_equal(data.train_ids, train_ids)
    np.testing.assert_array_equal(data.test_ids, test_ids)
    audit = data.audit(evaluation.config)
    val, mem, test = (set(audit[f"{k}_ids"]) for k in ("validation", "memory", "test"))
    assert not (val & mem) and not (val & test) and not (mem & test)
    assert val | mem == set(train_ids.tolist())
    assert len(val) == round(0.2 * len(train_ids))


def test_raw_pixel_knn_matches_numpy(evaluation, small_mosaic_dir):
    config, split = evaluation.config, evaluation.data.split
    (train_x, train_y, _), (test_x, test_y, _) = _task_arrays(small_mosaic_dir, config)
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)
    mean = flat(train_x)[split.memory].mean(0)
    memory = flat(train_x)[split.memory] - mean
    want_test = reference_knn(memory, train_y[split.memory], flat(test_x) - mean, config.knn_k,
                              config.knn_temperature, 10)
    want_val = reference_knn(memory, train_y[split.memory], flat(train_x)[split.validation] - mean,
                             config.knn_k, config.knn_temperature, 10)
    got = evaluation.pixels()
    assert got["knn"]["test"]["correct"] == int(np.sum(want_test == test_y))
    assert got["knn"]["validation"]["correct"] == int(np.sum(want_val == train_y[split.validation]))
    assert got["linear"] is None


def test_random_init_knn_matches_numpy(evaluation, small_mosaic_dir):
    config, split = evaluation.config, evaluation.data.split
    (train_x, train_y, _), (test_x, test_y, _) = _task_arrays(small_mosaic_dir, config)
    cfg = tiny_config(num_groups=0)
    model, path = build_model(cfg), path_spec(cfg).full_path()
    # The trainers' initialiser with the protocol's seed; BN on the first 2 x 32 train images.
    variables = init_variables(model, jax.random.key(config.random_init_seed), 32,
                               jnp.asarray(path))
    variables = export.recalibrate_bn(model, variables, path, [train_x[:32], train_x[32:64]])
    feats = lambda x: np.asarray(model.apply(variables, x, jnp.asarray(path), False)["feature"],
                                 np.float64)
    train_f, test_f = feats(train_x), feats(test_x)
    want = reference_knn(train_f[split.memory], train_y[split.memory], test_f, config.knn_k,
                         config.knn_temperature, 10)
    got = evaluation.random_init(model, path, linear=True)
    assert got["knn"]["test"]["correct"] == int(np.sum(want == test_y))
    assert got["linear"]["test"]["n"] == len(test_y) and got["seed"] == config.random_init_seed
