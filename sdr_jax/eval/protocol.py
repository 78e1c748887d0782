"""The evaluation protocol, in one place: splits, baselines, linear probe, intervals, cells.

Routing (`route.py`), `eval/downstream.evaluate` (launch/evaluate.py) and the pipeline summary
all score networks through this module, so every column of every table means the same thing.

Splits (fixed by `max_train`, `max_test`, `val_fraction`, `split_seed` of configs/route.py):
  * the task's train split is capped to its first `max_train` images (0 = all), then split by
    a seeded permutation of its *sorted ids* (so the split depends only on the ids and the
    seed, not on the reading order): round(val_fraction * n) images (at least 1, at most
    n - 1) are the **routing-validation** part, the rest the **kNN memory**;
  * the queries are the first `max_test` test images (0 = all);
  * validation, memory and test are disjoint by id (checked on every task).
A path is *selected* by kNN on validation (memory = the rest of train); every reported column
is scored once on the test queries with that same memory, k and T.

Baselines (the same memory, queries, k and T as the trained networks):
  * pixels: the uint8 image as float, centred with the memory mean, flattened, cosine kNN;
  * random_init: the network's architecture, seeded init (`random_init_seed`), BN statistics
    set like every network's (`bn`: recalibrated on the same train images, or the running
    ones, which for a fresh network are mean 0 / variance 1).
BN recalibration reads the first `bn_recal_images` train images (no labels), which may include
validation images; test images are never used.

Linear probe: logistic regression trained full-batch on the memory features; its weight decay
is the one of `linear_weight_decays` with the best validation accuracy (ties: the smaller),
then scored once on test.

Intervals (95%, z = 1.96):
  * a cell (one accuracy on n queries): the Wilson score interval;
  * the mean over tasks: a normal interval, mean +- z * sqrt(sum_i v_i) / T, combining the
    per-task variances v_i = p~(1 - p~) / (n_i + z^2) (Agresti-Coull: p~ = (c + z^2/2) /
    (n + z^2), never 0 at p = 0 or 1); tasks are independent query sets;
  * "within noise" vs a reference column: |a - b| < z * sqrt(v_a + v_b), an unpaired test;
    the columns share their queries, so it is conservative (a paired test would be tighter).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from sdr_jax.data import input_pipeline as data_pipeline
from sdr_jax.data import tasks as tasks_lib
from sdr_jax.core.errors import ConfigError
from sdr_jax.eval import features as features_lib
from sdr_jax.eval.knn import knn_predict
from sdr_jax.eval.linear import linear_probe_accuracy
from sdr_jax.models import export

Z95 = 1.959963984540054
BN_MODES = ("recalibrate", "running")
# The route-config fields a result depends on (beyond the network): a change is another protocol.
PROTOCOL_FIELDS = ("bn", "bn_recal_images", "knn_k", "knn_temperature", "max_train", "max_test",
                   "val_fraction", "split_seed", "random_init_seed", "linear_steps", "linear_lr",
                   "linear_weight_decays")


# -- the protocol's config ---------------------------------------------------------------------

def check_config(config: ConfigDict) -> None:
    """One-line ConfigErrors for protocol values that cannot work."""
    if config.bn not in BN_MODES:
        raise ConfigError(f"bn must be one of {BN_MODES}, got {config.bn!r}.")
    if not 0.0 < config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1) (the share of train images held out "
                          f"to select the path), got {config.val_fraction!r}.")
    if config.max_train < 0 or config.max_test < 0:
        raise ConfigError("max_train and max_test must be >= 0 (0 = all images).")
    if not config.linear_weight_decays or min(config.linear_weight_decays) < 0:
        raise ConfigError("linear_weight_decays must be a non-empty tuple of values >= 0 (the "
                          f"probe's sweep), got {tuple(config.linear_weight_decays)!r}.")


def describe(config: ConfigDict) -> dict[str, Any]:
    """The protocol as JSON-ready values (stored with every result; compared on resume)."""
    return {field: (list(config[field]) if isinstance(config[field], (tuple, list))
                    else config[field]) for field in PROTOCOL_FIELDS}


# -- the split ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices into the capped train set: routing-validation and kNN memory."""
    validation: np.ndarray
    memory: np.ndarray


def split_train(train_ids: np.ndarray, *, val_fraction: float, seed: int) -> Split:
    """Seeded split of the capped train set into validation and memory (see the module doc)."""
    ids = np.asarray(train_ids)
    n = len(ids)
    if len(np.unique(ids)) != n:
        raise ConfigError("the task's train ids are not unique; the split needs an id per image.")
    if n < 2:
        raise ConfigError(f"the task has {n} train image(s) (after max_train); validation and "
                          "memory need at least one each.")
    num_val = min(max(int(round(val_fraction * n)), 1), n - 1)
    chosen = np.argsort(ids, kind="stable")[np.random.default_rng(seed).permutation(n)]
    return Split(validation=np.sort(chosen[:num_val]), memory=np.sort(chosen[num_val:]))


