/* tests/rss_util.h — the process's resident set, for the tests that check
 * memory goes back to the OS (Criterion tests only). */
#ifndef LOAM_TESTS_RSS_UTIL_H
#define LOAM_TESTS_RSS_UTIL_H

#include <stdio.h>
#include <unistd.h>

#ifdef LOAM_MEMCHECK
#include <valgrind/valgrind.h>
#endif

/* Under valgrind the process's RSS is valgrind's (its shadow memory grows
 * with every block memcheck is told about): tests that read it are skipped. */
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

#endif
