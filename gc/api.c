/* gc/api.c — the collector's public calls and the hooks the runtime calls
 * from its slow paths: allocation of a kind, pacing, modes, statistics,
 * leak check. */
#include "gc/gc.h"
#include "loam/inline.h"

#include <stdlib.h>

gc_state_t *gc_state_get(loam_heap_t *h)
{
    gc_state_t *gc = __atomic_load_n(&h->gc, __ATOMIC_ACQUIRE);
    if (LOAM_LIKELY(gc != NULL))
        return gc;
    gc_state_t *fresh = meta_alloc(sizeof *fresh);
    if (!fresh) {
        loam_fault(h, "out of memory for the collector's state", h, 0);
        abort();
    }
    fresh->heap = h;
    fresh->mk.gc = fresh;
    fresh->mk.tracer.m = &fresh->mk;
    pthread_mutex_init(&fresh->lock, NULL);
    pthread_mutex_init(&fresh->weak_fields_lock, NULL);
    pthread_cond_init(&fresh->parked_cv, NULL);
    pthread_cond_init(&fresh->resume_cv, NULL);
    /* Published under the heap-list lock: fork's prepare handler, which
     * holds it, takes the lock of every collector state there is, and a
     * state made meanwhile could be locked by its thread when the process
     * forks, and stay locked in the child for ever. */
    heaps_lock();
    gc_state_t *made = h->gc;
    if (!made)
        __atomic_store_n(&h->gc, fresh, __ATOMIC_RELEASE);
    heaps_unlock();
    if (made) {                          /* another thread's came first */
        pthread_cond_destroy(&fresh->resume_cv);
        pthread_cond_destroy(&fresh->parked_cv);
        pthread_mutex_destroy(&fresh->weak_fields_lock);
        pthread_mutex_destroy(&fresh->lock);
        meta_free(fresh, sizeof *fresh);
        return made;
    }
    return fresh;
}

/* ---- allocation -------------------------------------------------------------------------------- */

/* Zero the first n bytes of a block, n a multiple of 16 up to 64, with
 * stores in line (a call to memset costs more than the stores for the small
 * objects interpreters allocate most): the first and last 16 bytes, and the
 * two next to them past 32 (they overlap for 16 and 48), one branch. */
static inline __attribute__((always_inline)) void clear_small(char *p, size_t n)
{
    __builtin_memset(p, 0, 16);
    __builtin_memset(p + n - 16, 0, 16);
    if (n > 32) {
        __builtin_memset(p + 16, 0, 16);
        __builtin_memset(p + n - 32, 0, 16);
    }
}

/* Everything but a pop from the thread cache: a bad kind, a tracked or big
 * request, an empty cache (refill, safepoint, pacing). */
static void *__attribute__((noinline)) gc_alloc_slow(loam_heap_t *h, size_t n, loam_kind_t kind)
{
    /* A bad kind, or TRACED in a collected heap with no trace callback to
     * follow its pointers (nor any way to give the heap one later). Before
     * the kind's slot is made, so every such allocation comes here; a manual
     * heap that made the kind cannot become collected (loam_heap_set_mode). */
    if ((unsigned)kind >= HEAP_KINDS || (kind == LOAM_TRACED && !h->cfg.trace && h->mode == LOAM_GC)) {
        errno = EINVAL;
        return NULL;
    }
    void *p = alloc_from_heap_bump(h, n, kind);
    if (!p)
        return NULL;
    size_t clear = n <= CLASS_MAX_SIZE ? sizeclass_size[heap_align_8(h) ? sizeclass_of_by8(n ? n : 1)
                                                                  : sizeclass_of(n ? n : 1)] : n;
    if (n > alloc_mmap_threshold()) {
        addr_info_t ai;
        addr_classify(p, &ai);
        if (ai.large && !ai.large->reused)
            return p;               /* a fresh mapping is zero already */
        clear = ai.large ? ai.large->size : n;     /* a reused one: all that is scanned */
    }
    if (kind != LOAM_ATOMIC)
        memset(p, 0, clear);
    else
        memset(p, 0, 2 * sizeof(uintptr_t));
    return p;
}

