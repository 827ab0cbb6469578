/* tests/test_gc_torture.c — a random object-graph torture test of the collector.
 *
 * A model keeps every object the test can still reach: its address, kind,
 * size, serial and, for containers, the target (and interior offset) of each
 * pointer slot. Rounds alternate
 *   - growth: new objects of all three kinds (TRACED with the test's own
 *     header read by the trace callback, CONSERVATIVE with the same layout,
 *     ATOMIC filled with a pattern, its first word a pointer-looking value that
 *     must never be followed), hung from a reachable place at once, with
 *     edges to reachable objects; sizes from 1 byte to 640 KiB;
 *   - mutation without allocation: edges added and cut (conservative edges and
 *     root-range words are often interior pointers), root entries of all three
 *     forms (the roots callback's table, loam_root_add slots, loam_root_add_range
 *     ranges) set, cleared, unregistered and registered again;
 *   - a collection, then every reachable object's contents are verified (never
 *     freed while reachable) and, on a LOAM_NO_STACK_SCAN heap, live bytes and
 *     live blocks must equal the reachable objects' exactly (everything
 *     unreachable is reclaimed, nothing else is retained).
 * Automatic collections happen in between, during growth (often: the exact
 * test sets gc_growth=5, gc_min_bytes=256 KiB, gc_young_min=128 KiB).
 * At the end every root is dropped and the heap's live bytes return to zero.
 * A second test runs the same on a heap that scans the stack, where stale
 * stack words may retain a few objects: there the checks are "at least the
 * reachable ones" and, at the end, a small tolerance.
 *
 * LOAM_TEST_SEED=<n> replays a run (the seed is printed); LOAM_TEST_SCALE=<x>
 * multiplies the number of rounds. */
#define _GNU_SOURCE
#include "harness.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc_util.h"

#define TAG_TRACED 0xA17AC3D0000000F1ull
#define TAG_CONS   0xC025E27A000000C2ull
#define HDR_WORDS  3                  /* tag, child count, serial */
#define MAX_CHILD  256
#define NCB        48                 /* roots callback table */
#define NSLOT      48                 /* loam_root_add slots */
#define NRANGE     4                  /* loam_root_add_range ranges */
#define RANGE_WORDS 24
#define MAX_OBJECTS 2500
#define MAX_MODEL_BYTES (24 * MiB)

enum { OK_ATOMIC, OK_CONS, OK_TRACED };

typedef struct {
    void     *addr;
    size_t    size, usable;
    uint64_t  serial;
    uintptr_t fake;                   /* atomic: the pointer-looking first word */
    uint32_t  nchild;
    uint32_t  seen;                   /* reachability epoch */
    uint8_t   kind;
    bool      live;
    int32_t  *child;                  /* target ids, -1: NULL */
    uint32_t *coff;                   /* byte offset of the stored pointer in the target */
} tobj_t;

typedef struct {
    loam_heap_t *h;
    gc_rng_t     rng;
    uint64_t     seed;
    bool         exact;               /* LOAM_NO_STACK_SCAN: exact live accounting */
    bool         align_8;             /* LOAM_ALIGN_8: blocks of 24, 40 and 56 bytes */
    tobj_t      *obj;
    size_t       nobj, cap;
    int32_t     *freeids;
    size_t       nfree;
    int32_t     *reach, *conts;       /* reachable ids, reachable containers */
    size_t       nreach, nconts;
    int32_t     *queue;
    bool         dirty;
    uint32_t     epoch;
    size_t       reach_usable, reach_bytes;
    uint64_t     next_serial;
    /* roots */
    void        *cb[NCB];
    int32_t      cb_id[NCB];
    int32_t      slot_id[NSLOT];
    bool         slot_on[NSLOT];
    uintptr_t   *range[NRANGE];
    int32_t      range_id[NRANGE][RANGE_WORDS];
    uint32_t     range_off[NRANGE][RANGE_WORDS];
    bool         range_on[NRANGE];
    /* callbacks */
    size_t       trace_calls, trace_bad, roots_calls;
    size_t       explicit_collections;
} torture_t;

static void *slot_roots[NSLOT];      /* registered with loam_root_add */
static uintptr_t junk_target;        /* a non-heap address stored as junk in ranges */

static void t_trace(void *obj, loam_tracer_t *t, void *user)
{
    torture_t *T = user;
    /* Atomic: with LOAM_PARALLEL_MARK this runs on several threads at once. */
    __atomic_fetch_add(&T->trace_calls, 1, __ATOMIC_RELAXED);
    uintptr_t *w = obj;
    if (w[0] == 0 && w[1] == 0)
        return;                       /* fresh (zero-filled) object */
    if (w[0] != TAG_TRACED || w[1] > MAX_CHILD) {
        __atomic_fetch_add(&T->trace_bad, 1, __ATOMIC_RELAXED);
        return;
    }
    for (size_t i = 0; i < w[1]; i++)
        loam_mark(t, (void *)w[HDR_WORDS + i]);      /* NULL included: allowed */
}

