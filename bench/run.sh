#!/usr/bin/env bash
# loam benchmarks: build the workloads, run them against loam and the peer
# allocators, time real programs (python3, sqlite3, sort) under each of them,
# and the collector workloads (bench/gc) on loam's collected heap,
# Boehm's collector and malloc/free; print a Markdown report (also
# bench/results/latest.md).
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
#                         "callgrind" for the instruction counts; "programs"
#                         for the real programs, or py-alloc,py-threads,sqlite3,sort)
#   BENCH_ALLOCATORS=a,b  only these of glibc,jemalloc,mimalloc,tcmalloc,loam
#   BENCH_CALLGRIND=0     skip the callgrind section
#   BENCH_SEED=N          seed of the random workloads
#   BENCH_TIMEOUT=S       seconds before one run counts as failed (120 x scale)
#   LOAM_MALLOC_LIB=path  the loam library to preload, instead of BUILD_DIR's
#   BENCH_PROGRAMS=0      skip the "Real programs" section (bench/programs.py)
#   BENCH_PROGRAMS_SCALE=1  multiplies those programs' input sizes (0.1 to try it out)
#   BENCH_GC=0            skip the "Collected heap" section (bench/gc)
#   BENCH_GC_COLUMNS=a,b  its columns, of loam,loam-cons,loam-gen,loam-precise,boehm,mimalloc
#                         (default loam,loam-cons,loam-gen,boehm,mimalloc)
#   BENCH_GC_DEPTH=N      depth of the bigger binary-trees run (default 19)
#   BENCH_LISP=path       the Lisp example's executable (default: found in BUILD_DIR)
#   BENCH_LISP_SCRIPT=f   the program it runs (default examples/lisp/demo.lisp)
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

# ---- the collector benchmarks (bench/gc) ----------------------------------------
# loam-gcbench-{loam,loam-precise,boehm,malloc}: each built on its own, so one that does not
# build (no libgc-dev; a collector that does not link) only loses its column.
# In the project's tree they are built there (the loam one links the project's
# loam_static); elsewhere, or if that fails, standalone (no loam variant).
gc_args=()
if [ "${BENCH_GC:-1}" != 0 ]; then
    sa="$build/bench-standalone"
    sa_ready=""
    if [ "$home" = "$here_p" ]; then sa="$build"; sa_ready=1; fi
    for v in malloc boehm loam loam-precise; do
        exe=""
        if [ "$home" = "$root_p" ] &&
           cmake --build "$build" --target "loam-gcbench-$v" -j "$jobs" >>"$log" 2>&1; then
            exe="$build/bench/loam-gcbench-$v"
        elif [ "${v#loam}" = "$v" ]; then
            if [ -z "$sa_ready" ] &&
               cmake -S "$here" -B "$sa" -DCMAKE_BUILD_TYPE=Release >>"$log" 2>&1; then
                sa_ready=1
            fi
            if [ -n "$sa_ready" ] &&
               cmake --build "$sa" --target "loam-gcbench-$v" -j "$jobs" >>"$log" 2>&1; then
                exe="$sa/loam-gcbench-$v"
            fi
        fi
        if [ -n "$exe" ] && [ -x "$exe" ]; then
            gc_args+=(--gc-bin-$v "$exe")
        elif [ "${v#loam}" != "$v" ] && [ "$home" != "$root_p" ]; then
            gc_args+=(--gc-note "loam=needs the project's build tree (BUILD_DIR is not one)")
        elif [ "$v" = boehm ] && [ ! -e /usr/include/gc.h ]; then
            gc_args+=(--gc-note "boehm=no /usr/include/gc.h (apt-get install libgc-dev)")
        else
            gc_args+=(--gc-note "$v=loam-gcbench-$v does not build (see $log)")
        fi
    done
    if [ "$home" = "$root_p" ]; then
        bt=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")
        gc_args+=(--gc-loam-build "CMAKE_BUILD_TYPE=${bt:-none}")
    fi
    # the Lisp example (examples/lisp): on loam, and on Boehm through the
    # shim bench/gc/lisp_on_boehm.c (loam-lisp-boehm)
    lisp=${BENCH_LISP:-}
    if [ -z "$lisp" ] && [ "$home" = "$root_p" ]; then
        cmake --build "$build" --target lisp -j "$jobs" >>"$log" 2>&1 || true
        for f in "$build/examples/lisp/lisp" "$build/examples/lisp" \
                 "$build/examples/lisp/loam-lisp" "$build/examples/loam-lisp"; do
            if [ -f "$f" ] && [ -x "$f" ]; then lisp=$f; break; fi
        done
    fi
    gc_args+=(--lisp "$lisp" --lisp-script "${BENCH_LISP_SCRIPT:-$root/examples/lisp/demo.lisp}")
    if [ "$home" = "$root_p" ] && cmake --build "$build" --target loam-lisp-boehm -j "$jobs" >>"$log" 2>&1 &&
       [ -x "$build/bench/loam-lisp-boehm" ]; then
        gc_args+=(--lisp-boehm "$build/bench/loam-lisp-boehm")
        # the same Lisp over 8 code layouts: the row's medians over layouts
        if cmake --build "$build" --target lisp-layouts -j "$jobs" >>"$log" 2>&1; then
            gc_args+=(--lisp-layouts "$build/bench")
        fi
    fi
    [ -n "$lisp" ] || gc_args+=(--lisp-note "no Lisp example executable in $build/examples (not written or not built yet)")
fi

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
    --programs "${BENCH_PROGRAMS:-1}" \
    --programs-scale "${BENCH_PROGRAMS_SCALE:-1}" \
    --gc "${BENCH_GC:-1}" \
    --gc-columns "${BENCH_GC_COLUMNS:-}" \
    --gc-big-depth "${BENCH_GC_DEPTH:-19}" \
    "${gc_args[@]}" \
    --out "$here/results"
