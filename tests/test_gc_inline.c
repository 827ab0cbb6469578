/* tests/test_gc_inline.c — loam_gc_alloc_inline (include/loam/inline.h), the
 * collector's allocation fast path compiled into the embedder's code.
 *
 *  - it gives what loam_gc_alloc gives: blocks of the same class (usable
 *    size), of the heap, zero-filled (atomic ones in their first 16 bytes)
 *    also when they come back from the freed-block stack dirty, counted in
 *    the statistics; every request size 0..LOAM_INLINE_MAX and each kind;
 *  - both halves of the fast path serve (a refill's bump range, then the
 *    blocks loam_free gave back), and the two paths mixed hand out no
 *    block twice;
 *  - its blocks are collected as any: a reachable traced list survives
 *    collections intact, and once unreachable its bytes go back;
 *  - what the fast path cannot serve goes to loam_gc_alloc with its errors
 *    and faults: past LOAM_INLINE_MAX (a large block), a bad kind (EINVAL),
 *    a traced block with no trace callback (EINVAL), an allocation inside
 *    a blocking bracket (the fault, even with blocks in the thread's cache),
 *    gc_stress=1 (a collection at every allocation);
 *  - a heap with LOAM_ALIGN_8: requests of 17-24, 33-40 and 49-56 bytes get
 *    blocks of 24, 40 and 56 bytes, 8-byte aligned, by either path, packed
 *    24 bytes apart (a traced block loam_realloc moves too, a conservative
 *    one not); a list of such blocks survives collections (minor and
 *    major) intact, and goes back whole once dropped;
 *  - two threads allocating inline from one heap while they collect it;
 *  - a manual heap: the same blocks, which the program frees. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "gc_util.h"
#include "loam/inline.h"

/* A traced node: a tag, a value and a link. */
#define NODE_TAG 0x11A11A11u
typedef struct node {
    uintptr_t    tag;
    uintptr_t    value;
    struct node *next;
} node_t;

static void trace_node(void *p, loam_tracer_t *t, void *user)
{
    (void)user;
    node_t *n = p;
    if (n->tag == NODE_TAG)
        loam_mark(t, n->next);
}

static loam_heap_t *collected_heap(void)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .trace = trace_node };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

static bool all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

Test(gc_inline, every_small_size_and_kind_gets_loam_gc_allocs_block)
{
    loam_heap_t *h = collected_heap();
    /* No collection while the test holds blocks in locals only. */
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);
    const loam_kind_t kinds[] = { LOAM_CONSERVATIVE, LOAM_ATOMIC, LOAM_TRACED };
    size_t blocks_before = gc_stats(h).live_blocks, made = 0;
    for (size_t k = 0; k < 3; k++) {
        for (size_t n = 0; n <= LOAM_INLINE_MAX; n++) {
            unsigned char *a = loam_gc_alloc(h, n, kinds[k]);
            unsigned char *b = loam_gc_alloc_inline(h, n, kinds[k]);
            cr_assert(a && b, "size %zu kind %d: NULL", n, (int)kinds[k]);
            made += 2;
            cr_assert_neq(a, b);
            cr_assert_eq(loam_heap_of(b), h);
            cr_assert_eq(loam_usable_size(b), loam_usable_size(a),
                         "size %zu kind %d: a block of %zu bytes, loam_gc_alloc's %zu", n, (int)kinds[k],
                         loam_usable_size(b), loam_usable_size(a));
            cr_assert_geq(loam_usable_size(b), n);
            size_t zeroed = kinds[k] == LOAM_ATOMIC ? 16 : loam_usable_size(b);
            cr_assert(all_zero(b, zeroed), "size %zu kind %d: not zero-filled", n, (int)kinds[k]);
            memset(b, 0xee, loam_usable_size(b));   /* the whole block is the caller's */
        }
    }
    cr_assert_eq(gc_stats(h).live_blocks - blocks_before, made, "the statistics miss inline blocks");
    loam_heap_destroy(h);
}

