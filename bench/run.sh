#!/usr/bin/env bash
# loam benchmarks: build the workloads, run them against loam and the peer
# allocators, print a Markdown report (also bench/results/latest.md).
#
#   bash bench/run.sh [BUILD_DIR]        (make bench does this)
#
# BUILD_DIR is the main project's build tree (default: build). Its
# libloam-malloc.so is the "loam" column; when it is missing, that column is
# skipped with a note. The workloads are built in BUILD_DIR/bench when it is a
# configured tree of the project, else standalone in BUILD_DIR/bench-standalone.
#
# Environment:
#   BENCH_RUNS=5          runs per workload and allocator (median reported)
#   BENCH_SCALE=1         multiplies the iteration counts (2 = twice as long)
#   BENCH_ONLY=a,b        only these workloads (names: loam-bench --list;
#                         "callgrind" for the instruction counts)
#   BENCH_ALLOCATORS=a,b  only these of glibc,jemalloc,mimalloc,tcmalloc,loam
#   BENCH_CALLGRIND=0     skip the callgrind section
#   BENCH_SEED=N          seed of the random workloads
#   BENCH_TIMEOUT=S       seconds before one run counts as failed (120 x scale)
#   LOAM_MALLOC_LIB=path  the loam library to preload, instead of BUILD_DIR's
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${1:-build}
mkdir -p "$build"
build=$(cd "$build" && pwd)
jobs=$(nproc 2>/dev/null || echo 2)

say() { echo "bench: $*" >&2; }

# The source directory a build tree was configured from ("" if none).
tree_home() {
    local dir
    dir=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$1/CMakeCache.txt" 2>/dev/null) || true
    [ -n "$dir" ] && [ -d "$dir" ] && (cd "$dir" && pwd -P)
}
home=$(tree_home "$build" || true)
root_p=$(cd "$root" && pwd -P)
here_p=$(cd "$here" && pwd -P)
log="$build/bench-build.log"
: >"$log"

# ---- the workloads -----------------------------------------------------------
bin=""
if [ "$home" = "$root_p" ]; then
    # the project's own tree: build just the workloads there
    if cmake --build "$build" --target loam-bench -j "$jobs" >>"$log" 2>&1; then
        bin="$build/bench/loam-bench"
    else
        say "building loam-bench in $build failed (see $log); building it standalone"
    fi
elif [ "$home" = "$here_p" ]; then
    # a standalone tree of bench/ itself
    cmake --build "$build" -j "$jobs" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    bin="$build/loam-bench"
fi
if [ -z "$bin" ]; then
    sa="$build/bench-standalone"
    { cmake -S "$here" -B "$sa" -DCMAKE_BUILD_TYPE=Release &&
      cmake --build "$sa" -j "$jobs"; } >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
    bin="$sa/loam-bench"
fi
[ -x "$bin" ] || { say "no $bin after the build"; exit 1; }

# ---- loam's drop-in malloc ---------------------------------------------------
loam_note=""
if [ -n "${LOAM_MALLOC_LIB:-}" ]; then
    loam_lib=$LOAM_MALLOC_LIB
else
    loam_lib="$build/libloam-malloc.so"
    # in the project's tree, bring the library up to date first; a library
    # that no longer builds is not measured (it would be a stale one)
    if [ "$home" = "$root_p" ] &&
       ! cmake --build "$build" --target loam-malloc -j "$jobs" >>"$log" 2>&1; then
        loam_note="libloam-malloc.so does not build (see $log)"
        loam_lib=""
    fi
fi
if [ -n "$loam_lib" ] && [ ! -f "$loam_lib" ]; then
    loam_note="$loam_lib does not exist (build the project first)"
    loam_lib=""
fi

# ---- run ---------------------------------------------------------------------
command -v python3 >/dev/null || { say "python3 is needed"; exit 1; }
[ "${BENCH_CALLGRIND:-1}" = 0 ] || command -v valgrind >/dev/null ||
    say "valgrind not found: no callgrind section"
exec python3 "$here/runner.py" \
    --bin "$bin" \
    --loam-lib "$loam_lib" --loam-note "$loam_note" \
    --runs "${BENCH_RUNS:-5}" \
    --scale "${BENCH_SCALE:-1}" \
    --seed "${BENCH_SEED:-20240601}" \
    --only "${BENCH_ONLY:-}" \
    --allocators "${BENCH_ALLOCATORS:-}" \
    --callgrind "${BENCH_CALLGRIND:-1}" \
    --timeout "${BENCH_TIMEOUT:-0}" \
    --out "$here/results"
