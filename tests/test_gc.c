/* tests/test_gc.c — the collector: reachability, roots, kinds, pacing, stats.
 *
 *  - cycles (traced, conservative, mixed, self-loops, a 1000-ring) survive
 *    while rooted and are all reclaimed once not;
 *  - 10-million-cell linked lists (conservative and traced) collect without
 *    deep recursion, survive intact while rooted (walked after a collection)
 *    and are reclaimed when dropped;
 *  - interior pointers held only on the stack keep their objects alive on a
 *    stack-scanning heap (small and large blocks), while unreferenced objects
 *    of the same heap are reclaimed;
 *  - root ranges (interior pointers too) and root slots (read at collection
 *    time) keep objects alive until removed; the roots callback gets the
 *    user pointer at every collection;
 *  - kinds: an atomic block's words are never followed; a conservative block's
 *    words are (interior pointers too); a traced block's only through the trace
 *    callback; CONSERVATIVE and TRACED blocks are zero-filled also on reuse;
 *  - loam_free of collected blocks reclaims at once; loam_malloc / calloc /
 *    realloc on a collected heap give conservative blocks; realloc of an
 *    atomic or traced block gives a block of its kind;
 *  - pacing: garbage-allocating loops trigger collections by themselves and
 *    live/committed memory stays bounded;
 *  - statistics: gc_* fields plausible and exact where they can be, and the
 *    printed report mentions collections.
 * Heaps with LOAM_NO_STACK_SCAN give exact live counts: only the test's roots
 * keep anything alive. */
#define _GNU_SOURCE
#include "harness.h"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gc_util.h"
#include "gc/gc.h"

#ifdef LOAM_MEMCHECK
#include <valgrind/valgrind.h>
#endif

/* Objects of these tests: word 0 a tag, word 1 a child count, then children. */
#define NODE_TAG 0xB0D1E5000000A11Dull
typedef struct node {
    uintptr_t    tag;
    uintptr_t    n;
    struct node *kid[];
} node_t;

static size_t trace_calls;

/* Trace callback: reports the children of a node; a traced block with tag 0
 * (fresh) has none. Cells of the traced list are marked by tag CELL_TAG. */
#define CELL_TAG 0xCE11CE11000000C1ull
typedef struct cell {
    struct cell *next;
    uintptr_t    value;
} cell_t;

static void trace_node(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    trace_calls++;
    node_t *o = obj;
    if (o->tag == NODE_TAG) {
        for (uintptr_t i = 0; i < o->n; i++)
            loam_mark(t, o->kid[i]);
    }
}

static void trace_cell(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    loam_mark(t, ((cell_t *)obj)->next);
}

static int cmp_uintptr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

static loam_heap_t *gc_heap(unsigned flags, loam_trace_fn trace, loam_roots_fn roots, void *user)
{
    loam_config_t cfg = { 0 };
    cfg.mode = LOAM_GC;
    cfg.flags = flags;
    cfg.trace = trace;
    cfg.roots = roots;
    cfg.user = user;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h, "loam_heap_new(LOAM_GC) failed (errno %d)", errno);
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

static void expect_live(loam_heap_t *h, size_t blocks, const char *what)
{
    loam_stats_t st = gc_stats(h);
    cr_assert_eq(st.live_blocks, blocks, "%s: %zu live blocks, expected %zu", what, st.live_blocks, blocks);
    if (blocks == 0)
        cr_assert_eq(st.live_bytes, 0, "%s: %zu live bytes left", what, st.live_bytes);
}

/* ---- thread caches of a collected heap -------------------------------------------- */

/* A collected heap's thread cache only allocates (the sweep frees): a
 * refill gives it a bump range, up to 64 KiB of blocks next to each other,
 * where a cache that frees too gets batches of 64 blocks. Seen in the bytes
 * a cache holds just after a refill (statistics count a range's blocks as
 * cached), and in the live bytes, which must not count them. */
Test(gc, thread_cache_takes_bump_ranges_on_a_collected_heap)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, NULL, NULL, NULL);
    size_t most = 0;
    for (int i = 0; i < 2000; i++) {
        void *p = loam_gc_alloc(h, 32, LOAM_ATOMIC);
        cr_assert_not_null(p);
        loam_stats_t st = gc_stats(h);
        cr_assert_eq(st.live_bytes, (size_t)(i + 1) * 32, "after %d allocations: %zu live bytes", i + 1,
                     st.live_bytes);
        most = st.cached_bytes > most ? st.cached_bytes : most;
    }
    cr_assert_gt(most, 256 * 32, "the cache never held more than %zu bytes (batches of 256 blocks)", most);
    cr_assert_leq(most, 64 * 1024, "a range past 64 KiB: %zu bytes cached", most);
    loam_heap_destroy(h);
}

/* ---- cycles --------------------------------------------------------------------- */

Test(gc, cycles_are_collected)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, 6);
    root = holder;

    /* a 2-cycle of traced nodes */
    node_t *a = new_node(h, LOAM_TRACED, 1);
    holder->kid[0] = a;
    node_t *b = new_node(h, LOAM_TRACED, 1);
    a->kid[0] = b;
    b->kid[0] = a;
    /* a 3-cycle of conservative nodes through interior pointers */
    node_t *c = new_node(h, LOAM_CONSERVATIVE, 1);
    holder->kid[1] = c;
    node_t *d = new_node(h, LOAM_CONSERVATIVE, 1);
    c->kid[0] = (node_t *)((char *)d + 8);
    node_t *e = new_node(h, LOAM_CONSERVATIVE, 1);
    d->kid[0] = (node_t *)((char *)e + 16);
    e->kid[0] = c;
    /* self-loops */
    node_t *f = new_node(h, LOAM_TRACED, 1);
    f->kid[0] = f;
    holder->kid[2] = f;
    node_t *g = new_node(h, LOAM_CONSERVATIVE, 1);
    g->kid[0] = g;
    holder->kid[3] = g;
    /* a mixed cycle: traced -> conservative -> traced */
    node_t *m1 = new_node(h, LOAM_TRACED, 1);
    holder->kid[4] = m1;
    node_t *m2 = new_node(h, LOAM_CONSERVATIVE, 1);
    m1->kid[0] = m2;
    m2->kid[0] = m1;
    /* a ring of 1000 traced nodes */
    enum { RING = 1000 };
    node_t *first = new_node(h, LOAM_TRACED, 1);
    holder->kid[5] = first;
    node_t *prev = first;
    for (int i = 1; i < RING; i++) {
        node_t *x = new_node(h, LOAM_TRACED, 1);
        prev->kid[0] = x;
        prev = x;
    }
    prev->kid[0] = first;
    size_t total = 1 + 2 + 3 + 2 + 2 + RING;

    loam_gc_collect(h);
    expect_live(h, total, "all cycles rooted");
    cr_assert(a->kid[0] == b && b->kid[0] == a && a->tag == NODE_TAG && b->tag == NODE_TAG);
    cr_assert(c->kid[0] == (node_t *)((char *)d + 8) && e->kid[0] == c && d->tag == NODE_TAG);
    cr_assert(f->kid[0] == f && g->kid[0] == g && m2->kid[0] == m1 && m1->kid[0] == m2);
    node_t *x = first;
    for (int i = 0; i < RING; i++) {
        cr_assert_eq(x->tag, NODE_TAG, "ring node %d damaged", i);
        x = x->kid[0];
    }
    cr_assert_eq(x, first);

    /* cut one cycle loose at a time */
    holder->kid[0] = NULL;
    loam_gc_collect(h);
    expect_live(h, total - 2, "traced 2-cycle cut");
    holder->kid[5] = NULL;
    loam_gc_collect(h);
    expect_live(h, total - 2 - RING, "ring cut");
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "nothing rooted");
    cr_assert_gt(gc_stats(h).gc_bytes_swept, 0);
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* ---- long lists -------------------------------------------------------------------- */

#define LIST_CELLS ((size_t)10 * 1000 * 1000)

static void long_list(loam_kind_t kind)
{
    size_t n = LIST_CELLS / GC_SAN_DIVISOR;
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_cell, NULL, NULL);
    static void *head;
    head = NULL;
    loam_root_add(h, &head);
    for (size_t i = 0; i < n; i++) {
        cell_t *c = loam_gc_alloc(h, sizeof(cell_t), kind);
        cr_assert_not_null(c, "cell %zu", i);
        c->next = head;
        c->value = i ^ 0x5A5A5A5A00000000ull;
        head = c;
    }
    size_t auto_collections = gc_stats(h).gc_collections;
    loam_gc_collect(h);
    loam_stats_t st = gc_stats(h);
    cr_assert_eq(st.live_blocks, n, "%zu of %zu cells alive after a collection", st.live_blocks, n);
    cr_assert_geq(st.gc_bytes_marked, n * sizeof(cell_t));
    size_t i = n;
    for (cell_t *c = head; c; c = c->next) {
        cr_assert_gt(i, 0, "the list is longer than built");
        i--;
        cr_assert_eq(c->value, i ^ 0x5A5A5A5A00000000ull, "cell %zu holds a wrong value", i);
    }
    cr_assert_eq(i, 0, "the list ends early: %zu cells missing", i);
    fprintf(stderr, "long list (%s): %zu automatic collections while building %zu cells\n",
            kind == LOAM_TRACED ? "traced" : "conservative", auto_collections, n);
    cr_assert_gt(auto_collections, 0, "no automatic collection while allocating %zu cells", n);
    head = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "list dropped");
    loam_root_remove(h, &head);
    loam_heap_destroy(h);
}

Test(gc, ten_million_cell_list_conservative, .timeout = 300) { long_list(LOAM_CONSERVATIVE); }
Test(gc, ten_million_cell_list_traced, .timeout = 300) { long_list(LOAM_TRACED); }

/* A wide and deep tree too: a 2-million-node binary "comb" (each node's left
 * child is a leaf, its right child the rest) with traced nodes. */
Test(gc, deep_comb_traced, .timeout = 300)
{
    size_t n = 2 * 1000 * 1000 / GC_SAN_DIVISOR;
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    root = NULL;
    loam_root_add(h, &root);
    for (size_t i = 0; i < n; i++) {
        node_t *x = new_node(h, LOAM_TRACED, 2);
        x->kid[1] = root;
        root = x;
        node_t *leaf = new_node(h, LOAM_TRACED, 0);
        x->kid[0] = leaf;
    }
    loam_gc_collect(h);
    expect_live(h, 2 * n, "comb rooted");
    size_t k = 0;
    for (node_t *x = root; x; x = x->kid[1], k++)
        cr_assert(x->tag == NODE_TAG && x->n == 2 && x->kid[0]->tag == NODE_TAG && x->kid[0]->n == 0);
    cr_assert_eq(k, n);
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "comb dropped");
    loam_heap_destroy(h);
}

/* ---- the stack ------------------------------------------------------------------------ */

#define NKEEP 24
#define NDROP 200
static uintptr_t hidden_base[NKEEP];      /* base ^ HIDE: not a pointer for the scanner */
static size_t keep_size[NKEEP];
#define HIDE 0xFFFF000000000000ull