@dataclasses.dataclass(frozen=True)
class TaskData:
    """What every network on a task shares: labels and ids of the capped splits, the split."""
    name: str
    num_classes: int
    train_labels: np.ndarray
    train_ids: np.ndarray
    test_labels: np.ndarray
    test_ids: np.ndarray
    split: Split

    @classmethod
    def build(cls, name: str, num_classes: int, train: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], config: ConfigDict) -> "TaskData":
        """train/test: (labels, ids) of the capped splits, in reading order."""
        split = split_train(train[1], val_fraction=config.val_fraction, seed=config.split_seed)
        data = cls(name, num_classes, np.asarray(train[0]), np.asarray(train[1]),
                   np.asarray(test[0]), np.asarray(test[1]), split)
        leaked = np.intersect1d(data.train_ids, data.test_ids)
        if leaked.size:
            raise ConfigError(f"task {name}: {leaked.size} image ids are in both the train and "
                              f"the test split (e.g. {leaked[:3].tolist()}); the protocol needs "
                              "disjoint splits.")
        return data

    def check_same(self, train_ids: np.ndarray, test_ids: np.ndarray) -> None:
        """Every network must be scored on exactly these images, in this order."""
        if not (np.array_equal(train_ids, self.train_ids)
                and np.array_equal(test_ids, self.test_ids)):
            raise ConfigError(f"task {self.name}: a network read other images than the protocol's "
                              "split; the splits changed while evaluating.")

    def audit(self, config: ConfigDict) -> dict[str, Any]:
        """The split, with its ids: enough to check validation, memory and test are disjoint."""
        return {"selected_on": "validation", "val_fraction": config.val_fraction,
                "split_seed": config.split_seed,
                "num_validation": int(len(self.split.validation)),
                "num_memory": int(len(self.split.memory)), "num_test": int(len(self.test_ids)),
                "validation_ids": self.train_ids[self.split.validation].tolist(),
                "memory_ids": self.train_ids[self.split.memory].tolist(),
                "test_ids": self.test_ids.tolist()}


# -- scores: kNN, linear probe ------------------------------------------------------------------

def cell(correct: int, n: int) -> dict[str, Any]:
    """One accuracy with its 95% Wilson interval."""
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n, "correct": int(correct), "n": int(n), "low": low,
            "high": high}


def knn_correct(memory_x, memory_y, query_x, query_y, *, config: ConfigDict,
                num_classes: int) -> np.ndarray:
    """(n,) bool: whether kNN over the memory classifies each query right."""
    preds = knn_predict(memory_x, memory_y, query_x, k=config.knn_k,
                        temperature=config.knn_temperature, num_classes=num_classes)
    return preds == np.asarray(query_y)


def knn_correct_by_split(train_x: np.ndarray, test_x: np.ndarray, data: TaskData,
                         config: ConfigDict) -> dict[str, np.ndarray]:
    """{'validation', 'test'}: per query, kNN right or wrong; the memory is the split's memory."""
    memory, validation = data.split.memory, data.split.validation
    knn = dict(config=config, num_classes=data.num_classes)
    mem_x, mem_y = train_x[memory], data.train_labels[memory]
    return {"validation": knn_correct(mem_x, mem_y, train_x[validation],
                                      data.train_labels[validation], **knn),
            "test": knn_correct(mem_x, mem_y, test_x, data.test_labels, **knn)}


def cells_of(correct: dict[str, np.ndarray]) -> dict[str, Any]:
    """{split: its accuracy cell} of per-query right/wrong arrays."""
    return {split: cell(int(right.sum()), len(right)) for split, right in correct.items()}


def knn_scores(train_x: np.ndarray, test_x: np.ndarray, data: TaskData,
               config: ConfigDict) -> dict[str, Any]:
    """{'validation', 'test'} kNN cells; the memory is the split's memory for both."""
    return cells_of(knn_correct_by_split(train_x, test_x, data, config))


def within_noise(correct: np.ndarray, selected: int, z: float = 1.96) -> np.ndarray:
    """(P,) bool: the paths whose accuracy the queries cannot tell from path `selected`'s.

    `correct` is (P, n): path p right on query i. A paired test on the same queries: path p
    is within noise when the selected path's lead, mean(c_sel - c_p), is at most `z` standard
    errors of that mean (sample std of the per-query differences / sqrt(n)). The selected path
    is within noise of itself. How many paths tie tells how much the routing split decides.
    """
    correct = np.asarray(correct, np.float64)
    diff = correct[selected][None] - correct                      # (P, n)
    n = diff.shape[1]
    se = diff.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(diff))
    return diff.mean(axis=1) <= z * se


