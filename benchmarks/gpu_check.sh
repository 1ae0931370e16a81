#!/usr/bin/env bash
# The GPU check (issue 15): one command, from the source tree, no install, no Ray.
#
#   benchmarks/gpu_check.sh                  # on a machine with a CUDA GPU: about 6 minutes
#   benchmarks/gpu_check.sh --smoke          # the same code at toy sizes, on any machine
#   benchmarks/gpu_check.sh --ensemble-only  # only the ensembles section (issue 20): about a minute
#
# First the ensembles (python -m benchmarks.ensemble --gpu: resnet18 and the mlp stacked at
# 8, 32 and 128 members against one trial, images/s; $OUT/ensemble.json), then the rest.
#
# Writes $OUT/gpu_check.json (every figure), $OUT/packing.json (the packing table that
# `warmstart suite --trials-per-gpu auto` reads from $WARMSTART_PACKING or
# ~/.cache/warmstart/packing.json) and $OUT/gpu_check.log; $OUT defaults to ./gpu_check_out.
# Prints the tables last: step time (engine, bare eager, bare graphed, bare compiled),
# images/s per option set with the graph path, capture seconds, graphed = eager,
# scoring, packing.  Extra arguments go to `python -m benchmarks.gpu` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu_check_out}"
export OUT
mkdir -p "$OUT"
python - <<'PY'
import platform, torch
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU: {torch.cuda.get_device_name() if cuda else 'none'}")
PY
compile=(--compile)
smoke=()
only_ensemble=0
rest=()
for arg in "$@"; do
  case "$arg" in
    --smoke) compile=(); smoke=(--smoke); rest+=("$arg") ;;
    --ensemble-only) only_ensemble=1 ;;
    *) rest+=("$arg") ;;
  esac
done
timeout 150 python -m benchmarks.ensemble --gpu --out "$OUT" "${smoke[@]}" 2>&1 | tee "$OUT/ensemble.log"
[ "$only_ensemble" = 1 ] && exit 0
set -- "${rest[@]}"
# 470 s: the whole check stays under 8 minutes even if a section hangs; the JSON is
# rewritten after every section, so a cut-short run keeps what it measured.
timeout 470 python -m benchmarks.gpu --out "$OUT" "${compile[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
