/* tests/test_gc_ephemeron.c — ephemeron pairs (loam_mark_ephemeron).
 *
 *  - a weak-keyed table's entry whose value refers to its own key goes
 *    with the key (both fields NULL), and the key and value are freed;
 *  - the value is kept, intact, while the key is reachable otherwise;
 *  - chains: a key reachable only through the value of a pair whose key is
 *    reachable is reachable (in any order of the pairs); one collection
 *    clears the whole chain once its first key goes; a chain of 10,000
 *    pairs in random order settles in about the time of marking as much;
 *  - keys that are no block of the heap (NULL, tagged integers, static
 *    data, another heap's blocks) are always alive; an address inside a
 *    block stands for the block; pairs reported by the roots callback;
 *  - generational heaps: an old key keeps a young value (the old table's
 *    card dirty), a young dead key's pair is cleared by a minor
 *    collection, an old table on a clean card keeps an old dead key's pair
 *    until the next major collection;
 *  - a key that only finalization keeps alive keeps its pair and value
 *    until the first collection after its finalizer ran (for good if the
 *    finalizer stores it somewhere reachable);
 *  - parallel marking (helpers meet and wake pairs);
 *  - loam_leak_check clears nothing and reports what the pairs of dead
 *    keys hold; a manual heap clears nothing until it is collected;
 *  - gc_ephemerons_cleared counts the pairs, in text and JSON statistics;
 *  - the memory of a spike's pair records goes back at the next collection
 *    that needs far fewer.
 * Heaps have LOAM_NO_STACK_SCAN, so what is live is exactly what the roots
 * reach. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc_util.h"
#include "rss_util.h"

/* A node has n strong fields; a table has n ephemeron pairs, f[2i] the key
 * and f[2i + 1] the value. */
#define NODE_TAG  0xE9E9E90D00000011ull
#define TABLE_TAG 0xE9E9E97A00000013ull
typedef struct obj {
    uintptr_t tag;
    uintptr_t n;
    void     *f[];
} obj_t;

static void trace_obj(void *p, loam_tracer_t *t, void *user)
{
    (void)user;
    obj_t *o = p;
    if (o->tag == NODE_TAG) {
        for (uintptr_t i = 0; i < o->n; i++)
            loam_mark(t, o->f[i]);
    } else if (o->tag == TABLE_TAG) {
        for (uintptr_t i = 0; i < o->n; i++)
            loam_mark_ephemeron(t, &o->f[2 * i], &o->f[2 * i + 1]);
    }
}

/* The roots callback may report pairs too: a static one. */
static void *static_pair[2];
static void roots_cb(loam_tracer_t *t, void *user)
{
    (void)user;
    loam_mark_ephemeron(t, &static_pair[0], &static_pair[1]);
}

/* No automatic collection while a test builds objects it holds only in C
 * locals (not scanned: LOAM_NO_STACK_SCAN): on, a floor no test reaches;
 * off, the options' pacing again. */
static void hold_collections(loam_heap_t *h, bool on)
{
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, on ? 1024 * MiB : 0), 0);
}

#define NROOTS 4
static void *roots[NROOTS];

static loam_heap_t *heap_with(loam_mode_t mode, unsigned flags)
{
    loam_config_t cfg = { .mode = mode, .flags = LOAM_NO_STACK_SCAN | flags, .trace = trace_obj,
                          .roots = roots_cb };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    memset(roots, 0, sizeof roots);
    static_pair[0] = static_pair[1] = NULL;
    for (int i = 0; i < NROOTS; i++)
        loam_root_add(h, &roots[i]);
    hold_collections(h, true);              /* only loam_gc_collect collects, unless a test says */
    return h;
}

static loam_heap_t *eheap(unsigned flags) { return heap_with(LOAM_GC, flags); }

static void heap_done(loam_heap_t *h)
{
    for (int i = 0; i < NROOTS; i++)
        loam_root_remove(h, &roots[i]);
    loam_heap_destroy(h);
}

static obj_t *new_node(loam_heap_t *h, size_t n)
{
    obj_t *o = loam_gc_alloc(h, sizeof(obj_t) + n * sizeof(void *), LOAM_TRACED);
    cr_assert_not_null(o);
    o->n = n;
    o->tag = NODE_TAG;
    return o;
}