/* Make an object, fill it, and return only an interior pointer into it. */
static GC_NOINLINE void *make_interior(loam_heap_t *h, int i)
{
    size_t size = i == 0 ? 300 * KiB : i == 1 ? 20 * KiB : 16 + (size_t)i * 40;
    loam_kind_t kind = i % 2 ? LOAM_ATOMIC : LOAM_CONSERVATIVE;
    unsigned char *p = loam_gc_alloc(h, size, kind);
    cr_assert_not_null(p);
    gc_fill(p, 0, size, 1000 + (uint64_t)i);
    hidden_base[i] = (uintptr_t)p ^ HIDE;
    keep_size[i] = size;
    size_t off = i % 3 == 0 ? size - 1 : i % 3 == 1 ? size / 2 : 8;
    return p + off;
}

static GC_NOINLINE void make_garbage(loam_heap_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = loam_gc_alloc(h, 64 + (i % 7) * 16, i % 2 ? LOAM_ATOMIC : LOAM_CONSERVATIVE);
        cr_assert_not_null(p);
        gc_fill(p, 0, 64, 77);
    }
}

static GC_NOINLINE void fill_keep(loam_heap_t *h, void *volatile *keep)
{
    for (int i = 0; i < NKEEP; i++)
        keep[i] = make_interior(h, i);
    make_garbage(h, NDROP);
}

Test(gc, interior_pointers_on_the_stack_keep_objects)
{
    loam_heap_t *h = gc_heap(0, NULL, NULL, NULL);   /* conservative stack scanning (the default) */
    void *volatile keep[NKEEP];
    fill_keep(h, keep);
    gc_scrub_stack();
    loam_gc_collect(h);
    loam_stats_t st = gc_stats(h);
    cr_assert_geq(st.live_blocks, NKEEP, "objects held by interior pointers on the stack were reclaimed");
    cr_assert_leq(st.live_blocks, NKEEP + NDROP / 10,
                  "%zu blocks live: most of the %d unreferenced objects should have been reclaimed", st.live_blocks,
                  NDROP);
    for (int i = 0; i < NKEEP; i++) {
        unsigned char *base = (unsigned char *)(hidden_base[i] ^ HIDE);
        cr_assert_eq(loam_heap_of(base), h, "object %d no longer a block of the heap", i);
        cr_assert(loam_usable_size(base) >= keep_size[i]);
        size_t bad = gc_check(base, 0, keep_size[i], 1000 + (uint64_t)i);
        cr_assert_eq(bad, (size_t)-1, "object %d (held by an interior pointer) corrupt at byte %zu", i, bad);
    }
    /* New allocations must not land on the kept objects. */
    for (int r = 0; r < 2000; r++) {
        unsigned char *p = loam_gc_alloc(h, 16 + (size_t)(r % NKEEP) * 40, LOAM_ATOMIC);
        cr_assert_not_null(p);
        for (int i = 0; i < NKEEP; i++) {
            uintptr_t b = hidden_base[i] ^ HIDE;
            cr_assert((uintptr_t)p + 16 <= b || (uintptr_t)p >= b + keep_size[i],
                      "a new block %p overlaps kept object %d", (void *)p, i);
        }
    }
    for (int i = 0; i < NKEEP; i++)
        cr_assert_not_null(keep[i]);
    loam_heap_destroy(h);
}

/* ---- root ranges and slots --------------------------------------------------------------- */

Test(gc, root_range_keeps_objects_until_removed)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    uintptr_t *range = calloc(16, sizeof *range);     /* glibc memory */
    cr_assert_not_null(range);
    loam_root_add_range(h, range, range + 16);
    unsigned char *a = loam_gc_alloc(h, 200, LOAM_ATOMIC);
    range[5] = (uintptr_t)a + 24;                     /* interior */
    gc_fill(a, 0, 200, 5);
    node_t *b = new_node(h, LOAM_TRACED, 1);
    range[11] = (uintptr_t)b;
    unsigned char *c = loam_gc_alloc(h, 300 * KiB, LOAM_ATOMIC);   /* large, interior */
    range[15] = (uintptr_t)c + 200 * KiB;
    gc_fill(c, 0, 300 * KiB, 6);
    node_t *kid = new_node(h, LOAM_TRACED, 0);                     /* reached through b */
    b->kid[0] = kid;
    range[0] = 12345;                                              /* junk words */
    range[1] = (uintptr_t)-1;
    loam_gc_collect(h);
    expect_live(h, 4, "range rooted");
    cr_assert_eq(gc_check(a, 0, 200, 5), (size_t)-1);
    cr_assert_eq(gc_check(c, 0, 300 * KiB, 6), (size_t)-1);
    cr_assert(b->tag == NODE_TAG && b->kid[0] == kid && kid->tag == NODE_TAG);
    /* A second range on the stack, removed before the frame ends. */
    uintptr_t local[4] = { 0, (uintptr_t)a + 199, 0, 0 };
    loam_root_add_range(h, local, local + 4);
    loam_root_remove_range(h, range);
    loam_gc_collect(h);
    expect_live(h, 1, "only the stack range (holding a) registered");
    cr_assert_eq(gc_check(a, 0, 200, 5), (size_t)-1);
    loam_root_remove_range(h, local);
    loam_gc_collect(h);
    expect_live(h, 0, "every range removed");
    free(range);
    loam_heap_destroy(h);
}

static void *slot_a, *slot_b;

Test(gc, root_slots_add_and_remove)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    slot_a = slot_b = NULL;
    loam_root_add(h, &slot_a);                         /* registered while NULL */
    loam_root_add(h, &slot_b);
    node_t *x = new_node(h, LOAM_TRACED, 1);
    slot_a = x;                                        /* read at collection time */
    x->kid[0] = new_node(h, LOAM_CONSERVATIVE, 0);
    unsigned char *y = loam_gc_alloc(h, 1000, LOAM_ATOMIC);
    gc_fill(y, 0, 1000, 9);
    slot_b = y;
    loam_gc_collect(h);
    expect_live(h, 3, "both slots set");
    cr_assert(x->tag == NODE_TAG && x->kid[0]->tag == NODE_TAG);
    cr_assert_eq(gc_check(y, 0, 1000, 9), (size_t)-1);
    loam_root_remove(h, &slot_b);                      /* unregistered but still holding y */
    loam_gc_collect(h);
    expect_live(h, 2, "slot_b removed");
    cr_assert_eq(slot_b, y, "the collector must not write the slot");
    node_t *z = new_node(h, LOAM_TRACED, 0);
    slot_a = z;                                        /* x and its kid lose their root */
    loam_gc_collect(h);
    expect_live(h, 1, "slot_a moved to z");
    cr_assert_eq(z->tag, NODE_TAG);
    loam_root_remove(h, &slot_a);
    loam_gc_collect(h);
    expect_live(h, 0, "both slots removed");
    loam_heap_destroy(h);
}

typedef struct {
    void  *objs[8];
    size_t calls;
    bool   wrong_user;
} cb_roots_t;

static void roots_cb(loam_tracer_t *t, void *user)
{
    cb_roots_t *r = user;
    r->calls++;
    for (int i = 0; i < 8; i++)
        loam_mark(t, r->objs[i]);                     /* NULL entries too */
}

Test(gc, roots_callback_each_collection)
{
    static cb_roots_t r;
    memset(&r, 0, sizeof r);
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, roots_cb, &r);
    for (int i = 0; i < 8; i += 2) {
        r.objs[i] = new_node(h, i % 4 ? LOAM_TRACED : LOAM_CONSERVATIVE, 0);
    }
    for (int i = 0; i < 5; i++)
        (void)new_node(h, LOAM_TRACED, 0);
    size_t before = r.calls;
    loam_gc_collect(h);
    cr_assert_eq(r.calls, before + 1, "the roots callback must be called once per collection");
    expect_live(h, 4, "4 roots from the callback");
    r.objs[0] = NULL;
    loam_gc_collect(h);
    loam_gc_collect(h);
    cr_assert_eq(r.calls, before + 3);
    expect_live(h, 3, "one callback root cleared");
    memset(r.objs, 0, sizeof r.objs);
    loam_gc_collect(h);
    expect_live(h, 0, "no callback roots");
    loam_heap_destroy(h);
}

/* ---- kinds ------------------------------------------------------------------------------- */

Test(gc, kinds_decide_what_is_followed)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);

    /* atomic words are never followed */
    uintptr_t *at = loam_gc_alloc(h, 64, LOAM_ATOMIC);
    root = at;
    node_t *t1 = new_node(h, LOAM_TRACED, 0);
    at[0] = (uintptr_t)t1;
    at[1] = (uintptr_t)t1 + 8;
    loam_gc_collect(h);
    expect_live(h, 1, "only the atomic block: its words are not pointers");
    cr_assert_eq(at[0], (uintptr_t)t1, "atomic payload changed");

    /* conservative words are, interior ones too */
    uintptr_t *co = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    root = co;
    node_t *t2 = new_node(h, LOAM_TRACED, 0);
    node_t *t3 = new_node(h, LOAM_TRACED, 0);
    co[3] = (uintptr_t)t2;
    co[7] = (uintptr_t)t3 + sizeof(node_t) - 1;      /* last byte of t3 */
    loam_gc_collect(h);
    expect_live(h, 3, "conservative block and both targets");
    cr_assert(t2->tag == NODE_TAG && t3->tag == NODE_TAG);

    /* traced: only what the trace callback reports */
    node_t *tr = new_node(h, LOAM_TRACED, 1);
    root = tr;
    node_t *t4 = new_node(h, LOAM_TRACED, 0);
    node_t *t5 = new_node(h, LOAM_TRACED, 0);
    tr->kid[0] = t4;
    tr->n = 1;
    /* a word beyond the reported fields: the block was made for 1 kid, but
     * store t5 after the node in a bigger block */
    node_t *tr2 = loam_gc_alloc(h, sizeof(node_t) + 4 * sizeof(void *), LOAM_TRACED);
    tr2->tag = NODE_TAG;
    tr2->n = 1;
    tr2->kid[0] = NULL;
    tr2->kid[2] = t5;                                 /* not reported */
    tr->kid[0] = t4;
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, 2);
    holder->kid[0] = tr;
    holder->kid[1] = tr2;
    root = holder;
    loam_gc_collect(h);
    expect_live(h, 4, "holder, tr, tr2, t4 (t5 not reported by the trace callback)");
    cr_assert(tr->kid[0] == t4 && t4->tag == NODE_TAG);
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "nothing rooted");
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* A LOAM_TRACED object in a collected heap with no trace callback would
 * have its pointer fields followed by nobody, and what only they reach
 * freed under it: the allocation is refused (no callback can be added
 * later), small and large. A manual heap records the kind only, but then
 * cannot become collected. */
