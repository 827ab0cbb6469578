/* tests/test_gc_threads.c — the collector with several threads.
 *
 *  - shared structure: four threads allocate objects of all three kinds,
 *    link them into a shared, rooted table (root slots and a root range)
 *    under a mutex (bracketed by loam_enter_blocking/loam_leave_blocking),
 *    verify random entries and what they reach, while two of them call
 *    loam_gc_collect now and then and automatic collections happen. Fresh
 *    objects are held only on the threads' stacks (stack-scanning heap), or
 *    in per-thread root slots registered from each thread (LOAM_NO_STACK_SCAN
 *    heap: then live blocks are exact and return to zero at the end).
 *    Seeded (LOAM_TEST_SEED, printed), LOAM_TEST_SCALE multiplies the work;
 *  - a thread waiting in a blocking section keeps what its stack references;
 *  - threads that exit without loam_thread_detach do not stall collections;
 *  - two heaps collecting independently in two threads: a collection of one
 *    heap does not wait for a thread attached only to the other, and each
 *    heap counts only its own collections;
 *  - an allocation from a heap inside its blocking bracket is a fault, also
 *    where the thread's cache would have served it.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc_util.h"

#define TNODE_TAG 0x7A0DE7A0000000D1ull
#define TABLE     256                  /* 0..127: loam_root_add slots, 128..255: a root range */
#define MAX_DEPTH 8
#define NTHREADS  4

typedef struct tnode {
    uintptr_t     tag;
    struct tnode *link;                /* an older node, or NULL */
    void         *atom;                /* ATOMIC payload, pattern(serial) */
    void         *cons;                /* CONSERVATIVE: [0] interior pointer to atom2, [1] serial, pattern */
    uint64_t      serial;
    uint32_t      atom_size, depth;
} tnode_t;

#define CONS_SIZE  64
#define ATOM2_SIZE 32

static void trace_tnode(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    tnode_t *n = obj;
    if (n->tag != TNODE_TAG)
        return;                        /* fresh, zero-filled */
    loam_mark(t, n->link);
    loam_mark(t, n->atom);
    loam_mark(t, n->cons);
}

static loam_heap_t *new_gc_heap(unsigned flags)
{
    loam_config_t cfg = { 0 };
    cfg.mode = LOAM_GC;
    cfg.flags = flags;
    cfg.trace = trace_tnode;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

/* Check a node and the nodes it links to; returns false on damage. */
static bool node_ok(const tnode_t *n)
{
    for (int d = 0; n; d++) {
        if (d > MAX_DEPTH + 1 || n->tag != TNODE_TAG || n->depth > MAX_DEPTH)
            return false;
        if (gc_check(n->atom, 0, n->atom_size, n->serial) != (size_t)-1)
            return false;
        const uintptr_t *c = n->cons;
        if (c[1] != n->serial || gc_check(c, 16, CONS_SIZE, n->serial ^ 1) != (size_t)-1)
            return false;
        if (gc_check((void *)(c[0] - 5), 0, ATOM2_SIZE, n->serial ^ 2) != (size_t)-1)
            return false;
        if (n->link && n->link->depth + 1 != n->depth)
            return false;
        n = n->link;
    }
    return true;
}

/* ---- the shared table -------------------------------------------------------------------- */

typedef struct {
    loam_heap_t    *h;
    bool            exact;             /* LOAM_NO_STACK_SCAN: fresh objects in per-thread root slots */
    uint64_t        seed;
    size_t          iters;
    pthread_mutex_t lock;
    atomic_size_t   collects, verified, damaged;
    uintptr_t      *range;             /* table entries 128..255 (glibc memory) */
} shared_t;

static void *table_slots[TABLE / 2];

static void **table_entry(shared_t *S, size_t i)
{
    return i < TABLE / 2 ? &table_slots[i] : (void **)&S->range[i - TABLE / 2];
}

typedef struct {
    shared_t *S;
    int       index;
} worker_arg_t;

static void lock_shared(shared_t *S)
{
    loam_enter_blocking(S->h);
    pthread_mutex_lock(&S->lock);
    loam_leave_blocking(S->h);
}

static GC_NOINLINE void worker_body(shared_t *S, int index, void *volatile *fresh)
{
    gc_rng_t rng = { S->seed + (uint64_t)index * 0x1000193u };
    for (size_t it = 0; it < S->iters; it++) {
        uint64_t serial = ((uint64_t)(index + 1) << 48) | (it * 0x9E3779B1u);
        size_t asz = gc_rng_below(&rng, 400) == 0 ? 150 * KiB : 16 + gc_rng_below(&rng, 2000);
        /* each fresh object sits only in fresh[] until linked: on the stack
         * (stack-scanning heap) or in this thread's registered root slots */
        fresh[0] = loam_gc_alloc(S->h, asz, LOAM_ATOMIC);
        cr_assert_not_null(fresh[0]);
        gc_fill(fresh[0], 0, asz, serial);
        fresh[1] = loam_gc_alloc(S->h, ATOM2_SIZE, LOAM_ATOMIC);
        cr_assert_not_null(fresh[1]);
        gc_fill(fresh[1], 0, ATOM2_SIZE, serial ^ 2);
        fresh[2] = loam_gc_alloc(S->h, CONS_SIZE, LOAM_CONSERVATIVE);
        cr_assert_not_null(fresh[2]);
        uintptr_t *c = fresh[2];
        c[0] = (uintptr_t)fresh[1] + 5;
        c[1] = serial;
        gc_fill(c, 16, CONS_SIZE, serial ^ 1);
        fresh[1] = NULL;                                   /* now reached only through cons */
        fresh[3] = loam_gc_alloc(S->h, sizeof(tnode_t), LOAM_TRACED);
        cr_assert_not_null(fresh[3]);
        tnode_t *n = fresh[3];
        n->atom = fresh[0];
        n->cons = fresh[2];
        n->atom_size = (uint32_t)asz;
        n->serial = serial;
        n->tag = TNODE_TAG;
        fresh[0] = fresh[2] = NULL;                        /* reached through the node */
        if (!node_ok(n))
            atomic_fetch_add(&S->damaged, 1);

        lock_shared(S);
        size_t slot = gc_rng_below(&rng, TABLE);
        tnode_t *other = *table_entry(S, gc_rng_below(&rng, TABLE));
        if (other && other->depth < MAX_DEPTH && gc_rng_below(&rng, 2)) {
            n->link = other;
            loam_write_barrier(&n->link);    /* n may be old: a collection ran while this waited */
            n->depth = other->depth + 1;
        }
        *table_entry(S, slot) = n;
        fresh[3] = NULL;
        for (int k = 0; k < 2; k++) {
            tnode_t *v = *table_entry(S, gc_rng_below(&rng, TABLE));
            if (v) {
                atomic_fetch_add(&S->verified, 1);
                if (!node_ok(v))
                    atomic_fetch_add(&S->damaged, 1);
            }
        }
        pthread_mutex_unlock(&S->lock);

        if (index < 2 && it % 250 == 249) {
            loam_gc_collect(S->h);
            atomic_fetch_add(&S->collects, 1);
        } else if (it % 64 == 0) {
            loam_safepoint(S->h);
        }
    }
}

static void *worker(void *p)
{
    worker_arg_t *a = p;
    shared_t *S = a->S;
    void *volatile fresh[4] = { 0 };
    if (S->exact)
        for (int i = 0; i < 4; i++)
            loam_root_add(S->h, (void **)&fresh[i]);
    worker_body(S, a->index, fresh);
    if (S->exact)
        for (int i = 0; i < 4; i++)
            loam_root_remove(S->h, (void **)&fresh[i]);
    loam_thread_detach(S->h);
    return NULL;
}

static void shared_structure(unsigned flags, const char *name)
{
    static shared_t S;
    memset(&S, 0, sizeof S);
    S.seed = gc_test_seed(name);
    S.exact = (flags & LOAM_NO_STACK_SCAN) != 0;
    S.iters = 20000 * gc_test_scale() / GC_SAN_DIVISOR;
    S.h = new_gc_heap(flags);
    pthread_mutex_init(&S.lock, NULL);
    S.range = calloc(TABLE / 2, sizeof *S.range);
    cr_assert_not_null(S.range);
    memset(table_slots, 0, sizeof table_slots);
    for (int i = 0; i < TABLE / 2; i++)
        loam_root_add(S.h, &table_slots[i]);
    loam_root_add_range(S.h, S.range, S.range + TABLE / 2);

    loam_thread_attach(S.h);           /* main takes part: it joins while blocking */
    pthread_t th[NTHREADS];
    worker_arg_t args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (worker_arg_t){ &S, i };
        cr_assert_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    loam_enter_blocking(S.h);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    loam_leave_blocking(S.h);

    cr_assert_eq(atomic_load(&S.damaged), 0, "seed %llu: %zu damaged objects seen by the threads",
                 (unsigned long long)S.seed, atomic_load(&S.damaged));
    cr_assert(atomic_load(&S.verified) > 0);
    loam_gc_collect(S.h);
    size_t entries = 0;
    for (size_t i = 0; i < TABLE; i++) {
        tnode_t *v = *table_entry(&S, i);
        if (v) {
            entries++;
            cr_assert(node_ok(v), "seed %llu: table entry %zu damaged after the threads ended",
                      (unsigned long long)S.seed, i);
        }
    }
    cr_assert(entries > TABLE / 2);
    loam_stats_t st = gc_stats(S.h);
    /* Concurrent loam_gc_collect calls may share one collection, but each
     * thread's calls follow one another: at least one collection apiece. */
    cr_assert_geq(st.gc_collections, atomic_load(&S.collects) / 2 + 1);
    fprintf(stderr, "%s: %zu collections (%zu minor, %zu explicit by the threads), %zu verifications\n", name,
            st.gc_collections, st.gc_minor_collections, atomic_load(&S.collects), atomic_load(&S.verified));
    if (flags & LOAM_GENERATIONAL)
        cr_assert_gt(st.gc_minor_collections, 0, "seed %llu: no minor collection", (unsigned long long)S.seed);

    for (size_t i = 0; i < TABLE; i++)
        *table_entry(&S, i) = NULL;
    gc_scrub_stack();
    loam_gc_collect(S.h);
    st = gc_stats(S.h);
    if (S.exact)
        cr_assert_eq(st.live_blocks, 0, "seed %llu: %zu blocks live with an empty table",
                     (unsigned long long)S.seed, st.live_blocks);
    else
        cr_assert_leq(st.live_blocks, 120, "seed %llu: %zu blocks live with an empty table",
                      (unsigned long long)S.seed, st.live_blocks);
    loam_thread_detach(S.h);
    for (int i = 0; i < TABLE / 2; i++)
        loam_root_remove(S.h, &table_slots[i]);
    loam_root_remove_range(S.h, S.range);
    free(S.range);
    loam_heap_destroy(S.h);
}

Test(gc_threads, shared_structure_stack_scanning, .timeout = 600)
{
    shared_structure(0, "gc_threads/shared_structure_stack_scanning");
}

Test(gc_threads, shared_structure_root_slots, .timeout = 600)
{
    shared_structure(LOAM_NO_STACK_SCAN, "gc_threads/shared_structure_root_slots");
}

/* The same with marking threads (more than this machine's CPUs). */
Test(gc_threads, shared_structure_parallel_marking, .timeout = 600)
{
    cr_assert_eq(loam_option_set("gc_markers", 4), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    shared_structure(LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK, "gc_threads/shared_structure_parallel_marking");
}

/* LOAM_GENERATIONAL: the automatic collections are mostly minor; the nodes
 * that threads link to older ones go through the write barrier. */
Test(gc_threads, shared_structure_generational, .timeout = 600)
{
    cr_assert_eq(loam_option_set("gc_young_min", 128 * 1024), 0);
    shared_structure(LOAM_NO_STACK_SCAN | LOAM_GENERATIONAL | LOAM_PARALLEL_MARK,
                     "gc_threads/shared_structure_generational");
}

/* ---- a blocked thread's stack ------------------------------------------------------------------ */

typedef struct {
    loam_heap_t    *h;
    pthread_mutex_t m;
    pthread_cond_t  c;
    int             stage;             /* 1: blocked and waiting, 2: go on */
    bool            ok;
} blocked_t;

static GC_NOINLINE bool hold_and_wait(blocked_t *B)
{
    tnode_t *volatile keep[8];
    for (int i = 0; i < 8; i++) {
        tnode_t *n = loam_gc_alloc(B->h, sizeof(tnode_t), LOAM_TRACED);
        n->atom = loam_gc_alloc(B->h, 100 + (size_t)i, LOAM_ATOMIC);
        gc_fill(n->atom, 0, 100 + (size_t)i, 70 + (uint64_t)i);
        n->cons = loam_gc_alloc(B->h, CONS_SIZE, LOAM_CONSERVATIVE);
        uintptr_t *c = n->cons;
        void *a2 = loam_gc_alloc(B->h, ATOM2_SIZE, LOAM_ATOMIC);
        gc_fill(a2, 0, ATOM2_SIZE, (70 + (uint64_t)i) ^ 2);
        c[0] = (uintptr_t)a2 + 5;
        c[1] = 70 + (uint64_t)i;
        gc_fill(c, 16, CONS_SIZE, (70 + (uint64_t)i) ^ 1);
        n->atom_size = 100 + (uint32_t)i;
        n->serial = 70 + (uint64_t)i;
        n->tag = TNODE_TAG;
        keep[i] = n;
    }
    loam_enter_blocking(B->h);
    pthread_mutex_lock(&B->m);
    B->stage = 1;
    pthread_cond_broadcast(&B->c);
    while (B->stage != 2)
        pthread_cond_wait(&B->c, &B->m);
    pthread_mutex_unlock(&B->m);
    loam_leave_blocking(B->h);
    bool ok = true;
    for (int i = 0; i < 8; i++)
        ok = ok && node_ok(keep[i]);
    return ok;
}

static void *blocked_thread(void *p)
{
    blocked_t *B = p;
    B->ok = hold_and_wait(B);
    loam_thread_detach(B->h);
    return NULL;
}

Test(gc_threads, blocked_thread_stack_is_scanned, .timeout = 120)
{
    static blocked_t B;
    memset(&B, 0, sizeof B);
    B.h = new_gc_heap(0);
    pthread_mutex_init(&B.m, NULL);
    pthread_cond_init(&B.c, NULL);
    loam_thread_attach(B.h);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, blocked_thread, &B), 0);
    loam_enter_blocking(B.h);
    pthread_mutex_lock(&B.m);
    while (B.stage != 1)
        pthread_cond_wait(&B.c, &B.m);
    pthread_mutex_unlock(&B.m);
    loam_leave_blocking(B.h);
    /* collect and churn while the other thread waits with its objects on its stack */
    for (int r = 0; r < 5; r++) {
        loam_gc_collect(B.h);
        for (int i = 0; i < 20000; i++) {
            void *p = loam_gc_alloc(B.h, 100 + (size_t)(i % 8), LOAM_ATOMIC);
            cr_assert_not_null(p);
            memset(p, 0xEE, 100);
        }
    }
    pthread_mutex_lock(&B.m);
    B.stage = 2;
    pthread_cond_broadcast(&B.c);
    pthread_mutex_unlock(&B.m);
    loam_enter_blocking(B.h);
    pthread_join(t, NULL);
    loam_leave_blocking(B.h);
    cr_assert(B.ok, "objects referenced only from a blocked thread's stack were freed or overwritten");
    loam_thread_detach(B.h);
    loam_heap_destroy(B.h);
}