static obj_t *new_table(loam_heap_t *h, size_t pairs)
{
    obj_t *o = loam_gc_alloc(h, sizeof(obj_t) + 2 * pairs * sizeof(void *), LOAM_TRACED);
    cr_assert_not_null(o);
    o->n = pairs;
    o->tag = TABLE_TAG;
    return o;
}

static size_t live_blocks(loam_heap_t *h) { return gc_stats(h).live_blocks; }
static size_t eph_cleared(loam_heap_t *h) { return gc_stats(h).gc_ephemerons_cleared; }

/* ---- the basic promise ------------------------------------------------------------------- */

Test(ephemeron, an_entry_whose_value_refers_to_its_key_is_collected)
{
    loam_heap_t *h = eheap(0);
    obj_t *t = new_table(h, 1);
    roots[0] = t;
    obj_t *k = new_node(h, 0), *v = new_node(h, 1);
    v->f[0] = k;                            /* the value keeps its key */
    t->f[0] = k;
    t->f[1] = v;
    k = v = NULL;
    loam_gc_collect(h);
    cr_assert_null(t->f[0], "the key lives on through its own value");
    cr_assert_null(t->f[1], "a dead key's value was left in the table");
    cr_assert_eq(live_blocks(h), 1, "%zu blocks live: the key and value were not freed", live_blocks(h));
    cr_assert_eq(eph_cleared(h), 1);
    heap_done(h);
}

Test(ephemeron, the_value_is_kept_while_the_key_is_reachable)
{
    loam_heap_t *h = eheap(0);
    obj_t *t = new_table(h, 2);
    roots[0] = t;
    obj_t *k = new_node(h, 0), *v = new_node(h, 2);
    obj_t *inner = new_node(h, 0);
    v->f[0] = k;
    v->f[1] = inner;                        /* what the value reaches lives too */
    t->f[0] = k;
    t->f[1] = v;
    roots[1] = k;
    for (int round = 0; round < 3; round++) {
        loam_gc_collect(h);
        cr_assert_eq(t->f[0], k, "the key of a reachable key's pair was cleared");
        cr_assert_eq(t->f[1], v, "the value of a reachable key's pair was cleared");
        cr_assert_eq(v->tag, NODE_TAG, "the value was freed");
        cr_assert_eq(v->f[1], inner);
        cr_assert_eq(live_blocks(h), 4, "%zu blocks live, 4 expected", live_blocks(h));
    }
    cr_assert_eq(eph_cleared(h), 0);
    roots[1] = NULL;                        /* the key goes: its pair and all it kept go */
    loam_gc_collect(h);
    cr_assert_null(t->f[0]);
    cr_assert_null(t->f[1]);
    cr_assert_eq(live_blocks(h), 1);
    cr_assert_eq(eph_cleared(h), 1);
    heap_done(h);
}

/* ---- chains ------------------------------------------------------------------------------ */

/* Pair 1 (k1, v1) with v1 -> k2, pair 2 (k2, v2). In the table pair 2 comes
 * first: when it is met, k2 is unmarked, and only the fixpoint finds that
 * k2 lives. A second table holds pair 3 (k3, v3) with v2 -> k3: a key found
 * through a value of another table. */