Test(gc, traced_allocation_without_a_trace_callback_is_refused)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, NULL, NULL, NULL);
    size_t sizes[] = { 0, 16, 1000, 300 * KiB };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        errno = 0;
        cr_assert_null(loam_gc_alloc(h, sizes[i], LOAM_TRACED), "TRACED of %zu bytes accepted without a trace callback", sizes[i]);
        cr_assert_eq(errno, EINVAL);
        void *c = loam_gc_alloc(h, sizes[i], LOAM_CONSERVATIVE);
        void *a = loam_gc_alloc(h, sizes[i], LOAM_ATOMIC);
        cr_assert(c && a, "the other kinds refused");
        loam_free(c);
        loam_free(a);
    }
    /* switched to manual, it records TRACED blocks, and cannot come back */
    cr_assert_eq(loam_heap_set_mode(h, LOAM_MANUAL), 0);
    void *t = loam_gc_alloc(h, 64, LOAM_TRACED);
    cr_assert_not_null(t, "a manual heap refused a TRACED block");
    errno = 0;
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), -1, "collected again with a TRACED block and no trace callback");
    cr_assert_eq(errno, EINVAL);
    loam_free(t);
    /* a manual heap without TRACED blocks may become collected */
    loam_heap_t *manual = loam_heap_new(NULL);
    cr_assert_not_null(manual);
    cr_assert_not_null(loam_gc_alloc(manual, 64, LOAM_ATOMIC));
    cr_assert_eq(loam_heap_set_mode(manual, LOAM_GC), 0);
    loam_heap_destroy(manual);
    loam_heap_destroy(h);
}

Test(gc, conservative_and_traced_blocks_are_zero_filled_on_reuse)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static const size_t sizes[] = { 16, 48, 100, 512, 4000, 40000, 200000 };
    for (int round = 0; round < 3; round++) {
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            for (int k = 0; k < 3; k++) {
                loam_kind_t kind = k == 0 ? LOAM_ATOMIC : k == 1 ? LOAM_CONSERVATIVE : LOAM_TRACED;
                for (int j = 0; j < 20; j++) {
                    unsigned char *p = loam_gc_alloc(h, sizes[s], kind);
                    cr_assert_not_null(p);
                    if (kind != LOAM_ATOMIC)
                        for (size_t i = 0; i < sizes[s]; i++)
                            cr_assert_eq(p[i], 0, "%s block of %zu bytes not zero at %zu (round %d)",
                                         kind == LOAM_TRACED ? "traced" : "conservative", sizes[s], i, round);
                    /* dirty it for the next round; traced: a tag that is no node */
                    memset(p, 0xC3, sizes[s]);
                    if (j % 2)
                        loam_free(p);
                }
            }
        }
        loam_gc_collect(h);
        expect_live(h, 0, "all garbage");
    }
    loam_heap_destroy(h);
}

/* A conservative word naming a free block marks it (the free key is read
 * only when a block is scanned). That mark must not outlive the collection:
 * once the block is allocated again, a stale bit would make it look marked
 * already at the next collection, and what only it reaches would be freed. */
Test(gc, a_mark_on_a_free_block_does_not_outlive_its_collection)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, NULL, NULL, NULL);
    static uintptr_t range[1];
    loam_root_add_range(h, range, range + 1);
    int reused = 0;
    for (int round = 0; round < 20; round++) {
        void *b = loam_gc_alloc(h, 3000, LOAM_CONSERVATIVE);
        cr_assert_not_null(b);
        loam_free(b);
        range[0] = (uintptr_t)b;                /* a stale word: the block is free */
        loam_gc_collect(h);
        range[0] = 0;
        void **c = loam_gc_alloc(h, 3000, LOAM_CONSERVATIVE);
        cr_assert_not_null(c);
        reused += (void *)c == b;
        unsigned char *child = loam_gc_alloc(h, 64, LOAM_ATOMIC);
        cr_assert_not_null(child);
        memset(child, 0xA7, 64);
        c[0] = child;                           /* reachable only through c */
        range[0] = (uintptr_t)c;
        loam_gc_collect(h);
        expect_live(h, 2, "the rooted block and its child");
        for (int k = 0; k < 64; k++)
            cr_assert_eq(child[k], 0xA7, "round %d: the child was freed", round);
        range[0] = 0;
        loam_gc_collect(h);
        expect_live(h, 0, "nothing rooted");
    }
    cr_assert_gt(reused, 0, "the freed block was never handed out again: the test proved nothing");
    loam_root_remove_range(h, range);
    loam_heap_destroy(h);
}

/* ---- loam_free and loam_malloc on a collected heap ------------------------------------------------ */

Test(gc, loam_free_of_collected_blocks)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    node_t *keep = new_node(h, LOAM_TRACED, 0);
    root = keep;
    loam_stats_t s0 = gc_stats(h);
    size_t c0 = s0.gc_collections;
    void *a = loam_gc_alloc(h, 1000, LOAM_CONSERVATIVE);
    void *b = new_node(h, LOAM_TRACED, 3);
    void *c = loam_gc_alloc(h, 33, LOAM_ATOMIC);
    void *d = loam_gc_alloc(h, 400 * KiB, LOAM_ATOMIC);      /* large */
    void *m = loam_malloc(h, 77);
    loam_stats_t s1 = gc_stats(h);
    cr_assert_eq(s1.live_blocks, s0.live_blocks + 5);
    loam_free(a);
    loam_free(b);
    loam_free(c);
    loam_free(d);
    loam_free(m);
    loam_stats_t s2 = gc_stats(h);
    cr_assert_eq(s2.live_blocks, s0.live_blocks, "loam_free must reclaim collected blocks at once");
    cr_assert_eq(s2.live_bytes, s0.live_bytes);
    cr_assert_eq(s2.gc_collections, c0, "no collection was needed");
    /* the heap goes on: reuse, collect, keep */
    for (int i = 0; i < 1000; i++) {
        node_t *x = new_node(h, LOAM_TRACED, 0);
        if (i % 3 == 0)
            loam_free(x);
    }
    loam_gc_collect(h);
    expect_live(h, 1, "only the rooted node");
    cr_assert_eq(keep->tag, NODE_TAG);
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "nothing rooted");
    loam_heap_destroy(h);
}

/* The lazy sweep takes an unmarked block for dead without reading it when
 * its slab had no free block at the collection (slabs filled to the last
 * block). Blocks freed before a collection (in free sets), and live ones
 * freed while their slabs still wait for the sweep, must still never be
 * handed out twice: every round checks that no two live slots share an
 * address and that every live block kept its contents. Both heaps: plain
 * and generational. The sizes are 3, 5 and 7 granules: their blocks
 * straddle words of mark bits, which the sweep visits a word at a time. */
static void frees_around_lazy_sweeps_of(unsigned flags, size_t SIZE);
static void frees_around_lazy_sweeps(unsigned flags)
{
    frees_around_lazy_sweeps_of(flags, 48);
    frees_around_lazy_sweeps_of(flags, 80);
    frees_around_lazy_sweeps_of(flags, 112);
}

static void frees_around_lazy_sweeps_of(unsigned flags, size_t SIZE)
{
    enum { N = 24000 };
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN | flags, NULL, NULL, NULL);
    static unsigned char *slot[N];
    static uint64_t tag[N];
    static uintptr_t sorted[N];
    loam_root_add_range(h, slot, slot + N);
    gc_rng_t rng = { gc_test_seed("frees_around_lazy_sweeps") };
    uint64_t next_tag = 1;
    for (int round = 0; round < 12; round++) {
        for (size_t i = 0; i < N; i++) {
            if (slot[i])
                continue;
            slot[i] = loam_gc_alloc(h, SIZE, LOAM_ATOMIC);
            cr_assert_not_null(slot[i]);
            tag[i] = next_tag++;
            gc_fill(slot[i], 0, SIZE, tag[i]);
        }
        size_t n = 0;
        for (size_t i = 0; i < N; i++)
            sorted[n++] = (uintptr_t)slot[i];
        qsort(sorted, n, sizeof sorted[0], cmp_uintptr);
        for (size_t i = 1; i < n; i++)
            cr_assert_neq(sorted[i], sorted[i - 1], "round %d: %#lx handed out twice while live", round,
                          (unsigned long)sorted[i]);
        for (size_t i = 0; i < N; i++)
            cr_assert_eq(gc_check(slot[i], 0, SIZE, tag[i]), (size_t)-1, "round %d: slot %zu damaged", round, i);
        for (size_t i = 0; i < N; i++) {
            size_t r = gc_rng_below(&rng, 8);
            if (r < 3) {
                slot[i] = NULL;                   /* garbage for the collection */
            } else if (r == 3 && round % 2) {
                loam_free(slot[i]);               /* free before it: on a list */
                slot[i] = NULL;
            }
        }
        loam_gc_collect(h);
        for (size_t i = 0; i < N; i++)
            if (slot[i] && gc_rng_below(&rng, 8) == 0) {
                loam_free(slot[i]);               /* live, freed while its slab waits */
                slot[i] = NULL;
            }
    }
    memset(slot, 0, sizeof slot);
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_blocks, 0);
    loam_root_remove_range(h, slot);
    loam_heap_destroy(h);
}

/* A lazy sweep hands a thread its dead blocks two ways: a batch into the
 * cache's bin, which may stop inside a word of marks (and keeps that word's
 * marks, some of them for blocks still ahead), or a bump range, the next run
 * of dead blocks. Whichever passes a word last must clear the marks of the
 * live blocks behind the cursor in it: a mark left set into the next
 * collection makes the marker take its block for traced already, and what
 * only that block reaches dies. Here every third 64-byte parent lives: dead
 * runs of two, too short for a range, so the refills of the garbage
 * allocated next take batches and ranges in turn; then each parent gets a
 * child, which only it reaches, and after a second collection every child
 * must be intact. */
Test(gc, marks_behind_a_stopped_sweep_do_not_outlive_it)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    enum { N = 3000, KIDS = 5 };        /* 16 + 5 x 8 bytes: 64-byte blocks */
    static node_t *parent[N];
    loam_root_add_range(h, parent, parent + N);
    for (int i = 0; i < N; i++) {
        parent[i] = new_node(h, LOAM_TRACED, KIDS);
        memset(parent[i]->kid, 0, KIDS * sizeof(node_t *));
    }
    for (int i = 0; i < N; i++)
        if (i % 3)
            parent[i] = NULL;
    loam_gc_collect(h);
    for (int i = 0; i < 2 * N; i++)     /* garbage, through the parents' slabs */
        new_node(h, LOAM_TRACED, KIDS)->kid[0] = NULL;
    for (int i = 0; i < N; i += 3) {
        uintptr_t *kid = loam_gc_alloc(h, 64, LOAM_ATOMIC);
        cr_assert_not_null(kid);
        for (int w = 0; w < 8; w++)
            kid[w] = (uintptr_t)i * 8 + (uintptr_t)w;
        parent[i]->kid[0] = (node_t *)kid;
    }
    loam_gc_collect(h);
    for (int i = 0; i < N; i++)         /* what was freed is handed out again */
        memset(loam_gc_alloc(h, 64, LOAM_ATOMIC), 0xEE, 64);
    for (int i = 0; i < N; i += 3) {
        const uintptr_t *kid = (const uintptr_t *)parent[i]->kid[0];
        for (int w = 0; w < 8; w++)
            cr_assert_eq(kid[w], (uintptr_t)i * 8 + (uintptr_t)w,
                         "the child of parent %d was freed while its parent lived (word %d: %#lx)", i, w,
                         (unsigned long)kid[w]);
    }
    loam_root_remove_range(h, parent);
    loam_heap_destroy(h);
}

Test(gc, frees_around_lazy_sweeps_never_hand_a_block_out_twice, .timeout = 120) { frees_around_lazy_sweeps(0); }
Test(gc, frees_around_lazy_sweeps_generational, .timeout = 120) { frees_around_lazy_sweeps(LOAM_GENERATIONAL); }

