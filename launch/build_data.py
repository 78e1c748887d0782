"""Builds the mosaic dataset, prints its table and writes a grid of samples per domain.

  python launch/build_data.py --dataset=mosaic --config=small --grid=runs/samples.png
"""
from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

flags.DEFINE_string('dataset', 'mosaic', 'mosaic or mosaic/<config>: the offline dataset.')
flags.DEFINE_string('config', None, 'Builder config (default|small); default: from --dataset.')
flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: ~/tensorflow_datasets).')
flags.DEFINE_string('manual_dir', None, 'Read every source from this tree (tests, fixtures).')
flags.DEFINE_string('grid', None, 'Write a PNG grid of samples, one row per domain, here.')
flags.DEFINE_integer('grid_columns', 12, 'Samples per domain in the grid.')
FLAGS = flags.FLAGS


def format_table(rows) -> str:
    lines = [f'{"domain":<14}{"classes":>8}{"pool":>8}{"train":>8}{"test":>8}']
    lines += [f'{r.domain:<14}{r.num_classes:>8}{r.pool:>8}{r.train:>8}{r.test:>8}' for r in rows]
    lines.append(f'{"total":<14}{"":>8}{sum(r.pool for r in rows):>8}'
                 f'{sum(r.train for r in rows):>8}{sum(r.test for r in rows):>8}')
    return '\n'.join(lines)


def save_sample_grid(builder, path: str, columns: int) -> None:
    """One row per domain (its task-train split), each image titled with its class."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from sdr_jax.data import mosaic

    class_names = builder.info.metadata['class_names']
    fig, axes = plt.subplots(len(mosaic.DOMAINS), columns, squeeze=False,
                             figsize=(columns * 0.9, len(mosaic.DOMAINS) * 1.05))
    for row, domain in enumerate(mosaic.DOMAINS):
        source = builder.as_data_source(split=mosaic.train_split(domain.name))
        for column, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(source):
                example = source[column]
                ax.imshow(example['image'])
                ax.set_title(class_names[domain.name][example['label']][:12], fontsize=5)
        axes[row][0].set_ylabel(domain.name, fontsize=7)
    fig.tight_layout(pad=0.2)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str]) -> None:
    del argv
    # Imported after flag parsing: grain and TFDS read absl flags.
    import tensorflow_datasets as tfds
    from sdr_jax.data import datasets, sources

    tfds.disable_progress_bar()
    logging.set_verbosity(logging.ERROR)  # the CLI reports errors itself, on one line
    try:
        dataset, config = datasets.parse_name(FLAGS.dataset)
        if dataset != datasets.MOSAIC:
            raise datasets.UnknownDatasetError(
                f'only {datasets.MOSAIC} can be built offline; prepare {dataset!r} with `tfds '
                f'build {dataset} --file_format=array_record` on a machine with internet.')
        builder = datasets.prepare_mosaic(FLAGS.data_dir, FLAGS.config or config or 'default',
                                          FLAGS.manual_dir)
        print(format_table(datasets.mosaic_sizes(builder)))
        if FLAGS.grid:
            save_sample_grid(builder, FLAGS.grid, FLAGS.grid_columns)
            print(f'sample grid: {FLAGS.grid}')
    except sources.DataError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main)
