"""Routing: tree features == one forward per path, the routed path, export, errors, CLIs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models_testlib import images, random_variables, tiny_config
from sdr_jax.core import paths
from sdr_jax.core.errors import CheckpointError
from sdr_jax.jobs import route
from sdr_jax.data import datasets, tasks
from sdr_jax.models import build_model, export, path_spec, sdr_layout
from sdr_jax.models.backbones.base import stage_filters
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import simsiam_mosaic  # noqa: E402  (configs/ is not a package on the path)


@pytest.fixture(scope="module")
def sdrnet():
    cfg = tiny_config(num_groups=2)
    model = build_model(cfg)
    x = np.asarray(images(8, 16))
    return cfg, model, random_variables(model, x, path_spec(cfg).full_path())


def test_tree_features_equal_one_forward_per_path(sdrnet):
    cfg, model, variables = sdrnet
    spec = path_spec(cfg)
    x = np.asarray(images(8, 16, seed=1))
    tree = route.PathTree(model, variables)
    want = route.naive_features(model, variables, x, spec.all_paths())
    np.testing.assert_allclose(tree.features(x), want, rtol=1e-5, atol=1e-5)

    # Tree recalibration == recalibrate_bn of each path, then a forward.
    batches = [np.asarray(images(8, 16, seed=s)) for s in (2, 3)]
    tree.recalibrate(batches)
    got = tree.features(x)
    for index in (0, 6, spec.num_paths - 1):
        path = spec.index_to_path(index)
        recal = export.recalibrate_bn(model, variables, path, batches)
        ref = model.apply(recal, x, jnp.asarray(path), False)["feature"]
        np.testing.assert_allclose(got[index], ref, rtol=1e-5, atol=1e-5)


def _only_path_sees_the_image(cfg, variables, target):
    """Zeroes every stage's output channels except those of `target`'s group (and the stem
    channels the identity shortcut of stage 0 carries): any other path's feature is constant."""
    variables = jax.tree.map(np.array, variables)
    layout = sdr_layout(cfg)
    filters = stage_filters((1, 1, 1, 1), cfg.width)
    backbone_p, backbone_s = variables["params"]["backbone"], variables["batch_stats"]["backbone"]
    for stage, group in enumerate(target):
        drop = layout.layout(stage, filters[stage]).group_ids != group
        block = backbone_p[f"stages_{stage}"]["block_0"]
        bns = [block[name] for name in ("bn2", "proj_bn") if name in block]
        if stage == 0:
            bns.append(backbone_p["stem_bn"])
        for bn in bns:
            bn["scale"][drop] = 0.0
            bn["bias"][drop] = 0.0
    assert backbone_s  # running stats untouched: (x - mean) * 0 + 0 = 0 on dropped channels
    return variables


