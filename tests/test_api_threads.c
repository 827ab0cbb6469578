/* The allocation API from several threads: blocks freed by a thread other
 * than the one that allocated them, producer/consumer hand-off, thread exit
 * flushing the thread's caches, heaps destroyed while other threads have used
 * them, and statistics that stay exact through all of it. */
#define _GNU_SOURCE
#include "harness.h"
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loam.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static uint64_t mix(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dull;
    x ^= x >> 33;
    return x;
}

/* Fill the first and last words (and every 512th byte) from the address and size. */
static void stamp(void *p, size_t n)
{
    uint64_t v = mix((uintptr_t)p ^ n);
    unsigned char *b = p;
    size_t w = n < 8 ? n : 8;
    memcpy(b, &v, w);
    if (n >= 16)
        memcpy(b + n - 8, &v, 8);
    for (size_t i = 512; i + 16 <= n; i += 512)
        b[i] = (unsigned char)(v >> (i & 31));
}

static int stamped(const void *p, size_t n)
{
    uint64_t v = mix((uintptr_t)p ^ n), have = 0;
    const unsigned char *b = p;
    size_t w = n < 8 ? n : 8;
    memcpy(&have, b, w);
    if (w < 8)
        v &= (1ull << (8 * w)) - 1;
    if (have != v)
        return 0;
    v = mix((uintptr_t)p ^ n);
    if (n >= 16) {
        memcpy(&have, b + n - 8, 8);
        if (have != v)
            return 0;
    }
    for (size_t i = 512; i + 16 <= n; i += 512)
        if (b[i] != (unsigned char)(v >> (i & 31)))
            return 0;
    return 1;
}

static size_t size_of(unsigned i)
{
    unsigned r = (unsigned)(mix(i) % 1000);
    if (r < 900)
        return 1 + mix(i + 7) % 1024;
    if (r < 995)
        return 1 + mix(i + 7) % (64 * KiB);
    return 128 * KiB + mix(i + 7) % MiB;
}

static void assert_empty(loam_heap_t *h, const char *when)
{
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0, "%s: live_blocks %zu", when, st.live_blocks);
    cr_assert_eq(st.live_bytes, 0, "%s: live_bytes %zu", when, st.live_bytes);
    cr_assert_eq(st.requested_bytes, 0, "%s: requested_bytes %zu", when, st.requested_bytes);
    cr_assert_eq(st.large_count, 0, "%s: large_count %zu", when, st.large_count);
}

/* ---- a block freed by another thread ---------------------------------------- */

typedef struct {
    loam_heap_t *h;
    void **blocks;
    size_t *sizes;
    unsigned n;
    int bad;
} batch_t;

static void *alloc_batch(void *arg)
{
    batch_t *b = arg;
    for (unsigned i = 0; i < b->n; i++) {
        b->sizes[i] = size_of(i);
        b->blocks[i] = loam_malloc(b->h, b->sizes[i]);
        if (!b->blocks[i]) {
            b->bad++;
            continue;
        }
        stamp(b->blocks[i], b->sizes[i]);
    }
    return NULL;
}

static void *free_batch(void *arg)
{
    batch_t *b = arg;
    for (unsigned i = 0; i < b->n; i++) {
        if (!b->blocks[i])
            continue;
        if (loam_heap_of(b->blocks[i]) != b->h || !stamped(b->blocks[i], b->sizes[i]))
            b->bad++;
        loam_free(b->blocks[i]);
    }
    return NULL;
}

Test(threads, free_by_another_thread)
{
    enum { N = 20000 };
    loam_heap_t *h = loam_heap_new(NULL);
    batch_t b = { h, calloc(N, sizeof(void *)), calloc(N, sizeof(size_t)), N, 0 };
    for (int round = 0; round < 5; round++) {
        pthread_t t;
        pthread_create(&t, NULL, alloc_batch, &b);
        pthread_join(t, NULL);               /* the allocating thread is gone */
        cr_assert_eq(b.bad, 0);
        loam_stats_t st;
        loam_heap_stats(h, &st);
        cr_assert_eq(st.live_blocks, N);
        pthread_create(&t, NULL, free_batch, &b);
        pthread_join(t, NULL);
        cr_assert_eq(b.bad, 0, "blocks changed between threads");
        assert_empty(h, "after another thread freed everything");
    }
    /* main thread frees what another thread allocated, while it is alive too */
    alloc_batch(&b);
    pthread_t t;
    pthread_create(&t, NULL, free_batch, &b);
    pthread_join(t, NULL);
    assert_empty(h, "after a mixed round");
    free(b.blocks);
    free(b.sizes);
    loam_heap_destroy(h);
}

/* ---- producer / consumer ---------------------------------------------------- */

enum { RING = 1024 };

typedef struct {
    loam_heap_t *h;
    pthread_mutex_t mu;
    pthread_cond_t not_full, not_empty;
    void *ring[RING];
    size_t ring_size[RING];
    unsigned head, tail, count;
    unsigned per_producer;
    int producers_left;
    int bad;
} pc_t;

