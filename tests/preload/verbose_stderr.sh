#!/bin/bash
# tests/preload/verbose_stderr.sh — LOAM_OPTIONS=verbose=1 prints loam's
# statistics at exit also for programs that close stderr on their way out,
# as coreutils (close_stdout) and xz do before exit(): the report is
# registered with atexit at the first malloc, so it runs after their handlers.
#
#   verbose_stderr.sh LIBLOAM_MALLOC_SO [SANITIZER]     (77: skipped)
set -u
lib=${1:?usage: verbose_stderr.sh LIBLOAM_MALLOC_SO [SANITIZER]}
if [ -n "${2:-}" ]; then
    echo "SKIP: LD_PRELOAD test in a LOAM_SANITIZE=$2 build"
    exit 77
fi
lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")
input=$(mktemp "${TMPDIR:-/tmp}/loam-verbose.XXXXXX")
trap 'rm -f "$input"' EXIT
seq 1000 >"$input"
failed=0
for cmd in "sort -r" "cat" "xz -c"; do
    prog=${cmd%% *}
    if ! command -v "$prog" >/dev/null; then
        echo "FAIL: $prog is not installed"
        failed=1
        continue
    fi
    err=$(env LD_PRELOAD="$lib" LOAM_OPTIONS=verbose=1 $cmd <"$input" 2>&1 >/dev/null)
    if echo "$err" | grep -q '^loam heap .*(default, manual)'; then
        echo "ok   $cmd: statistics printed at exit"
    else
        echo "FAIL: $cmd under LD_PRELOAD with LOAM_OPTIONS=verbose=1 printed no statistics at exit"
        echo "      ($prog closes stderr before exit; loam's atexit report runs after that)"
        failed=1
    fi
done
exit $failed
