/* API-level behaviour of the allocation entry points: malloc, free, calloc,
 * realloc, aligned_alloc, usable_size, heap_of, heap lifetime.
 *
 * Every test runs in its own process (Criterion forks), so option changes and
 * leaks in one test cannot affect another. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loam.h"
#include "rss_util.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static int static_object[64];

static int aligned_to(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* Fill [p, p+n) with a byte pattern that depends on the seed and position. */
static void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(seed * 131u + i * 7u + (i >> 8));
}

/* First mismatching index, or n if [p, p+n) holds fill(p, n, seed). */
static size_t check(const void *p, size_t n, unsigned seed)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(seed * 131u + i * 7u + (i >> 8)))
            return i;
    return n;
}

static size_t all_zero_upto(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return i;
    return n;
}


/* ---- malloc / free ------------------------------------------------------ */

Test(basic, malloc_free_every_small_size)
{
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_not_null(h);
    for (size_t n = 1; n <= 4096; n++) {
        void *p = loam_malloc(h, n);
        cr_assert_not_null(p, "malloc(%zu)", n);
        cr_assert(aligned_to(p, 16), "malloc(%zu) = %p not 16-aligned", n, p);
        cr_assert_geq(loam_usable_size(p), n, "usable_size(malloc(%zu))", n);
        memset(p, 0xA5, loam_usable_size(p));  /* the whole usable size is writable */
        cr_assert_eq(loam_heap_of(p), h);
        loam_free(p);
    }
    loam_heap_destroy(h);
}

Test(basic, blocks_alive_together_do_not_overlap)
{
    enum { N = 3000 };
    static void *ptr[N];
    static size_t len[N];
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < N; i++) {
        len[i] = 1 + (size_t)(i * 37) % 2000;
        ptr[i] = loam_malloc(h, len[i]);
        cr_assert_not_null(ptr[i]);
        fill(ptr[i], len[i], (unsigned)i);
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(check(ptr[i], len[i], (unsigned)i), len[i],
                     "block %d (%p, %zu bytes) was overwritten", i, ptr[i], len[i]);
    for (int i = 0; i < N; i += 2)
        loam_free(ptr[i]);
    for (int i = 1; i < N; i += 2)
        cr_assert_eq(check(ptr[i], len[i], (unsigned)i), len[i]);
    for (int i = 1; i < N; i += 2)
        loam_free(ptr[i]);
    loam_heap_destroy(h);
}

Test(basic, malloc_zero_is_unique_and_freeable)
{
    enum { N = 200 };
    void *p[N];
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < N; i++) {
        p[i] = loam_malloc(h, 0);
        cr_assert_not_null(p[i], "malloc(0) returned NULL");
        cr_assert(aligned_to(p[i], 16));
        cr_assert_eq(loam_heap_of(p[i]), h);
        for (int j = 0; j < i; j++)
            cr_assert_neq(p[i], p[j], "malloc(0) returned %p twice", p[i]);
    }
    for (int i = 0; i < N; i++)
        loam_free(p[i]);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.live_bytes, 0);
    loam_heap_destroy(h);
}

Test(basic, free_null_is_a_no_op)
{
    loam_free(NULL);
    loam_heap_t *h = loam_heap_new(NULL);
    loam_free(NULL);
    void *p = loam_malloc(h, 10);
    cr_assert_not_null(p);
    loam_free(p);
    loam_heap_destroy(h);
}

Test(basic, freed_memory_is_reused)
{
    /* Not a contract on which block comes back, but a heap that never reuses
     * freed blocks would grow without bound: 100k malloc/free pairs of 1 KiB
     * must not commit 100 MiB. */
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < 100000; i++) {
        void *p = loam_malloc(h, 1024);
        cr_assert_not_null(p);
        memset(p, i, 1024);
        loam_free(p);
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_lt(st.committed_bytes, 8 * MiB, "committed %zu bytes for one live KiB", st.committed_bytes);
    loam_heap_destroy(h);
}

