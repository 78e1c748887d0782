#!/usr/bin/env bash
# One lent-GPU session's measurements (../shared/docs/DEVICE.md has the recipe), run on the
# device machine from the repository root with `carry: [".whl", ".data"]`:
#   .whl/   the wheels the GPU image lacks (~11 MB), for Python 3.12 (DEVICE.md's command):
#           tensorflow-datasets==4.9.10 array_record==0.8.6 grain==0.2.18 ml-collections==1.1.0
#           clu==0.0.12 dm-tree immutabledict simple_parsing tensorflow-metadata termcolor toml
#           docstring-parser googleapis-common-protos portpicker importlib_resources zipp
#           pytest pluggy iniconfig, and promise (`pip wheel --no-deps promise`). TFDS's builder
#           needs importlib_resources; the `numerics` section needs pytest.
#   .data/  mosaic_export.npz (`python launch/build_data.py --export=.data/mosaic_export.npz`,
#           ~17 MB): the `data` section builds the default mosaic dataset from it there.
#
#   SECTIONS="data sdr_step clustering routing long" DEADLINE=580 bash bench/gpu_session.sh
#   (also: routing_noautotune, numerics)
#
# Each section runs under a cap (never past DEADLINE seconds from the start) and appends its
# output to $OUT/log.txt; the `long` section is issue 12's `pipeline_mosaic.py:long` in
# runs/long (resumable: a second call on the same warm machine continues it) and copies its
# summary and timings to $OUT. Dry run on a CPU: SCALE=cpu OUT=/tmp/out bash bench/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-580}
SECTIONS=${SECTIONS:-"data sdr_step clustering routing long"}
SCALE=${SCALE:-full}
LOG=$OUT/log.txt
if [ -d .whl ] && [ "$SCALE" = full ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache

# run NAME CAP_SECONDS COMMAND...: under min(CAP, time left), output to $LOG.
run() {
  local name=$1 cap=$2 left=$((DEADLINE - SECONDS))
  shift 2
  ((left < cap)) && cap=$left
  if ((cap < 10)); then echo "== $name: skipped, ${left}s left" | tee -a "$LOG"; return; fi
  echo "== $name (cap ${cap}s, at ${SECONDS}s): $*" | tee -a "$LOG"
  timeout "$cap" "$@" >>"$LOG" 2>&1
  echo "== $name: exit $? at ${SECONDS}s" | tee -a "$LOG"
}

{ nvidia-smi -L 2>/dev/null; python3 -c "import jax, flax; print('jax', jax.__version__,
  'flax', flax.__version__, jax.devices())"; } >>"$LOG" 2>&1
if [ "$SCALE" = full ]; then
  SDR_STEP=(--arch=resnet50 --width=1 --image_size=224 --stem=imagenet --dtype=bfloat16
            --batch=256 --paths=2 --subnet_batch=128 --proj_dim=2048 --pred_dim=512
            --rows=4x4-masked,4x4-compact --repeats=5)
  CLUSTER=(--num_examples=1000000)
  ROUTE=(--width=1 --batch=256)
  LONG=configs/pipeline_mosaic.py:long
  WORKERS=14
  PLATFORM=cuda
else
  SDR_STEP=(--width=0.125 --batch=16 --subnet_batch=8 --rows=4x4-compact --repeats=1)
  CLUSTER=(--num_examples=20000)
  ROUTE=(--arch=tiny --batch=8 --repeats=1)
  LONG=configs/pipeline_mosaic.py:tiny
  WORKERS=0
  PLATFORM=cpu
fi
for section in $SECTIONS; do
  case $section in
    data) run data 150 python3 launch/build_data.py --dataset=mosaic --manual_dir=.data ;;
    sdr_step) run sdr_step 360 python3 bench/sdr_step.py "${SDR_STEP[@]}" ;;
    clustering) run clustering 100 python3 bench/clustering.py "${CLUSTER[@]}" \
                  --methods=sdr_stream_argmax,sdr_device_argmax,sdr_device_balanced ;;
    routing) run routing 150 python3 bench/routing.py "${ROUTE[@]}" ;;
    # Is the tree's 25 s GPU compile (2026-11-26) XLA's conv autotuning at the levels' large
    # vmapped batches (up to 256 nodes x 256 images)? The same run without autotuning:
    routing_noautotune) XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
                          run routing_noautotune 150 python3 bench/routing.py "${ROUTE[@]}" ;;
    # Issue 15: the suite's numerical tests (equalities at stated tolerances) on the GPU, one
    # device (the 8-device tests need --xla_force_host_platform_device_count: they will fail
    # there for want of devices, not of precision: 7 on a 1-device CPU dry run, 66 passed).
    # Needs pytest, pluggy, iniconfig in .whl/.
    numerics) JAX_PLATFORMS=$PLATFORM XLA_FLAGS= run numerics 300 python3 -m pytest -q -rf \
                -m "not slow" tests/test_sdrnet.py tests/test_compact.py tests/test_resnet.py \
                tests/test_sinkhorn.py tests/test_losses.py tests/test_photometric.py \
                tests/test_route.py ;;
    # Grain workers give the same batches as none (tests/test_input_pipeline.py). Measured on
    # the H200 (2026-11-26): with no worker the host input held SimSiam to ~20 steps/s, with 8
    # to ~80 (16000 steps in 246 s); the SDR step (192 images) ran at 25-34 steps/s, also
    # input-bound, and compact sub-nets recompiled at each progressive stage (~65 s each; the
    # pipeline config now runs them masked: one compile). Hence 14 workers here.
    long) run long 100000 python3 launch/pipeline.py --config=$LONG --workdir=runs/long \
            --config.simsiam.data.num_workers=$WORKERS --config.sdr.data.num_workers=$WORKERS
          cp runs/long/summary.txt runs/long/summary.json runs/long/timings.json "$OUT"/ \
            2>/dev/null
          # The run's records (metrics, configs, route, clusters) and each stage's newest
          # checkpoint, so that an unfinished run can be evaluated or resumed elsewhere.
          latest=$(for stage in simsiam sdr; do
                     ls -d runs/long/$stage/checkpoints/[0-9]* 2>/dev/null | sort -V | tail -1
                   done | sed 's|^runs/||')
          tar cf /tmp/long_run.tar --exclude=features --exclude=best_subnet \
            --exclude='checkpoints/[0-9]*' -C runs long \
            && tar rf /tmp/long_run.tar -C runs $latest && gzip -c /tmp/long_run.tar \
            >"$OUT"/long_run.tgz ;;
    *) echo "unknown section $section" | tee -a "$LOG" ;;
  esac
done
echo "== done at ${SECONDS}s" | tee -a "$LOG"
