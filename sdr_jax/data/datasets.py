"""Open any dataset by name as a random-access source, through `tfds` ArrayRecord data sources.

Names: `mosaic` or `mosaic/<config>` (our builder, see mosaic.py), a folder dataset built in
`data_dir` (folder.py) or any TFDS name (`cifar10`, `imagenet2012`, `cars196`, ...). Nothing is
ever downloaded: a TFDS dataset must already be prepared in `data_dir` in the array_record format.

Every example is a dict with `image` (uint8 HxWx3), `id` (int) and `label`; mosaic examples
also have `domain`. Mosaic and folder ids name an image's content. Real TFDS examples have no
integer id: `id` is the record index in the split (stable for a given prepared copy), and a
dataset's own `id` field is kept as `tfds_id`.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
import shutil
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from sdr_jax.data import folder, mosaic
from sdr_jax.data.records import iter_records
from sdr_jax.data.sources import DataError, SourceMissingError

MOSAIC = 'mosaic'


class UnknownDatasetError(DataError):
    """The name is neither mosaic nor a TFDS dataset."""


class DatasetNotPreparedError(DataError):
    """The dataset exists but is not prepared in data_dir (and is never downloaded here)."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A downstream classification task: where its labelled splits are."""
    name: str
    dataset: str
    train_split: str
    test_split: str
    num_classes: int


TASKS: dict[str, Task] = {
    domain.name: Task(domain.name, MOSAIC, mosaic.train_split(domain.name),
                      mosaic.test_split(domain.name), len(domain.class_names))
    for domain in mosaic.DOMAINS
}


class ExampleSource:
    """Random access to one split: len(), source[i] and source.__getitems__(indices)."""

    def __init__(self, source: Any, name: str, split: str, has_ids: bool):
        self._source = source
        self.name = name
        self.split = split
        self._has_ids = has_ids

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        return self._convert(self._source[index], index)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        indices = [self._check_index(i) for i in indices]
        return [self._convert(record, i)
                for record, i in zip(self._source.__getitems__(indices), indices)]

    def __repr__(self) -> str:
        return f'ExampleSource({self.name!r}, split={self.split!r}, len={len(self)})'

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f'index must be an int, got {type(index).__name__}.')
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f'index {index} out of range for {self!r}.')
        return int(index) % size

    def _convert(self, record: dict[str, Any], index: int) -> dict[str, Any]:
        example = dict(record)
        image = np.asarray(example['image'])
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        example['image'] = image
        if not self._has_ids:
            if 'id' in example:
                example['tfds_id'] = example['id']
            example['id'] = index
        return example


def parse_name(name: str) -> tuple[str, str | None]:
    """'mosaic/small' -> ('mosaic', 'small'); 'cifar10' -> ('cifar10', None)."""
    dataset, _, config = name.partition('/')
    return dataset, (config or None)


def known_datasets() -> list[str]:
    # with_community_datasets=False: the community index lives on GCS (a network access).
    return sorted({MOSAIC, *tfds.list_builders(with_community_datasets=False)})


def mosaic_builder(data_dir: str | os.PathLike | None,
                   config: str | mosaic.MosaicConfig = 'default') -> mosaic.Mosaic:
    if isinstance(config, str):
        names = [c.name for c in mosaic.Mosaic.BUILDER_CONFIGS]
        if config not in names:
            raise DataError(f'unknown mosaic config {config!r}; choose one of {names} or pass '
                            'a MosaicConfig.')
    return mosaic.Mosaic(config=config, data_dir=data_dir, file_format='array_record')


def prepare_mosaic(data_dir: str | os.PathLike | None,
                   config: str | mosaic.MosaicConfig = 'default',
                   manual_dir: str | os.PathLike | None = None) -> mosaic.Mosaic:
    """Builds mosaic (if not built yet); a failed build leaves nothing behind in data_dir."""
    # TFDS treats a missing or empty manual_dir as not given: the installed sources would be
    # read instead of the ones asked for.
    if manual_dir is not None and not (pathlib.Path(manual_dir).is_dir()
                                       and any(pathlib.Path(manual_dir).iterdir())):
        raise SourceMissingError(f'manual_dir {manual_dir} is not a directory with sources in it.')
    builder = mosaic_builder(data_dir, config)
    if builder.is_prepared():
        return builder
    root = pathlib.Path(builder.data_dir_root)
    # What a build creates; the version dir itself is written under incomplete.* by TFDS.
    created = [root, root / 'downloads', root / MOSAIC, root / MOSAIC / '.config',
               root / MOSAIC / builder.builder_config.name]
    existed = {path for path in created if path.exists()}
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except BaseException:
        for path in created:
            if path not in existed and path.exists():
                shutil.rmtree(path)
        raise
    return builder


