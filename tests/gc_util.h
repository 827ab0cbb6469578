/* tests/gc_util.h — small helpers shared by the collector tests
 * (test_gc*.c): seed and scale from the environment, a PRNG, byte patterns,
 * statistics snapshots, and a way to scrub stale pointers from the stack
 * below the caller before a collection on a stack-scanning heap.
 * Plain C only: it is also used by the standalone (ThreadSanitizer) build. */
#ifndef LOAM_TEST_GC_UTIL_H
#define LOAM_TEST_GC_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "loam.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(LOAM_SANITIZED)
#define GC_SAN_DIVISOR 4
#else
#define GC_SAN_DIVISOR 1
#endif

#define GC_NOINLINE __attribute__((noinline))

static inline unsigned long gc_test_scale(void)
{
    const char *s = getenv("LOAM_TEST_SCALE");
    unsigned long v = s ? strtoul(s, NULL, 10) : 1;
    return v ? v : 1;
}

static inline uint64_t gc_test_seed(const char *what)
{
    const char *s = getenv("LOAM_TEST_SEED");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = s ? strtoull(s, NULL, 0)
                      : ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    fprintf(stderr, "%s: seed %llu (rerun with LOAM_TEST_SEED=%llu), scale %lu\n", what,
            (unsigned long long)seed, (unsigned long long)seed, gc_test_scale());
    return seed;
}

typedef struct { uint64_t s; } gc_rng_t;

static inline uint64_t gc_rng_next(gc_rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);       /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline size_t gc_rng_below(gc_rng_t *r, size_t n) { return n ? (size_t)(gc_rng_next(r) % n) : 0; }

/* A byte pattern that depends on a tag and the offset. The top byte of every
 * aligned word has its high bit set, so no aligned word of a filled block
 * reads as a user-space pointer (conservative scanning retains nothing
 * because of the pattern). */
static inline uint8_t gc_pat(uint64_t tag, size_t i)
{
    uint8_t v = (uint8_t)((tag >> ((i & 7) * 8)) ^ (i >> 3) ^ (i >> 11) ^ 0x5A);
    return (i & 7) == 7 ? (uint8_t)(v | 0x80) : v;
}

static inline void gc_fill(void *p, size_t from, size_t n, uint64_t tag)
{
    uint8_t *b = p;
    for (size_t i = from; i < n; i++)
        b[i] = gc_pat(tag, i);
}

/* Offset of the first byte in [from, n) that differs from the pattern, or
 * (size_t)-1. Large blocks: every byte of the first and last 4 KiB, then one
 * byte every 61 bytes in between. */
static inline size_t gc_check(const void *p, size_t from, size_t n, uint64_t tag)
{
    const uint8_t *b = p;
    if (n - from <= 16384) {
        for (size_t i = from; i < n; i++)
            if (b[i] != gc_pat(tag, i))
                return i;
        return (size_t)-1;
    }
    for (size_t i = from; i < from + 4096; i++)
        if (b[i] != gc_pat(tag, i))
            return i;
    for (size_t i = from + 4096; i < n - 4096; i += 61)
        if (b[i] != gc_pat(tag, i))
            return i;
    for (size_t i = n - 4096; i < n; i++)
        if (b[i] != gc_pat(tag, i))
            return i;
    return (size_t)-1;
}

/* The block a LOAM_ALIGN_8 heap gives a request of n bytes when it takes
 * one of the 24, 40 and 56-byte classes (n rounds to an odd multiple of 8
 * below 64), else 0: the request is served as without the flag. */
static inline size_t gc_align_8_block(size_t n)
{
    size_t eighths = (n + 7) / 8;
    return n > 16 && n <= 56 && eighths % 2 == 1 ? eighths * 8 : 0;
}

static inline loam_stats_t gc_stats(loam_heap_t *h)
{
    loam_stats_t st;
    memset(&st, 0xAB, sizeof st);
    loam_heap_stats(h, &st);
    return st;
}

/* Allocate atomic garbage until h's next minor collection has run (a
 * generational heap with a small gc_young_min). */
static inline __attribute__((unused)) void until_a_minor_collection(loam_heap_t *h)
{
    size_t minors = gc_stats(h).gc_minor_collections;
    for (int i = 0; i < 10000000 && gc_stats(h).gc_minor_collections == minors; i++)
        cr_assert_not_null(loam_gc_alloc(h, 64, LOAM_ATOMIC));
    cr_assert_gt(gc_stats(h).gc_minor_collections, minors, "no minor collection");
}

/* Overwrite a good stretch of the stack below the caller with zeros, so that
 * dead locals of earlier, deeper calls no longer look like pointers. */
static GC_NOINLINE __attribute__((unused)) void gc_scrub_stack(void)
{
    volatile unsigned char pad[128 * 1024];
    memset((void *)pad, 0, sizeof pad);
    __asm__ volatile("" : : "r"(pad) : "memory");
}

#endif
