#!/bin/bash
# tests/preload/run.sh — libloam-malloc.so as the malloc of unmodified programs.
#
#   run.sh LIBLOAM_MALLOC_SO PROBE [SANITIZER]
#
# Each program runs twice, with the system malloc and with LD_PRELOAD of loam
# (and LOAM_OPTIONS=verbose=1); exit codes and standard outputs must be the
# same, and the preloaded run's stderr must hold loam's exit statistics (so
# the preload did take effect) and no loam error. Programs: the probe (every
# replaced function, threads, fork, dlopen, a block from before main),
# python3 (allocation-heavy, and multi-threaded), sqlite3 (200,000 rows in
# memory), sort (a million lines, also in parallel with temporary files) and
# xz -T2 (multi-threaded compression and decompression).
#
# A non-empty SANITIZER (the build's LOAM_SANITIZE) skips everything with
# exit code 77: under a sanitizer its runtime owns malloc.
# Missing python3, sqlite3, sort or xz is a failure naming the Debian package.
set -u

lib=${1:?usage: run.sh LIBLOAM_MALLOC_SO PROBE [SANITIZER]}
probe=${2:?usage: run.sh LIBLOAM_MALLOC_SO PROBE [SANITIZER]}
sanitizer=${3:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ -n "$sanitizer" ]; then
    echo "SKIP: preload_programs in a LOAM_SANITIZE=$sanitizer build (the sanitizer runtime owns malloc)"
    exit 77
fi
if [ ! -f "$lib" ]; then
    echo "FAIL: $lib not found"
    exit 1
fi
lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")

work=$(mktemp -d "${TMPDIR:-/tmp}/loam-preload.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=0
passed=0
limit=${LOAM_PRELOAD_TIMEOUT:-600}        # seconds per program run

fail() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}

# need CMD PACKAGE: the command must exist (prints its path).
need() {
    local path
    if [ -x "/usr/bin/$1" ]; then
        path=/usr/bin/$1                  # prefer Debian's program over shims on PATH
    else
        path=$(command -v "$1" 2>/dev/null)
    fi
    if [ -z "$path" ]; then
        fail "'$1' is not installed: install the Debian package '$2' (apt-get install $2)"
        return 1
    fi
    echo "$path"
}

marker=loam_preload_marker

# The stderr of a preloaded run without loam's reports and the marker warning.
loam_lines_removed() {
    grep -v -e '^loam heap ' -e '^  ' -e "^loam: warning: unknown option '$marker'" "$1"
}

# run_case NAME STDIN_FILE CMD...: run with and without loam, compare.
# stats=0 before the call: the program closes stderr, expect no report.
run_case() {
    local name=$1 input=$2
    shift 2
    local ref=$work/$name.ref new=$work/$name.loam rc_ref rc_new
    timeout -k 10 "$limit" "$@" <"$input" >"$ref.out" 2>"$ref.err"
    rc_ref=$?
    timeout -k 10 "$limit" env LD_PRELOAD="$lib" LOAM_OPTIONS="verbose=1,$marker=1" "$@" <"$input" >"$new.out" 2>"$new.err"
    rc_new=$?
    local ok=1
    if [ "$rc_ref" -ne 0 ]; then
        fail "$name: exits with $rc_ref even without loam (test broken?)"
        sed 's/^/    /' "$ref.err" | head -20
        return
    fi
    if [ "$rc_new" -ne "$rc_ref" ]; then
        fail "$name: exit code $rc_new under loam (without: $rc_ref)$([ "$rc_new" -eq 124 ] && echo ', timed out')$([ "$rc_new" -gt 128 ] && echo ", signal $((rc_new - 128))")"
        ok=0
    fi
    if ! cmp -s "$ref.out" "$new.out"; then
        fail "$name: standard output differs under loam ($(wc -l <"$new.out") lines vs $(wc -l <"$ref.out"))"
        diff "$ref.out" "$new.out" | head -20 | sed 's/^/    /'
        ok=0
    fi
    # loam parses LOAM_OPTIONS at its first allocation and warns about the
    # unknown marker key: proof that the program's malloc was loam's.
    if ! grep -q "^loam: warning: unknown option '$marker'" "$new.err"; then
        fail "$name: loam never initialised under LD_PRELOAD (no warning about the marker option)"
        ok=0
    fi
    # The statistics at exit; programs that close stderr before exit
    # (coreutils, xz) cannot show them: verbose_stderr.sh covers that case.
    if [ "$stats" = 1 ] && ! grep -q '^loam heap .*(default, manual)' "$new.err"; then
        fail "$name: no loam statistics on stderr at exit with LOAM_OPTIONS=verbose=1"
        ok=0
    fi
    if grep -q '^loam: error' "$new.err"; then
        fail "$name: loam reported an error:"
        grep '^loam: error' "$new.err" | head -5 | sed 's/^/    /'
        ok=0
    fi
    # Anything else on stderr must be what the program prints without loam.
    if ! diff -q <(loam_lines_removed "$new.err") "$ref.err" >/dev/null; then
        fail "$name: unexpected messages on stderr under loam:"
        diff <(loam_lines_removed "$new.err") "$ref.err" | head -10 | sed 's/^/    /'
        ok=0
    fi
    if [ "$ok" = 1 ]; then
        echo "ok   $name ($(wc -l <"$new.out") lines of output identical; $(grep -c '^loam heap ' "$new.err") loam heap reports at exit)"
        passed=$((passed + 1))
    fi
}

