/* alloc/large.c — blocks above mmap_threshold: one mapping each.
 *
 * The mapping starts at a 4 MiB boundary (so the segment map can find it)
 * with a one-page header, and the block follows at the first multiple of its
 * alignment past the header. Freeing unmaps it: the memory is back at once.
 * Growing tries mremap in place, then moves the pages (no copy) into a fresh
 * aligned reservation. */
#define _GNU_SOURCE
#include "alloc/alloc.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

static size_t round_page(size_t n)
{
    return (n + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
}

static void large_link(arena_t *a, large_t *l)
{
    arena_lock(a);
    l->prev = NULL;
    l->next = a->large;
    if (a->large)
        a->large->prev = l;
    a->large = l;
    a->c.large_count++;
    a->c.large_bytes += l->map_size;
    a->c.large_usable += l->size;
    a->c.large_requested += l->requested;
    arena_note_peak(a);
    arena_unlock(a);
}

static void large_unlink_locked(arena_t *a, large_t *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        a->large = l->next;
    if (l->next)
        l->next->prev = l->prev;
    a->c.large_count--;
    a->c.large_bytes -= l->map_size;
    a->c.large_usable -= l->size;
    a->c.large_requested -= l->requested;
}

void *large_alloc(arena_t *a, size_t n, size_t align)
{
    size_t offset = align > OS_PAGE ? align : OS_PAGE;
    if (n > ((size_t)1 << 46) || offset > ((size_t)1 << 40)) {
        errno = ENOMEM;
        return NULL;
    }
    size_t map = round_page(offset + (n ? n : 1));     /* a zero-size block still has an address */
    if (!budget_charge(a->budget, map)) {
        errno = ENOMEM;
        return NULL;
    }
    large_t *l = os_reserve_aligned(map, SEGMENT_SIZE);
    if (!l) {
        budget_release(a->budget, map);
        return NULL;
    }
    AO_fetch_and_add(&os_committed_bytes, map);
    l->kind = SEGMENT_LARGE;
    l->arena = a;
    l->block = (char *)l + offset;
    l->size = map - offset;
    l->map_size = map;
    l->requested = n;
    l->tag = a->tag;
    segmap_set((uintptr_t)l, map, l);
    large_link(a, l);
    return l->block;
}

void large_free(large_t *l)
{
    arena_t *a = l->arena;
    size_t map = l->map_size;
    arena_lock(a);
    large_unlink_locked(a, l);
    arena_unlock(a);
    segmap_set((uintptr_t)l, map, NULL);
    budget_release(a->budget, map);
    AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - map);
    os_release(l, map);
}

void *large_realloc(large_t *l, size_t n)
{
    arena_t *a = l->arena;
    size_t offset = (size_t)(l->block - (char *)l);
    if (n > ((size_t)1 << 46)) {
        errno = ENOMEM;
        return NULL;
    }
    size_t old_map = l->map_size, map = round_page(offset + n);
    if (map == old_map) {
        arena_lock(a);
        a->c.large_requested += n - l->requested;
        l->requested = n;
        arena_unlock(a);
        return l->block;
    }
    if (map > old_map && !budget_charge(a->budget, map - old_map)) {
        errno = ENOMEM;
        return NULL;
    }
    arena_lock(a);                                /* the list and counters see the change atomically */
    large_t *moved = l;
    if (map < old_map) {
        munmap((char *)l + map, old_map - map);
    } else if (mremap(l, old_map, map, 0) == MAP_FAILED) {
        /* Move the pages into a fresh 4 MiB-aligned reservation. */
        void *dest = os_reserve_aligned(map, SEGMENT_SIZE);
        void *r = dest ? mremap(l, old_map, map, MREMAP_MAYMOVE | MREMAP_FIXED, dest) : MAP_FAILED;
        if (r == MAP_FAILED) {
            if (dest)
                os_release(dest, map);
            arena_unlock(a);
            budget_release(a->budget, map - old_map);
            errno = ENOMEM;
            return NULL;
        }
        /* The reservation counted `map`; the old range is gone. */
        AO_fetch_and_add(&os_reserved_bytes, (AO_t)0 - map);
        moved = r;
    }
    /* The map changes under the segmap lock; lookups see old or new, both valid until now. */
    if (moved != l) {
        segmap_set((uintptr_t)moved, map, moved);
        segmap_set((uintptr_t)l, old_map, NULL);
        if (moved->prev)
            moved->prev->next = moved;
        else
            a->large = moved;
        if (moved->next)
            moved->next->prev = moved;
        moved->block = (char *)moved + offset;
    } else if (map > old_map) {
        segmap_set((uintptr_t)l, map, l);
    } else {
        /* Granules wholly past the new end are no longer ours. */
        uintptr_t keep = ((uintptr_t)l + map + SEGMENT_MASK) & ~(uintptr_t)SEGMENT_MASK;
        uintptr_t end = (uintptr_t)l + old_map;
        if (end > keep)
            segmap_set(keep, end - keep, NULL);
    }
    a->c.large_bytes += map - old_map;
    a->c.large_usable += (map - offset) - moved->size;
    a->c.large_requested += n - moved->requested;
    moved->map_size = map;
    moved->size = map - offset;
    moved->requested = n;
    arena_note_peak(a);
    arena_unlock(a);
    if (map < old_map) {
        budget_release(a->budget, old_map - map);
        AO_fetch_and_add(&os_reserved_bytes, (AO_t)0 - (old_map - map));
        AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - (old_map - map));
    } else {
        AO_fetch_and_add(&os_reserved_bytes, map - old_map);
        AO_fetch_and_add(&os_committed_bytes, map - old_map);
    }
    return moved->block;
}