Test(gc, malloc_on_collected_heap_is_conservative)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    uintptr_t *m = loam_malloc(h, 64);
    cr_assert_not_null(m);
    memset(m, 0, 64);
    root = m;
    unsigned char *a = loam_gc_alloc(h, 100, LOAM_ATOMIC);
    gc_fill(a, 0, 100, 11);
    m[2] = (uintptr_t)a + 50;                          /* interior, from a malloc'd block */
    uintptr_t *cz = loam_calloc(h, 4, 16);
    cr_assert_not_null(cz);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(cz[i], 0);
    m[3] = (uintptr_t)cz;
    node_t *t = new_node(h, LOAM_TRACED, 0);
    cz[1] = (uintptr_t)t;                               /* calloc'd blocks are scanned too */
    void *garbage = loam_malloc(h, 64);
    cr_assert_not_null(garbage);
    loam_gc_collect(h);
    expect_live(h, 4, "malloc'd root, atomic, calloc'd, traced (the unreferenced malloc'd block reclaimed)");
    cr_assert_eq(gc_check(a, 0, 100, 11), (size_t)-1);
    cr_assert_eq(t->tag, NODE_TAG);
    /* realloc keeps the contents and the block stays conservative */
    uintptr_t *m2 = loam_realloc(h, m, 8192);
    cr_assert_not_null(m2);
    root = m2;
    cr_assert(m2[2] == (uintptr_t)a + 50 && m2[3] == (uintptr_t)cz);
    loam_gc_collect(h);
    expect_live(h, 4, "after realloc");
    cr_assert_eq(gc_check(a, 0, 100, 11), (size_t)-1);
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "nothing rooted");
    loam_heap_destroy(h);
}

/* A traced object whose one pointer is kept boxed (XOR-ed), as a NaN-boxing
 * VM keeps its values: only the trace callback can find it. */
#define BOX_KEY ((uintptr_t)0x5A5A000000000000ull)
static void trace_boxed(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    uintptr_t *o = obj;
    if (o[0])
        loam_mark(t, (void *)(o[0] ^ BOX_KEY));
}

/* loam_realloc moves a block into one of its own kind: across size classes
 * and into a large block, a traced object stays traced (its boxed pointer
 * keeps its target) and an atomic one stays unscanned (a pointer in its
 * bytes keeps nothing). */
Test(gc, realloc_keeps_the_kind_of_a_block)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_boxed, NULL, NULL);
    static uintptr_t *traced, *atomic;
    loam_root_add(h, (void **)&traced);
    loam_root_add(h, (void **)&atomic);
    const size_t sizes[] = { 32, 48, 4000, 300 * KiB, 64 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        traced = loam_gc_alloc(h, 32, LOAM_TRACED);
        atomic = loam_gc_alloc(h, 32, LOAM_ATOMIC);
        cr_assert(traced && atomic);
        unsigned char *kid = loam_gc_alloc(h, 100, LOAM_ATOMIC);
        cr_assert_not_null(kid);
        gc_fill(kid, 0, 100, 7);
        traced[0] = (uintptr_t)kid ^ BOX_KEY;
        atomic[0] = (uintptr_t)loam_gc_alloc(h, 100, LOAM_ATOMIC);    /* garbage: atomic holds nothing */
        atomic[1] = 0;
        cr_assert_neq(atomic[0], 0);
        kid = NULL;
        /* twice: from a 32-byte block, then from the block of that size */
        for (int twice = 0; twice < 2; twice++) {
            size_t n = twice ? sizes[i] + 16 : sizes[i];
            traced = loam_realloc(h, traced, n);
            atomic = loam_realloc(h, atomic, n);
            cr_assert(traced && atomic, "realloc to %zu failed", n);
            loam_gc_collect(h);
            expect_live(h, 3, "the traced and atomic blocks, the traced one's boxed kid");
            unsigned char *k = (unsigned char *)(traced[0] ^ BOX_KEY);
            cr_assert_eq(loam_heap_of(k), h, "realloc to %zu: the boxed kid was freed", n);
            cr_assert_eq(gc_check(k, 0, 100, 7), (size_t)-1, "realloc to %zu: the boxed kid was freed", n);
        }
        traced = atomic = NULL;
        loam_gc_collect(h);
        expect_live(h, 0, "nothing rooted");
    }
    loam_root_remove(h, (void **)&traced);
    loam_root_remove(h, (void **)&atomic);
    loam_heap_destroy(h);
}

/* ---- pacing ---------------------------------------------------------------------------------- */

Test(gc, pacing_collects_garbage_automatically, .timeout = 300)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    enum { KEEP = 256 };
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, KEEP);
    root = holder;
    for (int i = 0; i < KEEP; i++) {
        unsigned char *p = loam_gc_alloc(h, 1024, LOAM_ATOMIC);
        gc_fill(p, 0, 1024, 300 + (uint64_t)i);
        holder->kid[i] = (node_t *)p;
    }
    size_t total = 0, max_live = 0, max_committed = 0;
    size_t goal = 256 * MiB / GC_SAN_DIVISOR;
    for (size_t i = 0; total < goal; i++) {
        size_t n = i % 500 == 0 ? 200 * KiB : 32 + (i % 13) * 16;
        void *p;
        if (i % 3 == 0)
            p = loam_malloc(h, n);
        else
            p = loam_gc_alloc(h, n, i % 3 == 1 ? LOAM_TRACED : LOAM_ATOMIC);
        cr_assert_not_null(p);
        memset(p, 0x11, n < 64 ? n : 64);
        total += n;
        if (i % 4096 == 0) {
            loam_stats_t st = gc_stats(h);
            if (st.live_bytes > max_live)
                max_live = st.live_bytes;
            if (st.committed_bytes > max_committed)
                max_committed = st.committed_bytes;
        }
    }
    loam_stats_t st = gc_stats(h);
    fprintf(stderr, "pacing: %zu MiB of garbage, %zu collections, live at most %zu KiB, committed at most %zu KiB\n",
            total / MiB, st.gc_collections, max_live / KiB, max_committed / KiB);
    long min_bytes = loam_option_get("gc_min_bytes");
    cr_assert_geq(st.gc_collections, total / (size_t)min_bytes / 4,
                  "%zu collections for %zu MiB of garbage (gc_min_bytes %ld)", st.gc_collections, total / MiB, min_bytes);
    cr_assert_leq(max_live, 4 * (size_t)min_bytes + 2 * MiB, "live bytes reached %zu while allocating only garbage",
                  max_live);
    cr_assert_leq(max_committed, 16 * (size_t)min_bytes + 16 * MiB, "committed bytes reached %zu", max_committed);
    for (int i = 0; i < KEEP; i++)
        cr_assert_eq(gc_check(holder->kid[i], 0, 1024, 300 + (uint64_t)i), (size_t)-1, "kept block %d damaged", i);
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "nothing rooted");
    loam_heap_destroy(h);
}

Test(gc, pacing_follows_gc_min_bytes)
{
    cr_assert_eq(loam_option_set("gc_min_bytes", (long)(1 * MiB)), 0);
    cr_assert_eq(loam_option_set("gc_growth", 100), 0);
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, NULL, NULL, NULL);
    size_t max_live = 0;
    for (size_t i = 0; i < 64 * MiB / 256; i++) {
        void *p = loam_gc_alloc(h, 256, LOAM_ATOMIC);
        cr_assert_not_null(p);
        if (i % 1024 == 0) {
            size_t l = gc_stats(h).live_bytes;
            if (l > max_live)
                max_live = l;
        }
    }
    loam_stats_t st = gc_stats(h);
    cr_assert_geq(st.gc_collections, 16, "64 MiB of garbage with gc_min_bytes = 1 MiB: %zu collections",
                  st.gc_collections);
    cr_assert_leq(max_live, 4 * MiB, "live reached %zu with gc_min_bytes = 1 MiB", max_live);
    loam_heap_destroy(h);
}

/* 256-byte atomic garbage into h: collections it brought. */
static size_t collections_while_allocating(loam_heap_t *h, size_t garbage)
{
    size_t before = gc_stats(h).gc_collections;
    for (size_t i = 0; i < garbage / 256; i++)
        cr_assert_not_null(loam_gc_alloc(h, 256, LOAM_ATOMIC));
    return gc_stats(h).gc_collections - before;
}

/* Collections of a new heap with this config's pacing (growth and floor)
 * that allocates `garbage` bytes, none kept. */
static size_t collections_for_garbage(unsigned flags, unsigned growth, size_t floor, size_t garbage)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN | flags,
                          .gc_growth = growth, .gc_min_bytes = floor };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    size_t n = collections_while_allocating(h, garbage);
    loam_heap_destroy(h);
    return n;
}

/* A heap's own pacing (config gc_growth, gc_min_bytes) wins over the
 * options, for that heap only: an embedder with many small heaps gives
 * each a small floor. */
Test(gc, a_heap_paces_itself_with_its_config)
{
    cr_assert_eq(loam_option_set("gc_min_bytes", (long)(4 * MiB)), 0);
    cr_assert_eq(loam_option_set("gc_young_min", (long)(4 * MiB)), 0);
    size_t with_option = collections_for_garbage(0, 0, 0, 64 * MiB);
    size_t small_floor = collections_for_garbage(0, 0, 512 * KiB, 64 * MiB);
    size_t large_floor = collections_for_garbage(0, 0, 16 * MiB, 64 * MiB);
    size_t young_floor = collections_for_garbage(LOAM_GENERATIONAL, 0, 512 * KiB, 64 * MiB);
    fprintf(stderr, "gc/a_heap_paces_itself: 64 MiB of garbage: %zu collections with the 4 MiB option, "
            "%zu with a 512 KiB floor, %zu with 16 MiB, %zu generational with 512 KiB\n",
            with_option, small_floor, large_floor, young_floor);
    /* 64 MiB / floor collections, give or take the thread cache's batches */
    cr_assert(with_option >= 12 && with_option <= 17, "%zu collections with the 4 MiB option", with_option);
    cr_assert(small_floor >= 100 && small_floor <= 140, "%zu collections with a 512 KiB floor", small_floor);
    cr_assert(large_floor >= 3 && large_floor <= 5, "%zu collections with a 16 MiB floor", large_floor);
    cr_assert(young_floor >= 100 && young_floor <= 140, "%zu collections, generational, 512 KiB floor",
              young_floor);
    /* The process-wide options are untouched by a heap's config. */
    cr_assert_eq(loam_option_get("gc_min_bytes"), (long)(4 * MiB));

    /* gc_growth: with 8 MiB live, a collection per 4 MiB allocated at 50 %,
     * per 16 MiB at 200 % (the floor, 1 MiB, below both). */
    size_t counts[2];
    unsigned growths[2] = { 50, 200 };
    for (int g = 0; g < 2; g++) {
        loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .gc_growth = growths[g],
                              .gc_min_bytes = 1 * MiB };
        loam_heap_t *h = loam_heap_new(&cfg);
        cr_assert_not_null(h);
        enum { KEPT = 8 * 1024 };
        void **kept = calloc(KEPT, sizeof *kept);
        cr_assert_not_null(kept);
        loam_root_add_range(h, kept, kept + KEPT);
        for (size_t i = 0; i < KEPT; i++)
            cr_assert_not_null(kept[i] = loam_gc_alloc(h, 1024, LOAM_ATOMIC));   /* 8 MiB live */
        loam_gc_collect(h);
        counts[g] = collections_while_allocating(h, 64 * MiB);
        loam_root_remove_range(h, kept);
        loam_heap_destroy(h);
        free(kept);
    }
    fprintf(stderr, "gc/a_heap_paces_itself: over 8 MiB live: %zu collections at gc_growth 50, %zu at 200\n",
            counts[0], counts[1]);
    cr_assert(counts[0] >= 13 && counts[0] <= 17, "%zu collections for 64 MiB at gc_growth 50 over 8 MiB live",
              counts[0]);
    cr_assert(counts[1] >= 3 && counts[1] <= 5, "%zu collections for 64 MiB at gc_growth 200 over 8 MiB live",
              counts[1]);

    loam_config_t bad = { .mode = LOAM_GC, .gc_growth = 100001 };
    errno = 0;
    cr_assert_null(loam_heap_new(&bad), "a gc_growth past 100000 was accepted");
    cr_assert_eq(errno, EINVAL);
}

