/* tests/test_threads.c — loam under threads.
 *
 *  - stress: 8 threads (more than the cores of the machine), random sizes over
 *    every class plus large blocks, four heaps and the default heap, a share of
 *    the blocks handed to another thread to free, contents checked at every
 *    free; at the end every heap's live_bytes/live_blocks are back to zero.
 *    Seeded (LOAM_TEST_SEED, printed); LOAM_TEST_SCALE multiplies the work.
 *  - thread exit: caches are flushed, nothing stays cached or live, also for
 *    blocks freed by a thread other than the allocating one.
 *  - heap destroy while other threads hold cached blocks of the heap, and a new
 *    heap taking its place (and its cache slot): those threads go on safely and
 *    get blocks of the new heap; its statistics are right.
 *  - 40 heaps created and destroyed while 4 threads allocate from their own.
 *  - more heaps than cache slots, used from several threads.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "runtime/runtime.h"
#include "stats_util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include "loam.h"
#include "alloc/tcache.h"             /* tcache_shared_bytes: the caches' shared growth budget */
#include "runtime/runtime.h"          /* a heap's cache slot, for the idle cache's slot arrays */

/* ---- helpers ----------------------------------------------------------------- */

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(LOAM_SANITIZED)
#define SAN_DIVISOR 4
#else
#define SAN_DIVISOR 1
#endif

static unsigned long test_scale(void)
{
    const char *s = getenv("LOAM_TEST_SCALE");
    unsigned long v = s ? strtoul(s, NULL, 10) : 1;
    return v ? v : 1;
}

static uint64_t test_seed(const char *what)
{
    const char *s = getenv("LOAM_TEST_SEED");
    uint64_t seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)getpid();
    fprintf(stderr, "%s: seed %llu (rerun with LOAM_TEST_SEED=%llu), scale %lu\n", what,
            (unsigned long long)seed, (unsigned long long)seed, test_scale());
    return seed;
}

typedef struct { uint64_t s; } rng_t;