/* Blocks freed by the program go to the thread's cache, and the fast path
 * hands them out again (its second half), zero-filled although they were
 * left dirty; with the bump range's, no block is handed out twice. */
Test(gc_inline, freed_blocks_come_back_zeroed_and_no_block_is_handed_out_twice)
{
    loam_heap_t *h = collected_heap();
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);
    enum { N = 2000 };
    static unsigned char *first[N], *second[N];
    for (size_t i = 0; i < N; i++) {
        first[i] = loam_gc_alloc_inline(h, 48, LOAM_TRACED);
        cr_assert_not_null(first[i]);
        memset(first[i], 0xa5, 48);
    }
    for (size_t i = 0; i < N; i += 2)       /* every other one back to the cache */
        loam_free(first[i]);
    size_t reused = 0;
    for (size_t i = 0; i < N; i++) {
        second[i] = loam_gc_alloc_inline(h, 48, LOAM_TRACED);
        cr_assert_not_null(second[i]);
        cr_assert(all_zero(second[i], 48), "block %zu (%p) handed out dirty", i, (void *)second[i]);
        for (size_t j = 0; j < N; j += 2)
            reused += second[i] == first[j];
        for (size_t j = 1; j < N; j += 2)
            cr_assert_neq(second[i], first[j], "a live block was handed out again");
        memset(second[i], 0x5a, 48);
    }
    cr_assert_gt(reused, 0, "no freed block was handed out again by the fast path");
    for (size_t i = 0; i < N; i++)
        for (size_t j = i + 1; j < N && j < i + 64; j++)
            cr_assert_neq(second[i], second[j]);
    fprintf(stderr, "gc_inline/freed_blocks_come_back: %zu of %d freed blocks handed out again\n",
            reused, N / 2);
    loam_heap_destroy(h);
}

static node_t *list_root;

static node_t *build_list(loam_heap_t *h, size_t n)
{
    node_t *head = NULL;
    for (size_t i = 0; i < n; i++) {
        node_t *c = loam_gc_alloc_inline(h, sizeof *c, LOAM_TRACED);
        cr_assert_not_null(c);
        c->value = i;
        c->next = head;
        c->tag = NODE_TAG;
        head = c;
        list_root = head;               /* a root at every step: collections may come */
    }
    return head;
}

Test(gc_inline, inline_blocks_are_collected_like_any)
{
    loam_heap_t *h = collected_heap();
    list_root = NULL;
    loam_root_add(h, (void **)&list_root);
    size_t live_before = gc_stats(h).live_bytes;
    enum { N = 200000 };
    build_list(h, N);
    /* Garbage in between, to make the heap collect and reuse blocks. */
    for (int i = 0; i < N; i++)
        cr_assert_not_null(loam_gc_alloc_inline(h, 24, LOAM_TRACED));
    loam_gc_collect(h);
    size_t count = 0;
    for (node_t *c = list_root; c; c = c->next, count++)
        cr_assert_eq(c->value, (uintptr_t)(N - 1 - count), "node %zu holds %zu", count, (size_t)c->value);
    cr_assert_eq(count, (size_t)N);
    cr_assert_gt(gc_stats(h).gc_collections, 1, "the test made no collection on its own");
    list_root = NULL;
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_bytes, live_before, "the dropped list was not reclaimed");
    loam_heap_destroy(h);
}

/* The block size a request gets: LOAM_ALIGN_8 takes 24, 40 and 56 bytes for
 * what rounds to them in steps of 8; every other request, and every request
 * without the flag, rounds to 16 up to 128 bytes (the first size classes). */
static size_t expected_block(size_t n, bool align_8)
{
    if (align_8 && gc_align_8_block(n))
        return gc_align_8_block(n);
    return n <= 16 ? 16 : (n + 15) / 16 * 16;
}

