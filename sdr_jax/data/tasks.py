"""The downstream-task registry: the embedded pool's tasks and the paper's classification tasks.

`REGISTRY` maps a task name to a `Task` (dataset, train/test splits, number of classes).
The pool's tasks (`datasets.TASKS`) live in our `mosaic` builder; the paper's 11 tasks
(DESIGN.md §3) are TFDS datasets that must be prepared (ArrayRecord) in the data_dir first:
nothing is ever downloaded here. TFDS has no FGVC-Aircraft builder, so `aircraft` is not
registered (prepare it as a custom TFDS dataset and add it here).

Folder tasks (folder.py: `launch/build_data.py --dataset=folder --source=DIR --name=NAME` on a
`DIR/{train,test[,val]}/<class>/` layout) need no entry here: `get_task` finds them by name in
the data_dir, whose dataset metadata holds their classes.

Splits follow the usual transfer protocol: train+validation as the kNN memory / probe
training set where the dataset has a validation split, the test split as queries.
"""
from __future__ import annotations

import dataclasses
import difflib
import os

from sdr_jax.data import datasets, folder
from sdr_jax.data.datasets import DataError, Task


class UnknownTaskError(DataError):
    """The task name is not registered."""


@dataclasses.dataclass(frozen=True)
class DownstreamTask(Task):
    """A TFDS task; `multi_label` tasks (VOC) have a `labels` set, not one `label`."""
    multi_label: bool = False


PAPER_TASKS: dict[str, DownstreamTask] = {t.name: t for t in (
    DownstreamTask('cars', 'cars196', 'train', 'test', 196),
    DownstreamTask('flowers', 'oxford_flowers102', 'train+validation', 'test', 102),
    DownstreamTask('pets', 'oxford_iiit_pet', 'train', 'test', 37),
    DownstreamTask('food', 'food101', 'train', 'validation', 101),
    DownstreamTask('dtd', 'dtd', 'train+validation', 'test', 47),
    DownstreamTask('sun397', 'sun397/tfds', 'train+validation', 'test', 397),
    DownstreamTask('caltech101', 'caltech101', 'train', 'test', 102),  # TFDS adds a background class
    DownstreamTask('cifar10', 'cifar10', 'train', 'test', 10),
    DownstreamTask('cifar100', 'cifar100', 'train', 'test', 100),
    DownstreamTask('voc2007', 'voc/2007', 'train+validation', 'test', 20, multi_label=True),
)}

REGISTRY: dict[str, Task] = {**datasets.TASKS, **PAPER_TASKS}


def get_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """The registered task `name`, or the folder task `name` in data_dir (default: TFDS's data
    dirs); UnknownTaskError listing the known ones otherwise."""
    if name in REGISTRY:
        return REGISTRY[name]
    built = folder.find(name, data_dir)
    if built is not None and built.is_task:
        train = (f'{folder.TRAIN_SPLIT}+{folder.VAL_SPLIT}' if folder.VAL_SPLIT in built.splits
                 else folder.TRAIN_SPLIT)
        return Task(name, name, train, folder.TEST_SPLIT, len(built.class_names))
    if built is not None:
        raise UnknownTaskError(
            f'{name} is a folder dataset without labels (a pool only): build a task from a '
            'folder with train/<class>/ and test/<class>/ sub-folders.')
    known = sorted([*REGISTRY, *(b.name for b in folder.find_all(data_dir) if b.is_task)])
    close = difflib.get_close_matches(name, known, n=2)
    hint = f' Did you mean {" or ".join(close)}?' if close else ''
    raise UnknownTaskError(f'unknown task {name!r}.{hint} Known tasks: {", ".join(known)}.')


def open_task(name: str, data_dir: str | os.PathLike | None = None, *,
              pool_dataset: str | None = None, build_if_missing: bool = False
              ) -> tuple[datasets.ExampleSource, datasets.ExampleSource, Task]:
    """(train source, test source, task).

    `pool_dataset` is the dataset a run pre-trained on: a task of the same family is read from
    that variant (a run on `mosaic/small` is evaluated on the `mosaic/small` task splits).
    An unprepared TFDS dataset raises DatasetNotPreparedError saying how to prepare it.
    """
    task = get_task(name, data_dir)
    dataset = task.dataset
    if pool_dataset and datasets.parse_name(pool_dataset)[0] == datasets.parse_name(dataset)[0]:
        dataset = pool_dataset
    return (datasets.open_source(dataset, task.train_split, data_dir,
                                 build_if_missing=build_if_missing),
            datasets.open_source(dataset, task.test_split, data_dir,
                                 build_if_missing=build_if_missing),
            task)