/* A request of n bytes (0..SMALL_MAX): the byte offset of its class's bin
 * in a thread cache (tcache_small_bin's) and its block size, in one load.
 * Two tables, the second for heaps with LOAM_ALIGN_8 (24, 40 and 56 bytes),
 * filled at process start; a heap points to its own (gc_class_row). The
 * same tables serve the embedder's inline fast path (include/loam/inline.h),
 * whose view of the layout is checked here, except in a build for
 * valgrind: there the heaps point to a table all zero, so that every inline
 * allocation comes here and memcheck hears of it. */
static loam_inline_class_t gc_small_class[2][SMALL_MAX + 1];
/* All sizes 0: every request to loam_gc_alloc (a heap not set up yet). */
const loam_inline_class_t gc_class_row_none[SMALL_MAX + 1];
_Static_assert(LOAM_INLINE_ABI == 2, "the layout checked below is version 2 of loam/inline.h's: "
               "a change of it bumps LOAM_INLINE_ABI and the fallback's name");
_Static_assert(LOAM_INLINE_MAX == SMALL_MAX, "the inline fast path's sizes are the table's");
_Static_assert(sizeof(struct loam_inline_bin) == sizeof(tcache_bin_t), "a bin as loam/inline.h sees it");
_Static_assert(offsetof(struct loam_inline_bin, top) == offsetof(tcache_bin_t, top), "bin.top");
_Static_assert(offsetof(struct loam_inline_bin, bump) == offsetof(tcache_bin_t, bump), "bin.bump");
_Static_assert(offsetof(struct loam_inline_bin, bump_end) == offsetof(tcache_bin_t, bump_end), "bin.bump_end");
_Static_assert(offsetof(struct loam_heap, gc_alloc_slot) == LOAM_INLINE_SLOTS_AT, "a heap's slots");
_Static_assert(offsetof(struct loam_heap, gc_class_row) == LOAM_INLINE_ROW_AT, "a heap's table");
_Static_assert(sizeof(loam_tls_cache) / sizeof(loam_tls_cache[0]) == 32, "the slots loam/inline.h declares");
_Static_assert(LOAM_CONSERVATIVE == 0 && LOAM_ATOMIC == 1 && LOAM_TRACED == 2 && HEAP_KINDS == 3,
               "the kinds loam/inline.h takes");

void gc_alloc_tables_init(void)
{
    for (size_t n = 0; n <= SMALL_MAX; n++)
        for (unsigned by8 = 0; by8 < 2; by8++) {
            unsigned cls = by8 ? sizeclass_of_by8(n) : sizeclass_of(n);
            gc_small_class[by8][n] = (loam_inline_class_t){ tcache_bin_offset(cls),
                                                            (uint16_t)sizeclass_size[cls] };
        }
}

/* The table a heap with these flags points to (heap_init_fields). */
const loam_inline_class_t *gc_class_row_for(unsigned flags)
{
#ifdef LOAM_MEMCHECK
    (void)flags;
    return gc_class_row_none;
#else
    return gc_small_class[(flags & LOAM_ALIGN_8) != 0];
#endif
}

/* The heap's table, for the library's own fast path. */
static inline const loam_inline_class_t *class_row(const loam_heap_t *h)
{
#ifdef LOAM_MEMCHECK
    return gc_small_class[heap_align_8(h)];
#else
    return h->gc_class_row;
#endif
}

void *loam_inline_alloc_slow(loam_heap_t *h, size_t n, loam_kind_t kind)
{
    return loam_gc_alloc(h, n, kind);
}

