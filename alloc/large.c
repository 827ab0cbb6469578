/* alloc/large.c — blocks above mmap_threshold: one mapping each.
 *
 * The mapping starts at a 4 MiB boundary (so the segment map can find it)
 * with a one-page header, and the block follows at the first multiple of its
 * alignment past the header. An alignment above 4 MiB would leave a gap of
 * up to the alignment there, so such a mapping is placed one segment below a
 * multiple of the alignment instead, and its block starts a segment in.
 * Growing tries mremap in place, then moves the pages (no copy) into a fresh
 * reservation at a segment boundary (realloc keeps no alignment above that).
 *
 * Freeing keeps the mapping for reuse when the arena's cache has room, else
 * unmaps it. A program that frees and allocates big blocks in turn would
 * otherwise pay a fresh mapping and a page fault for every page of every
 * block, the pages of the last one having just been given back. The cache
 * holds at most LARGE_CACHE_MAX mappings of at most 32 MiB, and at most
 * max(retain_max, min(8 x the live large bytes, 512 MiB)); a reused mapping
 * grows in place (mremap) to the new block's size when it is too small, and
 * gives its tail's pages to a new cached mapping when it is far too big. A
 * new mapping takes the pages of cached ones that fit in it first (pages
 * moved by mremap cost no fault and no zeroing). A mapping idle for
 * decay_ms is unmapped by the next purge (the background thread's, or a
 * slow path's), trim unmaps them all. A cached
 * mapping stays in the segment map with no block in it (size 0): a free of
 * its old address is reported as a double free, and a conservative pointer
 * into it marks nothing. */
#define _GNU_SOURCE
#include "alloc/alloc.h"
#include "alloc/memcheck.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

