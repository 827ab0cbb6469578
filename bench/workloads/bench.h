/* loam benchmark workloads: shared helpers.
 *
 * Every workload uses only the standard malloc/free/realloc API, so the
 * allocator under test is chosen by LD_PRELOAD (or none, for glibc). Each one
 * prints exactly one result line on stdout, made of space-separated key=value
 * pairs, and exits non-zero if its own verification failed.
 */
#ifndef LOAM_BENCH_H
#define LOAM_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stddef.h>
#include <stdint.h>

#define KiB ((size_t)1024)
#define MiB (KiB * 1024)

/* Options shared by every workload (parsed by main.c). */
typedef struct bench_opts {
    double   scale;   /* multiplies iteration counts (BENCH_SCALE) */
    uint64_t seed;    /* random workloads */
    long     n;       /* explicit count (callgrind workloads); 0 = default */
} bench_opts_t;

typedef int (*workload_fn)(const bench_opts_t *o);

/* ---- time and memory ---------------------------------------------------- */
double bench_now(void);                 /* CLOCK_MONOTONIC, seconds */
long   bench_rss_kb(void);              /* current resident set, /proc/self/statm */
long   bench_peak_kb(void);             /* VmHWM (falls back to ru_maxrss) */
/* Memory for the workloads' own bookkeeping (pointer arrays), taken straight
 * from mmap so it never goes through the allocator under test; pre-touched so
 * its RSS is in place before any measurement. */
void  *bench_map(size_t bytes);
void   bench_unmap(void *p, size_t bytes);
/* Scale a base count by opts->scale (at least 1). */
long   bench_scaled(const bench_opts_t *o, long base);
void   bench_die(const char *what);      /* prints and exits 2 */

/* ---- the result line ---------------------------------------------------- */
void bench_begin(const char *workload, const bench_opts_t *o);
void bench_kv_long(const char *key, long long v);
void bench_kv_double(const char *key, double v);
void bench_kv_str(const char *key, const char *v);
/* Appends checksum, peak/final RSS and which library serves malloc, ends
 * the line. Returns the exit status: 0 if bad == 0, else 1. */
int  bench_end(uint64_t checksum, long bad);

/* ---- random numbers (splitmix64, deterministic from the seed) ----------- */
typedef struct { uint64_t s; } bench_rng_t;
static inline uint64_t bench_rand(bench_rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform in [lo, hi]. */
static inline size_t bench_range(bench_rng_t *r, size_t lo, size_t hi)
{
    return lo + (size_t)(bench_rand(r) % (uint64_t)(hi - lo + 1));
}
/* Log-uniform in [lo, hi]: a random octave, then uniform inside it. */
size_t bench_log_range(bench_rng_t *r, size_t lo, size_t hi);

/* ---- keeping the compiler honest ---------------------------------------- */
/* The pointer escapes: the compiler must assume the block is used, so it can
 * neither drop a malloc/free pair nor fold it away. */
static inline void bench_escape(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}
/* Mark a block with a tag in its first and last byte; check it later. */
static inline void bench_stamp(void *p, size_t n, uint64_t tag)
{
    unsigned char *c = (unsigned char *)p;
    c[0] = (unsigned char)tag;
    c[n - 1] = (unsigned char)(tag >> 8);
}
static inline int bench_check(const void *p, size_t n, uint64_t tag)
{
    const unsigned char *c = (const unsigned char *)p;
    return c[0] == (unsigned char)tag && c[n - 1] == (unsigned char)(tag >> 8);
}
/* Write one byte in every page of [p, p+n) (what a program that uses a big
 * block does). Only written, never read: checksums must not depend on what
 * the allocator left in fresh memory, so that they agree across allocators. */
void bench_touch(void *p, size_t n, unsigned char v);

/* Random replacement in a live set of 16384 blocks of sizes lo..hi, ops
 * times (simple.c; churn-512, churn-4k and each thread of churn2). Returns
 * the blocks that failed verification, adds to *sum. */
#define CHURN_SLOTS 16384   /* power of two */
#define CHURN_512_OPS 10000000L
#define CHURN_4K_OPS  4000000L
long bench_churn(bench_rng_t *rng, long ops, size_t lo, size_t hi, uint64_t *sum);

/* ---- the workloads (one function each) ---------------------------------- */
int wl_pair(const bench_opts_t *o);
int wl_batch(const bench_opts_t *o);
int wl_batch_random(const bench_opts_t *o);
int wl_churn_512(const bench_opts_t *o);
int wl_churn_4k(const bench_opts_t *o);
int wl_large(const bench_opts_t *o);
int wl_realloc_double(const bench_opts_t *o);
int wl_realloc_step(const bench_opts_t *o);
int wl_frag(const bench_opts_t *o);
int wl_freeall(const bench_opts_t *o);
int wl_prodcons(const bench_opts_t *o);
int wl_larson(const bench_opts_t *o);
int wl_churn2(const bench_opts_t *o);
int wl_cg_steady(const bench_opts_t *o);
int wl_cg_batch(const bench_opts_t *o);

#endif
