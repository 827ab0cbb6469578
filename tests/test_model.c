/* Randomised model test: a shadow model of every live block (heap, size,
 * alignment, fill pattern) checked against the allocator through millions of
 * mixed malloc / calloc / realloc / aligned_alloc / free operations over every
 * size class, several heaps at once, and occasional large blocks.
 *
 *   LOAM_TEST_SEED=<n>    replay a run (the seed is printed at the start)
 *   LOAM_TEST_SCALE=<x>   multiply the operation count (e.g. 50 for a long run)
 *
 * Each block holds a pattern derived from (address, size, allocation serial):
 * every word for blocks up to 4 KiB; for bigger ones the first and last KiB
 * in full and one word every 256 bytes in between. The pattern is verified
 * before the block is freed or reallocated, and after a realloc the old
 * contents are verified in the new place. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loam.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

typedef struct {
    unsigned char *p;
    size_t size;       /* requested */
    size_t usable;     /* loam_usable_size at allocation */
    size_t align;      /* 0: none requested beyond 16 */
    uint64_t seed;     /* pattern seed */
    int heap;          /* index into the model's heaps */
    int zeroed;        /* from calloc, not yet filled (only transiently) */
} slot_t;

typedef struct {
    loam_heap_t *h;
    size_t blocks, requested, usable;   /* model's view of what is live */
    size_t peak_usable;                 /* high-water mark of usable */
    loam_stats_t start;                 /* stats before the run (for the default heap) */
    int is_default;
} mheap_t;

static uint64_t g_seed;
static size_t g_op;
static uint64_t g_rng;

#define MCHECK(cond, ...)                                                          \
    do {                                                                           \
        if (!(cond)) {                                                             \
            char msg_[512];                                                        \
            snprintf(msg_, sizeof msg_, __VA_ARGS__);                              \
            cr_assert_fail("%s [seed %" PRIu64 ", op %zu; replay with "            \
                           "LOAM_TEST_SEED=%" PRIu64 "]", msg_, g_seed, g_op, g_seed); \
        }                                                                          \
    } while (0)

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static uint64_t rnd(void)
{
    g_rng += 0x9e3779b97f4a7c15ull;
    return mix64(g_rng);
}

static size_t rnd_below(size_t n) { return (size_t)(rnd() % n); }

static uint64_t pattern(uint64_t seed, size_t off) { return mix64(seed ^ (off * 0x9e3779b97f4a7c15ull)); }

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* Visit the pattern positions of a block of `size` bytes whose offsets are
 * below `limit`. mode 0: write; 1: check pattern; 2: check zero.
 * Returns the first bad offset, or SIZE_MAX. */
static size_t visit_one(unsigned char *p, size_t off, size_t end, uint64_t seed, int mode)
{
    size_t n = min_sz(8, end - off);
    uint64_t want = mode == 2 ? 0 : pattern(seed, off);
    if (mode == 0) {
        memcpy(p + off, &want, n);
        return SIZE_MAX;
    }
    uint64_t have = 0;
    memcpy(&have, p + off, n);
    if (n < 8)
        want &= (1ull << (8 * n)) - 1;
    return have == want ? SIZE_MAX : off;
}

static size_t visit(unsigned char *p, size_t size, uint64_t seed, size_t limit, int mode)
{
    size_t end = min_sz(size, limit), bad;
    size_t head = size <= 4 * KiB ? size : KiB;
    size_t tail_start = size <= 4 * KiB ? size : ((size - KiB) & ~(size_t)7);
    for (size_t off = 0; off < head && off < end; off += 8)
        if ((bad = visit_one(p, off, end, seed, mode)) != SIZE_MAX)
            return bad;
    for (size_t off = head; off < tail_start && off < end; off += 256)
        if ((bad = visit_one(p, off, end, seed, mode)) != SIZE_MAX)
            return bad;
    for (size_t off = tail_start; off < size && off < end; off += 8)
        if ((bad = visit_one(p, off, end, seed, mode)) != SIZE_MAX)
            return bad;
    return SIZE_MAX;
}