Test(gc_inline, a_heap_with_align_8_packs_blocks_of_24_40_and_56_bytes)
{
    for (int align_8 = 0; align_8 < 2; align_8++) {
        loam_config_t cfg = { .mode = LOAM_GC, .trace = trace_node,
                              .flags = LOAM_NO_STACK_SCAN | LOAM_GENERATIONAL | (align_8 ? LOAM_ALIGN_8 : 0) };
        loam_heap_t *h = loam_heap_new(&cfg);
        cr_assert_not_null(h);
        cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);   /* blocks held in locals */
        for (size_t n = 0; n <= 128; n++) {
            unsigned char *a = loam_gc_alloc(h, n, LOAM_TRACED);
            unsigned char *b = loam_gc_alloc_inline(h, n, LOAM_CONSERVATIVE);
            cr_assert(a && b);
            size_t want = expected_block(n, align_8);
            cr_assert_eq(loam_usable_size(a), want, "align_8 %d, %zu bytes: a block of %zu, not %zu", align_8, n,
                         loam_usable_size(a), want);
            cr_assert_eq(loam_usable_size(b), want, "align_8 %d, %zu bytes inline: a block of %zu, not %zu",
                         align_8, n, loam_usable_size(b), want);
            cr_assert_eq((uintptr_t)a % (want % 16 ? 8 : 16), 0);
            cr_assert_eq((uintptr_t)b % (want % 16 ? 8 : 16), 0);
            cr_assert(all_zero(b, want));
        }
        /* loam_realloc moves a traced block as loam_gc_alloc would place it;
         * a conservative one as loam_malloc would (16-byte classes). */
        unsigned char *r = loam_gc_alloc(h, 24, LOAM_TRACED);
        memset(r, 0x5a, 24);
        unsigned char *r2 = loam_realloc(h, r, 40);
        cr_assert_not_null(r2);
        cr_assert_eq(loam_usable_size(r2), expected_block(40, align_8));
        for (int i = 0; i < 24; i++)
            cr_assert_eq(r2[i], 0x5a, "byte %d lost in the move", i);
        unsigned char *c2 = loam_realloc(h, loam_gc_alloc(h, 16, LOAM_CONSERVATIVE), 40);
        cr_assert_not_null(c2);
        cr_assert_eq(loam_usable_size(c2), 48, "align_8 %d: a moved conservative block of %zu bytes", align_8, loam_usable_size(c2));
        /* Consecutive nodes come from one bump range: a node's size apart. */
        node_t *x = loam_gc_alloc_inline(h, sizeof *x, LOAM_TRACED), *y = loam_gc_alloc_inline(h, sizeof *y, LOAM_TRACED);
        cr_assert_eq((char *)y - (char *)x, align_8 ? 24 : 32);
        loam_heap_set_gc_pacing(h, 0, 0);
        /* A list of 24-byte nodes through collections: garbage between,
         * minor collections on the way, a major one at the end. */
        list_root = NULL;
        loam_root_add(h, (void **)&list_root);
        loam_gc_collect(h);                 /* the blocks above were garbage */
        size_t live_before = gc_stats(h).live_bytes;
        enum { N = 100000 };
        build_list(h, N);
        for (int i = 0; i < N; i++)
            cr_assert_not_null(loam_gc_alloc_inline(h, 40, LOAM_TRACED));
        loam_stats_t st = gc_stats(h);
        cr_assert_gt(st.gc_minor_collections, 0, "no minor collection");
        cr_assert_eq(st.live_bytes - live_before >= (size_t)N * sizeof(node_t), true);
        loam_gc_collect(h);
        size_t count = 0;
        for (node_t *c = list_root; c; c = c->next, count++) {
            cr_assert_eq(c->tag, NODE_TAG, "node %zu lost its tag", count);
            cr_assert_eq(c->value, (uintptr_t)(N - 1 - count), "node %zu holds %zu", count, (size_t)c->value);
            cr_assert_eq(loam_usable_size(c), align_8 ? 24 : 32);
        }
        cr_assert_eq(count, (size_t)N);
        cr_assert_eq(gc_stats(h).live_bytes - live_before, (size_t)N * (align_8 ? 24 : 32),
                     "the list's blocks and nothing else stay");
        list_root = NULL;
        loam_gc_collect(h);
        cr_assert_eq(gc_stats(h).live_bytes, live_before, "the dropped list was not reclaimed");
        loam_root_remove(h, (void **)&list_root);
        loam_heap_destroy(h);
    }
}

