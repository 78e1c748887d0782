"""The whole SDR pipeline on the embedded pool (sdr_jax/jobs/pipeline.py), sized for a 2-core CPU.

  python launch/pipeline.py --config=configs/pipeline_mosaic.py --workdir=runs/pipeline
  python launch/pipeline.py --config=configs/pipeline_mosaic.py:tiny --workdir=/tmp/pipeline
  python launch/pipeline.py --config=configs/pipeline_mosaic.py --config.method=byol ...

One sub-config per stage, each the stage's own config file (override any field, e.g.
--config.sdr.train.num_steps=600 or --config.route.bn=running); the pipeline wires the stages
together (cluster.pretrain_workdir, sdr.sdr.assignments, sdr.sdr.init_from), so leave those
empty. `data_dir`, when set, is the TFDS data_dir of every stage. SimSiam and the SDRnet share the model size
(ResNet-18 x0.25, 16x16): the SimSiam run is the baseline of the summary table.

Default sizes (13 min 1 s measured on 2 quiet CPU cores, README): SimSiam 3200 steps of 64 images
at 16x16 (~5 epochs of the 40.7k pool), clustering into the 16 leaves of G=2 x L=4, SDR 300 steps
of 64 images for the SDRnet + 4 paths x 32 for the sub-nets, starting from the SimSiam weights
(`sdr_from_simsiam`: stage 0 gets no steps, stages 1-4 a quarter each, at a quarter of the
recipe's lr, no SiamKD term, sub-nets masked: one compile; with
`--config.sdr_from_simsiam=False` also pass `--config.sdr.sdr.stage_fractions="()"
--config.sdr.optim.base_lr=0.2`), routing
of the 16 paths on the 6 tasks, each path selected on 250 held-out train images with 1000
memory images and scored on all the task's test images (up to 1000; BN recalibrated on 512).
The trainers' own end-of-run kNN is off: the summary table is the evaluation. `:tiny` runs the
whole chain in about a minute on `mosaic/small` (two tasks). `:long` (issue 12's "<= 3 hours on
2 CPU cores"): SimSiam 16000 steps (~25 epochs; ~37 min on 2 quiet CPU cores, 246 s on an H200
with 8 grain workers), SDR 3000 steps (1367 s on 2 CPU cores; on the H200 input-bound at 25-34
steps/s), the same routing (112 s). Run to the end on 2 CPU cores on 2026-11-27: about 62 min of
quiet-machine time, SimSiam kNN 68.8 vs pixels 71.8 (README, "The `:long` size").
"""
import ml_collections

from sdr_jax.config_base import MOSAIC_TASKS, check_variant, load_config_file


def get_config(arg: str | None = None):
    arg = check_variant(arg, ("tiny", "long"))
    variant = ":tiny" if arg == "tiny" else ""
    config = ml_collections.ConfigDict()
    config.data_dir = ""                   # '' = every stage's own (TFDS's default)
    config.method = "simsiam"              # the SSL method of pre-training and SDR (e.g. byol)
    config.tasks = MOSAIC_TASKS            # routed and compared in the summary
    # The SDRnet starts from the SimSiam run's weights (sdr.init_from): stage 0 of progressive
    # training is SimSiam on the pool, so the SDR stage spends its steps on the sub-nets.
    config.sdr_from_simsiam = True
    config.simsiam = load_config_file("configs/simsiam_mosaic.py" + variant)
    sdr_spec = "configs/sdr_mosaic.py" + variant
    config.sdr = load_config_file(sdr_spec)
    config.cluster = load_config_file("configs/cluster_mosaic.py" + variant)
    config.cluster.sdr_config = sdr_spec  # the clusters are made for this SDRnet
    config.route = load_config_file("configs/route.py" + variant)
    if variant:
        config.tasks = ("mnist", "emoji_twitter")  # one pool domain, the task-only domain
    for stage in (config.simsiam, config.sdr):
        stage.eval.knn_tasks = ()          # the summary's table is the kNN evaluation
    if config.sdr_from_simsiam:            # stage 0 (the SDRnet alone) is the SimSiam run
        config.sdr.sdr.stage_fractions = (0.0, 0.25, 0.25, 0.25, 0.25)
        # SimSiam's cosine schedule ended at lr 0: the SDR stage fine-tunes its weights at a
        # quarter of the recipe's peak rather than restarting at the peak. Chosen on routing
        # validation (docs/RESULTS.md, the `ablation_sdr_lr_peak` arm: the restart).
        config.sdr.optim.base_lr = config.simsiam.optim.base_lr / 4
        # No SiamKD term here: every distillation weight tried (1, 0.3, 0.1) lowered the routed
        # paths' validation kNN against none, on both seeds (1 vs 0: 61.8 vs 63.4, mean of two);
        # docs/RESULTS.md, "Where the SDR stage loses the features". `--config.sdr.sdr.kd_weight=1`
        # restores the sources' recipe.
        config.sdr.sdr.kd_weight = 0.0
    # Masked sub-nets: one compile for the whole SDR stage. Compact ones run ~10% faster a step
    # here but compile once per progressive stage (~45 s each on 2 CPU cores, ~65 s on an
    # H200): the default's SDR stage took 368 s compact vs 239 s masked (2026-11-26, same
    # machine, one after the other), the same computation (tests/test_compact.py).
    config.sdr.sdr.subnet_exec = "masked"
    if not variant:
        for stage in (config.simsiam, config.sdr):
            stage.train.knn_every = 0
            stage.train.checkpoint_every = 200
        # 64 images a step: ~5 epochs of the pool. Chosen on held-out train queries over three
        # seeds (docs/LEARNING.md): 3200 steps gave +1.8 / +1.6 / +1.8 mean kNN over 1600.
        config.simsiam.train.num_steps = 3200
        config.sdr.train.num_steps = 300       # 64 D0 images + 4 paths x 32 a step
        config.route.max_train = 1250    # 250 routing-validation + 1000 memory images
        config.route.max_test = 0        # every test image (up to 1000 per task): less noise
        config.route.bn_recal_images = 512
    if arg == "long":
        config.simsiam.train.num_steps = 16000  # ~25 epochs of the pool
        config.sdr.train.num_steps = 3000
        for stage in (config.simsiam, config.sdr):
            stage.train.checkpoint_every = 1000
    return config.lock()
