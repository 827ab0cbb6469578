/* tests/test_gc_modes.c — manual and collected modes of one heap, the heap
 * limit on a collected heap, and the leak check of manual heaps.
 *
 *  - manual -> collected with live data: blocks from loam_malloc that nothing
 *    reaches are reclaimed by the next collection, reached ones (also those
 *    reached only through other manual blocks, interior pointers too) intact;
 *  - collected -> manual: no more collections (neither automatic nor by
 *    loam_gc_collect), unreferenced blocks stay until loam_free; and back;
 *  - limit on a collected heap: garbage never makes an allocation fail (the
 *    heap collects first), committed bytes never pass the limit; when live
 *    data fills it: a collection, then the oom callback with the request,
 *    then NULL with ENOMEM; dropping the data makes room again; an oom
 *    callback that allocates is not called again inside itself;
 *  - loam_leak_check on a manual heap reports exactly the blocks that are
 *    unreachable from the roots and were never freed (count, addresses and
 *    sizes through the callback), and frees nothing; also on a generational
 *    heap made manual, whose old blocks are still marked. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc_util.h"

static loam_heap_t *heap_with(loam_mode_t mode, size_t limit, loam_oom_fn oom, loam_roots_fn roots, void *user)
{
    loam_config_t cfg = { 0 };
    cfg.mode = mode;
    cfg.flags = LOAM_NO_STACK_SCAN;
    cfg.limit = limit;
    cfg.oom = oom;
    cfg.roots = roots;
    cfg.user = user;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h, "loam_heap_new failed (errno %d)", errno);
    return h;
}

/* ---- manual -> collected ------------------------------------------------------------- */

Test(modes, manual_to_collected_with_live_data)
{
    loam_heap_t *h = heap_with(LOAM_MANUAL, 0, NULL, NULL, NULL);
    enum { N = 200 };
    unsigned char *b[N];
    size_t size[N];
    uintptr_t *holder = calloc(N, sizeof *holder);      /* a root range (glibc memory) */
    cr_assert_not_null(holder);
    loam_root_add_range(h, holder, holder + N);
    for (int i = 0; i < N; i++) {
        size[i] = i == 7 || i == 8 ? 300 * KiB : 16 + (size_t)(i * 37 % 4000);
        b[i] = loam_malloc(h, size[i]);
        cr_assert_not_null(b[i]);
        gc_fill(b[i], 0, size[i], 500 + (uint64_t)i);
    }
    /* b[i] with i % 4 == 0: in the range; i % 4 == 1: reached from b[i-1]
     * through an interior pointer stored in its first word; the rest: unreachable. */
    size_t kept = 0, kept_usable = 0;
    bool keep[N] = { 0 };
    for (int i = 0; i < N; i += 4) {
        holder[i] = (uintptr_t)b[i] + (i % 8 ? 0 : size[i] / 2);
        keep[i] = true;
        if (i + 1 < N && size[i] >= 8) {
            uintptr_t v = (uintptr_t)b[i + 1] + 3;
            memcpy(b[i], &v, sizeof v);
            keep[i + 1] = true;
        }
    }
    for (int i = 0; i < N; i++)
        if (keep[i]) {
            kept++;
            kept_usable += loam_usable_size(b[i]);
        }
    loam_stats_t before = gc_stats(h);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0, "set_mode(LOAM_GC) failed");
    loam_stats_t after_switch = gc_stats(h);
    cr_assert_eq(after_switch.live_blocks, before.live_blocks, "switching modes alone freed blocks");
    loam_gc_collect(h);
    loam_stats_t st = gc_stats(h);
    cr_assert_eq(st.live_blocks, kept, "%zu blocks live after the first collection, %zu reachable", st.live_blocks,
                 kept);
    cr_assert_eq(st.live_bytes, kept_usable);
    for (int i = 0; i < N; i++) {
        if (!keep[i])
            continue;
        size_t from = i % 4 == 0 ? 8 : 0;
        cr_assert_eq(gc_check(b[i], from, size[i], 500 + (uint64_t)i), (size_t)-1, "kept block %d damaged", i);
    }
    /* a collected heap now: gc_alloc and automatic collections work */
    for (int i = 0; i < 100000; i++)
        cr_assert_not_null(loam_gc_alloc(h, 100, LOAM_ATOMIC));
    cr_assert_gt(gc_stats(h).gc_collections, 1);
    loam_root_remove_range(h, holder);
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_blocks, 0);
    free(holder);
    loam_heap_destroy(h);
}