static size_t gen_size(void)
{
    size_t r = rnd_below(10000);
    if (r < 50)
        return 0;
    if (r < 8000)                                           /* 1 .. 1 KiB */
        return 1 + rnd_below((size_t)1 << (1 + rnd_below(10)));
    if (r < 9700)                                           /* .. 64 KiB */
        return 1 + rnd_below((size_t)1 << (11 + rnd_below(6)));
    if (r < 9985)                                           /* .. 512 KiB */
        return 1 + rnd_below((size_t)1 << (17 + rnd_below(3)));
    return 128 * KiB + rnd_below(4 * MiB);                  /* large, rarely */
}

static size_t gen_align(void)
{
    if (rnd_below(100) == 0)
        return (size_t)1 << (17 + rnd_below(4));            /* 128 KiB .. 1 MiB */
    return (size_t)1 << (4 + rnd_below(13));                /* 16 .. 64 KiB */
}

static void fill_slot(slot_t *s)
{
    s->seed = mix64((uint64_t)(uintptr_t)s->p ^ mix64(s->size) ^ mix64(g_op + 0x1234567));
    visit(s->p, s->size, s->seed, SIZE_MAX, 0);
}

static void check_block(const slot_t *s, mheap_t *hs, const char *what)
{
    MCHECK(loam_heap_of(s->p) == hs[s->heap].h, "%s: heap_of(%p) = %p, expected heap %d (%p)",
           what, (void *)s->p, (void *)loam_heap_of(s->p), s->heap, (void *)hs[s->heap].h);
    MCHECK(loam_usable_size(s->p) == s->usable, "%s: usable_size(%p) changed from %zu to %zu", what,
           (void *)s->p, s->usable, loam_usable_size(s->p));
    size_t bad = visit(s->p, s->size, s->seed, SIZE_MAX, 1);
    MCHECK(bad == SIZE_MAX, "%s: block %p of %zu bytes corrupted at offset %zu", what, (void *)s->p,
           s->size, bad);
}

static void took(slot_t *s, mheap_t *hs, unsigned char *p, size_t size, size_t align, int heap,
                 const char *what)
{
    MCHECK(p != NULL, "%s(%zu, align %zu) returned NULL", what, size, align);
    MCHECK(((uintptr_t)p & 15) == 0, "%s(%zu) = %p not 16-aligned", what, size, (void *)p);
    if (align)
        MCHECK(((uintptr_t)p & (align - 1)) == 0, "%s(%zu, align %zu) = %p misaligned", what, size,
               align, (void *)p);
    MCHECK(loam_heap_of(p) == hs[heap].h, "%s: new block %p not in its heap", what, (void *)p);
    s->p = p;
    s->size = size;
    s->usable = loam_usable_size(p);
    MCHECK(s->usable >= size, "%s(%zu): usable size %zu", what, size, s->usable);
    s->align = align;
    s->heap = heap;
    hs[heap].blocks++;
    hs[heap].requested += size;
    hs[heap].usable += s->usable;
    if (hs[heap].usable > hs[heap].peak_usable)
        hs[heap].peak_usable = hs[heap].usable;
}

static void dropped(slot_t *s, mheap_t *hs)
{
    hs[s->heap].blocks--;
    hs[s->heap].requested -= s->size;
    hs[s->heap].usable -= s->usable;
    s->p = NULL;
}