static void t_roots(loam_tracer_t *t, void *user)
{
    torture_t *T = user;
    T->roots_calls++;
    for (int i = 0; i < NCB; i++)
        if (T->cb[i])
            loam_mark(t, T->cb[i]);
}

/* ---- model ------------------------------------------------------------------ */

static bool is_container(const tobj_t *o) { return o->kind != OK_ATOMIC && o->nchild > 0; }

static void mark_seen(torture_t *T, int32_t id, size_t *tail)
{
    if (id < 0)
        return;
    tobj_t *o = &T->obj[id];
    cr_assert(o->live, "seed %llu: model error, edge to a dead object %d", (unsigned long long)T->seed, id);
    if (o->seen == T->epoch)
        return;
    o->seen = T->epoch;
    T->queue[(*tail)++] = id;
}

/* Recompute the reachable set from the roots over the model's edges; objects
 * no longer reachable are forgotten (the collector may free them from the
 * next allocation on). */
static void recompute(torture_t *T)
{
    T->epoch++;
    size_t head = 0, tail = 0;
    for (int i = 0; i < NCB; i++)
        mark_seen(T, T->cb_id[i], &tail);
    for (int i = 0; i < NSLOT; i++)
        if (T->slot_on[i])
            mark_seen(T, T->slot_id[i], &tail);
    for (int r = 0; r < NRANGE; r++)
        if (T->range_on[r])
            for (int i = 0; i < RANGE_WORDS; i++)
                mark_seen(T, T->range_id[r][i], &tail);
    while (head < tail) {
        tobj_t *o = &T->obj[T->queue[head++]];
        for (uint32_t c = 0; c < o->nchild; c++)
            mark_seen(T, o->child[c], &tail);
    }
    T->nreach = T->nconts = 0;
    T->reach_usable = T->reach_bytes = 0;
    for (size_t id = 0; id < T->nobj; id++) {
        tobj_t *o = &T->obj[id];
        if (!o->live)
            continue;
        if (o->seen != T->epoch) {
            o->live = false;
            free(o->child);
            free(o->coff);
            o->child = NULL;
            o->coff = NULL;
            T->freeids[T->nfree++] = (int32_t)id;
            /* Unregistered roots may still name it: forget that too. */
            for (int i = 0; i < NSLOT; i++)
                if (T->slot_id[i] == (int32_t)id)
                    T->slot_id[i] = -1;
            for (int r = 0; r < NRANGE; r++)
                for (int i = 0; i < RANGE_WORDS; i++)
                    if (T->range_id[r][i] == (int32_t)id)
                        T->range_id[r][i] = -1;
            continue;
        }
        T->reach[T->nreach++] = (int32_t)id;
        if (is_container(o))
            T->conts[T->nconts++] = (int32_t)id;
        T->reach_usable += o->usable;
        T->reach_bytes += o->size;
    }
    T->dirty = false;
}

static uintptr_t ptr_value(torture_t *T, int32_t id, uint32_t off)
{
    return id < 0 ? 0 : (uintptr_t)T->obj[id].addr + off;
}

/* An offset into object id for a conservative reference: the start half of
 * the time, else anywhere inside the requested bytes. */
static uint32_t pick_offset(torture_t *T, int32_t id)
{
    if (id < 0 || gc_rng_below(&T->rng, 2) == 0)
        return 0;
    return (uint32_t)gc_rng_below(&T->rng, T->obj[id].size);
}

/* Store a reference to target (id, or -1) into slot c of container p. */
static void set_edge(torture_t *T, int32_t p, uint32_t c, int32_t target)
{
    tobj_t *o = &T->obj[p];
    uint32_t off = o->kind == OK_CONS ? pick_offset(T, target) : 0;
    if (o->child[c] >= 0 && o->child[c] != target)
        T->dirty = true;
    o->child[c] = target;
    o->coff[c] = off;
    ((uintptr_t *)o->addr)[HDR_WORDS + c] = ptr_value(T, target, off);
    /* Every heap gets the barrier (it is ignored where not needed); a
     * LOAM_GENERATIONAL heap depends on it. The slot's address is interior. */
    loam_write_barrier(&((uintptr_t *)o->addr)[HDR_WORDS + c]);
}

enum { ROOT_CB, ROOT_SLOT, ROOT_RANGE };

