/* tests/test_gc_generational.c — LOAM_GENERATIONAL heaps: minor collections,
 * the write barrier, and what old objects mean for frees, finalizers, weak
 * references and mode switches.
 *
 *  - a young object reachable only from an old one survives minor collections
 *    when the store went through loam_write_barrier (slot address, interior,
 *    or a large old object, which needs no card);
 *  - minor collections reclaim young garbage and leave old garbage to the
 *    next major one (loam_gc_collect), which reclaims it;
 *  - loam_free of an old object makes its block young again: a pointer
 *    stored into it when reallocated, with no barrier (a fresh object needs
 *    none), is followed by the next minor collection;
 *  - finalizers and weak references of old objects wait for a major
 *    collection; those of young objects are handled by a minor one;
 *  - a heap switched to manual and back starts with a major collection.
 * Minor collections are the automatic ones (a small gc_young_min makes them
 * frequent); heaps have LOAM_NO_STACK_SCAN so live counts are exact. */
#define _GNU_SOURCE
#include "harness.h"
#include <stdint.h>
#include <string.h>

#include "gc_util.h"

#define OBJ_TAG 0x6E4E0B1EC7000001ull
typedef struct obj {
    uintptr_t   tag;
    uintptr_t   value;
    struct obj *kid[2];
} obj_t;

static void *root;                          /* registered by gen_heap */

static void trace_obj(void *p, loam_tracer_t *t, void *user)
{
    (void)user;
    obj_t *o = p;
    if (o->tag == OBJ_TAG) {
        loam_mark(t, o->kid[0]);
        loam_mark(t, o->kid[1]);
    }
}

static loam_heap_t *gen_heap(void)
{
    cr_assert_eq(loam_option_set("gc_young_min", 32 * 1024), 0);
    cr_assert_eq(loam_option_set("gc_growth", 100), 0);
    loam_config_t cfg = { 0 };
    cfg.mode = LOAM_GC;
    cfg.flags = LOAM_GENERATIONAL | LOAM_NO_STACK_SCAN;
    cfg.trace = trace_obj;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    root = NULL;
    loam_root_add(h, &root);
    return h;
}

static void gen_heap_done(loam_heap_t *h)
{
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* The root dropped, a major collection leaves nothing live; then done. */
static void gen_heap_done_empty(loam_heap_t *h)
{
    root = NULL;
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_bytes, 0);
    gen_heap_done(h);
}

/* obj, the root's target, made old by a major collection. */
static void *make_old_root(loam_heap_t *h, void *obj)
{
    root = obj;
    loam_gc_collect(h);
    return obj;
}

static obj_t *new_obj(loam_heap_t *h, uintptr_t value)
{
    obj_t *o = loam_gc_alloc(h, sizeof *o, LOAM_TRACED);
    cr_assert_not_null(o);
    o->tag = OBJ_TAG;
    o->value = value;
    return o;
}

/* Allocate young garbage until `n` more minor collections have run. The
 * allocation that ran the last one returns a block made after it: that one
 * is freed, so live counts are the survivors'. */
static void run_minors(loam_heap_t *h, size_t n)
{
    size_t want = gc_stats(h).gc_minor_collections + n;
    size_t before = gc_stats(h).gc_collections;
    for (size_t i = 0;; i++) {
        cr_assert_lt(i, 10 * 1000 * 1000, "no minor collection came");
        obj_t *o = new_obj(h, i);
        if (gc_stats(h).gc_minor_collections >= want) {
            loam_free(o);
            break;
        }
    }
    cr_assert_eq(gc_stats(h).gc_collections - before, n,
                 "a major collection ran among the minor ones: the test's old garbage is too big");
}

static void expect_obj(const obj_t *o, uintptr_t value, const char *what)
{
    cr_assert_eq(o->tag, OBJ_TAG, "%s: tag overwritten (freed and reused)", what);
    cr_assert_eq(o->value, value, "%s: value %lu, expected %lu", what, (unsigned long)o->value,
                 (unsigned long)value);
}

