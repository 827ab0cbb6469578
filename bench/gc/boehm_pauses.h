/* bench/gc/boehm_pauses.h — collections and pauses of the Boehm collector,
 * for the two Boehm back ends (gcshim.c's, lisp_on_boehm.c). Include once,
 * after <gc/gc.h>; call boehm_pauses_start() right after GC_INIT().
 *
 * Collections: GC_get_gc_no() minus any made during GC_INIT. Pauses: the
 * collection event callback, from GC_EVENT_START to GC_EVENT_END; in a
 * single-threaded program the mutator waits for all of it (Boehm sweeps
 * lazily, at allocations, so the sweep is outside these pauses, as it is
 * outside loam's). */
#ifndef LOAM_BENCH_BOEHM_PAUSES_H
#define LOAM_BENCH_BOEHM_PAUSES_H

#include <stdint.h>
#include <time.h>

static GC_word boehm_gc_no_start;
static uint64_t boehm_pause_start, boehm_pause_max, boehm_pause_total;
static int boehm_in_collection;

static uint64_t boehm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void GC_CALLBACK boehm_on_event(GC_EventType e)
{
    if (e == GC_EVENT_START) {
        boehm_in_collection = 1;
        boehm_pause_start = boehm_now_ns();
    } else if (e == GC_EVENT_END && boehm_in_collection) {
        uint64_t d = boehm_now_ns() - boehm_pause_start;
        boehm_in_collection = 0;
        boehm_pause_total += d;
        if (d > boehm_pause_max)
            boehm_pause_max = d;
    }
}

static void boehm_pauses_start(void)
{
    GC_set_on_collection_event(boehm_on_event);
    boehm_gc_no_start = GC_get_gc_no();
}

static long boehm_collections(void)
{
    return (long)(GC_get_gc_no() - boehm_gc_no_start);
}

#endif