/* Point a root entry at target (or clear it). */
static void set_root(torture_t *T, int form, int i, int j, int32_t target)
{
    switch (form) {
    case ROOT_CB:
        if (T->cb_id[i] >= 0 && T->cb_id[i] != target)
            T->dirty = true;
        T->cb_id[i] = target;
        T->cb[i] = (void *)ptr_value(T, target, 0);
        break;
    case ROOT_SLOT:
        if (T->slot_on[i] && T->slot_id[i] >= 0 && T->slot_id[i] != target)
            T->dirty = true;
        T->slot_id[i] = target;
        slot_roots[i] = (void *)ptr_value(T, target, 0);
        break;
    default: {
        uint32_t off = pick_offset(T, target);
        if (T->range_on[i] && T->range_id[i][j] >= 0 && T->range_id[i][j] != target)
            T->dirty = true;
        T->range_id[i][j] = target;
        T->range_off[i][j] = off;
        if (target < 0) {   /* cleared: zero, or a word that is no pointer of ours */
            uintptr_t junk[4] = { 0, 0x1235, (uintptr_t)&junk_target, ~(uintptr_t)0 };
            T->range[i][j] = junk[gc_rng_below(&T->rng, 4)];
        } else {
            T->range[i][j] = ptr_value(T, target, off);
        }
        break;
    }
    }
}

/* A root entry of a random form (possibly an unregistered slot or range). */
static void random_root(torture_t *T, int *form, int *i, int *j)
{
    *form = (int)gc_rng_below(&T->rng, 3);
    *i = (int)gc_rng_below(&T->rng, *form == ROOT_CB ? NCB : *form == ROOT_SLOT ? NSLOT : NRANGE);
    *j = (int)gc_rng_below(&T->rng, RANGE_WORDS);
}

static bool root_active(torture_t *T, int form, int i)
{
    return form == ROOT_CB || (form == ROOT_SLOT ? T->slot_on[i] : T->range_on[i]);
}

static int32_t root_target(torture_t *T, int form, int i, int j)
{
    return form == ROOT_CB ? T->cb_id[i] : form == ROOT_SLOT ? T->slot_id[i] : T->range_id[i][j];
}

static int32_t new_id(torture_t *T)
{
    if (T->nfree)
        return T->freeids[--T->nfree];
    if (T->nobj == T->cap) {
        size_t ncap = T->cap ? T->cap * 2 : 1024;
        T->obj = realloc(T->obj, ncap * sizeof *T->obj);
        T->freeids = realloc(T->freeids, ncap * sizeof *T->freeids);
        T->reach = realloc(T->reach, ncap * sizeof *T->reach);
        T->conts = realloc(T->conts, ncap * sizeof *T->conts);
        T->queue = realloc(T->queue, ncap * sizeof *T->queue);
        cr_assert(T->obj && T->freeids && T->reach && T->conts && T->queue);
        memset(T->obj + T->cap, 0, (ncap - T->cap) * sizeof *T->obj);
        T->cap = ncap;
    }
    return (int32_t)T->nobj++;
}

/* ---- verification ------------------------------------------------------------- */

static void verify_object(torture_t *T, int32_t id, const char *when)
{
    tobj_t *o = &T->obj[id];
    unsigned long long sd = (unsigned long long)T->seed;
    cr_assert_eq(loam_heap_of(o->addr), T->h, "seed %llu, %s: object %d (%p) no longer a block of the heap",
                 sd, when, id, o->addr);
    cr_assert_eq(loam_usable_size(o->addr), o->usable, "seed %llu, %s: object %d usable size changed", sd, when, id);
    const uintptr_t *w = o->addr;
    if (o->kind == OK_ATOMIC) {
        size_t from = 0;
        if (o->size >= 16) {
            cr_assert_eq(w[0], o->fake, "seed %llu, %s: atomic object %d (%p) first word overwritten", sd, when, id,
                         o->addr);
            from = 8;
        }
        size_t bad = gc_check(o->addr, from, o->size, o->serial);
        cr_assert_eq(bad, (size_t)-1, "seed %llu, %s: atomic object %d (%p, %zu bytes) corrupt at byte %zu", sd, when,
                     id, o->addr, o->size, bad);
        return;
    }
    uint64_t tag = o->kind == OK_TRACED ? TAG_TRACED : TAG_CONS;
    cr_assert(w[0] == tag && w[1] == o->nchild && w[2] == o->serial,
              "seed %llu, %s: header of %s object %d (%p) overwritten: %#lx %lu %lu", sd, when,
              o->kind == OK_TRACED ? "traced" : "conservative", id, o->addr, (unsigned long)w[0],
              (unsigned long)w[1], (unsigned long)w[2]);
    for (uint32_t c = 0; c < o->nchild; c++) {
        uintptr_t want = ptr_value(T, o->child[c], o->coff[c]);
        cr_assert_eq(w[HDR_WORDS + c], want, "seed %llu, %s: object %d slot %u holds %#lx, expected %#lx", sd, when,
                     id, c, (unsigned long)w[HDR_WORDS + c], (unsigned long)want);
    }
    size_t from = (HDR_WORDS + o->nchild) * sizeof(uintptr_t);
    size_t bad = gc_check(o->addr, from, o->size, o->serial);
    cr_assert_eq(bad, (size_t)-1, "seed %llu, %s: object %d (%p, %zu bytes) padding corrupt at byte %zu", sd, when, id,
                 o->addr, o->size, bad);
}

