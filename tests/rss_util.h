/* tests/rss_util.h — the process's resident set, for the tests that check
 * memory goes back to the OS (with Criterion's or harness.h's asserts). */
#ifndef LOAM_TESTS_RSS_UTIL_H
#define LOAM_TESTS_RSS_UTIL_H

#include <stdbool.h>
#include <stdio.h>
#include <unistd.h>

#include "loam.h"

#ifdef LOAM_MEMCHECK
#include <valgrind/valgrind.h>
#endif

/* Under valgrind the process's RSS is valgrind's (its shadow memory grows
 * with every block memcheck is told about): tests that read it are skipped. */
static inline bool rss_readable(void)
{
#ifdef LOAM_MEMCHECK
    return !RUNNING_ON_VALGRIND;
#else
    return true;
#endif
}

static inline size_t rss_bytes(void)
{
#ifdef LOAM_MEMCHECK
    if (RUNNING_ON_VALGRIND)
        cr_skip_test("process RSS under valgrind is valgrind's own");
#endif
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "%lu %lu", &size, &res), 2);
    fclose(f);
    return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

/* Of the process's resident memory, what lies outside heap h's own (which
 * keeps emptied slabs a while for regrowth): where the collector's tables
 * live. Needs loam.h. */
static inline size_t rss_outside_heap(loam_heap_t *h)
{
    loam_stats_t st;
    loam_heap_stats(h, &st);
    return rss_bytes() - st.resident_bytes;
}

/* ThreadSanitizer keeps the shadow of every page a program touched, given
 * back or not: there a test can see memory go back only as a part of what
 * is resident (expect_given_back), not come down to where it was. */
#if defined(__SANITIZE_THREAD__)
#define RSS_SHADOW_STAYS 1
#else
#define RSS_SHADOW_STAYS 0
#endif

/* A spike's memory outside the heap went back: at least at_least bytes
 * fewer resident after than at the spike. */
static inline void expect_given_back(const char *what, size_t spike, size_t after, size_t at_least)
{
    fprintf(stderr, "%s: outside the heap %zu KiB resident at the spike, %zu KiB after\n", what,
            spike >> 10, after >> 10);
    cr_assert_geq(spike, after + at_least, "%s: still resident (%zu KiB -> %zu KiB)", what, spike >> 10,
                  after >> 10);
}

#endif
