/* tests/test_gc_finalize.c — finalizers and weak references.
 *
 * Finalizers:
 *  - run exactly once, with the object and the data pointer, in the thread
 *    that collected, before loam_gc_collect returns; the object is freed by a
 *    later collection if still unreachable;
 *  - the finalizers of the objects one collection finds unreachable run in the
 *    order they were set (not allocation or address order);
 *  - everything a finalizable object reaches stays alive and intact until its
 *    finalizer ran (also other finalizable objects);
 *  - resurrection: the finalizer stores the object in a root; it stays usable
 *    with what it reaches, and is never finalized again;
 *  - loam_finalizer_set refuses blocks that are not of the collected heap;
 *    fn NULL removes the finalizer;
 *  - automatic collections run finalizers at the allocation that triggered
 *    them; a finalizer may allocate.
 * Weak references: kept while the target lives, cleared when it dies and
 * before its finalizer runs, never dangling (also after the memory is
 * reused), gc_weak_cleared counts them. A target inside a block (not at its
 * start) is the block's: kept and cleared with it, by a collection or by
 * loam_free of the block, in slabs and large blocks alike; a target in no
 * block of the heap is refused.
 * After a spike (200,000 finalizers or weak references, 500,000 weak fields,
 * then none), the collector's tables for them go back to the OS. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc_util.h"
#include "rss_util.h"

#define NODE_TAG 0xF1A11F1A000000E1ull
typedef struct node {
    uintptr_t    tag;
    uintptr_t    n;
    struct node *kid[];
} node_t;

static void trace_node(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    node_t *o = obj;
    if (o->tag == NODE_TAG)
        for (uintptr_t i = 0; i < o->n; i++)
            loam_mark(t, o->kid[i]);
}

static loam_heap_t *gc_heap(void)
{
    loam_config_t cfg = { 0 };
    cfg.mode = LOAM_GC;
    cfg.flags = LOAM_NO_STACK_SCAN;
    cfg.trace = trace_node;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

static node_t *new_node(loam_heap_t *h, loam_kind_t kind, size_t nkids)
{
    node_t *o = loam_gc_alloc(h, sizeof(node_t) + nkids * sizeof(node_t *), kind);
    cr_assert_not_null(o);
    o->tag = NODE_TAG;
    o->n = nkids;
    return o;
}

static size_t live_blocks(loam_heap_t *h) { return gc_stats(h).live_blocks; }

/* ---- a log of finalizer calls ---------------------------------------------------------- */

#define LOG_MAX 100000
static struct {
    void     *obj;
    void     *data;
    pthread_t thread;
} fin_log[LOG_MAX];
static size_t fin_n;
static bool   in_collect;          /* set around loam_gc_collect by the tests */

static void log_fin(void *obj, void *data)
{
    cr_assert_lt(fin_n, LOG_MAX);
    fin_log[fin_n].obj = obj;
    fin_log[fin_n].data = data;
    fin_log[fin_n].thread = pthread_self();
    fin_n++;
}

static size_t fin_calls_for(void *obj)
{
    size_t k = 0;
    for (size_t i = 0; i < fin_n; i++)
        k += fin_log[i].obj == obj;
    return k;
}

static void collect(loam_heap_t *h)
{
    in_collect = true;
    loam_gc_collect(h);
    in_collect = false;
}

/* ---- exactly once ------------------------------------------------------------------------- */

static loam_heap_t *check_heap;
static size_t check_size;

static void checking_fin(void *obj, void *data)
{
    log_fin(obj, data);
    cr_assert(in_collect, "the finalizer did not run before loam_gc_collect returned");
    cr_assert_eq(loam_heap_of(obj), check_heap, "the object was freed before its finalizer ran");
    cr_assert_eq(gc_check(obj, 0, check_size, 42), (size_t)-1, "the object is damaged in its finalizer");
}

Test(finalizer, runs_exactly_once)
{
    loam_heap_t *h = gc_heap();
    check_heap = h;
    check_size = 500;
    static int data;
    void *p = loam_gc_alloc(h, 500, LOAM_ATOMIC);
    gc_fill(p, 0, 500, 42);
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, p, checking_fin, &data), 0);
    pthread_t me = pthread_self();
    collect(h);
    cr_assert_eq(fin_n, 1, "the finalizer ran %zu times after the collection that found the object dead", fin_n);
    cr_assert_eq(fin_log[0].obj, p);
    cr_assert_eq(fin_log[0].data, &data);
    cr_assert(pthread_equal(fin_log[0].thread, me), "the finalizer ran in another thread");
    for (int i = 0; i < 4; i++)
        collect(h);
    cr_assert_eq(fin_n, 1, "the finalizer ran %zu times", fin_n);
    cr_assert_eq(live_blocks(h), 0, "the finalized object was not freed by the next collections");
    cr_assert_eq(gc_stats(h).gc_finalizers_run, 1);
    loam_heap_destroy(h);
}

Test(finalizer, rooted_object_is_not_finalized)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    fin_n = 0;
    root = new_node(h, LOAM_TRACED, 0);
    cr_assert_eq(loam_finalizer_set(h, root, log_fin, NULL), 0);
    for (int i = 0; i < 3; i++)
        collect(h);
    cr_assert_eq(fin_n, 0, "a reachable object was finalized");
    cr_assert_eq(live_blocks(h), 1);
    void *was = root;
    root = NULL;
    collect(h);
    cr_assert_eq(fin_n, 1);
    cr_assert_eq(fin_log[0].obj, was);
    loam_heap_destroy(h);
}

/* ---- order ------------------------------------------------------------------------------------ */

Test(finalizer, registration_order_within_a_collection)
{
    loam_heap_t *h = gc_heap();
    enum { N = 64 };
    void *obj[N];
    int idx[N];
    static const size_t sizes[] = { 16, 700, 48, 200 * KiB, 96, 3000, 32, 160 };
    for (int i = 0; i < N; i++) {
        obj[i] = loam_gc_alloc(h, sizes[i % 8], i % 3 == 0 ? LOAM_ATOMIC : LOAM_CONSERVATIVE);
        cr_assert_not_null(obj[i]);
        idx[i] = i;
    }
    /* a fixed shuffle: neither allocation nor address order */
    gc_rng_t r = { 12345 };
    for (int i = N - 1; i > 0; i--) {
        int j = (int)gc_rng_below(&r, (size_t)i + 1);
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
    fin_n = 0;
    for (int i = 0; i < N; i++)
        cr_assert_eq(loam_finalizer_set(h, obj[idx[i]], log_fin, (void *)(intptr_t)i), 0);
    collect(h);
    cr_assert_eq(fin_n, N, "%zu of %d finalizers ran", fin_n, N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(fin_log[i].obj, obj[idx[i]],
                     "finalizer #%d ran for the object registered #%ld (registration order expected)", i,
                     (long)(intptr_t)fin_log[i].data);
        cr_assert_eq((intptr_t)fin_log[i].data, i);
    }
    collect(h);
    cr_assert_eq(fin_n, N);
    cr_assert_eq(live_blocks(h), 0);
    loam_heap_destroy(h);
}

/* Setting a finalizer again replaces it: the place in the order is that of
 * the first setting or the last, but it runs once. */
Test(finalizer, set_twice_runs_once)
{
    loam_heap_t *h = gc_heap();
    void *p = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, p, log_fin, (void *)1), 0);
    cr_assert_eq(loam_finalizer_set(h, p, log_fin, (void *)2), 0);
    collect(h);
    collect(h);
    cr_assert_eq(fin_n, 1, "a finalizer set twice ran %zu times", fin_n);
    cr_assert_eq(fin_log[0].data, (void *)2, "the second setting replaces the first");
    loam_heap_destroy(h);
}

/* ---- what a finalizable object reaches stays alive ---------------------------------------- */

static struct {
    node_t        *f;          /* the finalizable conservative node */
    unsigned char *atom;       /* its atomic child, 5000 bytes */
    node_t        *chain;      /* a chain of 100 traced nodes from f */
    loam_weak_t   *weak_f;
    bool           ok, weak_was_null;
} reach;