void *loam_gc_alloc(loam_heap_t *h, size_t n, loam_kind_t kind)
{
    /* The kind's slot is the no-cache one for a tracked heap or a kind not
     * made yet: its bins and range are empty. */
    if (LOAM_LIKELY(n <= SMALL_MAX && (unsigned)kind < HEAP_KINDS)) {
        const loam_inline_class_t c = class_row(h)[n];
        tcache_t *tc = loam_tls_cache[AO_char_load((volatile unsigned char *)&h->gc_alloc_slot[kind])];
        tcache_bin_t *bin = tcache_bin_at(tc, c.bin);
        /* The bump range first; the bin holds what loam_free gave back,
         * and the blocks of a refill whose range was short. */
        char *p = tcache_bin_bump(bin, c.size);
        if (LOAM_UNLIKELY(!p) && !(p = tcache_bin_take(bin)))
            return gc_alloc_slow(h, n, kind);
        mc_alloc(h, p, c.size, 0);
        /* Whole block: a conservative scan reads all of it, and stale
         * words would keep dead objects alive. The first two words (the
         * second holds the free key, which tcache_bin_take leaves) are
         * always overwritten, even for atomic blocks. */
        size_t clear = kind == LOAM_ATOMIC ? 16 : c.size;
        if (LOAM_LIKELY(clear <= 64))
            clear_small(p, clear);
        else
            memset(p, 0, clear);
        return p;
    }
    return gc_alloc_slow(h, n, kind);
}

void gc_note_refill(loam_heap_t *h, tcache_t *tc, unsigned cls)
{
    /* a refill happens on an empty bin: what it holds now (+1 returned) is new */
    size_t bytes = ((size_t)tcache_count(tc, cls) + 1) * sizeclass_size[cls];
    AO_fetch_and_add(&h->gc->alloc_since, bytes);
}

void gc_note_alloc(loam_heap_t *h, size_t bytes)
{
    AO_fetch_and_add(&h->gc->alloc_since, bytes);
}

/* A refill counts its whole bump range as allocated. A thread that exits
 * after a few allocations gives most of it back: without this, each
 * short-lived thread that allocated one object brought the next collection
 * 64 KiB closer (20,000 such threads: 303 collections of a heap that never
 * held more than 64 bytes). A collection since may have zeroed the count:
 * it does not go below zero. */
void gc_note_unused(loam_heap_t *h, size_t bytes)
{
    AO_t old;
    do
        old = AO_load(&h->gc->alloc_since);
    while (bytes && !AO_compare_and_swap(&h->gc->alloc_since, old, old > bytes ? old - bytes : 0));
}

/* The heap's pacing: its config's, else the options (read each time: a
 * program may change either, loam_heap_set_gc_pacing or loam_option_set,
 * while other threads allocate). */
size_t gc_growth_percent(const gc_state_t *gc)
{
    unsigned own = __atomic_load_n(&gc->heap->cfg.gc_growth, __ATOMIC_RELAXED);
    return own ? own : (size_t)loam_opt(gc_growth);
}

size_t gc_floor_bytes(const gc_state_t *gc)
{
    size_t own = __atomic_load_n(&gc->heap->cfg.gc_min_bytes, __ATOMIC_RELAXED);
    if (own)
        return own;
    return (size_t)(gc_generational(gc) ? loam_opt(gc_young_min) : loam_opt(gc_min_bytes));
}

int loam_heap_set_gc_pacing(loam_heap_t *h, unsigned gc_growth, size_t gc_min_bytes)
{
    if (!h || gc_growth > LOAM_GC_GROWTH_MAX) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store_n(&h->cfg.gc_growth, gc_growth, __ATOMIC_RELAXED);
    __atomic_store_n(&h->cfg.gc_min_bytes, gc_min_bytes, __ATOMIC_RELAXED);
    return 0;
}

static size_t collect_threshold(gc_state_t *gc)
{
    if (gc_generational(gc))
        return gc_young_allowance(gc);
    size_t growth = gc->live_after / 100 * gc_growth_percent(gc), floor = gc_floor_bytes(gc);
    return growth > floor ? growth : floor;
}

/* The option gc_stress=N, for testing an embedder's roots and write
 * barriers (as Boehm's GC_COLLECT_AT_MALLOC, V8's --gc-interval): a
 * collection at every N-th allocation of each collected heap, on top of the
 * pacing (a heap's own included, which it overrides). Allocations must
 * reach here for that, and most would not: a refill hands the thread cache
 * a bump range or a batch of blocks that the fast path then serves, for
 * hundreds of allocations between two slow paths. So while it is set, a
 * collected heap's slow path takes its block from an arena, never filling
 * the cache (alloc_api.c, alloc_class_block), and each collection empties
 * the caches: from the first collection on, every allocation comes here.
 * The fast path stays as it is (an empty bin costs it nothing new), and
 * with the option 0 the slow path pays one load of it. */