Test(ephemeron, a_key_reachable_through_a_live_pairs_value_is_reachable)
{
    loam_heap_t *h = eheap(0);
    obj_t *t = new_table(h, 2), *t2 = new_table(h, 1);
    roots[0] = t;
    roots[1] = t2;
    obj_t *k1 = new_node(h, 0), *k2 = new_node(h, 0), *k3 = new_node(h, 0);
    obj_t *v1 = new_node(h, 1), *v2 = new_node(h, 1), *v3 = new_node(h, 0);
    v1->f[0] = k2;
    v2->f[0] = k3;
    t->f[0] = k2, t->f[1] = v2;
    t->f[2] = k1, t->f[3] = v1;
    t2->f[0] = k3, t2->f[1] = v3;
    roots[2] = k1;
    loam_gc_collect(h);
    cr_assert_eq(t->f[0], k2, "pair 2 cleared: its key is reachable through pair 1's value");
    cr_assert_eq(t->f[1], v2);
    cr_assert_eq(t->f[2], k1);
    cr_assert_eq(t->f[3], v1);
    cr_assert_eq(t2->f[0], k3, "pair 3 cleared: its key is reachable through pair 2's value");
    cr_assert_eq(t2->f[1], v3);
    cr_assert_eq(live_blocks(h), 8);
    cr_assert_eq(eph_cleared(h), 0);
    roots[2] = NULL;                        /* one collection clears the whole chain */
    loam_gc_collect(h);
    for (int i = 0; i < 4; i++)
        cr_assert_null(t->f[i], "field %d of the chain's table left set", i);
    cr_assert_null(t2->f[0]);
    cr_assert_null(t2->f[1]);
    cr_assert_eq(live_blocks(h), 2, "%zu blocks live, only the two tables expected", live_blocks(h));
    cr_assert_eq(eph_cleared(h), 3);
    heap_done(h);
}

/* A chain of n pairs in one table, pair i's value the next pair's key,
 * placed in the table in the order `order` gives. Returns the first key. */
static obj_t *chain_table(loam_heap_t *h, obj_t *t, const size_t *order, size_t n)
{
    obj_t **k = malloc((n + 1) * sizeof *k);
    cr_assert_not_null(k);
    for (size_t i = 0; i <= n; i++)
        k[i] = new_node(h, 0);
    for (size_t i = 0; i < n; i++) {
        t->f[2 * order[i]] = k[i];
        t->f[2 * order[i] + 1] = k[i + 1];
    }
    obj_t *first = k[0];
    free(k);
    return first;
}

static uint64_t timed_collect(loam_heap_t *h)
{
    uint64_t t0 = (uint64_t)clock();
    loam_gc_collect(h);
    return (uint64_t)clock() - t0;
}

Test(ephemeron, a_chain_of_10000_pairs_in_any_order, .timeout = 300)
{
    const size_t N = 10000 * gc_test_scale();
    gc_rng_t rng = { gc_test_seed("ephemeron chain") };
    size_t *order = malloc(N * sizeof *order);
    cr_assert_not_null(order);
    const char *names[3] = { "forward", "reverse", "random" };
    for (int kind = 0; kind < 3; kind++) {
        for (size_t i = 0; i < N; i++)
            order[i] = kind == 1 ? N - 1 - i : i;
        if (kind == 2)
            for (size_t i = N - 1; i > 0; i--) {
                size_t j = gc_rng_below(&rng, i + 1), x = order[i];
                order[i] = order[j];
                order[j] = x;
            }
        loam_heap_t *h = eheap(0);
        obj_t *t = new_table(h, N);
        roots[0] = t;
        roots[1] = chain_table(h, t, order, N);
        uint64_t kept = timed_collect(h);
        for (size_t i = 0; i < 2 * N; i++)
            cr_assert_not_null(t->f[i], "%s: field %zu of a live chain cleared", names[kind], i);
        cr_assert_eq(live_blocks(h), 1 + N + 1);
        roots[1] = NULL;
        uint64_t cleared = timed_collect(h);
        for (size_t i = 0; i < 2 * N; i++)
            cr_assert_null(t->f[i], "%s: field %zu of a dead chain left set", names[kind], i);
        cr_assert_eq(eph_cleared(h), N);
        cr_assert_eq(live_blocks(h), 1);
        /* The same table with the chain rooted by strong fields: what marking
         * as many objects costs without the fixpoint. */
        obj_t *strong = new_node(h, N + 1);
        for (size_t i = 0; i <= N; i++)
            strong->f[i] = new_node(h, 0);
        roots[1] = strong;
        uint64_t plain = timed_collect(h);
        fprintf(stderr, "chain of %zu pairs, %s order: collection %.2f ms kept, %.2f ms cleared; "
                        "%.2f ms for as many objects held strongly\n",
                N, names[kind], kept * 1e3 / CLOCKS_PER_SEC, cleared * 1e3 / CLOCKS_PER_SEC,
                plain * 1e3 / CLOCKS_PER_SEC);
        heap_done(h);
    }
    free(order);
}

