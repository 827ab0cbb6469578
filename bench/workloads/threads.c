/* Multi-threaded workloads (pthreads, plain malloc/free):
 *   prodcons  one thread allocates, another frees (cross-thread frees)
 *   larson    Larson-like: each round new threads replace the blocks that
 *             the previous round's (now dead) threads allocated
 *   churn2    two threads, each churn-512 on its own live set (scaling)
 */
#include "bench.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

static void spin_pause(unsigned *spins)
{
    if (++*spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __asm__ volatile("pause");
#endif
    } else {
        *spins = 0;
        sched_yield();
    }
}

/* ---- prodcons: single-producer single-consumer ring --------------------- */
#define RING 4096                     /* power of two */
typedef struct ring {
    _Alignas(64) atomic_size_t head;  /* written by the producer */
    _Alignas(64) atomic_size_t tail;  /* written by the consumer */
    _Alignas(64) struct { void *p; size_t n; } slot[RING];
    long items;
    uint64_t seed;
} ring_t;

static void *producer(void *arg)
{
    ring_t *r = arg;
    bench_rng_t rng = { r->seed };
    size_t head = 0;
    for (long i = 0; i < r->items; i++) {
        size_t n = bench_range(&rng, 16, 256);
        void *p = malloc(n);
        if (!p)
            bench_die("malloc");
        bench_stamp(p, n, (uint64_t)i);
        unsigned spins = 0;
        while (head - atomic_load_explicit(&r->tail, memory_order_acquire) == RING)
            spin_pause(&spins);
        r->slot[head & (RING - 1)].p = p;
        r->slot[head & (RING - 1)].n = n;
        atomic_store_explicit(&r->head, ++head, memory_order_release);
    }
    return NULL;
}

int wl_prodcons(const bench_opts_t *o)
{
    ring_t *r = bench_map(sizeof *r);
    r->items = bench_scaled(o, 5000000);
    r->seed = o->seed;
    long bad = 0;
    uint64_t sum = 0;
    pthread_t th;
    double t0 = bench_now();
    if (pthread_create(&th, NULL, producer, r))
        bench_die("pthread_create");
    size_t tail = 0;
    for (long i = 0; i < r->items; i++) {
        unsigned spins = 0;
        while (atomic_load_explicit(&r->head, memory_order_acquire) == tail)
            spin_pause(&spins);
        void *p = r->slot[tail & (RING - 1)].p;
        size_t n = r->slot[tail & (RING - 1)].n;
        atomic_store_explicit(&r->tail, ++tail, memory_order_release);
        bad += !bench_check(p, n, (uint64_t)i);
        sum += ((unsigned char *)p)[0];
        free(p);
    }
    pthread_join(th, NULL);
    double t = bench_now() - t0;
    bench_begin("prodcons", o);
    bench_kv_long("ops", r->items);
    bench_kv_long("threads", 2);
    bench_kv_double("time_s", t);
    bench_kv_double("ns_per_op", t * 1e9 / (double)r->items);
    bench_unmap(r, sizeof *r);
    return bench_end(sum, bad);
}

/* ---- larson ------------------------------------------------------------- */
#define LARSON_THREADS 2
#define LARSON_SLOTS 8192             /* power of two */
typedef struct { void *p; size_t n; uint64_t tag; } lslot_t;
typedef struct {
    lslot_t *s;
    long ops;
    uint64_t seed;
    uint64_t sum;
    long bad;
} larson_job_t;

static void *larson_worker(void *arg)
{
    larson_job_t *j = arg;
    bench_rng_t rng = { j->seed };
    for (long k = 0; k < j->ops; k++) {
        uint64_t r = bench_rand(&rng);
        lslot_t *e = &j->s[r & (LARSON_SLOTS - 1)];
        j->bad += !bench_check(e->p, e->n, e->tag);
        j->sum += ((unsigned char *)e->p)[0];
        free(e->p);
        e->n = 16 + (size_t)((r >> 24) % (1024 - 16 + 1));
        e->tag = r >> 8;
        e->p = malloc(e->n);
        if (!e->p)
            bench_die("malloc");
        bench_stamp(e->p, e->n, e->tag);
    }
    return NULL;
}

