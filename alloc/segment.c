/* alloc/segment.c — segments, page runs and the process-wide segment map.
 *
 * A segment is 4 MiB at a 4 MiB boundary, so the segment of any address is
 * `addr & ~SEGMENT_MASK`; the map tells whether that segment is loam's.
 * Page 0 holds the header; pages 1..63 form runs. Invariants kept here:
 *  - page_slab[p] locates the descriptor of the run holding page p (its
 *    first page's);
 *  - two free runs are never adjacent (freeing coalesces);
 *  - committed_mask has a bit per page that may be resident; a run's pages are
 *    charged to the budget once, when they become committed.
 * All functions except the map's reads run under the arena's lock. */
#include "alloc/alloc.h"

#include <string.h>

AO_t segmap_l1[SEGMAP_L1_SIZE];
/* In .bss: 32 MiB of address space, only the pages holding set bytes are
 * ever resident (reads of the rest hit the shared zero page). */
uint8_t segkind_map[SEGKIND_SIZE];

void segkind_set(uintptr_t base, uint8_t kind)
{
    __atomic_store_n(&segkind_map[base >> SEGMENT_SHIFT], kind, __ATOMIC_RELEASE);
}
pthread_mutex_t segmap_lock = PTHREAD_MUTEX_INITIALIZER;

#define SEGMAP_L2_SIZE ((size_t)1 << SEGMAP_L2_BITS)

AO_t segmap_lowest = ~(AO_t)0, segmap_highest;

void segmap_set(uintptr_t base, size_t len, void *value)
{
    pthread_mutex_lock(&segmap_lock);
    if (value) {                /* the bounds only grow: a stale read is safe (see alloc.h) */
        if (base < AO_load(&segmap_lowest))
            AO_store(&segmap_lowest, base);
        if (base + len > AO_load(&segmap_highest))
            AO_store(&segmap_highest, base + len);
    }
    for (uintptr_t g = base; g < base + len; g += SEGMENT_SIZE) {
        size_t i1 = g >> (SEGMENT_SHIFT + SEGMAP_L2_BITS);
        AO_t *leaf = (AO_t *)AO_load(&segmap_l1[i1]);
        if (!leaf) {
            if (!value)
                continue;
            leaf = os_reserve_aligned(SEGMAP_L2_SIZE * sizeof(AO_t), OS_PAGE);
            if (!leaf)
                break;      /* cannot happen in practice; the caller's lookup then fails safe */
            AO_store_release(&segmap_l1[i1], (AO_t)leaf);
        }
        AO_store_release(&leaf[(g >> SEGMENT_SHIFT) & (SEGMAP_L2_SIZE - 1)], (AO_t)value);
    }
    pthread_mutex_unlock(&segmap_lock);
}

/* Each entry is one word, the first granule's index in the high half and
 * the granule count in the low half (both under 2^25 in a 47-bit address
 * space), so a reader never sees half of one entry and half of another. */
static AO_t released_ring[SEGMAP_RELEASED_RING];
static AO_t released_next;

void segmap_note_released(uintptr_t base, size_t len)
{
    AO_t first = base >> SEGMENT_SHIFT;
    AO_t count = (len + SEGMENT_MASK) >> SEGMENT_SHIFT;
    AO_t i = AO_fetch_and_add1(&released_next);
    AO_store(&released_ring[i % SEGMAP_RELEASED_RING], first << 32 | count);
}

bool segmap_was_released(uintptr_t a)
{
    AO_t g = a >> SEGMENT_SHIFT;
    for (unsigned i = 0; i < SEGMAP_RELEASED_RING; i++) {
        AO_t e = AO_load(&released_ring[i]);
        AO_t first = e >> 32, count = e & 0xffffffffu;
        if (count && g >= first && g - first < count)
            return true;
    }
    return false;
}

/* ---- free-run bins ------------------------------------------------------ */

