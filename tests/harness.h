/* tests/harness.h — the test framework: Criterion, or under ThreadSanitizer
 * (which Criterion cannot start under, Snaipe/Criterion#274) the few parts
 * of its API in standalone_shim.h, built with -DLOAM_TEST_STANDALONE. */
#ifndef LOAM_TEST_HARNESS_H
#define LOAM_TEST_HARNESS_H

#ifdef LOAM_TEST_STANDALONE
#include "standalone_shim.h"
#else
#include <criterion/criterion.h>
#endif

#endif
