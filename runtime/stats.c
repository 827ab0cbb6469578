/* runtime/stats.c — statistics of a heap, as numbers and as a report (text
 * like /proc/slabinfo, or JSON). Exact at a quiet moment: blocks sitting in
 * thread caches are free, not live. */
#include "runtime/runtime.h"
#include "gc/gc.h"

#include <inttypes.h>
#include <stdio.h>

typedef struct heap_report {
    loam_stats_t   s;
    arena_stats_t  a;                      /* summed over the heap's arenas */
    size_t         cached_blocks[NUM_CLASSES];
    size_t         arenas, caches, lock_contended, slabs_made, slabs_released;
    size_t         large_usable;
} heap_report_t;

static void heap_report(loam_heap_t *h, heap_report_t *r, bool resident)
{
    memset(r, 0, sizeof *r);
    /* Dead blocks of slabs still waiting for the lazy sweep are not live. */
    if (h->gc)
        gc_finish_sweep(h);
    size_t out_bytes = 0, out_blocks = 0, peak = 0, large_req = 0;
    size_t cached_bytes = 0, cached_blocks = 0, transfer_bytes = 0;
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(h, i)); i++) {
        r->arenas++;
        arena_lock(a);
        arena_collect_stats(a, &r->a, resident);
        /* Blocks in the arena's transfer cache are free, as in a thread cache. */
        for (unsigned c = 0; a->xfer_blocks && c < NUM_CLASSES; c++) {
            uint32_t cnt = arena_xfer_count(a, c);
            r->cached_blocks[c] += cnt;
            cached_blocks += cnt;
            transfer_bytes += (size_t)cnt * sizeclass_size[c];
        }
        out_bytes += a->c.out_bytes;
        out_blocks += a->c.out_blocks;
        peak += a->c.peak_out_bytes;
        r->s.large_count += a->c.large_count;
        r->s.large_bytes += a->c.large_bytes;
        r->large_usable += a->c.large_usable;
        large_req += AO_load(&a->c.large_requested);
        r->lock_contended += AO_load(&a->c.lock_contended);   /* counted before the lock is taken */
        r->slabs_made += a->c.slabs_made;
        r->slabs_released += a->c.slabs_released;
        arena_unlock(a);
    }
    heaps_lock();
    for (tcache_t *tc = h->caches; tc; tc = tc->owner_next) {
        r->caches++;
        for (unsigned c = 0; c < NUM_CLASSES; c++) {
            unsigned cnt = tcache_count_racy(tc, c);
            r->cached_blocks[c] += cnt;
            cached_blocks += cnt;
            cached_bytes += (size_t)cnt * sizeclass_size[c];
        }
    }
    heaps_unlock();
    loam_stats_t *s = &r->s;
    s->live_bytes = out_bytes - cached_bytes - transfer_bytes + r->large_usable;
    s->live_blocks = out_blocks - cached_blocks + s->large_count;
    s->peak_live_bytes = peak;
    if (s->peak_live_bytes < s->live_bytes)
        s->peak_live_bytes = s->live_bytes;
    s->requested_tracked = h->track_requested;
    s->requested_bytes = h->track_requested ? (size_t)AO_load(&h->requested) + large_req : 0;
    s->committed_bytes = r->a.committed_bytes;
    s->reserved_bytes = r->a.reserved_bytes;
    s->resident_bytes = r->a.resident_bytes;
    s->slab_bytes = r->a.slab_bytes;
    s->slab_free_bytes = r->a.slab_free_bytes;
    s->cached_bytes = cached_bytes;
    s->transfer_bytes = transfer_bytes;
    s->segments = r->a.segments;
    s->free_run_bytes = r->a.free_run_bytes;
    gc_fill_stats(h, s);
}

void loam_heap_stats(loam_heap_t *h, loam_stats_t *out)
{
    if (!h || !out)
        return;
    heap_report_t r;
    heap_report(h, &r, true);
    *out = r.s;
}