static uint64_t rng_next(rng_t *r)
{
    /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t rng_below(rng_t *r, size_t n) { return (size_t)(rng_next(r) % n); }

static inline uint8_t pat(uint64_t tag, size_t i)
{
    return (uint8_t)((tag >> ((i & 7) * 8)) ^ (i >> 3) ^ (i >> 11));
}

/* Whole block up to 8 KiB; beyond, the first and last 4 KiB and a byte per page. */
static void fill(void *p, size_t n, uint64_t tag)
{
    uint8_t *b = p;
    if (n <= 8192) {
        for (size_t i = 0; i < n; i++)
            b[i] = pat(tag, i);
        return;
    }
    for (size_t i = 0; i < 4096; i++)
        b[i] = pat(tag, i);
    for (size_t i = 4096; i < n - 4096; i += 4096)
        b[i] = pat(tag, i);
    for (size_t i = n - 4096; i < n; i++)
        b[i] = pat(tag, i);
}

/* The bytes fill() wrote for a block of n bytes that lie below lim must
 * still be there. Returns the offset of the first bad byte, or (size_t)-1. */
static size_t check_upto(const void *p, size_t n, uint64_t tag, size_t lim)
{
    const uint8_t *b = p;
    if (n <= 8192) {
        for (size_t i = 0; i < n && i < lim; i++)
            if (b[i] != pat(tag, i))
                return i;
        return (size_t)-1;
    }
    for (size_t i = 0; i < 4096 && i < lim; i++)
        if (b[i] != pat(tag, i))
            return i;
    for (size_t i = 4096; i < n - 4096 && i < lim; i += 4096)
        if (b[i] != pat(tag, i))
            return i;
    for (size_t i = n - 4096; i < n && i < lim; i++)
        if (b[i] != pat(tag, i))
            return i;
    return (size_t)-1;
}

static size_t check(const void *p, size_t n, uint64_t tag) { return check_upto(p, n, tag, n); }

/* A barrier that counts rounds, so the main thread can take part. */
typedef struct {
    pthread_mutex_t m;
    pthread_cond_t  c;
    unsigned        n, waiting, round;
} tbarrier_t;

static void tb_init(tbarrier_t *b, unsigned n)
{
    pthread_mutex_init(&b->m, NULL);
    pthread_cond_init(&b->c, NULL);
    b->n = n;
    b->waiting = 0;
    b->round = 0;
}

static void tb_wait(tbarrier_t *b)
{
    pthread_mutex_lock(&b->m);
    unsigned r = b->round;
    if (++b->waiting == b->n) {
        b->waiting = 0;
        b->round++;
        pthread_cond_broadcast(&b->c);
    } else {
        while (b->round == r)
            pthread_cond_wait(&b->c, &b->m);
    }
    pthread_mutex_unlock(&b->m);
}

static void tb_destroy(tbarrier_t *b)
{
    pthread_mutex_destroy(&b->m);
    pthread_cond_destroy(&b->c);
}

static void expect_empty(loam_heap_t *h, const char *name)
{
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_expect_eq(st.live_bytes, 0, "%s: live_bytes %zu after everything was freed", name, st.live_bytes);
    cr_expect_eq(st.live_blocks, 0, "%s: live_blocks %zu after everything was freed", name, st.live_blocks);
}

/* ---- stress ---------------------------------------------------------------------- */

#define ST_THREADS 8
#define ST_HEAPS   5           /* [0] is the default heap */
#define ST_SLOTS   512
#define MBOX_CAP   1024

typedef struct {
    void    *p;
    size_t   n;
    uint64_t tag;
    int      heap;
} blk_t;

typedef struct {
    pthread_mutex_t m;
    blk_t           q[MBOX_CAP];
    unsigned        head, count;
} mbox_t;

typedef struct {
    int          id;
    uint64_t     seed;
    unsigned long ops;
    pthread_t    th;
    /* results, read after join */
    unsigned long bad_content, bad_heap, bad_align, bad_usable, null_returns, handed, received;
    char         first_error[200];
} stress_arg_t;

static loam_heap_t *st_heaps[ST_HEAPS];
static mbox_t st_mbox[ST_THREADS];
static tbarrier_t st_barrier;

static void st_error(stress_arg_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void st_error(stress_arg_t *a, const char *fmt, ...)
{
    if (a->first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->first_error, sizeof a->first_error, fmt, ap);
    va_end(ap);
}

static size_t st_size(rng_t *r)
{
    unsigned k = (unsigned)rng_below(r, 1000);
    if (k < 600)
        return rng_below(r, 129);                 /* tiny: 0 .. 128 */
    if (k < 900)
        return rng_below(r, 1025);                /* small classes */
    if (k < 990)
        return 1024 + rng_below(r, 31 * 1024);    /* medium */
    if (k < 997)
        return 32768 + rng_below(r, 96 * 1024);   /* up to the mmap threshold */
    return 131072 + rng_below(r, 400 * 1024);     /* large: own mapping */
}

/* Checks a block about to be freed (whatever thread allocated it). */
static void st_verify(stress_arg_t *a, const blk_t *b)
{
    size_t bad = check(b->p, b->n, b->tag);
    if (bad != (size_t)-1) {
        a->bad_content++;
        st_error(a, "thread %d: block %p (%zu bytes, heap %d) corrupted at offset %zu", a->id, b->p, b->n,
                 b->heap, bad);
    }
    if (loam_heap_of(b->p) != st_heaps[b->heap]) {
        a->bad_heap++;
        st_error(a, "thread %d: loam_heap_of(%p) = %p, expected heap %d = %p", a->id, b->p,
                 (void *)loam_heap_of(b->p), b->heap, (void *)st_heaps[b->heap]);
    }
    if (loam_usable_size(b->p) < b->n) {
        a->bad_usable++;
        st_error(a, "thread %d: usable size %zu < %zu", a->id, loam_usable_size(b->p), b->n);
    }
}

static void st_alloc(stress_arg_t *a, rng_t *r, blk_t *b)
{
    b->heap = (int)rng_below(r, ST_HEAPS);
    b->n = st_size(r);
    b->tag = rng_next(r);
    loam_heap_t *h = st_heaps[b->heap];
    unsigned how = (unsigned)rng_below(r, 20);
    if (how == 0) {
        b->p = loam_calloc(h, 1, b->n);
        if (b->p) {
            const uint8_t *z = b->p;
            size_t lim = b->n < 4096 ? b->n : 4096;
            for (size_t i = 0; i < lim; i++)
                if (z[i]) {
                    a->bad_content++;
                    st_error(a, "thread %d: calloc block %p not zero at %zu", a->id, b->p, i);
                    break;
                }
        }
    } else if (how == 1) {
        size_t align = (size_t)1 << (4 + rng_below(r, 9));   /* 16 .. 4096 */
        b->p = loam_aligned_alloc(h, align, b->n);
        if (b->p && ((uintptr_t)b->p & (align - 1))) {
            a->bad_align++;
            st_error(a, "thread %d: aligned_alloc(%zu) gave %p", a->id, align, b->p);
        }
    } else {
        b->p = loam_malloc(h, b->n);
    }
    if (!b->p) {
        a->null_returns++;
        st_error(a, "thread %d: allocation of %zu bytes returned NULL", a->id, b->n);
        return;
    }
    if ((uintptr_t)b->p & 15) {
        a->bad_align++;
        st_error(a, "thread %d: block %p not 16-byte aligned", a->id, b->p);
    }
    fill(b->p, b->n, b->tag);
}

static void st_drain(stress_arg_t *a, int id)
{
    blk_t local[64];
    for (;;) {
        unsigned got = 0;
        pthread_mutex_lock(&st_mbox[id].m);
        while (st_mbox[id].count && got < 64) {
            local[got++] = st_mbox[id].q[st_mbox[id].head];
            st_mbox[id].head = (st_mbox[id].head + 1) % MBOX_CAP;
            st_mbox[id].count--;
        }
        pthread_mutex_unlock(&st_mbox[id].m);
        if (!got)
            return;
        for (unsigned i = 0; i < got; i++) {
            st_verify(a, &local[i]);
            loam_free(local[i].p);
            a->received++;
        }
    }
}

/* false: the mailbox is full, the caller keeps the block. */
static bool st_send(int to, const blk_t *b)
{
    bool ok = false;
    pthread_mutex_lock(&st_mbox[to].m);
    if (st_mbox[to].count < MBOX_CAP) {
        st_mbox[to].q[(st_mbox[to].head + st_mbox[to].count) % MBOX_CAP] = *b;
        st_mbox[to].count++;
        ok = true;
    }
    pthread_mutex_unlock(&st_mbox[to].m);
    return ok;
}

static void *stress_thread(void *arg)
{
    stress_arg_t *a = arg;
    rng_t r = { a->seed };
    blk_t *slots = calloc(ST_SLOTS, sizeof *slots);
    for (unsigned long op = 0; op < a->ops; op++) {
        blk_t *b = &slots[rng_below(&r, ST_SLOTS)];
        if (!b->p) {
            st_alloc(a, &r, b);
            continue;
        }
        unsigned what = (unsigned)rng_below(&r, 100);
        if (what < 30) {
            /* hand it to another thread, which checks and frees it */
            int to = (int)rng_below(&r, ST_THREADS - 1);
            if (to >= a->id)
                to++;
            if (st_send(to, b)) {
                a->handed++;
                b->p = NULL;
                continue;
            }
        }
        st_verify(a, b);
        if (what >= 30 && what < 40) {
            /* realloc: contents kept up to the smaller size, block stays in its heap */
            size_t n2 = st_size(&r);
            void *q = loam_realloc(st_heaps[b->heap], b->p, n2);
            if (n2 == 0) {
                /* glibc semantics: freed, NULL returned */
                b->p = NULL;
                if (q) {
                    b->p = q;
                    b->n = 0;
                }
                continue;
            }
            if (!q) {
                a->null_returns++;
                st_error(a, "thread %d: realloc to %zu returned NULL", a->id, n2);
                loam_free(b->p);
                b->p = NULL;
                continue;
            }
            size_t bad = check_upto(q, b->n, b->tag, n2);
            if (bad != (size_t)-1) {
                a->bad_content++;
                st_error(a, "thread %d: realloc %zu -> %zu lost contents at %zu", a->id, b->n, n2, bad);
            }
            b->p = q;
            b->n = n2;
            b->tag = rng_next(&r);
            fill(q, n2, b->tag);
            if (loam_heap_of(q) != st_heaps[b->heap]) {
                a->bad_heap++;
                st_error(a, "thread %d: realloc moved a block to another heap", a->id);
            }
            continue;
        }
        loam_free(b->p);
        b->p = NULL;
        if ((op & 63) == 0)
            st_drain(a, a->id);
    }
    for (unsigned i = 0; i < ST_SLOTS; i++)
        if (slots[i].p) {
            st_verify(a, &slots[i]);
            loam_free(slots[i].p);
            slots[i].p = NULL;
        }
    free(slots);
    /* Nobody sends after this barrier. */
    tb_wait(&st_barrier);
    st_drain(a, a->id);
    return NULL;
}

/* A heap's arena set past its first ARENA_SET_INLINE arenas (alloc.h): the
 * rest live in an array the set makes when it first outgrows them.
 * Contention is what grows a set; here this thread holds every arena of the
 * set when it asks for one, so each request makes a new one. The set has no
 * caches yet (none allocated from it), so nothing caps its growth below
 * arena_max. */
Test(threads, an_arena_set_grows_past_the_arenas_it_holds_inline, .timeout = 60)
{
    enum { N = 3 * ARENA_SET_INLINE };
    cr_assert_eq(loam_option_set("arena_max", N + 2), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_not_null(h);
    arena_set_t *set = &h->kinds[0].arenas;
    arena_t *held[N];
    held[0] = arena_set_first(set);
    cr_assert_not_null(held[0]);
    arena_lock(held[0]);
    for (int i = 1; i < N; i++) {
        held[i] = arena_set_lock_some(set, held[0]);
        cr_assert_not_null(held[i]);
        for (int j = 0; j < i; j++)
            cr_assert_neq(held[i], held[j], "arena %d handed out twice", j);
    }
    cr_assert_eq(AO_load(&set->count), (AO_t)N);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(arena_set_at(set, (unsigned)i), held[i], "arena %d", i);
        cr_assert_eq(heap_arena_at(h, (unsigned)i), held[i], "the heap's arena %d", i);
    }
    cr_assert_null(heap_arena_at(h, N));
    for (int i = N - 1; i >= 0; i--)
        arena_unlock(held[i]);
    /* Everything that walks a heap's arenas sees them all: the statistics,
     * a trim; allocation and the destroy still work. */
    char *buf = print_to_string(h, LOAM_STATS_JSON);
    char want[32];
    snprintf(want, sizeof want, "\"arenas\":%d,", N);
    cr_assert_not_null(strstr(buf, want), "stats without %s: %.200s", want, buf);
    free(buf);
    void *p[1000];
    for (int i = 0; i < 1000; i++)
        cr_assert_not_null(p[i] = loam_malloc(h, 24 + (size_t)i % 200));
    for (int i = 0; i < 1000; i++)
        loam_free(p[i]);
    loam_heap_trim(h);
    loam_heap_destroy(h);
}

Test(threads, stress, .timeout = 600)
{
    uint64_t seed = test_seed("threads/stress");
    unsigned long ops = 200000ul * test_scale() / SAN_DIVISOR;
    loam_stats_t before;
    st_heaps[0] = loam_heap_default();
    loam_heap_stats(st_heaps[0], &before);
    for (int i = 1; i < ST_HEAPS; i++) {
        st_heaps[i] = loam_heap_new(NULL);
        cr_assert_not_null(st_heaps[i]);
    }
    for (int i = 0; i < ST_THREADS; i++) {
        pthread_mutex_init(&st_mbox[i].m, NULL);
        st_mbox[i].head = st_mbox[i].count = 0;
    }
    tb_init(&st_barrier, ST_THREADS);
    stress_arg_t args[ST_THREADS];
    memset(args, 0, sizeof args);
    for (int i = 0; i < ST_THREADS; i++) {
        args[i].id = i;
        args[i].seed = seed + (uint64_t)i * 0x1000193u;
        args[i].ops = ops;
        cr_assert_eq(pthread_create(&args[i].th, NULL, stress_thread, &args[i]), 0);
    }
    unsigned long handed = 0, received = 0;
    for (int i = 0; i < ST_THREADS; i++) {
        pthread_join(args[i].th, NULL);
        stress_arg_t *a = &args[i];
        cr_expect_eq(a->bad_content + a->bad_heap + a->bad_align + a->bad_usable + a->null_returns, 0,
                     "thread %d: %lu corrupted, %lu wrong heap, %lu misaligned, %lu short, %lu NULL; first: %s",
                     i, a->bad_content, a->bad_heap, a->bad_align, a->bad_usable, a->null_returns,
                     a->first_error);
        handed += a->handed;
        received += a->received;
    }
    cr_expect_eq(handed, received, "blocks handed to other threads %lu, received %lu", handed, received);
    cr_expect_gt(handed, ops / 20, "too few cross-thread frees (%lu): the test does not test them", handed);
    for (int i = 0; i < ST_HEAPS; i++) {
        loam_stats_t st;
        loam_heap_stats(st_heaps[i], &st);
        size_t base_bytes = i == 0 ? before.live_bytes : 0, base_blocks = i == 0 ? before.live_blocks : 0;
        cr_expect_eq(st.live_bytes, base_bytes, "heap %d: live_bytes %zu, expected %zu", i, st.live_bytes,
                     base_bytes);
        cr_expect_eq(st.live_blocks, base_blocks, "heap %d: live_blocks %zu, expected %zu", i,
                     st.live_blocks, base_blocks);
        cr_expect_eq(st.cached_bytes, 0, "heap %d: %zu bytes still cached after every thread exited", i,
                     st.cached_bytes);
        if (i > 0)
            cr_expect_eq(st.requested_bytes, 0, "heap %d: requested_bytes %zu", i, st.requested_bytes);
    }
    for (int i = 1; i < ST_HEAPS; i++)
        loam_heap_destroy(st_heaps[i]);
    for (int i = 0; i < ST_THREADS; i++)
        pthread_mutex_destroy(&st_mbox[i].m);
    tb_destroy(&st_barrier);
}

/* ---- thread exit ------------------------------------------------------------------ */

#define EX_THREADS 8
#define EX_BLOCKS  3000

static loam_heap_t *ex_heap;
static tbarrier_t ex_barrier;
static void *ex_handoff[EX_THREADS][EX_BLOCKS];

static size_t ex_size(unsigned i) { return 8 + (i * 37) % 1000; }

static void *exit_thread(void *arg)
{
    int id = (int)(intptr_t)arg;
    loam_heap_t *dh = loam_heap_default();
    /* Allocate and free on both heaps, so the caches hold blocks of each. */
    void *mine[EX_BLOCKS];
    for (unsigned i = 0; i < EX_BLOCKS; i++) {
        mine[i] = loam_malloc(i & 1 ? ex_heap : dh, ex_size(i));
        memset(mine[i], id, ex_size(i));
    }
    for (unsigned i = 0; i < EX_BLOCKS; i++)
        loam_free(mine[i]);
    /* Blocks for the next thread to free (a cross-thread free into its cache). */
    for (unsigned i = 0; i < EX_BLOCKS; i++) {
        ex_handoff[id][i] = loam_malloc(i & 1 ? ex_heap : dh, ex_size(i));
        memset(ex_handoff[id][i], 0x5a, ex_size(i));
    }
    tb_wait(&ex_barrier);                  /* 1: all handoffs made */
    int from = (id + 1) % EX_THREADS;
    for (unsigned i = 0; i < EX_BLOCKS; i++) {
        unsigned char *p = ex_handoff[from][i];
        if (p[0] != 0x5a || p[ex_size(i) - 1] != 0x5a)
            return (void *)1;
        loam_free(p);
    }
    /* Allocate again, so some blocks in the caches came back from other threads. */
    for (unsigned i = 0; i < EX_BLOCKS / 2; i++)
        loam_free(loam_malloc(ex_heap, ex_size(i)));
    tb_wait(&ex_barrier);                  /* 2: main looks at the caches */
    tb_wait(&ex_barrier);                  /* 3: exit */
    return NULL;
}

Test(threads, exit_flushes_caches, .timeout = 300)
{
    loam_heap_t *dh = loam_heap_default();
    loam_stats_t dbefore;
    loam_heap_stats(dh, &dbefore);
    ex_heap = loam_heap_new(NULL);
    cr_assert_not_null(ex_heap);
    tb_init(&ex_barrier, EX_THREADS + 1);
    pthread_t th[EX_THREADS];
    for (int i = 0; i < EX_THREADS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, exit_thread, (void *)(intptr_t)i), 0);
    tb_wait(&ex_barrier);
    tb_wait(&ex_barrier);
    /* Quiet moment: every thread waits, its caches full of free blocks. */
    loam_stats_t st, dst;
    loam_heap_stats(ex_heap, &st);
    loam_heap_stats(dh, &dst);
    cr_expect_gt(st.cached_bytes, 0, "the threads' caches of the heap hold no blocks: nothing is tested");
    cr_expect_gt(dst.cached_bytes, 0, "the threads' caches of the default heap hold no blocks");
    cr_expect_eq(st.live_bytes, 0, "cached blocks are not live: live_bytes %zu", st.live_bytes);
    cr_expect_eq(st.live_blocks, 0, "cached blocks are not live: live_blocks %zu", st.live_blocks);
    cr_expect_eq(dst.live_bytes, dbefore.live_bytes, "default heap: live_bytes %zu, was %zu", dst.live_bytes,
                 dbefore.live_bytes);
    tb_wait(&ex_barrier);
    for (int i = 0; i < EX_THREADS; i++) {
        void *ret = (void *)2;
        pthread_join(th[i], &ret);
        cr_expect_null(ret, "thread %d saw a handed-off block corrupted", i);
    }
    loam_heap_stats(ex_heap, &st);
    loam_heap_stats(dh, &dst);
    cr_expect_eq(st.cached_bytes, 0, "after the threads exited %zu bytes are still cached", st.cached_bytes);
    cr_expect_eq(dst.cached_bytes, dbefore.cached_bytes, "default heap: %zu bytes cached after thread exit",
                 dst.cached_bytes);
    cr_expect_eq(st.live_bytes, 0);
    cr_expect_eq(st.live_blocks, 0);
    cr_expect_eq(dst.live_bytes, dbefore.live_bytes);
    cr_expect_eq(dst.live_blocks, dbefore.live_blocks);
    /* The blocks are back in their slabs: no slab is partly used any more. */
    cr_expect_eq(st.slab_free_bytes, 0, "after thread exit: %zu free bytes in partly used slabs",
                 st.slab_free_bytes);
    /* And the memory is usable again from here. */
    void *p = loam_malloc(ex_heap, 100);
    cr_assert_not_null(p);
    loam_free(p);
    loam_heap_destroy(ex_heap);
    tb_destroy(&ex_barrier);
}

/* Many short-lived threads, each leaving a full cache behind. */
static loam_heap_t *short_heap;
static atomic_int short_detached_done;

static void *short_thread(void *arg)
{
    void *v[300];
    for (int i = 0; i < 300; i++)
        v[i] = loam_malloc(i % 3 ? short_heap : loam_heap_default(), (size_t)(16 + i * 8 % 700));
    for (int i = 0; i < 300; i++)
        loam_free(v[i]);
    if (arg == (void *)2)
        atomic_store(&short_detached_done, 1);
    if (arg == (void *)1)
        pthread_exit(NULL);                /* the other way out */
    return NULL;
}

Test(threads, short_lived_threads, .timeout = 300)
{
    short_heap = loam_heap_new(NULL);
    cr_assert_not_null(short_heap);
    loam_stats_t before, st;
    loam_heap_stats(loam_heap_default(), &before);
    unsigned n = 400 / SAN_DIVISOR;
    for (unsigned i = 0; i < n; i++) {
        pthread_t t[4];
        for (int k = 0; k < 4; k++)
            cr_assert_eq(pthread_create(&t[k], NULL, short_thread, (void *)(intptr_t)(k & 1)), 0);
        for (int k = 0; k < 4; k++)
            pthread_join(t[k], NULL);
    }
    /* A detached one too: wait until its cache is gone. */
    pthread_t d;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    atomic_store(&short_detached_done, 0);
    cr_assert_eq(pthread_create(&d, &attr, short_thread, (void *)2), 0);
    pthread_attr_destroy(&attr);
    while (!atomic_load(&short_detached_done))
        sched_yield();
    for (int i = 0; i < 1000; i++) {
        loam_heap_stats(short_heap, &st);
        if (st.cached_bytes == 0 && st.live_bytes == 0)
            break;
        struct timespec ts = { 0, 5000000 };
        nanosleep(&ts, NULL);
    }
    loam_heap_stats(short_heap, &st);
    cr_expect_eq(st.cached_bytes, 0, "%zu bytes cached after %u threads exited", st.cached_bytes, n * 4 + 1);
    cr_expect_eq(st.live_bytes, 0);
    cr_expect_eq(st.live_blocks, 0);
    loam_stats_t dst;
    loam_heap_stats(loam_heap_default(), &dst);
    cr_expect_eq(dst.cached_bytes, before.cached_bytes);
    cr_expect_eq(dst.live_bytes, before.live_bytes);
    loam_heap_destroy(short_heap);
}

/* ---- heap destroy while threads cache its blocks ------------------------------------ */

#define DS_THREADS 4
#define DS_KEEP    100
#define DS_ROUNDS  6

static loam_heap_t *ds_heap;          /* the heap of the current round */
static loam_heap_t *ds_other;         /* lives through all rounds */
static tbarrier_t ds_barrier;

typedef struct {
    int       id;
    int       errors;
    char      msg[200];
    size_t    kept_bytes;             /* usable bytes of the blocks kept in ds_heap */
    void     *other_blocks[64];
} ds_arg_t;

static void *destroy_thread(void *arg)
{
    ds_arg_t *a = arg;
    for (int i = 0; i < 64; i++) {
        a->other_blocks[i] = loam_malloc(ds_other, 48 + (size_t)i * 16);
        memset(a->other_blocks[i], 0xa0 + a->id, 48 + (size_t)i * 16);
    }
    for (int round = 0; round < DS_ROUNDS; round++) {
        tb_wait(&ds_barrier);                 /* A: ds_heap is this round's heap */
        loam_heap_t *h = ds_heap;
        /* Thread 3 sits out the odd rounds: it keeps a disowned cache for a while. */
        if (!(a->id == 3 && (round & 1))) {
            void *keep[DS_KEEP];
            for (int i = 0; i < 2000; i++) {
                size_t n = (size_t)(1 + (i * 53 + a->id) % 900);
                void *p = loam_malloc(h, n);
                if (!p || loam_heap_of(p) != h) {
                    a->errors++;
                    snprintf(a->msg, sizeof a->msg, "round %d: block %p of heap %p, expected %p", round, p,
                             p ? (void *)loam_heap_of(p) : NULL, (void *)h);
                    continue;
                }
                memset(p, i, n);
                loam_free(p);
            }
            a->kept_bytes = 0;
            for (int i = 0; i < DS_KEEP; i++) {
                keep[i] = loam_malloc(h, (size_t)(10 + i * 7));
                if (!keep[i] || loam_heap_of(keep[i]) != h) {
                    a->errors++;
                    snprintf(a->msg, sizeof a->msg, "round %d: kept block %p of heap %p, expected %p", round,
                             keep[i], keep[i] ? (void *)loam_heap_of(keep[i]) : NULL, (void *)h);
                    keep[i] = NULL;
                    continue;
                }
                a->kept_bytes += loam_usable_size(keep[i]);
            }
            tb_wait(&ds_barrier);             /* B: main checks the stats */
            tb_wait(&ds_barrier);             /* C */
            /* Free half; the rest goes with the heap. The frees land in this
             * thread's cache, which main then disowns by destroying the heap. */
            for (int i = 0; i < DS_KEEP; i += 2)
                loam_free(keep[i]);
            /* Also some work on the other heap and the default heap. */
            for (int i = 0; i < 500; i++) {
                void *p = loam_malloc(i & 1 ? ds_other : loam_heap_default(), (size_t)(i % 300));
                loam_free(p);
            }
        } else {
            a->kept_bytes = 0;
            tb_wait(&ds_barrier);
            tb_wait(&ds_barrier);
        }
        tb_wait(&ds_barrier);                 /* D: main destroys h */
    }
    for (int i = 0; i < 64; i++) {
        unsigned char *p = a->other_blocks[i];
        if (p[0] != 0xa0 + a->id || p[48 + i * 16 - 1] != 0xa0 + a->id) {
            a->errors++;
            snprintf(a->msg, sizeof a->msg, "block of the surviving heap overwritten");
        }
        loam_free(p);
    }
    return NULL;
}

Test(threads, destroy_heap_while_threads_cache_it, .timeout = 300)
{
    ds_other = loam_heap_new(NULL);
    cr_assert_not_null(ds_other);
    tb_init(&ds_barrier, DS_THREADS + 1);
    ds_arg_t args[DS_THREADS];
    memset(args, 0, sizeof args);
    pthread_t th[DS_THREADS];
    ds_heap = loam_heap_new(NULL);
    cr_assert_not_null(ds_heap);
    for (int i = 0; i < DS_THREADS; i++) {
        args[i].id = i;
        cr_assert_eq(pthread_create(&th[i], NULL, destroy_thread, &args[i]), 0);
    }
    for (int round = 0; round < DS_ROUNDS; round++) {
        tb_wait(&ds_barrier);                 /* A */
        tb_wait(&ds_barrier);                 /* B: every thread keeps DS_KEEP blocks */
        loam_stats_t st;
        loam_heap_stats(ds_heap, &st);
        size_t want_bytes = 0, want_blocks = 0;
        for (int i = 0; i < DS_THREADS; i++) {
            want_bytes += args[i].kept_bytes;
            want_blocks += args[i].kept_bytes ? DS_KEEP : 0;
        }
        cr_expect_eq(st.live_blocks, want_blocks, "round %d: live_blocks %zu, expected %zu", round,
                     st.live_blocks, want_blocks);
        cr_expect_eq(st.live_bytes, want_bytes, "round %d: live_bytes %zu, expected %zu", round,
                     st.live_bytes, want_bytes);
        cr_expect_gt(st.cached_bytes, 0, "round %d: no cached blocks: nothing is tested", round);
        tb_wait(&ds_barrier);                 /* C */
        tb_wait(&ds_barrier);                 /* D: the threads are parked, their caches hold blocks of ds_heap */
        loam_heap_destroy(ds_heap);
        /* The next heap probably takes the freed cache slot: threads must not
         * mistake their disowned caches for caches of the new heap. */
        ds_heap = loam_heap_new(NULL);
        cr_assert_not_null(ds_heap);
        loam_heap_stats(ds_heap, &st);
        cr_expect_eq(st.live_bytes, 0, "round %d: a new heap has live_bytes %zu", round, st.live_bytes);
        cr_expect_eq(st.cached_bytes, 0, "round %d: a new heap has cached_bytes %zu", round, st.cached_bytes);
    }
    /* The last heap: no thread used it. */
    for (int i = 0; i < DS_THREADS; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(args[i].errors, 0, "thread %d: %d errors, last: %s", i, args[i].errors, args[i].msg);
    }
    expect_empty(ds_heap, "last heap");
    expect_empty(ds_other, "surviving heap");
    loam_stats_t st;
    loam_heap_stats(ds_other, &st);
    cr_expect_eq(st.cached_bytes, 0, "surviving heap: %zu bytes cached after the threads exited",
                 st.cached_bytes);
    loam_heap_destroy(ds_heap);
    loam_heap_destroy(ds_other);
    tb_destroy(&ds_barrier);
}

/* ---- heap churn -------------------------------------------------------------------- */

#define CH_WORKERS 4

static atomic_int ch_stop;

typedef struct {
    int      id;
    uint64_t seed;
    int      errors;
    char     msg[200];
    unsigned long ops;
} ch_arg_t;

static void *churn_worker(void *arg)
{
    ch_arg_t *a = arg;
    rng_t r = { a->seed };
    loam_heap_t *h = loam_heap_new(NULL);
    if (!h) {
        a->errors++;
        snprintf(a->msg, sizeof a->msg, "loam_heap_new failed");
        return NULL;
    }
    blk_t slots[128];
    memset(slots, 0, sizeof slots);
    while (!atomic_load(&ch_stop) || a->ops < 20000) {
        blk_t *b = &slots[rng_below(&r, 128)];
        if (b->p) {
            if (check(b->p, b->n, b->tag) != (size_t)-1 || loam_heap_of(b->p) != (b->heap ? h : loam_heap_default())) {
                a->errors++;
                snprintf(a->msg, sizeof a->msg, "block %p (%zu bytes) damaged or in the wrong heap", b->p, b->n);
            }
            loam_free(b->p);
            b->p = NULL;
        } else {
            b->heap = rng_below(&r, 4) != 0;
            b->n = st_size(&r);
            b->tag = rng_next(&r);
            b->p = loam_malloc(b->heap ? h : loam_heap_default(), b->n);
            if (!b->p) {
                a->errors++;
                snprintf(a->msg, sizeof a->msg, "malloc(%zu) returned NULL", b->n);
                continue;
            }
            fill(b->p, b->n, b->tag);
        }
        a->ops++;
    }
    for (int i = 0; i < 128; i++)
        if (slots[i].p)
            loam_free(slots[i].p);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    if (st.live_bytes || st.live_blocks) {
        a->errors++;
        snprintf(a->msg, sizeof a->msg, "own heap: live %zu bytes / %zu blocks after freeing all", st.live_bytes,
                 st.live_blocks);
    }
    loam_heap_destroy(h);
    return NULL;
}

Test(threads, heap_churn_while_threads_allocate, .timeout = 300)
{
    uint64_t seed = test_seed("threads/heap_churn");
    rng_t r = { seed };
    atomic_store(&ch_stop, 0);
    ch_arg_t args[CH_WORKERS];
    pthread_t th[CH_WORKERS];
    memset(args, 0, sizeof args);
    for (int i = 0; i < CH_WORKERS; i++) {
        args[i].id = i;
        args[i].seed = seed ^ ((uint64_t)i << 40);
        cr_assert_eq(pthread_create(&th[i], NULL, churn_worker, &args[i]), 0);
    }
    unsigned rounds = 40 * (unsigned)test_scale();
    loam_heap_t *alive[8] = { 0 };
    for (unsigned i = 0; i < rounds; i++) {
        loam_heap_t *h = loam_heap_new(NULL);
        cr_assert_not_null(h, "loam_heap_new failed at round %u", i);
        void *blocks[200];
        for (int k = 0; k < 200; k++) {
            size_t n = st_size(&r);
            blocks[k] = loam_malloc(h, n);
            cr_assert_not_null(blocks[k]);
            memset(blocks[k], k, n < 256 ? n : 256);
            cr_expect_eq(loam_heap_of(blocks[k]), h);
        }
        /* Free some, leave the rest to the destroy. */
        for (int k = 0; k < 200; k += 3)
            loam_free(blocks[k]);
        loam_stats_t st;
        loam_heap_stats(h, &st);
        cr_expect_eq(st.live_blocks, 200 - 67, "round %u: live_blocks %zu", i, st.live_blocks);
        /* A few heaps stay alive across rounds, so slots are reused out of order. */
        unsigned k = (unsigned)rng_below(&r, 8);
        if (alive[k])
            loam_heap_destroy(alive[k]);
        alive[k] = h;
    }
    for (int k = 0; k < 8; k++)
        if (alive[k])
            loam_heap_destroy(alive[k]);
    atomic_store(&ch_stop, 1);
    for (int i = 0; i < CH_WORKERS; i++) {
        pthread_join(th[i], NULL);
        cr_expect_eq(args[i].errors, 0, "worker %d: %d errors, last: %s", i, args[i].errors, args[i].msg);
        cr_expect_gt(args[i].ops, 0);
    }
}

/* ---- more heaps than cache slots ----------------------------------------------------- */

#define MH_HEAPS 48
static loam_heap_t *mh_heaps[MH_HEAPS];

static void *many_heaps_thread(void *arg)
{
    intptr_t id = (intptr_t)arg;
    void *v[MH_HEAPS][20];
    for (int round = 0; round < 20; round++) {
        for (int h = 0; h < MH_HEAPS; h++)
            for (int k = 0; k < 20; k++) {
                v[h][k] = loam_malloc(mh_heaps[h], (size_t)(8 + (k * 24 + h) % 600));
                if (!v[h][k] || loam_heap_of(v[h][k]) != mh_heaps[h])
                    return (void *)1;
                memset(v[h][k], (int)id, 8);
            }
        for (int h = 0; h < MH_HEAPS; h++)
            for (int k = 0; k < 20; k++) {
                if (((unsigned char *)v[h][k])[7] != (unsigned char)id)
                    return (void *)2;
                loam_free(v[h][k]);
            }
    }
    return NULL;
}

Test(threads, more_heaps_than_cache_slots, .timeout = 300)
{
    for (int h = 0; h < MH_HEAPS; h++) {
        mh_heaps[h] = loam_heap_new(NULL);
        cr_assert_not_null(mh_heaps[h]);
    }
    pthread_t th[4];
    for (intptr_t i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, many_heaps_thread, (void *)i), 0);
    for (int i = 0; i < 4; i++) {
        void *ret = (void *)3;
        pthread_join(th[i], &ret);
        cr_expect_null(ret, "thread %d: wrong heap or damaged block (%p)", i, ret);
    }
    for (int h = 0; h < MH_HEAPS; h++) {
        loam_stats_t st;
        loam_heap_stats(mh_heaps[h], &st);
        cr_expect_eq(st.live_bytes, 0, "heap %d: live_bytes %zu", h, st.live_bytes);
        cr_expect_eq(st.live_blocks, 0, "heap %d: live_blocks %zu", h, st.live_blocks);
        cr_expect_eq(st.cached_bytes, 0, "heap %d: cached_bytes %zu", h, st.cached_bytes);
    }
    for (int h = 0; h < MH_HEAPS; h++)
        loam_heap_destroy(mh_heaps[h]);
}