Test(gc_generational, young_object_stored_into_an_old_one_survives_minor_collections)
{
    loam_heap_t *h = gen_heap();
    obj_t *old = make_old_root(h, new_obj(h, 1));     /* loam_gc_collect: major */
    cr_assert_eq(gc_stats(h).gc_minor_collections, 0, "loam_gc_collect must be major");

    obj_t *young = new_obj(h, 2);
    old->kid[0] = young;
    loam_write_barrier(&old->kid[0]);       /* the slot's address */
    obj_t *young2 = new_obj(h, 3);
    old->kid[1] = young2;
    loam_write_barrier((char *)old + 5);    /* any address inside the object */
    young = young2 = NULL;
    run_minors(h, 3);
    expect_obj(old->kid[0], 2, "young child of an old object");
    expect_obj(old->kid[1], 3, "second young child of an old object");

    /* Young garbage is reclaimed by the minor collections: only the three
     * objects stay. */
    run_minors(h, 1);
    cr_assert_eq(gc_stats(h).live_blocks, 3, "%zu live blocks after a minor collection",
                 gc_stats(h).live_blocks);
    gen_heap_done(h);
}

/* ---- promotion at the second minor collection ---------------------------------------- */

/* n young objects in a chain, from old->kid[0] (through the barrier). */
static obj_t *chain_from(loam_heap_t *h, obj_t *old, size_t n, uintptr_t first)
{
    obj_t *head = NULL;
    for (size_t i = 0; i < n; i++) {
        obj_t *o = new_obj(h, first + n - 1 - i);
        o->kid[0] = head;                   /* fresh: no barrier */
        head = o;
    }
    old->kid[0] = head;
    loam_write_barrier(&old->kid[0]);
    return head;
}

static void expect_chain(const obj_t *o, size_t n, uintptr_t first, const char *what)
{
    for (size_t i = 0; i < n; i++, o = o->kid[0])
        expect_obj(o, first + i, what);
    cr_assert_null(o, "%s: longer than %zu", what, n);
}

/* Live at one minor collection, dropped before the next: that next one
 * reclaims it (promoted at once, it waited for a major collection). */
Test(gc_generational, a_block_live_at_one_minor_collection_is_reclaimed_by_the_next)
{
    loam_heap_t *h = gen_heap();
    obj_t *old = make_old_root(h, new_obj(h, 1));
    const size_t n = 200;
    chain_from(h, old, n, 100);
    run_minors(h, 1);                       /* the chain survives, young */
    expect_chain(old->kid[0], n, 100, "the chain after one minor collection");
    cr_assert_eq(gc_stats(h).live_blocks, n + 1);
    old->kid[0] = NULL;
    loam_write_barrier(&old->kid[0]);
    run_minors(h, 1);                       /* asserts no major collection ran */
    cr_assert_eq(gc_stats(h).live_blocks, 1, "%zu live blocks: the dropped chain was promoted",
                 gc_stats(h).live_blocks);
    gen_heap_done_empty(h);
}

/* Still live at a second minor collection: old from then on, and kept. A
 * young object stored into it after the first, reachable only through it,
 * is found by the minor collections after (its card stays dirty for two). */
Test(gc_generational, a_survivor_and_what_is_stored_into_it_stay_alive)
{
    loam_heap_t *h = gen_heap();
    obj_t *old = make_old_root(h, new_obj(h, 1));
    obj_t *s = chain_from(h, old, 1, 2);
    run_minors(h, 1);                       /* s survives once */
    s->kid[1] = new_obj(h, 3);              /* s is no fresh object: the barrier */
    loam_write_barrier(&s->kid[1]);
    for (int i = 0; i < 4; i++) {
        run_minors(h, 1);                   /* s promoted; then its child; then both old */
        expect_obj(s, 2, "the survivor");
        expect_obj(s->kid[1], 3, "the object stored into the survivor");
    }
    cr_assert_eq(gc_stats(h).live_blocks, 3);
    gen_heap_done_empty(h);
}