static void run_bin_insert(arena_t *a, slab_t *r)
{
    slab_t **bin = &a->free_runs[r->pages];
    r->prev = NULL;
    r->next = *bin;
    if (*bin)
        (*bin)->prev = r;
    *bin = r;
}

static void run_bin_remove(arena_t *a, slab_t *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        a->free_runs[r->pages] = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
}

static segment_t *segment_of(slab_t *r)
{
    return (segment_t *)((uintptr_t)r & ~SEGMENT_MASK);
}

/* Every change of an arena's retained bytes goes through here (lock held),
 * so that its budget's total stays the sum over the owner's arenas. */
static void retained_change(arena_t *a, intptr_t bytes)
{
    a->retained_bytes += (size_t)bytes;
    if (a->budget)
        AO_fetch_and_add(&a->budget->retained, (AO_t)bytes);
}

static uint64_t run_mask(unsigned first, unsigned pages)
{
    uint64_t m = pages >= 64 ? ~0ull : ((1ull << pages) - 1);
    return m << first;
}

static void run_set_head(segment_t *seg, unsigned first, unsigned pages)
{
    for (unsigned p = first; p < first + pages; p++)
        seg->page_slab[p] = &seg->slabs[first];
}

/* A descriptor becomes the head of a run of `pages` pages at `first`. */
static slab_t *run_make(segment_t *seg, unsigned first, unsigned pages, enum run_state st)
{
    slab_t *r = &seg->slabs[first];
    memset(r, 0, sizeof *r);
    r->state = (uint8_t)st;
    r->pages = (uint16_t)pages;
    r->page_index = (uint16_t)first;
    r->arena = seg->arena;
    r->start = (char *)seg + (size_t)first * PAGE_SIZE;
    run_set_head(seg, first, pages);
    return r;
}

/* ---- segments ---------------------------------------------------------- */

/* The dirty list: every segment with a free run that holds committed pages,
 * and every segment with no slab, is on it (others may be too). A segment
 * joins when a run is freed into it or it is made, and leaves when a purge
 * finds nothing there to give back or release. Decay once walked every run
 * of every segment, a twentieth of a second apart: with 8 GiB live in 1 KiB
 * blocks, 13 % of a malloc/free loop's time went to arena_purge. */
static void dirty_add(arena_t *a, segment_t *seg)
{
    if (seg->dirty)
        return;
    seg->dirty = true;
    seg->dirty_prev = NULL;
    seg->dirty_next = a->dirty;
    if (a->dirty)
        a->dirty->dirty_prev = seg;
    a->dirty = seg;
}

static void dirty_remove(arena_t *a, segment_t *seg)
{
    if (!seg->dirty)
        return;
    seg->dirty = false;
    if (seg->dirty_prev)
        seg->dirty_prev->dirty_next = seg->dirty_next;
    else
        a->dirty = seg->dirty_next;
    if (seg->dirty_next)
        seg->dirty_next->dirty_prev = seg->dirty_prev;
    seg->dirty_next = seg->dirty_prev = NULL;
}

static segment_t *segment_new(arena_t *a)
{
    if (!budget_charge(a->budget, SEGMENT_HEADER_COMMIT))
        return NULL;
    segment_t *seg = os_reserve_aligned(SEGMENT_SIZE, SEGMENT_SIZE);
    if (!seg) {
        budget_release(a->budget, SEGMENT_HEADER_COMMIT);
        return NULL;
    }
    AO_fetch_and_add(&os_committed_bytes, SEGMENT_HEADER_COMMIT);
    if (a->huge_pages) {
        seg->huge = true;
        os_advise_huge(seg, SEGMENT_SIZE);
    }
    seg->kind = SEGMENT_SLABS;
    seg->arena = a;
    seg->owner = a->owner;
    run_make(seg, 0, 1, RUN_HEADER);
    slab_t *r = run_make(seg, 1, PAGES_PER_SEGMENT - 1, RUN_FREE);
    r->freed_at_ms = os_now_ms();
    run_bin_insert(a, r);
    seg->empty_since_ms = r->freed_at_ms;
    seg->next = a->segments;
    if (a->segments)
        a->segments->prev = seg;
    a->segments = seg;
    a->segment_count++;
    dirty_add(a, seg);
    segmap_set((uintptr_t)seg, SEGMENT_SIZE, seg);
    segkind_set((uintptr_t)seg, SEGMENT_SLABS);
    return seg;
}

