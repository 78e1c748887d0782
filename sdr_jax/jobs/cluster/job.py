"""The clustering job (DESIGN.md §2.2): SimSiam features -> path-shaped clusters -> reports.

  python launch/cluster.py --config=configs/cluster_mosaic.py --workdir=DIR \
      --config.pretrain_workdir=RUN

Stages, each writing into the job's workdir:
  features/        FeatureStore of the L2-normalised backbone features (full path) of every
                   example of the pre-training split, keyed by id; provenance in its metadata.
  assignments.npz  the tree of G**L leaf clusters (`cluster.assignments` format), with G, L
                   from the SDR config the clusters are for, so the two cannot disagree.
  clusters.png, summary.txt, summary.json
                   sample images per top-level cluster; sizes, purity and NMI against the
                   pool's known domains and (domain, label).
A stage whose output exists and was made from the same inputs is skipped (so an interrupted
job resumes); an output made from other inputs is an error, never silently replaced.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from sdr_jax import models
from sdr_jax.data import assignments as assignments_lib
from sdr_jax.jobs.cluster import clustering, summary
from sdr_jax.jobs.cluster.store import FeatureStore, FeatureWriter
from sdr_jax.config_base import load_config_file
from sdr_jax.data import datasets, mosaic
from sdr_jax.data.records import iter_records
from sdr_jax.core import io
from sdr_jax.core.errors import ConfigError, SDRError
from sdr_jax.core.numerics import l2_normalize
from sdr_jax.eval import features as features_lib
from sdr_jax.core.paths import PathSpec
from sdr_jax.train import checkpoint as checkpoint_lib
from sdr_jax.core import mesh as mesh_lib

FEATURES_DIR = "features"
ASSIGNMENTS_FILE = "assignments.npz"
CLUSTERS_PNG = "clusters.png"
SUMMARY_TXT = "summary.txt"
SUMMARY_JSON = "summary.json"
# What the feature store holds; part of its provenance, so a change of recipe is noticed.
FEATURE_KIND = "backbone feature, full path, L2-normalised"


class ClusterJobError(SDRError):
    """An input of the clustering job, or an output already in its workdir, does not fit."""


@dataclasses.dataclass(frozen=True)
class Examples:
    """Reference fields of every example of a split, in source order (no images)."""

    ids: np.ndarray
    labels: np.ndarray
    domains: np.ndarray | None  # Only datasets made of several domains (mosaic) have them.

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Source positions of `ids` (all of which must be in the split)."""
        order = np.argsort(self.ids)
        return order[np.searchsorted(self.ids, ids, sorter=order)]


def read_examples(source) -> Examples:
    """Reads id, label and (if present) domain of every record of `source`."""
    ids, labels, domains = [], [], []
    for record in iter_records(source, 4096):
        ids.append(record["id"])
        labels.append(record["label"])
        if "domain" in record:
            domains.append(record["domain"])
    if domains and len(domains) != len(ids):
        raise ClusterJobError(f"{source!r}: only some records have a 'domain'.")
    return Examples(np.asarray(ids), np.asarray(labels, np.int64),
                    np.asarray(domains, np.int64) if domains else None)