/* ---- calloc -------------------------------------------------------------- */

Test(basic, calloc_is_zeroed)
{
    loam_heap_t *h = loam_heap_new(NULL);
    static const size_t sizes[] = { 1, 7, 16, 100, 1000, 4096, 65536, 100000, 200000, 3 * MiB };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = loam_calloc(h, 1, sizes[i]);
        cr_assert_not_null(p);
        cr_assert(aligned_to(p, 16));
        cr_assert_eq(all_zero_upto(p, sizes[i]), sizes[i], "calloc(1, %zu) not zeroed", sizes[i]);
        loam_free(p);
        p = loam_calloc(h, sizes[i], 1);
        cr_assert_not_null(p);
        cr_assert_eq(all_zero_upto(p, sizes[i]), sizes[i]);
        loam_free(p);
    }
    loam_heap_destroy(h);
}

Test(basic, calloc_zeroes_reused_dirty_memory)
{
    /* Dirty blocks of every size class, free them, then calloc the same
     * sizes: the reused memory must come back zeroed. */
    enum { N = 64 };
    loam_heap_t *h = loam_heap_new(NULL);
    for (size_t n = 16; n <= 512 * KiB; n = n * 3 / 2 + 16) {
        void *p[N];
        int count = n > 64 * KiB ? 8 : N;
        for (int i = 0; i < count; i++) {
            p[i] = loam_malloc(h, n);
            cr_assert_not_null(p[i]);
            memset(p[i], 0xFF, loam_usable_size(p[i]));
        }
        for (int i = 0; i < count; i++)
            loam_free(p[i]);
        for (int i = 0; i < count; i++) {
            p[i] = loam_calloc(h, n / 16, 16);
            cr_assert_not_null(p[i]);
            size_t z = all_zero_upto(p[i], n / 16 * 16);
            cr_assert_eq(z, n / 16 * 16, "calloc(%zu,16) byte %zu not zero", n / 16, z);
        }
        for (int i = 0; i < count; i++)
            loam_free(p[i]);
    }
    loam_heap_destroy(h);
}

Test(basic, calloc_zeroes_memory_of_a_destroyed_heap)
{
    /* memory given back by one heap and taken by another must still be zeroed */
    for (int round = 0; round < 10; round++) {
        loam_heap_t *a = loam_heap_new(NULL);
        void *p[256];
        for (int i = 0; i < 256; i++) {
            p[i] = loam_malloc(a, 4000);
            memset(p[i], 0xEE, 4000);
        }
        void *big = loam_malloc(a, 2 * MiB);
        memset(big, 0xEE, 2 * MiB);
        loam_heap_destroy(a);
        loam_heap_t *b = loam_heap_new(NULL);
        for (int i = 0; i < 256; i++) {
            p[i] = loam_calloc(b, 1000, 4);
            cr_assert_eq(all_zero_upto(p[i], 4000), 4000, "round %d block %d", round, i);
        }
        big = loam_calloc(b, 2, MiB);
        cr_assert_eq(all_zero_upto(big, 2 * MiB), 2 * MiB);
        loam_heap_destroy(b);
    }
}

Test(basic, calloc_zero)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *a = loam_calloc(h, 0, 10), *b = loam_calloc(h, 10, 0), *c = loam_calloc(h, 0, 0);
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    cr_assert_not_null(c);
    cr_assert(a != b && b != c && a != c);
    loam_free(a);
    loam_free(b);
    loam_free(c);
    loam_heap_destroy(h);
}

/* ---- realloc ------------------------------------------------------------- */

Test(basic, realloc_null_is_malloc)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_realloc(h, NULL, 100);
    cr_assert_not_null(p);
    cr_assert_eq(loam_heap_of(p), h, "realloc(NULL, n) must allocate from the heap given");
    cr_assert_geq(loam_usable_size(p), 100);
    loam_free(p);
    loam_heap_destroy(h);
}