Test(gc_inline, requests_the_fast_path_cannot_serve_go_to_loam_gc_alloc)
{
    loam_heap_t *h = collected_heap();
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);
    cr_assert_not_null(loam_gc_alloc_inline(h, 32, LOAM_ATOMIC));   /* a cache with blocks */
    unsigned char *big = loam_gc_alloc_inline(h, LOAM_INLINE_MAX + 1, LOAM_CONSERVATIVE);
    cr_assert_not_null(big);
    cr_assert_geq(loam_usable_size(big), (size_t)LOAM_INLINE_MAX + 1);
    cr_assert(all_zero(big, LOAM_INLINE_MAX + 1));
    unsigned char *large = loam_gc_alloc_inline(h, 300 * KiB, LOAM_TRACED);
    cr_assert_not_null(large);
    cr_assert(all_zero(large, 300 * KiB));
    errno = 0;
    cr_assert_null(loam_gc_alloc_inline(h, 32, (loam_kind_t)3), "a kind that is none of the three");
    cr_assert_eq(errno, EINVAL);
    errno = 0;
    cr_assert_null(loam_gc_alloc_inline(h, 32, (loam_kind_t)-1));
    cr_assert_eq(errno, EINVAL);
    loam_heap_destroy(h);

    /* A collected heap without a trace callback has no traced blocks. */
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    cr_assert_not_null(loam_gc_alloc_inline(h, 32, LOAM_CONSERVATIVE));
    errno = 0;
    cr_assert_null(loam_gc_alloc_inline(h, 32, LOAM_TRACED));
    cr_assert_eq(errno, EINVAL);
    loam_heap_destroy(h);
}

static atomic_int faults;
static void count_fault(loam_heap_t *h, const char *message, void *addr, void *user)
{
    (void)h, (void)addr, (void)user;
    if (strstr(message, "between loam_enter_blocking and loam_leave_blocking"))
        atomic_fetch_add(&faults, 1);
}

/* The bracket takes the thread's caches off its slots: the inline path,
 * which reads the slots, finds no block and goes to loam_gc_alloc, which
 * names the fault. */
Test(gc_inline, an_allocation_inside_a_blocking_bracket_is_a_fault)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .trace = trace_node,
                          .error = count_fault };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    for (int i = 0; i < 10; i++)            /* a cache, its range not used up */
        cr_assert_not_null(loam_gc_alloc_inline(h, 32, LOAM_TRACED));
    atomic_store(&faults, 0);
    loam_enter_blocking(h);
    errno = 0;
    cr_assert_null(loam_gc_alloc_inline(h, 32, LOAM_TRACED), "allocated inside the bracket");
    cr_assert_eq(errno, EINVAL);
    loam_leave_blocking(h);
    cr_assert_eq(atomic_load(&faults), 1);
    cr_assert_not_null(loam_gc_alloc_inline(h, 32, LOAM_TRACED), "the cache is back after the bracket");
    loam_heap_destroy(h);
}

Test(gc_inline, gc_stress_collects_at_every_inline_allocation)
{
    loam_heap_t *h = collected_heap();
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 64 * MiB), 0);
    for (int i = 0; i < 100; i++)           /* a cache with a bump range first */
        cr_assert_not_null(loam_gc_alloc_inline(h, 32, LOAM_TRACED));
    cr_assert_eq(loam_option_set("gc_stress", 1), 0);
    loam_gc_collect(h);                     /* empties the thread's cache, as for loam_gc_alloc */
    size_t before = gc_stats(h).gc_collections;
    for (int i = 0; i < 50; i++)
        cr_assert_not_null(loam_gc_alloc_inline(h, 32, LOAM_TRACED));
    size_t collections = gc_stats(h).gc_collections - before;
    cr_assert_eq(loam_option_set("gc_stress", 0), 0);
    cr_assert_eq(collections, 50, "%zu collections for 50 inline allocations at gc_stress=1", collections);
    loam_heap_destroy(h);
}

