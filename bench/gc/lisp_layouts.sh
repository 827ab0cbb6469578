#!/usr/bin/env bash
# The Lisp example against Boehm over 8 code layouts, for judging a change
# of loam by the Lisp's time.
#
#   bash bench/gc/lisp_layouts.sh [BUILD_DIR] [ROUNDS]     (defaults: build, 3)
#
# Why: where a hot loop of the interpreter falls in its cache line moves
# either build's time by up to 11 % (docs/benchmarks.md, 2026-11-28), and a
# change anywhere in the binary can move it. The same objects are linked
# behind a pad of 0, 16, ... 112 bytes (bench/CMakeLists.txt, target
# lisp-layouts), on loam and on Boehm; each round runs every layout once,
# loam generational, loam without the flag and Boehm interleaved. The report
# gives each layout's medians and the medians over layouts, the figures to
# quote. Wall time of the whole run (start-up included), as the table in
# docs/benchmarks.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
rounds=${2:-3}
script=${BENCH_LISP_SCRIPT:-$root/examples/lisp/demo.lisp}
pads="0 16 32 48 64 80 96 112"

if ! cmake --build "$build" --target lisp-layouts -j "$(nproc 2>/dev/null || echo 2)" >/dev/null; then
    echo "lisp_layouts: target lisp-layouts does not build in $build" \
         "(it needs libgc-dev, and a build without LOAM_SANITIZE)" >&2
    exit 1
fi

# One timed run: "<pad> <variant> <milliseconds>" on stdout.
timed() {
    local pad=$1 variant=$2 exe=$3; shift 3
    local t0 t1
    t0=$(date +%s%N)
    if ! "$exe" "$@" "$script" >/dev/null 2>&1; then
        echo "lisp_layouts: $exe $* $script failed" >&2
        exit 1
    fi
    t1=$(date +%s%N)
    echo "$pad $variant $(( (t1 - t0) / 1000 ))"
}

for ((r = 1; r <= rounds; r++)); do
    for pad in $pads; do
        timed "$pad" loam-gen "$build/bench/loam-lisp-layout-$pad" --generational
        timed "$pad" loam "$build/bench/loam-lisp-layout-$pad"
        timed "$pad" boehm "$build/bench/loam-lisp-boehm-layout-$pad"
    done
done | python3 -c '
import sys, statistics as st, collections
runs = collections.defaultdict(list)
for line in sys.stdin:
    pad, variant, us = line.split()
    runs[(int(pad), variant)].append(int(us) / 1000)
pads = sorted({p for p, _ in runs})
variants = ["loam-gen", "loam", "boehm"]
med = {v: [st.median(runs[(p, v)]) for p in pads] for v in variants}
print("| pad (bytes) | loam, generational (ms) | loam (ms) | Boehm (ms) | generational / Boehm | loam / Boehm |")
print("|---|---|---|---|---|---|")
for i, p in enumerate(pads):
    g, l, b = (med[v][i] for v in variants)
    print("| %d | %.1f | %.1f | %.1f | x%.3f | x%.3f |" % (p, g, l, b, g / b, l / b))
over = {v: st.median(med[v]) for v in variants}
ratio_g = st.median([g / b for g, b in zip(med["loam-gen"], med["boehm"])])
ratio_l = st.median([l / b for l, b in zip(med["loam"], med["boehm"])])
print("| median over layouts | %.1f | %.1f | %.1f | x%.3f | x%.3f |"
      % (over["loam-gen"], over["loam"], over["boehm"], ratio_g, ratio_l))
print()
print("%d layouts, %s runs each; ranges: generational %.1f-%.1f ms, loam %.1f-%.1f ms, Boehm %.1f-%.1f ms"
      % (len(pads), "/".join(str(len(runs[(pads[0], v)])) for v in variants),
         min(med["loam-gen"]), max(med["loam-gen"]), min(med["loam"]), max(med["loam"]),
         min(med["boehm"]), max(med["boehm"])))
'