/* ---- keys and values of every kind --------------------------------------------------------- */

Test(ephemeron, keys_that_are_no_block_of_the_heap_are_always_alive)
{
    loam_heap_t *h = eheap(0), *other = loam_heap_new(NULL);
    cr_assert_not_null(other);
    static char outside[64];
    void *foreign = loam_malloc(other, 32);
    cr_assert_not_null(foreign);
    obj_t *t = new_table(h, 5);
    roots[0] = t;
    void *tagged = (void *)(uintptr_t)0x2a1;                   /* an odd word: a fixnum */
    void *keys[4] = { NULL, tagged, outside + 8, foreign };
    obj_t *vals[4];
    for (int i = 0; i < 4; i++) {
        vals[i] = new_node(h, 0);
        t->f[2 * i] = keys[i];
        t->f[2 * i + 1] = vals[i];
    }
    /* A dead key whose value is no block: both cleared all the same. */
    t->f[8] = new_node(h, 0);
    t->f[9] = tagged;
    loam_gc_collect(h);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(t->f[2 * i], keys[i], "key %d, no block of the heap, was changed", i);
        cr_assert_eq(t->f[2 * i + 1], vals[i], "the value of key %d (no block of the heap) was cleared", i);
        cr_assert_eq(vals[i]->tag, NODE_TAG);
    }
    cr_assert_null(t->f[8]);
    cr_assert_null(t->f[9], "a dead key's pair keeps a value that is no block");
    cr_assert_eq(live_blocks(h), 5);
    cr_assert_eq(eph_cleared(h), 1);
    loam_heap_destroy(other);
    heap_done(h);
}

Test(ephemeron, an_address_inside_a_block_stands_for_the_block)
{
    loam_heap_t *h = eheap(0);
    obj_t *t = new_table(h, 2);
    roots[0] = t;
    obj_t *live = new_node(h, 1), *dead = new_node(h, 1);
    obj_t *vlive = new_node(h, 0), *vdead = new_node(h, 1);
    roots[1] = live;
    vdead->f[0] = (char *)dead + 16;        /* an interior pointer keeps dead's block, as loam_mark does */
    t->f[0] = (char *)live + 8, t->f[1] = (char *)vlive + 8;
    t->f[2] = (char *)dead + 8, t->f[3] = vdead;
    loam_gc_collect(h);
    cr_assert_eq(t->f[0], (char *)live + 8);
    cr_assert_eq(t->f[1], (char *)vlive + 8, "an interior value of a live key's pair was cleared");
    cr_assert_eq(vlive->tag, NODE_TAG);
    cr_assert_null(t->f[2], "an interior key into a dead block was left");
    cr_assert_null(t->f[3]);
    cr_assert_eq(live_blocks(h), 3);
    heap_done(h);
}

Test(ephemeron, pairs_reported_by_the_roots_callback)
{
    loam_heap_t *h = eheap(0);
    obj_t *k = new_node(h, 0), *v = new_node(h, 1);
    v->f[0] = k;
    static_pair[0] = k;
    static_pair[1] = v;
    roots[0] = k;
    loam_gc_collect(h);
    cr_assert_eq(static_pair[0], k);
    cr_assert_eq(static_pair[1], v);
    cr_assert_eq(live_blocks(h), 2);
    roots[0] = NULL;
    loam_gc_collect(h);
    cr_assert_null(static_pair[0]);
    cr_assert_null(static_pair[1]);
    cr_assert_eq(live_blocks(h), 0);
    heap_done(h);
}

/* ---- generations --------------------------------------------------------------------------- */