def linear_scores(train_x: np.ndarray, test_x: np.ndarray, data: TaskData,
                  config: ConfigDict) -> dict[str, Any]:
    """The probe trained on memory; weight decay chosen on validation, scored once on test."""
    memory, validation = data.split.memory, data.split.validation
    fit = dict(num_classes=data.num_classes, num_steps=config.linear_steps,
               learning_rate=config.linear_lr)
    mem_x, mem_y = train_x[memory], data.train_labels[memory]
    sweep = {float(wd): linear_probe_accuracy(mem_x, mem_y, train_x[validation],
                                              data.train_labels[validation], weight_decay=wd,
                                              **fit)
             for wd in sorted(config.linear_weight_decays)}
    chosen = max(sweep, key=lambda wd: (sweep[wd], -wd))  # ties: the smaller weight decay
    test = linear_probe_accuracy(mem_x, mem_y, test_x, data.test_labels, weight_decay=chosen,
                                 **fit)
    n = len(data.test_labels)
    return {"weight_decay": chosen, "validation": {str(wd): acc for wd, acc in sweep.items()},
            "test": cell(int(round(test * n)), n)}


def centre_on_memory(train_x: np.ndarray, test_x: np.ndarray,
                     split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Float features minus the memory mean (raw pixels: cosine kNN on uncentred pixels is
    dominated by overall brightness)."""
    train_x = np.asarray(train_x, np.float32)
    mean = train_x[split.memory].mean(0)
    return train_x - mean, np.asarray(test_x, np.float32) - mean


# -- intervals ---------------------------------------------------------------------------------

def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion correct / n."""
    if n <= 0:
        raise ValueError(f"an interval needs n >= 1 queries, got {n}.")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def variance(c: dict[str, Any], z: float = Z95) -> float:
    """Agresti-Coull variance of a cell's accuracy (positive even at 0 or 100%)."""
    if "variance" in c:  # a mean cell carries its combined variance
        return c["variance"]
    n = c["n"] + z * z
    p = (c["correct"] + z * z / 2) / n
    return p * (1 - p) / n


def mean_cell(cells: Sequence[dict[str, Any]], z: float = Z95) -> dict[str, Any]:
    """The mean accuracy over tasks with its normal interval (combined per-task variances)."""
    if not cells:
        raise ValueError("a mean needs at least one task.")
    mean = sum(c["accuracy"] for c in cells) / len(cells)
    var = sum(variance(c, z) for c in cells) / len(cells) ** 2
    half = z * math.sqrt(var)
    return {"accuracy": mean, "variance": var, "low": max(0.0, mean - half),
            "high": min(1.0, mean + half), "num_tasks": len(cells)}


def versus(c: dict[str, Any], reference: dict[str, Any], z: float = Z95) -> str:
    """'~' when |c - reference| is within noise, else '+' (above) or '-' (below)."""
    diff = c["accuracy"] - reference["accuracy"]
    if abs(diff) < z * math.sqrt(variance(c, z) + variance(reference, z)):
        return "~"
    return "+" if diff > 0 else "-"


def format_cell(c: Optional[dict[str, Any]], reference: Optional[dict[str, Any]] = None) -> str:
    """'51.20 [47.3,55.1]~': accuracy %, 95% interval, and the marker vs `reference`."""
    if c is None:
        return "-"
    mark = " " if reference is None or reference is c else versus(c, reference)
    return f"{100 * c['accuracy']:.2f} [{100 * c['low']:.1f},{100 * c['high']:.1f}]{mark}"


NOISE_LEGEND = ("cells: kNN top-1 % [95% interval: Wilson per task; mean over tasks: normal, "
                "combined per-task variances]; vs SimSiam: ~ within noise, + above, - below "
                "(|diff| vs 1.96*sqrt(var_a + var_b))")


# -- one task, every network ---------------------------------------------------------------------

class Evaluation:
    """One task under the protocol: its sources, the split and the BN recalibration images;
    scores any network (feature function) and the baselines on them."""

    def __init__(self, config: ConfigDict, task_name: str, *, data_dir: Optional[str],
                 pool_dataset: Optional[str], image_size: int, mesh: Mesh):
        check_config(config)
        self.config, self.image_size, self.mesh = config, image_size, mesh
        self.train_src, self.test_src, task = tasks_lib.open_task(task_name, data_dir,
                                                                  pool_dataset=pool_dataset)
        if getattr(task, "multi_label", False):
            raise ConfigError(f"task {task_name} is multi-label; kNN evaluation needs one label "
                              "per image.")
        self.task = task
        # Labels and ids only: a one-number feature per image.
        _, train_y, train_ids = self._extract(lambda images: jnp.zeros((images.shape[0], 1)),
                                              self.train_src, config.max_train)
        _, test_y, test_ids = self._extract(lambda images: jnp.zeros((images.shape[0], 1)),
                                            self.test_src, config.max_test)
        self.data = TaskData.build(task_name, task.num_classes, (train_y, train_ids),
                                   (test_y, test_ids), config)
        self.recal = self._recal_batches() if config.bn == "recalibrate" else []

    def _extract(self, apply_fn, source, limit: int):
        fn = features_lib.jit_feature_fn(apply_fn, self.mesh)
        return features_lib.extract_features(fn, source, batch_size=self.config.batch_size,
                                             image_size=self.image_size, mesh=self.mesh,
                                             max_examples=limit or None)

    def _recal_batches(self) -> list[np.ndarray]:
        """The first full batches of train images (up to `bn_recal_images`)."""
        bs, out = self.config.batch_size, []
        for batch in data_pipeline.eval_batches(self.train_src, batch_size=bs,
                                                image_size=self.image_size):
            if not batch["mask"].all() or (len(out) + 1) * bs > max(self.config.bn_recal_images,
                                                                     bs):
                break
            out.append(batch["image"])
        if not out:
            raise ConfigError("BN recalibration needs at least one full batch of train images; "
                              "lower batch_size or use bn='running'.")
        return out

    def features(self, apply_fn) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) features of `apply_fn: images -> features` on the protocol's images."""
        train_x, _, train_ids = self._extract(apply_fn, self.train_src, self.config.max_train)
        test_x, _, test_ids = self._extract(apply_fn, self.test_src, self.config.max_test)
        self.data.check_same(train_ids, test_ids)
        return train_x, test_x

    def scores(self, train_x: np.ndarray, test_x: np.ndarray, *, linear: bool) -> dict[str, Any]:
        """{'knn': {'validation', 'test'}, 'linear': {...} or None} of given features."""
        return {"knn": knn_scores(train_x, test_x, self.data, self.config),
                "linear": linear_scores(train_x, test_x, self.data, self.config)
                if linear else None}

    def deployed_variables(self, model, variables: dict, path: Any) -> dict:
        """The variables a deployed network on `path` uses: BN per `config.bn`."""
        if not self.recal:
            return variables
        return export.recalibrate_bn(model, variables, path, self.recal)

    def network_features(self, model, variables: dict, path: Any, *,
                         recalibrate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) features of `model` on `path` (None for a compact network), its BN
        per `config.bn` unless `recalibrate` is off."""
        if recalibrate:
            variables = self.deployed_variables(model, variables, path)
        path = None if path is None else jnp.asarray(path)
        return self.features(
            lambda images: model.apply(variables, images, path, False)["feature"])

    def network(self, model, variables: dict, path: Any, *, linear: bool,
                recalibrate: bool = True) -> dict[str, Any]:
        """Scores of `model` on `path` (None for a compact network)."""
        return self.scores(*self.network_features(model, variables, path,
                                                  recalibrate=recalibrate), linear=linear)

    def pixels(self) -> dict[str, Any]:
        """The raw-pixel baseline (kNN only: the probe on S*S*3 inputs is not 'modest')."""
        train_x, test_x = self.features(lambda images: images.reshape(images.shape[0], -1))
        train_x, test_x = centre_on_memory(train_x, test_x, self.data.split)
        return self.scores(train_x, test_x, linear=False)

    def random_init(self, model, path: Any, *, linear: bool) -> dict[str, Any]:
        """The baseline of a network that learned nothing: `model` freshly initialised."""
        variables = random_init_variables(model, path, self.image_size,
                                          self.config.random_init_seed)
        return {**self.network(model, variables, path, linear=linear),
                "seed": self.config.random_init_seed}


def random_init_variables(model, path: Any, image_size: int, seed: int) -> dict:
    """Seeded initial variables of `model` (the trainers' initialiser)."""
    images = jnp.zeros((2, image_size, image_size, 3), jnp.uint8)
    path = None if path is None else jnp.asarray(path)
    return jax.jit(lambda key: model.init(key, images, path, False))(jax.random.key(seed))


def select(scores: Sequence[float]) -> int:
    """The index of the best score; ties go to the lower index (np.argmax's first maximum)."""
    return int(np.argmax(np.asarray(scores)))