static void reach_fin(void *obj, void *data)
{
    log_fin(obj, data);
    node_t *f = obj;
    reach.ok = f == reach.f && f->tag == NODE_TAG && f->kid[0] == (node_t *)(reach.atom + 100) &&
               f->kid[1] == reach.chain && gc_check(reach.atom, 0, 5000, 7) == (size_t)-1;
    size_t k = 0;
    for (node_t *x = f->kid[1]; x; x = x->n ? x->kid[0] : NULL, k++)
        reach.ok = reach.ok && x->tag == NODE_TAG;
    reach.ok = reach.ok && k == 100;
    reach.weak_was_null = loam_weak_get(reach.weak_f) == NULL;
}

Test(finalizer, reachable_from_finalizable_stays_alive)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    node_t *f = new_node(h, LOAM_CONSERVATIVE, 2);
    root = f;
    reach.f = f;
    reach.atom = loam_gc_alloc(h, 5000, LOAM_ATOMIC);
    gc_fill(reach.atom, 0, 5000, 7);
    f->kid[0] = (node_t *)(reach.atom + 100);          /* interior */
    node_t *prev = NULL;
    for (int i = 0; i < 100; i++) {
        node_t *x = new_node(h, LOAM_TRACED, prev ? 1 : 0);
        if (prev)
            x->kid[0] = prev;
        prev = x;
        f->kid[1] = x;                                  /* keep the chain reachable while building */
    }
    reach.chain = prev;
    reach.weak_f = loam_weak_new(h, f);
    cr_assert_not_null(reach.weak_f);
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, f, reach_fin, NULL), 0);
    collect(h);
    cr_assert_eq(fin_n, 0);
    size_t all = live_blocks(h);
    root = NULL;
    collect(h);
    cr_assert_eq(fin_n, 1);
    cr_assert(reach.ok, "what the finalizable object reaches was freed or damaged before its finalizer ran");
    cr_assert(reach.weak_was_null, "a weak reference to the object was not cleared before its finalizer ran");
    cr_assert_null(loam_weak_get(reach.weak_f));
    cr_assert_leq(live_blocks(h), all);
    loam_weak_free(reach.weak_f);
    collect(h);
    cr_assert_eq(fin_n, 1);
    cr_assert_eq(live_blocks(h), 0, "%zu blocks left after the finalized object became garbage", live_blocks(h));
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* Two finalizable objects, one reaching the other: whichever finalizer runs
 * first, the other object is intact in it; each runs once; both end freed. */
static node_t *pair_a, *pair_b;
static bool pair_ok = true;

static void pair_fin(void *obj, void *data)
{
    log_fin(obj, data);
    if (obj == pair_a)
        pair_ok = pair_ok && pair_a->tag == NODE_TAG && pair_a->kid[0] == pair_b && pair_b->tag == NODE_TAG &&
                  pair_b->n == 0;
    else
        pair_ok = pair_ok && obj == pair_b && pair_b->tag == NODE_TAG;
}

Test(finalizer, finalizable_reaching_finalizable)
{
    loam_heap_t *h = gc_heap();
    pair_a = new_node(h, LOAM_TRACED, 1);
    pair_b = new_node(h, LOAM_TRACED, 0);
    pair_a->kid[0] = pair_b;
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, pair_b, pair_fin, NULL), 0);
    cr_assert_eq(loam_finalizer_set(h, pair_a, pair_fin, NULL), 0);
    for (int i = 0; i < 4; i++)
        collect(h);
    cr_assert_eq(fin_calls_for(pair_a), 1);
    cr_assert_eq(fin_calls_for(pair_b), 1);
    cr_assert(pair_ok, "an object was damaged before a finalizer that reaches it ran");
    cr_assert_eq(live_blocks(h), 0);
    loam_heap_destroy(h);
}

/* ---- resurrection -------------------------------------------------------------------------- */

static void *resurrect_slot;

static void resurrect_fin(void *obj, void *data)
{
    log_fin(obj, data);
    resurrect_slot = obj;
}

Test(finalizer, resurrection)
{
    loam_heap_t *h = gc_heap();
    resurrect_slot = NULL;
    loam_root_add(h, &resurrect_slot);
    node_t *o = new_node(h, LOAM_CONSERVATIVE, 1);
    unsigned char *payload = loam_gc_alloc(h, 3000, LOAM_ATOMIC);
    gc_fill(payload, 0, 3000, 99);
    o->kid[0] = (node_t *)payload;
    loam_weak_t *w = loam_weak_new(h, o);
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, o, resurrect_fin, NULL), 0);
    collect(h);
    cr_assert_eq(fin_n, 1);
    cr_assert_eq(resurrect_slot, o);
    cr_assert_null(loam_weak_get(w), "the weak reference was not cleared when the target was found dead");
    loam_weak_free(w);
    for (int i = 0; i < 4; i++) {
        collect(h);
        cr_assert_eq(fin_n, 1, "a resurrected object was finalized again");
        cr_assert_eq(live_blocks(h), 2, "the resurrected object or its payload was freed");
        cr_assert(o->tag == NODE_TAG && o->n == 1 && o->kid[0] == (node_t *)payload);
        cr_assert_eq(gc_check(payload, 0, 3000, 99), (size_t)-1);
    }
    /* allocations don't land on it */
    for (int i = 0; i < 1000; i++) {
        void *p = loam_gc_alloc(h, sizeof(node_t) + sizeof(void *), LOAM_CONSERVATIVE);
        cr_assert(p != (void *)o);
    }
    cr_assert_eq(o->tag, NODE_TAG);
    resurrect_slot = NULL;
    collect(h);
    collect(h);
    cr_assert_eq(fin_n, 1);
    cr_assert_eq(live_blocks(h), 0, "the resurrected object was not freed once unreachable again");
    loam_heap_destroy(h);
}

/* ---- loam_finalizer_set arguments ----------------------------------------------------------- */

Test(finalizer, set_refuses_foreign_blocks_and_null_removes)
{
    loam_heap_t *h = gc_heap();
    loam_heap_t *other = gc_heap();
    loam_heap_t *manual = loam_heap_new(NULL);
    void *mine = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    void *theirs = loam_gc_alloc(other, 64, LOAM_CONSERVATIVE);
    void *man = loam_malloc(manual, 64);
    void *libc = malloc(64);
    int local;
    cr_assert_eq(loam_finalizer_set(h, theirs, log_fin, NULL), -1, "a block of another heap accepted");
    cr_assert_eq(loam_finalizer_set(h, man, log_fin, NULL), -1, "a block of a manual heap accepted");
    cr_assert_eq(loam_finalizer_set(manual, man, log_fin, NULL), -1, "a manual heap accepted a finalizer");
    cr_assert_eq(loam_finalizer_set(h, libc, log_fin, NULL), -1, "a glibc block accepted");
    cr_assert_eq(loam_finalizer_set(h, &local, log_fin, NULL), -1, "a stack address accepted");
    cr_assert_eq(loam_finalizer_set(h, NULL, log_fin, NULL), -1, "NULL accepted");
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, mine, log_fin, NULL), 0);
    cr_assert_eq(loam_finalizer_set(h, mine, NULL, NULL), 0);      /* removed */
    collect(h);
    collect(h);
    cr_assert_eq(fin_n, 0, "a removed finalizer ran");
    cr_assert_eq(live_blocks(h), 0);
    free(libc);
    loam_free(man);
    loam_heap_destroy(manual);
    loam_heap_destroy(other);
    loam_heap_destroy(h);
}

/* A finalizer set while the heap was collected outlives a switch to manual
 * and runs after the switch back. Removing it meanwhile (an embedder closing
 * its resource by hand) must take: else it runs for a resource already
 * closed. */