Test(ephemeron, minor_collections)
{
    cr_assert_eq(loam_option_set("gc_young_min", 32 * 1024), 0);
    loam_heap_t *h = eheap(LOAM_GENERATIONAL);
    obj_t *t = new_table(h, 4);
    obj_t *old_key = new_node(h, 0), *old_dead = new_node(h, 0), *old_val = new_node(h, 1);
    old_val->f[0] = old_dead;
    t->f[6] = old_dead, t->f[7] = old_val;
    roots[0] = t;
    roots[1] = old_key;
    roots[3] = old_dead;
    loam_gc_collect(h);                     /* major: all old now, t's card clean */
    roots[3] = NULL;                        /* old_dead dies, unseen until a major collection */
    /* Pair 0: an old key, a young value (the barrier dirties t's card).
     * Pair 1: a young key nothing else reaches, its young value refers to it.
     * Pair 2: a young key a root reaches. */
    obj_t *yv0 = new_node(h, 0), *yk1 = new_node(h, 0), *yv1 = new_node(h, 1);
    obj_t *yk2 = new_node(h, 0), *yv2 = new_node(h, 0);
    yv1->f[0] = yk1;
    t->f[0] = old_key, t->f[1] = yv0;
    t->f[2] = yk1, t->f[3] = yv1;
    t->f[4] = yk2, t->f[5] = yv2;
    loam_write_barrier(&t->f[0]);
    roots[2] = yk2;
    loam_weak_t *w0 = loam_weak_new(h, yv0), *w1 = loam_weak_new(h, yv1), *w2 = loam_weak_new(h, yv2);
    /* Pair 3 (t->f[6], f[7]): an old key now dead, met again as t's card is
     * dirty: a minor collection takes old objects for alive. */
    yv0 = yk1 = yv1 = yk2 = yv2 = NULL;
    hold_collections(h, false);
    until_a_minor_collection(h);
    cr_assert_not_null(loam_weak_get(w0), "a minor collection freed the young value of an old key");
    cr_assert_eq(t->f[1], loam_weak_get(w0));
    cr_assert_null(t->f[2], "a minor collection left the pair of a dead young key");
    cr_assert_null(t->f[3]);
    cr_assert_null(loam_weak_get(w1), "the young value of a dead young key survived");
    cr_assert_eq(t->f[4], roots[2], "a minor collection cleared a reachable young key's pair");
    cr_assert_not_null(loam_weak_get(w2));
    cr_assert_eq(t->f[5], loam_weak_get(w2));
    cr_assert_eq(t->f[6], old_dead, "a minor collection cleared the pair of an old key");
    cr_assert_eq(t->f[7], old_val);
    /* More minor collections, t's card clean now: the old pairs stay. */
    until_a_minor_collection(h);
    cr_assert_eq(t->f[6], old_dead);
    cr_assert_eq(((obj_t *)t->f[1])->tag, NODE_TAG);
    /* A major collection finds the old dead key. */
    loam_gc_collect(h);
    cr_assert_null(t->f[6], "a major collection left the pair of a dead old key");
    cr_assert_null(t->f[7]);
    cr_assert_eq(t->f[0], old_key);
    cr_assert_eq(t->f[1], loam_weak_get(w0));
    loam_weak_free(w0);
    loam_weak_free(w1);
    loam_weak_free(w2);
    heap_done(h);
}

/* ---- finalization ------------------------------------------------------------------------ */

static obj_t *fin_table;
static int    fin_runs;
static bool   fin_saw_pair;

static void check_pair_fin(void *obj, void *data)
{
    (void)data;
    fin_runs++;
    /* The pair of a key being finalized is still there, its value intact. */
    obj_t *v = fin_table->f[1];
    fin_saw_pair = fin_table->f[0] == obj && v && v->tag == NODE_TAG && v->f[0] == obj;
}

static GC_NOINLINE void make_finalizable_key(loam_heap_t *h, obj_t *t)
{
    obj_t *k = new_node(h, 0), *v = new_node(h, 1);
    v->f[0] = k;
    t->f[0] = k;
    t->f[1] = v;
    cr_assert_eq(loam_finalizer_set(h, k, check_pair_fin, NULL), 0);
}