/* ---- collected -> manual ------------------------------------------------------------- */

Test(modes, collected_to_manual_and_back)
{
    loam_heap_t *h = heap_with(LOAM_GC, 0, NULL, NULL, NULL);
    enum { NG = 100 };
    void *g[NG];
    for (int i = 0; i < NG; i++) {
        g[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);     /* unreachable at once */
        cr_assert_not_null(g[i]);
        gc_fill(g[i], 0, 64, 900 + (uint64_t)i);
    }
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0, "set_mode(LOAM_MANUAL) failed");
    size_t c0 = gc_stats(h).gc_collections;
    /* 4 x gc_min_bytes of unreferenced manual blocks */
    size_t n = 4 * (size_t)loam_option_get("gc_min_bytes") / 1024;
    void **m = malloc(n * sizeof *m);
    cr_assert_not_null(m);
    for (size_t i = 0; i < n; i++) {
        m[i] = loam_malloc(h, 1024);
        cr_assert_not_null(m[i]);
        gc_fill(m[i], 0, 64, i);
    }
    loam_stats_t st = gc_stats(h);
    cr_assert_eq(st.gc_collections, c0, "a manual heap collected by itself");
    cr_assert_eq(st.live_blocks, NG + n);
    loam_gc_collect(h);                                 /* on a manual heap: frees nothing */
    st = gc_stats(h);
    cr_assert_eq(st.live_blocks, NG + n, "loam_gc_collect on a manual heap freed %zu blocks",
                 NG + n - st.live_blocks);
    for (int i = 0; i < NG; i++)
        cr_assert_eq(gc_check(g[i], 0, 64, 900 + (uint64_t)i), (size_t)-1, "block %d damaged", i);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(gc_check(m[i], 0, 64, i), (size_t)-1, "block %zu damaged", i);
    for (size_t i = 0; i < n; i++)
        loam_free(m[i]);
    for (int i = 0; i < NG; i += 2)
        loam_free(g[i]);
    cr_assert_eq(gc_stats(h).live_blocks, NG / 2);
    /* and back: the rest is garbage */
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_blocks, 0);
    cr_assert_gt(gc_stats(h).gc_collections, c0);
    free(m);
    loam_heap_destroy(h);
}

Test(modes, set_mode_rejects_bad_modes)
{
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_neq(loam_heap_set_mode(h, (loam_mode_t)7), 0);
    cr_assert_neq(loam_heap_set_mode(NULL, LOAM_GC), 0);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0, "setting the current mode again");
    loam_heap_destroy(h);
}

/* loam_heap_new refuses a config it cannot honour, NULL with EINVAL: a bad
 * mode, a gc_growth past its maximum, a flag it does not know (one from a
 * newer loam.h, say, which this library would otherwise silently ignore). */
Test(modes, heap_new_rejects_bad_configs)
{
    loam_config_t bad_mode = { .mode = (loam_mode_t)5 };
    loam_config_t bad_growth = { .mode = LOAM_GC, .gc_growth = LOAM_GC_GROWTH_MAX + 1 };
    loam_config_t bad_flag = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN | (1u << 9) };
    loam_config_t top_flag = { .flags = 1u << 31 };
    loam_config_t *bad[] = { &bad_mode, &bad_growth, &bad_flag, &top_flag };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        errno = 0;
        cr_assert_null(loam_heap_new(bad[i]), "bad config %zu accepted", i);
        cr_assert_eq(errno, EINVAL, "bad config %zu: errno %d", i, errno);
    }
    loam_config_t good = { .mode = LOAM_GC,
                           .flags = LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK | LOAM_GENERATIONAL };
    loam_heap_t *h = loam_heap_new(&good);
    cr_assert_not_null(h, "every known flag refused");
    loam_heap_destroy(h);
}

/* loam_gc_alloc on a manual heap that tracks requested bytes (loam_heap_new's
 * default): every kind's allocations are counted, small and big, fast path
 * or not, and freeing them brings the count back to zero; the blocks come
 * zeroed whatever their size class. */