static void check_stats(mheap_t *hs, int nh)
{
    for (int i = 0; i < nh; i++) {
        loam_stats_t st;
        loam_heap_stats(hs[i].h, &st);
        if (hs[i].is_default) {
            MCHECK(st.live_blocks == hs[i].start.live_blocks + hs[i].blocks,
                   "default heap live_blocks %zu, model %zu", st.live_blocks,
                   hs[i].start.live_blocks + hs[i].blocks);
            continue;
        }
        MCHECK(st.live_blocks == hs[i].blocks, "heap %d live_blocks %zu, model %zu", i, st.live_blocks,
               hs[i].blocks);
        MCHECK(st.live_bytes == hs[i].usable, "heap %d live_bytes %zu, model (sum of usable sizes) %zu",
               i, st.live_bytes, hs[i].usable);
        if (loam_option_get("track_requested") == 1) {
            MCHECK(st.requested_tracked == 1, "heap %d: requested_bytes not tracked", i);
            MCHECK(st.requested_bytes == hs[i].requested, "heap %d requested_bytes %zu, model %zu", i,
                   st.requested_bytes, hs[i].requested);
        } else {
            MCHECK(st.requested_bytes == 0, "heap %d: requested_bytes %zu although not tracked", i,
                   st.requested_bytes);
        }
        MCHECK(st.peak_live_bytes >= st.live_bytes, "heap %d peak %zu < live %zu", i,
               st.peak_live_bytes, st.live_bytes);
    }
}