Test(ephemeron, a_key_waiting_for_its_finalizer_keeps_its_pair_until_it_ran)
{
    loam_heap_t *h = eheap(0);
    fin_table = new_table(h, 1);
    roots[0] = fin_table;
    fin_runs = 0;
    fin_saw_pair = false;
    make_finalizable_key(h, fin_table);
    loam_gc_collect(h);
    cr_assert_eq(fin_runs, 1);
    cr_assert(fin_saw_pair, "the finalizer did not find its object's pair (key and value) in the table");
    cr_assert_not_null(fin_table->f[0], "the pair of a key resurrected by finalization was cleared");
    cr_assert_eq(eph_cleared(h), 0);
    loam_gc_collect(h);                     /* finalized: the key dies now */
    cr_assert_eq(fin_runs, 1);
    cr_assert_null(fin_table->f[0]);
    cr_assert_null(fin_table->f[1]);
    cr_assert_eq(live_blocks(h), 1);
    cr_assert_eq(eph_cleared(h), 1);
    heap_done(h);
}

/* A finalizer that stores its object in a root: the key lives on, and so
 * does its pair, for good. */
static void resurrecting_fin(void *obj, void *data)
{
    (void)data;
    fin_runs++;
    roots[3] = obj;
}

Test(ephemeron, a_key_its_finalizer_resurrects_keeps_its_pair)
{
    loam_heap_t *h = eheap(0);
    obj_t *t = new_table(h, 1);
    roots[0] = t;
    fin_runs = 0;
    obj_t *k = new_node(h, 0), *v = new_node(h, 1);
    v->f[0] = k;
    t->f[0] = k;
    t->f[1] = v;
    cr_assert_eq(loam_finalizer_set(h, k, resurrecting_fin, NULL), 0);
    k = v = NULL;
    for (int round = 0; round < 3; round++) {
        loam_gc_collect(h);
        cr_assert_eq(fin_runs, 1, "the finalizer ran %d times", fin_runs);
        cr_assert_eq(t->f[0], roots[3], "round %d: the pair of a resurrected key was cleared", round);
        cr_assert_not_null(t->f[1]);
        cr_assert_eq(((obj_t *)t->f[1])->f[0], roots[3]);
        cr_assert_eq(live_blocks(h), 3);
    }
    roots[3] = NULL;
    loam_gc_collect(h);
    cr_assert_null(t->f[0]);
    cr_assert_null(t->f[1]);
    cr_assert_eq(live_blocks(h), 1);
    heap_done(h);
}

/* The key has no finalizer; only a finalizable object reaches it. */
static int holder_runs;
static void count_fin(void *obj, void *data)
{
    (void)obj, (void)data;
    holder_runs++;
}

static GC_NOINLINE void make_key_held_by_finalizable(loam_heap_t *h, obj_t *t)
{
    obj_t *holder = new_node(h, 1), *k = new_node(h, 0), *v = new_node(h, 1);
    holder->f[0] = k;
    v->f[0] = k;
    t->f[0] = k;
    t->f[1] = v;
    cr_assert_eq(loam_finalizer_set(h, holder, count_fin, NULL), 0);
}

Test(ephemeron, a_key_only_a_finalizable_object_reaches_keeps_its_pair_until_it_ran)
{
    loam_heap_t *h = eheap(0);
    obj_t *t = new_table(h, 1);
    roots[0] = t;
    holder_runs = 0;
    make_key_held_by_finalizable(h, t);
    loam_gc_collect(h);
    cr_assert_eq(holder_runs, 1);
    cr_assert_not_null(t->f[0], "the pair of a key the finalizable object keeps alive was cleared");
    cr_assert_eq(((obj_t *)t->f[1])->tag, NODE_TAG);
    cr_assert_eq(live_blocks(h), 4);
    loam_gc_collect(h);
    cr_assert_null(t->f[0]);
    cr_assert_null(t->f[1]);
    cr_assert_eq(live_blocks(h), 1);
    heap_done(h);
}

/* ---- parallel marking ---------------------------------------------------------------------- */

/* n tables of 4 pairs each, chained by strong fields from roots[0]. Pair j
 * of table i: key node K(i, j), value node V(i, j) -> K(i, j) and, for
 * j < 3, -> K(i, j + 1): a chain inside each table, in reverse order. K(i,
 * 0) is rooted (strong field f[2] of the list node, whose f[0] is the next
 * one and f[1] the table) for i % 3 == 0. */
