/* tests/stats_util.h — a heap's printed statistics (loam_heap_print_stats)
 * as a string the caller frees, for the tests that read them. */
#ifndef LOAM_TESTS_STATS_UTIL_H
#define LOAM_TESTS_STATS_UTIL_H

#include <stdio.h>

#include "harness.h"
#include "loam.h"

static inline char *print_to_string(loam_heap_t *h, int format)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    loam_heap_print_stats(h, f, format);
    fclose(f);
    cr_assert_not_null(buf);
    return buf;
}

#endif