/* ---- the background purge against running threads -------------------------------
 * decay_ms=5: the purge thread asks caches to flush while their owners are
 * between bursts (sleeping, or running from the cache alone), and trims their
 * heaps; the owners answer from their free slow paths while other threads
 * allocate, free across threads and trim. Contents are checked at each free;
 * at the end nothing is live and, after the owners' last answers, nothing is
 * cached. */
#define PG_THREADS 4
#define PG_ROUNDS 40
static loam_heap_t *pg_heap;

static void *purge_guest_thread(void *arg)
{
    rng_t r = { (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1 };
    enum { N = 1500 };
    unsigned char **b = malloc(N * sizeof *b);
    size_t *len = malloc(N * sizeof *len);
    if (!b || !len)
        return (void *)1;
    for (int round = 0; round < PG_ROUNDS; round++) {
        for (int i = 0; i < N; i++) {
            len[i] = 16 + rng_next(&r) % 3000;
            b[i] = loam_malloc(pg_heap, len[i]);
            if (!b[i])
                return (void *)2;
            memset(b[i], (int)((uintptr_t)b[i] >> 4), len[i]);
        }
        for (int i = 0; i < N; i++) {
            for (size_t k = 0; k < len[i]; k += 61)
                if (b[i][k] != (unsigned char)((uintptr_t)b[i] >> 4))
                    return (void *)3;
            loam_free(b[i]);
        }
        /* a quiet spell served by the cache alone: long enough to be asked */
        for (int k = 0; k < 4; k++) {
            void *p = loam_malloc(pg_heap, 64);
            if (!p)
                return (void *)4;
            memset(p, 7, 64);
            loam_free(p);
            struct timespec ts = { 0, 3 * 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
        if (round % 10 == 9)
            loam_heap_trim(pg_heap);
    }
    free(b);
    free(len);
    return NULL;
}

Test(threads, purge_requests_while_threads_run, .timeout = 300)
{
    cr_assert_eq(loam_option_set("decay_ms", 5), 0);
    cr_assert_eq(loam_option_set("track_requested", 0), 0);     /* caches on */
    pg_heap = loam_heap_new(NULL);
    cr_assert_not_null(pg_heap);
    pthread_t th[PG_THREADS];
    for (intptr_t i = 0; i < PG_THREADS; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, purge_guest_thread, (void *)(i + 1)), 0);
    for (int i = 0; i < PG_THREADS; i++) {
        void *ret = (void *)9;
        pthread_join(th[i], &ret);
        cr_expect_null(ret, "thread %d failed (%p)", i, ret);
    }
    loam_stats_t st;
    loam_heap_stats(pg_heap, &st);
    cr_expect_eq(st.live_blocks, 0, "live_blocks %zu", st.live_blocks);
    cr_expect_eq(st.cached_bytes, 0, "cached_bytes %zu after every thread exited", st.cached_bytes);
    /* the heap went back to (almost) nothing with nobody calling trim */
    struct timespec ts = { 0, 100 * 1000 * 1000 };
    nanosleep(&ts, NULL);
    loam_heap_stats(pg_heap, &st);
    cr_expect_eq(st.free_run_bytes, 0, "free runs never decayed: %zu bytes", st.free_run_bytes);
    loam_heap_destroy(pg_heap);
}

/* Heaps destroyed while the purge thread works on their arenas (decay_ms=1
 * keeps it busy): destroy waits for it, and nothing it touches is gone. */
Test(threads, destroy_heaps_while_the_purge_thread_runs, .timeout = 300)
{
    cr_assert_eq(loam_option_set("decay_ms", 1), 0);
    cr_assert_eq(loam_option_set("track_requested", 0), 0);
    enum { N = 3000 };
    static void *b[N];
    for (int round = 0; round < 60; round++) {
        loam_heap_t *h = loam_heap_new(NULL);
        cr_assert_not_null(h);
        for (int i = 0; i < N; i++) {
            b[i] = loam_malloc(h, (size_t)(16 + (i * 37 + round) % 3000));
            cr_assert_not_null(b[i]);
            memset(b[i], round, 16);
        }
        for (int i = 0; i < N; i += 2)
            loam_free(b[i]);                 /* slabs empty and runs wait for decay */
        struct timespec ts = { 0, (long)(round % 4) * 1000 * 1000 };
        nanosleep(&ts, NULL);
        for (int i = 1; i < N; i += 2)
            cr_assert_eq(((unsigned char *)b[i])[0], (unsigned char)round);
        if (round % 2)
            loam_heap_set_mode(h, LOAM_GC);  /* the switch waits for the purge too */
        loam_heap_destroy(h);
    }
}

/* Bursts of frees past the retained budget, given back by the purge thread
 * with the arena lock dropped (RUN_DECOMMITTING runs), while two threads
 * keep allocating, filling, checking and freeing in the same heap: a run
 * handed out while its pages were being given back would read as zeros. */
typedef struct {
    loam_heap_t *h;
    uint64_t seed;
    size_t bad;
} burst_arg_t;

static void *burst_worker(void *arg)
{
    burst_arg_t *a = arg;
    enum { N = 12000 };
    void **p = malloc(N * sizeof *p);
    size_t *n = malloc(N * sizeof *n);
    rng_t r = { a->seed | 1 };
    for (int round = 0; round < 12; round++) {
        for (int i = 0; i < N; i++) {
            n[i] = 256 + rng_below(&r, 3800);
            p[i] = loam_malloc(a->h, n[i]);
            if (!p[i]) {
                a->bad++;
                n[i] = 0;
                continue;
            }
            fill(p[i], n[i], (uint64_t)(uintptr_t)p[i] ^ (uint64_t)round);
        }
        for (int i = 0; i < N; i++)
            if (n[i]) {
                if (check(p[i], n[i], (uint64_t)(uintptr_t)p[i] ^ (uint64_t)round) != (size_t)-1)
                    a->bad++;
                loam_free(p[i]);
            }
    }
    free(p);
    free(n);
    return NULL;
}

Test(threads, background_decommit_while_threads_allocate, .timeout = 600)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);    /* only the budget gives back */
    cr_assert_eq(loam_option_set("retain_max", 1024 * 1024), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    uint64_t seed = (uint64_t)time(NULL);
    printf("background_decommit_while_threads_allocate: seed %llu\n", (unsigned long long)seed);
    fflush(stdout);
    burst_arg_t args[2] = { { h, seed, 0 }, { h, seed * 7919 + 1, 0 } };
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, burst_worker, &args[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(args[0].bad + args[1].bad, 0, "%zu blocks lost their contents or failed",
                 args[0].bad + args[1].bad);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    loam_heap_destroy(h);
}

/* Blocks a thread frees for another go back to the allocating thread's arena
 * as a batch of addresses (its transfer cache), and that thread's next
 * refills take them from there: statistics show them as transfer bytes, not
 * live, while they wait; contents written after they come back stay intact;
 * a trim puts them back into their slabs; and a heap made collected empties
 * the transfer cache at once. */
enum { XF_BLOCKS = 4096, XF_SIZE = 64 };
static void *xf_blocks[XF_BLOCKS];

static void *xf_free_all(void *arg)
{
    size_t *bad = arg;
    for (int i = 0; i < XF_BLOCKS; i++) {
        if (check(xf_blocks[i], XF_SIZE, (uint64_t)i) != (size_t)-1)
            (*bad)++;
        loam_free(xf_blocks[i]);
    }
    return NULL;
}

static loam_heap_t *xf_fill_transfer_cache(void)
{
    cr_assert_eq(loam_option_set("track_requested", 0), 0);     /* caches on */
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);       /* no purge empties it */
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_not_null(h);
    for (int i = 0; i < XF_BLOCKS; i++) {
        xf_blocks[i] = loam_malloc(h, XF_SIZE);
        cr_assert_not_null(xf_blocks[i]);
        fill(xf_blocks[i], XF_SIZE, (uint64_t)i);
    }
    size_t bad = 0;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, xf_free_all, &bad), 0);
    pthread_join(t, NULL);
    cr_assert_eq(bad, 0, "%zu blocks were corrupted before the other thread freed them", bad);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_gt(st.transfer_bytes, 0, "no batch reached the allocating arena's transfer cache");
    cr_assert_leq(st.transfer_bytes, 32 * 1024, "the transfer cache holds %zu bytes of one class",
                  st.transfer_bytes);
    cr_assert_eq(st.live_blocks, 0, "%zu blocks live after every block was freed", st.live_blocks);
    cr_assert_eq(st.live_bytes, 0);
    return h;
}