static size_t round_page(size_t n)
{
    return (n + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
}

/* The arena's two lists of large_t (its live blocks, its cached mappings):
 * doubly linked, newest first. */
static void list_push(large_t **head, large_t *l)
{
    l->prev = NULL;
    l->next = *head;
    if (*head)
        (*head)->prev = l;
    *head = l;
}

static void list_unlink(large_t **head, large_t *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        *head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->next = l->prev = NULL;
}

static void large_link(arena_t *a, large_t *l)
{
    arena_lock(a);
    list_push(&a->large, l);
    a->c.large_count++;
    a->c.large_bytes += l->map_size;
    a->c.large_usable += l->size;
    AO_fetch_and_add(&a->c.large_requested, l->requested);
    arena_note_peak(a);
    arena_unlock(a);
}

static void large_unlink_locked(arena_t *a, large_t *l)
{
    list_unlink(&a->large, l);
    a->c.large_count--;
    a->c.large_bytes -= l->map_size;
    a->c.large_usable -= l->size;
    AO_fetch_and_add(&a->c.large_requested, (AO_t)0 - l->requested);
}

#define LARGE_CACHE_MAP_MAX ((size_t)32 << 20)    /* bigger mappings are never kept */
#define LARGE_CACHE_BYTES_MAX ((size_t)512 << 20)

/* The cache grows only when an allocation finds nothing that fits (a block
 * freed, another allocated, leaves it as it was), so what bounds it in
 * practice is the count; the bytes are bounded by a multiple of the live
 * large bytes, so that a program that frees its large blocks gives the
 * mappings back at once beyond retain_max. */
static size_t large_cache_budget(arena_t *a)
{
    size_t b = a->c.large_bytes * 8;
    if (b > LARGE_CACHE_BYTES_MAX)
        b = LARGE_CACHE_BYTES_MAX;
    size_t retain = alloc_retain_max();
    return b > retain ? b : retain;
}

static void cache_unlink_at_locked(arena_t *a, size_t i)
{
    a->large_cache_bytes -= a->large_cache[i].map_size;
    a->large_cache_count--;
    memmove(&a->large_cache[i], &a->large_cache[i + 1],
            (a->large_cache_count - i) * sizeof a->large_cache[0]);
}

static void cache_unlink_locked(arena_t *a, large_t *l)
{
    for (size_t i = 0; i < a->large_cache_count; i++)
        if (a->large_cache[i].l == l) {
            cache_unlink_at_locked(a, i);
            return;
        }
}

/* Every link is followed by cache_evict_locked before the lock is released,
 * so the cache is never more than one over LARGE_CACHE_MAX. */
static void cache_link_locked(arena_t *a, large_t *l)
{
    a->large_cache[a->large_cache_count++] = (large_cache_slot_t){
        .l = l, .map_size = l->map_size, .pieced = l->pieced, .unmovable = l->unmovable };
    a->large_cache_bytes += l->map_size;
}

/* Oldest out first, past LARGE_CACHE_MAX mappings or `budget` bytes (lock
 * held): returns them as a list, to be unmapped once the lock is released. */
static large_t *cache_evict_locked(arena_t *a, size_t budget)
{
    large_t *evicted = NULL;
    while (a->large_cache_count && (a->large_cache_bytes > budget || a->large_cache_count > LARGE_CACHE_MAX)) {
        large_t *old = a->large_cache[0].l;
        cache_unlink_at_locked(a, 0);
        old->next = evicted;
        evicted = old;
    }
    return evicted;
}

static void large_unmap(large_t *l);

static void unmap_evicted(large_t *evicted)
{
    while (evicted) {
        large_t *e = evicted;
        evicted = e->next;
        large_unmap(e);
    }
}

/* The cached mapping to serve `map` bytes from (lock held), taken out of
 * the cache: the smallest that holds it, else the largest if it has half of
 * it (it grows: only the growth is new pages), else none (a new mapping is
 * made, and the cache gains a size it lacked). Half rather than three
 * quarters: the large-block benchmark (64 KiB-4 MiB, log-uniform) ran about
 * 10 % faster, its peak RSS 63.4 -> 64.9 MiB (a third: no faster, 67.7).
 * Every mapping starts at a segment boundary, which meets any alignment up
 * to SEGMENT_SIZE; a larger one only a mapping that happens to sit a
 * segment below a multiple of it meets, and only if it need not grow (a
 * grown mapping may move to a fresh segment boundary). */
static large_t *cache_take_locked(arena_t *a, size_t map, size_t align)
{
    const large_cache_slot_t *fit = NULL, *largest = NULL;
    bool placed = align > SEGMENT_SIZE;
    for (size_t i = 0; i < a->large_cache_count; i++) {
        const large_cache_slot_t *c = &a->large_cache[i];
        if (placed && (((uintptr_t)c->l + SEGMENT_SIZE) & (align - 1)) != 0)
            continue;
        if (c->map_size >= map && (!fit || c->map_size < fit->map_size))
            fit = c;
        if (!placed && !c->pieced && (!largest || c->map_size > largest->map_size))
            largest = c;                /* to grow: mremap cannot grow a pieced one */
    }
    const large_cache_slot_t *got = fit ? fit : largest && largest->map_size >= map / 2 ? largest : NULL;
    if (!got)
        return NULL;
    large_t *l = got->l;
    cache_unlink_at_locked(a, (size_t)(got - a->large_cache));
    return l;
}

static void large_unmap(large_t *l)
{
    arena_t *a = l->arena;
    size_t map = l->map_size;
    segmap_set((uintptr_t)l, map, NULL);
    segmap_note_released((uintptr_t)l, map);
    budget_release(a->budget, map);
    AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - map);
    os_release(l, map);
}

/* Resize l's mapping to `map` bytes, keeping its pages: shrink by unmapping
 * the tail, grow by mremap in place or by moving the pages (no copy) into a
 * fresh 4 MiB-aligned reservation. The segment map, the budget and the OS
 * counters follow; the block fields, the arena's lists and counters are the
 * caller's (the mapping may have moved: use the result). NULL: no memory
 * (l unchanged). */