def _class_images(num_per_class, seed):
    """Three classes told apart by brightness only."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), num_per_class)
    rng.shuffle(labels)
    base = np.array([30.0, 128.0, 225.0])[labels][:, None, None, None]
    imgs = np.clip(base + rng.normal(0, 15, (len(labels), 16, 16, 3)), 0, 255).astype(np.uint8)
    return imgs, labels


def test_routing_picks_the_only_path_that_sees_the_classes(sdrnet):
    cfg, model, variables = sdrnet
    spec = path_spec(cfg)
    target = np.array([1, 0, 1, 1], np.int32)
    tree = route.PathTree(model, _only_path_sees_the_image(cfg, variables, target))
    train_x, train_y = _class_images(12, seed=0)
    test_x, test_y = _class_images(8, seed=1)
    accuracies = route.path_accuracies(tree.features(train_x), train_y, tree.features(test_x),
                                       test_y, num_classes=3, k=5, temperature=0.1)
    best = int(np.argmax(accuracies))
    assert best == spec.path_to_index(target)
    others = np.delete(accuracies, best)
    assert accuracies[best] >= 0.8 and others.max() < 0.5, accuracies  # chance: 1/3


def test_exported_subnet_reloads_and_reproduces_routed_features(sdrnet, tmp_path):
    cfg, model, variables = sdrnet
    spec = path_spec(cfg)
    batches = [np.asarray(images(8, 16, seed=s)) for s in (4, 5)]
    x = np.asarray(images(6, 16, seed=6))
    tree = route.PathTree(model, variables)
    tree.recalibrate(batches)
    routed = tree.features(x)
    index = 9
    path = spec.index_to_path(index)
    compact, compact_vars = export.export_subnet(
        cfg, export.recalibrate_bn(model, variables, path, batches), path)
    export.save_exported(str(tmp_path / "best"), compact, compact_vars, {"path": path.tolist()})

    loaded, loaded_vars = export.load_exported(str(tmp_path / "best"))
    got = loaded.apply(loaded_vars, x, None, False)["feature"]
    last = sdr_layout(cfg).layout(3, 64)
    active = paths.active_channels(last, int(path[-1]))
    np.testing.assert_allclose(got, routed[index][:, active], rtol=1e-5, atol=1e-5)
    assert np.all(routed[index][:, np.setdiff1d(np.arange(64), active)] == 0)
    assert export.exported_meta(str(tmp_path / "best")) == {"path": path.tolist()}


def test_unknown_and_unprepared_tasks(tmp_path):
    with pytest.raises(tasks.UnknownTaskError, match="Did you mean cars.*Known tasks:.*mnist"):
        tasks.get_task("carz")
    with pytest.raises(datasets.DatasetNotPreparedError, match="tfds build cars196"):
        tasks.open_task("cars", tmp_path)
    with pytest.raises(datasets.DatasetNotPreparedError, match="tfds build oxford_flowers102"):
        tasks.open_task("flowers", tmp_path)
    assert tasks.get_task("flowers").train_split == "train+validation"
    assert set(tasks.PAPER_TASKS) >= {"cars", "flowers", "pets", "food", "dtd", "sun397",
                                      "caltech101", "cifar10", "cifar100", "voc2007"}
    with pytest.raises(CheckpointError, match="not an exported sub-net"):
        export.load_exported(str(tmp_path))


def _run(script, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": fixtures.xla_flags(2)}
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_route_and_evaluate_cli_end_to_end(small_mosaic_dir, tmp_path):
    from sdr_jax.train import checkpoint

    # A tiny SDRnet run: its config and one checkpoint of random variables.
    config = simsiam_mosaic.get_config("tiny").unlock()
    config.model.sdr.num_groups = 2
    config.data.data_dir = small_mosaic_dir
    model = build_model(config.model)
    variables = random_variables(model, images(2, 32), path_spec(config.model).full_path())
    workdir = str(tmp_path / "run")
    checkpoint.check_workdir_config(workdir, config)
    saver = checkpoint.Checkpointer(workdir)
    saver.save(6, dict(variables), {})
    saver.close()

    bad = _run("route.py", "--task=carz", f"--workdir={workdir}")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: unknown task 'carz'")

    out = str(tmp_path / "out")
    done = _run("route.py", "--config=configs/route.py:tiny", "--task=mnist",
                f"--workdir={workdir}", f"--out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    result = os.path.join(out, "route", "mnist")
    assert sorted(os.listdir(result)) == ["accuracy_hist.png", "best_subnet", "ranking.json",
                                          "ranking.txt"]
    ranking = json.load(open(os.path.join(result, "ranking.json")))
    assert len(ranking["paths"]) == 16 and ranking["paths"][0] | {"rank": 1} == ranking["paths"][0]
    by_index = sorted(ranking["paths"], key=lambda row: row["index"])
    validation = [row["validation"] for row in by_index]
    test = [row["test"]["accuracy"] for row in by_index]
    # Routing order = validation accuracy; the routed path = its argmax (ties: lower index).
    assert [row["validation"] for row in ranking["paths"]] == sorted(validation, reverse=True)
    assert ranking["routed"]["index"] == int(np.argmax(validation))
    assert ranking["routed"]["knn"]["test"] == by_index[ranking["routed"]["index"]]["test"]
    # The oracle = the old behaviour: the best path on the test queries.
    assert ranking["oracle"]["index"] == int(np.argmax(test))
    assert ranking["oracle"]["knn"]["test"]["accuracy"] == max(test)
    # The routed path is within its own noise; ties are counted and marked in the list.
    assert ranking["paths"][0]["within_noise"] is True
    assert ranking["paths_within_noise"] == sum(row["within_noise"] for row in ranking["paths"])
    assert f"{ranking['paths_within_noise']} of 16 paths within validation noise" in \
        open(os.path.join(result, "ranking.txt")).read()
    # Validation, memory and test are disjoint by id; validation + memory = the capped train.
    split = ranking["split"]
    val, mem, tst = (set(split[f"{k}_ids"]) for k in ("validation", "memory", "test"))
    assert not (val & mem) and not (val & tst) and not (mem & tst)
    assert len(val) == split["num_validation"] > 0 and len(mem) == split["num_memory"] > 0
    assert len(val) + len(mem) == min(128, len(val) + len(mem))  # tiny: max_train=128
    for column in ("pixels", "random_init", "sdrnet", "routed", "oracle"):
        cell = ranking[column]["knn"]["test"]
        assert cell["low"] <= cell["accuracy"] <= cell["high"] and cell["n"] == len(tst)
    assert ranking["routed"]["linear"]["weight_decay"] in (1e-4, 1e-2)
    # No assignments file in this run: the composition says so instead of failing.
    assert ranking["composition"]["available"] is False
    assert ranking["subnet_params"] < ranking["sdrnet"]["params"]

    evaluated = _run("evaluate.py", "--config=configs/route.py:tiny", "--task=mnist",
                     f"--workdir={os.path.join(result, 'best_subnet')}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    knn = float(evaluated.stdout.split("kNN ")[1].split()[0])
    assert knn == pytest.approx(100 * ranking["routed"]["knn"]["test"]["accuracy"], abs=1e-2)
    assert "raw pixels" in evaluated.stdout and "random init" in evaluated.stdout


def test_subset_composition_reads_the_domains_of_the_routed_leaf(tmp_path):
    from ml_collections import ConfigDict
    from sdr_jax.data.assignments import Assignments

    # Leaf 3 holds 3 mnist images (domain 1) and 1 animal image (domain 2).
    ids = np.array([1_000_001, 1_000_002, 1_000_003, 2_000_001, 5, 6])
    leaves = np.array([3, 3, 3, 3, 0, 1])
    centroids = tuple(np.zeros((2**level, 2, 4)) for level in range(2))
    file = str(tmp_path / "assignments.npz")
    Assignments(ids, leaves, 2, 2, centroids).save(file)
    run = ConfigDict({"sdr": {"assignments": file}, "data": {"dataset": "mosaic/small"}})
    got = route.subset_composition(run, 3, "mnist")
    assert got["num_images"] == 4 and got["shares"] == {"mnist": 0.75, "animal": 0.25}
    assert got["task_domain_share"] == 0.75
    assert route.format_composition(got).endswith("task domain mnist: 75%")
    assert route.subset_composition(run, 3, "emoji_twitter")["task_domain_in_pool"] is False
    run.sdr.assignments = str(tmp_path / "missing.npz")
    assert "no assignments file" in route.format_composition(route.subset_composition(run, 3,
                                                                                     "mnist"))