static void print_text(loam_heap_t *h, const heap_report_t *r, FILE *f)
{
    const loam_stats_t *s = &r->s;
    char label[HEAP_LABEL_MAX];
    fprintf(f, "loam heap %s (%s%s)\n", heap_label(h, label), h->is_default ? "default, " : "",
            h->mode == LOAM_GC ? "collected" : "manual");
    fprintf(f, "  live        %12zu bytes in %zu blocks (peak %zu)\n", s->live_bytes, s->live_blocks,
            s->peak_live_bytes);
    if (s->requested_tracked)
        fprintf(f, "  requested   %12zu bytes (internal waste %zu bytes, %.1f%%)\n", s->requested_bytes,
                s->live_bytes - s->requested_bytes,
                s->live_bytes ? 100.0 * (double)(s->live_bytes - s->requested_bytes) / (double)s->live_bytes : 0.0);
    else
        fprintf(f, "  requested   not tracked (option track_requested=0, or a heap created collected)\n");
    fprintf(f, "  committed   %12zu bytes   reserved %zu   resident %zu\n", s->committed_bytes,
            s->reserved_bytes, s->resident_bytes);
    fprintf(f, "  slabs       %12zu bytes, free inside partly used slabs %zu (external fragmentation)\n",
            s->slab_bytes, s->slab_free_bytes);
    fprintf(f, "  free runs   %12zu bytes committed, awaiting reuse or decay\n", s->free_run_bytes);
    fprintf(f, "  large       %12zu blocks, %zu bytes mapped\n", s->large_count, s->large_bytes);
    fprintf(f, "  caches      %12zu bytes in %zu thread caches, %zu in the arenas' transfer caches; "
               "%zu arenas, %zu lock contentions\n",
            s->cached_bytes, r->caches, s->transfer_bytes, r->arenas, r->lock_contended);
    fprintf(f, "              growth budget all threads' caches share: %zu of %zu bytes drawn (all heaps)\n",
            tcache_shared_bytes(), alloc_tcache_budget());
    fprintf(f, "  segments    %12zu; slabs made %zu, released %zu\n", s->segments, r->slabs_made,
            r->slabs_released);
    if (h->gc) {
        fprintf(f, "  collector   %12zu collections (%zu minor); pause total %.3f ms, max %.3f ms, p50 %.3f ms, p99 %.3f ms\n",
                s->gc_collections, s->gc_minor_collections, (double)s->gc_pause_total_ns / 1e6, (double)s->gc_pause_max_ns / 1e6,
                (double)s->gc_pause_p50_ns / 1e6, (double)s->gc_pause_p99_ns / 1e6);
        fprintf(f, "              live after last %zu bytes (marked %zu, %zu of them by marking threads); "
                   "swept %zu bytes in all; %zu finalizers run, %zu weak references cleared, "
                   "%zu ephemerons cleared\n",
                s->gc_live_after, s->gc_bytes_marked, s->gc_bytes_marked_helpers, s->gc_bytes_swept,
                s->gc_finalizers_run, s->gc_weak_cleared, s->gc_ephemerons_cleared);
    }
    fprintf(f, "  %-6s %8s %6s %10s %10s %10s\n", "class", "size", "slabs", "used", "free", "cached");
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        const arena_class_stats_t *cs = &r->a.cls[c];
        if (!cs->slabs && !r->cached_blocks[c])
            continue;
        fprintf(f, "  %-6u %8u %6zu %10zu %10zu %10zu\n", c, sizeclass_size[c], cs->slabs,
                cs->blocks_used - r->cached_blocks[c], cs->blocks_free, r->cached_blocks[c]);
    }
}

