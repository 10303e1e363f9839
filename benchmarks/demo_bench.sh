#!/usr/bin/env bash
# `make demo` end to end (after set-up), with the time of each stage; goal: under 3 minutes on a 2-core CPU.
# Usage: benchmarks/demo_bench.sh [OUT_DIR]   (run on an otherwise idle machine)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-$(mktemp -d)/demo_out}"
start=$(date +%s.%N)
.venv/bin/edit3dgs demo --out "$OUT" --overwrite 2> >(grep -E '^\[demo\]' >&2)
end=$(date +%s.%N)
python3 -c "import json,sys; m=json.load(open('$OUT/metrics.json')); print(json.dumps({'wall_s': round($end-$start,1), 'stages_s': m['timings_s'], 'passes': m['passes']}))"