/* loam_heap_set_gc_pacing changes a heap's pacing from then on. */
Test(gc, a_heap_pacing_can_change_while_it_runs)
{
    cr_assert_eq(loam_option_set("gc_min_bytes", (long)(4 * MiB)), 0);
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .gc_min_bytes = 512 * KiB };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    size_t small = collections_while_allocating(h, 16 * MiB);
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 8 * MiB), 0);
    size_t large = collections_while_allocating(h, 32 * MiB);
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 0), 0);
    size_t option = collections_while_allocating(h, 32 * MiB);
    fprintf(stderr, "gc/a_heap_pacing_can_change: %zu collections for 16 MiB at a 512 KiB floor, %zu for 32 MiB "
            "at 8 MiB, %zu for 32 MiB at the option's 4 MiB\n", small, large, option);
    cr_assert(small >= 25 && small <= 35, "%zu collections for 16 MiB at a 512 KiB floor", small);
    cr_assert(large >= 3 && large <= 5, "%zu collections for 32 MiB at an 8 MiB floor", large);
    cr_assert(option >= 7 && option <= 9, "%zu collections for 32 MiB at the option's 4 MiB", option);
    errno = 0;
    cr_assert_eq(loam_heap_set_gc_pacing(h, 100001, 0), -1);
    cr_assert_eq(errno, EINVAL);
    loam_heap_destroy(h);
}

/* ---- gc_stress ----------------------------------------------------------------------------------- */

/* The option gc_stress=N collects every collected heap at every N-th
 * allocation, whatever its pacing: an embedder's missing root shows at
 * once. Here the embedder's bug is a static holding a block, not
 * registered (and no stack scanning, so nothing else keeps it): the block
 * is freed at the next allocation and soon handed out again. */
static unsigned char *unregistered;

Test(gc, gc_stress_catches_a_missing_root_at_once)
{
    cr_assert_eq(loam_option_set("gc_stress", 1), 0);
    /* The heap's own pacing would allow 64 MiB between collections. */
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .gc_min_bytes = 64 * MiB };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    unregistered = loam_gc_alloc(h, 48, LOAM_ATOMIC);
    cr_assert_not_null(unregistered);
    memset(unregistered, 0xab, 48);
    size_t before = gc_stats(h).gc_collections, allocations = 0;
    bool caught = false;
    while (!caught && allocations < 1000) {
        unsigned char *p = loam_gc_alloc(h, 48, LOAM_ATOMIC);
        cr_assert_not_null(p);
        allocations++;
        memset(p, 0xcd, 48);
        caught = p == unregistered || unregistered[47] != 0xab;
    }
    size_t collections = gc_stats(h).gc_collections - before;
    fprintf(stderr, "gc/gc_stress_catches_a_missing_root: the block was reused after %zu allocations, "
            "%zu collections\n", allocations, collections);
    cr_assert(caught, "the unregistered block was not reused in %zu allocations", allocations);
    cr_assert_leq(allocations, 10, "the unregistered block was reused only after %zu allocations", allocations);
    cr_assert_eq(collections, allocations, "%zu collections for %zu allocations at gc_stress=1",
                 collections, allocations);
    loam_heap_destroy(h);
    cr_assert_eq(loam_option_set("gc_stress", 0), 0);
}

/* gc_stress=N: a collection at every N-th allocation, small or large, by
 * loam_gc_alloc and loam_malloc alike, also after the thread had a cache
 * of the heap (a collection empties it, and while the option is set the
 * slow path does not fill it again). Off again, the heap's pacing alone
 * decides. */
Test(gc, gc_stress_collects_every_nth_allocation)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .gc_min_bytes = 64 * MiB };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    for (int i = 0; i < 1000; i++)          /* a cache with a bump range, before the option */
        cr_assert_not_null(loam_gc_alloc(h, 32, LOAM_ATOMIC));
    cr_assert_eq(gc_stats(h).gc_collections, 0);
    cr_assert_eq(loam_options_parse("gc_stress=10"), 0);     /* as LOAM_OPTIONS sets it */
    cr_assert_eq(loam_option_get("gc_stress"), 10);
    loam_gc_collect(h);                     /* empties the thread's cache */
    size_t before = gc_stats(h).gc_collections;
    for (int i = 0; i < 1000; i++) {
        void *p;
        switch (i % 4) {
        case 0:  p = loam_malloc(h, 100); break;
        case 1:  p = loam_gc_alloc(h, 32, LOAM_ATOMIC); break;
        case 2:  p = loam_gc_alloc(h, 200 * KiB, LOAM_ATOMIC); break;     /* large */
        default: p = loam_gc_alloc(h, 16, LOAM_CONSERVATIVE); break;
        }
        cr_assert_not_null(p);
    }
    size_t stressed = gc_stats(h).gc_collections - before;
    cr_assert(stressed >= 99 && stressed <= 101, "%zu collections for 1000 allocations at gc_stress=10", stressed);
    cr_assert_eq(loam_option_set("gc_stress", 0), 0);
    before = gc_stats(h).gc_collections;
    for (int i = 0; i < 1000; i++)
        cr_assert_not_null(loam_gc_alloc(h, 32, LOAM_ATOMIC));
    cr_assert_eq(gc_stats(h).gc_collections - before, 0, "collections with gc_stress off again");
    cr_assert_eq(loam_option_set("gc_stress", -1), -1);
    cr_assert_eq(loam_option_get("gc_stress"), 0);
    loam_heap_destroy(h);
}

/* ---- statistics ------------------------------------------------------------------------------- */

static int fin_count;
static void count_fin(void *obj, void *data)
{
    (void)obj;
    (void)data;
    fin_count++;
}

Test(gc, statistics)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    loam_stats_t s0 = gc_stats(h);
    cr_assert_eq(s0.gc_collections, 0);
    cr_assert_eq(s0.gc_pause_total_ns, 0);
    cr_assert_eq(s0.gc_pause_max_ns, 0);
    cr_assert_eq(s0.gc_bytes_swept, 0);
    cr_assert_eq(s0.gc_finalizers_run, 0);
    cr_assert_eq(s0.gc_weak_cleared, 0);

    static void *root;
    loam_root_add(h, &root);
    enum { N = 1000 };
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, N / 2);
    root = holder;
    size_t kept_usable = loam_usable_size(holder), garbage_usable = 0;
    for (int i = 0; i < N; i++) {
        void *p = loam_gc_alloc(h, 100, LOAM_ATOMIC);
        if (i % 2) {
            holder->kid[i / 2] = p;
            kept_usable += loam_usable_size(p);
        } else {
            garbage_usable += loam_usable_size(p);
        }
    }
    loam_gc_collect(h);
    loam_stats_t s1 = gc_stats(h);
    cr_assert_eq(s1.gc_collections, 1);
    cr_assert_geq(s1.gc_bytes_swept, garbage_usable, "swept %zu, %zu bytes of garbage", s1.gc_bytes_swept,
                  garbage_usable);
    cr_assert_geq(s1.gc_bytes_marked, kept_usable - loam_usable_size(holder));
    cr_assert_eq(s1.gc_live_after, s1.live_bytes, "gc_live_after %zu, live_bytes %zu", s1.gc_live_after,
                 s1.live_bytes);
    cr_assert_eq(s1.live_bytes, kept_usable);

    for (int i = 0; i < 4; i++)
        loam_gc_collect(h);
    /* finalizers and weak references */
    fin_count = 0;
    for (int i = 0; i < 3; i++) {
        void *p = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
        cr_assert_eq(loam_finalizer_set(h, p, count_fin, NULL), 0);
    }
    loam_weak_t *w[4];
    for (int i = 0; i < 4; i++)
        w[i] = loam_weak_new(h, loam_gc_alloc(h, 48, LOAM_ATOMIC));
    loam_weak_t *wk = loam_weak_new(h, holder);
    loam_gc_collect(h);
    loam_gc_collect(h);
    loam_stats_t s2 = gc_stats(h);
    cr_assert_eq(s2.gc_collections, 7);
    cr_assert_eq(fin_count, 3);
    cr_assert_eq(s2.gc_finalizers_run, 3);
    cr_assert_eq(s2.gc_weak_cleared, 4, "gc_weak_cleared %zu, 4 targets died", s2.gc_weak_cleared);
    for (int i = 0; i < 4; i++) {
        cr_assert_null(loam_weak_get(w[i]));
        loam_weak_free(w[i]);
    }
    cr_assert_eq(loam_weak_get(wk), holder);
    loam_weak_free(wk);

    cr_assert_gt(s2.gc_pause_total_ns, 0);
    cr_assert_geq(s2.gc_pause_total_ns, s2.gc_pause_max_ns);
    cr_assert_leq(s2.gc_pause_total_ns, 7 * s2.gc_pause_max_ns);
    cr_assert_gt(s2.gc_pause_max_ns, 0);
    cr_assert_lt(s2.gc_pause_max_ns, 10ull * 1000 * 1000 * 1000, "a pause of %llu ns",
                 (unsigned long long)s2.gc_pause_max_ns);
    cr_assert_gt(s2.gc_pause_p50_ns, 0);
    cr_assert_leq(s2.gc_pause_p50_ns, s2.gc_pause_p99_ns);
    cr_assert_leq(s2.gc_pause_p99_ns, s2.gc_pause_max_ns);
    cr_assert_geq(s2.gc_bytes_swept, s1.gc_bytes_swept);

    /* the text report mentions collections; the JSON one has the counters */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    loam_heap_print_stats(h, f, LOAM_STATS_TEXT);
    fclose(f);
    for (char *q = buf; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    cr_assert_not_null(strstr(buf, "collect"), "the text report does not mention collections:\n%s", buf);
    cr_assert_not_null(strstr(buf, "7"), "the text report does not show the 7 collections:\n%s", buf);
    free(buf);
    f = open_memstream(&buf, &len);
    loam_heap_print_stats(h, f, LOAM_STATS_JSON);
    fclose(f);
    cr_assert_not_null(strstr(buf, "\"gc_collections\":7"), "JSON: %s", buf);
    free(buf);
    root = NULL;
    loam_root_remove(h, &root);
    loam_heap_destroy(h);
}

/* ---- stale and foreign pointers ------------------------------------------------------------------ */

/* Conservative words that point at free blocks (freed with loam_free, or
 * reclaimed by a collection) must not bring them back: the blocks are handed
 * out again exactly once, and live counts stay exact. */