static large_t *mapping_resize(large_t *l, size_t map)
{
    arena_t *a = l->arena;
    size_t old_map = l->map_size;
    if (map == old_map)
        return l;
    if (map > old_map && (l->pieced || !budget_charge(a->budget, map - old_map)))
        return NULL;                /* pieced: several kernel mappings, mremap fails */
    large_t *moved = l;
    /* Granules leave the segment map before their pages go, never after:
     * the moment a range is unmapped, another thread may map there and
     * enter its own block, which a late clearing would erase (its block
     * then read as foreign: "free of a pointer not allocated by loam"). */
    if (map < old_map) {
        /* Granules wholly past the new end are no longer ours. */
        uintptr_t keep = ((uintptr_t)l + map + SEGMENT_MASK) & ~(uintptr_t)SEGMENT_MASK;
        uintptr_t end = (uintptr_t)l + old_map;
        if (end > keep)
            segmap_set(keep, end - keep, NULL);
        munmap((char *)l + map, old_map - map);
    } else if (mremap(l, old_map, map, 0) == MAP_FAILED) {
        void *dest = os_reserve_aligned(map, SEGMENT_SIZE);
        /* Only the caller, who holds the block, and nobody else looks it up
         * meanwhile (the arena lock is held). */
        if (dest)
            segmap_set((uintptr_t)l, old_map, NULL);
        void *r = dest ? mremap(l, old_map, map, MREMAP_MAYMOVE | MREMAP_FIXED, dest) : MAP_FAILED;
        if (r == MAP_FAILED) {
            if (dest) {
                segmap_set((uintptr_t)l, old_map, l);      /* still where it was */
                os_release(dest, map);
            }
            budget_release(a->budget, map - old_map);
            return NULL;
        }
        /* The reservation counted `map`; the old range is gone. */
        AO_fetch_and_add(&os_reserved_bytes, (AO_t)0 - map);
        moved = r;
    }
    if (moved != l)
        segmap_set((uintptr_t)moved, map, moved);
    else if (map > old_map)
        segmap_set((uintptr_t)l, map, l);
    moved->map_size = map;
    if (map < old_map) {
        budget_release(a->budget, old_map - map);
        AO_fetch_and_add(&os_reserved_bytes, (AO_t)0 - (old_map - map));
        AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - (old_map - map));
    } else {
        AO_fetch_and_add(&os_reserved_bytes, map - old_map);
        AO_fetch_and_add(&os_committed_bytes, map - old_map);
    }
    return moved;
}

/* Shrink the cached mapping l (taken out of the cache) to `map` bytes by
 * moving the pages of its tail (no copy, no fault) into a mapping of their
 * own, put back in the cache. Unmapping the tail would give back resident
 * pages that the next bigger block faults in again: with block sizes spread
 * over 64 KiB-4 MiB that was 40 MiB of pages faulted twice per 16,000
 * blocks (the "large" benchmark). false: not done (the caller unmaps it). */
static bool cache_split_tail(large_t *l, size_t map)
{
    arena_t *a = l->arena;
    size_t old_map = l->map_size, tail = old_map - map;
    char *dest = os_reserve_aligned(tail, SEGMENT_SIZE);
    if (!dest)
        return false;
    /* The tail's granules leave the map before the range is vacated (see
     * mapping_resize): a mapping another thread makes there at once must
     * not lose its entries to a late clearing. */
    uintptr_t keep = ((uintptr_t)l + map + SEGMENT_MASK) & ~(uintptr_t)SEGMENT_MASK;
    uintptr_t end = (uintptr_t)l + old_map;
    if (end > keep)
        segmap_set(keep, end - keep, NULL);
    if (mremap((char *)l + map, tail, tail, MREMAP_MAYMOVE | MREMAP_FIXED, dest) == MAP_FAILED) {
        if (end > keep)
            segmap_set(keep, end - keep, l);
        os_release(dest, tail);
        return false;
    }
    /* l's old tail range is gone; its pages, its commitment and its budget
     * charge are dest's now. */
    AO_fetch_and_add(&os_reserved_bytes, (AO_t)0 - tail);
    l->map_size = map;
    large_t *t = (large_t *)dest;
    /* Its first page held block bytes, which memcheck holds freed (their
     * state moved with the pages): the header is loam's to write again. */
    mc_fresh(t, sizeof *t);
    memset(t, 0, sizeof *t);
    t->kind = SEGMENT_LARGE;
    t->arena = a;
    t->map_size = tail;
    t->tag = a->tag;
    t->cached = true;
    t->pieced = l->pieced;                  /* its tail may be several mappings too */
    t->freed_at_ms = os_now_ms();
    segmap_set((uintptr_t)t, tail, t);
    arena_lock(a);
    cache_link_locked(a, t);
    large_t *evicted = cache_evict_locked(a, SIZE_MAX);   /* the count only: bytes are unchanged */
    arena_unlock(a);
    unmap_evicted(evicted);
    alloc_note_decay_due();
    return true;
}