/* loam_free of a survivor: its block is free, neither old nor a survivor;
 * a second free is a fault; the block taken again lives as a young one. */
static int survivor_faults;
static void count_survivor_fault(loam_heap_t *h, const char *message, void *addr, void *user)
{
    (void)h, (void)message, (void)addr, (void)user;
    survivor_faults++;
}

Test(gc_generational, a_freed_survivor_is_free)
{
    cr_assert_eq(loam_option_set("gc_young_min", 32 * 1024), 0);
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_GENERATIONAL | LOAM_NO_STACK_SCAN,
                          .trace = trace_obj, .error = count_survivor_fault };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    root = NULL;
    loam_root_add(h, &root);
    obj_t *old = make_old_root(h, new_obj(h, 1));
    obj_t *s = chain_from(h, old, 1, 2);
    run_minors(h, 1);                       /* s survives once */
    old->kid[0] = NULL;
    loam_write_barrier(&old->kid[0]);
    survivor_faults = 0;
    loam_free(s);
    cr_assert_eq(survivor_faults, 0, "freeing a survivor was refused");
    loam_free(s);
    cr_assert_eq(survivor_faults, 1, "a second free of a survivor was not reported");
    obj_t *again = new_obj(h, 4);           /* most likely the same block */
    again->kid[1] = new_obj(h, 5);
    old->kid[1] = again;
    loam_write_barrier(&old->kid[1]);
    run_minors(h, 3);
    expect_obj(again, 4, "the block taken again");
    expect_obj(again->kid[1], 5, "its child");
    cr_assert_eq(gc_stats(h).live_blocks, 3, "%zu live blocks", gc_stats(h).live_blocks);
    gen_heap_done_empty(h);
}

Test(gc_generational, a_large_old_object_needs_no_card)
{
    loam_heap_t *h = gen_heap();
    size_t n = 512 * 1024 / sizeof(void *);         /* above mmap_threshold: a large block */
    void **big = loam_gc_alloc(h, n * sizeof(void *), LOAM_CONSERVATIVE);
    cr_assert_not_null(big);
    make_old_root(h, big);
    obj_t *young = new_obj(h, 7);
    big[n - 1] = young;
    loam_write_barrier(&big[n - 1]);        /* ignored for large blocks, which are rescanned */
    young = NULL;
    run_minors(h, 2);
    expect_obj(big[n - 1], 7, "young object held by a large old one");
    gen_heap_done(h);
}

/* The root's target (value 1), old, whose only child (value 2), old too,
 * it has just dropped: old garbage. */
static obj_t *root_and_old_garbage(loam_heap_t *h)
{
    obj_t *a = new_obj(h, 1), *b = new_obj(h, 2);
    root = a;
    a->kid[0] = b;
    loam_gc_collect(h);
    a->kid[0] = NULL;
    loam_write_barrier(&a->kid[0]);
    return a;
}

Test(gc_generational, old_garbage_waits_for_a_major_collection)
{
    loam_heap_t *h = gen_heap();
    root_and_old_garbage(h);
    cr_assert_eq(gc_stats(h).live_blocks, 2);
    run_minors(h, 2);
    cr_assert_eq(gc_stats(h).live_blocks, 2, "a minor collection freed an old object");
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_blocks, 1, "the major collection kept old garbage");
    gen_heap_done_empty(h);
}

/* Old blocks that die while the program makes only short-lived garbage do
 * not grow the old bytes: every 64 minor collections in a row, a major one
 * finds them anyway. */