static void *producer(void *arg)
{
    pc_t *pc = arg;
    for (unsigned i = 0; i < pc->per_producer; i++) {
        size_t n = size_of(i * 31 + (unsigned)(uintptr_t)pthread_self());
        void *p = loam_malloc(pc->h, n);
        if (!p) {
            __atomic_add_fetch(&pc->bad, 1, __ATOMIC_RELAXED);
            continue;
        }
        stamp(p, n);
        pthread_mutex_lock(&pc->mu);
        while (pc->count == RING)
            pthread_cond_wait(&pc->not_full, &pc->mu);
        pc->ring[pc->tail] = p;
        pc->ring_size[pc->tail] = n;
        pc->tail = (pc->tail + 1) % RING;
        pc->count++;
        pthread_cond_signal(&pc->not_empty);
        pthread_mutex_unlock(&pc->mu);
    }
    pthread_mutex_lock(&pc->mu);
    pc->producers_left--;
    pthread_cond_broadcast(&pc->not_empty);
    pthread_mutex_unlock(&pc->mu);
    return NULL;
}

static void *consumer(void *arg)
{
    pc_t *pc = arg;
    for (;;) {
        pthread_mutex_lock(&pc->mu);
        while (pc->count == 0 && pc->producers_left > 0)
            pthread_cond_wait(&pc->not_empty, &pc->mu);
        if (pc->count == 0) {
            pthread_mutex_unlock(&pc->mu);
            return NULL;
        }
        void *p = pc->ring[pc->head];
        size_t n = pc->ring_size[pc->head];
        pc->head = (pc->head + 1) % RING;
        pc->count--;
        pthread_cond_signal(&pc->not_full);
        pthread_mutex_unlock(&pc->mu);
        if (!stamped(p, n) || loam_heap_of(p) != pc->h)
            __atomic_add_fetch(&pc->bad, 1, __ATOMIC_RELAXED);
        loam_free(p);
    }
}

static void producer_consumer(loam_heap_t *h, int np, int nc, unsigned per)
{
    static pc_t pc;
    memset(&pc, 0, sizeof pc);
    pc.h = h;
    pthread_mutex_init(&pc.mu, NULL);
    pthread_cond_init(&pc.not_full, NULL);
    pthread_cond_init(&pc.not_empty, NULL);
    pc.per_producer = per;
    pc.producers_left = np;
    pthread_t t[16];
    for (int i = 0; i < np; i++)
        pthread_create(&t[i], NULL, producer, &pc);
    for (int i = 0; i < nc; i++)
        pthread_create(&t[np + i], NULL, consumer, &pc);
    for (int i = 0; i < np + nc; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(pc.bad, 0, "%d blocks arrived damaged or failed", pc.bad);
}

Test(threads, producer_consumer, .timeout = 120)
{
    loam_heap_t *h = loam_heap_new(NULL);
    producer_consumer(h, 2, 2, 100000);
    assert_empty(h, "after producer/consumer");
    loam_stats_t st;
    loam_heap_stats(h, &st);
    /* never more than RING blocks were live at once: memory must not pile up
     * in the consumers' caches */
    cr_assert_leq(st.committed_bytes, 256 * MiB, "committed %zu MiB for a live set of %d blocks",
                  st.committed_bytes / MiB, RING);
    loam_heap_destroy(h);
}

Test(threads, producer_consumer_default_heap, .timeout = 120)
{
    loam_heap_t *d = loam_heap_default();
    loam_stats_t s0;
    loam_heap_stats(d, &s0);
    producer_consumer(d, 1, 3, 100000);
    loam_stats_t st;
    loam_heap_stats(d, &st);
    cr_assert_eq(st.live_blocks, s0.live_blocks);
    cr_assert_eq(st.live_bytes, s0.live_bytes);
}

/* ---- thread exit ----------------------------------------------------------- */

static void *churn_and_exit(void *arg)
{
    loam_heap_t *h = arg;
    void *p[300];
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < 300; i++)
            p[i] = loam_malloc(h, (size_t)(16 + (i % 40) * 24));
        for (int i = 0; i < 300; i++)
            loam_free(p[i]);
    }
    return NULL;
}

Test(threads, exit_flushes_thread_caches)
{
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < 20; i++) {
        pthread_t t;
        pthread_create(&t, NULL, churn_and_exit, h);
        pthread_join(t, NULL);
        loam_stats_t st;
        loam_heap_stats(h, &st);
        cr_assert_eq(st.cached_bytes, 0, "thread %d exited but %zu bytes stay in thread caches", i,
                     st.cached_bytes);
        cr_assert_eq(st.live_blocks, 0);
    }
    loam_heap_destroy(h);
}

