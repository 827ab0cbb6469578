/* The part of loam's API the Lisp example (examples/lisp) uses, implemented
 * over the Boehm collector, so the same interpreter and script can be timed
 * on both collectors (bench/gc/gcrunner.py, column "Boehm"). Built only as
 * loam-lisp-boehm (bench/CMakeLists.txt); nothing of loam is linked in.
 *
 * How each call maps:
 *   loam_gc_alloc        GC_MALLOC (zero-filled; Boehm scans every object
 *                        conservatively, so the trace callback is not used),
 *                        GC_MALLOC_ATOMIC for LOAM_ATOMIC
 *   roots callback       called from GC_set_push_other_roots; loam_mark
 *                        pushes the one word eagerly
 *   loam_root_add        GC_add_roots over the slot
 *   loam_finalizer_set   GC_register_finalizer (run by GC_invoke_finalizers
 *                        after each explicit collection, as loam does)
 *   loam_finalize_all    GC_finalize_all
 *   weak references      GC_general_register_disappearing_link on a box the
 *                        collector does not scan
 *   statistics           collections and pauses from the collection events
 *   weak fields,         strong: Boehm scans objects conservatively and never
 *   ephemerons           calls the trace callback, their only caller
 * Not supported here (the demo does not use them): switching modes (fails),
 * the leak check (finds nothing), heap limits. */
#include "loam.h"

#include <gc/gc.h>
#include <gc/gc_mark.h>
#include <gc/javaxfc.h>
#include "boehm_pauses.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct loam_heap {
    loam_config_t cfg;
};
struct loam_tracer {
    int unused;
};
struct loam_weak {
    void *target;          /* a disappearing link: cleared when the target dies */
};

static struct loam_heap the_heap;
static struct loam_tracer the_tracer;
static GC_push_other_roots_proc boehm_push_roots;
/* Boehm's marker asks for the roots it cannot find itself: the embedder's
 * roots callback reports them through loam_mark. */
static void GC_CALLBACK push_embedder_roots(void)
{
    if (boehm_push_roots)
        boehm_push_roots();
    if (the_heap.cfg.roots)
        the_heap.cfg.roots(&the_tracer, the_heap.cfg.user);
}

loam_heap_t *loam_heap_new(const loam_config_t *cfg)
{
    GC_INIT();
    boehm_pauses_start();
    if (cfg)
        the_heap.cfg = *cfg;
    boehm_push_roots = GC_get_push_other_roots();
    GC_set_push_other_roots(push_embedder_roots);
    return &the_heap;
}

void loam_heap_destroy(loam_heap_t *h)
{
    (void)h;
}

int loam_heap_set_mode(loam_heap_t *h, loam_mode_t m)
{
    (void)h;
    return m == LOAM_GC ? 0 : -1;
}

void *loam_gc_alloc(loam_heap_t *h, size_t n, loam_kind_t kind)
{
    (void)h;
    return kind == LOAM_ATOMIC ? GC_MALLOC_ATOMIC(n) : GC_MALLOC(n);
}

void loam_free(void *p)
{
    GC_FREE(p);
}

void loam_gc_collect(loam_heap_t *h)
{
    (void)h;
    GC_gcollect();
    GC_invoke_finalizers();
}

void loam_mark(loam_tracer_t *t, void *p)
{
    (void)t;
    GC_push_all_eager(&p, &p + 1);
}

/* Called from the trace callback only, which Boehm does not use (it scans
 * every object conservatively): the fields are strong here. The demo makes
 * no weak field and no ephemeron. */
void loam_mark_weak(loam_tracer_t *t, void **field)
{
    loam_mark(t, *field);
}

void loam_mark_ephemeron(loam_tracer_t *t, void **key_field, void **value_field)
{
    loam_mark(t, *key_field);
    loam_mark(t, *value_field);
}

void loam_root_add(loam_heap_t *h, void **slot)
{
    (void)h;
    GC_add_roots(slot, slot + 1);
}

/* Boehm collects without generations here: the barrier has nothing to do. */
void loam_write_barrier(const void *where) { (void)where; }
void loam_thread_attach(loam_heap_t *h) { (void)h; }
void loam_enter_blocking(loam_heap_t *h) { (void)h; }
void loam_leave_blocking(loam_heap_t *h) { (void)h; }

int loam_finalizer_set(loam_heap_t *h, void *obj, loam_finalizer_fn fn, void *data)
{
    (void)h;
    GC_register_finalizer(obj, (GC_finalization_proc)fn, data, NULL, NULL);
    return 0;
}

size_t loam_finalize_all(loam_heap_t *h)
{
    (void)h;
    GC_finalize_all();                /* runs them too (no finalizer thread here) */
    return 0;                         /* (the count is not kept; the Lisp ignores it) */
}

loam_weak_t *loam_weak_new(loam_heap_t *h, void *target)
{
    (void)h;
    loam_weak_t *w = GC_MALLOC_ATOMIC(sizeof *w);   /* not scanned: the link stays weak */
    if (!w)
        return NULL;
    w->target = target;
    if (target)
        GC_general_register_disappearing_link(&w->target, target);
    return w;                   /* kept alive by the Lisp object that holds it */
}

void *loam_weak_get(loam_weak_t *w)
{
    return w ? w->target : NULL;
}

void loam_weak_free(loam_weak_t *w)
{
    if (w && w->target)
        GC_unregister_disappearing_link(&w->target);
}

size_t loam_leak_check(loam_heap_t *h, loam_leak_fn report, void *user)
{
    (void)h, (void)report, (void)user;
    return 0;
}

void loam_heap_stats(loam_heap_t *h, loam_stats_t *out)
{
    (void)h;
    memset(out, 0, sizeof *out);
    out->gc_collections = (size_t)boehm_collections();
    out->gc_pause_total_ns = boehm_pause_total;
    out->gc_pause_max_ns = boehm_pause_max;
    out->committed_bytes = GC_get_heap_size();
    out->live_bytes = GC_get_heap_size() - GC_get_free_bytes();
    out->peak_live_bytes = out->live_bytes;
}

void loam_heap_print_stats(loam_heap_t *h, FILE *out, int format)
{
    loam_stats_t s;
    loam_heap_stats(h, &s);
    if (format == LOAM_STATS_JSON)
        fprintf(out, "{\"collector\":\"boehm\",\"gc_collections\":%zu,\"gc_pause_total_ns\":%llu,"
                     "\"gc_pause_max_ns\":%llu,\"committed_bytes\":%zu}\n",
                s.gc_collections, (unsigned long long)s.gc_pause_total_ns,
                (unsigned long long)s.gc_pause_max_ns, s.committed_bytes);
    else
        fprintf(out, "Boehm heap: %zu collections; pause total %.3f ms, max %.3f ms; heap %zu bytes\n",
                s.gc_collections, s.gc_pause_total_ns / 1e6, s.gc_pause_max_ns / 1e6, s.committed_bytes);
}