Test(modes, gc_alloc_on_a_tracked_manual_heap_counts_requested_bytes)
{
    loam_heap_t *h = loam_heap_new(NULL);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert(st.requested_tracked, "a heap from loam_heap_new does not track requested bytes");
    enum { N = 3000 };
    static unsigned char *p[N];
    for (int round = 0; round < 2; round++) {   /* the second reuses the first's dirty blocks */
    size_t want = 0;
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i * 37) % 700;
        p[i] = loam_gc_alloc(h, n, (loam_kind_t)(i % 3));
        cr_assert_not_null(p[i]);
        size_t zeroed = i % 3 == LOAM_ATOMIC ? (n < 16 ? n : 16) : n;
        for (size_t k = 0; k < zeroed; k++)
            cr_assert_eq(p[i][k], 0, "block %d (%zu bytes, kind %d): byte %zu not zero", i, n, i % 3, k);
        memset(p[i], 0xA7, n);           /* dirty, for the next round's blocks */
        want += n;
        if (i % 500 == 499) {
            loam_heap_stats(h, &st);
            cr_assert_eq(st.requested_bytes, want, "after %d blocks: requested %zu, asked for %zu", i + 1,
                         st.requested_bytes, want);
        }
    }
    for (int i = 0; i < N; i++)
        loam_free(p[i]);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.requested_bytes, 0, "requested %zu after freeing everything", st.requested_bytes);
    }
    loam_heap_destroy(h);
}

/* ---- limit and oom on a collected heap ------------------------------------------------ */

typedef struct {
    size_t calls, request;
    loam_heap_t *heap;
    void *user_seen;
} oom_rec_t;

static void rec_oom(loam_heap_t *h, size_t request, void *user)
{
    oom_rec_t *r = user;
    r->calls++;
    r->request = request;
    r->heap = h;
    r->user_seen = user;
}

#define LIMIT (24 * MiB)

static void garbage_never_fails(size_t block)
{
    static oom_rec_t rec;
    memset(&rec, 0, sizeof rec);
    loam_heap_t *h = heap_with(LOAM_GC, LIMIT, rec_oom, NULL, &rec);
    size_t total = 0, max_committed = 0;
    for (size_t i = 0; total < 20 * LIMIT / GC_SAN_DIVISOR; i++) {
        void *p = loam_gc_alloc(h, block, i % 2 ? LOAM_ATOMIC : LOAM_CONSERVATIVE);
        cr_assert_not_null(p, "allocation %zu of %zu bytes failed with only garbage in the heap (oom calls %zu)", i,
                           block, rec.calls);
        total += block;
        if (block < 64 * KiB && i % 16 != 0)
            continue;
        loam_stats_t st = gc_stats(h);
        if (st.committed_bytes > max_committed)
            max_committed = st.committed_bytes;
        cr_assert_leq(st.committed_bytes, LIMIT, "committed %zu over the limit", st.committed_bytes);
    }
    cr_assert_eq(rec.calls, 0, "the oom callback was called although collecting made room");
    cr_assert_gt(gc_stats(h).gc_collections, 0);
    loam_heap_destroy(h);
}

Test(limit, garbage_never_fails_small, .timeout = 120) { garbage_never_fails(4000); }
Test(limit, garbage_never_fails_large, .timeout = 120) { garbage_never_fails(256 * KiB); }

/* Pacing out of the way (gc_min_bytes far above the limit): only the limit
 * makes the heap collect. */
Test(limit, collects_at_the_limit_before_failing, .timeout = 120)
{
    cr_assert_eq(loam_option_set("gc_min_bytes", 1L << 34), 0);
    static oom_rec_t rec;
    memset(&rec, 0, sizeof rec);
    loam_heap_t *h = heap_with(LOAM_GC, LIMIT, rec_oom, NULL, &rec);
    for (size_t i = 0; i < 10 * LIMIT / 8000; i++) {
        void *p = loam_gc_alloc(h, 8000, LOAM_ATOMIC);
        cr_assert_not_null(p, "allocation %zu failed, with only garbage in the heap", i);
        if (i % 8 == 0)
            cr_assert_leq(gc_stats(h).committed_bytes, LIMIT);
    }
    cr_assert_eq(rec.calls, 0);
    cr_assert_gt(gc_stats(h).gc_collections, 0, "the heap never collected at its limit");
    loam_heap_destroy(h);
}

