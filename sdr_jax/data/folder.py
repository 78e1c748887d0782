"""Folder datasets: a directory of one's own images as a TFDS dataset in ArrayRecord, without TF.

`build(source_dir, name, data_dir)` reads every image file under `source_dir` (recursively;
jpg, jpeg, png, webp, bmp; any size, grey or colour) and writes `<data_dir>/<name>/1.0.0`,
read like mosaic: `image` (uint8 HxWx3), `id` (int64), `label` (int64).

Splits:
  pool              every distinct image except a task's test images (as in mosaic: test
                    images never enter the pre-training pool).
  train, test, val  only for the task layout `source_dir/{train,test[,val]}/<class>/**/<image>`:
                    a labelled task called `name` (`sdr_jax.data.tasks.get_task` finds it in the
                    data_dir; its kNN memory is train+val, its queries test).

Ids: 31 bits of the SHA-1 of the original image's RGB pixels (`sources.content_hashes`, before
resizing; see `assign_ids`), so an image keeps its id across rebuilds, resize policies and
renames; only a hash clash (rare below ~10^4 images) moves an id, deterministically. Copies (same
pixels) are kept once per split (dropped from a split where they carry two classes); a copy in
several splits stays only in the first of test, val, train (a kNN query must not be in the
memory), and these are reported.

Labels: in task splits the class index (`class_names`, sorted). In the pool the image's class,
or for an image outside the task layout its top-level folder under source_dir
(`pool_label_names`, classes first): what the cluster job's summary compares clusters with.

Resizing (`resize`): 'crop' (default) resizes the shorter side to `image_size` (default 64)
and keeps the centre square, as the evaluation view does; 'keep' stores every image at its own
size. Images are stored as zlib-compressed uint8 pixels; the originals are only read.

A build goes to a temporary directory in the data_dir, moved into place when complete: a
failed or interrupted build leaves nothing, and an existing dataset is only replaced with
`overwrite=True`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageOps
from tensorflow_datasets.core.utils import file_utils
from tqdm import tqdm

from sdr_jax.data import augment, sources
from sdr_jax.data.records import iter_records
from sdr_jax.data.sources import DataError

DATASET_VERSION = '1.0.0'
POOL_SPLIT = 'pool'
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = 'train', 'val', 'test'
TASK_SPLITS = (TEST_SPLIT, VAL_SPLIT, TRAIN_SPLIT)  # a copy in several splits stays in the first
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')
RESIZE_POLICIES = ('crop', 'keep')
DEFAULT_IMAGE_SIZE = 64
METADATA_KEY = 'folder'  # marks a dataset built here, and holds its class names
_NAME = re.compile(r'[a-z][a-z0-9_]*')
_CHUNK = 256  # images decoded at a time: bounds memory on folders of any size
ID_BITS = 31  # ids go through JAX arrays (int32 unless jax_enable_x64), e.g. in the cluster job


class FolderError(DataError):
    """The source folder or the name cannot make a dataset."""


# -- finding a built folder dataset -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FolderDataset:
    """A built folder dataset: where it is and what its metadata says."""
    name: str
    directory: pathlib.Path  # <data_dir>/<name>/<DATASET_VERSION>
    class_names: tuple[str, ...]  # empty: a pool only
    splits: tuple[str, ...]

    @property
    def is_task(self) -> bool:
        return bool(self.class_names)

    def builder(self) -> tfds.core.DatasetBuilder:
        return tfds.builder_from_directory(self.directory)


def data_dirs(data_dir: str | os.PathLike | None) -> list[pathlib.Path]:
    """The data_dirs TFDS itself would look in: the given one, or the default ($TFDS_DATA_DIR or
    ~/tensorflow_datasets) and any registered with tfds.core.add_data_dir."""
    return [pathlib.Path(d).expanduser() for d in file_utils.list_data_dirs(data_dir)]


def find(name: str, data_dir: str | os.PathLike | None = None) -> FolderDataset | None:
    """The folder dataset `name` in the data_dir(s), or None."""
    if not _NAME.fullmatch(name):
        return None
    for root in data_dirs(data_dir):
        found = _read(name, root / name / DATASET_VERSION)
        if found is not None:
            return found
    return None


def find_all(data_dir: str | os.PathLike | None = None) -> list[FolderDataset]:
    """Every folder dataset in the data_dir(s), by name (the first data_dir's of a name)."""
    found: dict[str, FolderDataset] = {}
    for root in data_dirs(data_dir):
        for directory in sorted(root.iterdir()) if root.is_dir() else []:
            if _NAME.fullmatch(directory.name) and directory.name not in found:
                built = _read(directory.name, directory / DATASET_VERSION)
                if built is not None:
                    found[built.name] = built
    return sorted(found.values(), key=lambda built: built.name)


def _read(name: str, directory: pathlib.Path) -> FolderDataset | None:
    try:
        metadata = json.loads((directory / 'metadata.json').read_text())
        info = json.loads((directory / 'dataset_info.json').read_text())
    except (OSError, ValueError):
        return None
    if METADATA_KEY not in metadata:
        return None  # another TFDS dataset
    return FolderDataset(name, directory, tuple(metadata[METADATA_KEY]['class_names']),
                         tuple(split['name'] for split in info.get('splits', [])))


# -- reading the source folder ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: str  # relative to the source folder, '/'-separated
    split: str | None  # train, val or test in the task layout; None otherwise
    group: str  # the class (task layout) or the top-level folder ('.' for the folder itself)


def find_images(source_dir: pathlib.Path) -> tuple[list[ImageFile], int]:
    """(the image files under source_dir in path order, the number of other files)."""
    if not source_dir.is_dir():
        raise FolderError(f'--source {source_dir} is not a directory.')
    paths, other, seen = [], 0, set()
    # Linked folders are followed (a class may be a link to where its images are), once each.
    for directory, subdirs, files in os.walk(source_dir, followlinks=True):
        if os.path.realpath(directory) in seen:
            subdirs.clear()
            continue
        seen.add(os.path.realpath(directory))
        subdirs.sort()
        for file in sorted(files):
            if file.lower().endswith(IMAGE_SUFFIXES):
                paths.append(pathlib.Path(directory, file).relative_to(source_dir))
            else:
                other += 1
    if not paths:
        raise FolderError(f'{source_dir} holds no image files ({", ".join(IMAGE_SUFFIXES)}), '
                          'searched recursively.')
    present = [s for s in (TRAIN_SPLIT, TEST_SPLIT) if (source_dir / s).is_dir()]
    is_task = bool(present)
    if len(present) == 1:
        missing = TEST_SPLIT if present == [TRAIN_SPLIT] else TRAIN_SPLIT
        raise FolderError(f'{source_dir} has a {present[0]}/ folder but no {missing}/: a task '
                          'needs train/<class>/ and test/<class>/ (val/ optional); for a pool '
                          'only, give --source a folder without them.')
    images = []
    for path in paths:
        parts = path.parts
        if is_task and parts[0] in TASK_SPLITS:
            if len(parts) < 3:
                raise FolderError(f'{source_dir / path} is not in a class folder: the task layout '
                                  f'is {parts[0]}/<class>/<image>.')
            images.append(ImageFile(path.as_posix(), parts[0], parts[1]))
        else:
            images.append(ImageFile(path.as_posix(), None, parts[0] if len(parts) > 1 else '.'))
    return images, other


def read_rgb(path: os.PathLike | str) -> np.ndarray:
    """The file's pixels as uint8 (H, W, 3), upright, transparency on white."""
    with Image.open(path) as image:
        # Cameras store the orientation in EXIF instead of rotating the pixels.
        return np.asarray(sources.to_rgb(ImageOps.exif_transpose(image)), np.uint8)


def assign_ids(digests: Iterable[str]) -> dict[str, int]:
    """An id per distinct content hash: its first 31 bits, or on a clash the next free value,
    taken in hash order (so the same set of images always gets the same ids)."""
    ids: dict[str, int] = {}
    taken: set[int] = set()
    for digest in sorted(set(digests)):
        candidate = int(digest[:8], 16) >> 1
        while candidate in taken:
            candidate = (candidate + 1) % 2**ID_BITS
        taken.add(candidate)
        ids[digest] = candidate
    return ids


def _fingerprint(path: pathlib.Path) -> str | Exception:
    try:
        return sources.content_hashes([read_rgb(path)])[0]
    except Exception as error:  # noqa: BLE001  PIL raises many types on broken files
        return error


def parallel_map(fn: Callable, items: Sequence, desc: str) -> Iterator:
    """fn over items in order, on threads (PIL releases the GIL while decoding and resizing),
    with a progress bar on stderr."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor, \
            tqdm(total=len(items), desc=desc, file=sys.stderr, unit='img', leave=False) as bar:
        for start in range(0, len(items), _CHUNK):
            for result in executor.map(fn, items[start:start + _CHUNK]):
                bar.update()
                yield result


# -- the plan: which image goes to which split with which label --------------------------------

@dataclasses.dataclass
class Plan:
    """What a build writes, and what it left out."""
    source_dir: pathlib.Path
    files: list[ImageFile]
    digests: list[str]  # per file ('' for an unreadable one)
    ids: dict[str, int]  # digest -> example id (the same in every split)
    class_names: list[str]
    pool_label_names: list[str]
    splits: dict[str, list[tuple[int, int]]]  # split -> (file index, label), in path order
    unreadable: list[tuple[str, str]]  # (path, why)
    cross_split: list[tuple[str, str]]  # (dropped path, kept path), copies across task splits
    num_copies: int  # readable files with the same pixels as another one
    num_ignored: int  # non-image files

    def counts(self) -> dict[str, collections.Counter]:
        """split -> {label name: images}."""
        names = {split: self.class_names for split in TASK_SPLITS}
        names[POOL_SPLIT] = self.pool_label_names
        return {split: collections.Counter(names[split][label] for _, label in examples)
                for split, examples in self.splits.items()}


def make_plan(source_dir: pathlib.Path, files: list[ImageFile], fingerprints: list,
              num_ignored: int = 0, *, strict: bool = False) -> Plan:
    unreadable = [(f.path, _one_line(fp)) for f, fp in zip(files, fingerprints)
                  if isinstance(fp, Exception)]
    if unreadable and strict:
        raise FolderError(f'{len(unreadable)} unreadable image file(s) under {source_dir} (e.g. '
                          f'{unreadable[0][0]}: {unreadable[0][1]}); drop --strict to skip them.')
    if len(unreadable) == len(files):
        raise FolderError(f'none of the {len(files)} image files under {source_dir} could be '
                          f'read (e.g. {unreadable[0][0]}: {unreadable[0][1]}).')
    digests = ['' if isinstance(fp, Exception) else fp for fp in fingerprints]
    readable = [i for i, fp in enumerate(fingerprints) if not isinstance(fp, Exception)]
    class_names = sorted({files[i].group for i in readable if files[i].split is not None})
    label_of = {name: index for index, name in enumerate(class_names)}

    splits: dict[str, list[tuple[int, int]]] = {}
    kept_in: dict[str, int] = {}  # digest -> file index, over the task splits done so far
    cross_split = []
    for split in TASK_SPLITS:
        candidates = [i for i in readable if files[i].split == split]
        if not candidates:
            continue
        labels = np.array([label_of[files[i].group] for i in candidates])
        unique = sources.unique_indices([digests[i] for i in candidates], labels)
        splits[split] = []
        for i in (candidates[j] for j in unique):
            if digests[i] in kept_in:
                cross_split.append((files[i].path, files[kept_in[digests[i]]].path))
            else:
                splits[split].append((i, label_of[files[i].group]))
        kept_in.update({digests[i]: i for i, _ in splits[split]})
    _check_classes(source_dir, class_names, splits)

    test_digests = {digests[i] for i, _ in splits.get(TEST_SPLIT, [])}
    other_groups = sorted({files[i].group for i in readable if files[i].split is None}
                          - set(class_names))
    pool_label_names = class_names + other_groups
    pool_label_of = {name: index for index, name in enumerate(pool_label_names)}
    pool, seen = [], set(test_digests)
    for i in readable:
        if files[i].split == TEST_SPLIT:
            continue
        if digests[i] not in seen:
            seen.add(digests[i])
            pool.append((i, pool_label_of[files[i].group]))
    splits[POOL_SPLIT] = pool
    num_copies = len(readable) - len({digests[i] for i in readable})
    return Plan(source_dir, files, digests, assign_ids(digests[i] for i in readable), class_names,
                pool_label_names, splits, unreadable, cross_split, num_copies, num_ignored)


def _check_classes(source_dir: pathlib.Path, class_names: list[str],
                   splits: dict[str, list[tuple[int, int]]]) -> None:
    if not class_names:
        return
    for split in (TRAIN_SPLIT, TEST_SPLIT):
        present = {label for _, label in splits.get(split, [])}
        missing = [name for label, name in enumerate(class_names) if label not in present]
        if missing:
            raise FolderError(f'class {missing[0]!r} has no readable {split} images (in '
                              f'{source_dir / split / missing[0]}): every class needs train and '
                              f'test images.')
    if len(class_names) < 2:
        raise FolderError(f'{source_dir} has one class ({class_names[0]!r}): a task needs at '
                          'least two.')


def _one_line(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ''
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


# -- the TFDS builder -----------------------------------------------------------------------------

class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes a Plan; subclassed per dataset name (`_builder_class`), never registered."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: 'Built from an image folder by sdr_jax.data.folder.'}

    def __init__(self, *, plan: Plan, resize: str, image_size: int, **kwargs):
        self._plan, self._resize, self._image_size = plan, resize, image_size
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        side = self._image_size if self._resize == 'crop' else None
        plan = self._plan
        return tfds.core.DatasetInfo(
            builder=self,
            description=f'Images of {plan.source_dir} (sdr_jax.data.folder).',
            features=tfds.features.FeaturesDict({
                # A tensor as in mosaic (tfds.features.Image would need TensorFlow to encode
                # arrays, and decodes slower); zlib: about PNG's size on photos, faster to read.
                'image': tfds.features.Tensor(shape=(side, side, 3), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.ZLIB),
                'id': tfds.features.Scalar(dtype=np.int64),
                'label': tfds.features.Scalar(dtype=np.int64),
            }),
            metadata=tfds.core.MetadataDict({METADATA_KEY: {
                'source': str(plan.source_dir), 'class_names': plan.class_names,
                'pool_label_names': plan.pool_label_names, 'resize': self._resize,
                'image_size': self._image_size, 'unreadable': [p for p, _ in plan.unreadable],
                'cross_split_copies': plan.cross_split}}),
        )

    # TFDS prints where it prepares (our temporary directory) to stdout; the report says where
    # the dataset is.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager
        return {split: self._generate_examples(split, examples)
                for split, examples in self._plan.splits.items()}

    def _generate_examples(self, split: str, examples: list[tuple[int, int]]
                           ) -> Iterator[tuple[int, dict]]:
        plan = self._plan
        images = parallel_map(lambda example: self._image(plan.files[example[0]].path), examples,
                              f'writing {split}')
        for (index, label), image in zip(examples, images):
            example_id = plan.ids[plan.digests[index]]
            yield example_id, {'image': image, 'id': example_id, 'label': label}

    def _image(self, path: str) -> np.ndarray:
        try:
            image = read_rgb(self._plan.source_dir / path)
        except Exception as error:  # noqa: BLE001  PIL raises many types on broken files
            raise FolderError(f'{self._plan.source_dir / path} became unreadable during the '
                              f'build ({_one_line(error)}); build again.') from error
        if self._resize == 'crop':
            image = augment.center_resize(image, self._image_size)
        return image


def _builder_class(name: str) -> type[_FolderBuilder]:
    # TFDS names a dataset's directory after its builder's `name`.
    return type(f'Folder_{name}', (_FolderBuilder,), {'name': name}, skip_registration=True)


# -- building -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Report:
    """What `build` wrote: the plan, where and how large."""
    name: str
    directory: pathlib.Path
    plan: Plan
    resize: str
    image_size: int
    size_bytes: int

    def builder(self) -> tfds.core.DatasetBuilder:
        return tfds.builder_from_directory(self.directory)


def build(source_dir: str | os.PathLike, name: str, data_dir: str | os.PathLike | None = None, *,
          resize: str = 'crop', image_size: int = DEFAULT_IMAGE_SIZE, strict: bool = False,
          overwrite: bool = False) -> Report:
    """Builds the folder dataset `name` from `source_dir` into data_dir (default: TFDS's)."""
    root = pathlib.Path(data_dir if data_dir is not None else data_dirs(None)[0]).expanduser()
    source_dir = pathlib.Path(source_dir).expanduser().resolve()
    if resize not in RESIZE_POLICIES:
        raise FolderError(f'--resize must be one of {RESIZE_POLICIES}, got {resize!r}.')
    if resize == 'crop' and image_size < 1:
        raise FolderError(f'--image_size must be positive, got {image_size}.')
    check_name(name, root, overwrite=overwrite)
    files, num_ignored = find_images(source_dir)
    fingerprints = list(parallel_map(lambda f: _fingerprint(source_dir / f.path), files,
                                     'reading'))
    plan = make_plan(source_dir, files, fingerprints, num_ignored, strict=strict)

    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{name}.building.', dir=root))
    try:
        builder = _builder_class(name)(plan=plan, resize=resize, image_size=image_size,
                                       data_dir=tmp, file_format='array_record')
        builder.download_and_prepare()
        _move_into_place(tmp / name, root / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    directory = root / name / DATASET_VERSION
    size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    return Report(name, directory, plan, resize, image_size, size)


def check_name(name: str, root: pathlib.Path, *, overwrite: bool) -> None:
    """Refuses names that are not valid, that mean something else, or exist (unless overwrite)."""
    # Imported here: tasks and datasets open folder datasets through this module.
    from sdr_jax.data import datasets, tasks

    if not _NAME.fullmatch(name):
        raise FolderError(f'--name {name!r} must be lower case letters, digits and _, starting '
                          'with a letter (a TFDS dataset name).')
    if name in tasks.REGISTRY or name == datasets.MOSAIC:
        raise FolderError(f'--name {name!r} is a registered task or dataset of sdr_jax; choose '
                          'another name.')
    if name in tfds.list_builders(with_community_datasets=False):
        raise FolderError(f'--name {name!r} is a TFDS dataset; choose another name.')
    target = root / name
    if target.exists():
        if _read(name, target / DATASET_VERSION) is None:
            raise FolderError(f'{target} exists and is not a folder dataset; choose another name.')
        if not overwrite:
            raise FolderError(f'folder dataset {name!r} exists in {root}; pass --overwrite to '
                              'rebuild it.')


def _move_into_place(built: pathlib.Path, target: pathlib.Path) -> None:
    """Renames the complete build to target; an old target is moved aside first and deleted
    after, so a failure at any point leaves either the old or the new dataset."""
    old = None
    if target.exists():
        old = pathlib.Path(tempfile.mkdtemp(prefix=f'.{target.name}.old.', dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(built, target)
    except OSError as error:
        if old is not None:
            os.replace(old / target.name, target)
        raise FolderError(f'could not move the build into {target} ({_one_line(error)}).') \
            from error
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# -- reporting --------------------------------------------------------------------------------

def format_report(report: Report) -> str:
    """Images per class and split, what was left out, and the size on disk."""
    plan = report.plan
    counts = plan.counts()
    columns = [s for s in (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT, POOL_SPLIT) if s in counts]
    how = (f'shorter side to {report.image_size}, centre crop' if report.resize == 'crop'
           else 'original sizes')
    kind = f'task of {len(plan.class_names)} classes and pool' if plan.class_names else 'pool'
    width = max(12, *(len(n) + 2 for n in plan.pool_label_names))
    lines = [f'{report.name}: {kind}, from {plan.source_dir} ({how}) in {report.directory}',
             f'{"class" if plan.class_names else "folder":<{width}}'
             + ''.join(f'{c:>8}' for c in columns)]
    for label in plan.pool_label_names:
        lines.append(f'{label:<{width}}' + ''.join(
            f'{counts[c][label] if label in plan.class_names or c == POOL_SPLIT else "":>8}'
            for c in columns))
    lines.append(f'{"total":<{width}}' + ''.join(f'{sum(counts[c].values()):>8}'
                                                  for c in columns))
    lines.append(f'skipped {len(plan.unreadable)} unreadable file(s)' + (
        ': ' + '; '.join(f'{p} ({why})' for p, why in plan.unreadable[:3])
        + (' ...' if len(plan.unreadable) > 3 else '') if plan.unreadable else ''))
    if plan.cross_split:
        lines.append(f'dropped {len(plan.cross_split)} image(s) also in an earlier split of '
                     f'test, val, train (dropped = kept): ' + '; '.join(
                         f'{dropped} = {kept}' for dropped, kept in plan.cross_split[:3])
                     + (' ...' if len(plan.cross_split) > 3 else ''))
    lines.append(f'{plan.num_copies} file(s) with the pixels of another (kept once per split); '
                 f'{plan.num_ignored} non-image file(s) ignored; size on disk '
                 f'{report.size_bytes / 2**20:.1f} MiB')
    return '\n'.join(lines)


def sample_rows(builder: tfds.core.DatasetBuilder, columns: int, max_rows: int = 16,
                ) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    """Grid rows: up to `columns` pool images of each of the first `max_rows` pool labels."""
    label_names = builder.info.metadata[METADATA_KEY]['pool_label_names'][:max_rows]
    rows: dict[int, list] = {label: [] for label in range(len(label_names))}
    pool = builder.as_data_source(split=POOL_SPLIT)
    for record in iter_records(pool, _CHUNK):
        row = rows.get(int(record['label']))
        if row is not None and len(row) < columns:
            row.append((record['image'], ''))
            if all(len(row) == columns for row in rows.values()):
                break
    return [(name, rows[label]) for label, name in enumerate(label_names)]