/* madvise the pages of mask (committed ones), in maximal ranges. */
static void segment_madvise_pages(segment_t *seg, uint64_t m)
{
    while (m) {
        unsigned first = (unsigned)__builtin_ctzll(m);
        unsigned last = first;
        while (last + 1 < 64 && (m >> (last + 1) & 1))
            last++;
        os_decommit((char *)seg + (size_t)first * PAGE_SIZE, (size_t)(last - first + 1) * PAGE_SIZE);
        m &= ~run_mask(first, last - first + 1);
    }
}

/* Part of seg goes back to the OS (lock held): the segment stops asking for
 * huge pages, or the kernel's khugepaged could fault the rest of each 2 MiB
 * back in to collapse it, and memory given back after a peak would return. */
void segment_small_pages(segment_t *seg)
{
    if (seg->huge) {
        seg->huge = false;
        os_advise_small(seg, SEGMENT_SIZE);
    }
}

/* The pages of mask stop counting as committed (lock held); returns those
 * that did, which the caller gives back (segment_madvise_pages). */
static uint64_t segment_uncharge_pages(segment_t *seg, uint64_t mask)
{
    uint64_t m = seg->committed_mask & mask;
    if (m)
        segment_small_pages(seg);
    size_t bytes = (size_t)__builtin_popcountll(m) * PAGE_SIZE;
    seg->committed_mask &= ~mask;
    retained_change(seg->arena, -(intptr_t)bytes);
    if (bytes) {
        budget_release(seg->arena->budget, bytes);
        AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - bytes);
    }
    return m;
}

static size_t segment_decommit_pages(segment_t *seg, uint64_t mask)
{
    uint64_t m = segment_uncharge_pages(seg, mask);
    segment_madvise_pages(seg, m);
    return (size_t)__builtin_popcountll(m) * PAGE_SIZE;
}

/* Out of the maps, and its mappings (the layer above's side table too)
 * back to the OS. */
static void segment_unmap(segment_t *seg)
{
    segkind_set((uintptr_t)seg, 0);
    segmap_set((uintptr_t)seg, SEGMENT_SIZE, NULL);
    segmap_note_released((uintptr_t)seg, SEGMENT_SIZE);
    if (seg->upper_side)
        os_release(seg->upper_side, SEGMENT_UPPER_SIDE_BYTES);
    os_release(seg, SEGMENT_SIZE);
}

static void segment_release(arena_t *a, segment_t *seg)
{
    slab_t *r = &seg->slabs[1];
    run_bin_remove(a, r);
    dirty_remove(a, seg);
    segment_decommit_pages(seg, ~0ull);
    if (seg->prev)
        seg->prev->next = seg->next;
    else
        a->segments = seg->next;
    if (seg->next)
        seg->next->prev = seg->prev;
    a->segment_count--;
    budget_release(a->budget, SEGMENT_HEADER_COMMIT);
    AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - SEGMENT_HEADER_COMMIT);
    segment_unmap(seg);
}

void segment_release_all(arena_t *a)
{
    retained_change(a, -(intptr_t)a->retained_bytes);
    a->slab_pages = 0;
    while (a->segments) {
        segment_t *seg = a->segments;
        a->segments = seg->next;
        size_t committed = (size_t)__builtin_popcountll(seg->committed_mask) * PAGE_SIZE
                           + SEGMENT_HEADER_COMMIT;
        budget_release(a->budget, committed);
        AO_fetch_and_add(&os_committed_bytes, (AO_t)0 - committed);
        segment_unmap(seg);
    }
    a->segment_count = 0;
    a->dirty = NULL;
    memset(a->free_runs, 0, sizeof a->free_runs);
}