Test(finalizer, null_removes_while_the_heap_is_manual)
{
    loam_heap_t *h = gc_heap();
    static void *slot;
    loam_root_add(h, &slot);
    void *kept = new_node(h, LOAM_TRACED, 0);
    void *removed = new_node(h, LOAM_TRACED, 0);
    slot = kept;
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, kept, log_fin, NULL), 0);
    cr_assert_eq(loam_finalizer_set(h, removed, log_fin, NULL), 0);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    cr_assert_eq(loam_finalizer_set(h, removed, NULL, NULL), 0, "removal refused while manual (errno %d)", errno);
    cr_assert_eq(loam_finalizer_set(h, removed, log_fin, NULL), -1, "a finalizer set while manual");
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    slot = NULL;
    collect(h);
    collect(h);
    cr_assert_eq(fin_calls_for(removed), 0, "a finalizer removed while manual ran");
    cr_assert_eq(fin_calls_for(kept), 1, "the finalizer kept across the switches did not run once");
    /* a heap never collected has no finalizer to remove: nothing to do */
    loam_config_t cfg = { 0 };
    loam_heap_t *manual = loam_heap_new(&cfg);
    void *man = loam_malloc(manual, 64);
    cr_assert_eq(loam_finalizer_set(manual, man, NULL, NULL), 0);
    cr_assert_eq(loam_finalizer_set(manual, NULL, NULL, NULL), -1, "NULL accepted");
    loam_root_remove(h, &slot);
    loam_heap_destroy(manual);
    loam_heap_destroy(h);
}

/* ---- loam_finalize_all: shutdown ------------------------------------------------------------ */

/* A finalizer that sets one on a fresh object, the first two times. */
static loam_heap_t *chain_heap;
static int chain_left;

static void fin_then_set_another(void *obj, void *data)
{
    log_fin(obj, data);
    if (chain_left-- > 0) {
        void *fresh = new_node(chain_heap, LOAM_TRACED, 0);
        cr_assert_eq(loam_finalizer_set(chain_heap, fresh, fin_then_set_another, (void *)(uintptr_t)9), 0);
    }
}

Test(finalizer, finalize_all_runs_every_finalizer_once_in_order)
{
    loam_heap_t *h = gc_heap();
    chain_heap = h;
    static void *slot;
    loam_root_add(h, &slot);
    enum { N = 40 };
    node_t *obj[N];
    for (int i = 0; i < N; i++)
        obj[i] = new_node(h, LOAM_TRACED, 0);
    slot = obj[7];                                  /* reachable ones are finalized too */
    fin_n = 0;
    chain_left = 2;
    for (int i = N - 1; i >= 0; i--)                /* set in reverse: the order to check */
        cr_assert_eq(loam_finalizer_set(h, obj[i], i == 0 ? fin_then_set_another : log_fin,
                                        (void *)(uintptr_t)i), 0);
    cr_assert_eq(loam_finalizer_set(h, obj[5], NULL, NULL), 0);   /* removed: never runs */
    size_t ran = loam_finalize_all(h);
    cr_assert_eq(ran, (size_t)N - 1 + 2, "ran %zu", ran);
    cr_assert_eq(fin_n, (size_t)N - 1 + 2);
    size_t k = 0;
    for (int i = N - 1; i >= 0; i--) {
        if (i == 5)
            continue;
        cr_assert_eq(fin_log[k].obj, obj[i], "call %zu: not in the order set", k);
        cr_assert_eq(fin_log[k].data, (void *)(uintptr_t)i);
        k++;
    }
    cr_assert_eq(fin_log[N - 1].data, (void *)(uintptr_t)9, "a finalizer set by a finalizer did not run");
    cr_assert_eq(fin_log[N].data, (void *)(uintptr_t)9);
    cr_assert_eq(obj[7]->tag, NODE_TAG, "a reachable object was freed");
    cr_assert_eq(loam_finalize_all(h), 0, "a finalizer ran twice");
    collect(h);
    collect(h);
    cr_assert_eq(fin_n, (size_t)N - 1 + 2, "a collection ran a finalizer finalize_all had run");
    cr_assert_eq(live_blocks(h), 1, "the unreachable objects were not freed by the collections after");
    loam_root_remove(h, &slot);
    loam_heap_destroy(h);
}

/* A finalizer run by loam_finalize_all that frees another object waiting
 * in the same round cancels that one's finalizer, as within a collection. */
static void *free_me_next;

static void fin_frees_the_next(void *obj, void *data)
{
    log_fin(obj, data);
    if (free_me_next) {
        loam_free(free_me_next);
        free_me_next = NULL;
    }
}

Test(finalizer, finalize_all_a_finalizer_that_frees_a_waiting_object_cancels_it)
{
    loam_heap_t *h = gc_heap();
    void *a = new_node(h, LOAM_TRACED, 0), *b = new_node(h, LOAM_TRACED, 0);
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, a, fin_frees_the_next, NULL), 0);
    cr_assert_eq(loam_finalizer_set(h, b, log_fin, NULL), 0);
    free_me_next = b;
    cr_assert_eq(loam_finalize_all(h), 1, "the freed object's finalizer ran too");
    cr_assert_eq(fin_calls_for(a), 1);
    cr_assert_eq(fin_calls_for(b), 0);
    loam_heap_destroy(h);
}

Test(finalizer, finalize_all_in_a_manual_heap_and_one_never_collected)
{
    loam_heap_t *h = gc_heap();
    void *o = new_node(h, LOAM_TRACED, 0);
    fin_n = 0;
    cr_assert_eq(loam_finalizer_set(h, o, log_fin, NULL), 0);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    cr_assert_eq(loam_heap_mode(h), LOAM_MANUAL);
    cr_assert_eq(loam_finalize_all(h), 1);
    cr_assert_eq(fin_calls_for(o), 1);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    cr_assert_eq(loam_heap_mode(h), LOAM_GC);
    collect(h);
    cr_assert_eq(fin_calls_for(o), 1, "run again after the switch back");
    loam_heap_destroy(h);
    loam_heap_t *manual = loam_heap_new(NULL);
    cr_assert_eq(loam_heap_mode(manual), LOAM_MANUAL);
    cr_assert_eq(loam_finalize_all(manual), 0);
    cr_assert_eq(loam_finalize_all(NULL), 0);
    cr_assert_eq(loam_heap_mode(NULL), LOAM_MANUAL);
    loam_heap_destroy(manual);
}

/* ---- automatic collections, allocation inside a finalizer ------------------------------------ */

static unsigned char *seen_fin;
static size_t seen_twice;

static void index_fin(void *obj, void *data)
{
    (void)obj;
    size_t i = (size_t)(uintptr_t)data;
    if (seen_fin[i])
        seen_twice++;
    seen_fin[i] = 1;
    fin_n++;
}

Test(finalizer, automatic_collections_run_finalizers, .timeout = 120)
{
    loam_heap_t *h = gc_heap();
    size_t n = 300000 / GC_SAN_DIVISOR;
    seen_fin = calloc(n, 1);
    seen_twice = 0;
    fin_n = 0;
    for (size_t i = 0; i < n; i++) {
        void *p = loam_gc_alloc(h, 64, i % 2 ? LOAM_ATOMIC : LOAM_CONSERVATIVE);
        cr_assert_not_null(p);
        cr_assert_eq(loam_finalizer_set(h, p, index_fin, (void *)(uintptr_t)i), 0);
    }
    size_t during = fin_n;
    cr_assert_gt(gc_stats(h).gc_collections, 0, "no automatic collection for %zu KiB of garbage", n * 64 / KiB);
    cr_assert_gt(during, 0, "automatic collections ran no finalizer");
    loam_gc_collect(h);
    loam_gc_collect(h);
    cr_assert_eq(seen_twice, 0, "%zu objects finalized twice", seen_twice);
    cr_assert_eq(fin_n, n, "%zu of %zu finalizers ran", fin_n, n);
    for (size_t i = 0; i < n; i++)
        cr_assert(seen_fin[i], "object %zu never finalized", i);
    cr_assert_eq(gc_stats(h).gc_finalizers_run, n);
    cr_assert_eq(live_blocks(h), 0);
    free(seen_fin);
    loam_heap_destroy(h);
}