/* ---- threads exiting attached --------------------------------------------------------------- */

static void *alloc_and_exit(void *p)
{
    loam_heap_t *h = p;
    for (int i = 0; i < 1000; i++)
        cr_assert_not_null(loam_gc_alloc(h, 64, LOAM_CONSERVATIVE));
    return NULL;                       /* no loam_thread_detach */
}

Test(gc_threads, threads_exiting_attached_do_not_stall_collections, .timeout = 60)
{
    loam_heap_t *h = new_gc_heap(LOAM_NO_STACK_SCAN);
    loam_thread_attach(h);
    for (int round = 0; round < 3; round++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            cr_assert_eq(pthread_create(&t[i], NULL, alloc_and_exit, h), 0);
        loam_enter_blocking(h);
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
        loam_leave_blocking(h);
        loam_gc_collect(h);            /* hangs if the exited threads still count as running */
        for (int i = 0; i < 100000; i++)
            cr_assert_not_null(loam_gc_alloc(h, 128, LOAM_ATOMIC));
    }
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_blocks, 0);
    loam_thread_detach(h);
    loam_heap_destroy(h);
}

/* A thread that allocates one small object and exits gives back the rest of
 * the bump range its refill counted as allocated: 2,000 of them allocate 64
 * KB in all, under the 4 MiB floor, so no collection comes. Counting each
 * range whole, they brought one every 64 threads. */
static void *alloc_one_and_exit(void *arg)
{
    cr_assert_not_null(loam_gc_alloc(arg, 32, LOAM_ATOMIC));
    return NULL;
}

Test(gc_threads, short_lived_threads_count_what_they_allocated_not_their_ranges, .timeout = 120)
{
    loam_heap_t *h = new_gc_heap(LOAM_NO_STACK_SCAN);
    cr_assert_eq(loam_heap_set_gc_pacing(h, 100, 4 * MiB), 0);
    const int n = 2000 / GC_SAN_DIVISOR;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, alloc_one_and_exit, h), 0);
        pthread_join(t, NULL);
    }
    size_t collections = gc_stats(h).gc_collections;
    cr_assert_leq(collections, 1, "%d threads allocating 32 bytes each: %zu collections", n, collections);
    loam_heap_destroy(h);
}

/* ---- two heaps, two threads ---------------------------------------------------------------- */

