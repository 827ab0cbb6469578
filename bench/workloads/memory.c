/* Memory workloads: frag (fragmentation) and freeall (RSS after freeing). */
#include "bench.h"

#include <stdlib.h>
#include <time.h>

/* ---- frag ----------------------------------------------------------------
 * 1,000,000 x 64 B; free every other one; then 500,000 x 128 B. The holes
 * left by the 64 B blocks cannot hold 128 B blocks, so an allocator that
 * cannot give the half-empty pages back (or reuse them) pays for them.
 * Reports RSS and peak above the starting RSS, divided by the live bytes.
 * The counts are fixed (the scale does not change them). */
#define FRAG_N1 1000000L
#define FRAG_N2 500000L
int wl_frag(const bench_opts_t *o)
{
    void **a = bench_map(sizeof(void *) * FRAG_N1);
    void **b = bench_map(sizeof(void *) * FRAG_N2);
    free(malloc(1));                      /* allocator initialised */
    long base_kb = bench_rss_kb();
    long bad = 0;
    uint64_t sum = 0;
    double t0 = bench_now();
    for (long i = 0; i < FRAG_N1; i++) {
        a[i] = malloc(64);
        if (!a[i])
            bench_die("malloc");
        bench_stamp(a[i], 64, (uint64_t)i);
    }
    for (long i = 1; i < FRAG_N1; i += 2) {
        bad += !bench_check(a[i], 64, (uint64_t)i);
        free(a[i]);
        a[i] = NULL;
    }
    for (long j = 0; j < FRAG_N2; j++) {
        b[j] = malloc(128);
        if (!b[j])
            bench_die("malloc");
        bench_stamp(b[j], 128, (uint64_t)j * 3);
    }
    double t = bench_now() - t0;
    long final_kb = bench_rss_kb();
    long peak_kb = bench_peak_kb();
    /* every live block still intact (and so still live: nothing freed) */
    for (long i = 0; i < FRAG_N1; i += 2) {
        bad += !bench_check(a[i], 64, (uint64_t)i);
        sum += ((unsigned char *)a[i])[0];
    }
    for (long j = 0; j < FRAG_N2; j++) {
        bad += !bench_check(b[j], 128, (uint64_t)j * 3);
        sum += ((unsigned char *)b[j])[0];
    }
    double live = (double)(FRAG_N1 / 2 * 64 + FRAG_N2 * 128);
    bench_begin("frag", o);
    bench_kv_long("ops", FRAG_N1 + FRAG_N1 / 2 + FRAG_N2);
    bench_kv_double("time_s", t);
    bench_kv_long("live_bytes", (long long)live);
    bench_kv_long("base_rss_kb", base_kb);
    bench_kv_long("frag_rss_kb", final_kb);
    bench_kv_double("final_over_live", (double)(final_kb - base_kb) * 1024.0 / live);
    bench_kv_double("peak_over_live", (double)(peak_kb - base_kb) * 1024.0 / live);
    return bench_end(sum, bad);
}

/* ---- freeall -------------------------------------------------------------
 * Start RSS (allocator initialised); allocate 250,000 blocks of 8-1024 B and
 * 32 blocks of 64 KiB-4 MiB, interleaved; free them all in random order.
 * RSS right away and after 1.5 s of near idleness (a malloc/free every
 * 50 ms, which lets allocators that return memory lazily do so), each as a
 * ratio to the start RSS. The counts are fixed (the scale does not change
 * them). */
#define FA_SMALL 250000L
#define FA_LARGE 32L
int wl_freeall(const bench_opts_t *o)
{
    bench_rng_t rng = { o->seed };
    free(malloc(1));
    long start_kb = bench_rss_kb();
    long n = FA_SMALL + FA_LARGE;
    struct blk { void *p; size_t n; uint64_t tag; } *s = bench_map(sizeof(struct blk) * (size_t)n);
    long bad = 0;
    uint64_t sum = 0;
    size_t bytes = 0;
    double t0 = bench_now();
    long every = FA_SMALL / FA_LARGE;
    for (long i = 0; i < n; i++) {
        int large = (i % (every + 1)) == every;
        s[i].n = large ? bench_log_range(&rng, 64 * KiB, 4 * MiB) : bench_range(&rng, 8, 1024);
        s[i].p = malloc(s[i].n);
        if (!s[i].p)
            bench_die("malloc");
        if (large)
            bench_touch(s[i].p, s[i].n, 3);
        s[i].tag = (uint64_t)i * 7;
        bench_stamp(s[i].p, s[i].n, s[i].tag);
        bytes += s[i].n;
    }
    long full_kb = bench_rss_kb();
    for (long i = n - 1; i > 0; i--) {          /* Fisher-Yates */
        long j = (long)(bench_rand(&rng) % (uint64_t)(i + 1));
        struct blk tmp = s[i];
        s[i] = s[j];
        s[j] = tmp;
    }
    for (long i = 0; i < n; i++) {
        bad += !bench_check(s[i].p, s[i].n, s[i].tag);
        sum += ((unsigned char *)s[i].p)[0];
        free(s[i].p);
    }
    double t = bench_now() - t0;
    bench_unmap(s, sizeof(struct blk) * (size_t)n);
    long now_kb = bench_rss_kb();
    struct timespec nap = { 0, 50 * 1000 * 1000 };
    for (int k = 0; k < 30; k++) {
        nanosleep(&nap, NULL);
        void *p = malloc(64);
        bench_escape(p);
        free(p);
    }
    long end_kb = bench_rss_kb();
    bench_begin("freeall", o);
    bench_kv_long("ops", 2 * n);
    bench_kv_long("bytes", (long long)bytes);
    bench_kv_double("time_s", t);
    bench_kv_long("start_rss_kb", start_kb);
    bench_kv_long("full_rss_kb", full_kb);
    bench_kv_long("freed_rss_kb", now_kb);
    bench_kv_long("end_rss_kb", end_kb);
    bench_kv_double("freed_over_start", (double)now_kb / (double)start_kb);
    bench_kv_double("end_over_start", (double)end_kb / (double)start_kb);
    return bench_end(sum, bad);
}