Test(gc_generational, old_garbage_goes_after_64_minor_collections_in_a_row)
{
    loam_heap_t *h = gen_heap();
    obj_t *a = root_and_old_garbage(h);
    run_minors(h, 64);
    cr_assert_eq(gc_stats(h).live_blocks, 2, "a minor collection freed an old object");
    size_t minors = gc_stats(h).gc_minor_collections, all = gc_stats(h).gc_collections;
    for (size_t i = 0;; i++) {
        cr_assert_lt(i, 10 * 1000 * 1000, "no collection came");
        obj_t *o = new_obj(h, i);           /* garbage */
        if (gc_stats(h).gc_collections != all) {
            loam_free(o);                   /* made after the collection */
            break;
        }
    }
    cr_assert_eq(gc_stats(h).gc_minor_collections, minors, "a 65th minor collection in a row");
    cr_assert_eq(gc_stats(h).live_blocks, 1, "the major collection kept old garbage");
    expect_obj(a, 1, "the root");
    gen_heap_done_empty(h);
}

Test(gc_generational, a_freed_old_block_is_young_when_handed_out_again)
{
    loam_heap_t *h = gen_heap();
    obj_t *old = make_old_root(h, new_obj(h, 1));
    /* Freed and taken again at once: the same block, most likely. */
    loam_free(old);
    obj_t *again = new_obj(h, 2);
    root = again;
    /* Stores into a fresh object need no barrier. */
    again->kid[0] = new_obj(h, 3);
    run_minors(h, 3);
    expect_obj(again, 2, "the reallocated block");
    expect_obj(again->kid[0], 3, "the child of the reallocated block");
    loam_stats_t st = gc_stats(h);
    cr_assert_eq(st.live_blocks, 2, "%zu live blocks", st.live_blocks);
    gen_heap_done_empty(h);
}

/* Young garbage in slabs that also hold old blocks, of sizes that take
 * bump ranges and of sizes that take blocks one by one: every minor
 * collection reclaims it. A minor sweep skips the slabs no block went out
 * of since the last collection (their blocks are all old), so each way a
 * block leaves a slab must be seen: holes a free left in old slabs (taken
 * from the free set, or from a thread cache), and runs of dead blocks
 * between sparse old ones (taken from a slab still waiting for its sweep). */
static void young_garbage_beside_old_blocks(size_t size, bool sparse)
{
    enum { OLD = 400, SPACING = 32 };
    static void *old[OLD];
    loam_heap_t *h = gen_heap();
    memset(old, 0, sizeof old);
    loam_root_add_range(h, old, old + OLD);
    size_t kept = 0;
    /* No collection until the explicit one: every dead run stays whole. */
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, (size_t)256 << 20), 0);
    /* Sparse: every SPACING-th block of a slab is kept, from its first on
     * (blocks come out of a fresh slab one after another: a gap is a new
     * slab), so the dead runs in between are whole. */
    char *prev = NULL;
    for (size_t i = 0, in_slab = 0; kept < OLD; i++, in_slab++) {
        char *p = loam_gc_alloc(h, size, LOAM_ATOMIC);
        cr_assert_not_null(p);
        if (p != prev + size)
            in_slab = 0;
        prev = p;
        if (!sparse || in_slab % SPACING == 0)
            old[kept++] = p;
    }
    loam_gc_collect(h);                         /* major: the kept ones are old */
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 0), 0);   /* the options' again */
    if (!sparse) {
        for (size_t i = 0; i < OLD; i += 2) {   /* holes in the old slabs */
            loam_free(old[i]);
            old[i] = NULL;
        }
        kept /= 2;
    }
    for (int round = 0; round < 3; round++) {
        /* Garbage of the size, then of the test's objects until a minor
         * collection has run (run_minors frees its last one). Sparse: a few
         * of the dead runs, each long enough to be taken as a bump range. */
        for (size_t i = 0; i < (sparse ? 8 * (SPACING - 1) : OLD * 4); i++)
            cr_assert_not_null(loam_gc_alloc(h, size, LOAM_ATOMIC));
        run_minors(h, 1);
        loam_stats_t st = gc_stats(h);
        cr_assert_eq(st.live_blocks, kept,
                     "size %zu%s, round %d: %zu blocks out after a minor collection, %zu old", size,
                     sparse ? " (sparse)" : "", round, st.live_blocks, kept);
    }
    loam_root_remove_range(h, old);
    gen_heap_done(h);
}