typedef struct cell {
    struct cell *next;
    uint64_t     value;
} cell_t;

typedef struct {
    loam_heap_t    *h;
    void           *head;              /* registered root slot */
    int             index;
    uint64_t        seed;
    size_t          rounds, explicit_collects;
    bool            ok;
} solo_t;

/* handshake: the other thread is attached to its own heap and waits without
 * a blocking bracket while this one collects its heap */
static pthread_mutex_t hs_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  hs_c = PTHREAD_COND_INITIALIZER;
static int             hs_turn;        /* 0: thread 0 collects, 1: thread 1, 2: done */
static int             hs_waiting;     /* the waiting thread is parked */
static bool            hs_other_changed;  /* a collection of one heap counted in the other */
static pthread_barrier_t solo_barrier;
static solo_t          solos[2];

static void handshake(solo_t *me)
{
    int other = 1 - me->index;
    pthread_mutex_lock(&hs_m);
    if (hs_turn == me->index) {
        while (!hs_waiting)
            pthread_cond_wait(&hs_c, &hs_m);
        pthread_mutex_unlock(&hs_m);
        /* the other thread is parked, attached to its heap, not blocking-bracketed */
        size_t before = gc_stats(solos[other].h).gc_collections;
        for (int i = 0; i < 3; i++) {
            loam_gc_collect(me->h);
            me->explicit_collects++;
        }
        if (gc_stats(solos[other].h).gc_collections != before)
            hs_other_changed = true;
        pthread_mutex_lock(&hs_m);
        hs_turn = hs_turn == 0 ? 1 : 2;
        hs_waiting = 0;
        pthread_cond_broadcast(&hs_c);
        pthread_mutex_unlock(&hs_m);
        return;
    }
    hs_waiting = 1;
    pthread_cond_broadcast(&hs_c);
    int t = hs_turn;
    while (hs_turn == t)
        pthread_cond_wait(&hs_c, &hs_m);
    pthread_mutex_unlock(&hs_m);
}

static void *solo_thread(void *p)
{
    solo_t *me = p;
    loam_config_t cfg = { 0 };
    cfg.mode = LOAM_GC;
    /* Both heaps want the marking threads: one collection gets them, the
     * other marks alone meanwhile; neither waits for the other. */
    cfg.flags = LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK;
    me->h = loam_heap_new(&cfg);
    me->ok = me->h != NULL;
    if (!me->ok)
        return NULL;
    loam_root_add(me->h, &me->head);
    gc_rng_t rng = { me->seed + (uint64_t)me->index };
    size_t len = 0;
    /* first attach (by allocating), then the handshakes */
    me->head = loam_gc_alloc(me->h, sizeof(cell_t), LOAM_CONSERVATIVE);
    ((cell_t *)me->head)->value = 0;
    len = 1;
    pthread_barrier_wait(&solo_barrier);
    handshake(me);
    handshake(me);
    for (size_t r = 0; r < me->rounds && me->ok; r++) {
        size_t add = 1000 + gc_rng_below(&rng, 20000);
        for (size_t i = 0; i < add; i++) {
            cell_t *c = loam_gc_alloc(me->h, sizeof(cell_t), LOAM_CONSERVATIVE);
            if (!c) {
                me->ok = false;
                break;
            }
            c->next = me->head;
            c->value = len++;
            me->head = c;
            void *g = loam_gc_alloc(me->h, 48, LOAM_ATOMIC);   /* garbage */
            memset(g, 0xAB, 48);
        }
        if (r % 3 == 0) {
            loam_gc_collect(me->h);
            me->explicit_collects++;
        }
        /* verify, then drop the older half */
        size_t k = len;
        cell_t *c = me->head, *mid = NULL;
        for (; c; c = c->next) {
            k--;
            if (c->value != k)
                me->ok = false;
            if (k == len / 2)
                mid = c;
        }
        if (k != 0)
            me->ok = false;
        if (mid && gc_rng_below(&rng, 2)) {
            /* keep values len/2 .. len-1: renumber by cutting after mid */
            mid->next = NULL;
            size_t shift = len / 2;
            for (c = me->head; c; c = c->next)
                c->value -= shift;
            len -= shift;
        }
    }
    loam_gc_collect(me->h);
    me->explicit_collects++;
    loam_stats_t st = gc_stats(me->h);
    if (st.live_blocks != len || st.gc_collections < me->explicit_collects)
        me->ok = false;
    me->head = NULL;
    loam_gc_collect(me->h);
    if (gc_stats(me->h).live_blocks != 0)
        me->ok = false;
    loam_root_remove(me->h, &me->head);
    loam_thread_detach(me->h);
    return NULL;
}

Test(gc_threads, two_heaps_collect_independently, .timeout = 300)
{
    /* helpers even on one CPU, and on small heaps */
    cr_assert_eq(loam_option_set("gc_markers", 3), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    uint64_t seed = gc_test_seed("gc_threads/two_heaps_collect_independently");
    pthread_barrier_init(&solo_barrier, NULL, 2);
    hs_turn = 0;
    hs_waiting = 0;
    hs_other_changed = false;
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        solos[i] = (solo_t){ .index = i, .seed = seed, .rounds = 30 * gc_test_scale() / GC_SAN_DIVISOR };
        cr_assert_eq(pthread_create(&t[i], NULL, solo_thread, &solos[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(hs_turn, 2, "the handshakes did not complete");
    cr_assert(!hs_other_changed, "collecting one heap changed the other's collection count");
    for (int i = 0; i < 2; i++) {
        cr_assert(solos[i].ok, "seed %llu: thread %d found its list damaged or its counts wrong",
                  (unsigned long long)seed, i);
        loam_heap_destroy(solos[i].h);
    }
}

/* ---- finalizers and weak references from several threads ------------------------------------ */

#define FIN_PER_THREAD 40000
static atomic_uchar fin_seen[NTHREADS * FIN_PER_THREAD];
static atomic_size_t fin_twice, fin_total;

static void mt_fin(void *obj, void *data)
{
    (void)obj;
    size_t i = (size_t)(uintptr_t)data;
    if (atomic_fetch_add(&fin_seen[i], 1) != 0)
        atomic_fetch_add(&fin_twice, 1);
    atomic_fetch_add(&fin_total, 1);
}

typedef struct {
    loam_heap_t  *h;
    int           index;
    size_t        n;
    atomic_size_t *weak_bad;
} mtfin_arg_t;

static void *mtfin_thread(void *p)
{
    mtfin_arg_t *a = p;
    void *volatile kept[16] = { 0 };
    loam_weak_t *w[16] = { 0 };
    for (int k = 0; k < 16; k++)
        loam_root_add(a->h, (void **)&kept[k]);
    for (size_t i = 0; i < a->n; i++) {
        size_t id = (size_t)a->index * FIN_PER_THREAD + i;
        void *o = loam_gc_alloc(a->h, 32 + (i % 5) * 16, i % 2 ? LOAM_ATOMIC : LOAM_CONSERVATIVE);
        cr_assert_not_null(o);
        cr_assert_eq(loam_finalizer_set(a->h, o, mt_fin, (void *)(uintptr_t)id), 0);
        if (i % 1000 == 0) {
            /* hold one for a while with a weak reference to it; it must stay */
            int k = (int)(i / 1000 % 16);
            if (w[k]) {
                if (loam_weak_get(w[k]) != kept[k])
                    atomic_fetch_add(a->weak_bad, 1);
                loam_weak_free(w[k]);
            }
            kept[k] = o;
            w[k] = loam_weak_new(a->h, o);
        }
        if (a->index == 0 && i % 5000 == 4999)
            loam_gc_collect(a->h);
    }
    for (int k = 0; k < 16; k++) {
        if (w[k] && loam_weak_get(w[k]) != kept[k])
            atomic_fetch_add(a->weak_bad, 1);
        loam_weak_free(w[k]);
        loam_root_remove(a->h, (void **)&kept[k]);
    }
    loam_thread_detach(a->h);
    return NULL;
}

Test(gc_threads, finalizers_and_weak_refs_from_threads, .timeout = 300)
{
    /* Finalizable objects are kept alive by a second marking: in parallel too. */
    cr_assert_eq(loam_option_set("gc_markers", 3), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    loam_heap_t *h = new_gc_heap(LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK);
    size_t n = FIN_PER_THREAD / GC_SAN_DIVISOR;
    for (size_t i = 0; i < NTHREADS * FIN_PER_THREAD; i++)
        atomic_store(&fin_seen[i], 0);
    atomic_store(&fin_twice, 0);
    atomic_store(&fin_total, 0);
    static atomic_size_t weak_bad;
    atomic_store(&weak_bad, 0);
    pthread_t t[NTHREADS];
    mtfin_arg_t args[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        args[i] = (mtfin_arg_t){ h, i, n, &weak_bad };
        cr_assert_eq(pthread_create(&t[i], NULL, mtfin_thread, &args[i]), 0);
    }
    loam_thread_attach(h);                        /* (creating the heap should not attach: see below) */
    loam_enter_blocking(h);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    loam_leave_blocking(h);
    loam_gc_collect(h);
    loam_gc_collect(h);
    cr_assert_eq(atomic_load(&weak_bad), 0, "a weak reference to a rooted object changed");
    cr_assert_eq(atomic_load(&fin_twice), 0, "%zu objects finalized twice", atomic_load(&fin_twice));
    cr_assert_eq(atomic_load(&fin_total), NTHREADS * n, "%zu of %zu finalizers ran", atomic_load(&fin_total),
                 NTHREADS * n);
    for (int th = 0; th < NTHREADS; th++)
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(atomic_load(&fin_seen[(size_t)th * FIN_PER_THREAD + i]), 1, "object %d/%zu", th, i);
    cr_assert_eq(gc_stats(h).gc_finalizers_run, NTHREADS * n);
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_blocks, 0);
    loam_thread_detach(h);
    loam_heap_destroy(h);
}

/* ---- creating a heap attaches no thread ---------------------------------------------------------- */

static void *alloc_and_collect(void *p)
{
    loam_heap_t *h = p;
    for (int i = 0; i < 100; i++)
        cr_assert_not_null(loam_gc_alloc(h, 64, LOAM_ATOMIC));
    loam_gc_collect(h);
    loam_thread_detach(h);
    return NULL;
}

/* Join with a deadline: false if the thread did not end in time. */
static bool join_within(pthread_t t, int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    return pthread_timedjoin_np(t, NULL, &ts) == 0;
}

/* "Creating a heap attaches no thread": so the creating thread may wait
 * (here: join) without a blocking bracket while another thread collects. */
Test(gc_threads, creating_a_collected_heap_attaches_no_thread, .timeout = 60)
{
    loam_heap_t *h = new_gc_heap(LOAM_NO_STACK_SCAN);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, alloc_and_collect, h), 0);
    cr_assert(join_within(t, 20), "a collection in another thread waits for the thread that created the heap "
                                  "(loam_heap_new attached it)");
    loam_heap_destroy(h);
}

/* Neither does switching a heap to collected (attaching is by allocation,
 * or explicit). */
Test(gc_threads, set_mode_attaches_no_thread, .timeout = 60)
{
    loam_config_t cfg = { 0 };
    cfg.flags = LOAM_NO_STACK_SCAN;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, alloc_and_collect, h), 0);
    cr_assert(join_within(t, 20), "a collection in another thread waits for the thread that switched the heap "
                                  "to LOAM_GC (loam_heap_set_mode attached it)");
    loam_heap_destroy(h);
}