/* We follow glibc: realloc(p, 0) frees p and returns NULL. */
Test(basic, realloc_to_zero_frees_and_returns_null)
{
    loam_heap_t *h = loam_heap_new(NULL);
    loam_stats_t st;
    void *p = loam_malloc(h, 100);
    cr_assert_not_null(p);
    void *q = loam_realloc(h, p, 0);
    cr_assert_null(q, "realloc(p, 0) returned %p, expected NULL (glibc semantics)", q);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0, "realloc(p, 0) did not free p");
    cr_assert_eq(st.live_bytes, 0);
    /* large block too */
    p = loam_malloc(h, 2 * MiB);
    cr_assert_not_null(p);
    cr_assert_null(loam_realloc(h, p, 0));
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.large_count, 0);
    loam_heap_destroy(h);
}

Test(basic, realloc_grow_and_shrink_keep_contents)
{
    loam_heap_t *h = loam_heap_new(NULL);
    static const size_t sizes[] = { 1, 15, 16, 17, 100, 255, 1000, 4000, 5000, 30000,
                                    100000, 131072, 140000, 300000, 600000, 2 * MiB, 5 * MiB };
    const size_t ns = sizeof sizes / sizeof *sizes;
    for (size_t i = 0; i < ns; i++) {
        for (size_t j = 0; j < ns; j++) {
            size_t a = sizes[i], b = sizes[j];
            unsigned char *p = loam_malloc(h, a);
            cr_assert_not_null(p);
            fill(p, a, (unsigned)(i * ns + j));
            unsigned char *q = loam_realloc(h, p, b);
            cr_assert_not_null(q, "realloc %zu -> %zu", a, b);
            cr_assert(aligned_to(q, 16));
            cr_assert_geq(loam_usable_size(q), b);
            cr_assert_eq(loam_heap_of(q), h);
            size_t keep = a < b ? a : b;
            cr_assert_eq(check(q, keep, (unsigned)(i * ns + j)), keep,
                         "realloc %zu -> %zu lost contents at byte %zu", a, b,
                         check(q, keep, (unsigned)(i * ns + j)));
            memset(q, 0x5A, b);   /* all of the new size is writable */
            loam_free(q);
        }
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.live_bytes, 0);
    loam_heap_destroy(h);
}

Test(basic, realloc_in_place_within_usable_size)
{
    loam_heap_t *h = loam_heap_new(NULL);
    static const size_t sizes[] = { 1, 24, 100, 1000, 3000, 20000, 100000 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = loam_malloc(h, sizes[i]);
        size_t us = loam_usable_size(p);
        fill(p, sizes[i], 9);
        void *q = loam_realloc(h, p, us);
        cr_assert_eq(q, p, "realloc(%zu -> usable size %zu) moved the block", sizes[i], us);
        cr_assert_eq(check(q, sizes[i], 9), sizes[i]);
        q = loam_realloc(h, p, us - 1 > sizes[i] ? us - 1 : sizes[i]);
        cr_assert_eq(q, p, "a shrink within the same usable size moved the block");
        loam_free(q);
    }
    loam_heap_destroy(h);
}

Test(basic, realloc_keeps_the_block_in_its_heap)
{
    loam_heap_t *a = loam_heap_new(NULL);
    void *p = loam_malloc(a, 32);
    fill(p, 32, 3);
    /* The block belongs to heap a; growing it keeps it in a. */
    void *q = loam_realloc(a, p, 50000);
    cr_assert_not_null(q);
    cr_assert_eq(loam_heap_of(q), a);
    cr_assert_eq(check(q, 32, 3), 32);
    loam_free(q);
    loam_heap_destroy(a);
}

/* ---- aligned_alloc -------------------------------------------------------- */

