#!/usr/bin/env bash
# The GPU check (issues 15, 20, 27): one command, from the source tree, at most 9 minutes.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, after benchmarks/gpu_wheels.sh here
#   bash benchmarks/gpu_check.sh --smoke          # the same code at toy sizes, on any machine (a CPU too)
#   bash benchmarks/gpu_check.sh --ensemble-only  # only the ensembles (issue 20): about a minute, no Ray
#
# Sections, in this order, each under its own time limit (and all under one 9-minute
# deadline: a section starts only with at least 20 s left, and gets at most what is left):
#   wheels   Ray and the packages the GPU machine lacks, from .gpu_wheels/ (below)
#   table    python -m benchmarks.gpu: steps (engine graphed against bare graphed, images/s
#            per option set), same (graphed = eager), scoring on the device, packing
#            -> gpu_check.json, packing.json
#   ray      python -m benchmarks.ray_gpu: `warmstart run --workers 1 --gpus-per-worker 1`
#            against the same trial in-process; a suite at --trials-per-gpu 1 and 4 -> ray.json
#   cluster  python -m benchmarks.cluster_scaling on 1, 2 and 4 worker nodes of 2 CPUs each
#            (local folder, no GPU) -> cluster.json
# After every section: summary.json (each section's status and seconds, each figure with
# its target) and the summary table; every section's output goes to gpu_check.log.  So a
# run cut short keeps what it measured.  $OUT defaults to ./gpu_check_out.
#
# The wheels, explicitly: if `import ray` works (a development machine with the project
# installed), nothing is installed.  Otherwise the wheels in $GPU_WHEELS (default
# .gpu_wheels, made by benchmarks/gpu_wheels.sh and carried to the GPU machine) are
# installed with `pip install --no-index --no-deps --target $GPU_SITE` (default a folder
# under /tmp), which goes on PYTHONPATH, and their requirements are checked against what
# the machine has.  With neither, the ray and cluster sections are skipped.
# Extra arguments go to `python -m benchmarks.gpu` (see its --help), e.g. --compile.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
OUT="${OUT:-$PWD/gpu_check_out}"
export OUT
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
smoke=()
only_ensemble=0
rest=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=(--smoke) ;;
    --ensemble-only) only_ensemble=1 ;;
    *) rest+=("$arg") ;;
  esac
done
# 9 minutes on the GPU machine; a smoke run on a busy CPU may take longer (GPU_CHECK_SECONDS)
began=$SECONDS
DEADLINE=$((began + ${GPU_CHECK_SECONDS:-$([ ${#smoke[@]} -gt 0 ] && echo 1800 || echo 540)}))
"$PY" - <<'PY' 2>&1 | tee "$LOG"
import os, platform, time, torch
cuda = torch.cuda.is_available()
print(f"gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python {platform.python_version()}, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {torch.cuda.get_device_name() if cuda else 'none'}, "
      f"{os.cpu_count()} CPUs")
PY

if [ "$only_ensemble" = 1 ]; then
  timeout 150 "$PY" -m benchmarks.ensemble --gpu --out "$OUT" "${smoke[@]}" 2>&1 | tee -a "$LOG"
  exit
fi

sections=()  # NAME:EXIT:SECONDS:LIMIT, for the summary
summary() { "$PY" -m benchmarks.gpu_summary --out "$OUT" "${sections[@]/#/--section=}" "$@" 2>&1 | tee -a "$LOG"; }
# section NAME LIMIT COMMAND...: run it under min(LIMIT, time left), its output into the log.
section() {
  local name=$1 limit=$2 left start code
  shift 2
  left=$((DEADLINE - SECONDS - 10))  # 10 s for the last summary
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, $((DEADLINE - SECONDS)) s left before the deadline" | tee -a "$LOG"
    sections+=("$name:skip:0:0")
    return
  fi
  echo "== $name (at most $limit s): $*" | tee -a "$LOG"
  start=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  code=${PIPESTATUS[0]}
  echo "== $name: exit $code after $((SECONDS - start)) s" | tee -a "$LOG"
  sections+=("$name:$code:$((SECONDS - start)):$limit")
  summary --quiet
}

export GPU_WHEELS="${GPU_WHEELS:-.gpu_wheels}" GPU_SITE="${GPU_SITE:-/tmp/gpu_site_$$}" PY
have_ray=0
# (a string for bash -c, so that `timeout` can run it; the requirements check only reports)
install_wheels='"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$GPU_SITE" "$GPU_WHEELS"/*.whl &&
  export PYTHONPATH="$GPU_SITE:$PYTHONPATH" && { "$PY" -m benchmarks.wheels requires "$GPU_WHEELS" --extras ray=tune,train;
  "$PY" -c "import ray, ray.tune, ray.train.torch; print(\"ray\", ray.__version__, \"imports\")"; }'
if "$PY" -c "import ray" 2>/dev/null; then
  echo "== wheels: ray $("$PY" -c 'import ray; print(ray.__version__)') is importable already: nothing installed" | tee -a "$LOG"
  have_ray=1
elif compgen -G "$GPU_WHEELS/*.whl" >/dev/null; then
  section wheels 90 bash -c "$install_wheels"
  export PYTHONPATH="$GPU_SITE:$PYTHONPATH"
  "$PY" -c "import ray" 2>/dev/null && have_ray=1
else
  echo "== wheels: no ray and no $GPU_WHEELS/*.whl (bash benchmarks/gpu_wheels.sh): ray and cluster are skipped" | tee -a "$LOG"
fi

if [ ${#smoke[@]} -gt 0 ]; then
  section table 300 "$PY" -m benchmarks.gpu --smoke --out "$OUT" --packs 1,2 "${rest[@]}"
else
  # the packing grid cut to 8 trials x 3 rounds at 1 and 4 at once, to fit the 9 minutes
  section table 200 "$PY" -m benchmarks.gpu --out "$OUT" --packs 1,4 --packing-trials 8 --packing-rounds 3 "${rest[@]}"
fi
if [ "$have_ray" = 1 ]; then
  if [ ${#smoke[@]} -gt 0 ]; then
    section ray 400 "$PY" -m benchmarks.ray_gpu --smoke --out "$OUT" --packs 1,2
    section cluster 300 "$PY" -m benchmarks.cluster_scaling --store local --nodes 1,2 --cpus-per-node 1 \
      --trials 2 --rounds 2 --out "$OUT/cluster.json"
  else
    section ray 180 "$PY" -m benchmarks.ray_gpu --out "$OUT" --packs 1,4
    section cluster 240 "$PY" -m benchmarks.cluster_scaling --store local --nodes 1,2,4 --cpus-per-node 2 \
      --dataset mnist1d --trials 16 --rounds 4 --initial 1000 --per-round 1000 --out "$OUT/cluster.json"
  fi
fi
summary
echo "gpu_check: $((SECONDS - began)) s in all; files in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