Test(gc_generational, minor_collections_reclaim_young_garbage_beside_old_blocks)
{
    static const size_t sizes[] = { 32, 48, 320, 2048, 6000 };
    for (size_t z = 0; z < sizeof sizes / sizeof *sizes; z++) {
        young_garbage_beside_old_blocks(sizes[z], false);
        young_garbage_beside_old_blocks(sizes[z], true);
    }
}

/* An old large block the program frees leaves the old generation's bytes:
 * with it counted, the old blocks would pass their allowance and the next
 * collection would be major. */
Test(gc_generational, a_freed_old_large_block_leaves_the_old_bytes)
{
    loam_heap_t *h = gen_heap();
    obj_t *holder = make_old_root(h, new_obj(h, 1));     /* major: the old bytes are tiny */
    void *big = loam_gc_alloc(h, 1024 * 1024, LOAM_ATOMIC);
    cr_assert_not_null(big);
    holder->kid[0] = big;
    loam_write_barrier(&holder->kid[0]);
    run_minors(h, 1);                       /* big is old now, far past the allowance */
    cr_assert_geq(gc_stats(h).gc_live_after, 1024 * 1024);
    holder->kid[0] = NULL;
    loam_free(big);
    run_minors(h, 3);                       /* asserts they were all minor */
    expect_obj(holder, 1, "the old root");
    gen_heap_done(h);
}

static int finalized;
static void count_finalizer(void *obj, void *data)
{
    (void)obj;
    (void)data;
    finalized++;
}

Test(gc_generational, finalizers_and_weak_references)
{
    loam_heap_t *h = gen_heap();
    obj_t *holder = new_obj(h, 0);
    root = holder;
    holder->kid[0] = new_obj(h, 1);         /* will be old */
    loam_finalizer_set(h, holder->kid[0], count_finalizer, NULL);
    loam_weak_t *w_old = loam_weak_new(h, holder->kid[0]);
    loam_gc_collect(h);
    holder->kid[0] = NULL;
    loam_write_barrier(&holder->kid[0]);

    obj_t *y = new_obj(h, 2);               /* young, dropped at once */
    loam_finalizer_set(h, y, count_finalizer, NULL);
    loam_weak_t *w_young = loam_weak_new(h, y);
    y = NULL;
    finalized = 0;
    run_minors(h, 2);
    cr_assert_eq(finalized, 1, "a minor collection finalizes the young object only (%d ran)", finalized);
    cr_assert_null(loam_weak_get(w_young), "weak reference to dead young object not cleared");
    cr_assert_not_null(loam_weak_get(w_old), "weak reference to an old object cleared by a minor collection");
    loam_gc_collect(h);
    cr_assert_eq(finalized, 2, "the major collection finalizes the old object");
    cr_assert_null(loam_weak_get(w_old));
    loam_weak_free(w_old);
    loam_weak_free(w_young);
    gen_heap_done(h);
}

Test(gc_generational, switching_to_manual_and_back_starts_with_a_major_collection)
{
    loam_heap_t *h = gen_heap();
    obj_t *a = make_old_root(h, new_obj(h, 1));
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    /* Manual: an old block is freed and taken again, and a pointer to a new
     * block stored into it with no barrier. */
    loam_free(a);
    obj_t *b = new_obj(h, 2);
    root = b;
    b->kid[0] = new_obj(h, 3);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    size_t minors = gc_stats(h).gc_minor_collections, all = gc_stats(h).gc_collections;
    for (size_t i = 0; gc_stats(h).gc_collections == all; i++)
        new_obj(h, i);
    cr_assert_eq(gc_stats(h).gc_minor_collections, minors, "the first collection after the switch was minor");
    run_minors(h, 2);
    expect_obj(b, 2, "object made while manual");
    expect_obj(b->kid[0], 3, "its child");
    gen_heap_done(h);
}