/* ---- runs -------------------------------------------------------------- */

/* An arena whose slabs pass ARENA_HUGE_PAGES_AFTER is a big heap's: where
 * its owner allows (collected heaps), its segments ask for transparent huge
 * pages from then on, so pages it has yet to touch fault 2 MiB at a time
 * (GCBench's generational heap: 8,660 page faults, 6,600, x0.94 of the time
 * over 21 interleaved runs; binary-trees depth 19: 22,600 and 14,000).
 * Smaller heaps keep 4 KiB pages: a huge page under a segment holding one
 * slab makes its RSS 2 MiB (the Lisp example's peak went from 6.1 to 8.0
 * MiB). Not malloc's heaps: the fragmentation workload took about twice
 * as long with them (0.10-0.16 s against 0.075: huge faults, and segments
 * switching back as the workload gives pages back). */
static void arena_go_huge(arena_t *a)
{
    a->huge_pages = true;
    for (segment_t *seg = a->segments; seg; seg = seg->next) {
        seg->huge = true;
        os_advise_huge(seg, SEGMENT_SIZE);
    }
}

/* Up to `bytes` of the committed pages of free run r (of seg), or of a's
 * free runs, go back to the OS (lock held), from the top of each run down:
 * a run coalesced from many frees can be most of a segment, and only what
 * is asked for goes. Return the bytes given back. */
static size_t run_give_back(segment_t *seg, const slab_t *r, size_t bytes)
{
    uint64_t have = seg->committed_mask & run_mask(r->page_index, r->pages), take = 0;
    for (size_t want = bytes; have && want; want -= want < PAGE_SIZE ? want : PAGE_SIZE) {
        uint64_t top = 1ull << (63 - __builtin_clzll(have));
        take |= top;
        have &= ~top;
    }
    return take ? segment_decommit_pages(seg, take) : 0;
}

static size_t retained_give_back(arena_t *a, size_t bytes)
{
    size_t given = 0;
    for (segment_t *seg = a->dirty; seg && given < bytes; seg = seg->dirty_next)
        for (unsigned p = 1; p < PAGES_PER_SEGMENT && given < bytes; p += seg->slabs[p].pages)
            if (seg->slabs[p].state == RUN_FREE)
                given += run_give_back(seg, &seg->slabs[p], bytes - given);
    return given;
}

/* a is about to commit `bytes` of fresh pages (lock held). The owner's
 * other arenas give back as many of their retained pages first: each keeps
 * its free runs for its own regrowth, and without this the owner's memory
 * grew while some of it lay idle in a sibling (the Lisp example: the arena
 * of its traced objects held 19 pages a collection had emptied while the
 * arena of its strings faulted 6 new ones in; its peak RSS was 6.1-6.3 MiB,
 * 5.6-5.9 with this). A sibling whose lock is taken is passed over: never
 * waiting for a second arena lock keeps the locks free of any order. */
static void retained_reclaim(arena_t *a, size_t bytes)
{
    budget_t *b = a->budget;
    if (!b || AO_load(&b->retained) <= a->retained_bytes)
        return;
    for (arena_t *s = (arena_t *)AO_load_acquire(&b->arenas); s && bytes; s = s->budget_next) {
        if (s == a || !arena_trylock(s))
            continue;
        size_t given = retained_give_back(s, bytes);
        bytes -= given < bytes ? given : bytes;
        arena_unlock(s);
    }
}

/* The first page of `pages` committed pages in a row among those of run r
 * (free), or 0: none. */