static loam_heap_t *alloc_heap;
static void *alloc_slot;

static void allocating_fin(void *obj, void *data)
{
    log_fin(obj, data);
    node_t *x = loam_gc_alloc(alloc_heap, sizeof(node_t) + sizeof(void *), LOAM_TRACED);
    cr_assert_not_null(x, "allocation inside a finalizer failed");
    x->tag = NODE_TAG;
    x->n = 0;
    alloc_slot = x;
}

Test(finalizer, finalizer_may_allocate)
{
    loam_heap_t *h = gc_heap();
    alloc_heap = h;
    alloc_slot = NULL;
    loam_root_add(h, &alloc_slot);
    fin_n = 0;
    void *p = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    cr_assert_eq(loam_finalizer_set(h, p, allocating_fin, NULL), 0);
    collect(h);
    cr_assert_eq(fin_n, 1);
    cr_assert_not_null(alloc_slot);
    collect(h);
    cr_assert_eq(live_blocks(h), 1, "the block made in the finalizer (rooted) must be the only one left");
    cr_assert_eq(((node_t *)alloc_slot)->tag, NODE_TAG);
    loam_heap_destroy(h);
}

/* ---- weak references ------------------------------------------------------------------------- */

Test(weak, kept_while_target_lives_cleared_when_it_dies)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    node_t *t = new_node(h, LOAM_TRACED, 0);
    root = t;
    loam_weak_t *w = loam_weak_new(h, t);
    cr_assert_not_null(w);
    cr_assert_eq(loam_weak_get(w), t);
    for (int i = 0; i < 3; i++) {
        collect(h);
        cr_assert_eq(loam_weak_get(w), t, "weak reference lost while the target is alive");
        cr_assert_eq(t->tag, NODE_TAG);
    }
    cr_assert_eq(gc_stats(h).gc_weak_cleared, 0);
    root = NULL;
    collect(h);
    cr_assert_null(loam_weak_get(w), "weak reference not cleared after its target died");
    cr_assert_eq(gc_stats(h).gc_weak_cleared, 1);
    collect(h);
    cr_assert_null(loam_weak_get(w));
    cr_assert_eq(gc_stats(h).gc_weak_cleared, 1, "a cleared weak reference counted again");
    loam_weak_free(w);
    collect(h);
    cr_assert_eq(live_blocks(h), 0, "a weak reference kept its target alive");
    loam_heap_destroy(h);
}

Test(weak, never_dangle)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    enum { N = 600 };
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, N);
    root = holder;
    void *target[N];
    loam_weak_t *w[N];
    size_t kept = 0;
    for (int i = 0; i < N; i++) {
        size_t size = i % 50 == 0 ? 150 * KiB : 16 + (size_t)(i % 20) * 24;
        loam_kind_t kind = (loam_kind_t)(i % 3);
        target[i] = loam_gc_alloc(h, size, kind);
        cr_assert_not_null(target[i]);
        if (kind == LOAM_TRACED) {
            ((node_t *)target[i])->tag = NODE_TAG;
            ((node_t *)target[i])->n = 0;
        }
        if (i % 3 == 1) {
            holder->kid[i] = target[i];
            kept++;
        }
        w[i] = loam_weak_new(h, target[i]);
        cr_assert_not_null(w[i]);
    }
    /* weak references to the same target */
    loam_weak_t *dup = loam_weak_new(h, target[0]);
    loam_weak_t *dup_kept = loam_weak_new(h, target[1]);
    collect(h);
    for (int i = 0; i < N; i++) {
        void *g = loam_weak_get(w[i]);
        if (i % 3 == 1)
            cr_assert_eq(g, target[i], "weak ref %d to a live target changed to %p", i, g);
        else
            cr_assert_null(g, "weak ref %d to a dead target still gives %p", i, g);
    }
    cr_assert_null(loam_weak_get(dup));
    cr_assert_eq(loam_weak_get(dup_kept), target[1]);
    size_t cleared = gc_stats(h).gc_weak_cleared;
    cr_assert(cleared == N - kept || cleared == N - kept + 1, "gc_weak_cleared %zu, %zu targets (%zu references) died",
              cleared, N - kept, N - kept + 1);
    /* reuse the dead targets' memory: the cleared references stay NULL */
    for (int i = 0; i < 4 * N; i++) {
        size_t size = i % 50 == 0 ? 150 * KiB : 16 + (size_t)(i % 20) * 24;
        void *p = loam_gc_alloc(h, size, (loam_kind_t)(i % 3));
        cr_assert_not_null(p);
    }
    for (int i = 0; i < N; i++)
        if (i % 3 != 1)
            cr_assert_null(loam_weak_get(w[i]), "cleared weak ref %d came back", i);
    /* drop the rest, free some references before their target dies */
    for (int i = 0; i < N; i += 7) {
        loam_weak_free(w[i]);
        w[i] = NULL;
    }
    root = NULL;
    collect(h);
    for (int i = 0; i < N; i++)
        if (w[i]) {
            cr_assert_null(loam_weak_get(w[i]));
            loam_weak_free(w[i]);
        }
    cr_assert_null(loam_weak_get(dup_kept));
    loam_weak_free(dup);
    loam_weak_free(dup_kept);
    loam_heap_destroy(h);
}

/* ---- weak fields (loam_mark_weak) ----------------------------------------------------------- */

#define WNODE_TAG 0x3EAF1E1D00000057ull
typedef struct wnode {
    uintptr_t     tag;
    struct wnode *next;                 /* strong */
    void         *keep;                 /* strong */
    void         *weak;                 /* weak: loam_mark_weak */
} wnode_t;

static void trace_wnode(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    wnode_t *w = obj;
    if (w->tag != WNODE_TAG)
        return;
    loam_mark(t, w->next);
    loam_mark(t, w->keep);
    loam_mark_weak(t, &w->weak);
}

static loam_heap_t *wheap(unsigned flags)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN | flags, .trace = trace_wnode };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

static wnode_t *new_wnode(loam_heap_t *h)
{
    wnode_t *w = loam_gc_alloc(h, sizeof *w, LOAM_TRACED);
    cr_assert_not_null(w);
    w->tag = WNODE_TAG;
    return w;
}

/* A list of n holders from *root; holder i's weak field names target i, an
 * object of its own, which only holders with i % keep_every == 0 keep too. */
static void weak_list(loam_heap_t *h, void **root, size_t n, size_t keep_every)
{
    wnode_t *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        wnode_t *holder = new_wnode(h);
        wnode_t *target = new_wnode(h);
        holder->weak = target;
        if (i % keep_every == 0)
            holder->keep = target;
        if (prev)
            prev->next = holder;            /* both fresh: no barrier needed */
        else
            *root = holder;
        prev = holder;
    }
}

static void check_weak_list(void *root, size_t n, size_t keep_every)
{
    size_t i = 0;
    for (wnode_t *w = root; w; w = w->next, i++) {
        if (i % keep_every == 0) {
            cr_assert_eq(w->weak, w->keep, "holder %zu: the weak field of a live target changed", i);
            cr_assert_eq(((wnode_t *)w->weak)->tag, WNODE_TAG, "holder %zu: its live target was freed", i);
        } else {
            cr_assert_null(w->weak, "holder %zu: the weak field of a dead target was not cleared", i);
        }
    }
    cr_assert_eq(i, n);
}