static void verify_roots(torture_t *T)
{
    for (int i = 0; i < NCB; i++)
        cr_assert_eq((uintptr_t)T->cb[i], ptr_value(T, T->cb_id[i], 0));
    for (int i = 0; i < NSLOT; i++)
        if (T->slot_on[i])
            cr_assert_eq((uintptr_t)slot_roots[i], ptr_value(T, T->slot_id[i], 0),
                         "seed %llu: root slot %d changed", (unsigned long long)T->seed, i);
}

static void collect_and_verify(torture_t *T, const char *when)
{
    loam_gc_collect(T->h);
    T->explicit_collections++;
    recompute(T);
    verify_roots(T);
    for (size_t k = 0; k < T->nreach; k++)
        verify_object(T, T->reach[k], when);
    cr_assert_eq(T->trace_bad, 0, "seed %llu: the trace callback was given %zu blocks that are not traced objects",
                 (unsigned long long)T->seed, T->trace_bad);
    loam_stats_t st = gc_stats(T->h);
    if (T->exact) {
        cr_assert_eq(st.live_blocks, T->nreach,
                     "seed %llu, %s: %zu live blocks after a collection, %zu reachable", (unsigned long long)T->seed,
                     when, st.live_blocks, T->nreach);
        cr_assert_eq(st.live_bytes, T->reach_usable,
                     "seed %llu, %s: %zu live bytes after a collection, reachable objects hold %zu",
                     (unsigned long long)T->seed, when, st.live_bytes, T->reach_usable);
    } else {
        cr_assert_geq(st.live_blocks, T->nreach, "seed %llu, %s", (unsigned long long)T->seed, when);
        cr_assert_geq(st.live_bytes, T->reach_usable, "seed %llu, %s", (unsigned long long)T->seed, when);
    }
    cr_assert_geq(st.gc_collections, T->explicit_collections);
}

/* ---- operations -------------------------------------------------------------- */

static size_t pick_size(torture_t *T, int kind)
{
    size_t r = gc_rng_below(&T->rng, 1000);
    size_t lo, hi;
    if (r < 700)
        lo = 1, hi = 256;
    else if (r < 900)
        lo = 256, hi = 8 * KiB;
    else if (r < 985 || T->reach_bytes > MAX_MODEL_BYTES)
        lo = 8 * KiB, hi = 128 * KiB;
    else
        lo = 128 * KiB, hi = 640 * KiB;
    size_t n = lo + gc_rng_below(&T->rng, hi - lo);
    if (kind != OK_ATOMIC && n < (HDR_WORDS + 1) * sizeof(uintptr_t))
        n = (HDR_WORDS + 1) * sizeof(uintptr_t) + gc_rng_below(&T->rng, 64);
    return n;
}

/* Allocate one object, hang it from a reachable place at once, give it
 * edges to reachable objects. */