Test(gc, stale_pointers_to_free_blocks_are_harmless)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    enum { N = 1000 };
    uintptr_t *stale = calloc(N, sizeof *stale);
    uintptr_t *keep = calloc(2 * N, sizeof *keep);
    cr_assert(stale && keep);
    loam_root_add_range(h, stale, stale + N);
    loam_root_add_range(h, keep, keep + 2 * N);
    for (int i = 0; i < N; i++) {
        void *p = loam_gc_alloc(h, 48, i % 2 ? LOAM_CONSERVATIVE : LOAM_ATOMIC);
        stale[i] = (uintptr_t)p + (i % 3) * 8;
    }
    for (int i = 0; i < N; i += 2)                        /* half freed explicitly */
        loam_free((void *)(stale[i] - (i % 3) * 8));
    for (int i = 1; i < N; i += 2)                        /* the other half: unreferenced ... */
        stale[i] ^= HIDE;
    loam_gc_collect(h);                                   /* ... and reclaimed */
    expect_live(h, 0, "all freed or unreferenced");
    for (int i = 1; i < N; i += 2)
        stale[i] ^= HIDE;                                  /* now stale pointers to reclaimed blocks */
    for (int r = 0; r < 3; r++) {
        loam_gc_collect(h);
        expect_live(h, 0, "stale pointers revived free blocks");
    }
    for (int i = 0; i < 2 * N; i++) {
        unsigned char *p = loam_gc_alloc(h, 48, LOAM_ATOMIC);
        cr_assert_not_null(p);
        gc_fill(p, 0, 48, 7000 + (uint64_t)i);
        keep[i] = (uintptr_t)p;
    }
    loam_gc_collect(h);
    expect_live(h, 2 * N, "every new block kept");
    for (int i = 0; i < 2 * N; i++)
        cr_assert_eq(gc_check((void *)keep[i], 0, 48, 7000 + (uint64_t)i), (size_t)-1,
                     "block %d overwritten: handed out twice?", i);
    /* all distinct */
    for (int i = 1; i < 2 * N; i++)
        for (int j = 0; j < i; j++)
            cr_assert_neq(keep[i], keep[j]);
    loam_root_remove_range(h, stale);
    loam_root_remove_range(h, keep);
    loam_gc_collect(h);
    expect_live(h, 0, "ranges removed");
    free(stale);
    free(keep);
    loam_heap_destroy(h);
}

/* Pointers from one collected heap into another are not followed, and
 * collecting one heap does not touch the other's blocks. */
Test(gc, pointers_into_another_heap_are_ignored)
{
    loam_heap_t *a = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    loam_heap_t *b = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *ra, *rb;
    loam_root_add(a, &ra);
    loam_root_add(b, &rb);
    node_t *na = new_node(a, LOAM_CONSERVATIVE, 4);
    ra = na;
    node_t *nb = new_node(b, LOAM_TRACED, 1);
    rb = nb;
    node_t *b_only_from_a = new_node(b, LOAM_TRACED, 0);
    na->kid[0] = b_only_from_a;                 /* a -> b: must not keep it */
    na->kid[1] = nb;
    node_t *a_only_from_b = new_node(a, LOAM_TRACED, 0);
    nb->kid[0] = a_only_from_b;                 /* b -> a via the trace callback */
    loam_gc_collect(a);
    expect_live(a, 1, "heap a: only its own root");
    expect_live(b, 2, "heap b untouched by a's collection");
    loam_gc_collect(b);
    expect_live(b, 1, "heap b: only its own root");
    cr_assert(nb->tag == NODE_TAG && na->tag == NODE_TAG);
    loam_heap_destroy(a);
    loam_heap_destroy(b);
}

/* ---- other allocation calls on a collected heap --------------------------------------------------- */

Test(gc, aligned_and_zero_size_blocks_are_collected_blocks)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *slot;
    loam_root_add(h, &slot);
    uintptr_t *range = calloc(8, sizeof *range);
    loam_root_add_range(h, range, range + 8);
    static const size_t aligns[] = { 16, 64, 256, 4096, 65536, 1 << 20 };
    enum { NA = sizeof aligns / sizeof *aligns };
    void *p[NA];
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, NA);
    slot = holder;
    for (int i = 0; i < NA; i++) {
        p[i] = loam_aligned_alloc(h, aligns[i], 100 + (size_t)i);
        cr_assert_not_null(p[i]);
        cr_assert_eq((uintptr_t)p[i] % aligns[i], 0);
        gc_fill(p[i], 0, 100 + (size_t)i, 600 + (uint64_t)i);
        if (i % 2)
            holder->kid[i] = p[i];                       /* from a conservative block */
        else
            range[i / 2] = (uintptr_t)p[i] + 50;         /* interior, from a range */
    }
    void *z = loam_malloc(h, 0);
    cr_assert_not_null(z);
    range[5] = (uintptr_t)z;
    void *gone = loam_aligned_alloc(h, 4096, 100);       /* unreferenced */
    cr_assert_not_null(gone);
    gone = NULL;
    loam_gc_collect(h);
    expect_live(h, 1 + NA + 1, "holder, the aligned blocks and the zero-size block");
    for (int i = 0; i < NA; i++)
        cr_assert_eq(gc_check(p[i], 0, 100 + (size_t)i, 600 + (uint64_t)i), (size_t)-1,
                     "aligned block %d (align %zu) damaged", i, aligns[i]);
    slot = NULL;
    memset(range, 0, 8 * sizeof *range);
    loam_gc_collect(h);
    expect_live(h, 0, "nothing rooted");
    loam_root_remove_range(h, range);
    free(range);
    loam_heap_destroy(h);
}

/* A collection that finds a big structure dead keeps the slabs its sweeps
 * empty committed, up to what the heap held when it began: the heap may
 * grow back to that before the next one, and pages given back would only
 * fault in again. The next collection of the smaller heap gives them back,
 * and so does an explicit one at once. */
static void build_and_drop(loam_heap_t *h, void **root)
{
    enum { N = 256 * 1024 };
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, N);
    *root = holder;
    for (int i = 0; i < N; i++)
        holder->kid[i] = loam_gc_alloc(h, 96, LOAM_ATOMIC);      /* 24 MiB in 96-byte slabs */
    *root = NULL;
}

/* Garbage of another class until `n` more collections have run. */
static loam_stats_t collect_by_allocating(loam_heap_t *h, size_t n)
{
    size_t until = gc_stats(h).gc_collections + n;
    while (gc_stats(h).gc_collections < until)
        cr_assert_not_null(loam_gc_alloc(h, 200, LOAM_ATOMIC));
    return gc_stats(h);
}

Test(gc, slabs_a_collection_empties_stay_committed_for_one_cycle)
{
    /* Kept runs would go back after decay_ms (the background thread purges
     * collected heaps too): not while a slow run (valgrind) is checking. */
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    build_and_drop(h, &root);
    loam_stats_t st = collect_by_allocating(h, 1);      /* gc_stats finishes the sweep */
    cr_assert_geq(st.free_run_bytes, 16 * MiB, "only %zu KiB of free runs kept after 24 MiB died (slabs %zu KiB)",
                  st.free_run_bytes / KiB, st.slab_bytes / KiB);
    st = collect_by_allocating(h, 1);
    cr_assert_leq(st.free_run_bytes, 8 * MiB, "%zu KiB of free runs kept a cycle later", st.free_run_bytes / KiB);
    build_and_drop(h, &root);
    loam_gc_collect(h);
    st = gc_stats(h);
    cr_assert_leq(st.free_run_bytes, 8 * MiB, "%zu KiB of free runs kept after loam_gc_collect",
                  st.free_run_bytes / KiB);
    loam_heap_destroy(h);
    cr_assert_eq(loam_option_set("decay_ms", 250), 0);
}

/* A slab none of whose blocks a collection marks goes back at that
 * collection, not when a refill of its size class sweeps it: a program that
 * moves on to other sizes reuses its pages instead of growing the heap. */
Test(gc, slabs_with_no_live_block_are_reused_by_other_sizes_at_once)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);   /* decay would hide a heap that grew */
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    enum { N = 40 * 1024 };                          /* 48-byte blocks, ~2 MiB; then as much in 384-byte ones */
    void **held = calloc(N, sizeof *held);
    cr_assert_not_null(held);
    loam_root_add_range(h, held, held + N);
    for (size_t i = 0; i < N; i++)
        cr_assert_not_null(held[i] = loam_gc_alloc(h, 48, LOAM_ATOMIC));
    size_t before = gc_stats(h).committed_bytes;     /* (stats finish a sweep: none is due yet) */
    memset(held, 0, N * sizeof *held);
    loam_gc_collect(h);
    for (size_t i = 0; i < N / 8; i++)
        cr_assert_not_null(held[i] = loam_gc_alloc(h, 384, LOAM_ATOMIC));
    size_t after = gc_stats(h).committed_bytes;
    cr_assert_leq(after, before + 512 * KiB, "%zu KiB of 384-byte blocks grew the heap from %zu to %zu KiB "
                  "committed beside 48-byte garbage", (size_t)N / 8 * 384 / KiB, before / KiB, after / KiB);
    loam_root_remove_range(h, held);
    loam_heap_destroy(h);
    free(held);
    cr_assert_eq(loam_option_set("decay_ms", 250), 0);
}

/* Memory reclaimed by collections can go back to the OS. */
Test(gc, collected_memory_can_be_trimmed)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    enum { N = 64 * 1024 };
    node_t *holder = new_node(h, LOAM_CONSERVATIVE, N);
    root = holder;
    for (int i = 0; i < N; i++)
        holder->kid[i] = loam_gc_alloc(h, 1000, LOAM_ATOMIC);   /* ~64 MiB live */
    size_t peak = gc_stats(h).committed_bytes;
    cr_assert_geq(peak, (size_t)N * 1000);
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "all dropped");
    loam_heap_trim(h);
    size_t after = gc_stats(h).committed_bytes;
    cr_assert_leq(after, 8 * MiB, "committed %zu after collecting and trimming (peak %zu)", after, peak);
    loam_heap_destroy(h);
}

/* ---- parallel marking ------------------------------------------------------------ */

/* trace_node without its call counter: with LOAM_PARALLEL_MARK the trace
 * callback runs on several threads at once. */
static void trace_node_shared(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    node_t *o = obj;
    if (o->tag == NODE_TAG) {
        for (uintptr_t i = 0; i < o->n; i++)
            loam_mark(t, o->kid[i]);
    }
}

/* Top-down, so every node is reachable from the root slot the moment it is
 * made (the heap scans no stack). */
static void grow_tree(loam_heap_t *h, node_t *parent, int depth, size_t *count)
{
    if (depth == 0)
        return;
    for (int i = 0; i < 2; i++) {
        node_t *kid = new_node(h, LOAM_TRACED, 2);
        (*count)++;
        parent->kid[i] = kid;
        grow_tree(h, kid, depth - 1, count);
    }
}

static size_t count_tree(const node_t *n)
{
    if (!n)
        return 0;
    cr_assert_eq(n->tag, NODE_TAG, "a tree node was freed and reused");
    return 1 + count_tree(n->kid[0]) + count_tree(n->kid[1]);
}

