/* Speed workloads on one thread: pair, batch, batch-random, churn-512,
 * churn-4k, large. */
#include "bench.h"

#include <stdlib.h>

/* A block of a workload's live set: where, its size, its stamp. */
typedef struct { void *p; size_t n; uint64_t tag; } slot_t;

/* ---- pair: the fast path, nothing else live ------------------------------ */
int wl_pair(const bench_opts_t *o)
{
    long n = bench_scaled(o, 40000000);
    uint64_t sum = 0;
    long bad = 0;
    double t0 = bench_now();
    for (long i = 0; i < n; i++) {
        unsigned char *p = malloc(64);
        if (!p)
            bench_die("malloc");
        bench_stamp(p, 64, (uint64_t)i);
        bench_escape(p);
        bad += !bench_check(p, 64, (uint64_t)i);
        sum += p[63];
        free(p);
    }
    double t = bench_now() - t0;
    bench_begin("pair", o);
    bench_kv_long("ops", n);
    bench_kv_double("time_s", t);
    bench_kv_double("ns_per_op", t * 1e9 / (double)n);
    return bench_end(sum, bad);
}

/* ---- batch: 1000 mallocs, then 1000 frees in allocation order ------------ */
#define BATCH 1000
int wl_batch(const bench_opts_t *o)
{
    long rounds = bench_scaled(o, 30000);
    void *slot[BATCH];
    uint64_t sum = 0;
    long bad = 0;
    double t0 = bench_now();
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < BATCH; i++) {
            void *p = malloc(64);
            if (!p)
                bench_die("malloc");
            bench_stamp(p, 64, (uint64_t)(r + i));
            slot[i] = p;
        }
        bench_escape(slot);
        for (int i = 0; i < BATCH; i++) {
            bad += !bench_check(slot[i], 64, (uint64_t)(r + i));
            sum += ((unsigned char *)slot[i])[0];
            free(slot[i]);
        }
    }
    double t = bench_now() - t0;
    bench_begin("batch", o);
    bench_kv_long("ops", rounds * BATCH);
    bench_kv_double("time_s", t);
    bench_kv_double("ns_per_op", t * 1e9 / (double)(rounds * BATCH));
    return bench_end(sum, bad);
}

/* ---- batch-random: 50,000 mixed sizes, then freed in a random order ------
 * A program that builds a big structure (a hash table, a tree) and later
 * frees all of it in an order unrelated to the allocation order (walking the
 * buckets or the tree), then builds it again. Unlike batch, the frees land
 * all over the size classes' pages, and the batch is far beyond any thread
 * cache. The order is one permutation, drawn before the timed part. */