/* Pages of cached mappings moved (no copy, no fault) into the start of a
 * fresh reservation of `map` bytes, the largest first while they fit, at
 * most LARGE_PIECES_MAX of them; returns the bytes moved in. When no cached
 * mapping is big enough for a block, the cache may still hold resident
 * pages enough: without this, a program whose big blocks vary in size
 * faults in every page of each new mapping while the cache's oldest are
 * unmapped.
 * A mapping made of several pieces is several kernel mappings, which mremap
 * cannot grow in place (`pieced`: growing it makes a fresh mapping, as any
 * failed growth does); moving it whole or in part needs Linux 6.17 or later,
 * and where that fails it stays where it was, marked, and serves as is. */
#define LARGE_PIECES_MAX 8
static size_t cache_move_pages_into(arena_t *a, char *dest, size_t map)
{
    size_t filled = 0;
    for (unsigned pieces = 0; pieces < LARGE_PIECES_MAX && filled < map; pieces++) {
        large_t *best = NULL;
        size_t best_at = 0, best_size = 0;
        arena_lock(a);
        for (size_t i = 0; i < a->large_cache_count; i++) {
            const large_cache_slot_t *c = &a->large_cache[i];
            if (!c->unmovable && c->map_size <= map - filled && c->map_size > best_size) {
                best = c->l;
                best_at = i;
                best_size = c->map_size;
            }
        }
        if (best)
            cache_unlink_at_locked(a, best_at);
        arena_unlock(a);
        if (!best)
            break;
        size_t k = best->map_size;
        segmap_set((uintptr_t)best, k, NULL);
        if (mremap(best, k, k, MREMAP_MAYMOVE | MREMAP_FIXED, dest + filled) == MAP_FAILED) {
            segmap_set((uintptr_t)best, k, best);
            best->unmovable = true;         /* still where it was: back to the cache */
            arena_lock(a);
            cache_link_locked(a, best);
            arena_unlock(a);
            continue;
        }
        /* Its range is gone; its pages are counted in dest's reservation,
         * commitment and budget charge from now on. */
        AO_fetch_and_add(&os_reserved_bytes, (AO_t)0 - k);
        AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - k);
        budget_release(a->budget, k);
        filled += k;
    }
    return filled;
}

