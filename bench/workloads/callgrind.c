/* Small workloads for counting instructions under callgrind.
 *
 * The runner runs each twice, with --n N and --n 2N, and divides the
 * difference of the two instruction totals by N: startup, the warm-up and
 * everything else that does not grow with N cancels out, leaving the cost
 * of one malloc(64)+free pair (plus the two or three instructions of the
 * loop around it).
 *
 *   cg-steady  1000 blocks of 64 B stay live (the class is in use), then
 *              N times: p = malloc(64); free(p)   — the allocator's fast path
 *   cg-batch   N/1000 rounds of 1000 x malloc(64) then 1000 frees, so the
 *              per-thread caches overflow and refill as they would in a
 *              program that builds and drops a structure
 */
#include "bench.h"

#include <stdlib.h>

#define CG_LIVE 1000
#define CG_BATCH 1000

static void *live[CG_LIVE];

static void make_live(void)
{
    for (int i = 0; i < CG_LIVE; i++) {
        live[i] = malloc(64);
        if (!live[i])
            bench_die("malloc");
        bench_escape(live[i]);
    }
}

static void drop_live(void)
{
    for (int i = 0; i < CG_LIVE; i++)
        free(live[i]);
}

static void warm_up(void)
{
    for (int i = 0; i < 10000; i++) {
        void *p = malloc(64);
        bench_escape(p);
        free(p);
    }
}

int wl_cg_steady(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 100000;
    make_live();
    warm_up();
    for (long i = 0; i < n; i++) {
        void *p = malloc(64);
        bench_escape(p);
        free(p);
    }
    drop_live();
    bench_begin("cg-steady", o);
    bench_kv_long("pairs", n);
    return bench_end(0, 0);
}

int wl_cg_batch(const bench_opts_t *o)
{
    long n = o->n > 0 ? o->n : 100000;
    long rounds = (n + CG_BATCH - 1) / CG_BATCH;
    void *b[CG_BATCH];
    make_live();
    warm_up();
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < CG_BATCH; i++) {
            b[i] = malloc(64);
            bench_escape(b[i]);
        }
        for (int i = 0; i < CG_BATCH; i++)
            free(b[i]);
    }
    drop_live();
    bench_begin("cg-batch", o);
    bench_kv_long("pairs", rounds * CG_BATCH);
    return bench_end(0, 0);
}
