"""Routing (DESIGN.md §2.6): score every sub-net of an SDRnet on a task by kNN, deploy the best.

The features of all G**L paths are computed as a tree over shared prefixes: the stem runs
once, SDR block 1 once per group, block 2 once per pair, ... Each tree level is one jitted
function (vmapped over the level's nodes, the group entries as data), compiled once.

BN statistics (`config.bn`, the same choice for routing, export and evaluation):
  * 'recalibrate' (default): every path gets the exact BN statistics of the task's train
    images (`export.recalibrate_bn`). Stage s's statistics depend only on the prefix up to s,
    so the recalibration is a tree too: one train-mode pass per level and batch.
  * 'running': the SDRnet's shared running statistics (a blend over the paths it trained).

Selection (`eval/protocol.py`): every path is scored by kNN on the task's routing-validation
split (held-out train images; memory = the rest of train); the routed sub-net is the argmax of
those scores (ties: the lower index), then scored once on the test queries next to the raw-pixel,
random-init and SDRnet baselines. The best path *on test* is kept only as the `oracle` column (a
maximum over noisy estimates, biased upward).

Outputs in `<out or workdir>/route/<task>/`: `ranking.txt`, `ranking.json` (every column with
its 95% interval, the protocol, the split's ids, the routed leaf's domain composition),
`accuracy_hist.png` and the routed sub-net exported compactly in `best_subnet/`:

    model, variables = sdr_jax.models.export.load_exported(".../route/<task>/best_subnet")
    feature = model.apply(variables, images_uint8_nhwc, None, False)["feature"]
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from sdr_jax.data import assignments as assignments_lib
from sdr_jax.data import datasets, mosaic, input_pipeline
from sdr_jax.core import io
from sdr_jax.core.errors import ConfigError
from sdr_jax.eval import protocol
from sdr_jax.eval.knn import knn_accuracy
from sdr_jax.models import build_model, export, path_spec
from sdr_jax.models.export import EXPORT_DIR, save_exported
from sdr_jax.models.simsiam import SimSiam
from sdr_jax.train import checkpoint
from sdr_jax.core import mesh as mesh_lib


# -- the tree over shared prefixes -------------------------------------------------------------

class PathTree:
    """Backbone features of every full path of a masked SDRnet, computed over shared prefixes.

    Level 0 is the stem (one node); network stage s is level s+1. An SDR stage multiplies the
    nodes by G (child i*G+g takes group g: `PathSpec.prefix_nodes`); a plain stage keeps them.
    Every node of a level has its own BN statistics (the shared running ones until
    `recalibrate`) for the backbone children of that level (`Backbone.level_scopes`).
    """

    def __init__(self, model: SimSiam, variables: dict, mesh: Optional[jax.sharding.Mesh] = None):
        if model.sdr is None:
            raise ConfigError("routing needs an SDRnet (model.sdr.num_groups > 0); this model "
                              "has a single path: evaluate it with launch/evaluate.py.")
        self.model = model
        self.spec = model.sdr.path_spec
        self.mesh = mesh
        # Replicated over the mesh: the batch is split over it (restored params sit on one device).
        self.params = variables["params"] if mesh is None else jax.device_put(
            variables["params"], mesh_lib.replicated(mesh))
        self._running = variables["batch_stats"]["backbone"]
        self._scopes = model.backbone.level_scopes()
        self.num_stages = model.backbone.num_stages
        # node_paths[level]: (nodes, L) prefix of every node, ALL for blocks not yet reached.
        self.node_paths = [self.spec.prefix_nodes(0)]
        self._entries = []  # per stage: the (nodes,) group entry of every node, or None
        for s in range(self.num_stages):
            block = model.sdr.block_of(s)
            if block is None:
                self.node_paths.append(self.node_paths[-1])
                self._entries.append(None)
            else:
                self.node_paths.append(self.spec.prefix_nodes(block + 1))
                self._entries.append(jnp.asarray(self.node_paths[-1][:, block]))
        # Leaves come out with block 0 most significant; paths are indexed block 0 least.
        self._leaf_order = np.argsort(self.spec.path_to_index(self.node_paths[-1]))
        self.stats = self._running_stats()
        self._eval_fns = [jax.jit(self._level_fn(level, train=False))
                          for level in range(self.num_stages + 1)]
        self._train_fns = [jax.jit(self._level_fn(level, train=True))
                           for level in range(self.num_stages + 1)]
        self._pool = jax.jit(jax.vmap(lambda x: model.apply({}, x, method=SimSiam.pool)))

    def _running_stats(self) -> list[Any]:
        """Per level, the SDRnet's running BN statistics of that level, one copy per node."""
        return [{name: jax.tree.map(
                    lambda a: np.broadcast_to(np.asarray(a), (len(nodes), *np.shape(a))),
                    self._running[name])
                 for name in scopes if name in self._running}
                for scopes, nodes in zip(self._scopes, self.node_paths)]

    def _level_fn(self, level: int, train: bool):
        """(params, node stats, parent activations, entries) -> (activations, batch stats)."""
        model = export.stats_probe(self.model) if train else self.model

        def apply(params, stats, x, p):
            variables = {"params": params, "batch_stats": {"backbone": stats}}
            if level == 0:
                args, method = (x, train), SimSiam.stem
            else:
                args, method = (x, level - 1, p, train), SimSiam.stage
            if not train:
                return model.apply(variables, *args, method=method), stats
            y, state = model.apply(variables, *args, method=method, mutable=["batch_stats"])
            return y, state["batch_stats"]["backbone"]

        if level == 0:
            return lambda params, stats, images, entries: jax.vmap(
                apply, in_axes=(None, 0, None, None))(params, stats, images, None)
        entries_axis = None if self._entries[level - 1] is None else 0
        groups = 1 if entries_axis is None else self.spec.num_groups

        def fn(params, stats, x, entries):
            x = jnp.repeat(x, groups, axis=0) if groups > 1 else x
            return jax.vmap(apply, in_axes=(None, 0, 0, entries_axis))(params, stats, x, entries)
        return fn

    def _put(self, images: np.ndarray) -> jax.Array:
        if self.mesh is None or images.shape[0] % self.mesh.devices.size:
            return jnp.asarray(images)
        return jax.device_put(images, mesh_lib.batch_sharded(self.mesh))

    def _run(self, images: np.ndarray, train: bool) -> tuple[jax.Array, list[Any]]:
        fns = self._train_fns if train else self._eval_fns
        x, level_stats = self._put(images), []
        for level, fn in enumerate(fns):
            entries = None if level == 0 else self._entries[level - 1]
            # Train mode normalises with each batch's statistics; its node stats give shapes only.
            x, stats = fn(self.params, self.stats[level], x, entries)
            level_stats.append(stats)
        return x, level_stats

    def recalibrate(self, image_batches: Iterable[np.ndarray], progress: bool = False) -> None:
        """Per-node BN statistics: the exact pooled statistics of `image_batches` (equal sizes).

        Matches `export.recalibrate_bn(model, variables, path, image_batches)` on every path.
        """
        per_batch, sizes = [], []
        for images in tqdm(image_batches, desc="recalibrate BN", disable=not progress,
                           file=sys.stderr):
            _, level_stats = self._run(np.asarray(images), train=True)
            per_batch.append(jax.device_get(level_stats))
            sizes.append(len(images))
        if not per_batch:
            raise ConfigError("BN recalibration needs at least one full batch of train images; "
                              "lower the batch size or use bn='running'.")
        self.stats = export.pool_batch_stats(self._running_stats(), per_batch, sizes)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(num_paths, batch, C) pooled backbone features, row i = path index i (eval mode)."""
        x, _ = self._run(np.asarray(images), train=False)
        return np.asarray(self._pool(x))[self._leaf_order]


def naive_features(model: SimSiam, variables: dict, images: np.ndarray,
                   all_paths: np.ndarray) -> np.ndarray:
    """The reference: one full forward per path (one jitted function, the path as data)."""
    fn = _forward_fn(model)
    return np.stack([np.asarray(fn(variables, images, jnp.asarray(p))) for p in all_paths])


def _forward_fn(model: SimSiam):
    return jax.jit(lambda variables, images, path: model.apply(variables, images, path, False)
                   ["feature"])


# -- data ----------------------------------------------------------------------------------------

def _limited_batches(source, *, batch_size: int, image_size: int, limit: int
                     ) -> Iterator[dict[str, np.ndarray]]:
    """eval_batches over `source`, stopping after `limit` examples (0 = all)."""
    seen = 0
    for batch in input_pipeline.eval_batches(source, batch_size=batch_size, image_size=image_size):
        if limit:
            keep = np.cumsum(batch["mask"]) + seen <= limit
            batch["mask"] &= keep
        seen += int(batch["mask"].sum())
        if batch["mask"].any():
            yield batch
        if limit and seen >= limit:
            return


def _num_batches(source, batch_size: int, limit: int) -> int:
    n = min(len(source), limit) if limit else len(source)
    return -(-n // batch_size)


def _tree_features(tree: PathTree, batches: Iterable[dict], total: int, desc: str):
    """(features (P, n, C) of every path, ids (n,)) of the real examples of `batches`."""
    feats, ids = [], []
    for batch in tqdm(batches, total=total, desc=desc, file=sys.stderr, leave=False):
        mask = batch["mask"]
        feats.append(tree.features(batch["image"])[:, mask])
        ids.append(batch["id"][mask])
    return np.concatenate(feats, axis=1), np.concatenate(ids)


def path_accuracies(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                    test_labels: np.ndarray, *, num_classes: int, k: int,
                    temperature: float) -> np.ndarray:
    """kNN accuracy of every path: features (P, n, C), memory = train, queries = test."""
    return np.array([knn_accuracy(train_feats[i], train_labels, test_feats[i], test_labels,
                                  k=k, temperature=temperature, num_classes=num_classes)
                     for i in range(len(train_feats))])


# -- the routing job -----------------------------------------------------------------------------

def route(config: ConfigDict, workdir: str, task_name: str, out: Optional[str] = None) -> dict:
    """Ranks every path of the SDRnet in `workdir` on `task_name` by kNN accuracy on the
    routing-validation split, deploys the best (the routed sub-net) and scores it once on test
    next to the baselines (`eval/protocol.py`); writes the table, ranking.json, the histogram
    and the routed sub-net to `<out or workdir>/route/<task>/`."""
    protocol.check_config(config)
    run_config, variables, step = checkpoint.load_run(workdir)
    model_cfg = run_config.model
    if model_cfg.sdr.num_groups == 0:
        raise ConfigError(f"{workdir} holds a plain SimSiam run (model.sdr.num_groups=0): it has "
                          "one path, nothing to route; use launch/evaluate.py.")
    data_dir = config.data_dir or run_config.data.data_dir or None
    image_size = config.image_size or run_config.data.image_size
    mesh = mesh_lib.make_data_mesh()
    evaluation = protocol.Evaluation(config, task_name, data_dir=data_dir,
                                     pool_dataset=run_config.data.dataset,
                                     image_size=image_size, mesh=mesh)
    data = evaluation.data
    model = build_model(model_cfg)
    spec = path_spec(model_cfg)
    tree = PathTree(model, variables, mesh)
    if evaluation.recal:
        tree.recalibrate(evaluation.recal, progress=True)
    bs = config.batch_size
    feats = {}
    for name, src, limit in (("train", evaluation.train_src, config.max_train),
                             ("test", evaluation.test_src, config.max_test)):
        feats[name], feats[f"{name}_ids"] = _tree_features(
            tree, _limited_batches(src, batch_size=bs, image_size=image_size, limit=limit),
            _num_batches(src, bs, limit), f"{spec.num_paths} paths: {name}")
    data.check_same(feats["train_ids"], feats["test_ids"])
    correct = [protocol.knn_correct_by_split(feats["train"][i], feats["test"][i], data, config)
               for i in range(spec.num_paths)]
    path_scores = [protocol.cells_of(c) for c in correct]
    validation = np.array([s["validation"]["accuracy"] for s in path_scores])
    test = np.array([s["test"]["accuracy"] for s in path_scores])
    selected = protocol.select(validation)   # the routed sub-net: chosen without test labels
    oracle = protocol.select(test)           # best on the test queries: optimistic, reference only
    # How decisive the selection is: the paths validation cannot tell from the routed one.
    tied = protocol.within_noise(np.stack([c["validation"] for c in correct]), selected)
    full = spec.full_path()
    columns = {
        "pixels": evaluation.pixels(),
        "random_init": evaluation.random_init(model, full, linear=True),
        "sdrnet": evaluation.network(model, variables, full, linear=True),
        "routed": {"index": selected, "path": spec.index_to_path(selected).tolist(),
                   "selected_on": "validation",
                   **evaluation.scores(feats["train"][selected], feats["test"][selected],
                                       linear=True)},
        "oracle": {"index": oracle, "path": spec.index_to_path(oracle).tolist(),
                   "selected_on": "test", "knn": path_scores[oracle], "linear": None},
    }

    best = spec.index_to_path(selected)
    compact, compact_vars = export.export_subnet(
        model_cfg, evaluation.deployed_variables(model, variables, best), best)
    sub_params, sub_flops = export.backbone_cost(compact, compact_vars, image_size, None)
    net_params, net_flops = export.backbone_cost(model, variables, image_size, full)
    columns["sdrnet"].update(params=net_params, flops=net_flops)
    all_paths = spec.all_paths()
    order = np.argsort(-validation, kind="stable")  # the routing order; ties: the lower index
    ranking = {
        "task": task_name, "workdir": os.path.abspath(workdir), "step": int(step),
        "protocol": protocol.describe(config), "split": data.audit(config),
        "num_paths": spec.num_paths, **columns,
        "paths_within_noise": int(tied.sum()),
        # Every full path has the same widths, so one sub-net's cost stands for all of them.
        "subnet_params": sub_params, "subnet_flops": sub_flops,
        "composition": subset_composition(run_config, selected, task_name),
        "paths": [{"rank": r + 1, "index": int(i), "path": all_paths[i].tolist(),
                   "validation": path_scores[i]["validation"]["accuracy"],
                   "within_noise": bool(tied[i]),
                   "test": path_scores[i]["test"]} for r, i in enumerate(order)],
    }
    meta = {"task": task_name, "path": best.tolist(), "index": selected,
            "selected_on": "validation", "protocol": protocol.describe(config),
            "source_workdir": os.path.abspath(workdir), "step": int(step), "bn": config.bn,
            "image_size": image_size, "pool_dataset": run_config.data.dataset,
            "data_dir": data_dir or "", "model_config": json.loads(model_cfg.to_json())}
    target = os.path.join(out or workdir, "route", task_name)
    with io.atomic_directory(target) as tmp:
        _write_outputs(os.fspath(tmp), ranking, test, compact, compact_vars, meta)
    ranking["out_dir"] = target
    print(format_table(ranking, top=10), flush=True)
    return ranking


def subset_composition(run_config: ConfigDict, index: int, task_name: str) -> dict:
    """Why this path: the pool domains of the images its leaf cluster trained on.

    Read from the run's assignments file (`sdr.assignments`); mosaic ids encode the domain
    (`id // mosaic.ID_STRIDE`). Says why when it cannot be told instead of failing.
    """
    file = run_config.sdr.get("assignments", "") if "sdr" in run_config else ""
    if not file or not os.path.isfile(file):
        where = file or "sdr.assignments is empty"
        return {"available": False, "reason": f"no assignments file ({where})"}
    if datasets.parse_name(run_config.data.dataset)[0] != datasets.MOSAIC:
        return {"available": False, "reason": f"the ids of {run_config.data.dataset} do not "
                                              "encode a domain"}
    leaf = assignments_lib.load(file)
    ids = np.asarray(leaf.ids)[leaf.leaves == index].astype(np.int64)
    counts = np.bincount(ids // mosaic.ID_STRIDE, minlength=len(mosaic.DOMAIN_NAMES))
    in_pool = {domain.name: domain.in_pool for domain in mosaic.DOMAINS}
    shares = {name: float(c / max(len(ids), 1)) for name, c in zip(mosaic.DOMAIN_NAMES, counts)
              if c or (name == task_name and in_pool[name])}
    return {"available": True, "assignments": file, "leaf": int(index),
            "num_images": int(len(ids)), "shares": shares,
            "task_domain": task_name if task_name in in_pool else None,
            "task_domain_in_pool": in_pool.get(task_name, False),
            "task_domain_share": shares.get(task_name)}


def format_composition(composition: dict) -> str:
    if not composition["available"]:
        return f"leaf composition unknown: {composition['reason']}"
    shares = sorted(composition["shares"].items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares if share)
    own = composition["task_domain"]
    if own and composition["task_domain_in_pool"]:
        tail = f"; task domain {own}: {100 * composition['task_domain_share']:.0f}%"
    elif own:
        tail = f"; task domain {own}: not in the pool"
    else:
        tail = "; the task is not a mosaic domain"
    return f"leaf {composition['leaf']} ({composition['num_images']} images): {text}{tail}"


def format_table(ranking: dict, top: Optional[int] = None) -> str:
    """The columns of one task (test queries), then the paths in routing order."""
    split = ranking["split"]
    rows = ranking["paths"][:top] if top else ranking["paths"]

    def linear(column):
        lin = ranking[column]["linear"]
        return f"  linear {protocol.format_cell(lin['test'])} (wd {lin['weight_decay']:g})" \
            if lin else ""

    lines = [f"task {ranking['task']}: {ranking['num_paths']} paths, "
             f"bn={ranking['protocol']['bn']}; "
             f"path selected on {split['num_validation']} validation images (memory "
             f"{split['num_memory']}), scored on {split['num_test']} test queries",
             "kNN top-1 on test, % [95% Wilson interval]:"]
    for column, label in (("pixels", "raw pixels"), ("random_init", "random init"),
                          ("sdrnet", "SDRnet"), ("routed", "routed"),
                          ("oracle", "oracle (best on test)")):
        path = (f"  path {','.join(map(str, ranking[column]['path']))} "
                f"(index {ranking[column]['index']})" if "path" in ranking[column] else "")
        lines.append(f"  {label:<22}{protocol.format_cell(ranking[column]['knn']['test'])}"
                     f"{linear(column)}{path}")
    lines += [f"  SDRnet: {ranking['sdrnet']['params']} params, "
              f"{ranking['sdrnet']['flops']:.3g} FLOPs; every sub-net: "
              f"{ranking['subnet_params']} params, {ranking['subnet_flops']:.3g} FLOPs",
              f"  routed {format_composition(ranking['composition'])}",
              f"  {format_within_noise(ranking)}",
              f"{'rank':>4}  {'path':<20} {'index':>5}  {'val kNN':>7}  {'test kNN':>8}"]
    for row in rows:
        path = ",".join(str(p) for p in row["path"])
        tie = "  ~" if row.get("within_noise") and row["rank"] > 1 else ""
        lines.append(f"{row['rank']:>4}  {path:<20} {row['index']:>5}  "
                     f"{row['validation']:>7.4f}  {row['test']['accuracy']:>8.4f}{tie}")
    return "\n".join(lines)


def format_within_noise(ranking: dict) -> str:
    """'k of P paths within validation noise of the routed one' (older rankings: not recorded)."""
    if "paths_within_noise" not in ranking:
        return "paths within validation noise: not recorded"
    return (f"{ranking['paths_within_noise']} of {ranking['num_paths']} paths within validation "
            f"noise of the routed one (paired, 1.96 standard errors; ~ in the list)")


def _write_outputs(directory: str, ranking: dict, test_accuracies: np.ndarray,
                   compact: SimSiam, compact_vars: dict, meta: dict) -> None:
    io.write_json(os.path.join(directory, "ranking.json"), ranking)
    io.write_text(os.path.join(directory, "ranking.txt"), format_table(ranking) + "\n")
    _histogram(os.path.join(directory, "accuracy_hist.png"), test_accuracies, ranking)
    save_exported(os.path.join(directory, EXPORT_DIR), compact, compact_vars, meta)


def _histogram(filename: str, accuracies: np.ndarray, ranking: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(accuracies, bins=min(30, max(5, len(accuracies) // 4)), color="tab:blue", alpha=0.8,
            label=f"{len(accuracies)} sub-nets")
    for column, style, label in (("sdrnet", dict(color="tab:red", linestyle="--"), "SDRnet"),
                                 ("routed", dict(color="tab:green"), "routed (validation)"),
                                 ("oracle", dict(color="tab:gray", linestyle=":"),
                                  "oracle (best on test)"),
                                 ("random_init", dict(color="black", linestyle="-."),
                                  "random init")):
        ax.axvline(ranking[column]["knn"]["test"]["accuracy"], label=label, **style)
    ax.set_xlabel("kNN accuracy on the test queries")
    ax.set_ylabel("paths")
    ax.set_title(f"routing on {ranking['task']} (bn={ranking['protocol']['bn']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    io.write_figure(filename, fig, dpi=100)
    plt.close(fig)
