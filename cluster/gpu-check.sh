#!/usr/bin/env bash
# The project's GPU checks in one run on one CUDA machine (a few minutes, no network):
#   1. `pytest -m gpu` (tests/test_lm_gpu.py: CUDA against CPU for every model family, no host
#      synchronisation inside a tile, attention outside cuDNN, the out-of-memory back-off, a Ray
#      actor pinned to the GPU);
#   2. beside it, optionally, the dense embedded-model store of a protocol (--store-protocol);
#   3. `python -m nncd_ray.bench.gpu` (speed, MFU, end to end through Ray, embedded k-NN).
#
#   usage (from the project root):  bash cluster/gpu-check.sh OUT_DIR [DATA_DIR] [--store-protocol NAME]
#
# DATA_DIR holds agnews/test.csv and gutenberg/*.txt (default ../shared/data). On an offline machine
# without Ray, zarr or constriction, build the bundle first where pip works
# (`bash ../shared/tools/gpu-bundle.sh`): when .gpu-bundle/ is here it is installed first. To run
# the transformers release tested here instead of the machine's, pack it beside the bundle:
#   pip download --no-deps -d /tmp/tf transformers==X.Y.Z && mkdir /tmp/tfx && cd /tmp/tfx \
#     && unzip -q /tmp/tf/transformers-*.whl && tar cf - . | xz -9 > $OLDPWD/.gpu-bundle/transformers.tar.xz
# Every step keeps its own time limit and its log under OUT_DIR, so one failing step loses no other.
set -uo pipefail
out=${1:?usage: gpu-check.sh OUT_DIR [DATA_DIR] [--store-protocol NAME]}
data=${2:-../shared/data}
store_protocol=""
[ "${3:-}" = "--store-protocol" ] && store_protocol=${4:?--store-protocol needs a protocol name}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .gpu-bundle ]; then
  # a transformers release of the project's own choosing, xz-packed (optional)
  if [ -f .gpu-bundle/transformers.tar.xz ]; then
    mkdir -p /tmp/nncd-site && xz -dc -T0 .gpu-bundle/transformers.tar.xz | tar xf - -C /tmp/nncd-site
  fi
  # shellcheck disable=SC1091
  source .gpu-bundle/gpu-install.sh .gpu-bundle
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"

store_pid=""
if [ -n "$store_protocol" ]; then
  # correctness work, not timed: it may share the GPU with the tests
  timeout 200 python3 -m nncd_ray.cli.main matrix --protocol "$store_protocol" \
    --data "$data/agnews/test.csv" --store "/tmp/$store_protocol-lm-gpu.zarr" --executor local \
    --device cuda --no-progress --json "$out/store.json" >"$out/store.log" 2>&1 &
  store_pid=$!
fi
timeout 200 python3 -m pytest -m gpu -p no:cacheprovider -q -rA --durations=8 tests/test_lm_gpu.py \
  >"$out/gpu-tests.log" 2>&1
echo "gpu tests: exit $?"
tail -4 "$out/gpu-tests.log"
if [ -n "$store_pid" ]; then
  wait "$store_pid"
  echo "store: exit $?"
  tail -2 "$out/store.log"
  tar czf "$out/store.tar.gz" -C /tmp "$store_protocol-lm-gpu.zarr"
fi
timeout 260 python3 -m nncd_ray.bench.gpu --data "$data/agnews/test.csv" \
  --gutenberg "$data/gutenberg" --out "$out/bench" >"$out/bench.log" 2>&1
echo "bench.gpu: exit $?"
tail -30 "$out/bench.log"