/* ---- a manual heap switched to collected while another thread holds a cache of it ------------ */

#define SW_N 1000
typedef struct {
    loam_heap_t    *h;
    pthread_mutex_t m;
    pthread_cond_t  c;
    int             stage;            /* 1: first batch done, 2: go on, 3: second batch done */
    uintptr_t      *first;            /* SW_N blocks made while manual (odd ones freed) */
    uintptr_t      *second;           /* SW_N blocks made after the switch */
} switch_t;

static void sw_wait(switch_t *S, int stage)
{
    pthread_mutex_lock(&S->m);
    while (S->stage < stage)
        pthread_cond_wait(&S->c, &S->m);
    pthread_mutex_unlock(&S->m);
}

static void sw_set(switch_t *S, int stage)
{
    pthread_mutex_lock(&S->m);
    S->stage = stage;
    pthread_cond_broadcast(&S->c);
    pthread_mutex_unlock(&S->m);
}

static void *switch_thread(void *p)
{
    switch_t *S = p;
    for (int i = 0; i < SW_N; i++) {
        void *b = loam_malloc(S->h, 64);
        cr_assert_not_null(b);
        gc_fill(b, 0, 64, 10000 + (uint64_t)i);
        S->first[i] = (uintptr_t)b;
    }
    for (int i = 1; i < SW_N; i += 2) {      /* into this thread's cache */
        loam_free((void *)S->first[i]);
        S->first[i] = 0;
    }
    sw_set(S, 1);
    sw_wait(S, 2);                            /* the heap is collected now */
    for (int i = 0; i < SW_N; i++) {
        void *b = loam_malloc(S->h, 64);
        cr_assert_not_null(b);
        gc_fill(b, 0, 64, 20000 + (uint64_t)i);
        S->second[i] = (uintptr_t)b;         /* rooted range */
    }
    loam_thread_detach(S->h);
    sw_set(S, 3);
    return NULL;
}

Test(gc_threads, switch_to_collected_while_another_thread_caches_blocks, .timeout = 120)
{
    static switch_t S;
    memset(&S, 0, sizeof S);
    loam_config_t cfg = { 0 };
    cfg.mode = LOAM_MANUAL;
    cfg.flags = LOAM_NO_STACK_SCAN;
    S.h = loam_heap_new(&cfg);
    cr_assert_not_null(S.h);
    pthread_mutex_init(&S.m, NULL);
    pthread_cond_init(&S.c, NULL);
    S.first = calloc(SW_N, sizeof *S.first);
    S.second = calloc(SW_N, sizeof *S.second);
    uintptr_t *mine = calloc(4 * SW_N, sizeof *mine);
    cr_assert(S.first && S.second && mine);
    loam_root_add_range(S.h, S.first, S.first + SW_N);
    loam_root_add_range(S.h, S.second, S.second + SW_N);
    loam_root_add_range(S.h, mine, mine + 4 * SW_N);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, switch_thread, &S), 0);
    sw_wait(&S, 1);
    cr_assert_eq(loam_heap_set_mode(S.h, LOAM_GC), 0);
    loam_gc_collect(S.h);
    cr_assert_eq(gc_stats(S.h).live_blocks, SW_N / 2);
    for (int i = 0; i < 4 * SW_N; i++) {
        void *b = loam_gc_alloc(S.h, 64, LOAM_ATOMIC);
        cr_assert_not_null(b);
        gc_fill(b, 0, 64, 30000 + (uint64_t)i);
        mine[i] = (uintptr_t)b;
    }
    loam_gc_collect(S.h);
    sw_set(&S, 2);
    loam_enter_blocking(S.h);                 /* main is attached (it allocated) */
    sw_wait(&S, 3);
    pthread_join(t, NULL);
    loam_leave_blocking(S.h);
    loam_gc_collect(S.h);
    size_t expect = SW_N / 2 + SW_N + 4 * SW_N;
    cr_assert_eq(gc_stats(S.h).live_blocks, expect, "%zu live blocks, %zu expected", gc_stats(S.h).live_blocks,
                 expect);
    /* every block intact and distinct */
    uintptr_t *all = malloc(expect * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < SW_N; i += 2) {
        cr_assert_eq(gc_check((void *)S.first[i], 0, 64, 10000 + (uint64_t)i), (size_t)-1, "first[%d] damaged", i);
        all[k++] = S.first[i];
    }
    for (int i = 0; i < SW_N; i++) {
        cr_assert_eq(gc_check((void *)S.second[i], 0, 64, 20000 + (uint64_t)i), (size_t)-1, "second[%d] damaged", i);
        all[k++] = S.second[i];
    }
    for (int i = 0; i < 4 * SW_N; i++) {
        cr_assert_eq(gc_check((void *)mine[i], 0, 64, 30000 + (uint64_t)i), (size_t)-1, "mine[%d] damaged", i);
        all[k++] = mine[i];
    }
    for (size_t i = 1; i < k; i++)
        for (size_t j = 0; j < i; j++)
            cr_assert(all[i] != all[j], "block %p handed out twice", (void *)all[i]);
    free(all);
    loam_root_remove_range(S.h, S.first);
    loam_root_remove_range(S.h, S.second);
    loam_root_remove_range(S.h, mine);
    loam_gc_collect(S.h);
    cr_assert_eq(gc_stats(S.h).live_blocks, 0);
    loam_heap_destroy(S.h);
    free(S.first);
    free(S.second);
    free(mine);
}

/* ---- a detached thread runs freely while others collect --------------------------------------- */

static atomic_int detached_stop, detached_ready;

static void *detach_and_spin(void *p)
{
    loam_heap_t *h = p;
    void *b = loam_gc_alloc(h, 64, LOAM_ATOMIC);   /* attaches */
    cr_assert_not_null(b);
    loam_thread_detach(h);
    atomic_store(&detached_ready, 1);
    while (!atomic_load(&detached_stop))
        ;                                           /* no safepoint, no blocking bracket */
    void *c = loam_gc_alloc(h, 64, LOAM_ATOMIC);   /* attaches again */
    cr_assert_not_null(c);
    loam_thread_detach(h);
    return NULL;
}