Test(basic, aligned_alloc_every_power_of_two, .timeout = 60)
{
    loam_heap_t *h = loam_heap_new(NULL);
    for (size_t align = 16; align <= MiB; align <<= 1) {
        const size_t sizes[] = { 0, 1, 13, align - 1, align, align + 1, 3 * align + 5, 100, 5000 };
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t n = sizes[k];
            void *ps[4];
            for (int r = 0; r < 4; r++) {  /* several, so not only the first of a slab */
                void *p = loam_aligned_alloc(h, align, n);
                cr_assert_not_null(p, "aligned_alloc(%zu, %zu)", align, n);
                cr_assert(aligned_to(p, align), "aligned_alloc(%zu, %zu) = %p", align, n, p);
                cr_assert_eq(loam_heap_of(p), h, "aligned_alloc(%zu, %zu) = %p is no block of the heap",
                             align, n, p);
                cr_assert_geq(loam_usable_size(p), n);
                memset(p, 0xC3, n);
                ps[r] = p;
            }
            for (int r = 0; r < 4; r++)
                loam_free(ps[r]);
        }
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.live_bytes, 0);
    loam_heap_destroy(h);
}

/* Alignments above the segment size (4 MiB): the mapping's own boundary no
 * longer meets them. Sizes below and above the largest mapping the large
 * cache keeps (32 MiB), each twice, so the second may reuse the first's. */
static const size_t huge_aligns[] = { 8 * MiB, 16 * MiB, 64 * MiB, 1024 * MiB };
static const size_t huge_align_sizes[] = { 0, 16, 5000, 300 * KiB, 5 * MiB + 3, 40 * MiB };

static void *huge_aligned_block(loam_heap_t *h, size_t align, size_t n)
{
    void *p = loam_aligned_alloc(h, align, n);
    cr_assert_not_null(p, "aligned_alloc(%zu MiB, %zu): errno %d", align / MiB, n, errno);
    cr_assert(aligned_to(p, align), "aligned_alloc(%zu MiB, %zu) = %p", align / MiB, n, p);
    cr_assert_eq(loam_heap_of(p), h, "aligned_alloc(%zu MiB, %zu) = %p is no block of the heap",
                 align / MiB, n, p);
    cr_assert_geq(loam_usable_size(p), n, "aligned_alloc(%zu MiB, %zu): usable size %zu",
                  align / MiB, n, loam_usable_size(p));
    unsigned char *b = p;
    if (n) {
        b[0] = 0xA5;
        b[n - 1] = 0x5A;
        cr_assert(b[0] == 0xA5 && b[n - 1] == 0x5A);
    }
    return p;
}

Test(basic, aligned_alloc_above_the_segment_size, .timeout = 60)
{
    loam_heap_t *h = loam_heap_new(NULL);
    for (size_t i = 0; i < sizeof huge_aligns / sizeof *huge_aligns; i++)
        for (size_t k = 0; k < sizeof huge_align_sizes / sizeof *huge_align_sizes; k++)
            for (int r = 0; r < 2; r++)
                loam_free(huge_aligned_block(h, huge_aligns[i], huge_align_sizes[k]));
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.large_count, 0);
    loam_heap_destroy(h);
}

/* Freed large blocks leave their mappings cached, each at a 4 MiB boundary
 * that an alignment above 4 MiB may not suit: one must not be handed out
 * for it just because it is big enough. */
Test(basic, aligned_alloc_above_the_segment_size_among_cached_mappings, .timeout = 60)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *keep = loam_malloc(h, 30 * MiB);      /* live bytes: the cache may hold the others */
    cr_assert_not_null(keep);
    enum { CACHED = 12 };
    void *p[CACHED];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < CACHED; i++) {
            p[i] = loam_malloc(h, 6 * MiB);
            cr_assert_not_null(p[i]);
        }
        for (int i = 0; i < CACHED; i++)
            loam_free(p[i]);
        for (int i = 0; i < CACHED; i++)
            p[i] = huge_aligned_block(h, 16 * MiB, i % 2 ? 16 : 2 * MiB);
        for (int i = 0; i < CACHED; i++)
            loam_free(p[i]);
    }
    loam_free(keep);
    loam_heap_destroy(h);
}

/* The gap up to a large alignment is address space only: not counted as the
 * block's mapping, nor charged to the heap's limit. */
