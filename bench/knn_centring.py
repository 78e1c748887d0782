"""Does centring the features change the kNN protocol's verdict? Raw vs memory-centred features.

The protocol (`sdr_jax/eval/protocol.py`) centres raw pixels on the memory mean before the cosine
kNN (uncentred pixels are dominated by brightness) but not network features. Pooled features
after a ReLU are all non-negative, so they share a large common component too. This script
scores a trained run, the random-init network and raw pixels both ways on the routing
protocol's split (same memory, k, T, BN recalibration), so the asymmetry can be judged on the
**routing-validation** queries; the test column is printed for the record, not to choose.

  python bench/knn_centring.py --workdir=runs/exp/sdr_seed0/simsiam    # the demo's protocol

The protocol's settings (split sizes, BN recalibration) are the `route` part of `--pipeline`
(default: the demo's, 1000 memory + 250 validation images per task); `--pipeline=''` takes
configs/route.py's own (all train images).
"""
import argparse

import numpy as np

from sdr_jax.config_base import MOSAIC_TASKS, load_config_file
from sdr_jax.core import mesh as mesh_lib
from sdr_jax.eval import protocol
from sdr_jax.models import build_model, path_spec
from sdr_jax.train import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a SimSiam run (or an SDR run: the SDRnet)")
    parser.add_argument("--tasks", default=",".join(MOSAIC_TASKS))
    parser.add_argument("--pipeline", default="configs/pipeline_mosaic.py")
    args = parser.parse_args()

    config = (load_config_file(args.pipeline).route if args.pipeline
              else load_config_file("configs/route.py"))
    run_config, variables, _ = checkpoint.load_run(args.workdir)
    model = build_model(run_config.model)
    path = path_spec(run_config.model).full_path()
    rows = {name: {} for name in ("trained", "random init", "pixels")}
    for task in args.tasks.split(","):
        ev = protocol.Evaluation(config, task, data_dir=run_config.data.data_dir or None,
                                 pool_dataset=run_config.data.dataset,
                                 image_size=run_config.data.image_size,
                                 mesh=mesh_lib.make_data_mesh())
        init = protocol.random_init_variables(model, path, ev.image_size, config.random_init_seed)
        feats = {"trained": ev.network_features(model, variables, path),
                 "random init": ev.network_features(model, init, path),
                 "pixels": ev.features(lambda x: x.reshape(x.shape[0], -1))}
        for name, (train_x, test_x) in feats.items():
            centred = protocol.centre_on_memory(train_x, test_x, ev.data.split)
            rows[name][task] = {
                "raw": protocol.knn_scores(train_x, test_x, ev.data, config),
                "centred": protocol.knn_scores(*centred, ev.data, config)}
        print(f"{task}: done", flush=True)

    tasks = args.tasks.split(",")
    for split in ("validation", "test"):
        print(f"\nkNN accuracy (%) on the {split} queries"
              + (" (for the record: not used to choose)" if split == "test" else ""))
        print(f"{'features':24s} " + " ".join(f"{t[:13]:>13s}" for t in tasks) + "    mean")
        for name, per_task in rows.items():
            for how in ("raw", "centred"):
                accs = [100 * per_task[t][how][split]["accuracy"] for t in tasks]
                print(f"{name + ', ' + how:24s} " + " ".join(f"{a:13.1f}" for a in accs)
                      + f"  {np.mean(accs):6.2f}")


if __name__ == "__main__":
    main()