python3=$(need python3 python3)
sqlite3=$(need sqlite3 sqlite3)
sort=$(need sort coreutils)
xz=$(need xz xz-utils)
awk=$(need awk mawk)
: >"$work/empty"

# 1. The probe calls every replaced function under the preload.
want="malloc free calloc realloc reallocarray posix_memalign aligned_alloc memalign valloc pvalloc malloc_usable_size malloc_trim mallinfo2 mallinfo"
which_out=$(env LD_PRELOAD="$lib" "$probe" --which)
for f in $want; do
    got=$(echo "$which_out" | "$awk" -v f="$f" '$1 == f { print $2 }')
    if [ "$got" != "libloam-malloc.so" ]; then
        fail "under LD_PRELOAD, $f comes from '${got:-nowhere}', not libloam-malloc.so"
    fi
done
stats=1
run_case probe "$work/empty" "$probe"

# 2. python3: allocation-heavy (also forks and runs a subprocess), and threads.
if [ -n "$python3" ]; then
    run_case python3_alloc "$work/empty" "$python3" "$here/alloc_heavy.py"
    run_case python3_threads "$work/empty" "$python3" "$here/threads.py"
fi

# 3. sqlite3: an in-memory table of 200,000 rows.
if [ -n "$sqlite3" ]; then
    run_case sqlite3 "$here/sqlite.sql" "$sqlite3" -batch :memory:
fi

# 4. sort: a million lines from a seeded generator (Park-Miller, exact in
#    double arithmetic), sorted in memory, numerically by a key, and in
#    parallel with a small buffer (temporary files, merge threads).
if [ -n "$sort" ] && [ -n "$awk" ]; then
    "$awk" 'BEGIN { x = 20240611;
                    for (i = 0; i < 1000000; i++) {
                        x = (x * 16807) % 2147483647;
                        printf "%s %d line-%d\n", substr("abcdefghijklmnopqrstuvwxyz", x % 26 + 1, x % 7 + 1), x, i } }' \
        >"$work/lines.txt"
    if [ "$(wc -l <"$work/lines.txt")" -ne 1000000 ]; then
        fail "the generator made $(wc -l <"$work/lines.txt") lines, not 1000000"
    fi
    export LC_ALL=C
    stats=0                               # coreutils close stderr at exit
    run_case sort "$work/lines.txt" "$sort"
    run_case sort_numeric_parallel "$work/lines.txt" "$sort" -k2,2n -k3,3 --parallel=2 -S 8M -T "$work"
    run_case sort_unique "$work/lines.txt" "$sort" -u -k1,1
    if cmp -s "$work/sort.loam.out" "$work/lines.txt"; then
        fail "sort: the output equals the input: the input was not shuffled"
    fi
    if ! "$sort" -c "$work/sort.loam.out"; then
        fail "sort: the output under loam is not sorted"
    fi
    unset LC_ALL
    stats=1
fi

# 5. xz -T2: multi-threaded compression (1 MiB blocks, so both threads work)
#    and decompression; the compressed stream must be byte-identical.
if [ -n "$xz" ] && [ -f "$work/lines.txt" ]; then
    stats=0                               # xz closes stderr at exit
    run_case xz_compress "$work/lines.txt" "$xz" -T2 --block-size=1MiB -6 -c
    cp "$work/xz_compress.ref.out" "$work/lines.xz"
    run_case xz_decompress "$work/lines.xz" "$xz" -T2 -d -c
    if ! cmp -s "$work/xz_decompress.loam.out" "$work/lines.txt"; then
        fail "xz: decompressed under loam differs from the original"
    fi
fi

stats=1
echo "preload_programs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