#define BATCH_RANDOM 50000
int wl_batch_random(const bench_opts_t *o)
{
    long rounds = bench_scaled(o, 8000000) / BATCH_RANDOM;
    if (rounds < 1)
        rounds = 1;
    bench_rng_t rng = { o->seed };
    slot_t *s = bench_map(sizeof(slot_t) * BATCH_RANDOM);
    uint32_t *order = bench_map(sizeof(uint32_t) * BATCH_RANDOM);
    for (uint32_t i = 0; i < BATCH_RANDOM; i++)
        order[i] = i;
    for (uint32_t i = BATCH_RANDOM - 1; i > 0; i--) {      /* Fisher-Yates */
        uint32_t j = (uint32_t)(bench_rand(&rng) % (uint64_t)(i + 1));
        uint32_t tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    uint64_t sum = 0;
    long bad = 0;
    double t0 = bench_now();
    for (long r = 0; r < rounds; r++) {
        for (long i = 0; i < BATCH_RANDOM; i++) {
            slot_t *e = &s[i];
            e->n = bench_range(&rng, 16, 256);
            e->tag = (uint64_t)(r * BATCH_RANDOM + i);
            e->p = malloc(e->n);
            if (!e->p)
                bench_die("malloc");
            bench_stamp(e->p, e->n, e->tag);
        }
        bench_escape(s);
        for (long i = 0; i < BATCH_RANDOM; i++) {
            slot_t *e = &s[order[i]];
            bad += !bench_check(e->p, e->n, e->tag);
            sum += ((unsigned char *)e->p)[0];
            free(e->p);
        }
    }
    double t = bench_now() - t0;
    bench_unmap(order, sizeof(uint32_t) * BATCH_RANDOM);
    bench_unmap(s, sizeof(slot_t) * BATCH_RANDOM);
    bench_begin("batch-random", o);
    bench_kv_long("ops", rounds * BATCH_RANDOM);
    bench_kv_long("batch", BATCH_RANDOM);
    bench_kv_double("time_s", t);
    bench_kv_double("ns_per_op", t * 1e9 / (double)(rounds * BATCH_RANDOM));
    return bench_end(sum, bad);
}

/* ---- churn: replace a random block of a live set with a new random size -- */

long bench_churn(bench_rng_t *rng, long ops, size_t lo, size_t hi, uint64_t *sum)
{
    slot_t *s = bench_map(sizeof(slot_t) * CHURN_SLOTS);
    long bad = 0;
    for (size_t i = 0; i < CHURN_SLOTS; i++) {
        s[i].n = bench_range(rng, lo, hi);
        s[i].tag = bench_rand(rng);
        s[i].p = malloc(s[i].n);
        if (!s[i].p)
            bench_die("malloc");
        bench_stamp(s[i].p, s[i].n, s[i].tag);
    }
    for (long k = 0; k < ops; k++) {
        uint64_t r = bench_rand(rng);
        slot_t *e = &s[r & (CHURN_SLOTS - 1)];
        bad += !bench_check(e->p, e->n, e->tag);
        *sum += ((unsigned char *)e->p)[0];
        free(e->p);
        e->n = lo + (size_t)((r >> 20) % (hi - lo + 1));
        e->tag = r >> 8;
        e->p = malloc(e->n);
        if (!e->p)
            bench_die("malloc");
        bench_stamp(e->p, e->n, e->tag);
    }
    for (size_t i = 0; i < CHURN_SLOTS; i++) {
        bad += !bench_check(s[i].p, s[i].n, s[i].tag);
        free(s[i].p);
    }
    bench_unmap(s, sizeof(slot_t) * CHURN_SLOTS);
    return bad;
}

static int churn(const bench_opts_t *o, const char *name, size_t lo, size_t hi, long base)
{
    long ops = bench_scaled(o, base);
    bench_rng_t rng = { o->seed };
    uint64_t sum = 0;
    double t0 = bench_now();
    long bad = bench_churn(&rng, ops, lo, hi, &sum);
    double t = bench_now() - t0;
    bench_begin(name, o);
    bench_kv_long("ops", ops);
    bench_kv_long("live_blocks", CHURN_SLOTS);
    bench_kv_double("time_s", t);
    bench_kv_double("ns_per_op", t * 1e9 / (double)ops);
    return bench_end(sum, bad);
}

int wl_churn_512(const bench_opts_t *o)
{
    return churn(o, "churn-512", 8, 512, CHURN_512_OPS);
}

int wl_churn_4k(const bench_opts_t *o)
{
    return churn(o, "churn-4k", 8, 4096, CHURN_4K_OPS);
}

/* ---- large: big blocks that are really used (every page written) --------- */
#define LARGE_SLOTS 16
int wl_large(const bench_opts_t *o)
{
    long ops = bench_scaled(o, 16000);
    bench_rng_t rng = { o->seed };
    slot_t s[LARGE_SLOTS] = { { 0 } };
    uint64_t sum = 0;
    long bad = 0;
    size_t bytes = 0;
    double t0 = bench_now();
    for (long k = 0; k < ops + LARGE_SLOTS; k++) {
        slot_t *e = &s[k < LARGE_SLOTS ? k : (long)(bench_rand(&rng) % LARGE_SLOTS)];
        if (e->p) {
            bad += !bench_check(e->p, e->n, e->tag);
            free(e->p);
        }
        e->n = bench_log_range(&rng, 64 * KiB, 4 * MiB);
        e->tag = bench_rand(&rng);
        e->p = malloc(e->n);
        if (!e->p)
            bench_die("malloc");
        bytes += e->n;
        bench_touch(e->p, e->n, (unsigned char)k);
        bench_stamp(e->p, e->n, e->tag);
        sum += e->tag & 0xff;
    }
    for (int i = 0; i < LARGE_SLOTS; i++) {
        bad += !bench_check(s[i].p, s[i].n, s[i].tag);
        free(s[i].p);
    }
    double t = bench_now() - t0;
    bench_begin("large", o);
    bench_kv_long("ops", ops);
    bench_kv_long("bytes", (long long)bytes);
    bench_kv_double("time_s", t);
    bench_kv_double("us_per_op", t * 1e6 / (double)ops);
    return bench_end(sum, bad);
}