Test(basic, aligned_alloc_above_the_segment_size_costs_no_gap)
{
    loam_config_t cfg = { .limit = 64 * MiB };
    loam_heap_t *h = loam_heap_new(&cfg);
    void *p = huge_aligned_block(h, 1024 * MiB, 100);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_lt(st.large_bytes, 8 * MiB, "a 1 GiB-aligned block of 100 bytes maps %zu bytes",
                 st.large_bytes);
    loam_free(p);
    loam_heap_destroy(h);
}

Test(basic, aligned_alloc_small_alignments)
{
    /* Powers of two below 16 are valid alignments; every block is 16-aligned anyway. */
    loam_heap_t *h = loam_heap_new(NULL);
    for (size_t align = 1; align < 16; align <<= 1) {
        void *p = loam_aligned_alloc(h, align, 40);
        cr_assert_not_null(p, "aligned_alloc(%zu, 40)", align);
        cr_assert(aligned_to(p, 16));
        loam_free(p);
    }
    loam_heap_destroy(h);
}

Test(basic, aligned_blocks_can_be_realloced)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_aligned_alloc(h, 4096, 100);
    cr_assert_not_null(p);
    fill(p, 100, 77);
    void *q = loam_realloc(h, p, 20000);
    cr_assert_not_null(q);
    cr_assert_eq(check(q, 100, 77), 100);
    loam_free(q);
    loam_heap_destroy(h);
}

/* ---- heap_of -------------------------------------------------------------- */

Test(basic, heap_of_small_and_large_in_several_heaps)
{
    enum { H = 5 };
    loam_heap_t *hs[H];
    void *small[H], *mid[H], *large[H], *al[H];
    for (int i = 0; i < H; i++) {
        hs[i] = loam_heap_new(NULL);
        cr_assert_not_null(hs[i]);
        for (int j = 0; j < i; j++)
            cr_assert_neq(hs[i], hs[j]);
    }
    for (int i = 0; i < H; i++) {
        small[i] = loam_malloc(hs[i], 24);
        mid[i] = loam_malloc(hs[i], 60000);
        large[i] = loam_malloc(hs[i], MiB + 123);
        al[i] = loam_aligned_alloc(hs[i], 65536, 1000);
    }
    for (int i = 0; i < H; i++) {
        cr_assert_eq(loam_heap_of(small[i]), hs[i]);
        cr_assert_eq(loam_heap_of(mid[i]), hs[i]);
        cr_assert_eq(loam_heap_of(large[i]), hs[i]);
        cr_assert_eq(loam_heap_of(al[i]), hs[i]);
    }
    for (int i = 0; i < H; i++) {
        loam_free(small[i]);
        loam_free(mid[i]);
        loam_free(large[i]);
        loam_free(al[i]);
        loam_heap_destroy(hs[i]);
    }
}

Test(basic, heap_of_foreign_pointers_is_null)
{
    int local = 0;
    void *libc = malloc(100);        /* tests link loam_static: this is glibc's malloc */
    void *libc_big = malloc(4 * MiB);
    cr_assert_null(loam_heap_of(NULL));
    cr_assert_null(loam_heap_of(&local));
    cr_assert_null(loam_heap_of(static_object));
    cr_assert_null(loam_heap_of((void *)&rss_bytes));
    cr_assert_null(loam_heap_of(libc));
    cr_assert_null(loam_heap_of(libc_big));
    cr_assert_null(loam_heap_of((void *)(uintptr_t)16));
    cr_assert_null(loam_heap_of((void *)(uintptr_t)0x00007fffffff0000ull));
    cr_assert_null(loam_heap_of((void *)UINTPTR_MAX));
    /* also once heaps exist */
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 10);
    cr_assert_null(loam_heap_of(&local));
    cr_assert_null(loam_heap_of(libc));
    cr_assert_null(loam_heap_of(static_object));
    loam_free(p);
    loam_heap_destroy(h);
    free(libc);
    free(libc_big);
}