Test(threads, cross_thread_frees_come_back_through_the_transfer_cache, .timeout = 60)
{
    loam_heap_t *h = xf_fill_transfer_cache();
    loam_stats_t st;
    loam_heap_stats(h, &st);
    size_t waiting = st.transfer_bytes;
    /* The allocating thread's refills take them: a malloc returns a block
     * that was in the transfer cache, and writing it harms no other block. */
    static void *again[XF_BLOCKS];
    for (int i = 0; i < XF_BLOCKS; i++) {
        again[i] = loam_malloc(h, XF_SIZE);
        cr_assert_not_null(again[i]);
        fill(again[i], XF_SIZE, (uint64_t)i * 31 + 7);
    }
    loam_heap_stats(h, &st);
    cr_assert_lt(st.transfer_bytes, waiting, "refills left the transfer cache at %zu bytes",
                 st.transfer_bytes);
    cr_assert_eq(st.live_blocks, XF_BLOCKS);
    for (int i = 0; i < XF_BLOCKS; i++)
        for (int j = i + 1; j < XF_BLOCKS && j < i + 64; j++)
            cr_assert_neq(again[i], again[j], "block %p handed out twice", again[i]);
    for (int i = 0; i < XF_BLOCKS; i++) {
        cr_assert_eq(check(again[i], XF_SIZE, (uint64_t)i * 31 + 7), (size_t)-1,
                     "block %d (%p) was overwritten", i, again[i]);
        loam_free(again[i]);
    }
    /* A trim puts what waits back into the slabs, which can then empty. */
    loam_heap_trim(h);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.transfer_bytes, 0, "%zu bytes still in the transfer cache after a trim",
                 st.transfer_bytes);
    cr_assert_eq(st.cached_bytes, 0);
    cr_assert_eq(st.slab_bytes, 0, "%zu bytes of slabs kept after freeing everything and a trim",
                 st.slab_bytes);
    loam_heap_destroy(h);
}

