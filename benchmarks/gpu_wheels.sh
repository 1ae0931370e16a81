#!/usr/bin/env bash
# The wheels the GPU machine lacks (issue 27), for benchmarks/gpu_check.sh.  Run on a CPU
# machine with PyPI access, from anywhere in the source tree:
#
#   bash benchmarks/gpu_wheels.sh        # writes .gpu_wheels/ (ignored by git), about 48 MiB
#
# The GPU machines (Python 3.12, torch 2.11, no network) have pandas, pyarrow, requests,
# click, filelock, msgpack, packaging, protobuf, pyyaml, fsspec, attrs, typing-extensions,
# numpy, scipy, matplotlib, scikit-learn and torchvision (the device notes' package list),
# but not Ray nor these, which `ray[tune,train]` and warmstart need at import or run time:
#   ray 2.60.0                    the pin of pyproject.toml; repacked without ray/jars (31 MB
#                                 of Java workers, never used from Python), RECORD fixed
#   jsonschema (+ jsonschema-specifications, referencing, rpds-py): ray's own requirement
#   tensorboardX                  ray[tune,train]
#   pydantic (+ pydantic-core, annotated-types, typing-inspection): ray[tune,train]
#   mnist1d                       warmstart's mnist1d dataset
# Each is pinned, cp312 manylinux x86_64 (or pure Python), downloaded without its
# dependencies (--no-deps): the list above is the whole closure that is missing there.
# The files sent to the GPU machine (tracked and untracked files plus carried folders) must
# stay under 64 MiB: the script prints that sum and fails when it is over.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHEELS=.gpu_wheels                                        # carried to the GPU machine
DOWNLOADS="${GPU_WHEELS_DOWNLOADS:-/tmp/gpu_wheels_downloads}"  # the full Ray wheel stays here
LIMIT=$((64 * 1024 * 1024))
PINS=(
  ray==2.60.0
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0
  tensorboardX==2.6.5
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
  mnist1d==0.0.2.post1
)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)

mkdir -p "$DOWNLOADS"
for pin in "${PINS[@]}"; do
  python -m pip download -q --no-deps "${TARGET[@]}" -d "$DOWNLOADS" "$pin"
done

rm -rf "$WHEELS" && mkdir -p "$WHEELS"
for pin in "${PINS[@]}"; do
  name="${pin%%==*}" version="${pin##*==}"
  # wheel file names spell the project with underscores, in any case (tensorboardx, rpds_py)
  file=$(find "$DOWNLOADS" -maxdepth 1 -iname "${name//-/_}-${version}-*.whl" | head -1)
  [ -n "$file" ] || { echo "error: no wheel for $pin in $DOWNLOADS" >&2; exit 1; }
  if [ "$name" = ray ]; then
    python -m benchmarks.wheels strip "$file" "$WHEELS/$(basename "$file")" --drop ray/jars/
  else
    cp "$file" "$WHEELS/"
  fi
done
for wheel in "$WHEELS"/*.whl; do  # every member's CRC, then the RECORD's hashes and sizes
  python -m zipfile -t "$wheel" >/dev/null || { echo "error: $wheel is not a valid zip" >&2; exit 1; }
done
python -m benchmarks.wheels check "$WHEELS"/*.whl

# Install them as the GPU machine will (pip install --no-index --no-deps --target), for
# Python 3.12, into a scratch folder: pip accepts each wheel, ray/jars is gone, and the
# raylet binary kept its executable bit.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python -m pip install -q --no-index --no-deps --no-compile "${TARGET[@]}" --target "$scratch" "$WHEELS"/*.whl
[ ! -e "$scratch/ray/jars" ] || { echo "error: ray/jars is still in the installed Ray" >&2; exit 1; }
[ -x "$scratch/ray/core/src/ray/raylet/raylet" ] || { echo "error: the installed raylet is not executable" >&2; exit 1; }
echo "installed into a scratch --target for Python 3.12: $(ls "$scratch" | grep -c dist-info) distributions, no ray/jars"

# What travels: tracked files, untracked files git does not ignore, shared/ if any, the wheels.
tracked=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
shared=0
[ -d shared ] && shared=$(du -sb shared | cut -f1)
wheels=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
total=$((tracked + shared + wheels))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
ls -l "$WHEELS"
echo "wheels $(mib "$wheels") + tracked and untracked files $(mib "$tracked") + shared/ $(mib "$shared")" \
  "= $(mib "$total") (limit $(mib "$LIMIT"))"
if [ "$total" -ge "$LIMIT" ]; then
  echo "error: over the 64 MiB a GPU call may send" >&2
  exit 1
fi
echo "ok: carry $WHEELS to the GPU machine (run's carry: [\"$WHEELS\"])"
