"""Issue 12's miniature reproduction on the embedded pool: the arms behind docs/RESULTS.md.

  python launch/experiments.py --config=configs/experiments_mosaic.py --workdir=runs/exp
  python launch/experiments.py --config=configs/experiments_mosaic.py --workdir=runs/exp \\
      --report_only                                  # the report from the finished arms only
  python launch/experiments.py --config=configs/experiments_mosaic.py:tiny --workdir=/tmp/exp \\
      --report=/tmp/exp/RESULTS.md                   # seconds per arm on mosaic/small (the test)

Every arm is the pipeline of `pipeline` (configs/pipeline_mosaic.py, same variant) with a few
fields overridden (`overrides`: (dotted field of the pipeline config, value) pairs), run in
WORKDIR/<arm name>:
  kind 'pipeline'  the whole pipeline (SimSiam -> clustering -> SDR -> routing -> summary);
  kind 'simsiam'   its SimSiam stage and the SimSiam column of the summary (every task, the
                   same protocol) only.
`share_from` names an earlier arm whose finished stages (`shared`) this arm reuses (a symlink:
e.g. the ablations start from the seed-0 SimSiam run and clusters). `study` says which table of
the report an arm belongs to. Arms run in the order listed; a finished arm is skipped.

Variants: default (1 h 52 min on 2 CPU cores on 2026-11-27, in two processes with disjoint
--arms lists on one workdir; an arm that shares stages starts after the arm it shares them
from), `:tiny` (mosaic/small, for tests) and `:long` (the pipeline's `:long` size; each of
its pipeline arms is about 2 hours on 2 quiet CPU cores, so the whole set is about a day:
defined, not run here).
"""
import ml_collections

from sdr_jax.config_base import check_variant

# The pool's domains (sdr_jax.data.mosaic.DOMAIN_NAMES minus the task-only emoji_twitter),
# written out so that importing this config imports no data module.
POOL_DOMAINS = ("fashion", "mnist", "animal", "emoji", "clipart")
STUDIES = ("headline", "negative_transfer", "ablation")


def arm(name: str, study: str, kind: str = "pipeline", overrides=(), share_from: str = "",
        shared=(), note: str = "") -> ml_collections.ConfigDict:
    """`note`: what the arm changes, in a few words (the report's tables)."""
    return ml_collections.ConfigDict(dict(
        name=name, study=study, kind=kind, overrides=tuple(overrides), share_from=share_from,
        shared=tuple(shared), note=note))


def get_config(arg: str | None = None):
    arg = check_variant(arg, ("tiny", "long"))
    tiny = arg == "tiny"
    config = ml_collections.ConfigDict()
    config.pipeline = "configs/pipeline_mosaic.py" + (f":{arg}" if arg else "")
    config.data_dir = ""                  # '' = the pipeline's (TFDS's default)
    config.report = "docs/RESULTS.md"     # where the report goes (--report overrides it)
    config.plots = not tiny               # PNG plots next to the report
    # Hand-written discussion appended to the report ('' = none); the tables stay generated.
    config.notes = "" if tiny else "docs/RESULTS_notes.md"
    seeds = (0,) if tiny else (0, 1)
    sdr_file = "configs/sdr_mosaic.py" + (":tiny," if tiny else ":")
    # Ablations start from seed 0's SimSiam run and clusters (the baseline stage, cheap, is
    # redone: sharing it would make them wait for seed 0's routing).
    shared_start = ("simsiam", "cluster")
    arms = [arm(f"sdr_seed{seed}", "headline",
                overrides=(("simsiam.seed", seed), ("sdr.seed", seed),
                           ("cluster.cluster.seed", seed)))
            for seed in seeds]
    # Negative transfer: SimSiam on the whole pool and on each pool domain alone, the same
    # number of steps for every arm (half the headline's SimSiam, ~2.5 epochs of the pool and
    # 6-72 of one domain: 6 runs had to fit).
    steps = () if tiny else (("simsiam.train.num_steps", 1600 if arg != "long" else 16000),)
    arms.append(arm("simsiam_pool", "negative_transfer", kind="simsiam", overrides=steps))
    domains = ("mnist",) if tiny else POOL_DOMAINS
    arms += [arm(f"simsiam_{domain}", "negative_transfer", kind="simsiam",
                 overrides=steps + (("simsiam.data.domains", (domain,)),))
             for domain in domains]
    # The pipeline's SDR stage distils nothing (weight 0, chosen on routing validation); these
    # two arms put the sources' distillation back, SiamKD or L2, at weight 1.
    arms += [
        arm("ablation_siamkd", "ablation", overrides=(("sdr.sdr.kd_weight", 1.0),),
            share_from="sdr_seed0", shared=shared_start,
            note="SiamKD distillation, weight 1 (the sources' recipe)"),
        arm("ablation_kd_l2", "ablation",
            overrides=(("sdr.sdr.kd_weight", 1.0), ("sdr.sdr.kd", "l2")),
            share_from="sdr_seed0", shared=shared_start, note="L2 distillation, weight 1"),
        arm("ablation_no_progressive", "ablation",
            overrides=(("sdr.sdr.progressive", False),),
            share_from="sdr_seed0", shared=shared_start,
            note="progressive training off: every path from step 1"),
        # The SDR stage starts from SimSiam's weights, whose cosine schedule ended at lr 0, and
        # fine-tunes them at a quarter of the recipe's peak; this arm restarts at the peak.
        arm("ablation_sdr_lr_peak", "ablation", overrides=(("sdr.optim.base_lr", 0.2),),
            share_from="sdr_seed0", shared=shared_start,
            note="SDR restarts at the recipe's peak lr (0.05), not a quarter of it"),
        # The number of sub-nets: G groups in the last L stages (1 sub-net = SimSiam itself,
        # 16 = the headline arms). Own clusters (made for that tree), seed 0's SimSiam.
        arm("ablation_subnets4", "ablation",
            overrides=(("cluster.sdr_config", sdr_file + "2x2"), ("sdr.model.sdr.stages", (2, 3)),
                       ("sdr.model.sdr.num_paths", 4),
                       ("sdr.sdr.stage_fractions", (0.0, 0.5, 0.5))),
            share_from="sdr_seed0", shared=("simsiam",),
            note="G=2 groups x L=2 stages: 4 sub-nets"),
        arm("ablation_subnets64", "ablation",
            overrides=(("cluster.sdr_config", sdr_file + "4x3"),
                       ("sdr.model.sdr.num_groups", 4), ("sdr.model.sdr.stages", (1, 2, 3)),
                       ("sdr.model.sdr.num_paths", 64),
                       ("sdr.sdr.stage_fractions", (0.0, 1 / 3, 1 / 3, 1 / 3))),
            share_from="sdr_seed0", shared=("simsiam",),
            note="G=4 groups x L=3 stages: 64 sub-nets"),
    ]
    if tiny:  # one ablation exercises sharing; the rest only cost time in a test
        arms = [a for a in arms if a.study != "ablation" or a.name == "ablation_no_progressive"]
    config.arms = tuple(arms)
    # The reference of the ablations (same SimSiam, clusters and baseline).
    config.ablation_reference = "sdr_seed0"
    return config.lock()