static void print_json(loam_heap_t *h, const heap_report_t *r, FILE *f)
{
    const loam_stats_t *s = &r->s;
    fprintf(f, "{\"heap\":\"%p\",\"name\":\"%s\",\"default\":%s,\"mode\":\"%s\",", (void *)h,
            h->name, h->is_default ? "true" : "false", h->mode == LOAM_GC ? "gc" : "manual");
    fprintf(f, "\"live_bytes\":%zu,\"live_blocks\":%zu,\"peak_live_bytes\":%zu,", s->live_bytes,
            s->live_blocks, s->peak_live_bytes);
    fprintf(f, "\"requested_tracked\":%s,\"requested_bytes\":%zu,", s->requested_tracked ? "true" : "false",
            s->requested_bytes);
    fprintf(f, "\"committed_bytes\":%zu,\"reserved_bytes\":%zu,\"resident_bytes\":%zu,", s->committed_bytes,
            s->reserved_bytes, s->resident_bytes);
    fprintf(f, "\"slab_bytes\":%zu,\"slab_free_bytes\":%zu,\"free_run_bytes\":%zu,", s->slab_bytes,
            s->slab_free_bytes, s->free_run_bytes);
    fprintf(f, "\"large_count\":%zu,\"large_bytes\":%zu,\"cached_bytes\":%zu,\"transfer_bytes\":%zu,",
            s->large_count, s->large_bytes, s->cached_bytes, s->transfer_bytes);
    fprintf(f, "\"segments\":%zu,\"arenas\":%zu,\"thread_caches\":%zu,\"lock_contended\":%zu,", s->segments,
            r->arenas, r->caches, r->lock_contended);
    fprintf(f, "\"cache_shared_growth_bytes\":%zu,\"cache_shared_growth_max\":%zu,", tcache_shared_bytes(),
            alloc_tcache_budget());
    fprintf(f, "\"gc_collections\":%zu,\"gc_pause_total_ns\":%" PRIu64 ",\"gc_pause_max_ns\":%" PRIu64 ",",
            s->gc_collections, s->gc_pause_total_ns, s->gc_pause_max_ns);
    fprintf(f, "\"gc_pause_p50_ns\":%" PRIu64 ",\"gc_pause_p99_ns\":%" PRIu64 ",\"gc_bytes_marked\":%zu,"
               "\"gc_bytes_swept\":%zu,\"gc_live_after\":%zu,\"gc_finalizers_run\":%zu,\"gc_weak_cleared\":%zu,"
               "\"gc_ephemerons_cleared\":%zu,\"gc_bytes_marked_helpers\":%zu,\"gc_minor_collections\":%zu,",
            s->gc_pause_p50_ns, s->gc_pause_p99_ns, s->gc_bytes_marked, s->gc_bytes_swept, s->gc_live_after,
            s->gc_finalizers_run, s->gc_weak_cleared, s->gc_ephemerons_cleared, s->gc_bytes_marked_helpers,
            s->gc_minor_collections);
    fprintf(f, "\"classes\":[");
    bool first = true;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        const arena_class_stats_t *cs = &r->a.cls[c];
        if (!cs->slabs && !r->cached_blocks[c])
            continue;
        fprintf(f, "%s{\"class\":%u,\"size\":%u,\"slabs\":%zu,\"used\":%zu,\"free\":%zu,\"cached\":%zu}",
                first ? "" : ",", c, sizeclass_size[c], cs->slabs, cs->blocks_used - r->cached_blocks[c],
                cs->blocks_free, r->cached_blocks[c]);
        first = false;
    }
    fprintf(f, "]}\n");
}

void loam_heap_print_stats(loam_heap_t *h, FILE *out, int format)
{
    if (!h || !out)
        return;
    heap_report_t r;
    heap_report(h, &r, true);
    if (format == LOAM_STATS_JSON)
        print_json(h, &r, out);
    else
        print_text(h, &r, out);
    fflush(out);
}

/* verbose=1: every heap's report on stderr at exit. */
void stats_print_all_at_exit(FILE *out);
void stats_print_all_at_exit(FILE *out)
{
    for (loam_heap_t *h = loam_heaps; h; h = h->next)
        loam_heap_print_stats(h, out, LOAM_STATS_TEXT);
}