Test(gc_threads, detached_thread_does_not_stall_collections, .timeout = 60)
{
    loam_heap_t *h = new_gc_heap(LOAM_NO_STACK_SCAN);
    atomic_store(&detached_stop, 0);
    atomic_store(&detached_ready, 0);
    loam_thread_attach(h);                         /* main brackets its join below */
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, detach_and_spin, h), 0);
    loam_enter_blocking(h);
    while (!atomic_load(&detached_ready))          /* it attached, allocated, detached */
        sched_yield();
    loam_leave_blocking(h);
    for (int i = 0; i < 3; i++)
        loam_gc_collect(h);
    for (int i = 0; i < 50000; i++)
        cr_assert_not_null(loam_gc_alloc(h, 256, LOAM_ATOMIC));
    atomic_store(&detached_stop, 1);
    loam_enter_blocking(h);
    pthread_join(t, NULL);
    loam_leave_blocking(h);
    loam_gc_collect(h);
    cr_assert_eq(gc_stats(h).live_blocks, 0);
    loam_heap_destroy(h);
}

/* ---- threads attached to several heaps ----------------------------------------------------
 * A thread waiting inside loam for one heap (collecting it, or parked for
 * it) counts as stopped for every other heap it is attached to, and an
 * allocation slow path of any heap is a safepoint of all of them
 * (gc/threads.c). Without the first, two threads each collecting a heap
 * the other is attached to wait for each other for ever; without the
 * second, a collection waits for ever for a thread that went on to other
 * heaps. */

static loam_heap_t *cross_heaps[2];

typedef struct cross_node {
    struct cross_node *next;
    uint64_t           serial;
} cross_node_t;

static void trace_cross(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    loam_mark(t, ((cross_node_t *)obj)->next);
}

static loam_heap_t *new_cross_heap(void)
{
    loam_config_t cfg = { .mode = LOAM_GC, .trace = trace_cross, .gc_min_bytes = 64 * 1024 };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

/* Each thread attaches to both heaps, then builds and drops lists on its
 * own: its collections and the other's overlap again and again. */
static void *collect_own_heap(void *arg)
{
    long own = (long)arg;
    for (int i = 0; i < 2; i++)
        cr_assert_not_null(loam_gc_alloc(cross_heaps[i], 32, LOAM_ATOMIC));
    bool ok = true;
    size_t rounds = 300 * gc_test_scale() / GC_SAN_DIVISOR;
    for (size_t r = 0; r < rounds && ok; r++) {
        cross_node_t *volatile head = NULL;        /* the list lives on this stack only */
        for (uint64_t k = 0; k < 500; k++) {
            cross_node_t *n = loam_gc_alloc(cross_heaps[own], sizeof *n, LOAM_TRACED);
            cr_assert_not_null(n);
            n->next = head;
            n->serial = k;
            head = n;
        }
        uint64_t expect = 500;
        for (cross_node_t *n = head; n; n = n->next)
            ok = ok && n->serial == --expect;
        ok = ok && expect == 0;
    }
    return (void *)(uintptr_t)ok;
}

Test(gc_threads, threads_attached_to_two_heaps_collect_each_its_own, .timeout = 120)
{
    for (int i = 0; i < 2; i++)
        cross_heaps[i] = new_cross_heap();
    pthread_t t[2];
    for (long i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, collect_own_heap, (void *)i), 0);
    for (int i = 0; i < 2; i++) {
        void *ok = NULL;
        pthread_join(t[i], &ok);
        cr_assert(ok, "thread %d found its list damaged", i);
        cr_assert_geq(gc_stats(cross_heaps[i]).gc_collections, 4, "heap %d hardly collected", i);
    }
    for (int i = 0; i < 2; i++)
        loam_heap_destroy(cross_heaps[i]);
}

/* A worker that allocated once from heap 0 (attaching to it), keeps that
 * object on its stack only, and goes on allocating from another heap alone:
 * a manual one (in batches, so that it refills) or a collected one. Heap 0's
 * collections must neither wait for it for ever nor lose its object. */
typedef struct {
    loam_heap_t *first, *elsewhere;
    bool         manual;
    atomic_int   stop, ready;
    bool         ok;
} away_t;

static void *work_elsewhere(void *arg)
{
    away_t *a = arg;
    uint64_t *volatile mine = loam_gc_alloc(a->first, 256, LOAM_ATOMIC);
    cr_assert_not_null(mine);
    gc_fill(mine, 0, 256, 0xA11E);
    atomic_store(&a->ready, 1);
    /* More blocks of one size than a thread cache holds: refills. */
    enum { BATCH = 4096 };
    void **batch = malloc(BATCH * sizeof *batch);
    cr_assert_not_null(batch);
    while (!atomic_load(&a->stop)) {
        for (int i = 0; i < BATCH; i++) {
            batch[i] = a->manual ? loam_malloc(a->elsewhere, 64) : loam_gc_alloc(a->elsewhere, 64, LOAM_ATOMIC);
            cr_assert_not_null(batch[i]);
        }
        if (a->manual)
            for (int i = 0; i < BATCH; i++)
                loam_free(batch[i]);
    }
    free(batch);
    a->ok = gc_check(mine, 0, 256, 0xA11E) == (size_t)-1;
    return NULL;
}

static void stops_while_away(bool manual)
{
    away_t a = { .first = new_cross_heap(), .manual = manual };
    if (manual) {
        a.elsewhere = loam_heap_new(NULL);
    } else {
        a.elsewhere = new_cross_heap();
    }
    cr_assert_not_null(a.elsewhere);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, work_elsewhere, &a), 0);
    while (!atomic_load(&a.ready))
        sched_yield();
    /* Each collection of heap 0 waits for the worker to stop; meanwhile
     * this thread's garbage reuses whatever heap 0 found dead. */
    for (int c = 0; c < 20; c++) {
        loam_gc_collect(a.first);
        for (int i = 0; i < 2000; i++) {
            uint64_t *g = loam_gc_alloc(a.first, 256, LOAM_ATOMIC);
            cr_assert_not_null(g);
            gc_fill(g, 0, 256, 0xDEAD);
        }
    }
    cr_assert_geq(gc_stats(a.first).gc_collections, 20);
    atomic_store(&a.stop, 1);
    pthread_join(t, NULL);
    cr_assert(a.ok, "the worker's block, on its stack only, was reclaimed while it was away");
    loam_heap_destroy(a.first);
    loam_heap_destroy(a.elsewhere);
}

Test(gc_threads, a_thread_away_in_a_manual_heap_stops_for_a_collected_one, .timeout = 120)
{
    stops_while_away(true);
}

Test(gc_threads, a_thread_away_in_another_collected_heap_stops_for_the_first, .timeout = 120)
{
    stops_while_away(false);
}

/* A thread that detached and allocates again is attached again by that
 * allocation: its cache of the heap went with the detach, so the
 * allocation takes the slow path. Kept, the cache let it allocate
 * unattached, and another thread's collection freed what only its stack
 * held (all 64 blocks, handed out again at once). */
static loam_heap_t *redetach_heap;

static void *collect_redetach(void *arg)
{
    (void)arg;
    loam_gc_collect(redetach_heap);
    return NULL;
}

Test(gc_threads, allocating_after_a_detach_attaches_again, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .gc_min_bytes = 64 * MiB };
    redetach_heap = loam_heap_new(&cfg);
    cr_assert_not_null(redetach_heap);
    cr_assert_not_null(loam_gc_alloc(redetach_heap, 32, LOAM_CONSERVATIVE));   /* attaches, makes a cache */
    loam_thread_detach(redetach_heap);
    enum { N = 64 };
    uint64_t *volatile held[N];                    /* on this stack only */
    for (int i = 0; i < N; i++) {
        held[i] = loam_gc_alloc(redetach_heap, 32, LOAM_CONSERVATIVE);
        cr_assert_not_null(held[i]);
        gc_fill(held[i], 0, 32, 0xDE7AC4 + (uint64_t)i);
    }
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, collect_redetach, NULL), 0);
    loam_enter_blocking(redetach_heap);            /* attached again: the join is a wait */
    pthread_join(t, NULL);
    loam_leave_blocking(redetach_heap);
    for (int k = 0; k < 4 * N; k++) {
        uint64_t *fresh = loam_gc_alloc(redetach_heap, 32, LOAM_CONSERVATIVE);
        for (int i = 0; i < N; i++)
            cr_assert_neq(fresh, held[i], "block %d, held on the stack, was handed out again", i);
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(gc_check(held[i], 0, 32, 0xDE7AC4 + (uint64_t)i), (size_t)-1, "block %d was reclaimed", i);
    cr_assert_geq(gc_stats(redetach_heap).gc_collections, 1);
    loam_heap_destroy(redetach_heap);
}

/* A thread that exits while another thread destroys a heap it is attached
 * to (it used it, and is done with it): its exit detaches it from the heap
 * while the destruction tears the heap down. Before, the exit read the
 * attachment's heap, then detached from it with no lock, and the
 * destruction freed the heap's collector state under it (a lock taken in
 * freed memory: hangs and crashes). The thread is attached to a second
 * heap too, which outlives every round and collects at the end. */
static loam_heap_t *exit_race_heap, *exit_race_keep;
static atomic_int exit_race_ready;