static bool stress_due(gc_state_t *gc)
{
    AO_t every = (AO_t)loam_opt(gc_stress);
    return every && (AO_fetch_and_add1(&gc->stress_count) + 1) % every == 0;
}

bool gc_alloc_slow_hook(loam_heap_t *h)
{
    gc_state_t *gc = h->gc;
    if (h->mode != LOAM_GC)
        return true;
    gc_thread_t *self = gc_self(gc);
    if (!self) {
        gc_attach(gc);
    } else if (LOAM_UNLIKELY(self->blocking_depth != 0)) {
        /* Counted as stopped, the thread would take blocks from slabs a
         * collection is sweeping, or hand out a block the marking has gone
         * past, unseen. Every such allocation comes here: the bracket took
         * the thread's caches of h off its slots (threads.c). If the
         * heap's error callback returns, the allocation is refused. */
        loam_fault(h, "allocation from a collected heap between loam_enter_blocking and "
                      "loam_leave_blocking (it would race the collector)", h, 0);
        errno = EINVAL;
        return false;
    }
    gc_park(gc);
    bool stress = stress_due(gc);
    if (stress || AO_load(&gc->alloc_since) >= collect_threshold(gc))
        gc_collect(h, false);
    return true;
}

void gc_thread_cache_made(loam_heap_t *h)
{
    if (h->gc && h->mode == LOAM_GC)
        gc_attach(h->gc);
}

bool gc_collect_for_memory(loam_heap_t *h)
{
    if (!h->gc || h->mode != LOAM_GC)
        return false;
    gc_collect(h, true);
    return true;
}

void loam_gc_collect(loam_heap_t *h)
{
    if (!h || h->mode != LOAM_GC)
        return;
    if (LOAM_UNLIKELY(gc_in_blocking_bracket(h))) {
        /* The collection would end with the thread counted as running,
         * still inside its bracket: another thread's collection would then
         * wait for it for as long as it blocks. And the finalizers it runs
         * afterwards would allocate inside the bracket. */
        loam_fault(h, "collection of a heap between loam_enter_blocking and loam_leave_blocking "
                      "(the thread would stop counting as stopped)", h, 0);
        return;
    }
    gc_collect(h, true);
}

/* ---- modes -------------------------------------------------------------------------------------- */

int gc_set_mode(loam_heap_t *h, loam_mode_t m)
{
    if (m == h->mode)
        return 0;
    if (m == LOAM_GC) {
        gc_state_get(h);
        /* Frees of a heap with collector state take the slow path (it drops
         * finalizers and weak references of the block): slabs made from now
         * on, and those that exist, carry the no-cache slot. */
        for (unsigned k = 0; k < HEAP_KINDS; k++) {
            h->kinds[k].arenas.slot = TC_SLOT_NONE;
            arena_set_allow_huge(&h->kinds[k].arenas, true);
        }
        arena_t *a;
        for (unsigned i = 0; (a = heap_arena_at(h, i)); i++) {
            arena_lock(a);
            a->owner_slot = TC_SLOT_NONE;   /* flushes go to the slabs from now on */
            arena_xfer_drain(a);            /* and so does what the transfer cache holds */
            for (segment_t *seg = a->segments; seg; seg = seg->next)
                for (unsigned p = 1; p < PAGES_PER_SEGMENT; p += seg->slabs[p].pages)
                    if (seg->slabs[p].state == RUN_SLAB) {
                        seg->slabs[p].home_slot = TC_SLOT_NONE;
                        AO_char_store(&seg->slabs[p].owner_slot, TC_SLOT_NONE);
                    }
            arena_unlock(a);
        }
        /* Caches made while manual belong to threads that may not be
         * attached: disown them, so each thread makes a new one (and
         * attaches) on its next allocation. */
        heaps_lock();
        /* A purge that began while the heap was manual may unmap empty
         * segments: it must be over before any collection marks. */
        heaps_wait_purge(h);
        for (tcache_t *tc = h->caches; tc; tc = tc->owner_next) {
            tcache_flush_all(tc);
            tcache_abandon(tc);
        }
        h->caches = NULL;
        heaps_unlock();
        /* The background thread does not serve collected heaps: their
         * arenas give back past their budget at once again. */
        for (unsigned i = 0; (a = heap_arena_at(h, i)); i++)
            arena_set_decommit_later(a, false);
        /* No thread is attached by this: "creating a heap attaches no thread". */
        __atomic_store_n(&h->mode, LOAM_GC, __ATOMIC_RELEASE);
    } else {
        if (h->gc) {
            gc_finish_sweep(h);      /* no collection will finish it later */
            gc_forget_generations(h->gc);
        }
        arena_t *a;
        for (unsigned i = 0; (a = heap_arena_at(h, i)); i++)
            arena_set_retain_floor(a, 0);   /* no collection cycle to refill it */
        for (unsigned k = 0; k < HEAP_KINDS; k++)
            arena_set_allow_huge(&h->kinds[k].arenas, false);
        __atomic_store_n(&h->mode, LOAM_MANUAL, __ATOMIC_RELEASE);
    }
    return 0;
}