static void grow_one(torture_t *T)
{
    /* The reach list must be current; from here on nothing is cut until the
     * new object hangs somewhere (a recompute before that would find it
     * unreachable). */
    if (T->dirty)
        recompute(T);
    int kind = (int)gc_rng_below(&T->rng, 3);
    size_t size = pick_size(T, kind);
    loam_kind_t lk = kind == OK_ATOMIC ? LOAM_ATOMIC : kind == OK_CONS ? LOAM_CONSERVATIVE : LOAM_TRACED;
    void *p = loam_gc_alloc(T->h, size, lk);
    cr_assert_not_null(p, "seed %llu: loam_gc_alloc(%zu) failed", (unsigned long long)T->seed, size);
    /* LOAM_ALIGN_8: a request that rounds to 24, 40 or 56 bytes gets a block
     * of that size, 8-byte aligned; every other block is 16-byte aligned. */
    size_t by8 = T->align_8 ? gc_align_8_block(size) : 0;
    cr_assert_eq((uintptr_t)p % (by8 ? 8 : 16), 0, "seed %llu: block %p of %zu bytes misaligned",
                 (unsigned long long)T->seed, p, size);
    if (by8)
        cr_assert_eq(loam_usable_size(p), by8, "seed %llu: %zu bytes in a block of %zu",
                     (unsigned long long)T->seed, size, loam_usable_size(p));
    /* No allocation from here until p is reachable: no collection can run. */
    int32_t id = new_id(T);
    tobj_t *o = &T->obj[id];
    memset(o, 0, sizeof *o);
    o->addr = p;
    o->size = size;
    o->usable = loam_usable_size(p);
    cr_assert_geq(o->usable, size);
    o->serial = ++T->next_serial * 0x9E3779B97F4A7C15ull;
    o->kind = (uint8_t)kind;
    o->live = true;
    o->seen = T->epoch;
    uintptr_t *w = p;
    if (kind == OK_ATOMIC) {
        size_t from = 0;
        if (size >= 16) {
            int32_t f = T->nreach ? T->reach[gc_rng_below(&T->rng, T->nreach)] : -1;
            o->fake = f >= 0 ? (uintptr_t)T->obj[f].addr : 0;  /* may die: atomic words are never followed */
            w[0] = o->fake;
            from = 8;
        }
        gc_fill(p, from, size, o->serial);
    } else {
        size_t zcheck = size < 64 * KiB ? size : 64 * KiB;
        for (size_t i = 0; i < zcheck; i++)
            cr_assert_eq(((unsigned char *)p)[i], 0, "seed %llu: gc_alloc'd %s block %p not zero at byte %zu",
                         (unsigned long long)T->seed, kind == OK_CONS ? "conservative" : "traced", p, i);
        size_t maxc = size / sizeof(uintptr_t) - HDR_WORDS;
        size_t lim = gc_rng_below(&T->rng, 20) == 0 ? MAX_CHILD : 12;
        if (maxc > lim)
            maxc = lim;
        o->nchild = (uint32_t)(1 + gc_rng_below(&T->rng, maxc));
        o->child = malloc(o->nchild * sizeof *o->child);
        o->coff = malloc(o->nchild * sizeof *o->coff);
        cr_assert(o->child && o->coff);
        for (uint32_t c = 0; c < o->nchild; c++)
            o->child[c] = -1, o->coff[c] = 0;
        w[1] = o->nchild;
        w[2] = o->serial;
        /* The pattern runs to the end of the last word: a word straddling the
         * object's end, half pattern and half zero padding, could look like a
         * pointer where mappings sit at low addresses (under valgrind), and a
         * conservative object would then retain something. */
        size_t words_end = (size + sizeof(uintptr_t) - 1) & ~(sizeof(uintptr_t) - 1);
        gc_fill(p, (HDR_WORDS + o->nchild) * sizeof(uintptr_t), words_end, o->serial);
        w[0] = kind == OK_TRACED ? TAG_TRACED : TAG_CONS;
        /* edges to reachable objects (the reach list is current) */
        for (uint32_t c = 0; c < o->nchild; c++)
            if (T->nreach && gc_rng_below(&T->rng, 3) != 0)
                set_edge(T, id, c, T->reach[gc_rng_below(&T->rng, T->nreach)]);
    }
    /* Hang it somewhere reachable: a free container slot, or a root entry. */
    bool hung = false;
    if (T->nconts && gc_rng_below(&T->rng, 4) != 0) {
        for (int tries = 0; tries < 4 && !hung; tries++) {
            int32_t p2 = T->conts[gc_rng_below(&T->rng, T->nconts)];
            uint32_t c = (uint32_t)gc_rng_below(&T->rng, T->obj[p2].nchild);
            if (T->obj[p2].child[c] < 0 || tries == 3) {
                set_edge(T, p2, c, id);
                hung = true;
            }
        }
    }
    while (!hung) {
        int form, i, j;
        random_root(T, &form, &i, &j);
        if (!root_active(T, form, i))
            continue;
        if (root_target(T, form, i, j) >= 0 && gc_rng_below(&T->rng, 4) != 0)
            continue;                 /* prefer free entries */
        set_root(T, form, i, j, id);
        hung = true;
    }
    T->reach[T->nreach++] = id;
    if (is_container(o))
        T->conts[T->nconts++] = id;
    T->reach_usable += o->usable;
    T->reach_bytes += o->size;
}

/* Mutations with no allocation: no collection can run, so objects reachable
 * at the last recompute are all still intact even if a cut made some of
 * them unreachable, and may be linked again. */