/* A LOAM_PARALLEL_MARK heap (stacks not scanned) whose root slot *root
 * holds a tree of depth 16: 131071 nodes of 32 bytes (*n), 4 MiB less 32
 * bytes, past gc_parallel_min (set to 1 MiB: the default is 4). */
static loam_heap_t *parallel_heap_with_tree(void **root, size_t *n)
{
    cr_assert_eq(loam_option_set("gc_parallel_min", (long)MiB), 0);
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK, trace_node_shared, NULL, NULL);
    loam_root_add(h, root);
    node_t *top = new_node(h, LOAM_TRACED, 2);
    *root = top;
    *n = 1;
    grow_tree(h, top, 16, n);
    return h;
}

Test(gc, parallel_marking_marks_exactly_the_reachable_blocks, .timeout = 120)
{
    cr_assert_eq(loam_option_set("gc_markers", 2), 0);
    static void *root;
    size_t n;
    loam_heap_t *h = parallel_heap_with_tree(&root, &n);
    node_t *top = root;
    cr_assert_eq(loam_usable_size(top), 32);
    size_t helpers = 0;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 20000; i++)
            new_node(h, LOAM_TRACED, 2);            /* garbage between collections */
        loam_gc_collect(h);
        loam_stats_t st = gc_stats(h);
        cr_assert_eq(st.gc_bytes_marked, n * 32, "round %d: %zu bytes marked, %zu reachable", round,
                     st.gc_bytes_marked, n * 32);
        cr_assert_eq(st.live_blocks, n, "round %d: %zu blocks live, %zu reachable", round, st.live_blocks, n);
        cr_assert_leq(st.gc_bytes_marked_helpers, st.gc_bytes_marked);
        helpers += st.gc_bytes_marked_helpers;
    }
    cr_assert_eq(count_tree(top), n);
    fprintf(stderr, "gc/parallel_marking: marking threads marked %.0f%% of the bytes\n",
            100.0 * (double)helpers / (double)(20 * n * 32));
    /* With two CPUs a helper joins some of these markings of 4 MiB. On a
     * busy machine the collector marks alone for stretches (parallel does
     * not pay there), so it gets up to 200 more chances. Valgrind runs one
     * thread at a time: there the helpers may never get to mark. */
    bool one_at_a_time = false;
#ifdef LOAM_MEMCHECK
    one_at_a_time = RUNNING_ON_VALGRIND;
#endif
    if (sysconf(_SC_NPROCESSORS_ONLN) >= 2 && !one_at_a_time) {
        for (int extra = 0; extra < 200 && helpers == 0; extra++) {
            loam_gc_collect(h);
            helpers += gc_stats(h).gc_bytes_marked_helpers;
        }
        cr_assert_gt(helpers, 0, "no marking thread took part in 220 collections");
    }
    /* The option is read at each marking: back to one marker, no helper marks. */
    cr_assert_eq(loam_option_set("gc_markers", 1), 0);
    for (int round = 0; round < 3; round++) {
        loam_gc_collect(h);
        loam_stats_t st = gc_stats(h);
        cr_assert_eq(st.gc_bytes_marked, n * 32);
        cr_assert_eq(st.gc_bytes_marked_helpers, 0, "a helper marked with gc_markers=1");
    }
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "tree dropped");
    loam_heap_destroy(h);
}

/* With gc_markers left to its default (a marker per CPU), a marking takes
 * helpers only for the CPUs idle at its start: one that must share a CPU is
 * preempted with work in its stack, and the collection waits for it. Here
 * a thread spins on every CPU the process may use, so no helper marks. */
static volatile int spinners_stop;

static void *spin_until_stopped(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&spinners_stop, __ATOMIC_RELAXED))
        ;
    return NULL;
}

Test(gc, parallel_marking_takes_no_helper_while_every_cpu_is_busy, .timeout = 120)
{
    cpu_set_t set;
    cr_assert_eq(sched_getaffinity(0, sizeof set, &set), 0);
    int cpus = CPU_COUNT(&set);
#ifdef LOAM_MEMCHECK
    if (RUNNING_ON_VALGRIND)
        cr_skip_test("valgrind runs one thread at a time: the spinners would starve the test");
#endif
    if (cpus < 2)
        cr_skip_test("one CPU: a marking never takes a helper");
    cr_assert_eq(loam_option_set("gc_markers", 0), 0);
    static void *root;
    size_t n;
    loam_heap_t *h = parallel_heap_with_tree(&root, &n);
    node_t *top = root;
    loam_gc_collect(h);                             /* the first eligible marking runs alone */

    pthread_t spinner[64];
    int spinners = cpus < 64 ? cpus : 64;
    spinners_stop = 0;
    for (int i = 0; i < spinners; i++)
        cr_assert_eq(pthread_create(&spinner[i], NULL, spin_until_stopped, NULL), 0);
    size_t helpers = 0;
    for (int round = 0; round < 10; round++) {
        loam_gc_collect(h);
        loam_stats_t st = gc_stats(h);
        cr_assert_eq(st.gc_bytes_marked, n * 32, "round %d", round);
        helpers += st.gc_bytes_marked_helpers;
    }
    __atomic_store_n(&spinners_stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < spinners; i++)
        pthread_join(spinner[i], NULL);
    cr_assert_eq(helpers, 0, "helpers marked %zu bytes while %d threads kept all %d CPUs busy", helpers,
                 spinners, cpus);
    cr_assert_eq(count_tree(top), n);
    root = NULL;
    loam_gc_collect(h);
    expect_live(h, 0, "tree dropped");
    loam_heap_destroy(h);
}

/* What a marking teaches the collector's choice between marking alone and
 * in parallel (gc_mark_choose_parallel, gc_mark_note_rate): only markings
 * of gc_parallel_min bytes or more count. One that marks next to nothing
 * measures the cost of starting: 10 KiB in 128 us, a helper's wake-up, once
 * set binary-trees 19 marking alone for most of its run, 15 % slower. */
Test(gc, a_marking_smaller_than_gc_parallel_min_teaches_the_choice_nothing)
{
    cr_assert_eq(loam_option_set("gc_parallel_min", (long)MiB), 0);
    gc_state_t *gc = calloc(1, sizeof *gc);
    cr_assert_not_null(gc);
    /* The first eligible marking runs alone, to measure; a small one
     * measures nothing, and the next runs alone again. */
    cr_assert(!gc_mark_choose_parallel(gc));
    gc_mark_note_rate(gc, false, 10 * KiB, 15 * 1000);
    cr_assert_eq(gc->rate_serial, 0.0);
    cr_assert(!gc_mark_choose_parallel(gc), "a marking of 10 KiB set the serial rate");
    gc_mark_note_rate(gc, false, 8 * MiB, 5 * 1000 * 1000);          /* 1.68 bytes/ns */
    cr_assert_gt(gc->rate_serial, 1.6);
    cr_assert(gc_mark_choose_parallel(gc));
    /* A parallel marking that found next to nothing. */
    gc_mark_note_rate(gc, true, 10 * KiB, 128 * 1000);
    cr_assert_eq(gc->rate_parallel, 0.0, "a marking of 10 KiB set the parallel rate");
    cr_assert(gc_mark_choose_parallel(gc), "a marking of 10 KiB sent the next ones alone");
    /* In parallel at 2.1 bytes/ns: the markings stay parallel. */
    for (int i = 0; i < 10; i++) {
        gc_mark_note_rate(gc, true, 16 * MiB, 8 * 1000 * 1000);
        cr_assert(gc_mark_choose_parallel(gc), "parallel marking %d", i);
    }
    /* Slower in parallel than 1.15 times alone (a busy machine): the next
     * markings run alone, 2 then 4 of them, each time parallel still loses. */
    for (int i = 0; i < 20; i++)
        gc_mark_note_rate(gc, true, 16 * MiB, 20 * 1000 * 1000);  /* 0.84 bytes/ns */
    cr_assert_lt(gc->rate_parallel, 1.15 * gc->rate_serial);
    gc->serial_backoff = 0;
    gc_mark_note_rate(gc, true, 16 * MiB, 20 * 1000 * 1000);
    cr_assert(!gc_mark_choose_parallel(gc));
    cr_assert(!gc_mark_choose_parallel(gc));
    cr_assert(gc_mark_choose_parallel(gc), "two markings alone, then parallel again");
    gc_mark_note_rate(gc, true, 16 * MiB, 20 * 1000 * 1000);
    for (int i = 0; i < 4; i++)
        cr_assert(!gc_mark_choose_parallel(gc), "backing off: marking %d alone", i);
    cr_assert(gc_mark_choose_parallel(gc));
    free(gc);
}

/* The process's threads, from /proc/self/task. */
static size_t thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The default gc_parallel_min: a heap that marks 2 MiB (binary-trees 16's
 * size; the Lisp example marks 1.5) marks on the collecting thread alone,
 * and no marking thread is started for it. Past 4 MiB, one is. */
Test(gc, a_marking_below_4_mib_takes_no_helper_by_default, .timeout = 120)
{
    cr_assert_eq(loam_option_get("gc_parallel_min"), (long)(4 * MiB));
    cr_assert_eq(loam_option_set("gc_markers", 2), 0);
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK, trace_node_shared, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    node_t *top = new_node(h, LOAM_TRACED, 2);
    root = top;
    size_t n = 1;
    grow_tree(h, top, 15, &n);                      /* 65535 nodes of 32 bytes: 2 MiB */
    size_t threads = thread_count();
    for (int round = 0; round < 10; round++) {
        loam_gc_collect(h);
        loam_stats_t st = gc_stats(h);
        cr_assert_eq(st.gc_bytes_marked, n * 32);
        cr_assert_eq(st.gc_bytes_marked_helpers, 0, "round %d: a helper marked %zu bytes of a 2 MiB marking",
                     round, st.gc_bytes_marked_helpers);
    }
    cr_assert_eq(thread_count(), threads, "a marking thread was started for a heap of 2 MiB");
    cr_assert_eq(count_tree(top), n);

    /* A second tree, of 4 MiB, beside it: the next collection starts the helper. */
    node_t *both = new_node(h, LOAM_TRACED, 2);
    both->kid[0] = top;
    root = both;
    node_t *more = new_node(h, LOAM_TRACED, 2);
    both->kid[1] = more;
    size_t m = 1;
    grow_tree(h, more, 16, &m);
    loam_gc_collect(h);                             /* finds 6 MiB live */
    loam_gc_collect(h);
    cr_assert_eq(thread_count(), threads + 1, "%zu threads after a marking of 6 MiB, %zu before",
                 thread_count(), threads);
    loam_heap_destroy(h);
}

/* What counts toward gc_parallel_min is what a marking scans: an atomic
 * block is one bit to set, whatever its size. A heap holding 8 MiB of
 * numbers and a small tree marks alone, and no marking thread starts. */