static void parallel_build(loam_heap_t *h, size_t n)
{
    obj_t *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        obj_t *ln = new_node(h, 3);
        obj_t *t = new_table(h, 4);
        ln->f[1] = t;
        obj_t *k[4];
        for (int j = 0; j < 4; j++)
            k[j] = new_node(h, 0);
        for (int j = 0; j < 4; j++) {
            obj_t *v = new_node(h, 2);
            v->f[0] = k[j];
            v->f[1] = j < 3 ? k[j + 1] : NULL;
            t->f[2 * (3 - j)] = k[j];
            t->f[2 * (3 - j) + 1] = v;
        }
        if (i % 3 == 0)
            ln->f[2] = k[0];
        if (prev)
            prev->f[0] = ln;
        else
            roots[0] = ln;
        prev = ln;
    }
}

static void parallel_check(size_t n)
{
    size_t i = 0;
    for (obj_t *ln = roots[0]; ln; ln = ln->f[0], i++) {
        obj_t *t = ln->f[1];
        for (int j = 0; j < 8; j++) {
            if (i % 3 == 0) {
                cr_assert_not_null(t->f[j], "table %zu: field %d of a live chain cleared", i, j);
                cr_assert_eq(((obj_t *)t->f[j])->tag, NODE_TAG, "table %zu: field %d freed", i, j);
            } else {
                cr_assert_null(t->f[j], "table %zu: field %d of a dead chain left set", i, j);
            }
        }
    }
    cr_assert_eq(i, n);
}