static void mutate(torture_t *T, size_t nops, unsigned cut_weight)
{
    if (T->dirty)
        recompute(T);                 /* allocations happened since the list was made */
    if (!T->nreach)
        return;
    for (size_t k = 0; k < nops; k++) {
        unsigned r = (unsigned)gc_rng_below(&T->rng, 100);
        bool cut = r < cut_weight;
        int32_t target = cut ? -1 : T->reach[gc_rng_below(&T->rng, T->nreach)];
        if (gc_rng_below(&T->rng, 3) != 0 && T->nconts) {
            int32_t p = T->conts[gc_rng_below(&T->rng, T->nconts)];
            set_edge(T, p, (uint32_t)gc_rng_below(&T->rng, T->obj[p].nchild), target);
        } else {
            int form, i, j;
            random_root(T, &form, &i, &j);
            if (form == ROOT_CB && cut && gc_rng_below(&T->rng, 4) != 0)
                continue;             /* keep the callback table fairly full */
            set_root(T, form, i, j, target);
        }
    }
    /* Unregister or re-register a slot and a range now and then. */
    if (gc_rng_below(&T->rng, 3) == 0) {
        int i = (int)gc_rng_below(&T->rng, NSLOT);
        if (T->slot_on[i]) {
            loam_root_remove(T->h, &slot_roots[i]);
            T->slot_on[i] = false;
            T->dirty = true;
        } else {
            int32_t target = gc_rng_below(&T->rng, 2) ? T->reach[gc_rng_below(&T->rng, T->nreach)] : -1;
            T->slot_id[i] = target;
            slot_roots[i] = (void *)ptr_value(T, target, 0);
            loam_root_add(T->h, &slot_roots[i]);
            T->slot_on[i] = true;
        }
    }
    if (gc_rng_below(&T->rng, 6) == 0) {
        int i = (int)gc_rng_below(&T->rng, NRANGE);
        if (T->range_on[i]) {
            loam_root_remove_range(T->h, T->range[i]);
            T->range_on[i] = false;
            T->dirty = true;
        } else {
            for (int j = 0; j < RANGE_WORDS; j++)
                set_root(T, ROOT_RANGE, i, j, gc_rng_below(&T->rng, 2) ? T->reach[gc_rng_below(&T->rng, T->nreach)] : -1);
            loam_root_add_range(T->h, T->range[i], T->range[i] + RANGE_WORDS);
            T->range_on[i] = true;
        }
    }
    T->dirty = true;
}

/* When the graph is crowded: clear a third of the root entries and a quarter
 * of the edges (no allocation, as in mutate), so whole subgraphs die. */
static void prune(torture_t *T)
{
    if (T->dirty)
        recompute(T);
    for (int i = 0; i < NCB; i++)
        if (gc_rng_below(&T->rng, 3) == 0)
            set_root(T, ROOT_CB, i, 0, -1);
    for (int i = 0; i < NSLOT; i++)
        if (gc_rng_below(&T->rng, 3) == 0)
            set_root(T, ROOT_SLOT, i, 0, -1);
    for (int r = 0; r < NRANGE; r++)
        for (int j = 0; j < RANGE_WORDS; j++)
            if (gc_rng_below(&T->rng, 3) == 0)
                set_root(T, ROOT_RANGE, r, j, -1);
    for (size_t k = 0; k < T->nconts; k++) {
        tobj_t *o = &T->obj[T->conts[k]];
        for (uint32_t c = 0; c < o->nchild; c++)
            if (gc_rng_below(&T->rng, 4) == 0)
                set_edge(T, T->conts[k], c, -1);
    }
    T->dirty = true;
}

/* ---- the test ------------------------------------------------------------------- */

static void torture_setup(torture_t *T, unsigned flags, const char *name)
{
    memset(T, 0, sizeof *T);
    T->seed = gc_test_seed(name);
    T->rng.s = T->seed;
    T->exact = (flags & LOAM_NO_STACK_SCAN) != 0;
    T->align_8 = (flags & LOAM_ALIGN_8) != 0;
    loam_config_t cfg = { 0 };
    cfg.mode = LOAM_GC;
    cfg.flags = flags;
    cfg.trace = t_trace;
    cfg.roots = t_roots;
    cfg.user = T;
    T->h = loam_heap_new(&cfg);
    cr_assert_not_null(T->h, "loam_heap_new(LOAM_GC) failed");
    for (int i = 0; i < NCB; i++)
        T->cb_id[i] = -1;
    for (int i = 0; i < NSLOT; i++) {
        T->slot_id[i] = -1;
        slot_roots[i] = NULL;
        loam_root_add(T->h, &slot_roots[i]);
        T->slot_on[i] = true;
    }
    for (int r = 0; r < NRANGE; r++) {
        T->range[r] = calloc(RANGE_WORDS, sizeof(uintptr_t));   /* glibc memory: not a loam block */
        cr_assert_not_null(T->range[r]);
        for (int j = 0; j < RANGE_WORDS; j++)
            T->range_id[r][j] = -1;
        loam_root_add_range(T->h, T->range[r], T->range[r] + RANGE_WORDS);
        T->range_on[r] = true;
    }
    new_id(T);                         /* make the arrays */
    T->nobj = 0;
}