Test(basic, two_hundred_heaps_alive_together, .timeout = 60)
{
    enum { H = 200, B = 20 };
    static loam_heap_t *hs[H];
    static void *blocks[H][B];
    for (int i = 0; i < H; i++) {
        hs[i] = loam_heap_new(NULL);
        cr_assert_not_null(hs[i], "heap %d", i);
    }
    for (int i = 0; i < H; i++)
        for (int j = 0; j < B; j++) {
            size_t n = (j == B - 1) ? 200 * KiB : (size_t)(16 << (j % 12));
            blocks[i][j] = loam_malloc(hs[i], n);
            cr_assert_not_null(blocks[i][j]);
            fill(blocks[i][j], 16, (unsigned)(i * B + j));
        }
    for (int i = 0; i < H; i++)
        for (int j = 0; j < B; j++) {
            cr_assert_eq(loam_heap_of(blocks[i][j]), hs[i], "heap %d block %d", i, j);
            cr_assert_eq(check(blocks[i][j], 16, (unsigned)(i * B + j)), 16);
        }
    for (int i = 0; i < H; i++) {
        loam_stats_t st;
        loam_heap_stats(hs[i], &st);
        cr_assert_eq(st.live_blocks, B);
    }
    /* destroy every other heap with its blocks still live; the rest free theirs */
    for (int i = 0; i < H; i += 2)
        loam_heap_destroy(hs[i]);
    for (int i = 1; i < H; i += 2) {
        for (int j = 0; j < B; j++) {
            cr_assert_eq(loam_heap_of(blocks[i][j]), hs[i]);
            cr_assert_eq(check(blocks[i][j], 16, (unsigned)(i * B + j)), 16);
            loam_free(blocks[i][j]);
        }
        loam_stats_t st;
        loam_heap_stats(hs[i], &st);
        cr_assert_eq(st.live_blocks, 0, "heap %d: live_blocks %zu after freeing all", i, st.live_blocks);
        cr_assert_eq(st.live_bytes, 0, "heap %d: live_bytes %zu after freeing all", i, st.live_bytes);
        cr_assert_eq(st.requested_bytes, 0, "heap %d: requested_bytes %zu", i, st.requested_bytes);
        loam_heap_destroy(hs[i]);
    }
}

Test(basic, heap_new_with_zero_config_is_manual_default)
{
    loam_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    void *p = loam_malloc(h, 77);
    cr_assert_eq(loam_heap_of(p), h);
    loam_free(p);
    loam_heap_destroy(h);
}

/* ---- heap destroy ---------------------------------------------------------- */

Test(basic, destroy_releases_everything)
{
    loam_heap_t *h = loam_heap_new(NULL);
    size_t rss0 = rss_bytes();
    enum { N = 2000 };
    static void *small[N];
    void *large[8];
    for (int i = 0; i < N; i++) {
        small[i] = loam_malloc(h, 16 * KiB + (size_t)i % 100);   /* ~32 MiB of slab blocks */
        memset(small[i], 1, 16 * KiB);
    }
    for (int i = 0; i < 8; i++) {
        large[i] = loam_malloc(h, 4 * MiB);                       /* 32 MiB of large blocks */
        memset(large[i], 2, 4 * MiB);
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_geq(st.committed_bytes, 64 * MiB);
    cr_assert_eq(st.large_count, 8);
    size_t rss1 = rss_bytes();
    cr_assert_geq(rss1, rss0 + 60 * MiB, "touched 64 MiB but RSS grew only %zu", rss1 - rss0);

    loam_heap_destroy(h);   /* with every block still live */
    size_t rss2 = rss_bytes();
    cr_assert_leq(rss2, rss0 + 4 * MiB, "after destroy RSS is %zu bytes above the start",
                  rss2 > rss0 ? rss2 - rss0 : 0);
    /* Blocks of a destroyed heap are no longer loam blocks. */
    for (int i = 0; i < N; i += 97)
        cr_assert_null(loam_heap_of(small[i]), "block %p of a destroyed heap still has a heap", small[i]);
    for (int i = 0; i < 8; i++)
        cr_assert_null(loam_heap_of(large[i]));

    /* A new heap starts from zero. */
    loam_heap_t *h2 = loam_heap_new(NULL);
    loam_heap_stats(h2, &st);
    cr_assert_eq(st.live_bytes, 0);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.large_count, 0);
    cr_assert_leq(st.committed_bytes, MiB);
    loam_heap_destroy(h2);
}

