/* realloc growth to 64 MiB: by doubling, and by small steps. */
#include "bench.h"

#include <stdlib.h>

#define REALLOC_TOP (64 * MiB)

/* Grow one block from its first size to REALLOC_TOP, next size given by
 * grow(). At each step: check that the old contents moved with the block
 * (the marks at its first and last byte), write the new part (one byte per
 * page), mark the new last byte. Returns bad checks; counts reallocs. */
static long grow_block(size_t first, size_t (*grow)(size_t, size_t), size_t arg,
                       long *reallocs, uint64_t *sum)
{
    long bad = 0;
    size_t n = first;
    unsigned char *p = malloc(n);
    if (!p)
        bench_die("malloc");
    bench_touch(p, n, 1);
    p[0] = 0xA5;
    p[n - 1] = (unsigned char)n;
    while (n < REALLOC_TOP) {
        size_t m = grow(n, arg);
        if (m > REALLOC_TOP)
            m = REALLOC_TOP;
        unsigned char *q = realloc(p, m);
        if (!q)
            bench_die("realloc");
        bad += q[0] != 0xA5 || q[n - 1] != (unsigned char)n;
        bench_touch(q + n, m - n, 2);
        q[m - 1] = (unsigned char)m;
        *sum += q[n - 1];
        (*reallocs)++;
        p = q;
        n = m;
    }
    bad += p[0] != 0xA5;
    free(p);
    return bad;
}

static size_t double_it(size_t n, size_t arg)
{
    (void)arg;
    return n * 2;
}

static size_t add_step(size_t n, size_t step)
{
    return n + step;
}

int wl_realloc_double(const bench_opts_t *o)
{
    long reps = bench_scaled(o, 12);
    long reallocs = 0, bad = 0;
    uint64_t sum = 0;
    double t0 = bench_now();
    for (long r = 0; r < reps; r++)
        bad += grow_block(16, double_it, 0, &reallocs, &sum);
    double t = bench_now() - t0;
    bench_begin("realloc-double", o);
    bench_kv_long("ops", reallocs);
    bench_kv_long("top_bytes", (long long)REALLOC_TOP);
    bench_kv_double("time_s", t);
    bench_kv_double("ms_per_growth", t * 1e3 / (double)reps);
    return bench_end(sum, bad);
}

/* 64 B at a time, as a string builder appending short pieces: a million
 * reallocs per growth. Allocators that keep slack at the end of big blocks
 * or grow them in place (mremap) do this cheaply; one that copied the whole
 * block every time would not finish. --n changes the step. */
#define REALLOC_STEP 64

int wl_realloc_step(const bench_opts_t *o)
{
    long reps = bench_scaled(o, 3);
    size_t step = o->n > 0 ? (size_t)o->n : REALLOC_STEP;
    long reallocs = 0, bad = 0;
    uint64_t sum = 0;
    double t0 = bench_now();
    for (long r = 0; r < reps; r++)
        bad += grow_block(step, add_step, step, &reallocs, &sum);
    double t = bench_now() - t0;
    bench_begin("realloc-step", o);
    bench_kv_long("ops", reallocs);
    bench_kv_long("step_bytes", (long long)step);
    bench_kv_long("top_bytes", (long long)REALLOC_TOP);
    bench_kv_double("time_s", t);
    bench_kv_double("ms_per_growth", t * 1e3 / (double)reps);
    return bench_end(sum, bad);
}