def open_source(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                build_if_missing: bool = False,
                builder_config: str | mosaic.MosaicConfig | None = None) -> ExampleSource:
    """A random-access source over one split of a prepared dataset."""
    dataset, config = parse_name(name)
    config = builder_config or config
    built = None if dataset == MOSAIC else folder.find(dataset, data_dir)
    if dataset == MOSAIC:
        builder = mosaic_builder(data_dir, config or 'default')
        if not builder.is_prepared():
            if not build_if_missing:
                config_name = builder.builder_config.name
                raise DatasetNotPreparedError(
                    f'{MOSAIC}/{config_name} is not prepared in {builder.data_dir_root}: run '
                    f'`python launch/build_data.py --dataset={MOSAIC} --config={config_name} '
                    f'--data_dir={builder.data_dir_root}` or pass build_if_missing=True.')
            builder = prepare_mosaic(data_dir, builder.builder_config)
    elif built is not None:
        if config:
            raise DataError(f'folder dataset {dataset} has no configs; drop /{config}.')
        builder = built.builder()
    else:
        builder = _tfds_builder(dataset, config, data_dir)
    split_names = list(builder.info.splits.keys())
    # 'train+validation' and 'train[:10%]' name splits through their base names.
    if any(part.partition('[')[0] not in split_names for part in split.split('+')):
        raise DataError(f'{name} has no split {split!r}; its splits are {split_names}.')
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise DataError(
            f'{name} in {builder.data_dir} is stored as {builder.info.file_format.value}; random '
            'access needs array_record: rebuild with `--file_format=array_record`.')
    return ExampleSource(builder.as_data_source(split=split), name, split,
                         has_ids=dataset == MOSAIC or built is not None)


def restrict_to_domains(source: ExampleSource, domains: Sequence[str]) -> ExampleSource:
    """The records of a mosaic `source` whose `domain` is one of `domains` (in record order)."""
    unknown = sorted(set(domains) - set(mosaic.DOMAIN_NAMES))
    if unknown:
        raise DataError(f'unknown mosaic domain(s) {unknown}; choose from {mosaic.DOMAIN_NAMES}.')
    wanted = [mosaic.DOMAIN_NAMES.index(name) for name in domains]
    found = np.concatenate([[r['domain'] for r in source.__getitems__(
        list(range(start, min(start + 4096, len(source)))))]
        for start in range(0, len(source), 4096)]) if len(source) else np.zeros(0, np.int64)
    positions = np.flatnonzero(np.isin(found, wanted))
    if positions.size == 0:
        raise DataError(f'{source.name} split {source.split!r} has no image of the domains '
                        f'{list(domains)}.')
    return ExampleSource(_Subset(source, positions), source.name, f'{source.split}{list(domains)}',
                         has_ids=True)


class _Subset:
    """Random access to `source` at `positions`."""

    def __init__(self, source: ExampleSource, positions: np.ndarray):
        self._source, self._positions = source, positions

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._source[int(self._positions[index])]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self._source.__getitems__([int(self._positions[i]) for i in indices])


def _tfds_builder(dataset: str, config: Any, data_dir: str | os.PathLike | None,
                  ) -> tfds.core.DatasetBuilder:
    known = known_datasets()
    if dataset not in known:
        folders = [built.name for built in folder.find_all(data_dir)]
        close = difflib.get_close_matches(dataset, known + folders, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        yours = f', the folder datasets {", ".join(folders)}' if folders else ''
        raise UnknownDatasetError(
            f'unknown dataset {dataset!r}.{hint} Known: {MOSAIC}, {MOSAIC}/small{yours} and the '
            f'{len(known) - 1} TFDS datasets of tfds.list_builders() (a folder of images: '
            f'`python launch/build_data.py --dataset=folder --source=DIR --name={dataset}`).')
    builder = tfds.builder(dataset, config=config, data_dir=data_dir)
    if not builder.is_prepared():
        # Never download here (no network): say how to prepare it elsewhere.
        root = builder.data_dir_root
        raise DatasetNotPreparedError(
            f'{dataset} is not prepared in {root}: on a machine with internet run `tfds build '
            f'{dataset} --data_dir={root} --file_format=array_record` (add --manual_dir=DIR for '
            'datasets with a manual download) and copy the result here.')
    return builder


@dataclasses.dataclass(frozen=True)
class DomainSizes:
    domain: str
    num_classes: int
    pool: int
    train: int
    test: int


def mosaic_sizes(builder: mosaic.Mosaic) -> list[DomainSizes]:
    """Per domain: classes and pool / task-train / task-test sizes of a prepared mosaic."""
    splits = builder.info.splits
    pool = builder.as_data_source(split=mosaic.POOL_SPLIT)
    pool_domains = np.zeros(len(mosaic.DOMAINS), np.int64)
    pool_domains += np.bincount([r['domain'] for r in iter_records(pool, 4096)],
                                minlength=len(pool_domains))
    return [DomainSizes(domain.name, len(domain.class_names), int(pool_domains[index]),
                        splits[mosaic.train_split(domain.name)].num_examples,
                        splits[mosaic.test_split(domain.name)].num_examples)
            for index, domain in enumerate(mosaic.DOMAINS)]