static unsigned run_committed_window(const slab_t *r, unsigned pages)
{
    const segment_t *seg = segment_of((slab_t *)r);
    uint64_t have = seg->committed_mask & run_mask(r->page_index, r->pages), w = have;
    for (unsigned k = 1; k < pages && w; k++)
        w &= have >> k;
    w &= run_mask(r->page_index, r->pages - pages + 1);
    return w ? (unsigned)__builtin_ctzll(w) : 0;
}

#define RUN_FIND_COMMITTED_LOOKS 64

/* A free run holding `pages` committed pages in a row, and where they start
 * (*at), or NULL. Only when the arena retains that much: committed pages
 * are reused before fresh ones are faulted in. First fit alone took the
 * smallest run that fitted, often one given back, while committed runs
 * waited in bigger bins (GCBench faulted 2,100 of its 2,400 fresh pages
 * with 124 pages retained). */
static slab_t *run_find_committed(arena_t *a, unsigned pages, unsigned *at)
{
    if (a->retained_bytes < (size_t)pages * PAGE_SIZE)
        return NULL;
    /* At most RUN_FIND_COMMITTED_LOOKS runs, smallest first: a big heap
     * with many free runs given back would otherwise be walked whole for
     * each new slab. */
    unsigned looks = RUN_FIND_COMMITTED_LOOKS;
    for (unsigned p = pages; p < PAGES_PER_SEGMENT; p++)
        for (slab_t *r = a->free_runs[p]; r; r = r->next) {
            if ((*at = run_committed_window(r, pages)) != 0)
                return r;
            if (--looks == 0)
                return NULL;
        }
    return NULL;
}

/* A run of exactly `pages` pages for a slab, committed and charged to the
 * budget: committed pages if the arena has them in a row, else first fit
 * over the bins; the rest of the run stays free on either side. */
slab_t *run_alloc(arena_t *a, unsigned pages)
{
    unsigned at = 0;
    slab_t *r = run_find_committed(a, pages, &at);
    for (unsigned p = pages; p < PAGES_PER_SEGMENT && !r; p++)
        r = a->free_runs[p];
    if (!r) {
        if (!segment_new(a))
            return NULL;
        r = a->free_runs[PAGES_PER_SEGMENT - 1];
    }
    segment_t *seg = segment_of(r);
    unsigned first = r->page_index, have = r->pages;
    if (!at)
        at = first;
    uint64_t fresh = run_mask(at, pages) & ~seg->committed_mask;
    size_t charge = (size_t)__builtin_popcountll(fresh) * PAGE_SIZE;
    if (charge)
        retained_reclaim(a, charge);
    if (charge && !budget_charge(a->budget, charge))
        return NULL;
    AO_fetch_and_add(&os_committed_bytes, charge);
    retained_change(a, -(intptr_t)((size_t)__builtin_popcountll(run_mask(at, pages) & seg->committed_mask) * PAGE_SIZE));
    run_bin_remove(a, r);
    uint64_t freed_at = r->freed_at_ms;
    if (at > first) {
        slab_t *before = run_make(seg, first, at - first, RUN_FREE);
        before->freed_at_ms = freed_at;
        run_bin_insert(a, before);
    }
    if (first + have > at + pages) {
        slab_t *rest = run_make(seg, at + pages, first + have - (at + pages), RUN_FREE);
        rest->freed_at_ms = freed_at;
        run_bin_insert(a, rest);
    }
    seg->committed_mask |= run_mask(at, pages);
    seg->used_pages += pages;
    a->slab_pages += pages;
    if (!a->huge_pages && a->huge_ok && alloc_huge_pages() &&
        a->slab_pages >= ARENA_HUGE_PAGES_AFTER / PAGE_SIZE)
        arena_go_huge(a);
    return run_make(seg, at, pages, RUN_SLAB);
}

static void retained_trim_to(arena_t *a, size_t budget);
static size_t retained_give_back(arena_t *a, size_t bytes);

