/* gc/collect.c — one collection, top to bottom.
 *
 *   1. stop the world (threads.c): attached threads park at safepoints
 *   2. mark from the roots (roots.c): callback, slots, ranges, thread stacks
 *   3. clear weak references to unmarked targets (finalize.c)
 *   4. keep finalizable unmarked objects alive, queue their finalizers
 *   5. sweep: every allocated, unmarked block goes back to its slab, and the
 *      marks are cleared for the next cycle; empty slabs return to their
 *      segments and, like any free run, to the OS
 *   6. restart the world, then run the queued finalizers in this thread
 *
 * Free blocks are told apart from allocated ones by the free key in their
 * second word (alloc.h): a block sitting in a thread cache or a free list is
 * free, so caches need not be emptied first and no block is ever in two
 * places. Marking never reaches a free block.
 */
#include "gc/gc.h"

#include <time.h>

uint64_t gc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- sweeping ------------------------------------------------------------------------------ */

/* The slab's allocated, unmarked blocks go back to it (arena lock held).
 * Returns the bytes freed; clears the slab's marks. */
static size_t sweep_slab(gc_state_t *gc, arena_t *a, segment_t *seg, slab_t *s)
{
    uint64_t *bits = segment_side_bits(seg);
    size_t first = (size_t)(s->start - (char *)seg) / BLOCK_ALIGN;
    size_t step = s->block_size / BLOCK_ALIGN;
    uint32_t bumped = s->bumped;
    size_t size = s->block_size, freed = 0, requested = 0;
    char *dead_list = NULL;
    uint32_t dead = 0;
    for (uint32_t k = 0; k < bumped; k++) {
        size_t g = first + (size_t)k * step;
        uint64_t m = (uint64_t)1 << (g & 63);
        if (bits[g >> 6] & m) {
            bits[g >> 6] &= ~m;
            continue;
        }
        char *b = s->start + (size_t)k * size;
        if (((free_block_t *)b)->freed_key == loam_free_key)
            continue;
        if (s->waste)
            requested += slab_get_requested(s, k);
        *(char **)b = dead_list;          /* chained through the first word */
        dead_list = b;
        dead++;
    }
    freed = (size_t)dead * size;
    /* All at once: an emptied slab stays on its partial list, the heap refills soon. */
    arena_free_chain(a, s, dead_list, dead);
    if (requested)
        AO_fetch_and_add(&gc->heap->requested, (AO_t)0 - requested);
    return freed;
}

size_t gc_sweep(gc_state_t *gc)
{
    size_t freed = 0;
    arena_t *a;
    large_t *dead_large = NULL;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        arena_lock(a);
        a->sweeping = true;              /* no purge while we walk the segments */
        for (segment_t *seg = a->segments; seg; seg = seg->next) {
            for (unsigned p = 1; p < PAGES_PER_SEGMENT;) {
                slab_t *s = &seg->slabs[seg->page_head[p]];
                if (s->state == RUN_SLAB && s->page_index == p)
                    freed += sweep_slab(gc, a, seg, s);
                /* the run may have merged with neighbours: continue past it */
                slab_t *r = &seg->slabs[seg->page_head[p]];
                unsigned next = r->page_index + r->pages;
                p = next > p ? next : p + 1;
            }
        }
        for (large_t *l = a->large, *next; l; l = next) {
            next = l->next;
            if (l->upper & 1) {
                l->upper &= ~(uintptr_t)1;
            } else {
                l->upper = (uintptr_t)dead_large;     /* chained; unmapped after the lock */
                dead_large = l;
                freed += l->size;
            }
        }
        a->sweeping = false;
        arena_purge(a, false);
        arena_unlock(a);
    }
    while (dead_large) {
        large_t *l = dead_large;
        dead_large = (large_t *)l->upper;
        large_free(l);
    }
    return freed;
}

/* ---- a collection ------------------------------------------------------------------------------ */

static void note_pause(gc_state_t *gc, uint64_t ns)
{
    gc->collections++;
    gc->pause_total_ns += ns;
    if (ns > gc->pause_max_ns)
        gc->pause_max_ns = ns;
    gc->pauses[gc->npauses++ % GC_PAUSE_RING] = ns;
}

void gc_collect(loam_heap_t *h)
{
    gc_state_t *gc = gc_state_get(h);
    /* The collecting thread's stack is a root. A thread that is not attached
     * is attached for this collection only: collecting attaches no thread. */
    bool visiting = gc_self(gc) == NULL;
    gc_attach(gc);
    pthread_mutex_lock(&gc->lock);
    if (!gc_stop_world(gc)) {            /* another thread's collection served */
        pthread_mutex_unlock(&gc->lock);
        if (visiting)
            loam_thread_detach(h);
        gc_run_ready_finalizers(gc);
        return;
    }
    uint64_t t0 = gc_now_ns();
    gc->marked_bytes = 0;

    gc_mark_roots(gc);
    gc_mark_drain(gc);
    gc_clear_dead_weaks(gc);
    gc_find_ready_finalizers(gc);
    size_t live = gc->marked_bytes;
    gc->bytes_swept += gc_sweep(gc);

    gc->live_after = live;
    AO_store(&gc->alloc_since, 0);
    note_pause(gc, gc_now_ns() - t0);
    gc_restart_world(gc);
    pthread_mutex_unlock(&gc->lock);
    if (visiting)
        loam_thread_detach(h);

    gc_run_ready_finalizers(gc);
}