bool gc_purge_begin(loam_heap_t *h)
{
    return pthread_mutex_trylock(&h->gc->lock) == 0;    /* a collection holds it from stop to restart */
}

void gc_purge_end(loam_heap_t *h)
{
    pthread_mutex_unlock(&h->gc->lock);
}

void gc_heap_destroy(loam_heap_t *h)
{
    gc_state_t *gc = h->gc;
    if (!gc)
        return;
    pthread_mutex_lock(&gc->lock);
    gc_forget_threads(gc);
    for (loam_weak_t *w = gc->weaks; w; w = w->next) {
        AO_store(&w->target, 0);     /* the handles stay the embedder's: loam_weak_free works */
        w->heap = NULL;
    }
    pthread_mutex_unlock(&gc->lock);
    if (gc->slots)
        meta_free(gc->slots, gc->cap_slots * sizeof *gc->slots);
    if (gc->ranges)
        meta_free(gc->ranges, gc->cap_ranges * sizeof *gc->ranges);
    if (gc->fins)
        meta_free(gc->fins, gc->cap_fins * sizeof *gc->fins);
    objmap_release(&gc->fin_map);
    objmap_release(&gc->weak_map);
    objmap_release(&gc->pending_map);
    if (gc->ready)
        meta_free(gc->ready, gc->cap_ready * sizeof *gc->ready);
    if (gc->weak_fields)
        meta_free(gc->weak_fields, gc->cap_weak_fields * sizeof *gc->weak_fields);
    if (gc->eph)
        meta_free(gc->eph, gc->cap_eph * sizeof *gc->eph);
    objmap_release(&gc->eph_map);
    pthread_mutex_destroy(&gc->weak_fields_lock);
    gc_mark_stack_release(gc);
    pthread_cond_destroy(&gc->parked_cv);
    pthread_cond_destroy(&gc->resume_cv);
    pthread_mutex_destroy(&gc->lock);
    h->gc = NULL;
    meta_free(gc, sizeof *gc);
}

