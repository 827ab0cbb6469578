/* runtime/override.c — libloam-malloc.so: the libc allocation entry points on
 * the default heap, for LD_PRELOAD. Only this file is extra in that library. */
#define _GNU_SOURCE
#include "runtime/runtime.h"

#include <limits.h>
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT void *malloc(size_t n)
{
    return alloc_malloc_fast(&loam_default_heap, n);
}

EXPORT void free(void *p)
{
    alloc_free_fast(p);
}

EXPORT void cfree(void *p)
{
    alloc_free_fast(p);
}

EXPORT void *calloc(size_t count, size_t n)
{
    return loam_calloc(&loam_default_heap, count, n);
}

EXPORT void *realloc(void *p, size_t n)
{
    return alloc_realloc(&loam_default_heap, p, n);
}

EXPORT void *reallocarray(void *p, size_t count, size_t n)
{
    size_t total;
    if (__builtin_mul_overflow(count, n, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return alloc_realloc(&loam_default_heap, p, total);
}

EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)) != 0)
        return EINVAL;
    int saved = errno;
    void *p = alloc_aligned(&loam_default_heap, align, n);
    if (!p) {
        int e = errno;
        errno = saved;
        return e ? e : ENOMEM;
    }
    *out = p;
    return 0;
}

EXPORT void *aligned_alloc(size_t align, size_t n)
{
    return alloc_aligned(&loam_default_heap, align, n);
}

/* As glibc's (every version): an alignment up to 16, 0 included, is
 * malloc's, and one that is no power of two rounds up to the next (EINVAL
 * only where there is none). Programs pass sizeof a struct, or 0, and got
 * NULL. aligned_alloc and posix_memalign keep refusing such alignments, as
 * C17 and POSIX allow and glibc 2.38's aligned_alloc does. */
EXPORT void *memalign(size_t align, size_t n)
{
    if (align & (align - 1)) {
        if (align > SIZE_MAX / 2 + 1) {
            errno = EINVAL;
            return NULL;
        }
        align = (size_t)1 << (64 - __builtin_clzll((unsigned long long)align));
    }
    return alloc_aligned(&loam_default_heap, align ? align : BLOCK_ALIGN, n);
}

EXPORT void *valloc(size_t n)
{
    return alloc_aligned(&loam_default_heap, OS_PAGE, n);
}

EXPORT void *pvalloc(size_t n)
{
    size_t rounded = (n + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
    if (rounded < n) {
        errno = ENOMEM;
        return NULL;
    }
    return alloc_aligned(&loam_default_heap, OS_PAGE, rounded ? rounded : OS_PAGE);
}

EXPORT size_t malloc_usable_size(void *p)
{
    return alloc_usable_size(p);
}

/* glibc's malloc_trim gives its free memory back to the OS: here the
 * default heap's free page runs, at once (loam_heap_trim). 1 if any went
 * back, as glibc's. pad, what glibc keeps at the top of its heap, means
 * nothing to a heap of separate mappings. */
EXPORT int malloc_trim(size_t pad)
{
    (void)pad;
    return loam_heap_trim(&loam_default_heap) > 0;
}

/* The fields glibc's tools read, from the default heap's statistics:
 * arena, the memory the heap holds from the OS (slabs and large mappings);
 * uordblks and fordblks, what of it is handed out and free; hblks and
 * hblkhd, the blocks above mmap_threshold and their bytes (their own
 * mappings, as glibc's mmapped chunks); keepcost, the committed bytes
 * awaiting decay, which a malloc_trim would give back. The rest stays 0. */
EXPORT struct mallinfo2 mallinfo2(void)
{
    loam_stats_t st;
    loam_heap_stats(&loam_default_heap, &st);
    struct mallinfo2 mi = { 0 };
    size_t held = st.committed_bytes > st.large_bytes ? st.committed_bytes - st.large_bytes : 0;
    mi.arena = held;
    mi.hblks = st.large_count;
    mi.hblkhd = st.large_bytes;
    mi.uordblks = st.live_bytes > st.large_bytes ? st.live_bytes - st.large_bytes : 0;
    mi.fordblks = held > mi.uordblks ? held - mi.uordblks : 0;
    mi.keepcost = st.free_run_bytes;
    return mi;
}

static int clamp_int(size_t v)
{
    return v > INT_MAX ? INT_MAX : (int)v;
}

/* The old interface, ints (glibc's wrap past 2 GiB; these stop at INT_MAX). */
EXPORT struct mallinfo mallinfo(void)
{
    struct mallinfo2 m = mallinfo2();
    struct mallinfo mi = { 0 };
    mi.arena = clamp_int(m.arena);
    mi.hblks = clamp_int(m.hblks);
    mi.hblkhd = clamp_int(m.hblkhd);
    mi.uordblks = clamp_int(m.uordblks);
    mi.fordblks = clamp_int(m.fordblks);
    mi.keepcost = clamp_int(m.keepcost);
    return mi;
}