static void fill_live(size_t block)
{
    static oom_rec_t rec;
    memset(&rec, 0, sizeof rec);
    loam_heap_t *h = heap_with(LOAM_GC, LIMIT, rec_oom, NULL, &rec);
    size_t max = 2 * LIMIT / block + 16;
    uintptr_t *keep = calloc(max, sizeof *keep);
    cr_assert_not_null(keep);
    loam_root_add_range(h, keep, keep + max);
    size_t k = 0, live_at_failure = 0;
    for (;; k++) {
        cr_assert_lt(k, max, "the heap held more than twice its limit");
        loam_stats_t s0 = gc_stats(h);
        errno = 0;
        void *p = loam_gc_alloc(h, block, LOAM_ATOMIC);
        loam_stats_t s1 = gc_stats(h);
        cr_assert_leq(s1.committed_bytes, LIMIT, "committed %zu over the limit", s1.committed_bytes);
        if (!p) {
            cr_assert_eq(errno, ENOMEM, "a refusal must set ENOMEM (errno %d)", errno);
            cr_assert_geq(rec.calls, 1, "NULL without calling the oom callback");
            cr_assert_eq(rec.request, block, "the oom callback got request %zu, expected %zu", rec.request, block);
            cr_assert_eq(rec.heap, h);
            cr_assert_eq(rec.user_seen, &rec);
            cr_assert_gt(s1.gc_collections, s0.gc_collections, "refused without collecting first");
            live_at_failure = s0.live_bytes;
            break;
        }
        cr_assert_eq(rec.calls, 0, "the oom callback was called although the allocation succeeded");
        gc_fill(p, 0, 64, k);
        keep[k] = (uintptr_t)p;
    }
    cr_assert_geq(live_at_failure, LIMIT / 2, "refused with only %zu bytes live under a limit of %zu",
                  live_at_failure, (size_t)LIMIT);
    for (size_t i = 0; i < k; i++)
        cr_assert_eq(gc_check((void *)keep[i], 0, 64, i), (size_t)-1, "live block %zu damaged", i);
    /* drop half: the next allocations succeed (after a collection), no oom */
    size_t calls = rec.calls;
    for (size_t i = 0; i < k; i += 2)
        keep[i] = 0;
    for (size_t i = 0; i < k / 4; i++) {
        void *p = loam_gc_alloc(h, block, LOAM_ATOMIC);
        cr_assert_not_null(p, "no room after dropping half of the live data (%zu)", i);
        keep[2 * i] = (uintptr_t)p;
    }
    cr_assert_eq(rec.calls, calls);
    loam_root_remove_range(h, keep);
    free(keep);
    loam_heap_destroy(h);
}

Test(limit, live_data_fills_it_then_oom_then_null, .timeout = 120) { fill_live(16 * KiB); }
Test(limit, live_large_blocks_fill_it, .timeout = 120) { fill_live(300 * KiB); }

/* An oom callback that allocates from its own heap (an error object, a
 * log line) gets NULL there when the heap is still full: it is not called
 * again inside itself (it was, once per allocation it made, each time after
 * a full collection, until the stack overflowed). */
static loam_heap_t *nest_heap;
static unsigned nest_depth, nest_max, nest_calls;
static size_t nest_inner_null;

static void allocating_oom(loam_heap_t *h, size_t request, void *user)
{
    (void)request;
    (void)user;
    cr_assert_eq(h, nest_heap);
    nest_calls++;
    nest_depth++;
    if (nest_depth > nest_max)
        nest_max = nest_depth;
    cr_assert_leq(nest_depth, 1, "the oom callback runs nested in itself (depth %u)", nest_depth);
    if (!loam_gc_alloc(h, 16 * KiB, LOAM_ATOMIC))
        nest_inner_null++;
    nest_depth--;
}