Test(ephemeron, parallel_marking, .timeout = 300)
{
    cr_assert_eq(loam_option_set("gc_markers", 2), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    loam_heap_t *h = eheap(LOAM_PARALLEL_MARK);
    enum { N = 30000 / GC_SAN_DIVISOR };
    parallel_build(h, N);
    size_t dead = N - (N + 2) / 3;
    size_t helped = 0;
    for (int round = 0; round < 6; round++) {
        loam_gc_collect(h);
        helped += gc_stats(h).gc_bytes_marked_helpers;
        parallel_check(N);
        cr_assert_eq(eph_cleared(h), 4 * dead, "round %d: %zu pairs cleared, %zu expected", round,
                     eph_cleared(h), 4 * dead);
        cr_assert_eq(live_blocks(h), N * 2 + (N - dead) * 8);
    }
    /* Not asserted: on a busy machine the helpers may join no marking. */
    fprintf(stderr, "parallel: helpers marked %zu bytes in 6 markings of %zu bytes\n", helped,
            gc_stats(h).gc_bytes_marked);
    heap_done(h);
}

/* ---- leak check, modes, statistics --------------------------------------------------------- */

struct leaks {
    void  *seen[8];
    size_t n;
};

static void note_leak(void *block, size_t size, void *user)
{
    (void)size;
    struct leaks *l = user;
    if (l->n < 8)
        l->seen[l->n] = block;
    l->n++;
}

static bool leaked(const struct leaks *l, void *p)
{
    for (size_t i = 0; i < l->n && i < 8; i++)
        if (l->seen[i] == p)
            return true;
    return false;
}

Test(ephemeron, leak_check_clears_nothing_and_reports_what_dead_keys_hold)
{
    loam_heap_t *h = heap_with(LOAM_MANUAL, 0);
    obj_t *t = new_table(h, 2);
    roots[0] = t;
    obj_t *klive = new_node(h, 0), *vlive = new_node(h, 1);
    obj_t *kdead = new_node(h, 0), *vdead = new_node(h, 1);
    vlive->f[0] = klive;
    vdead->f[0] = kdead;
    roots[1] = klive;
    t->f[0] = kdead, t->f[1] = vdead;
    t->f[2] = klive, t->f[3] = vlive;
    struct leaks l = { { 0 }, 0 };
    cr_assert_eq(loam_leak_check(h, note_leak, &l), 2, "%zu leaks reported, 2 expected", l.n);
    cr_assert(leaked(&l, kdead) && leaked(&l, vdead), "the dead key and its value are the leaks");
    cr_assert_eq(t->f[0], kdead, "the leak check cleared a pair");
    cr_assert_eq(t->f[1], vdead);
    /* Manual: loam_gc_collect does nothing, clears nothing. */
    loam_gc_collect(h);
    cr_assert_eq(t->f[0], kdead);
    /* Collected from now on: the next collection clears the dead key's pair. */
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    loam_gc_collect(h);
    cr_assert_null(t->f[0]);
    cr_assert_null(t->f[1]);
    cr_assert_eq(t->f[2], klive);
    cr_assert_eq(t->f[3], vlive);
    cr_assert_eq(live_blocks(h), 3);
    heap_done(h);
}

Test(ephemeron, statistics_count_cleared_pairs)
{
    loam_heap_t *h = eheap(0);
    enum { N = 100 };
    obj_t *t = new_table(h, N), *keep = new_node(h, N / 4);
    roots[0] = t;
    roots[1] = keep;
    for (size_t i = 0; i < N; i++) {
        obj_t *k = new_node(h, 0);
        t->f[2 * i] = k;
        t->f[2 * i + 1] = new_node(h, 0);
        if (i % 4 == 0)
            keep->f[i / 4] = k;             /* every fourth key is reachable */
    }
    size_t kept = N / 4;
    loam_weak_t *w = loam_weak_new(h, t->f[2]);    /* a weak reference counts apart */
    loam_gc_collect(h);
    loam_stats_t st = gc_stats(h);
    cr_assert_eq(st.gc_ephemerons_cleared, N - kept, "%zu cleared, %zu expected", st.gc_ephemerons_cleared,
                 N - kept);
    cr_assert_eq(st.gc_weak_cleared, 1);
    loam_gc_collect(h);
    cr_assert_eq(eph_cleared(h), N - kept, "cleared pairs counted again");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    loam_heap_print_stats(h, f, LOAM_STATS_JSON);
    loam_heap_print_stats(h, f, LOAM_STATS_TEXT);
    fclose(f);
    char want[64];
    snprintf(want, sizeof want, "\"gc_ephemerons_cleared\":%zu,", N - kept);
    cr_assert_not_null(strstr(text, want), "JSON statistics lack %s", want);
    snprintf(want, sizeof want, "%zu ephemerons cleared", N - kept);
    cr_assert_not_null(strstr(text, want), "text statistics lack \"%s\"", want);
    free(text);
    loam_weak_free(w);
    heap_done(h);
}

/* ---- memory after a spike ----------------------------------------------------------------- */

/* 200,000 pairs whose keys die: one collection records them all (a pair
 * record each, and each key in the map of waiting keys: 16 MB), then clears
 * them. The next collection meets no pair: the records' memory goes back to
 * the OS. Measured as the process's resident memory outside the heap's own
 * (the heap keeps the keys' emptied slabs a while for regrowth). */
Test(ephemeron, the_records_of_a_spike_of_pairs_go_back_after_it, .timeout = 120)
{
    loam_heap_t *h = eheap(0);
    const size_t N = 200000;
    obj_t *t = new_table(h, N);
    roots[0] = t;
    for (size_t i = 0; i < N; i++)
        t->f[2 * i] = new_node(h, 0);       /* only the table holds it: dead */
    loam_gc_collect(h);
    cr_assert_eq(eph_cleared(h), N, "%zu pairs cleared of %zu", eph_cleared(h), N);
    size_t spike = rss_outside_heap(h);
    loam_gc_collect(h);                     /* the cleared pairs: no key, no record */
    expect_given_back("ephemeron/the_records_of_a_spike", spike, rss_outside_heap(h), 8 * MiB);
    for (size_t i = 0; i < N; i++)
        cr_assert_null(t->f[2 * i]);
    /* And pairs work as before with the records made anew. */
    obj_t *k = new_node(h, 0), *v = new_node(h, 0);
    roots[1] = k;
    t->f[0] = k;
    t->f[1] = v;
    loam_gc_collect(h);
    cr_assert_eq(t->f[0], k);
    cr_assert_eq(t->f[1], v, "a live key's value was dropped");
    roots[1] = NULL;
    loam_gc_collect(h);
    cr_assert_null(t->f[0]);
    cr_assert_null(t->f[1]);
    heap_done(h);
}