static void setup_seed(void)
{
    const char *e = getenv("LOAM_TEST_SEED");
    if (e && *e)
        g_seed = strtoull(e, NULL, 0);
    else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g_seed = mix64((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
    }
    g_rng = g_seed;
}

static size_t scaled(size_t ops)
{
    const char *e = getenv("LOAM_TEST_SCALE");
    if (e && *e) {
        double s = strtod(e, NULL);
        if (s > 0)
            return (size_t)((double)ops * s);
    }
    return ops;
}

/* The model's arrays, freed by .fini even when an assertion ends the test. */
static mheap_t *g_hs;
static slot_t *g_slots;

static void free_model(void)
{
    free(g_slots);
    free(g_hs);
    g_slots = NULL;
    g_hs = NULL;
}

static void run_model(const char *name, int n_new_heaps, int use_default, size_t nslots, size_t ops)
{
    int nh = n_new_heaps + (use_default ? 1 : 0);
    mheap_t *hs = g_hs = calloc((size_t)nh, sizeof *hs);
    slot_t *slots = g_slots = calloc(nslots, sizeof *slots);
    cr_assert_not_null(hs);
    cr_assert_not_null(slots);
    setup_seed();
    ops = scaled(ops);
    fprintf(stderr, "%s: LOAM_TEST_SEED=%" PRIu64 " ops=%zu slots=%zu heaps=%d\n", name, g_seed,
            ops, nslots, nh);
    cr_log_info("%s: LOAM_TEST_SEED=%" PRIu64 " ops=%zu", name, g_seed, ops);

    for (int i = 0; i < n_new_heaps; i++) {
        hs[i].h = loam_heap_new(NULL);
        cr_assert_not_null(hs[i].h);
    }
    if (use_default) {
        hs[nh - 1].h = loam_heap_default();
        hs[nh - 1].is_default = 1;
    }
    for (int i = 0; i < nh; i++)
        loam_heap_stats(hs[i].h, &hs[i].start);

    for (g_op = 0; g_op < ops; g_op++) {
        slot_t *s = &slots[rnd_below(nslots)];
        size_t r = rnd_below(100);
        if (!s->p) {
            int heap = (int)rnd_below((size_t)nh);
            size_t n = gen_size(), align = 0;
            unsigned char *p;
            const char *what;
            if (r < 55) {
                what = "malloc";
                p = loam_malloc(hs[heap].h, n);
            } else if (r < 75) {
                size_t count = 1 + rnd_below(8), each = n / count;
                what = "calloc";
                n = count * each;
                p = loam_calloc(hs[heap].h, count, each);
                if (p) {
                    size_t bad = visit(p, n, 0, SIZE_MAX, 2);
                    MCHECK(bad == SIZE_MAX, "calloc(%zu, %zu) = %p not zero at offset %zu", count, each,
                           (void *)p, bad);
                }
            } else if (r < 88) {
                what = "aligned_alloc";
                align = gen_align();
                p = loam_aligned_alloc(hs[heap].h, align, n);
            } else {
                what = "realloc(NULL)";
                p = loam_realloc(hs[heap].h, NULL, n);
            }
            took(s, hs, p, n, align, heap, what);
            fill_slot(s);
        } else {
            check_block(s, hs, "before free/realloc");
            if (r < 60) {
                unsigned char *p = s->p;
                dropped(s, hs);
                loam_free(p);
            } else if (r < 61) {
                unsigned char *old = s->p;
                dropped(s, hs);
                void *q = loam_realloc(hs[s->heap].h, old, 0);
                MCHECK(q == NULL, "realloc(%p, 0) returned %p, expected NULL (frees)", (void *)old, q);
            } else {
                slot_t old = *s;
                size_t n = gen_size();
                if (n == 0)
                    n = 1;
                unsigned char *q = loam_realloc(hs[s->heap].h, s->p, n);
                MCHECK(q != NULL, "realloc(%p, %zu -> %zu) returned NULL", (void *)old.p, old.size, n);
                dropped(s, hs);
                took(s, hs, q, n, 0, old.heap, "realloc");
                size_t keep = min_sz(old.size, n);
                size_t bad = visit(q, old.size, old.seed, keep, 1);
                MCHECK(bad == SIZE_MAX,
                       "realloc %p (%zu bytes) -> %p (%zu bytes): old contents lost at offset %zu",
                       (void *)old.p, old.size, (void *)q, n, bad);
                fill_slot(s);
            }
        }
        if ((g_op & 0xffff) == 0xffff)
            check_stats(hs, nh);
    }
    check_stats(hs, nh);

    /* free everything; every heap's live counts must return to where they started */
    for (size_t i = 0; i < nslots; i++) {
        if (slots[i].p) {
            check_block(&slots[i], hs, "final");
            unsigned char *p = slots[i].p;
            dropped(&slots[i], hs);
            loam_free(p);
        }
    }
    for (int i = 0; i < nh; i++) {
        loam_stats_t st;
        loam_heap_stats(hs[i].h, &st);
        if (hs[i].is_default) {
            cr_assert_eq(st.live_blocks, hs[i].start.live_blocks, "default heap live_blocks");
            cr_assert_eq(st.live_bytes, hs[i].start.live_bytes, "default heap live_bytes");
        } else {
            cr_assert_eq(st.live_bytes, 0, "heap %d live_bytes %zu after freeing all [seed %" PRIu64 "]",
                         i, st.live_bytes, g_seed);
            cr_assert_eq(st.live_blocks, 0, "heap %d live_blocks %zu after freeing all [seed %" PRIu64 "]",
                         i, st.live_blocks, g_seed);
            cr_assert_eq(st.requested_bytes, 0, "heap %d requested_bytes %zu after freeing all",
                         i, st.requested_bytes);
            cr_assert_eq(st.large_count, 0, "heap %d large_count %zu after freeing all", i, st.large_count);
            cr_assert_geq(st.peak_live_bytes, hs[i].peak_usable,
                          "heap %d peak_live_bytes %zu below the model's peak %zu", i,
                          st.peak_live_bytes, hs[i].peak_usable);
        }
    }
    for (int i = 0; i < n_new_heaps; i++)
        loam_heap_destroy(hs[i].h);
}

/* The main run: four heaps plus the default heap, a live set of up to 8192
 * blocks, every size class and some large blocks. */
Test(model, mixed_heaps, .fini = free_model)
{
    run_model("model/mixed_heaps", 4, 1, 8192, 2000000);
}

/* No thread caches and no decay delay: every free reaches the arenas and
 * every emptied page run is decommitted at once (then committed again). */
Test(model, no_cache_eager_decay, .fini = free_model)
{
    cr_assert_eq(loam_option_set("tcache_max", 0), 0);
    cr_assert_eq(loam_option_set("decay_ms", 0), 0);
    run_model("model/no_cache_eager_decay", 2, 0, 2048, 400000);
}

/* A small live set: nearly every allocation reuses a just-freed block, which
 * exercises thread caches and slabs' free sets hard. */
Test(model, churn_small_live_set, .fini = free_model)
{
    run_model("model/churn_small_live_set", 2, 0, 48, 600000);
}