static void *alloc_then_exit(void *arg)
{
    (void)arg;
    cr_assert_not_null(loam_gc_alloc(exit_race_keep, 48, LOAM_ATOMIC));
    for (int i = 0; i < 64; i++)                   /* a cache of the heap to drop at exit */
        cr_assert_not_null(loam_gc_alloc(exit_race_heap, 48, LOAM_CONSERVATIVE));
    atomic_store(&exit_race_ready, 1);
    return NULL;                                   /* exits attached to both heaps */
}

Test(gc_threads, a_thread_exiting_while_its_heap_is_destroyed, .timeout = 300)
{
    exit_race_keep = new_gc_heap(0);
    int rounds = 2000 / GC_SAN_DIVISOR;
    for (int i = 0; i < rounds; i++) {
        exit_race_heap = new_gc_heap(i % 2 ? LOAM_GENERATIONAL : 0);
        atomic_store(&exit_race_ready, 0);
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, alloc_then_exit, NULL), 0);
        while (!atomic_load(&exit_race_ready))
            sched_yield();
        loam_heap_destroy(exit_race_heap);         /* while the thread exits */
        cr_assert(join_within(t, 30), "round %d: the exiting thread hangs", i);
    }
    loam_gc_collect(exit_race_keep);               /* no thread left to wait for */
    cr_assert_geq(gc_stats(exit_race_keep).gc_collections, 1);
    loam_heap_destroy(exit_race_keep);
}

/* Options set while other threads allocate, collect and purge: every
 * value is read by those threads as it is stored (under ThreadSanitizer,
 * a plain read of mmap_threshold on the malloc path, of gc_growth or
 * gc_markers in a collection, raced loam_option_set). */
static atomic_int options_race_done;
static const char *const race_keys[] = { "mmap_threshold", "gc_growth", "gc_markers", "huge_pages",
                                          "tcache_budget", "decay_ms", "retain_max", "gc_parallel_min" };
#define RACE_KEYS (sizeof race_keys / sizeof race_keys[0])

static void *set_options_meanwhile(void *arg)
{
    (void)arg;
    static const long values[RACE_KEYS][2] = { { 65536, 131072 }, { 50, 100 }, { 1, 0 }, { 0, 1 },
                                               { 1 << 20, 32L << 20 }, { 0, 250 }, { 0, 4L << 20 },
                                               { 4096, 1 << 20 } };
    for (int i = 0; !atomic_load(&options_race_done); i++) {
        size_t k = (size_t)i % RACE_KEYS;
        long v = values[k][(i / (int)RACE_KEYS) % 2];
        cr_assert_eq(loam_option_set(race_keys[k], v), 0, "%s=%ld", race_keys[k], v);
        cr_assert_eq(loam_option_get(race_keys[k]), v);
        sched_yield();
    }
    return NULL;
}

Test(gc_threads, options_set_while_threads_allocate_and_collect, .timeout = 120)
{
    long before[RACE_KEYS];
    for (size_t k = 0; k < RACE_KEYS; k++)
        before[k] = loam_option_get(race_keys[k]);
    loam_heap_t *h = new_gc_heap(LOAM_PARALLEL_MARK);
    atomic_store(&options_race_done, 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, set_options_meanwhile, NULL), 0);
    for (int i = 0; i < 20000 / GC_SAN_DIVISOR; i++) {
        size_t n = i % 64 == 0 ? 96 * KiB + (size_t)i % 64 * KiB : 16 + (size_t)i % 512;
        unsigned char *p = loam_malloc(loam_heap_default(), n);
        cr_assert_not_null(p);
        memset(p, 0x5A, n);
        cr_assert_eq(p[n - 1], 0x5A);
        loam_free(p);
        cr_assert_not_null(loam_gc_alloc(h, n, LOAM_ATOMIC));
        if (i % 2000 == 0)
            loam_gc_collect(h);
    }
    atomic_store(&options_race_done, 1);
    pthread_join(t, NULL);
    for (size_t k = 0; k < RACE_KEYS; k++)      /* for the tests after it (standalone) */
        cr_assert_eq(loam_option_set(race_keys[k], before[k]), 0);
    loam_heap_destroy(h);
}

/* An object whose finalizer waits its turn (its collection's thread runs
 * the one before) stays alive until its own has run, whatever other
 * threads collect meanwhile. Before, a ready list taken out of the heap's
 * state was no collection's root: another thread's collection freed the
 * second object, its allocations took the block, and the finalizer then
 * ran on it. */
static loam_heap_t *fin_race_heap;
static atomic_int fin_race_stage;
static bool fin_race_intact;

#define FIN_RACE_SIZE 96

static void fin_race_first(void *obj, void *data)
{
    (void)obj;
    (void)data;
    atomic_store(&fin_race_stage, 1);              /* the other thread collects now */
    loam_enter_blocking(fin_race_heap);
    while (atomic_load(&fin_race_stage) != 2)
        sched_yield();
    loam_leave_blocking(fin_race_heap);
}

static void fin_race_second(void *obj, void *data)
{
    (void)data;
    fin_race_intact = gc_check(obj, 16, FIN_RACE_SIZE, 0xF17A1) == (size_t)-1;
}

static void *fin_race_collector(void *arg)
{
    (void)arg;
    while (atomic_load(&fin_race_stage) != 1)
        sched_yield();
    loam_gc_collect(fin_race_heap);
    /* blocks of the second object's size: they would take its block */
    for (int i = 0; i < 20000; i++) {
        void *b = loam_gc_alloc(fin_race_heap, FIN_RACE_SIZE, LOAM_ATOMIC);
        cr_assert_not_null(b);
        memset(b, 0x5A, FIN_RACE_SIZE);
    }
    loam_thread_detach(fin_race_heap);
    atomic_store(&fin_race_stage, 2);
    return NULL;
}

static GC_NOINLINE void fin_race_make_garbage(void)
{
    void *first = loam_gc_alloc(fin_race_heap, FIN_RACE_SIZE, LOAM_ATOMIC);
    void *second = loam_gc_alloc(fin_race_heap, FIN_RACE_SIZE, LOAM_ATOMIC);
    cr_assert_not_null(first);
    cr_assert_not_null(second);
    gc_fill(second, 16, FIN_RACE_SIZE, 0xF17A1);
    cr_assert_eq(loam_finalizer_set(fin_race_heap, first, fin_race_first, NULL), 0);
    cr_assert_eq(loam_finalizer_set(fin_race_heap, second, fin_race_second, NULL), 0);
}

Test(gc_threads, an_object_waiting_for_its_finalizer_outlives_other_threads_collections, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    fin_race_heap = loam_heap_new(&cfg);
    cr_assert_not_null(fin_race_heap);
    atomic_store(&fin_race_stage, 0);
    fin_race_intact = false;
    loam_thread_attach(fin_race_heap);
    fin_race_make_garbage();
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, fin_race_collector, NULL), 0);
    loam_gc_collect(fin_race_heap);                /* both ready; the first runs, and waits */
    loam_enter_blocking(fin_race_heap);
    pthread_join(t, NULL);
    loam_leave_blocking(fin_race_heap);
    cr_assert_eq(atomic_load(&fin_race_stage), 2);
    cr_assert(fin_race_intact, "the second finalizer ran on a block the other thread's collection freed");
    loam_heap_destroy(fin_race_heap);
}

/* ---- threads on several heaps at random ------------------------------------------------------
 * Four threads, three heaps (plain, parallel marking, generational), each
 * thread using any of them in turn: lists built with finalizers on some
 * nodes, held on the thread's stack or in its root slots, linked, dropped,
 * verified; collections, safepoints, blocking sections over all the heaps a
 * thread is attached to, detaches (the next allocation attaches again),
 * weak references, spells of manual and malloc allocation, and a thread
 * that collects heap 0 over and over without being attached. Found the
 * cycle of held threads and the finalizers run on freed blocks. Seeded. */

#define RH_HEAPS   3
#define RH_THREADS 4
#define RH_HELD    4
#define RH_MAGIC   0x5EEDC0DE0BADF00Dull

typedef struct rh_node {
    uint64_t        magic, serial;
    struct rh_node *left, *right;
    atomic_int      finalized;
    uint32_t        heap, words;
    uint64_t        w[];
} rh_node_t;

static loam_heap_t *rh_heaps[RH_HEAPS];
static loam_heap_t *rh_manual;
static atomic_int   rh_done, rh_bad;
static atomic_long  rh_finalized;

static void rh_trace(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    rh_node_t *n = obj;
    loam_mark(t, n->left);
    loam_mark(t, n->right);
}

static void rh_fin(void *obj, void *data)
{
    (void)data;
    rh_node_t *n = obj;
    if (n->magic != RH_MAGIC)
        atomic_fetch_add(&rh_bad, 1);
    atomic_store(&n->finalized, 1);
    atomic_fetch_add(&rh_finalized, 1);
}