Test(basic, heap_create_destroy_cycles_do_not_leak)
{
    size_t rss0 = 0;
    for (int round = 0; round < 300; round++) {
        loam_heap_t *h = loam_heap_new(NULL);
        cr_assert_not_null(h);
        for (int i = 0; i < 200; i++) {
            void *p = loam_malloc(h, (size_t)(i * 131) % 8000 + 1);
            memset(p, 0, 16);
        }
        void *big = loam_malloc(h, 300 * KiB);
        memset(big, 1, 300 * KiB);
        loam_heap_destroy(h);
        if (round == 20)
            rss0 = rss_bytes();
    }
    size_t rss1 = rss_bytes();
    cr_assert_leq(rss1, rss0 + 8 * MiB, "RSS grew by %zu over 280 create/destroy cycles", rss1 - rss0);
}

/* ---- default heap ------------------------------------------------------------ */

Test(basic, default_heap_works)
{
    loam_heap_t *d = loam_heap_default();
    cr_assert_not_null(d);
    cr_assert_eq(loam_heap_default(), d, "the default heap is one heap");
    void *p = loam_malloc(d, 123);
    void *q = loam_calloc(d, 10, 10);
    void *r = loam_malloc(d, MiB);
    cr_assert_not_null(p);
    cr_assert_not_null(q);
    cr_assert_not_null(r);
    cr_assert_eq(loam_heap_of(p), d);
    cr_assert_eq(loam_heap_of(q), d);
    cr_assert_eq(loam_heap_of(r), d);
    p = loam_realloc(d, p, 5000);
    cr_assert_eq(loam_heap_of(p), d);
    loam_free(p);
    loam_free(q);
    loam_free(r);
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_neq(h, d);
    loam_heap_destroy(h);
}

/* ---- large blocks ----------------------------------------------------------- */

Test(basic, large_blocks)
{
    loam_heap_t *h = loam_heap_new(NULL);
    static const size_t sizes[] = { 128 * KiB + 1, 200 * KiB, 513 * KiB, MiB, 3 * MiB + 17, 64 * MiB };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = loam_malloc(h, n);
        cr_assert_not_null(p, "malloc(%zu)", n);
        cr_assert(aligned_to(p, 16));
        cr_assert_geq(loam_usable_size(p), n);
        cr_assert_leq(loam_usable_size(p), n + 2 * MiB, "usable size %zu for %zu", loam_usable_size(p), n);
        cr_assert_eq(loam_heap_of(p), h);
        memset(p, 0x11, loam_usable_size(p));
        loam_stats_t st;
        loam_heap_stats(h, &st);
        cr_assert_eq(st.large_count, 1, "malloc(%zu) above the threshold is a large block", n);
        cr_assert_geq(st.large_bytes, n);
        loam_free(p);
        loam_heap_stats(h, &st);
        cr_assert_eq(st.large_count, 0);
        cr_assert_eq(st.live_blocks, 0);
    }
    loam_heap_destroy(h);
}