def run(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the job; returns the summary that it also writes to the workdir."""
    if not config.pretrain_workdir:
        raise ConfigError("set --config.pretrain_workdir to the --workdir of a SimSiam run.")
    run_config, variables, step = checkpoint_lib.load_run(config.pretrain_workdir)
    spec = models.path_spec(load_config_file(config.sdr_config).model)
    if spec.num_groups < 2:
        raise ConfigError(f"{config.sdr_config} has num_groups={spec.num_groups}: an SDR config "
                          "with at least 2 groups per block is needed to cluster for it.")
    data = {key: config.data[key] or run_config.data[key]
            for key in ("dataset", "split", "data_dir")}
    source = datasets.open_source(data["dataset"], data["split"], data["data_dir"] or None)
    examples = read_examples(source)
    origin = {"checkpoint": os.path.abspath(config.pretrain_workdir), "step": int(step),
              "dataset": data["dataset"], "split": data["split"]}
    io.makedirs(workdir)
    lead = jax.process_index() == 0
    timings, skipped = {}, {}

    start = time.perf_counter()
    metadata = {**origin, "feature": FEATURE_KIND, "image_size": int(run_config.data.image_size),
                "model": run_config.model.to_dict()}
    store, skipped["features"] = write_feature_store(
        os.path.join(workdir, FEATURES_DIR), run_config.model, variables, source,
        image_size=run_config.data.image_size, batch_size=config.extract.batch_size,
        metadata=metadata)
    check_ids(store, examples.ids, data)
    timings["features"] = time.perf_counter() - start
    _say(lead, f"features: {'reused' if skipped['features'] else 'extracted'} "
               f"{store.shape[0]} x {store.shape[1]} in {timings['features']:.1f}s")

    start = time.perf_counter()
    provenance = {**origin, "features": os.path.abspath(store.directory),
                  "sdr_config": config.sdr_config, "config": json.loads(config.to_json())}
    assignments, skipped["clustering"] = cluster(
        store, os.path.join(workdir, ASSIGNMENTS_FILE), spec, config.cluster, provenance,
        dataset_ids=examples.ids, write=lead)
    timings["clustering"] = time.perf_counter() - start
    _say(lead, f"clustering: {'reused' if skipped['clustering'] else 'fitted'} "
               f"G={spec.num_groups}, L={spec.num_blocks} ({spec.num_paths} leaves) in "
               f"{timings['clustering']:.1f}s")

    start = time.perf_counter()
    result = score_clusters(assignments, examples, dataset_name=source.name)
    result.update(origin=origin, seconds=timings, skipped=skipped)
    if lead:
        figure = cluster_grid(assignments, examples, source,
                              images_per_cluster=config.report.images_per_cluster,
                              seed=config.report.seed, image_size=run_config.data.image_size)
        io.write_image(os.path.join(workdir, CLUSTERS_PNG), figure)
        result["seconds"]["report"] = time.perf_counter() - start
        text = format_summary(result)
        io.write_text(os.path.join(workdir, SUMMARY_TXT), text)
        io.write_json(os.path.join(workdir, SUMMARY_JSON), result)
        print(text, flush=True)
    return result


# -- stage 1: features ----------------------------------------------------------------------

def write_feature_store(directory: str, model_config: ConfigDict, variables: dict, source, *,
                        image_size: int, batch_size: int, metadata: dict[str, Any]
                        ) -> tuple[FeatureStore, bool]:
    """(store, reused): the features of every example of `source`, written unless a store
    with the same provenance is already there."""
    metadata = json.loads(json.dumps(metadata))  # As it reads back from the store's index.
    if os.path.isdir(directory):
        store = FeatureStore(directory)
        _check_same(store.metadata, metadata, f"the feature store {directory}",
                    keys=("checkpoint", "step", "dataset", "split", "feature", "image_size",
                          "model"))
        return store, True
    mesh = mesh_lib.make_data_mesh(jax.local_devices())
    mesh_lib.local_batch_size(batch_size, mesh)  # The batch must split over the devices.
    model = models.build_model(model_config)
    path = jnp.asarray(models.path_spec(model_config).full_path())

    def normalised_features(images):
        return l2_normalize(model.apply(variables, images, path, train=False)["feature"])

    lead = jax.process_index() == 0
    batches = features_lib.iter_features(
        features_lib.jit_feature_fn(normalised_features, mesh), source, batch_size=batch_size,
        image_size=image_size, mesh=mesh)
    progress = tqdm(batches, total=-(-len(source) // batch_size), desc="features",
                    unit="batch", disable=not lead)
    if lead:
        with FeatureWriter(directory, metadata=metadata) as writer:
            for batch in progress:
                writer.write(batch["id"], batch["feature"])
    else:
        for _ in progress:  # Every process takes part in every step.
            pass
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("cluster features written")
    return FeatureStore(directory), False


def check_ids(store: FeatureStore, dataset_ids: np.ndarray, data: dict[str, str]) -> None:
    """The store must hold exactly the dataset's examples."""
    missing = np.setdiff1d(dataset_ids, store.ids)
    extra = np.setdiff1d(store.ids, dataset_ids)
    if missing.size or extra.size or len(store) != len(dataset_ids):
        raise ClusterJobError(
            f"the feature store {store.directory} does not match {data['dataset']}/"
            f"{data['split']}: {len(store)} stored vs {len(dataset_ids)} dataset ids, "
            f"{missing.size} missing (e.g. {missing[:3].tolist()}), {extra.size} not in the "
            f"dataset (e.g. {extra[:3].tolist()}); delete it or use a new --workdir.")


# -- stage 2: clustering --------------------------------------------------------------------

def cluster(store: FeatureStore, path: str, spec: PathSpec, cluster_config: ConfigDict,
            provenance: dict[str, Any], *, dataset_ids: np.ndarray, write: bool = True
            ) -> tuple[assignments_lib.Assignments, bool]:
    """(assignments, reused): fits the G**L tree on the store unless `path` already holds it."""
    cfg = clustering.ClusterConfig.from_mapping(cluster_config)
    if os.path.isfile(path):
        existing = assignments_lib.load(path, num_groups=spec.num_groups,
                                        num_blocks=spec.num_blocks, dataset_ids=dataset_ids)
        wanted = {**provenance, "cluster_config": dataclasses.asdict(cfg)}
        _check_same(existing.provenance, json.loads(json.dumps(wanted)), path,
                    keys=("checkpoint", "step", "dataset", "split", "cluster_config"))
        return existing, True
    result = clustering.fit(store, None, spec.num_groups, spec.num_blocks, cfg,
                            provenance=provenance)
    if write:
        result.save(path)
    return result, False


# -- stage 3: reports -----------------------------------------------------------------------

def reference_labels(examples: Examples, positions: np.ndarray) -> dict[str, np.ndarray]:
    """What clusters are compared with: the domain and (domain, label), or just the label."""
    labels = examples.labels[positions]
    if examples.domains is None:
        return {"label": labels}
    domains = examples.domains[positions]
    return {"domain": domains, "domain+label": domains * (labels.max() + 1) + labels}


def score_clusters(assignments: assignments_lib.Assignments, examples: Examples, *,
                   dataset_name: str) -> dict[str, Any]:
    """Sizes per depth, purity/NMI of the top level and the leaves, and the table of the
    top-level clusters against the coarsest reference (domain, or label)."""
    positions = examples.positions_of(assignments.ids)
    references = reference_labels(examples, positions)
    stats = summary.summarize(assignments)
    result: dict[str, Any] = {
        "num_groups": assignments.num_groups, "num_blocks": assignments.num_blocks,
        "num_examples": int(len(assignments.ids)),
        "sizes": {str(d): s for d, s in stats["sizes"].items()},
        "balance": {str(d): b for d, b in stats["balance"].items()}, "scores": {}}
    levels = {"top": assignments.node_ids(1), "leaf": assignments.leaves}
    for ref_name, labels in references.items():
        for level, clusters in levels.items():
            result["scores"][f"{level} vs {ref_name}"] = {
                "purity": summary.purity(labels, clusters), "nmi": summary.nmi(labels, clusters)}
    ref_name = next(iter(references))
    ref = references[ref_name]
    names = _class_names(ref_name, dataset_name, int(ref.max()) + 1)
    table = np.zeros((assignments.num_groups, len(names)), np.int64)
    np.add.at(table, (levels["top"], ref), 1)
    result["top_clusters"] = {"reference": ref_name, "names": names, "counts": table.tolist()}
    return result


def _class_names(ref_name: str, dataset_name: str, count: int) -> list[str]:
    if ref_name == "domain" and datasets.parse_name(dataset_name)[0] == datasets.MOSAIC:
        return list(mosaic.DOMAIN_NAMES[:count])
    return [str(i) for i in range(count)]


def _majority(counts: list[int], names: list[str]) -> str:
    best = int(np.argmax(counts))
    return f"{names[best]} {counts[best] / max(sum(counts), 1):.0%}"


def format_summary(result: dict[str, Any]) -> str:
    origin = result["origin"]
    lines = [f"clusters of {origin['dataset']}/{origin['split']} ({result['num_examples']} "
             f"examples), checkpoint {origin['checkpoint']} step {origin['step']}: "
             f"G={result['num_groups']}, L={result['num_blocks']}",
             "", "depth  nodes  min size  max size  max/min"]
    for depth, sizes in result["sizes"].items():
        lines.append(f"{depth:>5}  {len(sizes):5d}  {min(sizes):8d}  {max(sizes):8d}  "
                     f"{result['balance'][depth]:7.2f}")
    lines += ["", f"{'clusters vs reference':24s} purity    NMI"]
    for name, score in result["scores"].items():
        lines.append(f"{name:24s} {score['purity']:6.3f}  {score['nmi']:5.3f}")
    top = result["top_clusters"]
    width = max(7, *(len(n) for n in top["names"]))
    lines += ["", f"top-level clusters vs {top['reference']}:",
              "cluster     size " + "".join(f" {n:>{width}s}" for n in top["names"])
              + "  majority"]
    for cluster_id, counts in enumerate(top["counts"]):
        lines.append(f"{cluster_id:7d}  {sum(counts):7d}  "
                     + "".join(f" {c:{width}d}" for c in counts)
                     + f"  {_majority(counts, top['names'])}")
    lines += ["", "seconds: " + ", ".join(
        f"{stage} {seconds:.1f}" + (" (reused)" if result["skipped"].get(stage) else "")
        for stage, seconds in result["seconds"].items())]
    return "\n".join(lines)


def cluster_grid(assignments: assignments_lib.Assignments, examples: Examples, source, *,
                 images_per_cluster: int, seed: int, image_size: int) -> bytes:
    """PNG: one row of sample images per top-level cluster, labelled with its size and
    majority domain (or label)."""
    from matplotlib.figure import Figure  # No pyplot: no GUI backend, no global state.

    top = assignments.node_ids(1)
    positions = examples.positions_of(assignments.ids)
    references = reference_labels(examples, positions)
    ref_name = next(iter(references))
    ref = references[ref_name]
    names = _class_names(ref_name, source.name, int(ref.max()) + 1)
    rng = np.random.default_rng(seed)
    rows, cols = assignments.num_groups, images_per_cluster
    figure = Figure(figsize=(1.0 * cols + 2.6, 1.05 * rows + 0.2))
    axes = figure.subplots(rows, cols, squeeze=False)
    for cluster_id in range(rows):
        members = np.flatnonzero(top == cluster_id)
        chosen = np.sort(rng.choice(members, min(cols, len(members)), replace=False))
        counts = np.bincount(ref[members], minlength=len(names)).tolist()
        for col, ax in enumerate(axes[cluster_id]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.axis("off" if col >= len(chosen) else "on")
            if col < len(chosen):
                image = source[int(positions[chosen[col]])]["image"]
                ax.imshow(np.asarray(image), interpolation="nearest")
        axes[cluster_id][0].axis("on")
        axes[cluster_id][0].set_ylabel(
            f"#{cluster_id}  n={len(members)}\n{_majority(counts, names)}", rotation=0,
            ha="right", va="center", fontsize=8)
    figure.subplots_adjust(left=2.4 / (cols + 2.6), right=0.99, top=0.98, bottom=0.02,
                           wspace=0.05, hspace=0.1)
    return io.figure_png(figure, dpi=max(60, 2 * image_size))


# -- helpers --------------------------------------------------------------------------------

def _check_same(recorded: dict[str, Any], wanted: dict[str, Any], what: str, *,
                keys: tuple[str, ...]) -> None:
    for key in keys:
        if recorded.get(key) != wanted.get(key):
            raise ClusterJobError(
                f"{what} was made with another {key} ({_short(recorded.get(key))} there, "
                f"{_short(wanted.get(key))} now); delete it or use a new --workdir.")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _say(lead: bool, message: str) -> None:
    if lead:
        print(message, flush=True)
