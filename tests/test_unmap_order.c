/* The segment map never names memory loam has already given back.
 *
 * Once a range is unmapped, any thread may map there at once (the kernel
 * hands the addresses out again) and enter its own segment or large block
 * in the map; an entry of loam's cleared after the unmap then erases the
 * newcomer's, and its live block reads as foreign ("free of a pointer not
 * allocated by loam", loam_heap_of NULL). A random stress run of realloc
 * across threads hit it every other run. The window is too short to aim
 * at, so this file checks the order itself: munmap and mremap are
 * interposed (the test binary's definitions come before libc's), and at
 * each call that vacates a range, every 4 MiB granule wholly inside it
 * must be out of the map already. */
#define _GNU_SOURCE
#include "harness.h"
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "loam.h"
#include "alloc/alloc.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static volatile int watching;
static volatile uintptr_t stale_granule;   /* first granule found still mapped, 0: none */

/* [p, p+len) is about to be vacated: no granule wholly inside it may still
 * be in the segment map. */
static void check_vacated(const void *p, size_t len)
{
    if (!watching || stale_granule)
        return;
    uintptr_t first = ((uintptr_t)p + SEGMENT_MASK) & ~(uintptr_t)SEGMENT_MASK;
    for (uintptr_t g = first; g + SEGMENT_SIZE <= (uintptr_t)p + len; g += SEGMENT_SIZE)
        if (segmap_lookup(g)) {
            stale_granule = g;
            return;
        }
}

int munmap(void *p, size_t len)
{
    static int (*real)(void *, size_t);
    if (!real)
        real = (int (*)(void *, size_t))dlsym(RTLD_NEXT, "munmap");
    check_vacated(p, len);
    return real(p, len);
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    static void *(*real)(void *, size_t, size_t, int, ...);
    if (!real)
        real = (void *(*)(void *, size_t, size_t, int, ...))dlsym(RTLD_NEXT, "mremap");
    void *dest = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        dest = va_arg(ap, void *);
        va_end(ap);
        check_vacated(old, old_len);                /* moved away: the old range is vacated */
    } else if (new_len < old_len) {
        check_vacated((char *)old + new_len, old_len - new_len);   /* the tail goes */
    }
    return (flags & MREMAP_FIXED) ? real(old, old_len, new_len, flags, dest)
                                  : real(old, old_len, new_len, flags);
}

/* Shrinking a large block by more than an eighth unmaps its tail. */
Test(unmap_order, a_shrinking_large_block_leaves_the_map_before_its_tail_is_unmapped)
{
    loam_option_set("purge_thread", 0);
    loam_heap_t *h = loam_heap_new(NULL);
    char *p = loam_malloc(h, 20 * MiB);
    cr_assert_not_null(p);
    memset(p, 7, 64);
    watching = 1;
    char *q = loam_realloc(h, p, 200 * KiB);
    watching = 0;
    cr_assert_eq(q, p, "a large block shrinks in place");
    cr_assert_eq(q[63], 7);
    cr_assert_eq(stale_granule, 0, "granule %p was still in the segment map when unmapped",
                 (void *)stale_granule);
    loam_free(q);
    loam_heap_destroy(h);
}

/* A large block that cannot grow in place moves: its old range is vacated. */
Test(unmap_order, a_moving_large_block_leaves_the_map_before_its_old_range_is_vacated)
{
    loam_option_set("purge_thread", 0);
    loam_heap_t *h = loam_heap_new(NULL);
    char *p = loam_malloc(h, 9 * MiB);
    cr_assert_not_null(p);
    /* Something right past the mapping, so mremap cannot grow it in place. */
    uintptr_t end = ((uintptr_t)p - OS_PAGE + 9 * MiB + OS_PAGE + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1);
    void *wall = mmap((void *)end, OS_PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    cr_assert(wall != MAP_FAILED, "a page right past the block");
    memset(p, 5, 64);
    watching = 1;
    char *q = loam_realloc(h, p, 30 * MiB);
    watching = 0;
    cr_assert_not_null(q);
    cr_assert_neq(q, p, "the block moved");
    cr_assert_eq(q[63], 5);
    cr_assert_eq(stale_granule, 0, "granule %p was still in the segment map when vacated",
                 (void *)stale_granule);
    cr_assert_eq(loam_heap_of(q), h);
    loam_free(q);
    munmap(wall, OS_PAGE);
    loam_heap_destroy(h);
}

/* A cached mapping far too big for the block that reuses it gives its
 * tail's pages to a mapping of their own (mremap of the tail). */
Test(unmap_order, a_split_cached_mapping_leaves_the_map_before_its_tail_moves)
{
    loam_option_set("purge_thread", 0);
    loam_heap_t *h = loam_heap_new(NULL);
    void *keeper = loam_malloc(h, 4 * MiB);   /* live large bytes: the cache may keep 32 MiB */
    char *p = loam_malloc(h, 24 * MiB);
    cr_assert_not_null(p);
    loam_free(p);                       /* kept in the large cache */
    watching = 1;
    char *q = loam_malloc(h, 200 * KiB);
    watching = 0;
    cr_assert_eq(q, p, "the cached mapping serves the block");
    cr_assert_eq(stale_granule, 0, "granule %p was still in the segment map when vacated",
                 (void *)stale_granule);
    cr_assert_eq(loam_heap_of(q), h);
    loam_free(q);
    loam_free(keeper);
    loam_heap_destroy(h);
}
