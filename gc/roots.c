/* gc/roots.c — roots: the embedder's callback, precise slots, conservative
 * ranges. (Thread stacks are in threads.c.) */
#include "gc/gc.h"

static bool grow(void **array, size_t *cap, size_t elem)
{
    size_t ncap = *cap ? *cap * 2 : 16;
    void *n = meta_alloc(ncap * elem);
    if (!n)
        return false;
    if (*array) {
        memcpy(n, *array, *cap * elem);
        meta_free(*array, *cap * elem);
    }
    *array = n;
    *cap = ncap;
    return true;
}

void loam_root_add(loam_heap_t *h, void **slot)
{
    if (!h || !slot)
        return;
    gc_state_t *gc = gc_state_get(h);
    pthread_mutex_lock(&gc->lock);
    if (gc->nslots < gc->cap_slots || grow((void **)&gc->slots, &gc->cap_slots, sizeof *gc->slots))
        gc->slots[gc->nslots++] = slot;
    else
        loam_warn("loam_root_add: out of memory: slot %p not registered", (void *)slot);
    pthread_mutex_unlock(&gc->lock);
}

void loam_root_remove(loam_heap_t *h, void **slot)
{
    if (!h || !h->gc)
        return;
    gc_state_t *gc = h->gc;
    pthread_mutex_lock(&gc->lock);
    for (size_t i = gc->nslots; i-- > 0;)
        if (gc->slots[i] == slot) {
            gc->slots[i] = gc->slots[--gc->nslots];
            break;
        }
    pthread_mutex_unlock(&gc->lock);
}

void loam_root_add_range(loam_heap_t *h, void *start, void *end)
{
    if (!h || !start || (char *)end <= (char *)start)
        return;
    gc_state_t *gc = gc_state_get(h);
    pthread_mutex_lock(&gc->lock);
    if (gc->nranges < gc->cap_ranges || grow((void **)&gc->ranges, &gc->cap_ranges, sizeof *gc->ranges))
        gc->ranges[gc->nranges++] = (struct root_range){ start, end };
    else
        loam_warn("loam_root_add_range: out of memory: range %p not registered", start);
    pthread_mutex_unlock(&gc->lock);
}

void loam_root_remove_range(loam_heap_t *h, void *start)
{
    if (!h || !h->gc)
        return;
    gc_state_t *gc = h->gc;
    pthread_mutex_lock(&gc->lock);
    for (size_t i = gc->nranges; i-- > 0;)
        if (gc->ranges[i].start == (char *)start) {
            gc->ranges[i] = gc->ranges[--gc->nranges];
            break;
        }
    pthread_mutex_unlock(&gc->lock);
}

/* Lock held, world stopped. */
void gc_mark_roots(gc_state_t *gc)
{
    loam_heap_t *h = gc->heap;
    if (h->cfg.roots)
        h->cfg.roots(&gc->mk.tracer, h->cfg.user);
    for (size_t i = 0; i < gc->nslots; i++)
        if (*gc->slots[i])
            gc_mark_precise(gc, (uintptr_t)*gc->slots[i]);
    for (size_t i = 0; i < gc->nranges; i++)
        gc_mark_range(gc, gc->ranges[i].start, gc->ranges[i].end);
    gc_scan_thread_stacks(gc);
    gc_mark_waiting_finalizables(gc);
}
