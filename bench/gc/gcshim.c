/* The gc shim's three back ends (see gcshim.h): set-up, statistics and the
 * result line. Compiled once per variant with GCB_LOAM, GCB_BOEHM or
 * GCB_MALLOC defined. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "gcshim.h"
#include "../workloads/bench.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void **gcs_shadow[GCS_SHADOW_MAX];
size_t gcs_shadow_top;
static int ptr_fields;

#if defined(GCB_LOAM)
/* ---- loam ---------------------------------------------------------------- */
loam_heap_t *gcs_heap;
loam_kind_t gcs_kind = LOAM_TRACED;
int gcs_generational;
static const char *variant = "loam";

/* Every traced object starts with ptr_fields pointer fields (NULL or a
 * block start: what loam_mark takes). */
static void trace_obj(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    void **f = (void **)obj;
    for (int i = 0; i < ptr_fields; i++)
        if (f[i])
            loam_mark(t, f[i]);
}

#if defined(GCB_SHADOW_STACK)
/* --no-stack-scan: the shadow stack is the only root set. */
static void shadow_roots(loam_tracer_t *t, void *user)
{
    (void)user;
    for (size_t i = 0; i < gcs_shadow_top; i++)
        if (*gcs_shadow[i])
            loam_mark(t, *gcs_shadow[i]);
}
#endif

int gcs_init(const gcs_opts_t *o, int fields)
{
    ptr_fields = fields;
    loam_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.mode = LOAM_GC;
    cfg.trace = trace_obj;
    cfg.flags = LOAM_PARALLEL_MARK;     /* trace_obj only reads the object */
    if (o->conservative) {
        gcs_kind = LOAM_CONSERVATIVE;
        variant = "loam-cons";
    }
    if (o->generational) {
        cfg.flags |= LOAM_GENERATIONAL;
        gcs_generational = 1;
    }
#if defined(GCB_SHADOW_STACK)
    if (!o->no_stack_scan) {
        fprintf(stderr, "loam-gcbench: this binary keeps a shadow stack: run it with "
                        "--no-stack-scan (loam-gcbench-loam scans the stack)\n");
        return -1;
    }
    cfg.flags |= LOAM_NO_STACK_SCAN;
    cfg.roots = shadow_roots;
    variant = o->conservative ? "loam-cons-precise" : "loam-precise";
#else
    if (o->no_stack_scan) {
        fprintf(stderr, "loam-gcbench: --no-stack-scan needs the shadow stack: "
                        "run loam-gcbench-loam-precise\n");
        return -1;
    }
#endif
    if (o->generational)
        variant = o->no_stack_scan ? (o->conservative ? "loam-cons-precise-gen" : "loam-precise-gen")
                                   : (o->conservative ? "loam-cons-gen" : "loam-gen");
    gcs_heap = loam_heap_new(&cfg);
    if (!gcs_heap) {
        fprintf(stderr, "loam-gcbench: loam_heap_new failed\n");
        return -1;
    }
    return 0;
}

const char *gcs_variant(void) { return variant; }

void gcs_stats(gcs_stats_t *out)
{
    loam_stats_t s;
    memset(&s, 0, sizeof s);
    loam_heap_stats(gcs_heap, &s);
    out->collections = (long)s.gc_collections;
    out->pause_max_ns = s.gc_pause_max_ns;
    out->pause_total_ns = s.gc_pause_total_ns;
}

void gcs_finish(void)
{
    if (getenv("GCS_STATS"))
        loam_heap_print_stats(gcs_heap, stderr, LOAM_STATS_TEXT);
    loam_heap_destroy(gcs_heap);
    gcs_heap = NULL;
}

#elif defined(GCB_BOEHM)
/* ---- Boehm ----------------------------------------------------------------
 * Collections and pauses: boehm_pauses.h. */
#include "boehm_pauses.h"

int gcs_init(const gcs_opts_t *o, int fields)
{
    (void)o;
    ptr_fields = fields;
    GC_INIT();
    boehm_pauses_start();
    return 0;
}

const char *gcs_variant(void) { return "boehm"; }

void gcs_stats(gcs_stats_t *out)
{
    out->collections = boehm_collections();
    out->pause_max_ns = boehm_pause_max;
    out->pause_total_ns = boehm_pause_total;
}

void gcs_finish(void) {}

#else
/* ---- malloc/free ---------------------------------------------------------- */
int gcs_init(const gcs_opts_t *o, int fields)
{
    (void)o;
    ptr_fields = fields;
    return 0;
}

const char *gcs_variant(void) { return "malloc"; }

void gcs_stats(gcs_stats_t *out)
{
    memset(out, 0, sizeof *out);
}

void gcs_finish(void) {}
#endif

int gcs_report(const char *workload, const gcs_opts_t *o, double seconds,
               uint64_t checksum, long bad)
{
    gcs_stats_t st;
    gcs_stats(&st);
    bench_opts_t bo = { .scale = o->scale, .seed = 0, .n = 0 };
    bench_begin(workload, &bo);
    bench_kv_str("variant", gcs_variant());
    bench_kv_long("depth", o->depth);
    bench_kv_double("time_s", seconds);
    bench_kv_long("collections", st.collections);
    bench_kv_double("max_pause_ms", (double)st.pause_max_ns / 1e6);
    bench_kv_double("total_pause_ms", (double)st.pause_total_ns / 1e6);
#if defined(GCB_BOEHM)
    struct GC_prof_stats_s ps;
    memset(&ps, 0, sizeof ps);
    GC_get_prof_stats(&ps, sizeof ps);
    bench_kv_long("gc_markers", (long long)ps.markers_m1 + 1);
#endif
    /* checksum, bad, peak_rss_kb (VmHWM), final_rss_kb, malloc_from, ok */
    return bench_end(checksum, bad);
}