Test(threads, a_heap_made_collected_empties_its_transfer_caches, .timeout = 60)
{
    loam_heap_t *h = xf_fill_transfer_cache();
    cr_assert_eq(loam_heap_set_mode(h, LOAM_GC), 0);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.transfer_bytes, 0, "%zu bytes still in transfer caches of a collected heap",
                 st.transfer_bytes);
    cr_assert_eq(st.live_blocks, 0);
    loam_gc_collect(h);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    loam_heap_destroy(h);
}

/* ---- cache growth: batches bigger than a cache, and the budget caches share -- */

/* 50,000 blocks of 16-256 B, freed in random order, again and again (bench's
 * batch-random): each free phase overflows the bins that the malloc phase
 * emptied, so they grow, a class at most 1 MiB and a cache 8 MiB, the
 * growth past 1 MiB drawn from a budget of 32 MiB all caches share. */
#define GB_BLOCKS 50000
#define GB_ROUNDS 8
#define GB_THREADS 8
#define GB_MIB ((size_t)1024 * 1024)
/* Blocks a cache holds before it grows: at most 128 a class, 16 classes. */
#define GB_BASE (128 * (size_t)(16 + 256) * 16 / 2)

typedef struct {
    loam_heap_t       *h;
    uint64_t           seed;
    pthread_barrier_t *held;     /* all threads hold their cached blocks */
    pthread_barrier_t *looked;   /* the main thread has read the statistics */
    bool               look;     /* read cached_bytes and the shared budget's use before
                                    exiting, into: */
    size_t             cached_seen, shared_seen;
    size_t             bad;
} gb_arg_t;