/* The pages [first, first + pages) of seg become a free run, coalesced with
 * free neighbours, in the bins (lock held). */
static slab_t *run_insert_free(arena_t *a, segment_t *seg, unsigned first, unsigned pages,
                               uint64_t now)
{
    unsigned next = first + pages;
    if (next < PAGES_PER_SEGMENT && seg->slabs[next].state == RUN_FREE) {
        slab_t *n = &seg->slabs[next];
        run_bin_remove(a, n);
        pages += n->pages;
    }
    slab_t *p = segment_page_slab(seg, first - 1);
    if (p->state == RUN_FREE) {
        run_bin_remove(a, p);
        pages += p->pages;
        first = p->page_index;
    }
    slab_t *merged = run_make(seg, first, pages, RUN_FREE);
    merged->freed_at_ms = now;
    run_bin_insert(a, merged);
    dirty_add(a, seg);
    return merged;
}

/* Committed free-run bytes the arena may keep: retain_max, as much as it
 * has in slabs, or the owner's floor, whichever is most. The budget grows
 * with the arena, so a heap that frees and refills a share of itself each
 * cycle (a collected heap does) does not refault it; the floor covers a
 * cycle that empties more slabs than stay (a collected heap whose big
 * structure died). */
static size_t retained_budget(const arena_t *a)
{
    size_t budget = a->slab_pages * PAGE_SIZE;
    if (budget < a->retain_floor)
        budget = a->retain_floor;
    size_t retain = alloc_retain_max();
    return budget < retain ? retain : budget;
}

void arena_allow_huge(arena_t *a, bool ok)
{
    arena_lock(a);
    a->huge_ok = ok;
    if (!ok && a->huge_pages) {
        a->huge_pages = false;
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            segment_small_pages(seg);
    }
    arena_unlock(a);
}

void arena_set_retain_floor(arena_t *a, size_t bytes)
{
    arena_lock(a);
    a->retain_floor = bytes;
    size_t budget = retained_budget(a);
    if (a->retained_bytes > budget) {
        if (a->decommit_later && AO_load(&alloc_background_decommit)) {
            AO_char_store(&a->decommit_due, 1);
            alloc_note_decay_due();
        } else {
            retained_trim_to(a, budget);
        }
    }
    arena_unlock(a);
}

/* The run of a released slab becomes free and coalesces with free neighbours. */
void run_free(arena_t *a, slab_t *r)
{
    segment_t *seg = segment_of(r);
    unsigned pages = r->pages;
    seg->used_pages -= pages;
    a->slab_pages -= pages;
    retained_change(a, (intptr_t)((size_t)pages * PAGE_SIZE));
    uint64_t now = os_now_ms();
    slab_t *merged = run_insert_free(a, seg, r->page_index, pages, now);
    if (seg->used_pages == 0)
        seg->empty_since_ms = now;
    alloc_note_decay_due();
    /* Past the retained budget the run goes back at once: a burst of frees
     * must not leave the peak committed until some later event. Where the
     * background thread serves the arena it does that work, woken by the
     * note above: freeing 190 MB spent a quarter of its time in madvise. */
    size_t budget = retained_budget(a);
    if (a->retained_bytes > budget) {
        if (a->decommit_later && AO_load(&alloc_background_decommit)) {
            AO_char_store(&a->decommit_due, 1);
            return;
        }
        run_give_back(seg, merged, a->retained_bytes - budget);   /* no walk: the usual case */
        retained_trim_to(a, budget);
    }
}

/* Decommit free-run pages until the arena retains at most `budget` bytes:
 * as slabs empty, the budget shrinks with them, and runs kept earlier go
 * too. Only the excess goes: a run coalesced from many frees can be most
 * of a segment, and giving it all back for a page over the budget made
 * GCBench fault its pages in again (4,700 faults, 40,000 once collections
 * released dead slabs whole). */