Test(gc_generational, statistics_count_minor_collections)
{
    loam_heap_t *h = gen_heap();
    loam_gc_collect(h);
    run_minors(h, 2);
    loam_stats_t st = gc_stats(h);
    cr_assert_geq(st.gc_collections, st.gc_minor_collections + 1, "the first collection is major");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    loam_heap_print_stats(h, f, LOAM_STATS_JSON);
    fclose(f);
    cr_assert_not_null(strstr(text, "\"gc_minor_collections\":"), "JSON statistics lack gc_minor_collections");
    free(text);
    gen_heap_done(h);
}

/* A generational heap's pacing floor is gc_young_min (gc_min_bytes stays
 * out of it): with a small live heap, one collection per gc_young_min bytes
 * allocated. */
Test(gc_generational, pacing_follows_gc_young_min)
{
    loam_heap_t *h = gen_heap();
    cr_assert_eq(loam_option_set("gc_young_min", 256 * 1024), 0);
    cr_assert_eq(loam_option_set("gc_min_bytes", 64L * 1024 * 1024), 0);
    loam_gc_collect(h);
    size_t before = gc_stats(h).gc_collections;
    size_t total = 32 * MiB;
    for (size_t i = 0; i < total / sizeof(obj_t); i++)
        new_obj(h, i);
    size_t n = gc_stats(h).gc_collections - before;
    /* 32 MiB / 256 KiB = 128, give or take the thread cache's batches */
    cr_assert(n >= 100 && n <= 140, "%zu collections for 32 MiB of garbage with gc_young_min = 256 KiB", n);
    gen_heap_done(h);
}

/* gc_stress=1 (an option for testing embedders): every allocation runs a
 * collection, minor ones here, so a missing write barrier shows at the
 * very next allocation: the young object stored into an old one without it
 * is freed, and handed out again soon. With the barrier, it survives. */
Test(gc_generational, gc_stress_catches_a_missing_write_barrier)
{
    loam_heap_t *h = gen_heap();
    obj_t *old = make_old_root(h, new_obj(h, 1));
    cr_assert_eq(loam_option_set("gc_stress", 1), 0);
    old->kid[0] = new_obj(h, 2);
    loam_write_barrier(&old->kid[0]);
    old->kid[1] = new_obj(h, 3);            /* the embedder's bug: no barrier */
    size_t before = gc_stats(h).gc_collections, minor_before = gc_stats(h).gc_minor_collections;
    bool caught = false;
    size_t allocations = 0;
    while (!caught && allocations < 100) {
        obj_t *o = new_obj(h, 1000 + allocations);
        allocations++;
        caught = o == old->kid[1] || old->kid[1]->tag != OBJ_TAG || old->kid[1]->value != 3;
    }
    size_t collections = gc_stats(h).gc_collections - before;
    size_t minors = gc_stats(h).gc_minor_collections - minor_before;
    cr_assert_eq(loam_option_set("gc_stress", 0), 0);
    cr_assert(caught, "the young object behind the missing barrier was not reused in %zu allocations",
              allocations);
    cr_assert_leq(allocations, 10, "the missing barrier showed only after %zu allocations", allocations);
    cr_assert_eq(collections, allocations, "%zu collections for %zu allocations", collections, allocations);
    cr_assert_eq(minors, collections, "%zu of %zu collections minor", minors, collections);
    expect_obj(old->kid[0], 2, "the young object stored with the barrier");
    old->kid[1] = NULL;
    gen_heap_done_empty(h);
}