void *large_alloc(arena_t *a, size_t n, size_t align)
{
    if (n > ((size_t)1 << 46) || align > ((size_t)1 << 40)) {
        errno = ENOMEM;
        return NULL;
    }
    /* Above SEGMENT_SIZE the gap before the block would be mapped, counted
     * and charged to the heap's limit (a whole 1 GiB for a 1 GiB alignment);
     * placed, such a block costs what a 4 MiB-aligned one does, and only the
     * search for its address spans the alignment, unmapped at once. */
    size_t offset = align <= OS_PAGE ? OS_PAGE : align <= SEGMENT_SIZE ? align : SEGMENT_SIZE;
    size_t map = round_page(offset + (n ? n : 1));     /* a zero-size block still has an address */
    arena_lock(a);
    large_t *l = a->large_cache_count ? cache_take_locked(a, map, align) : NULL;
    arena_unlock(a);
    if (l) {
        /* Grown, or shrunk when 7/8 or more would be left over (those pages
         * are resident: the last block's). */
        large_t *r = l;
        bool far_too_big = l->map_size >= map && l->map_size - map >= l->map_size / 8 * 7;
        if (far_too_big && cache_split_tail(l, map))
            ;                               /* the tail's pages stay, cached */
        else if (l->map_size < map || far_too_big)
            r = mapping_resize(l, map);
        if (r) {
            l = r;
            l->cached = false;
            l->reused = true;
        } else {
            large_unmap(l);                 /* could not grow: a fresh mapping instead */
            l = NULL;
        }
    }
    if (!l) {
        if (!budget_charge(a->budget, map)) {
            errno = ENOMEM;
            return NULL;
        }
        char *dest = align > SEGMENT_SIZE ? os_map_block(map, align, SEGMENT_SIZE)
                                          : os_map_block(map, SEGMENT_SIZE, 0);
        if (!dest) {
            budget_release(a->budget, map);
            return NULL;
        }
        AO_fetch_and_add(&os_committed_bytes, map);
        size_t moved = cache_move_pages_into(a, dest, map);
        l = (large_t *)dest;
        memset(l, 0, sizeof *l);            /* moved pages may hold an old header */
        l->kind = SEGMENT_LARGE;
        l->arena = a;
        l->map_size = map;
        l->reused = moved > 0;
        l->pieced = moved > 0;
        segmap_set((uintptr_t)l, map, l);
    }
    l->upper = 0;
    l->block = (char *)l + offset;
    l->size = l->map_size - offset;
    l->requested = n;
    l->tag = a->tag;
    large_link(a, l);
    return l->block;
}

/* Where the background thread serves the arena, a free may leave the cache
 * this much past its budget: the thread unmaps the excess moments later
 * (arena_decommit_excess), so the freeing thread does not wait for munmap.
 * Freeing the last 16 blocks of the large-block benchmark spent a tenth of
 * its time unmapping them. The excess stays reusable until then. */
#define LARGE_CACHE_LATER_MAX ((size_t)128 << 20)

void large_free(large_t *l)
{
    arena_t *a = l->arena;
    arena_lock(a);
    large_unlink_locked(a, l);
    size_t budget = large_cache_budget(a);
    bool later = a->decommit_later && AO_load(&alloc_background_decommit);
    size_t allowed = later ? budget + LARGE_CACHE_LATER_MAX : budget;
    bool keep = l->map_size <= allowed && l->map_size <= LARGE_CACHE_MAP_MAX;
    if (keep) {
        l->cached = true;
        l->size = 0;
        l->freed_at_ms = os_now_ms();
        cache_link_locked(a, l);
    }
    /* The budget shrinks with the live bytes, so freeing everything empties
     * the cache down to retain_max: here, or by the background thread. */
    large_t *evicted = cache_evict_locked(a, allowed);
    if (a->large_cache_bytes > budget)
        AO_char_store(&a->decommit_due, 1);     /* only read where `later` */
    arena_unlock(a);
    unmap_evicted(evicted);
    if (keep)
        alloc_note_decay_due();     /* l may be reused or unmapped by now: not read */
    else
        large_unmap(l);
}

void large_release(large_t *l)
{
    arena_t *a = l->arena;
    arena_lock(a);
    if (l->cached)
        cache_unlink_locked(a, l);
    else
        large_unlink_locked(a, l);
    arena_unlock(a);
    large_unmap(l);
}

large_t *large_cache_take_excess_locked(arena_t *a)
{
    return cache_evict_locked(a, large_cache_budget(a));
}

size_t large_unmap_list(large_t *list)
{
    size_t bytes = 0;
    for (large_t *e = list; e; e = e->next)
        bytes += e->map_size;
    unmap_evicted(list);
    return bytes;
}