static void *gb_batches(void *p)
{
    gb_arg_t *a = p;
    rng_t r = { a->seed };
    void **blocks = malloc(GB_BLOCKS * sizeof *blocks);
    uint32_t *order = malloc(GB_BLOCKS * sizeof *order);
    for (uint32_t i = 0; i < GB_BLOCKS; i++)
        order[i] = i;
    for (uint32_t i = GB_BLOCKS - 1; i > 0; i--) {
        uint32_t j = (uint32_t)rng_below(&r, i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int round = 0; round < GB_ROUNDS; round++) {
        for (uint32_t i = 0; i < GB_BLOCKS; i++) {
            size_t n = 16 + 16 * (i % 16);
            blocks[i] = loam_malloc(a->h, n);
            if (!blocks[i]) {
                a->bad++;
                continue;
            }
            fill(blocks[i], n, (uint64_t)round << 32 | i);
        }
        for (uint32_t k = 0; k < GB_BLOCKS; k++) {
            uint32_t i = order[k];
            if (!blocks[i])
                continue;
            if (check(blocks[i], 16 + 16 * (i % 16), (uint64_t)round << 32 | i) != (size_t)-1)
                a->bad++;
            loam_free(blocks[i]);
        }
    }
    free(order);
    free(blocks);
    if (a->look) {
        loam_stats_t st;
        loam_heap_stats(a->h, &st);
        a->cached_seen = st.cached_bytes;
        a->shared_seen = tcache_shared_bytes();
    }
    if (a->held) {
        pthread_barrier_wait(a->held);
        pthread_barrier_wait(a->looked);
    }
    return NULL;
}

static loam_heap_t *gb_heap(void)
{
    cr_assert_eq(loam_option_set("track_requested", 0), 0);     /* caches on */
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);       /* no idle flush while we look */
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_not_null(h);
    return h;
}