Test(gc, atomic_bytes_do_not_make_a_marking_parallel, .timeout = 120)
{
    cr_assert_eq(loam_option_set("gc_markers", 2), 0);
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK, trace_node_shared, NULL, NULL);
    static void *numbers, *root;
    loam_root_add(h, &numbers);
    loam_root_add(h, &root);
    numbers = loam_gc_alloc(h, 8 * MiB, LOAM_ATOMIC);
    cr_assert_not_null(numbers);
    node_t *top = new_node(h, LOAM_TRACED, 2);
    root = top;
    size_t n = 1;
    grow_tree(h, top, 10, &n);                      /* 2047 nodes: 64 KiB to scan */
    size_t threads = thread_count();
    for (int round = 0; round < 10; round++) {
        loam_gc_collect(h);
        loam_stats_t st = gc_stats(h);
        cr_assert_geq(st.gc_bytes_marked, 8 * MiB + n * 32, "round %d", round);
        cr_assert_eq(st.gc_bytes_marked_helpers, 0, "round %d: a helper marked %zu bytes", round,
                     st.gc_bytes_marked_helpers);
    }
    cr_assert_eq(thread_count(), threads, "a marking thread was started for 64 KiB to scan");
    cr_assert_eq(count_tree(top), n);
    loam_heap_destroy(h);
}

Test(gc, without_the_flag_marking_stays_on_the_collecting_thread)
{
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN, trace_node, NULL, NULL);
    static void *root;
    loam_root_add(h, &root);
    node_t *top = new_node(h, LOAM_TRACED, 2);
    root = top;
    size_t n = 1;
    grow_tree(h, top, 12, &n);
    loam_gc_collect(h);
    loam_stats_t st = gc_stats(h);
    cr_assert_eq(st.gc_bytes_marked, n * 32);
    cr_assert_eq(st.gc_bytes_marked_helpers, 0, "a heap without LOAM_PARALLEL_MARK was marked by helpers");
    loam_heap_destroy(h);
}

/* ---- collected heaps made and destroyed in a loop ------------------------------------------
 * An interpreter per request: a thread's attachment to a destroyed heap
 * goes with it (the destroying thread's at once, another thread's at its
 * next attachment), so the thread's list stays short and nothing piles up.
 * 512 bytes a heap stayed behind before (and every allocation slow path
 * walked them all). */

#include "rss_util.h"

static size_t churn_heaps(void)
{
    return 8000 / GC_SAN_DIVISOR;
}

static loam_heap_t *churn_heap_new(void)
{
    loam_config_t cfg = { .mode = LOAM_GC };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

/* Many small collected heaps alive at once (an interpreter per request):
 * each costs what it holds plus a few pages of tables. 26 KiB each here,
 * of which the collector's state 12. 45 before two changes: each marking
 * cleared all of the marker's 16 KiB slab cache (33 without that), and the
 * heap's struct held three arrays of 256 arena pointers (6.6 KiB, two
 * pages; 26 without them). */
Test(gc, a_small_collected_heap_costs_a_few_pages, .timeout = 120)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    cr_skip_test("a sanitizer's shadow memory is counted in the RSS");
#endif
    enum { HEAPS = 200 };
    static loam_heap_t *heaps[HEAPS];
    size_t before = rss_bytes();
    for (int i = 0; i < HEAPS; i++) {
        loam_config_t cfg = { .mode = LOAM_GC, .trace = trace_node, .flags = LOAM_NO_STACK_SCAN };
        heaps[i] = loam_heap_new(&cfg);
        cr_assert_not_null(heaps[i]);
        for (int k = 0; k < 100; k++)           /* 3 KiB of garbage */
            cr_assert_not_null(new_node(heaps[i], LOAM_TRACED, 2));
        loam_gc_collect(heaps[i]);
        loam_gc_collect(heaps[i]);
    }
    size_t each = (rss_bytes() - before) / HEAPS;
    fprintf(stderr, "gc/a_small_collected_heap: %zu KiB resident each\n", each >> 10);
    cr_assert_leq(each, 30 * KiB, "a collected heap holding nothing costs %zu KiB", each >> 10);
    for (int i = 0; i < HEAPS; i++)
        loam_heap_destroy(heaps[i]);
}

/* A heap made where a destroyed one was takes the same slots, and this
 * thread still has the destroyed heap's caches, disowned. Each kind must
 * allocate from a cache of its own: once, the conservative kind's slot still
 * named a disowned cache that the traced kind had just taken over, and its
 * blocks came from traced slabs, handed to the trace callback instead of
 * being scanned. */
static void *kinds_apart_seen[2];
static size_t kinds_apart_traced[2];

static void kinds_apart_trace(void *p, loam_tracer_t *t, void *user)
{
    (void)t, (void)user;
    for (int i = 0; i < 2; i++)
        if (p == kinds_apart_seen[i])
            kinds_apart_traced[i]++;
}

Test(gc, a_heap_made_where_a_destroyed_one_was_keeps_its_kinds_apart)
{
    loam_heap_t *prev = NULL;
    int reused = 0;
    for (int round = 0; round < 8; round++) {
        loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .trace = kinds_apart_trace };
        loam_heap_t *h = loam_heap_new(&cfg);
        cr_assert_not_null(h);
        bool same = h == prev;
        reused += same;
        prev = h;
        static void *slots[2];
        slots[0] = loam_gc_alloc(h, 40, LOAM_TRACED);
        slots[1] = loam_gc_alloc(h, 40, LOAM_CONSERVATIVE);
        cr_assert(slots[0] && slots[1]);
        for (int i = 0; i < 2; i++) {
            loam_root_add(h, &slots[i]);
            kinds_apart_seen[i] = slots[i];
            kinds_apart_traced[i] = 0;
        }
        loam_gc_collect(h);
        cr_assert_eq(kinds_apart_traced[0], 1, "round %d: the traced block was traced %zu times", round,
                     kinds_apart_traced[0]);
        cr_assert_eq(kinds_apart_traced[1], 0, "round %d (heap %s): a conservative block went to the trace callback",
                     round, same ? "where the last one was" : "new");
        for (int i = 0; i < 2; i++)
            loam_root_remove(h, &slots[i]);
        loam_heap_destroy(h);
    }
    cr_assert_gt(reused, 0, "no heap was made where the last one was: the case was not tried");
}

Test(gc, collected_heaps_made_and_destroyed_leave_nothing_behind, .timeout = 300)
{
    for (int i = 0; i < 200; i++) {                /* warm up: caches, metadata pages */
        loam_heap_t *h = churn_heap_new();
        cr_assert_not_null(loam_gc_alloc(h, 100, LOAM_ATOMIC));
        loam_heap_destroy(h);
    }
    size_t before = rss_bytes();
    for (size_t i = 0; i < churn_heaps(); i++) {
        loam_heap_t *h = churn_heap_new();
        cr_assert_not_null(loam_gc_alloc(h, 100, LOAM_ATOMIC));   /* attaches this thread */
        loam_heap_destroy(h);
    }
    size_t after = rss_bytes();
    cr_assert_lt(after, before + (1u << 20), "RSS grew by %zu KiB over %zu heaps",
                 (after - before) >> 10, churn_heaps());
}

/* The same with a second thread attached to each heap before it goes. */
static pthread_barrier_t churn_barrier;
static loam_heap_t *churn_current;

static void *attach_to_each(void *arg)
{
    (void)arg;
    for (size_t i = 0; i < churn_heaps(); i++) {
        pthread_barrier_wait(&churn_barrier);      /* made */
        cr_assert_not_null(loam_gc_alloc(churn_current, 100, LOAM_ATOMIC));
        pthread_barrier_wait(&churn_barrier);      /* may go */
    }
    return NULL;
}

Test(gc, collected_heaps_another_thread_attached_to_leave_nothing_behind, .timeout = 300)
{
    pthread_barrier_init(&churn_barrier, NULL, 2);
    pthread_t t;
    size_t before = 0;
    cr_assert_eq(pthread_create(&t, NULL, attach_to_each, NULL), 0);
    for (size_t i = 0; i < churn_heaps(); i++) {
        if (i == churn_heaps() / 8)
            before = rss_bytes();
        churn_current = churn_heap_new();
        pthread_barrier_wait(&churn_barrier);
        pthread_barrier_wait(&churn_barrier);
        loam_heap_destroy(churn_current);
    }
    size_t after = rss_bytes();
    pthread_join(t, NULL);
    pthread_barrier_destroy(&churn_barrier);
    cr_assert_lt(after, before + (1u << 20), "RSS grew by %zu KiB over %zu heaps",
                 (after - before) >> 10, churn_heaps() - churn_heaps() / 8);
}

/* A marking that pushes a million entries (one conservative array of a
 * million pointers to fresh blocks) touches 16 MB of mark stack. Once the
 * markings after it stay shallow, those pages go back; a deep marking after
 * that still marks everything. */
static void **deep_array(loam_heap_t *h, size_t n)
{
    void **a = loam_gc_alloc(h, n * sizeof *a, LOAM_CONSERVATIVE);
    cr_assert_not_null(a);
    for (size_t i = 0; i < n; i++) {
        uintptr_t *b = loam_gc_alloc(h, 16, LOAM_CONSERVATIVE);
        cr_assert_not_null(b);
        b[0] = (uintptr_t)i * 2 + 1;              /* odd: not a pointer */
        a[i] = b;
    }
    return a;
}

/* Under valgrind the RSS is valgrind's: the markings still run, for
 * memcheck to watch the trim and the pages touched again. */
static void deep_marking_gives_back(unsigned flags, const char *what)
{
    const size_t n = 1000 * 1000 / GC_SAN_DIVISOR;
    const bool rss = rss_readable();
    loam_heap_t *h = gc_heap(LOAM_NO_STACK_SCAN | flags, NULL, NULL, NULL);
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);   /* only loam_gc_collect */
    static void **root;
    loam_root_add(h, (void **)&root);
    loam_gc_collect(h);
    size_t before = rss ? rss_outside_heap(h) : 0;
    root = deep_array(h, n);
    for (int i = 0; i < 3; i++)                 /* parallel: the first eligible marks alone, to measure */
        loam_gc_collect(h);
    size_t spike = rss ? rss_outside_heap(h) : 0;
    root = NULL;
    for (int i = 0; i < 9; i++)                 /* shallow markings: the wait, and one */
        loam_gc_collect(h);
    expect_live(h, 0, "array dropped");
    if (rss) {
        size_t after = rss_outside_heap(h);
        expect_given_back(what, spike, after, n * 16 / 4 * 3);
        if (!RSS_SHADOW_STAYS)
            cr_assert_leq(after, before + n * 16 / 8,
                          "%s: %zu KiB outside the heap before the spike, %zu KiB after", what,
                          before >> 10, after >> 10);
    }

    root = deep_array(h, n);                    /* as deep again: the pages come back */
    loam_gc_collect(h);
    loam_gc_collect(h);
    expect_live(h, n + 1, "array rooted after the trim");
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(((uintptr_t *)root[i])[0], (uintptr_t)i * 2 + 1);
    loam_root_remove(h, (void **)&root);
    loam_heap_destroy(h);
}

Test(gc, the_mark_stack_of_a_deep_marking_goes_back_after_it, .timeout = 120)
{
    deep_marking_gives_back(0, "gc/the_mark_stack_of_a_deep_marking");
}

/* With two markers the array's entries spread over the shared pool and the
 * helper's stack: those go back too. */
Test(gc, the_mark_stacks_and_pool_of_a_deep_parallel_marking_go_back_after_it, .timeout = 120)
{
    cr_assert_eq(loam_option_set("gc_markers", 2), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", (long)MiB), 0);   /* sanitizer builds mark 6 MiB */
    deep_marking_gives_back(LOAM_PARALLEL_MARK, "gc/the_mark_stacks_and_pool_of_a_deep_parallel_marking");
}
