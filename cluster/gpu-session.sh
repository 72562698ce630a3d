#!/usr/bin/env bash
# One GPU session's measurements in one call, within a deadline: cluster/gpu-check.sh (the `gpu`
# tests and `python -m nncd_ray.bench.gpu`), `python -m nncd_ray.bench.prefix_attention` (a
# continuation pass's attention, gathered against read in place), then
# `python -m nncd_ray.bench.gpu_profile` (token budgets, torch's attention kernels against the
# scorer's, the head's matmul, kernel families; PASS_SECONDS, default none, to calibrate the
# planner's pass cost) in the time left. Each writes its results as it goes, so a deadline
# that cuts the profile short keeps what it measured.
#
#   usage (from the project root):  bash cluster/gpu-session.sh OUT_DIR [DATA_DIR] [DEADLINE_S]
#
# DATA_DIR holds agnews/test.csv and gutenberg/*.txt (default ../shared/data); DEADLINE_S
# (default 540) is when the profile must be done, counted from the start.
set -uo pipefail
out=${1:?usage: gpu-session.sh OUT_DIR [DATA_DIR] [DEADLINE_S]}
data=${2:-../shared/data}
deadline=${3:-540}
mkdir -p "$out/check" "$out/profile"
bash cluster/gpu-check.sh "$out/check" "$data"
echo "gpu-check done at ${SECONDS}s"
left=$((deadline - SECONDS - 20))
if [ "$left" -lt 60 ]; then
  echo "no time left for bench.gpu_profile (${left}s)"
  exit 0
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .gpu-bundle ]; then
  # gpu-check.sh installed the bundle into /tmp/nncd-site (as gpu-install.sh does): on the path
  # again, without installing it a second time
  export PYTHONPATH="/tmp/nncd-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
timeout 90 python3 -m nncd_ray.bench.prefix_attention --out "$out/profile" \
  >"$out/profile/prefix_attention.log" 2>&1
echo "bench.prefix_attention: exit $? at ${SECONDS}s"
tail -25 "$out/profile/prefix_attention.log"
left=$((deadline - SECONDS - 20))
if [ "$left" -lt 60 ]; then
  echo "no time left for bench.gpu_profile (${left}s)"
  exit 0
fi
timeout "$left" python3 -m nncd_ray.bench.gpu_profile --data "$data/agnews/test.csv" \
  --gutenberg "$data/gutenberg" --out "$out/profile" --budgets 65536 \
  --pass-seconds "${PASS_SECONDS:-}" \
  >"$out/profile/profile.log" 2>&1
echo "bench.gpu_profile: exit $? at ${SECONDS}s (limit ${left}s)"
tail -30 "$out/profile/profile.log"