/* Threads that run gb_batches and then hold their grown caches. */
typedef struct {
    int               n;
    pthread_barrier_t held, looked;
    gb_arg_t          a[GB_THREADS];
    pthread_t         t[GB_THREADS];
} gb_group_t;

/* n (at most GB_THREADS) threads run gb_batches on h: this returns once they
 * all hold their caches, and they exit after gb_let_go. */
static void gb_start_holding(gb_group_t *g, loam_heap_t *h, uint64_t seed, int n)
{
    g->n = n;
    pthread_barrier_init(&g->held, NULL, (unsigned)n + 1);
    pthread_barrier_init(&g->looked, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        g->a[i] = (gb_arg_t){ .h = h, .seed = seed + (uint64_t)i, .held = &g->held, .looked = &g->looked };
        cr_assert_eq(pthread_create(&g->t[i], NULL, gb_batches, &g->a[i]), 0);
    }
    pthread_barrier_wait(&g->held);
}

static void gb_let_go(gb_group_t *g)
{
    pthread_barrier_wait(&g->looked);
    for (int i = 0; i < g->n; i++) {
        pthread_join(g->t[i], NULL);
        cr_assert_eq(g->a[i].bad, 0, "thread %d: %zu blocks failed or were overwritten", i, g->a[i].bad);
    }
    pthread_barrier_destroy(&g->held);
    pthread_barrier_destroy(&g->looked);
}