Test(limit, an_oom_callback_that_allocates_is_not_called_inside_itself, .timeout = 120)
{
    loam_heap_t *h = heap_with(LOAM_GC, LIMIT, allocating_oom, NULL, NULL);
    nest_heap = h;
    nest_depth = nest_max = nest_calls = 0;
    nest_inner_null = 0;
    size_t max = 2 * LIMIT / (16 * KiB) + 16;
    uintptr_t *keep = calloc(max, sizeof *keep);
    cr_assert_not_null(keep);
    loam_root_add_range(h, keep, keep + max);
    size_t k = 0;
    for (; k < max; k++) {
        void *p = loam_gc_alloc(h, 16 * KiB, LOAM_ATOMIC);
        if (!p)
            break;
        keep[k] = (uintptr_t)p;
    }
    cr_assert_lt(k, max, "the heap never reached its limit");
    cr_assert_geq(nest_calls, 1);
    cr_assert_eq(nest_max, 1);
    cr_assert_eq(nest_inner_null, nest_calls, "the callback's own allocations found room in a full heap");
    /* and it is called again at the next failure */
    unsigned calls = nest_calls;
    cr_assert_null(loam_gc_alloc(h, 16 * KiB, LOAM_ATOMIC));
    cr_assert_gt(nest_calls, calls);
    loam_root_remove_range(h, keep);
    free(keep);
    loam_heap_destroy(h);
}

/* loam_heap_destroy inside the heap's own oom callback is a fault, and
 * ignored: the allocation that called it goes on with the heap. */
static size_t oom_destroy_faults;
static void oom_destroy_fault(loam_heap_t *h, const char *message, void *addr, void *user)
{
    (void)user;
    cr_assert_eq(addr, (void *)h);
    cr_assert_not_null(strstr(message, "loam_heap_destroy inside"), "message: %s", message);
    oom_destroy_faults++;
}

static void destroying_oom(loam_heap_t *h, size_t request, void *user)
{
    (void)request;
    (void)user;
    loam_heap_destroy(h);
}

Test(limit, heap_destroy_inside_its_oom_callback_is_a_fault)
{
    loam_config_t cfg = { .mode = LOAM_MANUAL, .limit = 4 * MiB, .oom = destroying_oom, .error = oom_destroy_fault };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    oom_destroy_faults = 0;
    cr_assert_null(loam_malloc(h, 8 * MiB));
    cr_assert_eq(oom_destroy_faults, 1);
    void *p = loam_malloc(h, 64);                    /* the heap still works */
    cr_assert_eq(loam_heap_of(p), h);
    loam_free(p);
    loam_heap_destroy(h);
    cr_assert_eq(oom_destroy_faults, 1);
}

/* ---- leak check ------------------------------------------------------------------------ */

typedef struct {
    void  *block[64];
    size_t size[64];
    size_t n;
    bool   bad_user;
} leak_rec_t;

static leak_rec_t *leak_expect_user;

static void rec_leak(void *block, size_t size, void *user)
{
    leak_rec_t *r = user;
    if (user != leak_expect_user)
        r->bad_user = true;
    if (r->n < 64) {
        r->block[r->n] = block;
        r->size[r->n] = size;
    }
    r->n++;
}

/* The leak check of h, recorded afresh in *rec; returns its count. */
static size_t check_leaks(loam_heap_t *h, leak_rec_t *rec)
{
    memset(rec, 0, sizeof *rec);
    leak_expect_user = rec;
    return loam_leak_check(h, rec_leak, rec);
}

static void *leak_cb_root;
static void leak_roots(loam_tracer_t *t, void *user)
{
    (void)user;
    loam_mark(t, leak_cb_root);
}

static void *leak_slot;

/* A heap switched from collected to manual keeps its thread caches, and
 * loam_gc_alloc goes on taking bump ranges (runs of free blocks handed out
 * in turn): the blocks a range has not reached are free, not leaks. */
Test(leak_check, blocks_ahead_in_an_allocation_range_are_no_leaks)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    static void *kept[2];
    loam_root_add(h, &kept[0]);
    loam_root_add(h, &kept[1]);
    kept[0] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);     /* a range: the rest of a fresh slab */
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    kept[1] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    cr_assert_not_null(kept[1]);
    void *leak = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    cr_assert_not_null(leak);
    static leak_rec_t rec;
    size_t count = check_leaks(h, &rec);
    cr_assert_eq(count, 1, "loam_leak_check counted %zu leaks, 1 expected", count);
    cr_assert_eq(rec.block[0], leak, "reported %p, not the leaked block %p", rec.block[0], leak);
    /* The heap goes on allocating distinct blocks. */
    void *more[200];
    for (int i = 0; i < 200; i++) {
        cr_assert_not_null(more[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE));
        cr_assert(more[i] != kept[0] && more[i] != kept[1] && more[i] != leak, "a live block handed out");
        for (int j = 0; j < i; j++)
            cr_assert_neq(more[i], more[j], "block %p handed out twice", more[i]);
    }
    loam_root_remove(h, &kept[0]);
    loam_root_remove(h, &kept[1]);
    loam_heap_destroy(h);
}