static GC_NOINLINE void torture_rounds(torture_t *T)
{
    size_t rounds = 60 * gc_test_scale() / GC_SAN_DIVISOR;
    for (size_t round = 0; round < rounds; round++) {
        bool crowded = T->nreach > MAX_OBJECTS;
        size_t grow = crowded ? 100 : 150 + gc_rng_below(&T->rng, 300);
        for (size_t k = 0; k < grow; k++) {
            grow_one(T);
            if (k % 50 == 49)
                mutate(T, 10, 50);    /* interleave (also with automatic collections) */
            if (T->dirty && k % 50 == 49)
                recompute(T);
        }
        mutate(T, 200 + gc_rng_below(&T->rng, 200), 70);
        if (crowded)
            prune(T);
        char when[64];
        snprintf(when, sizeof when, "after round %zu", round);
        collect_and_verify(T, when);
        if (gc_rng_below(&T->rng, 4) == 0) {
            /* a second collection in a row changes nothing */
            loam_stats_t a = gc_stats(T->h);
            collect_and_verify(T, "second collection");
            loam_stats_t b = gc_stats(T->h);
            if (T->exact)
                cr_assert_eq(a.live_bytes, b.live_bytes);
        }
    }
}

/* Cut every edge and clear every root entry; nothing is reachable then. */
static GC_NOINLINE void torture_drop_all(torture_t *T)
{
    recompute(T);
    for (size_t k = 0; k < T->nconts; k++) {
        tobj_t *o = &T->obj[T->conts[k]];
        for (uint32_t c = 0; c < o->nchild; c++)
            set_edge(T, T->conts[k], c, -1);
    }
    for (int i = 0; i < NCB; i++)
        set_root(T, ROOT_CB, i, 0, -1);
    for (int i = 0; i < NSLOT; i++) {
        set_root(T, ROOT_SLOT, i, 0, -1);
        if (T->slot_on[i])
            loam_root_remove(T->h, &slot_roots[i]);
        T->slot_on[i] = false;
    }
    for (int r = 0; r < NRANGE; r++) {
        if (T->range_on[r])
            loam_root_remove_range(T->h, T->range[r]);
        T->range_on[r] = false;
        memset(T->range[r], 0, RANGE_WORDS * sizeof(uintptr_t));
    }
    recompute(T);
    cr_assert_eq(T->nreach, 0);
}

static void torture_teardown(torture_t *T)
{
    for (size_t id = 0; id < T->nobj; id++) {
        free(T->obj[id].child);
        free(T->obj[id].coff);
    }
    free(T->obj);
    free(T->freeids);
    free(T->reach);
    free(T->conts);
    free(T->queue);
    for (int r = 0; r < NRANGE; r++)
        free(T->range[r]);
    loam_heap_destroy(T->h);
}

/* Frequent automatic collections in the middle of growth and mutation. */
static void torture_collect_often(void)
{
    cr_assert_eq(loam_option_set("gc_growth", 5), 0);
    cr_assert_eq(loam_option_set("gc_min_bytes", 256 * 1024), 0);
    cr_assert_eq(loam_option_set("gc_young_min", 128 * 1024), 0);
}

/* The rounds on a LOAM_NO_STACK_SCAN heap, collecting often. */
static void torture_exact(torture_t *T, unsigned flags, const char *name)
{
    torture_collect_often();
    torture_setup(T, LOAM_NO_STACK_SCAN | flags, name);
    torture_rounds(T);
}

/* Every root dropped: a collection leaves nothing live, and the trace
 * callback was used and never given a foreign block. */
static loam_stats_t torture_expect_empty(torture_t *T)
{
    torture_drop_all(T);
    loam_gc_collect(T->h);
    loam_stats_t st = gc_stats(T->h);
    cr_assert_eq(st.live_bytes, 0, "seed %llu: %zu live bytes (%zu blocks) after dropping every root",
                 (unsigned long long)T->seed, st.live_bytes, st.live_blocks);
    cr_assert_eq(st.live_blocks, 0, "seed %llu", (unsigned long long)T->seed);
    cr_assert_eq(T->trace_bad, 0);
    cr_assert(T->trace_calls > 0, "the trace callback was never called");
    return st;
}

/* The same on a heap that scans the stack: every edge was cut, so a stale
 * stack word retains one object at most (and what it reaches alone). */
static void torture_expect_little_left(torture_t *T)
{
    torture_drop_all(T);
    gc_scrub_stack();
    loam_gc_collect(T->h);
    loam_stats_t st = gc_stats(T->h);
    cr_assert_leq(st.live_blocks, 16, "seed %llu: %zu blocks (%zu bytes) survive with no roots and no edges",
                  (unsigned long long)T->seed, st.live_blocks, st.live_bytes);
    cr_assert_eq(T->trace_bad, 0);
}