/* ---- statistics ---------------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void gc_fill_stats(loam_heap_t *h, loam_stats_t *s)
{
    gc_state_t *gc = h->gc;
    if (!gc)
        return;
    pthread_mutex_lock(&gc->lock);
    s->gc_collections = gc->collections;
    s->gc_minor_collections = gc->minor_collections;
    s->gc_bytes_swept = __atomic_load_n(&gc->bytes_swept, __ATOMIC_RELAXED);
    s->gc_pause_total_ns = gc->pause_total_ns;
    s->gc_pause_max_ns = gc->pause_max_ns;
    s->gc_bytes_marked = gc->mk.marked_bytes;
    s->gc_bytes_marked_helpers = gc->helper_marked;
    s->gc_live_after = gc->live_after;
    s->gc_finalizers_run = __atomic_load_n(&gc->finalizers_run, __ATOMIC_RELAXED);
    s->gc_weak_cleared = gc->weak_cleared;
    s->gc_ephemerons_cleared = gc->ephemerons_cleared;
    size_t n = gc->npauses < GC_PAUSE_RING ? gc->npauses : GC_PAUSE_RING;
    uint64_t sorted[GC_PAUSE_RING];
    memcpy(sorted, gc->pauses, n * sizeof *sorted);
    pthread_mutex_unlock(&gc->lock);
    if (n) {
        qsort(sorted, n, sizeof *sorted, cmp_u64);
        s->gc_pause_p50_ns = sorted[(n - 1) / 2];
        s->gc_pause_p99_ns = sorted[(n * 99 + 99) / 100 - 1];
    }
}

/* ---- leak check (manual heaps) ------------------------------------------------------------------ */

struct leak_walk {
    loam_leak_fn report;
    void        *user;
    size_t       count;
};

static void report_unmarked(gc_state_t *gc, char *block, size_t size, unsigned kind, bool marked, void *arg)
{
    (void)gc;
    (void)kind;
    struct leak_walk *lw = arg;
    if (!marked) {
        lw->count++;
        if (lw->report)
            lw->report(block, size, lw->user);
    }
}

size_t loam_leak_check(loam_heap_t *h, loam_leak_fn report, void *user)
{
    /* In a collected heap an unreachable block is garbage its collector
     * reclaims, not a leak: nothing to report, and say why. */
    if (!h || h->mode == LOAM_GC) {
        errno = EINVAL;
        return 0;
    }
    gc_state_t *gc = gc_state_get(h);
    bool visiting = gc_self(gc) == NULL;       /* its stack is a root for this check only */
    gc_attach(gc);
    /* Stopped for other heaps while it waits for this one's threads; not
     * after, as the report callback may use them. */
    gc_wait_begin();
    pthread_mutex_lock(&gc->lock);
    bool stopped = gc_stop_world(gc);
    if (!stopped)
        pthread_mutex_unlock(&gc->lock);
    gc_wait_end();
    if (!stopped) {
        if (visiting)
            loam_thread_detach(h);
        return 0;
    }
    gc_mark_begin(gc);
    /* A heap that was collected may have caches with bump ranges (kept, and
     * taken by loam_gc_alloc since): their blocks carry no free key, and
     * would be taken for allocated ones. */
    heaps_lock();
    for (tcache_t *tc = h->caches; tc; tc = tc->owner_next)
        tcache_return_bumps(tc);
    heaps_unlock();
    gc_finish_sweep(h);
    /* A generational heap's old blocks keep their marks (also once it is
     * manual): marked, a block was taken for reached, and what only it
     * reaches went unmarked, reported as leaked; an old block nothing
     * reaches any more was not reported. This check clears them at its
     * end anyway, so if the heap is collected again its next collection
     * must be major. */
    if (gc_generational(gc)) {
        gc_clear_all_marks(gc);
        gc->need_major = true;
    }
    /* Blocks reachable from the finalizable objects are not leaks either. */
    gc_mark_roots(gc);
    for (size_t i = 0; i < gc->nfins; i++)
        if (gc->fins[i].obj)
            gc_mark_word(gc, (uintptr_t)gc->fins[i].obj);
    gc_mark_drain(gc);
    gc_ephemerons_settle(gc);
    gc_ephemerons_end(gc, false);           /* frees nothing: clears no pair either */
    gc_mark_end(gc);
    /* The heap is manual: the caller keeps other threads off it meanwhile
     * (attached ones are stopped). The callback may use loam, even this heap. */
    struct leak_walk lw = { report, user, 0 };
    gc_for_each_block(gc, report_unmarked, &lw);
    gc_clear_all_marks(gc);     /* free blocks too: conservative words may have marked some */
    gc_restart_world(gc);
    pthread_mutex_unlock(&gc->lock);
    if (visiting)
        loam_thread_detach(h);
    return lw.count;
}