Test(leak_check, refused_for_a_collected_heap)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(loam_gc_alloc(h, 64, LOAM_ATOMIC));
    errno = 0;
    cr_assert_eq(loam_leak_check(h, NULL, NULL), 0);
    cr_assert_eq(errno, EINVAL, "a collected heap's leak check: errno %d", errno);
    errno = 0;
    cr_assert_eq(loam_leak_check(NULL, NULL, NULL), 0);
    cr_assert_eq(errno, EINVAL);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    cr_assert_eq(loam_leak_check(h, NULL, NULL), 1, "once manual, the unreachable block is a leak");
    loam_heap_destroy(h);
}

Test(leak_check, reports_exactly_the_unreachable_unfreed_blocks)
{
    loam_heap_t *h = heap_with(LOAM_MANUAL, 0, NULL, leak_roots, NULL);
    uintptr_t *range = calloc(8, sizeof *range);
    cr_assert_not_null(range);
    loam_root_add(h, &leak_slot);
    loam_root_add_range(h, range, range + 8);

    enum { NR = 6, NF = 5, NL = 7 };
    /* reachable: r0 via the slot, r1 via the range (interior), r2 via the
     * roots callback; c0 only from r0, c1 only from r1 (interior), c2 only from c0 */
    void *r[NR];
    size_t rsize[NR] = { 64, 256, 48, 32, 4000, 100 };
    for (int i = 0; i < NR; i++) {
        r[i] = loam_calloc(h, 1, rsize[i]);
        cr_assert_not_null(r[i]);
    }
    leak_slot = r[0];
    range[3] = (uintptr_t)r[1] + 100;
    leak_cb_root = r[2];
    ((void **)r[0])[1] = r[3];                           /* c0 */
    ((uintptr_t *)r[1])[5] = (uintptr_t)r[4] + 2000;      /* c1, interior */
    ((void **)r[3])[0] = r[5];                           /* c2 */
    /* freed: never reported */
    for (int i = 0; i < NF; i++)
        loam_free(loam_malloc(h, 24 + (size_t)i * 100));
    /* leaked: l1 -> l2 chain, l3 points at r0 (reachable, not reported), one large */
    void *l[NL];
    size_t lsize[NL] = { 16, 80, 80, 512, 300 * KiB, 7, 2000 };
    for (int i = 0; i < NL; i++) {
        l[i] = loam_calloc(h, 1, lsize[i]);
        cr_assert_not_null(l[i]);
        if (lsize[i] >= 16)
            gc_fill(l[i], 8, lsize[i], 40 + (uint64_t)i);
    }
    ((void **)l[1])[0] = l[2];
    ((void **)l[3])[0] = r[0];
    /* one that was freed after a pointer to it was stored: the stale pointer
     * in r2 points at a free block, which must not be reported */
    void *gone = loam_malloc(h, 64);
    ((void **)r[2])[0] = gone;
    loam_free(gone);

    loam_stats_t s0 = gc_stats(h);
    static leak_rec_t rec;
    size_t count = check_leaks(h, &rec);
    cr_assert_eq(count, NL, "loam_leak_check counted %zu leaks, %d expected", count, NL);
    cr_assert_eq(rec.n, NL, "the callback was called %zu times, %d leaks", rec.n, NL);
    cr_assert(!rec.bad_user, "the callback did not get the user pointer");
    for (int i = 0; i < NL; i++) {
        int found = 0;
        for (size_t j = 0; j < rec.n && j < 64; j++)
            if (rec.block[j] == l[i]) {
                found++;
                cr_assert(rec.size[j] >= lsize[i] && rec.size[j] <= loam_usable_size(l[i]),
                          "leak %d reported with size %zu (requested %zu, usable %zu)", i, rec.size[j], lsize[i],
                          loam_usable_size(l[i]));
            }
        cr_assert_eq(found, 1, "leaked block %d (%p, %zu bytes) reported %d times", i, l[i], lsize[i], found);
    }
    /* nothing freed, nothing changed */
    loam_stats_t s1 = gc_stats(h);
    cr_assert_eq(s1.live_blocks, s0.live_blocks, "leak check freed blocks");
    cr_assert_eq(s1.live_bytes, s0.live_bytes);
    for (int i = 0; i < NL; i++)
        if (lsize[i] >= 16)
            cr_assert_eq(gc_check(l[i], 8, lsize[i], 40 + (uint64_t)i), (size_t)-1, "leaked block %d damaged", i);
    cr_assert_eq(((void **)r[0])[1], r[3]);
    /* the same answer again */
    memset(&rec, 0, sizeof rec);
    cr_assert_eq(loam_leak_check(h, rec_leak, &rec), NL);
    /* The stale word in r2 marked the free block `gone`; that mark must not
     * survive the check: allocated again (the next 64-byte block is `gone`
     * itself), what it alone reaches is no leak. */
    void **again = loam_malloc(h, 64);
    void *kid = loam_malloc(h, 200);
    cr_assert(again && kid);
    cr_assert_eq((void *)again, gone, "the freed block was not handed out again: the check proves nothing");
    again[0] = kid;
    again[1] = NULL;
    ((void **)r[2])[0] = again;
    memset(&rec, 0, sizeof rec);
    cr_assert_eq(loam_leak_check(h, rec_leak, &rec), NL, "a block reached only through a reused block was "
                 "reported: the block's mark outlived the previous check");
    ((void **)r[2])[0] = NULL;
    loam_free(kid);
    loam_free(again);
    /* free the leaks: none left; then drop r0's root: r0, c0, c2 leak (and l3? freed) */
    for (int i = 0; i < NL; i++)
        loam_free(l[i]);
    memset(&rec, 0, sizeof rec);
    cr_assert_eq(loam_leak_check(h, rec_leak, &rec), 0, "leaks reported after freeing them all");
    cr_assert_eq(rec.n, 0);
    leak_slot = NULL;
    memset(&rec, 0, sizeof rec);
    cr_assert_eq(loam_leak_check(h, rec_leak, &rec), 3, "r0 and what only it reaches leak once its root is cleared");
    for (int i = 0; i < NR; i++)
        loam_free(r[i]);
    cr_assert_eq(gc_stats(h).live_blocks, 0);
    loam_root_remove(h, &leak_slot);
    loam_root_remove_range(h, range);
    free(range);
    loam_heap_destroy(h);
}

