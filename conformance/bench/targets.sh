#!/usr/bin/env bash
# Issue 18's figures in one run, each against its peer measured in the same run:
# issuance (direct and REST, 1 and 2 serving processes) against the raw sign rate, time
# stamps against the raw sign rate, OCSP hits against cfssl ocspserve, ACME against Pebble,
# and the HTTPS floor under an ACME request. Prints figures; judges nothing. ~12 minutes on
# 2 cores. Run it on a quiet machine: `uptime` before and after is printed with the rest.
#   bash conformance/bench/targets.sh [OUT_DIR]    (default: bench-targets-<date>)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench-targets-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
py=.venv/bin/python
cores=$(nproc)
run() {  # run NAME ARGS...: one bench, its output in $out/NAME.txt and its summary here
  local name=$1; shift
  echo "== $name: $*  ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$@" > "$out/$name.txt" 2>&1 || echo "   ($name exited $?)"
}
echo "git $(git rev-parse --short HEAD), $cores cores, results in $out/"
run issuance-w1 env VCC_PKI_WORKERS=1 $py -m conformance.bench.issuance \
  --only software-ec-p256/sqlite --rounds 2
run issuance-w$cores env VCC_PKI_WORKERS="$cores" $py -m conformance.bench.issuance \
  --only software-ec-p256/sqlite --rounds 2
run tsa $py -m conformance.bench.tsa --only software-ec-p256 --workers 1 "$cores" \
  --clients 16 --rounds 2
run ocsp $py -m conformance.bench.ocsp --only memory redis cfssl --workers 1 "$cores" \
  --connections 64 --rounds 2
run acme $py -m conformance.bench.acme --only sqlite sqlite-w2 pebble \
  --variants reuse-account --seconds 10 --rounds 2
run http-floor $py -m conformance.bench.http_floor --seconds 10 --rounds 2
echo "== done ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
for name in issuance-w1 "issuance-w$cores" tsa ocsp acme http-floor; do
  echo; echo "### $name"
  # Each bench ends with its summary table (and ratios); the per-round lines are in the file.
  awk '/^(Issuance benchmark|Time-stamping benchmark|OCSP benchmark|ACME benchmark|median:)/{p=1} p' \
    "$out/$name.txt"
done