static void retained_trim_to(arena_t *a, size_t budget)
{
    if (a->retained_bytes > budget)
        retained_give_back(a, a->retained_bytes - budget);
}


/* ---- giving back past the budget, in the background ---------------------- */

AO_t alloc_background_decommit;
void (*alloc_decommit_hook)(arena_t *a, bool given_back);

/* Held by the background thread while runs are out of their bins with the
 * arena lock dropped (and by the runtime's purge of a collected heap, over
 * its hold of the collector's lock), and by fork's prepare handler before
 * any other lock: a child never inherits a run stuck in RUN_DECOMMITTING,
 * nor a lock held by a thread it does not have. */
static pthread_mutex_t decommit_lock = PTHREAD_MUTEX_INITIALIZER;

void alloc_background_lock(void)
{
    pthread_mutex_lock(&decommit_lock);
}

void alloc_background_unlock(void)
{
    pthread_mutex_unlock(&decommit_lock);
}

#define DECOMMIT_BATCH 16

/* Cached large mappings past the cache's budget are unmapped first (a free
 * left them there: large_free). Then free runs past the budget leave the
 * bins, a batch at a time, as
 * RUN_DECOMMITTING: no allocation can take them and no free coalesces with
 * them, so their pages are given back with the arena lock dropped, and the
 * threads freeing into the arena do not wait for madvise. Then they go back
 * into the bins, coalescing with whatever was freed meanwhile. Their pages
 * stop counting as committed when they leave (the budget can be charged
 * again at once). */
size_t arena_decommit_excess(arena_t *a)
{
    size_t total = 0;
    pthread_mutex_lock(&decommit_lock);
    for (bool more = true; more;) {
        struct { segment_t *seg; unsigned first, pages; uint64_t pages_mask; } taken[DECOMMIT_BATCH];
        unsigned n = 0;
        arena_lock(a);
        AO_char_store(&a->decommit_due, 0);
        large_t *unmap = large_cache_take_excess_locked(a);
        size_t budget = retained_budget(a);
        for (segment_t *seg = a->dirty; seg && n < DECOMMIT_BATCH && a->retained_bytes > budget;
             seg = seg->dirty_next)
            for (unsigned p = 1; p < PAGES_PER_SEGMENT && n < DECOMMIT_BATCH &&
                                 a->retained_bytes > budget;) {
                slab_t *r = &seg->slabs[p];
                unsigned pages = r->pages;
                if (r->state == RUN_FREE && (seg->committed_mask & run_mask(p, pages))) {
                    run_bin_remove(a, r);
                    r->state = RUN_DECOMMITTING;
                    seg->decommitting++;
                    taken[n].seg = seg;
                    taken[n].first = p;
                    taken[n].pages = pages;
                    taken[n].pages_mask = segment_uncharge_pages(seg, run_mask(p, pages));
                    n++;
                }
                p += pages;
            }
        more = n == DECOMMIT_BATCH && a->retained_bytes > budget;
        arena_unlock(a);
        total += large_unmap_list(unmap);
        if (n && alloc_decommit_hook)
            alloc_decommit_hook(a, false);
        for (unsigned i = 0; i < n; i++) {
            segment_madvise_pages(taken[i].seg, taken[i].pages_mask);
            total += (size_t)__builtin_popcountll(taken[i].pages_mask) * PAGE_SIZE;
        }
        if (n && alloc_decommit_hook)
            alloc_decommit_hook(a, true);
        if (n == 0)
            break;
        arena_lock(a);
        uint64_t now = os_now_ms();
        for (unsigned i = 0; i < n; i++) {
            taken[i].seg->decommitting--;
            run_insert_free(a, taken[i].seg, taken[i].first, taken[i].pages, now);
        }
        arena_unlock(a);
    }
    pthread_mutex_unlock(&decommit_lock);
    return total;
}

