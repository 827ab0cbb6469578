#!/usr/bin/env bash
# A program built against loam/inline.h of another layout must not link
# with this loam (include/loam/inline.h: LOAM_INLINE_ABI is in the name of
# the function the fast path falls back to), while one built against this
# header links and allocates.
#
#   run.sh <libloam.so> <C compiler> <include dir> [sanitizer]
#
# Exit 77 (skipped) when the control program does not link. In a sanitizer
# build the control is linked but not run (the sanitizer's runtime would
# have to come first in the process).
set -euo pipefail
lib=$1 cc=$2 inc=$3 sanitizer=${4:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

abi=$(sed -n 's/^#define LOAM_INLINE_ABI \([0-9][0-9]*\)$/\1/p' "$inc/loam/inline.h")
if [ -z "$abi" ]; then
    echo "inline_abi: no LOAM_INLINE_ABI in $inc/loam/inline.h" >&2
    exit 1
fi
if ! nm -D --defined-only "$lib" | grep -q " loam_inline_alloc_slow_abi$abi\$"; then
    echo "inline_abi: $lib does not export loam_inline_alloc_slow_abi$abi" >&2
    exit 1
fi
if nm -D --defined-only "$lib" | grep -q " loam_inline_alloc_slow\$"; then
    echo "inline_abi: $lib exports the fallback without its version" >&2
    exit 1
fi

cat > "$work/prog.c" <<'PROG'
#include <loam/inline.h>
#include <stdio.h>
int main(void)
{
    loam_config_t cfg = { .mode = LOAM_GC };
    loam_heap_t *h = loam_heap_new(&cfg);
    void *p = h ? loam_gc_alloc_inline(h, 24, LOAM_CONSERVATIVE) : NULL;
    if (!p || loam_heap_of(p) != h)
        return 1;
    loam_heap_destroy(h);
    puts("ok");
    return 0;
}
PROG

# The control: this header, this library.
if ! "$cc" -std=c11 -I "$inc" "$work/prog.c" "$lib" -Wl,-rpath,"$(dirname "$lib")" \
        -o "$work/prog" 2> "$work/control.err"; then
    echo "inline_abi: the control program does not link; skipped" >&2
    cat "$work/control.err" >&2
    exit 77
fi
if [ -z "$sanitizer" ]; then
    out=$("$work/prog")
    if [ "$out" != ok ]; then
        echo "inline_abi: the control program failed: $out" >&2
        exit 1
    fi
fi

# The same program against a header of another layout.
mkdir -p "$work/other/loam"
cp "$inc/loam.h" "$work/other/"
next=$((abi + 1))
sed -e "s/^#define LOAM_INLINE_ABI $abi\$/#define LOAM_INLINE_ABI $next/" \
    -e "s/loam_inline_alloc_slow_abi$abi\b/loam_inline_alloc_slow_abi$next/" \
    "$inc/loam/inline.h" > "$work/other/loam/inline.h"
if "$cc" -std=c11 -I "$work/other" "$work/prog.c" "$lib" -o "$work/prog_other" 2> "$work/other.err"; then
    echo "inline_abi: a program built with inline ABI $next linked with a library of ABI $abi" >&2
    exit 1
fi
if ! grep -q "loam_inline_alloc_slow_abi$next" "$work/other.err"; then
    echo "inline_abi: the link failed, but not for the layout's version:" >&2
    cat "$work/other.err" >&2
    exit 1
fi
echo "inline_abi: ABI $abi links; a header of ABI $next is refused at link time"