static rh_node_t *rh_node(int h, gc_rng_t *r)
{
    uint32_t words = (uint32_t)gc_rng_below(r, 12);
    rh_node_t *n = loam_gc_alloc(rh_heaps[h], sizeof *n + words * 8, LOAM_TRACED);
    cr_assert_not_null(n);
    n->serial = gc_rng_next(r);
    n->heap = (uint32_t)h;
    n->words = words;
    for (uint32_t i = 0; i < words; i++)
        n->w[i] = n->serial * 31 + i;
    n->magic = RH_MAGIC;
    if (gc_rng_below(r, 8) == 0)
        cr_assert_eq(loam_finalizer_set(rh_heaps[h], n, rh_fin, NULL), 0);
    return n;
}

/* false: a node damaged, of another heap, or finalized while reachable. */
static bool rh_intact(const rh_node_t *n, int h, int depth)
{
    for (; n && depth < 40; n = n->left, depth++) {
        if (n->magic != RH_MAGIC || n->heap != (uint32_t)h || atomic_load(&n->finalized))
            return false;
        for (uint32_t i = 0; i < n->words; i++)
            if (n->w[i] != n->serial * 31 + i)
                return false;
        if (n->right && !rh_intact(n->right, h, depth + 10))
            return false;
    }
    return true;
}

typedef struct {
    uint64_t   seed;
    rh_node_t *rooted[RH_HEAPS][RH_HELD];          /* root slots */
} rh_arg_t;

static void rh_block_all(const bool *attached, bool enter)
{
    for (int h = 0; h < RH_HEAPS; h++)
        if (attached[h]) {
            if (enter)
                loam_enter_blocking(rh_heaps[h]);
            else
                loam_leave_blocking(rh_heaps[h]);
        }
}

static void *rh_worker(void *p)
{
    rh_arg_t *a = p;
    gc_rng_t r = { a->seed };
    rh_node_t *volatile held[RH_HEAPS][RH_HELD] = { { 0 } };   /* on this stack */
    loam_weak_t *weak[RH_HEAPS] = { 0 };
    rh_node_t *weak_kept[RH_HEAPS] = { 0 };        /* its target, also held, or NULL */
    bool attached[RH_HEAPS] = { false };
    for (int h = 0; h < RH_HEAPS; h++)
        for (int k = 0; k < RH_HELD; k++)
            loam_root_add(rh_heaps[h], (void **)&a->rooted[h][k]);
    size_t steps = 2500 * gc_test_scale() / GC_SAN_DIVISOR;
    for (size_t step = 0; step < steps && !atomic_load(&rh_bad); step++) {
        int h = (int)gc_rng_below(&r, RH_HEAPS);
        unsigned op = (unsigned)gc_rng_below(&r, 100);
        if (op < 35) {                             /* a list; allocating attaches */
            rh_node_t *head = NULL;
            for (size_t i = 1 + gc_rng_below(&r, 16); i > 0; i--) {
                rh_node_t *n = rh_node(h, &r);
                n->left = head;
                if (gc_rng_below(&r, 4) == 0) {
                    n->right = rh_node(h, &r);     /* n may be old by now */
                    loam_write_barrier(&n->right);
                }
                head = n;
            }
            attached[h] = true;
            if (gc_rng_below(&r, 2))
                held[h][gc_rng_below(&r, RH_HELD)] = head;
            else
                a->rooted[h][gc_rng_below(&r, RH_HELD)] = head;
        } else if (op < 50) {                      /* verify what this thread holds */
            for (int g = 0; g < RH_HEAPS; g++) {
                if (!attached[g])
                    continue;
                for (int k = 0; k < RH_HELD; k++)
                    if (!rh_intact(held[g][k], g, 0) || !rh_intact(a->rooted[g][k], g, 0))
                        atomic_fetch_add(&rh_bad, 1);
                if (weak[g] && weak_kept[g] && loam_weak_get(weak[g]) != weak_kept[g])
                    atomic_fetch_add(&rh_bad, 1);
            }
        } else if (op < 55 && attached[h]) {       /* link a rooted list under a held one */
            rh_node_t *x = held[h][gc_rng_below(&r, RH_HELD)];
            rh_node_t *y = a->rooted[h][gc_rng_below(&r, RH_HELD)];
            if (x && y && x != y) {
                rh_node_t *n = rh_node(h, &r);
                n->left = y;
                x->right = n;
                loam_write_barrier(&x->right);
            }
        } else if (op < 58) {
            loam_gc_collect(rh_heaps[h]);
        } else if (op < 63) {
            loam_safepoint(rh_heaps[h]);
        } else if (op < 68) {                      /* a wait, bracketed for every heap */
            rh_block_all(attached, true);
            struct timespec ts = { 0, (long)gc_rng_below(&r, 200000) };
            nanosleep(&ts, NULL);
            rh_block_all(attached, false);
        } else if (op < 71 && attached[h]) {       /* detach: nothing of h on the stack */
            for (int k = 0; k < RH_HELD; k++)
                held[h][k] = NULL;
            weak_kept[h] = NULL;
            loam_thread_detach(rh_heaps[h]);
            attached[h] = false;
        } else if (op < 75 && attached[h]) {       /* a weak reference, its target kept or not */
            if (weak[h])
                loam_weak_free(weak[h]);
            rh_node_t *t = held[h][gc_rng_below(&r, RH_HELD)];
            weak[h] = loam_weak_new(rh_heaps[h], t);
            cr_assert_not_null(weak[h]);
            weak_kept[h] = gc_rng_below(&r, 2) ? t : NULL;
        } else if (op < 82) {                      /* other allocators for a while */
            for (int i = 0; i < 200; i++) {
                void *m = loam_malloc(rh_manual, 16 + gc_rng_below(&r, 2000));
                void *c = malloc(16 + gc_rng_below(&r, 2000));
                cr_assert_not_null(m);
                cr_assert_not_null(c);
                loam_free(m);
                free(c);
            }
        } else if (op < 90 && attached[h]) {       /* drop one */
            if (gc_rng_below(&r, 2))
                held[h][gc_rng_below(&r, RH_HELD)] = NULL;
            else
                a->rooted[h][gc_rng_below(&r, RH_HELD)] = NULL;
            if (weak_kept[h] && gc_rng_below(&r, 2))
                weak_kept[h] = NULL;
        } else {                                   /* atomic garbage */
            cr_assert_not_null(loam_gc_alloc(rh_heaps[h], 16 + gc_rng_below(&r, 1500), LOAM_ATOMIC));
            attached[h] = true;
        }
    }
    for (int h = 0; h < RH_HEAPS; h++) {
        if (weak[h])
            loam_weak_free(weak[h]);
        for (int k = 0; k < RH_HELD; k++)
            loam_root_remove(rh_heaps[h], (void **)&a->rooted[h][k]);
    }
    return NULL;
}

static void *rh_outsider(void *p)
{
    (void)p;
    while (!atomic_load(&rh_done)) {
        loam_gc_collect(rh_heaps[0]);              /* attached for the collection only */
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

Test(gc_threads, threads_on_several_heaps_at_random, .timeout = 600)
{
    uint64_t seed = gc_test_seed("gc_threads/threads_on_several_heaps_at_random");
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    const unsigned flags[RH_HEAPS] = { 0, LOAM_PARALLEL_MARK, LOAM_GENERATIONAL };
    for (int h = 0; h < RH_HEAPS; h++) {
        loam_config_t cfg = { .mode = LOAM_GC, .trace = rh_trace, .flags = flags[h], .gc_min_bytes = 64 * KiB };
        rh_heaps[h] = loam_heap_new(&cfg);
        cr_assert_not_null(rh_heaps[h]);
    }
    rh_manual = loam_heap_new(NULL);
    cr_assert_not_null(rh_manual);
    atomic_store(&rh_done, 0);
    atomic_store(&rh_bad, 0);
    atomic_store(&rh_finalized, 0);
    gc_rng_t r = { seed };
    rh_arg_t args[RH_THREADS];
    pthread_t t[RH_THREADS], outsider;
    cr_assert_eq(pthread_create(&outsider, NULL, rh_outsider, NULL), 0);
    for (int i = 0; i < RH_THREADS; i++) {
        memset(&args[i], 0, sizeof args[i]);
        args[i].seed = gc_rng_next(&r) | 1;
        cr_assert_eq(pthread_create(&t[i], NULL, rh_worker, &args[i]), 0);
    }
    for (int i = 0; i < RH_THREADS; i++)
        pthread_join(t[i], NULL);
    atomic_store(&rh_done, 1);
    pthread_join(outsider, NULL);
    cr_assert_eq(atomic_load(&rh_bad), 0, "seed %llu: a reachable node was damaged, finalized or lost its weak reference",
                 (unsigned long long)seed);
    size_t collections = 0;
    for (int h = 0; h < RH_HEAPS; h++) {
        collections += gc_stats(rh_heaps[h]).gc_collections;
        loam_heap_destroy(rh_heaps[h]);
    }
    cr_assert_gt(collections, 30, "seed %llu: only %zu collections", (unsigned long long)seed, collections);
    loam_heap_destroy(rh_manual);
}

/* ---- allocating inside a blocking bracket -------------------------------------------------------- */

/* A thread between loam_enter_blocking and loam_leave_blocking counts as
 * stopped: an allocation from that heap would race a collection. It is a
 * fault, named even where the fast path would have served it (the thread
 * has a cache of the heap with blocks in it): the bracket takes the
 * thread's caches off its slots, so the allocation goes to the slow path. */
#include <errno.h>
#include <signal.h>

static atomic_int bracket_faults;
static char bracket_fault_text[200];

static void bracket_on_error(loam_heap_t *h, const char *message, void *addr, void *user)
{
    (void)h, (void)addr, (void)user;
    if (atomic_fetch_add(&bracket_faults, 1) == 0)
        snprintf(bracket_fault_text, sizeof bracket_fault_text, "%s", message);
}

static void *collect_once(void *h)
{
    loam_gc_collect(h);
    return NULL;
}

/* A collection asked for inside the bracket is a fault too, and does not
 * run: run, it ended with the thread counted as running while it went on
 * blocking, and another thread's collection waited for it (here, for
 * ever: the thread blocks in pthread_join on that collection). */
Test(gc_threads, collecting_inside_a_blocking_bracket_is_a_fault, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .error = bracket_on_error };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    cr_assert_not_null(loam_gc_alloc(h, 32, LOAM_ATOMIC));    /* attached */
    loam_stats_t st;
    loam_heap_stats(h, &st);
    size_t collections = st.gc_collections;
    loam_enter_blocking(h);
    loam_gc_collect(h);
    cr_assert_eq(atomic_load(&bracket_faults), 1, "no fault for a collection inside the bracket");
    cr_assert(strstr(bracket_fault_text, "between loam_enter_blocking and loam_leave_blocking") != NULL,
              "the fault said: %s", bracket_fault_text);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.gc_collections, collections, "the collection ran inside the bracket");
    pthread_t other;
    cr_assert_eq(pthread_create(&other, NULL, collect_once, h), 0);
    pthread_join(other, NULL);          /* still counted as stopped: it does not wait for this thread */
    loam_leave_blocking(h);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.gc_collections, collections + 1);
    loam_heap_destroy(h);
}

