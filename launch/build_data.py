"""Builds the mosaic dataset or a folder dataset, prints its table and writes a grid of samples.

  python launch/build_data.py --dataset=mosaic --config=small --grid=runs/samples.png
  python launch/build_data.py --dataset=folder --source=DIR --name=NAME [--resize=keep]
  python launch/build_data.py --dataset=mosaic --export=DIR/mosaic_export.npz   # ~18 MB
  python launch/build_data.py --dataset=mosaic --manual_dir=DIR     # elsewhere: from the export

A folder dataset (sdr_jax/data/folder.py) holds every image under DIR as a pre-training pool
(`--config.data.dataset=NAME`) and, for a DIR/{train,test[,val]}/<class>/ layout, the task NAME
(`launch/route.py --task=NAME`). Its grid goes to --grid or <data_dir>/NAME/samples.png.
"""
from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

flags.DEFINE_string('dataset', 'mosaic', 'mosaic, mosaic/<config>, or folder (with --source '
                    'and --name).')
flags.DEFINE_string('config', None, 'Builder config (default|small); default: from --dataset.')
flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: ~/tensorflow_datasets).')
flags.DEFINE_string('manual_dir', None, 'Read every source from this tree (tests, fixtures).')
flags.DEFINE_string('export', None, 'mosaic: write the source images the config uses to this '
                    'file (a compact export; a --manual_dir holding it as mosaic_export.npz '
                    'builds the same dataset on a machine without the sources) and stop.')
flags.DEFINE_string('grid', None, 'Write a PNG grid of samples, one row per domain (mosaic) '
                    'or class / folder (folder), here.')
flags.DEFINE_integer('grid_columns', 12, 'Samples per row in the grid.')
flags.DEFINE_string('source', None, 'folder: the directory of images (only read).')
flags.DEFINE_string('name', None, 'folder: the dataset (and task) name.')
flags.DEFINE_enum('resize', 'crop', ['crop', 'keep'], 'folder: crop = shorter side to '
                  '--image_size then the centre square; keep = original sizes.')
flags.DEFINE_integer('image_size', 64, 'folder: the side of the stored images with --resize=crop.')
flags.DEFINE_bool('strict', False, 'folder: refuse unreadable image files instead of skipping '
                  'them.')
flags.DEFINE_bool('overwrite', False, 'folder: replace an existing folder dataset of that name.')
FLAGS = flags.FLAGS
FOLDER = 'folder'


def format_table(rows) -> str:
    lines = [f'{"domain":<14}{"classes":>8}{"pool":>8}{"train":>8}{"test":>8}']
    lines += [f'{r.domain:<14}{r.num_classes:>8}{r.pool:>8}{r.train:>8}{r.test:>8}' for r in rows]
    lines.append(f'{"total":<14}{"":>8}{sum(r.pool for r in rows):>8}'
                 f'{sum(r.train for r in rows):>8}{sum(r.test for r in rows):>8}')
    return '\n'.join(lines)


def mosaic_sample_rows(builder, columns: int):
    """One row per domain (its task-train split), each image titled with its class."""
    from sdr_jax.data import mosaic

    class_names = builder.info.metadata['class_names']
    rows = []
    for domain in mosaic.DOMAINS:
        source = builder.as_data_source(split=mosaic.train_split(domain.name))
        examples = [source[i] for i in range(min(columns, len(source)))]
        rows.append((domain.name, [(e['image'], class_names[domain.name][e['label']][:12])
                                   for e in examples]))
    return rows


def save_sample_grid(rows, path: str, columns: int) -> None:
    """rows: [(row name, [(image, title), ...])], drawn one row each."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), columns, squeeze=False,
                             figsize=(columns * 0.9, len(rows) * 1.05))
    for (name, samples), row_axes in zip(rows, axes):
        for column, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(samples):
                image, title = samples[column]
                ax.imshow(image)
                ax.set_title(title, fontsize=5)
            elif column:
                ax.axis('off')  # a short row
        row_axes[0].set_ylabel(name[:14], fontsize=7)
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
        if dataset == FOLDER:
            build_folder()
            return
        if dataset != datasets.MOSAIC:
            raise datasets.UnknownDatasetError(
                f'only {datasets.MOSAIC} and {FOLDER} can be built offline; prepare {dataset!r} '
                f'with `tfds build {dataset} --file_format=array_record` on a machine with '
                'internet.')
        if FLAGS.export:
            write_export(FLAGS.config or config or 'default')
            return
        builder = datasets.prepare_mosaic(FLAGS.data_dir, FLAGS.config or config or 'default',
                                          FLAGS.manual_dir)
        print(format_table(datasets.mosaic_sizes(builder)))
        if FLAGS.grid:
            save_sample_grid(mosaic_sample_rows(builder, FLAGS.grid_columns), FLAGS.grid,
                             FLAGS.grid_columns)
            print(f'sample grid: {FLAGS.grid}')
    except sources.DataError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(1)


def write_export(config_name: str) -> None:
    from sdr_jax.data import datasets, mosaic, mosaic_export

    builder = datasets.mosaic_builder(FLAGS.data_dir, config_name)
    kept = mosaic.export(FLAGS.export, builder.builder_config, FLAGS.manual_dir)
    print(f'{FLAGS.export}: {pathlib.Path(FLAGS.export).stat().st_size / 2**20:.1f} MiB, '
          + ', '.join(f'{name} {count}' for name, count in kept.items())
          + ' images; build from it with --manual_dir=<a directory holding it as '
          f'{mosaic_export.FILE_NAME}>')


def build_folder() -> None:
    from sdr_jax.data import folder, sources

    if not FLAGS.source or not FLAGS.name:
        raise sources.DataError(f'--dataset={FOLDER} needs --source=DIR and --name=NAME.')
    report = folder.build(FLAGS.source, FLAGS.name, FLAGS.data_dir, resize=FLAGS.resize,
                          image_size=FLAGS.image_size, strict=FLAGS.strict,
                          overwrite=FLAGS.overwrite)
    print(folder.format_report(report))
    grid = FLAGS.grid or str(report.directory.parent / 'samples.png')
    save_sample_grid(folder.sample_rows(report.builder(), FLAGS.grid_columns), grid,
                     FLAGS.grid_columns)
    print(f'sample grid: {grid}')


if __name__ == '__main__':
    app.run(main)