/* A generational heap's blocks that survived a collection keep their mark
 * (they are old), also after a switch to manual. The leak check must not
 * take those marks for its own: an old block would pass for reached, and
 * what only it reaches for a leak. */
Test(leak_check, a_generational_heap_made_manual_reports_exactly_its_leaks)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN | LOAM_GENERATIONAL };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    static void **root, *old_lost;
    loam_root_add(h, (void **)&root);
    loam_root_add(h, &old_lost);
    root = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    old_lost = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    cr_assert(root && old_lost);
    loam_gc_collect(h);                           /* both are old now */
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    void *lost_block = old_lost;
    loam_root_remove(h, &old_lost);               /* an old block nothing reaches */
    root[0] = loam_malloc(h, 64);                 /* reached only through the old root */
    cr_assert_not_null(root[0]);
    static leak_rec_t rec;
    size_t count = check_leaks(h, &rec);
    cr_assert_eq(count, 1, "loam_leak_check counted %zu leaks, 1 expected (the old block dropped)", count);
    cr_assert_eq(rec.block[0], lost_block, "reported %p, not the dropped old block %p", rec.block[0], lost_block);
    /* and again: the same answer */
    cr_assert_eq(check_leaks(h, &rec), 1);
    /* back to collected: nothing reachable is lost by the next (minor or major) collections */
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    void **keep_root = root;
    void *kid = root[0];
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 2000; j++)
            cr_assert_not_null(loam_gc_alloc(h, 64, LOAM_ATOMIC));
        loam_gc_collect(h);
    }
    cr_assert_eq(loam_heap_of(keep_root), h);
    cr_assert_eq(root[0], kid);
    cr_assert_eq(gc_stats(h).live_blocks, 2, "live blocks %zu, 2 expected (root and its kid)",
                 gc_stats(h).live_blocks);
    loam_root_remove(h, (void **)&root);
    loam_heap_destroy(h);
}