/* So is a free (small or large): the block stays allocated. */
Test(gc_threads, freeing_inside_a_blocking_bracket_is_a_fault, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .error = bracket_on_error };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    static void *keep[2];
    loam_root_add_range(h, keep, keep + 2);
    keep[0] = loam_gc_alloc(h, 32, LOAM_ATOMIC);
    keep[1] = loam_gc_alloc(h, 300 * 1024, LOAM_ATOMIC);
    cr_assert(keep[0] && keep[1]);
    memset(keep[0], 7, 32);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    size_t live = st.live_bytes;
    loam_enter_blocking(h);
    loam_free(keep[0]);
    loam_free(keep[1]);
    loam_leave_blocking(h);
    cr_assert_eq(atomic_load(&bracket_faults), 2, "%d faults for 2 frees inside the bracket",
                 atomic_load(&bracket_faults));
    cr_assert(strstr(bracket_fault_text, "free of a block of a collected heap between loam_enter_blocking") != NULL,
              "the fault said: %s", bracket_fault_text);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_bytes, live, "a free inside the bracket was done (%zu live bytes, were %zu)",
                 st.live_bytes, live);
    cr_assert_eq(((unsigned char *)keep[0])[31], 7);
    loam_free(keep[0]);                     /* outside: fine */
    loam_free(keep[1]);
    keep[0] = keep[1] = NULL;
    cr_assert_eq(atomic_load(&bracket_faults), 2, "a fault outside the bracket");
    loam_root_remove_range(h, keep);
    loam_heap_destroy(h);
}

Test(gc_threads, allocating_inside_a_blocking_bracket_aborts, .signal = SIGABRT, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    for (int i = 0; i < 10; i++)            /* a cache, its range not used up */
        cr_assert_not_null(loam_gc_alloc(h, 32, LOAM_ATOMIC));
    loam_enter_blocking(h);
    void *p = loam_gc_alloc(h, 32, LOAM_ATOMIC);
    fprintf(stderr, "allocated %p inside the bracket, no fault\n", p);
}

Test(gc_threads, allocating_inside_a_blocking_bracket_is_a_fault, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .error = bracket_on_error };
    loam_heap_t *h = loam_heap_new(&cfg), *other = loam_heap_new(&cfg), *manual = loam_heap_new(NULL);
    cr_assert(h && other && manual);
    static void *keep[4];
    loam_root_add_range(h, keep, keep + 4);
    keep[0] = loam_gc_alloc(h, 32, LOAM_ATOMIC);
    keep[1] = loam_malloc(h, 100);
    cr_assert(keep[0] && keep[1]);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    size_t cached = st.cached_bytes;
    cr_assert_gt(cached, 0, "no thread cache to serve the next allocation");

    /* Each kind of allocation, small (its cache has blocks) or large. */
    loam_enter_blocking(h);
    loam_enter_blocking(h);                 /* brackets nest */
    loam_leave_blocking(h);
    errno = 0;
    cr_assert_null(loam_gc_alloc(h, 32, LOAM_ATOMIC), "an atomic block inside the bracket");
    cr_assert_eq(errno, EINVAL);
    cr_assert_null(loam_gc_alloc(h, 48, LOAM_CONSERVATIVE), "a conservative block inside the bracket");
    cr_assert_null(loam_malloc(h, 100), "loam_malloc inside the bracket");
    cr_assert_null(loam_gc_alloc(h, 300 * 1024, LOAM_ATOMIC), "a large block inside the bracket");
    cr_assert_null(loam_realloc(h, keep[1], 5000), "loam_realloc inside the bracket");
    cr_assert_eq(atomic_load(&bracket_faults), 5, "%d faults for 5 allocations", atomic_load(&bracket_faults));
    cr_assert(strstr(bracket_fault_text, "between loam_enter_blocking and loam_leave_blocking") != NULL,
              "the fault said: %s", bracket_fault_text);
    /* Other heaps are not in the bracket. */
    void *o = loam_gc_alloc(other, 32, LOAM_ATOMIC), *m = loam_malloc(manual, 32);
    cr_assert(o && m);
    loam_free(m);
    cr_assert_eq(atomic_load(&bracket_faults), 5);
    loam_leave_blocking(h);

    /* Out of the bracket: no fault, and the thread's own cache serves again
     * (a new one would have taken a refill: more cached bytes, not less). */
    keep[2] = loam_gc_alloc(h, 32, LOAM_ATOMIC);
    keep[3] = loam_gc_alloc(h, 300 * 1024, LOAM_ATOMIC);
    cr_assert(keep[2] && keep[3]);
    cr_assert_eq(atomic_load(&bracket_faults), 5, "a fault outside the bracket");
    loam_heap_stats(h, &st);
    cr_assert_eq(st.cached_bytes, cached - 32, "cached bytes %zu, were %zu", st.cached_bytes, cached);
    void *r = loam_realloc(h, keep[1], 5000);
    cr_assert_not_null(r);
    keep[1] = r;
    loam_root_remove_range(h, keep);
    loam_heap_destroy(h);
    loam_heap_destroy(other);
    loam_heap_destroy(manual);
}

/* loam_finalize_all inside the bracket is a fault too: its finalizers would
 * read and write the heap's objects while the thread counts as stopped.
 * Nothing runs; after the bracket, every finalizer runs once. */
static atomic_int bracket_finalized;
static void count_bracket_finalizer(void *obj, void *data)
{
    (void)obj, (void)data;
    atomic_fetch_add(&bracket_finalized, 1);
}

Test(gc_threads, finalize_all_inside_a_blocking_bracket_is_a_fault, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .error = bracket_on_error };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    static void *keep[3];
    loam_root_add_range(h, keep, keep + 3);
    for (int i = 0; i < 3; i++) {
        keep[i] = loam_gc_alloc(h, 32, LOAM_ATOMIC);
        cr_assert_not_null(keep[i]);
        cr_assert_eq(loam_finalizer_set(h, keep[i], count_bracket_finalizer, NULL), 0);
    }
    loam_enter_blocking(h);
    errno = 0;
    cr_assert_eq(loam_finalize_all(h), 0, "finalizers ran inside the bracket");
    cr_assert_eq(errno, EINVAL);
    cr_assert_eq(atomic_load(&bracket_finalized), 0);
    cr_assert_eq(atomic_load(&bracket_faults), 1, "%d faults", atomic_load(&bracket_faults));
    cr_assert(strstr(bracket_fault_text, "loam_finalize_all of a heap between loam_enter_blocking") != NULL,
              "the fault said: %s", bracket_fault_text);
    loam_leave_blocking(h);
    cr_assert_eq(loam_finalize_all(h), 3);
    cr_assert_eq(atomic_load(&bracket_finalized), 3);
    cr_assert_eq(atomic_load(&bracket_faults), 1, "a fault outside the bracket");
    loam_root_remove_range(h, keep);
    loam_heap_destroy(h);
}