void arena_set_decommit_later(arena_t *a, bool on)
{
    arena_lock(a);
    AO_char_store(&a->decommit_later, on);
    large_t *unmap = NULL;
    if (!on) {
        unmap = large_cache_take_excess_locked(a);
        size_t budget = retained_budget(a);
        if (a->retained_bytes > budget)
            retained_trim_to(a, budget);
        AO_char_store(&a->decommit_due, 0);
    }
    arena_unlock(a);
    large_unmap_list(unmap);
}

size_t arena_purge(arena_t *a, bool force)
{
    arena_xfer_drain(a);        /* its blocks must not keep slabs from emptying */
    uint64_t now = os_now_ms();
    uint64_t decay = alloc_decay_ms();
    size_t bytes = 0;
    bool left = false;
    /* Slabs kept empty for reuse are released first, so their runs decay too. */
    if (!force)
        left = arena_release_kept_slabs(a, false, now);
    segment_t *next;
    for (segment_t *seg = a->dirty; seg; seg = next) {
        next = seg->dirty_next;
        if (seg->used_pages == 0 && seg->decommitting == 0) {
            /* A wholly free segment goes back entirely once its decay passes. */
            if (force || now - seg->empty_since_ms >= decay) {
                bytes += (size_t)__builtin_popcountll(seg->committed_mask) * PAGE_SIZE
                         + SEGMENT_HEADER_COMMIT;
                segment_release(a, seg);
            } else {
                left = true;
            }
            continue;
        }
        bool keeps = false;         /* committed free pages still waiting for decay */
        for (unsigned p = 1; p < PAGES_PER_SEGMENT;) {
            slab_t *r = &seg->slabs[p];
            if (r->state == RUN_FREE && (seg->committed_mask & run_mask(p, r->pages))) {
                if (force || now - r->freed_at_ms >= decay)
                    bytes += segment_decommit_pages(seg, run_mask(p, r->pages));
                else
                    keeps = left = true;
            }
            p += r->pages;
        }
        if (!keeps && seg->used_pages != 0)
            dirty_remove(a, seg);   /* a run freed or decommitted later brings it back */
    }
    bytes += large_cache_purge(a, force, now, &left);
    a->decay_left = left;
    /* Read without the lock by the background purge (a relaxed atomic). */
    __atomic_store_n(&a->next_purge_ms, now + (decay / 4 ? decay / 4 : 1), __ATOMIC_RELAXED);
    return bytes;
}

/* ---- what an address is ------------------------------------------------ */

void addr_classify(const void *p, addr_info_t *out)
{
    uintptr_t a = (uintptr_t)p;
    memset(out, 0, sizeof *out);
    void *base = segmap_lookup(a);
    if (!base)
        return;                                     /* ADDR_FOREIGN */
    if (*(uint8_t *)base == SEGMENT_LARGE) {
        large_t *l = base;
        uintptr_t b = (uintptr_t)l->block;
        if (a >= (uintptr_t)base + l->map_size)
            return;                                 /* past the mapping: someone else's */
        out->large = l;
        if (a < b || a >= b + l->size) {
            out->kind = ADDR_UNALLOCATED;
            return;
        }
        out->block = l->block;
        out->size = l->size;
        out->kind = a == b ? ADDR_BLOCK : ADDR_INTERIOR;
        return;
    }
    segment_t *seg = base;
    slab_t *s = segment_slab_at(seg, a);
    out->segment = seg;
    out->slab = s;
    if (s->state != RUN_SLAB) {
        out->kind = ADDR_UNALLOCATED;
        return;
    }
    if (a - (uintptr_t)s->start >= (uintptr_t)AO_int_load(&s->bumped) * s->block_size) {
        out->kind = ADDR_UNALLOCATED;
        return;
    }
    size_t idx = slab_block_index(s, a);
    out->index = idx;
    out->block = s->start + idx * s->block_size;
    out->size = s->block_size;
    out->kind = (uintptr_t)out->block == a ? ADDR_BLOCK : ADDR_INTERIOR;
}