size_t large_cache_purge(arena_t *a, bool force, uint64_t now, bool *left)
{
    size_t bytes = 0;
    for (size_t i = 0; i < a->large_cache_count;) {
        large_t *c = a->large_cache[i].l;
        if (force || now - c->freed_at_ms >= alloc_decay_ms()) {
            cache_unlink_at_locked(a, i);
            bytes += c->map_size;
            large_unmap(c);
        } else {
            *left = true;
            i++;
        }
    }
    return bytes;
}

/* A ring of recently freed block addresses, written lock-free (a lost or
 * torn update costs only a less precise fault message). */
#define FREED_RING 64
static AO_t freed_ring[FREED_RING];
static AO_t freed_next;

void large_remember_freed(const void *block)
{
    AO_t i = AO_fetch_and_add1(&freed_next);
    AO_store(&freed_ring[i % FREED_RING], (AO_t)block);
}

bool large_was_freed(const void *p)
{
    for (unsigned i = 0; i < FREED_RING; i++)
        if (AO_load(&freed_ring[i]) == (AO_t)p)
            return true;
    return false;
}

void *large_realloc(large_t *l, size_t n)
{
    arena_t *a = l->arena;
    size_t offset = (size_t)(l->block - (char *)l);
    if (n > ((size_t)1 << 46)) {
        errno = ENOMEM;
        return NULL;
    }
    size_t old_map = l->map_size, exact = round_page(offset + n), map = exact;
    /* Growing takes an eighth more than asked: a block grown a little at a
     * time (a string builder) then needs an mremap every eighth of its
     * size, not every page (64 B steps to 64 MiB: 49,000 mremaps before).
     * The slack is address space; its pages become resident only if the
     * block grows into them. Shrinking within that eighth keeps the mapping
     * (no back and forth at its edge); shrinking further gives the tail
     * back, resident pages and all. */
    if (map > old_map) {
        size_t slack = round_page(map + map / 8);
        if (slack > map && slack - map <= ((size_t)1 << 30))
            map = slack;
    } else if (map >= old_map - old_map / 8) {
        map = old_map;
    }
    if (map == old_map) {
        /* In place: only the requested-bytes count changes, with no lock (a
         * string builder calls this once per few bytes appended). */
        AO_fetch_and_add(&a->c.large_requested, (AO_t)n - l->requested);
        l->requested = n;
        return l->block;
    }
    arena_lock(a);                                /* the list and counters see the change atomically */
    large_t *moved = mapping_resize(l, map);
    if (!moved && map != exact) {
        map = exact;                              /* the slack is over the heap's limit */
        moved = mapping_resize(l, map);
    }
    if (!moved) {
        arena_unlock(a);
        errno = ENOMEM;
        return NULL;
    }
    if (moved != l) {
        if (moved->prev)
            moved->prev->next = moved;
        else
            a->large = moved;
        if (moved->next)
            moved->next->prev = moved;
        moved->block = (char *)moved + offset;
    }
    /* A block that grows is being filled: its new pages are about to be
     * written. Huge pages fault 512 times fewer, and the kernel zeroes each
     * in one go: growing 16 B -> 64 MiB by doubling went from 42 to 12 ms,
     * nine tenths of it now zeroing, where tcmalloc's 13 ms reuse pages it
     * kept (at twice the peak RSS). The cost is RSS in 2 MiB steps where a
     * program touches the slack past its size. The mapping keeps the advice
     * (and a cached one with it); a kernel without THP ignores it. */
    if (map > old_map && alloc_huge_pages())
        os_advise_huge(moved, map);
    a->c.large_bytes += map - old_map;
    a->c.large_usable += (map - offset) - moved->size;
    AO_fetch_and_add(&a->c.large_requested, (AO_t)n - moved->requested);
    moved->size = map - offset;
    moved->requested = n;
    arena_note_peak(a);
    arena_unlock(a);
    return moved->block;
}
