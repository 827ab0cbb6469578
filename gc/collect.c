/* gc/collect.c — one collection, top to bottom.
 *
 *   1. stop the world (threads.c): attached threads park at safepoints
 *   2. mark from the roots (roots.c): callback, slots, ranges, thread stacks
 *   3. clear weak references to unmarked targets (finalize.c)
 *   4. keep finalizable unmarked objects alive, queue their finalizers
 *   5. sweep, lazily: unmarked large blocks are unmapped now; every slab that
 *      holds blocks becomes *pending* in its arena, which sweeps it (under
 *      its lock, world running) before it hands out any of its blocks: the
 *      allocated, unmarked blocks go back to the slab, the marks are cleared
 *   6. restart the world, then run the queued finalizers in this thread
 *
 * Before marking, the previous cycle's pending slabs are swept (their marks
 * must not mix with the new ones) and every thread cache of the heap is
 * emptied into its slabs: a block that is free now must not be handed out
 * from a cache while its slab still waits for the sweep, or the sweep would
 * take it for dead.
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
 * Returns the bytes freed; clears the slab's marks. Safe with the world
 * running: a marked block is skipped before its memory is read, and nobody
 * else touches an unmarked allocated block (it is unreachable). */
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
        mc_free(gc->heap, b);
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

/* The arena's hook for a pending slab (lock held). */
static void sweep_pending(arena_t *a, slab_t *s)
{
    loam_heap_t *h = a->owner;
    segment_t *seg = (segment_t *)((uintptr_t)s->start & ~(uintptr_t)SEGMENT_MASK);
    size_t freed = sweep_slab(h->gc, a, seg, s);
    arena_pending_done(a, s);
    if (freed)
        __atomic_fetch_add(&h->gc->bytes_swept, freed, __ATOMIC_RELAXED);
}

/* At process start (runtime/init.c), before any heap exists. */
void gc_install_hooks(void)
{
    alloc_pending_hook = sweep_pending;
}

void gc_finish_sweep(loam_heap_t *h)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(h, i)); i++) {
        arena_lock(a);
        arena_pending_visit_all(a);
        arena_unlock(a);
    }
}

/* World stopped: every thread cache of the heap goes back to its slabs (their
 * threads are stopped, or the caches are disowned). */
static void empty_thread_caches(loam_heap_t *h)
{
    heaps_lock();
    for (tcache_t *tc = h->caches; tc; tc = tc->owner_next)
        tcache_flush_all(tc);
    heaps_unlock();
}

/* World stopped. Large blocks are unmapped now; slabs become pending. */
size_t gc_sweep(gc_state_t *gc)
{
    size_t freed = 0;
    arena_t *a;
    large_t *dead_large = NULL;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        arena_lock(a);
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            for (unsigned p = 1; p < PAGES_PER_SEGMENT; p += seg->slabs[p].pages) {
                slab_t *s = &seg->slabs[p];
                if (s->state != RUN_SLAB)
                    continue;
                if (s->used)
                    arena_pending_add(a, s);        /* its sweep clears its marks */
                else
                    gc_clear_slab_marks(seg, s);    /* a free block may have been marked */
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
        arena_unlock(a);
    }
    while (dead_large) {
        large_t *l = dead_large;
        dead_large = (large_t *)l->upper;
        mc_free(gc->heap, l->block);
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

    empty_thread_caches(h);
    gc_finish_sweep(h);
    gc_mark_roots(gc);
    gc_mark_drain(gc);
    gc_clear_dead_weaks(gc);
    gc_find_ready_finalizers(gc);
    size_t live = gc->marked_bytes;
    __atomic_fetch_add(&gc->bytes_swept, gc_sweep(gc), __ATOMIC_RELAXED);

    gc->live_after = live;
    AO_store(&gc->alloc_since, 0);
    note_pause(gc, gc_now_ns() - t0);
    gc_restart_world(gc);
    pthread_mutex_unlock(&gc->lock);
    if (visiting)
        loam_thread_detach(h);

    gc_run_ready_finalizers(gc);
}