Test(gc_torture, exact_no_stack_scan, .timeout = 600)
{
    static torture_t T;
    torture_exact(&T, 0, "gc_torture/exact_no_stack_scan");
    loam_stats_t mid = gc_stats(T.h);
    loam_stats_t st = torture_expect_empty(&T);
    cr_assert_geq(T.roots_calls, T.explicit_collections, "the roots callback was not called at each collection");
    cr_assert(st.gc_collections > mid.gc_collections);
    cr_assert(st.gc_bytes_swept > 0);
    cr_assert_geq(st.gc_collections, T.explicit_collections + 1);
    fprintf(stderr, "gc_torture/exact_no_stack_scan: %zu collections (%zu explicit), %zu objects made\n",
            st.gc_collections, T.explicit_collections + 1, (size_t)T.next_serial);
    torture_teardown(&T);
}

/* The same on several marking threads (more than this machine's CPUs, so
 * helpers always exist): every reachable object must still be found. */
Test(gc_torture, parallel_marking, .timeout = 600)
{
    static torture_t T;
    cr_assert_eq(loam_option_set("gc_markers", 4), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    torture_exact(&T, LOAM_PARALLEL_MARK, "gc_torture/parallel_marking");
    torture_expect_empty(&T);
    torture_teardown(&T);
}

/* LOAM_GENERATIONAL: the automatic collections during growth and mutation are
 * mostly minor (old objects keep their marks; only the barrier's cards lead
 * to young objects hung from old ones); the explicit ones are major and must
 * still find exactly the reachable objects, their contents intact. */
Test(gc_torture, generational, .timeout = 600)
{
    static torture_t T;
    torture_exact(&T, LOAM_GENERATIONAL, "gc_torture/generational");
    loam_stats_t mid = gc_stats(T.h);
    cr_assert_gt(mid.gc_minor_collections, 0, "seed %llu: no minor collection in %zu",
                 (unsigned long long)T.seed, mid.gc_collections);
    loam_stats_t st = torture_expect_empty(&T);
    fprintf(stderr, "gc_torture/generational: %zu collections, %zu minor\n", st.gc_collections,
            st.gc_minor_collections);
    torture_teardown(&T);
}

/* Generational with marking threads and the stack scanned. */
Test(gc_torture, generational_parallel_stack_scanning, .timeout = 600)
{
    static torture_t T;
    torture_collect_often();
    cr_assert_eq(loam_option_set("gc_markers", 4), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    torture_setup(&T, LOAM_GENERATIONAL | LOAM_PARALLEL_MARK, "gc_torture/generational_parallel_stack_scanning");
    torture_rounds(&T);
    cr_assert_gt(gc_stats(T.h).gc_minor_collections, 0);
    torture_expect_little_left(&T);
    torture_teardown(&T);
}

/* LOAM_ALIGN_8: most small objects in blocks of 24, 40 and 56 bytes, whose
 * mark bits are a granule apart or two (gc.h); conservative edges and root
 * words point inside them. Exact accounting, then generational with the
 * stack scanned (interior pointers from the stack). */
Test(gc_torture, align_8_exact, .timeout = 600)
{
    static torture_t T;
    torture_exact(&T, LOAM_ALIGN_8, "gc_torture/align_8_exact");
    torture_expect_empty(&T);
    torture_teardown(&T);
}

Test(gc_torture, align_8_generational, .timeout = 600)
{
    static torture_t T;
    torture_exact(&T, LOAM_ALIGN_8 | LOAM_GENERATIONAL, "gc_torture/align_8_generational");
    cr_assert_gt(gc_stats(T.h).gc_minor_collections, 0);
    torture_expect_empty(&T);
    torture_teardown(&T);
}

Test(gc_torture, align_8_generational_stack_scanning, .timeout = 600)
{
    static torture_t T;
    torture_collect_often();
    torture_setup(&T, LOAM_ALIGN_8 | LOAM_GENERATIONAL, "gc_torture/align_8_generational_stack_scanning");
    torture_rounds(&T);
    cr_assert_gt(gc_stats(T.h).gc_minor_collections, 0);
    torture_expect_little_left(&T);
    torture_teardown(&T);
}

Test(gc_torture, stack_scanning_heap, .timeout = 600)
{
    static torture_t T;
    torture_setup(&T, 0, "gc_torture/stack_scanning_heap");
    torture_rounds(&T);
    torture_expect_little_left(&T);
    cr_assert_geq(T.roots_calls, T.explicit_collections);
    torture_teardown(&T);
}