int wl_larson(const bench_opts_t *o)
{
    long rounds = bench_scaled(o, 80);
    long ops = 50000;                 /* per thread per round */
    bench_rng_t rng = { o->seed };
    size_t bytes = sizeof(lslot_t) * LARSON_SLOTS * LARSON_THREADS;
    lslot_t *all = bench_map(bytes);
    for (long i = 0; i < LARSON_SLOTS * LARSON_THREADS; i++) {
        all[i].n = bench_range(&rng, 16, 1024);
        all[i].tag = bench_rand(&rng);
        all[i].p = malloc(all[i].n);
        if (!all[i].p)
            bench_die("malloc");
        bench_stamp(all[i].p, all[i].n, all[i].tag);
    }
    long bad = 0;
    uint64_t sum = 0;
    double t0 = bench_now();
    for (long r = 0; r < rounds; r++) {
        pthread_t th[LARSON_THREADS];
        larson_job_t job[LARSON_THREADS];
        for (int t = 0; t < LARSON_THREADS; t++) {
            /* thread t of this round takes over the set that thread t-1 of
             * the previous round filled: frees blocks of a dead thread */
            job[t] = (larson_job_t){
                .s = all + (size_t)((t + r) % LARSON_THREADS) * LARSON_SLOTS,
                .ops = ops, .seed = o->seed + (uint64_t)(r * LARSON_THREADS + t + 1),
            };
            if (pthread_create(&th[t], NULL, larson_worker, &job[t]))
                bench_die("pthread_create");
        }
        for (int t = 0; t < LARSON_THREADS; t++) {
            pthread_join(th[t], NULL);
            sum += job[t].sum;
            bad += job[t].bad;
        }
    }
    double t = bench_now() - t0;
    for (long i = 0; i < LARSON_SLOTS * LARSON_THREADS; i++) {
        bad += !bench_check(all[i].p, all[i].n, all[i].tag);
        free(all[i].p);
    }
    bench_unmap(all, bytes);
    long total = rounds * ops * LARSON_THREADS;
    bench_begin("larson", o);
    bench_kv_long("ops", total);
    bench_kv_long("threads", LARSON_THREADS);
    bench_kv_long("rounds", rounds);
    bench_kv_double("time_s", t);
    bench_kv_double("ns_per_op", t * 1e9 / (double)total);
    return bench_end(sum, bad);
}

/* ---- churn2 ------------------------------------------------------------- */
typedef struct {
    long ops;
    uint64_t seed;
    uint64_t sum;
    long bad;
} churn_job_t;

static void *churn_worker(void *arg)
{
    churn_job_t *j = arg;
    bench_rng_t rng = { j->seed };
    j->bad = bench_churn(&rng, j->ops, 8, 512, &j->sum);
    return NULL;
}

int wl_churn2(const bench_opts_t *o)
{
    /* each thread does as much as churn-512 does alone: with two free cores
     * the time should match churn-512's */
    churn_job_t job[2];
    pthread_t th[2];
    double t0 = bench_now();
    for (int t = 0; t < 2; t++) {
        job[t] = (churn_job_t){ .ops = bench_scaled(o, CHURN_512_OPS),
                                .seed = o->seed + (uint64_t)t * 7919 };
        if (pthread_create(&th[t], NULL, churn_worker, &job[t]))
            bench_die("pthread_create");
    }
    long bad = 0;
    uint64_t sum = 0;
    for (int t = 0; t < 2; t++) {
        pthread_join(th[t], NULL);
        bad += job[t].bad;
        sum += job[t].sum;
    }
    double t = bench_now() - t0;
    bench_begin("churn2", o);
    bench_kv_long("ops", job[0].ops * 2);
    bench_kv_long("threads", 2);
    bench_kv_double("time_s", t);
    bench_kv_double("ns_per_op", t * 1e9 / (double)(job[0].ops * 2));
    return bench_end(sum, bad);
}