Test(threads, a_cache_grows_for_batches_bigger_than_it_within_its_bound, .timeout = 120)
{
    loam_heap_t *h = gb_heap();
    gb_arg_t a = { .h = h, .seed = test_seed("a_cache_grows_for_batches") };
    gb_batches(&a);
    cr_assert_eq(a.bad, 0, "%zu blocks failed or were overwritten", a.bad);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0, "%zu blocks live after every block was freed", st.live_blocks);
    fprintf(stderr, "one thread's cache holds %zu bytes, %zu drawn from the shared budget\n",
            st.cached_bytes, tcache_shared_bytes());
    cr_assert_gt(tcache_shared_bytes(), 0, "the cache drew nothing from the shared budget");
    /* Past the 1 MiB a cache may grow on its own: the shared budget paid. */
    cr_assert_gt(st.cached_bytes, 3 * GB_MIB, "the cache holds %zu bytes after batches of 6.8 MB",
                 st.cached_bytes);
    cr_assert_leq(st.cached_bytes, 8 * GB_MIB + GB_BASE, "the cache holds %zu bytes, past its 8 MiB",
                  st.cached_bytes);
    loam_heap_destroy(h);
}

/* tcache_budget=0: no cache grows past its own 1 MiB. */
Test(threads, a_cache_grows_no_further_than_its_own_mib_with_no_budget, .timeout = 120)
{
    loam_heap_t *h = gb_heap();
    cr_assert_eq(loam_option_set("tcache_budget", 0), 0);
    gb_arg_t a = { .h = h, .seed = test_seed("a_cache_grows_no_further") };
    gb_batches(&a);
    cr_assert_eq(a.bad, 0);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(tcache_shared_bytes(), 0, "with no budget, the cache drew %zu bytes", tcache_shared_bytes());
    cr_assert_leq(st.cached_bytes, GB_MIB + GB_BASE, "with no budget, the cache holds %zu bytes",
                  st.cached_bytes);
    loam_heap_destroy(h);
}

Test(threads, caches_share_one_growth_budget_and_give_it_back, .timeout = 300)
{
    loam_heap_t *h = gb_heap();
    uint64_t seed = test_seed("caches_share_one_growth_budget");
    gb_group_t g;
    gb_start_holding(&g, h, seed, GB_THREADS);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    /* Eight caches could hold 8 MiB each; past their own 1 MiB they share
     * 32 MiB. */
    size_t shared = tcache_shared_bytes();
    size_t bound = GB_THREADS * (GB_MIB + GB_BASE) + 32 * GB_MIB;
    fprintf(stderr, "%d threads' caches hold %zu bytes, %zu of them drawn from the shared budget\n",
            GB_THREADS, st.cached_bytes, shared);
    /* Eight caches would grow 7 MiB each past their own 1 MiB; they share
     * 32 MiB. */
    cr_assert_leq(shared, 32 * GB_MIB, "%d caches drew %zu bytes from a budget of 32 MiB", GB_THREADS,
                  shared);
    cr_assert_gt(shared, 16 * GB_MIB, "%d caches that each want 7 MiB drew only %zu bytes", GB_THREADS,
                 shared);
    cr_assert_leq(st.cached_bytes, bound, "%d caches hold %zu bytes, past %zu", GB_THREADS,
                  st.cached_bytes, bound);
    gb_let_go(&g);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.cached_bytes, 0, "%zu bytes cached after every thread exited", st.cached_bytes);
    cr_assert_eq(tcache_shared_bytes(), 0, "exited threads' caches still hold %zu bytes of the budget",
                 tcache_shared_bytes());
    cr_assert_eq(st.live_blocks, 0);
    /* The exited threads gave their share back: one thread grows past its
     * own 1 MiB again. */
    gb_arg_t one = { .h = h, .seed = seed + GB_THREADS, .look = true };
    pthread_t t1;
    cr_assert_eq(pthread_create(&t1, NULL, gb_batches, &one), 0);
    pthread_join(t1, NULL);
    cr_assert_gt(one.cached_seen, 3 * GB_MIB, "after the others exited, a cache grew to %zu bytes only",
                 one.cached_seen);
    cr_assert_gt(one.shared_seen, 0);
    cr_assert_eq(tcache_shared_bytes(), 0);
    loam_heap_destroy(h);
}

/* A fork while other threads hold grown caches: in the child those caches
 * will never be used again, and their draws on the shared budget go back
 * (heap_caches_after_fork_child), so the child's own caches can grow as a
 * new process's would. Without it the child started with 4 threads' draws
 * taken (about 28 of the 32 MiB). */
Test(threads, a_fork_child_gets_back_the_budget_other_threads_drew, .timeout = 300)
{
    enum { FORK_GB_THREADS = 4 };
    loam_heap_t *h = gb_heap();
    uint64_t seed = test_seed("a_fork_child_gets_back_the_budget");
    gb_group_t g;
    gb_start_holding(&g, h, seed, FORK_GB_THREADS);
    size_t drawn = tcache_shared_bytes();
    cr_assert_gt(drawn, 16 * GB_MIB, "%d caches that each want 7 MiB drew only %zu bytes",
                 FORK_GB_THREADS, drawn);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int code = 0;
        if (tcache_shared_bytes() != 0) {
            code = 1;
        } else {
            gb_arg_t one = { .h = h, .seed = seed + FORK_GB_THREADS, .look = true };
            gb_batches(&one);            /* the child's only thread grows its cache */
            code = one.bad ? 2 : one.shared_seen == 0 ? 3 : 0;
        }
        _exit(code);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "the child died (status 0x%x)", status);
    cr_assert_neq(WEXITSTATUS(status), 1, "the child started with the other threads' draws on the budget");
    cr_assert_neq(WEXITSTATUS(status), 2, "the child's blocks failed or were overwritten");
    cr_assert_neq(WEXITSTATUS(status), 3, "the child's cache drew nothing from the budget");
    cr_assert_eq(WEXITSTATUS(status), 0);
    cr_assert_eq(tcache_shared_bytes(), drawn, "the parent's draws moved: %zu, were %zu",
                 tcache_shared_bytes(), drawn);
    gb_let_go(&g);
    cr_assert_eq(tcache_shared_bytes(), 0);
    loam_heap_destroy(h);
}

/* A cache that goes idle is asked to give its blocks back (the purge
 * thread, after decay_ms); answering, it returns to its base limits and
 * gives its draw on the shared budget back. The purge thread sleeps while
 * no arena keeps memory for decay, and a thread that ends on a free phase
 * leaves none: the cache's growth must wake it (without that, the cache
 * kept its 6.5 MB for good in one run of two). */
Test(threads, an_idle_cache_gives_its_share_of_the_budget_back, .timeout = 120)
{
    cr_assert_eq(loam_option_set("track_requested", 0), 0);     /* caches on */
    /* Long enough that no phase of the batches (50,000 mallocs from the
     * cache alone: 50 ms under ASan, more under valgrind) looks idle. */
    cr_assert_eq(loam_option_set("decay_ms", 1000), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_not_null(h);
    gb_arg_t a = { .h = h, .seed = test_seed("an_idle_cache_gives_its_share") };
    gb_batches(&a);
    cr_assert_eq(a.bad, 0);
    size_t drawn = tcache_shared_bytes();
    cr_assert_gt(drawn, 0, "the cache drew nothing from the shared budget");
    /* Idle for a while (its slow paths stop): the purge thread asks the
     * cache to flush, and the next free answers. */
    size_t left = drawn;
    for (int i = 0; i < 1000 && left; i++) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        loam_free(loam_malloc(h, 4000));
        left = tcache_shared_bytes();
    }
    cr_assert_eq(left, 0, "an idle cache kept %zu of its %zu bytes of the shared budget for 10 s", left,
                 drawn);
    /* Its bins are back in their first slots: the grown arrays (8,192
     * slots for the small classes) are gone. */
    tcache_t *tc = loam_tls_cache[h->alloc_slot];
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        cr_assert_leq(tc->info[c].cap, 128, "class %u kept %u slots after the idle flush", c,
                      tc->info[c].cap);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_lt(st.cached_bytes, GB_MIB, "the idle cache still holds %zu bytes", st.cached_bytes);
    loam_heap_destroy(h);
}