Test(threads, many_short_lived_threads, .timeout = 120)
{
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < 500; i++) {
        pthread_t t[2];
        pthread_create(&t[0], NULL, churn_and_exit, h);
        pthread_create(&t[1], NULL, churn_and_exit, loam_heap_default());
        pthread_join(t[0], NULL);
        pthread_join(t[1], NULL);
    }
    assert_empty(h, "after 1000 threads");
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_leq(st.committed_bytes, 16 * MiB, "committed %zu MiB after 500 short threads",
                  st.committed_bytes / MiB);
    loam_heap_destroy(h);
}

/* ---- heaps and threads ------------------------------------------------------- */

typedef struct {
    loam_heap_t *h;
    pthread_barrier_t *used, *destroyed;
    int bad;
} user_t;

static void *use_then_outlive(void *arg)
{
    user_t *u = arg;
    void *p[100];
    for (int i = 0; i < 100; i++)
        p[i] = loam_malloc(u->h, 64);
    for (int i = 0; i < 100; i++)
        loam_free(p[i]);                  /* these sit in this thread's cache of h */
    pthread_barrier_wait(u->used);
    pthread_barrier_wait(u->destroyed);   /* main destroyed h meanwhile */
    /* keep allocating from other heaps, then exit: must not touch the dead heap */
    loam_heap_t *other = loam_heap_new(NULL);
    for (int i = 0; i < 1000; i++) {
        void *q = loam_malloc(other, 64);
        if (!q || loam_heap_of(q) != other)
            u->bad++;
        loam_free(q);
    }
    loam_heap_destroy(other);
    return NULL;
}

Test(threads, destroy_heap_another_thread_has_used)
{
    for (int round = 0; round < 20; round++) {
        pthread_barrier_t used, destroyed;
        pthread_barrier_init(&used, NULL, 2);
        pthread_barrier_init(&destroyed, NULL, 2);
        user_t u = { loam_heap_new(NULL), &used, &destroyed, 0 };
        pthread_t t;
        pthread_create(&t, NULL, use_then_outlive, &u);
        pthread_barrier_wait(&used);
        loam_heap_destroy(u.h);
        pthread_barrier_wait(&destroyed);
        pthread_join(t, NULL);
        cr_assert_eq(u.bad, 0);
        pthread_barrier_destroy(&used);
        pthread_barrier_destroy(&destroyed);
    }
}

static void *own_heap_worker(void *arg)
{
    int *bad = arg;
    loam_heap_t *h = loam_heap_new(NULL);
    enum { N = 2000 };
    void *p[N];
    size_t n[N];
    for (unsigned r = 0; r < 50; r++) {
        for (unsigned i = 0; i < N; i++) {
            n[i] = size_of(r * N + i);
            p[i] = loam_malloc(h, n[i]);
            if (!p[i]) {
                (*bad)++;
                return NULL;
            }
            stamp(p[i], n[i]);
        }
        for (unsigned i = 0; i < N; i++) {
            if (!stamped(p[i], n[i]) || loam_heap_of(p[i]) != h)
                (*bad)++;
            loam_free(p[i]);
        }
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    if (st.live_blocks || st.live_bytes)
        (*bad)++;
    loam_heap_destroy(h);
    return NULL;
}

Test(threads, threads_with_their_own_heaps, .timeout = 120)
{
    enum { T = 4 };
    pthread_t t[T];
    int bad[T] = { 0 };
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, own_heap_worker, &bad[i]);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < T; i++)
        cr_assert_eq(bad[i], 0, "thread %d saw %d damaged blocks or wrong stats", i, bad[i]);
}

static loam_heap_t *shared_heap;

static void *shared_worker(void *arg)
{
    int *bad = arg;
    enum { N = 512 };
    void *p[N] = { 0 };
    size_t n[N];
    uint64_t x = (uintptr_t)arg;
    for (unsigned op = 0; op < 300000; op++) {
        x = mix(x + op);
        unsigned i = (unsigned)(x % N);
        if (p[i]) {
            if (!stamped(p[i], n[i]))
                (*bad)++;
            loam_free(p[i]);
            p[i] = NULL;
        } else {
            n[i] = size_of((unsigned)(x >> 20));
            p[i] = (x & 0x100) ? loam_calloc(shared_heap, 1, n[i]) : loam_malloc(shared_heap, n[i]);
            if (!p[i]) {
                (*bad)++;
                continue;
            }
            stamp(p[i], n[i]);
        }
    }
    for (unsigned i = 0; i < N; i++)
        if (p[i]) {
            if (!stamped(p[i], n[i]))
                (*bad)++;
            loam_free(p[i]);
        }
    return NULL;
}

Test(threads, one_heap_shared_by_four_threads, .timeout = 120)
{
    enum { T = 4 };
    shared_heap = loam_heap_new(NULL);
    pthread_t t[T];
    int bad[T] = { 0 };
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, shared_worker, &bad[i]);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < T; i++)
        cr_assert_eq(bad[i], 0, "thread %d saw %d damaged blocks", i, bad[i]);
    assert_empty(shared_heap, "after four threads freed everything");
    loam_heap_destroy(shared_heap);
}