Test(basic, large_realloc_growth_keeps_contents)
{
    loam_heap_t *h = loam_heap_new(NULL);
    size_t n = 256 * KiB;
    unsigned char *p = loam_malloc(h, n);
    fill(p, n, 42);
    /* grow step by step up to 64 MiB; the block may stay or move, contents must follow */
    while (n < 64 * MiB) {
        size_t m = n * 2 + 4096 * 3 + 5;
        unsigned char *q = loam_realloc(h, p, m);
        cr_assert_not_null(q);
        cr_assert_eq(check(q, n, 42), n, "realloc %zu -> %zu lost contents", n, m);
        cr_assert_geq(loam_usable_size(q), m);
        cr_assert_eq(loam_heap_of(q), h);
        fill(q, m, 42);
        p = q;
        n = m;
    }
    /* shrink, still large, then to small */
    unsigned char *q = loam_realloc(h, p, MiB);
    cr_assert_not_null(q);
    cr_assert_eq(check(q, MiB, 42), MiB);
    q = loam_realloc(h, q, 1000);
    cr_assert_not_null(q);
    cr_assert_eq(check(q, 1000, 42), 1000);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.large_count, 0, "a 1000-byte block is not large");
    cr_assert_eq(st.live_blocks, 1);
    loam_free(q);
    loam_heap_destroy(h);
}

/* A large block grown a little at a time takes an eighth more than asked:
 * the next small steps fit with no system call, contents intact. Shrinking
 * within that slack keeps the block where it is; shrinking further gives
 * the tail back. */
Test(basic, large_realloc_small_steps_use_slack)
{
    loam_heap_t *h = loam_heap_new(NULL);
    size_t n = 1 * MiB;
    unsigned char *p = loam_malloc(h, n);
    cr_assert_not_null(p);
    fill(p, n, 9);
    unsigned char *q = loam_realloc(h, p, n + 64);
    cr_assert_not_null(q);
    size_t usable = loam_usable_size(q);
    cr_assert_geq(usable, n + 64 + (n + 64) / 8 - 4096,
                  "grown by 64 B to %zu: usable %zu, no slack", n + 64, usable);
    cr_assert_eq(check(q, n, 9), n);
    /* the following steps up to the slack's end stay where they are */
    for (size_t m = n + 128; m <= usable; m += 4096 + 64) {
        unsigned char *r = loam_realloc(h, q, m);
        cr_assert_eq(r, q, "realloc to %zu within the slack (usable %zu) moved the block", m, usable);
        cr_assert_eq(loam_usable_size(r), usable);
    }
    cr_assert_eq(check(q, n, 9), n);
    /* shrink a little: same block; to a quarter: the tail goes */
    unsigned char *r = loam_realloc(h, q, usable - usable / 16);
    cr_assert_eq(r, q);
    cr_assert_eq(loam_usable_size(r), usable);
    r = loam_realloc(h, q, n / 4);
    cr_assert_not_null(r);
    cr_assert_lt(loam_usable_size(r), usable / 2, "shrunk to a quarter, usable still %zu",
                 loam_usable_size(r));
    cr_assert_eq(check(r, n / 4, 9), n / 4);
    loam_free(r);
    loam_heap_destroy(h);
}

Test(basic, small_to_large_realloc)
{
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, 100);
    fill(p, 100, 5);
    p = loam_realloc(h, p, 10 * MiB);
    cr_assert_not_null(p);
    cr_assert_eq(check(p, 100, 5), 100);
    memset(p + 100, 0, 10 * MiB - 100);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.large_count, 1);
    loam_free(p);
    loam_heap_destroy(h);
}

Test(basic, many_large_blocks_alive)
{
    enum { N = 300 };
    static unsigned char *p[N];
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < N; i++) {
        size_t n = 130 * KiB + (size_t)i * 4099;
        p[i] = loam_malloc(h, n);
        cr_assert_not_null(p[i]);
        p[i][0] = (unsigned char)i;
        p[i][n - 1] = (unsigned char)(i * 3);
    }
    for (int i = 0; i < N; i++) {
        size_t n = 130 * KiB + (size_t)i * 4099;
        cr_assert_eq(p[i][0], (unsigned char)i);
        cr_assert_eq(p[i][n - 1], (unsigned char)(i * 3));
        cr_assert_eq(loam_heap_of(p[i]), h);
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.large_count, N);
    for (int i = 0; i < N; i++)
        loam_free(p[i]);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.large_count, 0);
    cr_assert_eq(st.large_bytes, 0);
    loam_heap_destroy(h);
}