Test(weak, fields_cleared_when_their_targets_die)
{
    loam_heap_t *h = wheap(0);
    static void *root;
    loam_root_add(h, &root);
    enum { N = 1000, EVERY = 3 };
    weak_list(h, &root, N, EVERY);
    /* At the head, a holder whose weak field is no block of the heap: it
     * stays as it is. */
    static char outside[64];
    wnode_t *head = new_wnode(h);
    head->weak = outside + 8;
    head->next = root;
    root = head;
    size_t cleared_before = gc_stats(h).gc_weak_cleared;
    collect(h);
    cr_assert_eq(head->weak, outside + 8, "a value outside the heap was cleared");
    check_weak_list(head->next, N, EVERY);
    loam_stats_t st = gc_stats(h);
    size_t dead = N - (N + EVERY - 1) / EVERY;
    cr_assert_eq(st.gc_weak_cleared - cleared_before, dead, "weak_cleared counted %zu, %zu died",
                 st.gc_weak_cleared - cleared_before, dead);
    cr_assert_eq(st.live_blocks, 1 + N + (N - dead), "dead targets not freed: %zu live", st.live_blocks);
    collect(h);                             /* nothing more to clear */
    cr_assert_eq(gc_stats(h).gc_weak_cleared - cleared_before, dead);
    check_weak_list(head->next, N, EVERY);
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

Test(weak, fields_with_interior_values)
{
    loam_heap_t *h = wheap(0);
    static void *root;
    loam_root_add(h, &root);
    wnode_t *a = new_wnode(h), *b = new_wnode(h), *live = new_wnode(h), *dead = new_wnode(h);
    a->next = b;
    a->keep = live;
    a->weak = (char *)live + 8;             /* inside a live block: kept as it is */
    b->weak = (char *)dead + 8;             /* inside a dead one: cleared */
    root = a;
    collect(h);
    cr_assert_eq(a->weak, (char *)live + 8);
    cr_assert_null(b->weak);
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

Test(weak, fields_cleared_by_parallel_marking, .timeout = 120)
{
    cr_assert_eq(loam_option_set("gc_markers", 2), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    loam_heap_t *h = wheap(LOAM_PARALLEL_MARK);
    static void *root;
    loam_root_add(h, &root);
    enum { N = 40000, EVERY = 3 };
    weak_list(h, &root, N, EVERY);
    for (int round = 0; round < 5; round++) {
        collect(h);
        check_weak_list(root, N, EVERY);
    }
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* Generational: an old holder's weak field given a young target (through
 * the barrier) is cleared by the minor collection that finds the target
 * dead, and kept by one that finds it alive. */
Test(weak, fields_of_old_objects_in_minor_collections)
{
    cr_assert_eq(loam_option_set("gc_young_min", 32 * 1024), 0);
    loam_heap_t *h = wheap(LOAM_GENERATIONAL);
    static void *root;
    loam_root_add(h, &root);
    wnode_t *old = new_wnode(h);
    old->next = new_wnode(h);
    root = old;
    collect(h);                             /* major: both old now */
    wnode_t *old2 = old->next;
    wnode_t *young_dead = new_wnode(h), *young_live = new_wnode(h);
    old->weak = young_dead;
    loam_write_barrier(&old->weak);
    old2->weak = young_live;
    loam_write_barrier(&old2->weak);
    old2->keep = young_live;
    loam_write_barrier(&old2->keep);
    until_a_minor_collection(h);
    cr_assert_null(old->weak, "a minor collection left an old object's weak field to a dead young target");
    cr_assert_eq(old2->weak, young_live, "a minor collection cleared a weak field to a live target");
    cr_assert_eq(young_live->tag, WNODE_TAG);
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* A target with a finalizer: its holders' weak fields are cleared before
 * it runs (it cannot be reached through them, as with loam_weak_new). */
static wnode_t *fin_holder;
static bool field_clear_when_finalized;

static void check_holder_fin(void *obj, void *data)
{
    (void)obj, (void)data;
    field_clear_when_finalized = fin_holder->weak == NULL;
}

Test(weak, fields_cleared_before_finalizers_run)
{
    loam_heap_t *h = wheap(0);
    static void *root;
    loam_root_add(h, &root);
    fin_holder = new_wnode(h);
    root = fin_holder;
    wnode_t *target = new_wnode(h);
    fin_holder->weak = target;
    cr_assert_eq(loam_finalizer_set(h, target, check_holder_fin, NULL), 0);
    field_clear_when_finalized = false;
    collect(h);
    cr_assert(field_clear_when_finalized, "the finalizer ran with the weak field still set");
    cr_assert_null(fin_holder->weak);
    /* A holder alive only through a finalizable object (until its finalizer
     * ran): its weak field to an object nothing else reaches is cleared. */
    wnode_t *fz = new_wnode(h);
    wnode_t *inner = new_wnode(h);
    fz->next = inner;
    inner->weak = new_wnode(h);
    cr_assert_eq(loam_finalizer_set(h, fz, log_fin, NULL), 0);
    fin_n = 0;
    inner = NULL;
    fz = NULL;
    collect(h);
    cr_assert_eq(fin_n, 1);
    cr_assert_null(((wnode_t *)fin_log[0].obj)->next->weak,
                   "a weak field met while marking from a finalizable object was left set");
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* Two finalizable objects found dead by one collection: Z reaches a holder
 * whose weak field names X. The holder's field is met only while marking
 * from the finalizable objects, after X was marked to wait for its own
 * finalizer: it is cleared all the same, so that Z's finalizer does not
 * find X (finalized, or about to be) through it. */
static wnode_t *fz_holder;
static bool fz_field_clear;

static void z_fin(void *obj, void *data)
{
    (void)obj, (void)data;
    fz_field_clear = fz_holder->weak == NULL;
}

Test(weak, fields_to_objects_waiting_for_their_finalizer_are_cleared)
{
    loam_heap_t *h = wheap(0);
    wnode_t *z = new_wnode(h), *x = new_wnode(h);
    fz_holder = new_wnode(h);
    z->next = fz_holder;
    fz_holder->weak = (char *)x + 8;                /* interior: stands for x's block */
    cr_assert_eq(loam_finalizer_set(h, z, z_fin, NULL), 0);
    cr_assert_eq(loam_finalizer_set(h, x, log_fin, NULL), 0);
    fz_field_clear = false;
    fin_n = 0;
    z = x = NULL;
    collect(h);
    cr_assert_eq(fin_n, 1, "x's finalizer ran %zu times", fin_n);
    cr_assert(fz_field_clear, "z's finalizer found x through a weak field");
    loam_heap_destroy(h);
}

/* loam_leak_check marks as a collection does, and frees nothing: it clears
 * no weak field either. */
Test(weak, fields_left_by_the_leak_check)
{
    loam_config_t cfg = { .mode = LOAM_MANUAL, .flags = LOAM_NO_STACK_SCAN, .trace = trace_wnode };
    loam_heap_t *h = loam_heap_new(&cfg);
    static void *root;
    loam_root_add(h, &root);
    wnode_t *holder = new_wnode(h);
    wnode_t *target = new_wnode(h);
    holder->weak = target;
    root = holder;
    cr_assert_eq(loam_leak_check(h, NULL, NULL), 1, "the unreachable target is the one leak");
    cr_assert_eq(holder->weak, target, "the leak check cleared a weak field");
    loam_free(target);
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* ---- loam_free, realloc, heap destroy ------------------------------------------------------------- */

Test(finalizer, loam_free_drops_finalizer_and_clears_weak)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    fin_n = 0;
    void *p = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    root = p;
    cr_assert_eq(loam_finalizer_set(h, p, log_fin, NULL), 0);
    loam_weak_t *w = loam_weak_new(h, p);
    root = NULL;
    loam_free(p);
    cr_assert_null(loam_weak_get(w), "a weak reference to a freed block still points at it");
    /* the next block at that address is someone else */
    void *q[64];
    for (int i = 0; i < 64; i++)
        q[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    cr_assert_null(loam_weak_get(w));
    collect(h);
    collect(h);
    cr_assert_eq(fin_n, 0, "the finalizer of a freed block ran (for the block now at its address?)");
    cr_assert_null(loam_weak_get(w));
    loam_weak_free(w);
    (void)q;
    loam_heap_destroy(h);
}

/* One collection finds A, B and C dead; A's finalizer runs first (set
 * first), frees B and removes C's finalizer. Both were queued already by
 * that collection: they must not run (B's would run on a freed block, here
 * handed out again to a fresh object). */
static loam_heap_t *cancel_heap;
static void *cancel_b, *cancel_c, *cancel_fresh;

static void cancelling_fin(void *obj, void *data)
{
    log_fin(obj, data);
    loam_free(cancel_b);
    cr_assert_eq(loam_finalizer_set(cancel_heap, cancel_c, NULL, NULL), 0);
    /* B's block is free: the next block of its size is likely that one */
    cancel_fresh = loam_gc_alloc(cancel_heap, 64, LOAM_ATOMIC);
    cr_assert_not_null(cancel_fresh);
}

static GC_NOINLINE void make_cancel_trio(loam_heap_t *h)
{
    void *a = loam_gc_alloc(h, 64, LOAM_ATOMIC);
    cancel_b = loam_gc_alloc(h, 64, LOAM_ATOMIC);
    cancel_c = loam_gc_alloc(h, 64, LOAM_ATOMIC);
    cr_assert_eq(loam_finalizer_set(h, a, cancelling_fin, (void *)1), 0);
    cr_assert_eq(loam_finalizer_set(h, cancel_b, log_fin, (void *)2), 0);
    cr_assert_eq(loam_finalizer_set(h, cancel_c, log_fin, (void *)3), 0);
}

Test(finalizer, free_or_removal_inside_a_finalizer_cancels_a_queued_one)
{
    loam_heap_t *h = gc_heap();
    cancel_heap = h;
    fin_n = 0;
    make_cancel_trio(h);
    collect(h);
    cr_assert_eq(fin_n, 1, "%zu finalizers ran: one freed (or removed) by the first still ran", fin_n);
    cr_assert_eq(fin_log[0].data, (void *)1);
    cr_assert_eq(gc_stats(h).gc_finalizers_run, 1);
    collect(h);
    cr_assert_eq(fin_n, 1);
    /* the fresh block (maybe at B's address) is garbage now, as C is */
    cr_assert_eq(live_blocks(h), 0);
    loam_heap_destroy(h);
}

/* loam_heap_destroy from inside one of the heap's finalizers is a fault,
 * and ignored: the collector runs the next finalizers of the batch, and
 * the allocation or loam_gc_collect that ran them goes on with the heap
 * (it crashed on the freed state). */
static loam_heap_t *destroying_heap;
static size_t destroy_faults;

static void count_fault(loam_heap_t *h, const char *message, void *addr, void *user)
{
    (void)user;
    cr_assert_eq(h, destroying_heap);
    cr_assert_eq(addr, (void *)h);
    cr_assert_not_null(strstr(message, "loam_heap_destroy inside"), "message: %s", message);
    destroy_faults++;
}

static void destroying_fin(void *obj, void *data)
{
    log_fin(obj, data);
    loam_heap_destroy(destroying_heap);
}

static GC_NOINLINE void make_destroying(loam_heap_t *h)
{
    for (uintptr_t i = 0; i < 3; i++)
        cr_assert_eq(loam_finalizer_set(h, loam_gc_alloc(h, 64, LOAM_ATOMIC),
                                        i == 0 ? destroying_fin : log_fin, (void *)i), 0);
}

Test(finalizer, heap_destroy_inside_its_finalizer_is_a_fault)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .error = count_fault };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    destroying_heap = h;
    destroy_faults = 0;
    fin_n = 0;
    make_destroying(h);
    loam_gc_collect(h);
    cr_assert_eq(destroy_faults, 1);
    cr_assert_eq(fin_n, 3, "%zu finalizers ran, 3 expected", fin_n);
    void *p = loam_gc_alloc(h, 64, LOAM_ATOMIC);     /* the heap still works */
    cr_assert_eq(loam_heap_of(p), h);
    loam_gc_collect(h);
    cr_assert_eq(live_blocks(h), 0);
    loam_heap_destroy(h);                            /* outside: fine */
    cr_assert_eq(destroy_faults, 1);
}

Test(finalizer, realloc_never_leaves_finalizer_or_weak_on_the_old_address)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    fin_n = 0;
    void *p = loam_malloc(h, 64);
    root = p;
    cr_assert_eq(loam_finalizer_set(h, p, log_fin, NULL), 0);
    loam_weak_t *w = loam_weak_new(h, p);
    void *p2 = loam_realloc(h, p, 64 * KiB);             /* moves */
    cr_assert_not_null(p2);
    root = p2;
    cr_assert_neq(p2, p);
    void *g = loam_weak_get(w);
    cr_assert(g == NULL || g == p2, "after realloc a weak reference gives %p (old block %p, new %p)", g, p, p2);
    /* other blocks take the old address, and die */
    for (int i = 0; i < 64; i++) {
        void *other = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
        cr_assert_not_null(other);
    }
    collect(h);
    collect(h);
    for (size_t i = 0; i < fin_n; i++)
        cr_assert_eq(fin_log[i].obj, p2, "a finalizer ran for %p, an unrelated block at the realloc'ed block's old address",
                     fin_log[i].obj);
    g = loam_weak_get(w);
    cr_assert(g == NULL || g == p2, "a weak reference gives %p (old block %p, new %p)", g, p, p2);
    loam_weak_free(w);
    loam_heap_destroy(h);
}

Test(weak, outlive_their_heap)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    root = loam_gc_alloc(h, 64, LOAM_ATOMIC);
    loam_weak_t *w = loam_weak_new(h, root);
    cr_assert_eq(loam_weak_get(w), root);
    loam_heap_destroy(h);
    cr_assert_null(loam_weak_get(w), "a weak reference into a destroyed heap dangles");
    loam_weak_free(w);
}

/* ---- weak references to addresses inside a block ------------------------------------------------ */

#define WEAK_SLAB_SIZE  ((size_t)64)
#define WEAK_LARGE_SIZE (400 * KiB)   /* past the default mmap threshold: a mapping of its own */

static char *weak_target_block(loam_heap_t *h, size_t size)
{
    char *b = loam_gc_alloc(h, size, LOAM_ATOMIC);
    cr_assert_not_null(b);
    return b;
}

static void interior_ref_cleared_by_free(size_t size)
{
    loam_heap_t *h = gc_heap();
    char *b = weak_target_block(h, size);
    char *inside = b + size / 2 + 4;
    loam_weak_t *w = loam_weak_new(h, inside);
    cr_assert_not_null(w);
    cr_assert_eq(loam_weak_get(w), inside);
    loam_free(b);
    void *g = loam_weak_get(w);
    cr_assert_null(g, "a weak reference to %p, inside the freed block %p, still gives %p", (void *)inside,
                   (void *)b, g);
    /* the blocks that take the freed one's place are someone else's */
    for (int i = 0; i < 8; i++)
        weak_target_block(h, size);
    cr_assert_null(loam_weak_get(w));
    collect(h);
    cr_assert_null(loam_weak_get(w));
    loam_weak_free(w);
    loam_heap_destroy(h);
}

Test(weak, interior_target_of_a_slab_block_cleared_by_free)
{
    interior_ref_cleared_by_free(WEAK_SLAB_SIZE);
}

Test(weak, interior_target_of_a_large_block_cleared_by_free)
{
    interior_ref_cleared_by_free(WEAK_LARGE_SIZE);
}

static void interior_refs_live_and_die_with_their_block(size_t size)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    char *b = weak_target_block(h, size);
    root = b;
    char *inside = b + size / 2 + 4, *last = b + size - 1;
    loam_weak_t *w_inside = loam_weak_new(h, inside);
    loam_weak_t *w_last = loam_weak_new(h, last);
    cr_assert_not_null(w_inside);
    cr_assert_not_null(w_last);
    for (int i = 0; i < 3; i++) {
        collect(h);
        cr_assert_eq(loam_weak_get(w_inside), inside, "a weak reference inside a live block was lost");
        cr_assert_eq(loam_weak_get(w_last), last, "a weak reference to a live block's last byte was lost");
    }
    cr_assert_eq(gc_stats(h).gc_weak_cleared, 0);
    root = NULL;
    collect(h);
    cr_assert_null(loam_weak_get(w_inside), "a weak reference inside a dead block was not cleared");
    cr_assert_null(loam_weak_get(w_last), "a weak reference to a dead block's last byte was not cleared");
    cr_assert_eq(gc_stats(h).gc_weak_cleared, 2);
    loam_weak_free(w_inside);
    loam_weak_free(w_last);
    collect(h);
    cr_assert_eq(live_blocks(h), 0, "a weak reference inside a block kept it alive");
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

Test(weak, interior_targets_of_a_slab_block_live_and_die_with_it)
{
    interior_refs_live_and_die_with_their_block(WEAK_SLAB_SIZE);
}

Test(weak, interior_targets_of_a_large_block_live_and_die_with_it)
{
    interior_refs_live_and_die_with_their_block(WEAK_LARGE_SIZE);
}

static void refs_into_one_block_cleared_by_one_free(size_t size)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    char *b = weak_target_block(h, size);
    char *neighbour = weak_target_block(h, size);
    root = neighbour;
    loam_weak_t *at_start = loam_weak_new(h, b);
    loam_weak_t *inside = loam_weak_new(h, b + 40);
    loam_weak_t *in_neighbour = loam_weak_new(h, neighbour + 40);
    cr_assert(at_start && inside && in_neighbour);
    loam_free(b);
    cr_assert_null(loam_weak_get(at_start), "a weak reference to a freed block's start survived the free");
    cr_assert_null(loam_weak_get(inside), "a weak reference inside a freed block survived the free");
    cr_assert_eq(loam_weak_get(in_neighbour), neighbour + 40, "freeing a block cleared a reference into another");
    collect(h);
    cr_assert_null(loam_weak_get(at_start));
    cr_assert_null(loam_weak_get(inside));
    cr_assert_eq(loam_weak_get(in_neighbour), neighbour + 40);
    loam_weak_free(at_start);
    loam_weak_free(inside);
    loam_weak_free(in_neighbour);
    root = NULL;
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

Test(weak, start_and_interior_targets_of_a_slab_block_cleared_by_one_free)
{
    refs_into_one_block_cleared_by_one_free(WEAK_SLAB_SIZE);
}

Test(weak, start_and_interior_targets_of_a_large_block_cleared_by_one_free)
{
    refs_into_one_block_cleared_by_one_free(WEAK_LARGE_SIZE);
}

/* Freed from the head and the middle of the block's references while it
 * lives, and after it was freed; what is left of them must not reach a
 * later block at that address (ASan sees a freed record still linked). */
static void interior_refs_freed_before_and_after_their_block(size_t size)
{
    loam_heap_t *h = gc_heap();
    static void *root;
    loam_root_add(h, &root);
    char *b = weak_target_block(h, size);
    loam_weak_t *first = loam_weak_new(h, b + 16);
    loam_weak_t *at_start = loam_weak_new(h, b);
    loam_weak_t *middle = loam_weak_new(h, b + size - 1);
    loam_weak_t *newest = loam_weak_new(h, b + 32);
    cr_assert(first && at_start && middle && newest);
    loam_weak_free(middle);
    loam_weak_free(newest);
    cr_assert_eq(loam_weak_get(first), b + 16);
    cr_assert_eq(loam_weak_get(at_start), b);
    loam_free(b);
    cr_assert_null(loam_weak_get(first), "a weak reference inside a freed block survived the free");
    cr_assert_null(loam_weak_get(at_start));
    loam_weak_free(first);
    loam_weak_free(at_start);

    char *c = weak_target_block(h, size);
    root = c;
    loam_weak_t *later = loam_weak_new(h, c + 8);
    cr_assert_not_null(later);
    collect(h);
    cr_assert_eq(loam_weak_get(later), c + 8);
    root = NULL;
    loam_free(c);
    cr_assert_null(loam_weak_get(later));
    loam_weak_free(later);
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

Test(weak, interior_refs_to_a_slab_block_freed_before_and_after_it)
{
    interior_refs_freed_before_and_after_their_block(WEAK_SLAB_SIZE);
}

Test(weak, interior_refs_to_a_large_block_freed_before_and_after_it)
{
    interior_refs_freed_before_and_after_their_block(WEAK_LARGE_SIZE);
}

Test(weak, targets_in_no_block_of_the_heap_refused)
{
    loam_heap_t *h = gc_heap();
    loam_heap_t *other = gc_heap();
    static char static_bytes[64];
    char stack_bytes[64];
    char *theirs = weak_target_block(other, WEAK_SLAB_SIZE);
    char *theirs_large = weak_target_block(other, WEAK_LARGE_SIZE);
    void *refused[] = { static_bytes, stack_bytes, theirs, theirs + 8, theirs_large, theirs_large + 8 };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        errno = 0;
        loam_weak_t *w = loam_weak_new(h, refused[i]);
        cr_assert_null(w, "a weak reference of heap %p to %p, in no block of it, was made", (void *)h, refused[i]);
        cr_assert_eq(errno, EINVAL);
    }
    errno = 0;
    cr_assert_null(loam_weak_new(NULL, theirs));
    cr_assert_eq(errno, EINVAL);
    /* NULL names no object: a reference to nothing */
    loam_weak_t *none = loam_weak_new(h, NULL);
    cr_assert_not_null(none);
    cr_assert_null(loam_weak_get(none));
    collect(h);
    cr_assert_null(loam_weak_get(none));
    loam_weak_free(none);
    loam_weak_t *ok = loam_weak_new(other, theirs + 8);
    cr_assert_eq(loam_weak_get(ok), theirs + 8);
    loam_weak_free(ok);
    loam_heap_destroy(other);
    loam_heap_destroy(h);
}

Test(weak, interior_targets_across_mode_switches)
{
    /* a manual heap whose frees reach the collector (see the next test) */
    cr_assert_eq(loam_option_set("track_requested", 1), 0);
    loam_config_t cfg = { 0 };
    cfg.flags = LOAM_NO_STACK_SCAN;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    /* made while manual; the first collection finds its block unreachable */
    char *b = loam_malloc(h, WEAK_SLAB_SIZE);
    loam_weak_t *made_manual = loam_weak_new(h, b + 24);
    cr_assert_not_null(made_manual);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    collect(h);
    cr_assert_null(loam_weak_get(made_manual), "a weak reference made while manual was not cleared");
    /* made while collected; its block freed once manual */
    char *c = loam_gc_alloc(h, WEAK_SLAB_SIZE, LOAM_CONSERVATIVE);
    cr_assert_not_null(c);
    loam_weak_t *made_collected = loam_weak_new(h, c + 24);
    cr_assert_not_null(made_collected);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    cr_assert_eq(loam_weak_get(made_collected), c + 24);
    loam_free(c);
    cr_assert_null(loam_weak_get(made_collected), "a weak reference inside a block freed in manual mode survived");
    loam_weak_free(made_manual);
    loam_weak_free(made_collected);
    loam_heap_destroy(h);
}

/* A small block whose loam_free keeps the fast path (a thread cache takes
 * it, and the collector never hears of it) could not clear a weak
 * reference: one is refused. That is every slab block of the default heap,
 * and of a manual heap that tracks no requests and was never collected;
 * not their large blocks, whose frees always reach the collector. */
Test(weak, targets_whose_frees_skip_the_collector_are_refused)
{
    loam_heap_t *dh = loam_heap_default();
    char *m = loam_malloc(dh, 64);
    cr_assert_not_null(m);
    errno = 0;
    cr_assert_null(loam_weak_new(dh, m), "a weak reference to a malloc block was made");
    cr_assert_eq(errno, EINVAL);
    loam_free(m);

    cr_assert_eq(loam_option_set("track_requested", 0), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_not_null(h);
    char *small = loam_malloc(h, WEAK_SLAB_SIZE);
    char *large = loam_malloc(h, WEAK_LARGE_SIZE);
    cr_assert_not_null(small);
    cr_assert_not_null(large);
    errno = 0;
    cr_assert_null(loam_weak_new(h, small + 8));
    cr_assert_eq(errno, EINVAL);
    loam_weak_t *wl = loam_weak_new(h, large + 8);
    cr_assert_not_null(wl, "a large block's free reaches the collector: its reference is fine");
    loam_free(large);
    cr_assert_null(loam_weak_get(wl));
    loam_weak_free(wl);
    /* once collected, its frees take the collector's path for good */
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    loam_weak_t *ws = loam_weak_new(h, small + 8);
    cr_assert_not_null(ws);
    loam_free(small);
    cr_assert_null(loam_weak_get(ws), "the free did not clear it");
    loam_weak_free(ws);
    loam_heap_destroy(h);
}

/* A collected block that loam_realloc moves is, to the collector, freed:
 * the allocate-copy-free of a small block drops its finalizer and clears
 * the weak references to it, and a large block moved by mremap does the
 * same (it used to keep both: the reference gave the unmapped address,
 * and the next collection ran the finalizer on it while the moved block
 * lived). */
static int moved_fin_runs;
static void count_moved_fin(void *obj, void *data)
{
    (void)obj;
    (void)data;
    moved_fin_runs++;
}

Test(weak, realloc_that_moves_a_collected_block_ends_its_references)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    void *root = NULL;
    loam_root_add(h, &root);
    moved_fin_runs = 0;
    bool moved = false;
    size_t n = WEAK_LARGE_SIZE;
    char *p = loam_gc_alloc(h, n, LOAM_ATOMIC);
    cr_assert_not_null(p);
    for (int step = 0; step < 8 && !moved; step++) {
        /* something mapped after it, so that growing in place is unlikely */
        void *neighbour = loam_gc_alloc(h, WEAK_LARGE_SIZE, LOAM_ATOMIC);
        cr_assert_not_null(neighbour);
        cr_assert_eq(loam_finalizer_set(h, p, count_moved_fin, NULL), 0);
        loam_weak_t *w = loam_weak_new(h, p + 16);
        cr_assert_not_null(w);
        n *= 4;
        char *q = loam_realloc(h, p, n);
        cr_assert_not_null(q);
        root = q;
        moved = q != p;
        if (moved) {
            cr_assert_null(loam_weak_get(w), "a reference into the moved block gives %p", loam_weak_get(w));
            collect(h);
            cr_assert_eq(moved_fin_runs, 0, "the moved block's finalizer ran on its old address");
        } else {
            cr_assert_eq(loam_weak_get(w), q + 16);
        }
        loam_weak_free(w);
        loam_finalizer_set(h, q, NULL, NULL);
        p = q;
    }
    if (!moved)
        cr_skip_test("no realloc moved the block (it grew in place every time)");
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* A finalizer may collect (the same heap); nothing deadlocks, nothing runs twice. */
static loam_heap_t *recollect_heap;
static int recollect_depth;

static void collecting_fin(void *obj, void *data)
{
    log_fin(obj, data);
    if (recollect_depth++ < 3) {
        void *p = loam_gc_alloc(recollect_heap, 32, LOAM_ATOMIC);
        /* each finalizer gets its own serial: an address may be reused by a
         * later object once a finalized one has been freed */
        cr_assert_eq(loam_finalizer_set(recollect_heap, p, collecting_fin,
                                        (void *)(uintptr_t)(1 + recollect_depth)), 0);
        loam_gc_collect(recollect_heap);
    }
}

Test(finalizer, finalizer_may_collect, .timeout = 60)
{
    loam_heap_t *h = gc_heap();
    recollect_heap = h;
    recollect_depth = 0;
    fin_n = 0;
    void *p = loam_gc_alloc(h, 32, LOAM_ATOMIC);
    cr_assert_eq(loam_finalizer_set(h, p, collecting_fin, (void *)1), 0);
    loam_gc_collect(h);
    loam_gc_collect(h);
    loam_gc_collect(h);
    cr_assert_eq(fin_n, 4, "%zu finalizers ran (1 + 3 set inside finalizers)", fin_n);
    for (size_t i = 0; i < fin_n; i++)           /* serials 1..4, each once */
        for (size_t j = i + 1; j < fin_n; j++)
            cr_assert_neq(fin_log[i].data, fin_log[j].data, "a finalizer ran twice");
    loam_gc_collect(h);
    cr_assert_eq(live_blocks(h), 0);
    loam_heap_destroy(h);
}

/* ---- memory after a spike ----------------------------------------------------------------- */

static size_t spike_runs;
static void count_spike(void *obj, void *data)
{
    (void)obj, (void)data;
    spike_runs++;
}

/* 200,000 objects with finalizers, all dropped: one collection queues them
 * all (the table, its map and the map of queued ones: about 20 MB), they
 * run; by the next collection the tables are back to their small size. */
Test(finalizer, the_tables_of_a_spike_of_finalizers_go_back_after_it, .timeout = 120)
{
    loam_heap_t *h = gc_heap();
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);   /* only loam_gc_collect */
    const size_t N = 200000;
    for (size_t i = 0; i < N; i++) {
        node_t *o = loam_gc_alloc(h, sizeof(node_t), LOAM_TRACED);
        cr_assert_not_null(o);
        cr_assert_eq(loam_finalizer_set(h, o, count_spike, NULL), 0);
    }
    size_t with_tables = rss_outside_heap(h);
    spike_runs = 0;
    loam_gc_collect(h);
    cr_assert_eq(spike_runs, N);
    loam_gc_collect(h);
    size_t after = rss_outside_heap(h);
    expect_given_back("finalizer/the_tables_of_a_spike", with_tables, after, 8 * MiB);
    /* Finalizers work as before. */
    node_t *o = loam_gc_alloc(h, sizeof(node_t), LOAM_TRACED);
    cr_assert_eq(loam_finalizer_set(h, o, count_spike, NULL), 0);
    o = NULL;
    loam_gc_collect(h);
    cr_assert_eq(spike_runs, N + 1);
    loam_heap_destroy(h);
}

/* 200,000 weak references to objects that die: their map (8 MB) shrinks as
 * the collection clears them and the program frees them. */
Test(weak, the_map_of_a_spike_of_weak_references_goes_back_after_it, .timeout = 120)
{
    loam_heap_t *h = gc_heap();
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);
    const size_t N = 200000;
    loam_weak_t **refs = malloc(N * sizeof *refs);
    cr_assert_not_null(refs);
    for (size_t i = 0; i < N; i++) {
        node_t *o = loam_gc_alloc(h, sizeof(node_t), LOAM_TRACED);
        cr_assert_not_null(o);
        refs[i] = loam_weak_new(h, o);
        cr_assert_not_null(refs[i]);
    }
    size_t with_map = rss_outside_heap(h);
    loam_gc_collect(h);
    for (size_t i = 0; i < N; i++) {
        cr_assert_null(loam_weak_get(refs[i]));
        loam_weak_free(refs[i]);
    }
    free(refs);
    size_t after = rss_outside_heap(h);
    expect_given_back("weak/the_map_of_a_spike", with_map, after, 4 * MiB);
    loam_heap_destroy(h);
}

/* 500,000 weak fields met by one marking: their list (4 MB) goes back once
 * markings meet few (the second collection after, as the list of a marking
 * is looked at when the next one begins). */
Test(weak, the_list_of_a_spike_of_weak_fields_goes_back_after_it, .timeout = 120)
{
    loam_heap_t *h = wheap(0);
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);
    static void *root;
    loam_root_add(h, &root);
    const size_t N = 500000;
    weak_list(h, &root, N, 2);
    loam_gc_collect(h);
    check_weak_list(root, N, 2);
    size_t spike = rss_outside_heap(h);
    root = NULL;
    loam_gc_collect(h);
    loam_gc_collect(h);
    size_t after = rss_outside_heap(h);
    expect_given_back("weak/the_list_of_a_spike", spike, after, 3 * MiB);
    weak_list(h, &root, 100, 3);            /* and weak fields work as before */
    loam_gc_collect(h);
    check_weak_list(root, 100, 3);
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}