/* Two threads build lists inline in one heap, each rooted in its own
 * slot, while the heap collects (its pacing and loam_gc_collect): each
 * thread's cache is its own, and every node stays intact. */
#define THREAD_NODES 50000
static node_t *thread_roots[2];
static loam_heap_t *shared_heap;

static void *build_and_check(void *arg)
{
    size_t me = (size_t)(uintptr_t)arg;
    /* Attached before it writes its root slot: a collection stops only
     * attached threads, and reads the slots meanwhile. */
    loam_thread_attach(shared_heap);
    for (int round = 0; round < 4; round++) {
        thread_roots[me] = NULL;
        for (size_t i = 0; i < THREAD_NODES / GC_SAN_DIVISOR; i++) {
            node_t *c = loam_gc_alloc_inline(shared_heap, sizeof *c, LOAM_TRACED);
            if (!c)
                return (void *)"NULL from loam_gc_alloc_inline";
            c->value = i * 2 + me;
            c->next = thread_roots[me];
            c->tag = NODE_TAG;
            thread_roots[me] = c;
            if (i % 10000 == 0)
                loam_gc_collect(shared_heap);
        }
        size_t i = THREAD_NODES / GC_SAN_DIVISOR;
        for (node_t *c = thread_roots[me]; c; c = c->next)
            if (c->value != --i * 2 + me || c->tag != NODE_TAG)
                return (void *)"a node changed";
        if (i != 0)
            return (void *)"nodes missing";
    }
    loam_thread_detach(shared_heap);
    return NULL;
}

Test(gc_inline, two_threads_allocate_inline_while_the_heap_collects, .timeout = 120)
{
    shared_heap = collected_heap();
    loam_root_add(shared_heap, (void **)&thread_roots[0]);
    loam_root_add(shared_heap, (void **)&thread_roots[1]);
    pthread_t t[2];
    for (size_t i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, build_and_check, (void *)(uintptr_t)i), 0);
    for (size_t i = 0; i < 2; i++) {
        void *err;
        pthread_join(t[i], &err);
        cr_assert_null(err, "thread %zu: %s", i, err ? (const char *)err : "");
    }
    cr_assert_gt(gc_stats(shared_heap).gc_collections, 4);
    loam_heap_destroy(shared_heap);
}

/* A manual heap gives loam_gc_alloc's blocks too (its kinds recorded for a
 * later switch to collected): zero-filled, of the heap, freed by the
 * program, and handed out again. */
Test(gc_inline, a_manual_heap_gives_the_same_blocks)
{
    loam_config_t cfg = { .mode = LOAM_MANUAL, .trace = trace_node };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    enum { N = 1000 };
    static node_t *nodes[N];
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < N; i++) {
            nodes[i] = loam_gc_alloc_inline(h, sizeof(node_t), LOAM_TRACED);
            cr_assert_not_null(nodes[i]);
            cr_assert(all_zero((unsigned char *)nodes[i], sizeof(node_t)), "round %d: block %zu dirty", round, i);
            cr_assert_eq(loam_heap_of(nodes[i]), h);
            memset(nodes[i], 0x77, sizeof(node_t));
        }
        cr_assert_eq(gc_stats(h).live_blocks, (size_t)N);
        for (size_t i = 0; i < N; i++)
            loam_free(nodes[i]);
        cr_assert_eq(gc_stats(h).live_blocks, 0);
    }
    cr_assert_eq(loam_heap_mode(h), LOAM_MANUAL);
    cr_assert_eq(gc_stats(h).gc_collections, 0);
    loam_heap_destroy(h);
}
