/* gc/collect.c — one collection, top to bottom.
 *
 *   1. stop the world (threads.c): attached threads park at safepoints
 *   2. mark from the roots (roots.c): callback, slots, ranges, thread stacks
 *   3. settle ephemeron pairs (ephemeron.c), clear weak references to
 *      unmarked targets (finalize.c)
 *   4. keep finalizable unmarked objects alive, queue their finalizers;
 *      settle the pairs again, then clear those whose key stays unmarked
 *   5. sweep, lazily: unmarked large blocks are unmapped now, and slabs with
 *      no mark go back whole; every other slab that holds blocks becomes
 *      *pending* in its arena. A refill that reaches a
 *      pending slab sweeps it (under the arena lock, world running) only as
 *      far as it needs, the dead blocks going straight into its thread cache
 *      (sweep_take); anything else that needs the slab whole sweeps the rest
 *      (sweep_pending). Marks are cleared as the sweep passes.
 *   6. restart the world, then run the queued finalizers in this thread
 *
 * Before marking, the previous cycle's pending slabs are swept (their marks
 * must not mix with the new ones) and every thread cache of the heap is
 * emptied into its slabs: a block that is free now must not be handed out
 * from a cache while its slab still waits for the sweep, or the sweep would
 * take it for dead. The collecting thread does most of that sweep before it
 * stops the world, as refills do with the world running; the pause sweeps
 * what is left, after the caches are emptied.
 *
 * Free blocks are told apart from allocated ones by the free key in their
 * second word (alloc.h): a block sitting in a thread cache or a slab's free set
 * is free, and the sweep skips it, so no block is ever in two places. No free
 * block is scanned (a conservative word may mark one: see mark.c). */
#include "gc/gc.h"

#include <time.h>

uint64_t gc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- sweeping ------------------------------------------------------------------------------ */

/* A pending slab is swept from its visit cursor on: every block below the
 * cursor has been visited, its mark cleared. The sweep is safe with the world
 * running: a marked block is skipped before its memory is read, and nobody
 * else touches an unmarked allocated block (it is unreachable).
 *
 * Each dead block (allocated, unmarked) is given the free key, in address
 * order, in one pass: its memory is written once here and next when it is
 * handed out. A refill takes only the blocks it wants (sweep_take), their
 * addresses straight into the thread cache's array; a full visit
 * (sweep_pending) puts the dead blocks into the slab's free set. */
typedef struct sweep_out {
    void        **top;                 /* a refill's array, filled downwards; NULL: the free set */
    uint32_t      n;
    size_t        requested;           /* of the dead blocks (tracked heaps) */
} sweep_out_t;

/* free_key is loam_free_key, start and size s's, waste whether s tracks
 * requested sizes: read once per visit (the stores into blocks could alias
 * them, which would reload them for every block; c is the caller's local
 * copy for the same reason). An unmarked block is dead unless it is in the
 * slab's free set (thread caches are empty: gc_collect flushed them before
 * the slab became pending). The set is read, not the block's free key: that
 * read was the block's first touch, a cache miss nothing overlapped (nearly
 * half the sweep's samples). none_free: the set was empty when the slab
 * became pending (gc_sweep), and a block freed since is either before the
 * cursor or marked (gc_free_refused), so not even the set is read. */
static inline __attribute__((always_inline)) void
sweep_dead(gc_state_t *gc, slab_t *s, char *start, size_t size, sweep_out_t *c, uintptr_t free_key,
           bool to_array, bool none_free, bool waste, uint32_t k)
{
    free_block_t *b = (free_block_t *)(start + (size_t)k * size);
    if (!none_free && (s->free_bits[k / 64] >> (k % 64) & 1))
        return;                           /* free already: in the free set */
    if (LOAM_UNLIKELY(waste))
        c->requested += slab_get_requested(s, k);
    mc_free(gc->heap, b);
    b->freed_key = free_key;
    if (to_array) {
        *--c->top = b;
        c->n++;
        return;
    }
    slab_put_free(s, k);
    c->n++;
}

/* Block starts in the mark bitmap, a word of marks at a time, for blocks of
 * at most 128 half granules (1 KiB). In half granules (gc.h) block k of a
 * slab starts at hg = half0 + k * step, and its mark is bit hg / 2. The
 * starts in the word of block k's bit are those of blocks k, k + 1, ...:
 * pattern[hg % 2] (bits (j * step + hg % 2) / 2 for j = 0, 1, ...) shifted
 * up by that bit's place in the word, r. A block may straddle two words;
 * its bit is its start's, so each word is still visited once. Divisions by
 * step of numbers below 128 are a multiplication by recip (exact: the
 * error, under 127 * 127, stays below 2^16). */
typedef struct start_walk {
    uint64_t pattern[2];
    uint32_t recip, step;
} start_walk_t;

/* One per step, built at process start (gc_install_hooks): a bump range's
 * search for its next block calls start_walk twice, and building the
 * pattern bit by bit there was 60 % of that search's instructions. */
#define START_WALK_MAX 128
static start_walk_t start_walks[START_WALK_MAX + 1];

static void start_walks_init(void)
{
    for (uint32_t step = 2; step <= START_WALK_MAX; step++) {
        start_walk_t sw = { { 0, 0 }, (65536u + step - 1) / step, step };
        for (uint32_t h = 0; h < 2; h++)
            for (uint32_t x = h; x < 128; x += step)
                sw.pattern[h] |= (uint64_t)1 << (x / 2);
        start_walks[step] = sw;
    }
}

static inline start_walk_t start_walk(size_t step)
{
    if (LOAM_LIKELY(step <= START_WALK_MAX))
        return start_walks[step];
    /* One start a word at most: bit 0, shifted by its place. */
    return (start_walk_t){ { 1, 1 }, (65536u + (uint32_t)step - 1) / (uint32_t)step, (uint32_t)step };
}

/* The starts of blocks k, k + 1, ... in the word of block k's bit (block k
 * starts at half granule hg), none at or past the bump line: their bits,
 * and *count how many. */
static inline uint64_t word_starts(const start_walk_t *sw, size_t hg, uint32_t k, uint32_t bumped,
                                   uint32_t *count)
{
    const uint32_t h = (uint32_t)(hg & 1), r = (uint32_t)((hg >> 1) & 63);
    uint32_t n = (((2 * (63 - r) + 1 - h) * sw->recip) >> 16) + 1;
    uint64_t starts = sw->pattern[h] << r;
    if (LOAM_UNLIKELY(n > bumped - k)) {           /* the bump line is in it */
        n = bumped - k;
        const uint32_t last = r + ((n - 1) * sw->step + h) / 2;
        if (last < 63)
            starts &= ((uint64_t)2 << last) - 1;
    }
    *count = n;
    return starts;
}

/* The block of a start bit found in the word of block k's bit (block k
 * starts at half granule hg). Bit b is block j's, after k, when
 * 2 (b - r) is j * step + hg % 2, less one if that is odd. */
static inline uint32_t start_block(const start_walk_t *sw, size_t hg, uint32_t k, uint64_t bits)
{
    const uint32_t h = (uint32_t)(hg & 1), r = (uint32_t)((hg >> 1) & 63);
    return k + (((2 * ((uint32_t)__builtin_ctzll(bits) - r) + 1 - h) * sw->recip) >> 16);
}

/* Sweep s from its cursor until `want` dead blocks are out (in the array or
 * the free set) or the end is reached (then the slab's visit is complete:
 * true). Marks are cleared for whole words of blocks passed, so a visit
 * stopped in a word keeps the marks of that word's blocks still ahead of
 * the cursor. */
static inline __attribute__((always_inline)) bool
sweep_visit(gc_state_t *gc, segment_t *seg, slab_t *s, sweep_out_t *out, uint32_t want, const bool to_array)
{
    const uintptr_t free_key = loam_free_key;
    char *const start = s->start;
    const size_t size = s->block_size;
    const bool none_free = s->visit_none_free, waste = s->waste != NULL;
    uint64_t *bits = segment_side_bits(seg);
    const size_t half0 = gc_slab_half0(s), step = gc_slab_halfstep(s);
    uint32_t bumped = s->bumped, k = s->visit_cursor;
    /* A generational heap's marks outlive the sweep: they say "old". */
    const bool keep_marks = gc_generational(gc);
    sweep_out_t c = *out;
    if (step <= START_WALK_MAX) {
        /* A word of marks at a time (start_walk), only its unmarked starts
         * visited. */
        const start_walk_t sw = start_walk(step);
        size_t hg = half0 + (size_t)k * step;
        while (k < bumped && c.n < want) {
            uint64_t *w = &bits[hg >> 7];
            uint32_t count;
            const uint64_t starts = word_starts(&sw, hg, k, bumped, &count);
            uint64_t dead = ~*w & starts;
            if (to_array && none_free && !waste && dead == starts && want - c.n >= count) {
                /* Every block starting here is dead (the usual case: a
                 * filled slab whose objects died together): a pointer
                 * walk, no bit search, no test of how many are wanted. */
                char *b = start + (size_t)k * size, *end = b + (size_t)count * size;
                void **top = c.top;
                for (; b < end; b += size) {
                    mc_free(gc->heap, b);
                    ((free_block_t *)b)->freed_key = free_key;
                    *--top = b;
                }
                c.top = top;
                c.n += count;
                dead = 0;
            }
            uint32_t next = k;
            while (dead && c.n < want) {
                uint32_t at = start_block(&sw, hg, k, dead);
                sweep_dead(gc, s, start, size, &c, free_key, to_array, none_free, waste, at);
                next = at + 1;
                dead &= dead - 1;
            }
            if (dead) {                   /* stopped inside the word */
                k = next;
                break;
            }
            if (!keep_marks)
                *w = 0;
            k += count;
            hg += (size_t)count * step;
        }
    } else {
        for (; k < bumped && c.n < want; k++) {
            size_t g = (half0 + (size_t)k * step) >> 1;
            uint64_t m = (uint64_t)1 << (g & 63);
            if (bits[g >> 6] & m) {
                if (!keep_marks)
                    bits[g >> 6] &= ~m;
                continue;
            }
            sweep_dead(gc, s, start, size, &c, free_key, to_array, none_free, waste, k);
        }
    }
    out->top = c.top;
    out->n = c.n;
    out->requested = c.requested;
    if (k >= bumped) {
        s->visit_cursor = bumped;
        return true;
    }
    s->visit_cursor = k;
    return false;
}

/* The two uses apart, so that neither tests which it is for every block. */
static bool sweep_some(gc_state_t *gc, segment_t *seg, slab_t *s, sweep_out_t *c, uint32_t want)
{
    return c->top ? sweep_visit(gc, seg, s, c, want, true) : sweep_visit(gc, seg, s, c, want, false);
}

static void sweep_note(gc_state_t *gc, slab_t *s, const sweep_out_t *c)
{
    if (c->requested)
        AO_fetch_and_add(&gc->heap->requested, (AO_t)0 - c->requested);
    if (c->n)
        __atomic_fetch_add(&gc->bytes_swept, (size_t)c->n * s->block_size, __ATOMIC_RELAXED);
}

static segment_t *segment_of_slab(slab_t *s)
{
    return (segment_t *)((uintptr_t)s->start & ~(uintptr_t)SEGMENT_MASK);
}

/* The arena's hook for a pending slab (lock held): the rest of its sweep,
 * its dead blocks back to it at once (an emptied slab stays on its partial
 * list: the heap refills soon). */
static void sweep_pending(arena_t *a, slab_t *s)
{
    gc_state_t *gc = ((loam_heap_t *)a->owner)->gc;
    sweep_out_t c = { 0 };
    sweep_some(gc, segment_of_slab(s), s, &c, UINT32_MAX);
    arena_pending_done(a, s);
    if (c.n)
        arena_blocks_returned(a, s, c.n);
    sweep_note(gc, s, &c);
}

/* The arena's hook for a refill (lock held): up to n dead blocks, straight
 * into the refilling cache's array. They stay counted as out of the slab. */
static unsigned sweep_take(arena_t *a, slab_t *s, unsigned n, void **top)
{
    gc_state_t *gc = ((loam_heap_t *)a->owner)->gc;
    sweep_out_t c = { .top = top };
    bool done = sweep_some(gc, segment_of_slab(s), s, &c, n);
    if (done)
        arena_pending_done(a, s);
    sweep_note(gc, s, &c);
    return c.n;
}

/* ---- bump ranges from the sweep ---------------------------------------------- */

/* The first block of s at or after k, and below bumped, whose mark is
 * `marked`; bumped if none (start_walk). */
static uint32_t next_block_marked_as(const uint64_t *bits, size_t half0, size_t step, uint32_t k,
                                     uint32_t bumped, bool marked)
{
    const start_walk_t sw = start_walk(step);
    size_t hg = half0 + (size_t)k * step;
    while (k < bumped) {
        uint32_t count;
        const uint64_t starts = word_starts(&sw, hg, k, bumped, &count);
        uint64_t w = bits[hg >> 7];
        uint64_t hit = (marked ? w : ~w) & starts;
        if (hit)
            return start_block(&sw, hg, k, hit);
        k += count;
        hg += (size_t)count * step;
    }
    return bumped;
}

/* Clear the mark bits of granules [lo, hi). */
static void clear_marks(uint64_t *bits, size_t lo, size_t hi)
{
    while (lo < hi) {
        unsigned b = (unsigned)(lo & 63);
        size_t n = hi - lo < 64 - b ? hi - lo : 64 - b;
        uint64_t m = n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1) << b;
        bits[lo >> 6] &= ~m;
        lo += n;
    }
}

static bool in_free_set(const slab_t *s, uint32_t k)
{
    return (s->free_bits[k / 64] >> (k % 64)) & 1;
}

/* The arena's hook for a bump range (lock held): from the visit cursor, the
 * first dead block and the dead ones right after it, up to max. Live blocks
 * passed lose their marks as in sweep_visit (a generational heap keeps
 * them); free blocks (in the free set) are passed, and end a range. The
 * dead blocks are not written: the range hands each out in turn, and gives
 * back what is left with the free key (arena_return_bump). */
static unsigned sweep_take_bump(arena_t *a, slab_t *s, unsigned max, uint32_t *first_out)
{
    gc_state_t *gc = ((loam_heap_t *)a->owner)->gc;
    segment_t *seg = segment_of_slab(s);
    uint64_t *bits = segment_side_bits(seg);
    const size_t half0 = gc_slab_half0(s), step = gc_slab_halfstep(s);
    const uint32_t bumped = s->bumped;
    const bool none_free = s->visit_none_free, keep_marks = gc_generational(gc);
    uint32_t k = s->visit_cursor, lo;
    for (;;) {
        lo = next_block_marked_as(bits, half0, step, k, bumped, false);
        /* From the cursor's word on: a visit that stopped inside a word
         * (sweep_visit) left the marks of its blocks behind the cursor,
         * which must not stay set into the next collection (a block
         * marked before its marking starts is never traced). Slabs start
         * at a word. */
        if (!keep_marks)
            clear_marks(bits, gc_block_granule(s, k) & ~(size_t)63, gc_block_granule(s, lo));
        if (lo >= bumped || none_free || !in_free_set(s, lo))
            break;
        k = lo + 1;                     /* free already */
    }
    uint32_t hi = lo >= bumped ? lo : next_block_marked_as(bits, half0, step, lo + 1, bumped, true);
    if (hi - lo > max)
        hi = lo + max;
    for (uint32_t i = lo + 1; !none_free && i < hi; i++)
        if (in_free_set(s, i))
            hi = i;
    s->visit_cursor = hi;
    if (hi >= bumped)
        arena_pending_done(a, s);
#ifdef LOAM_MEMCHECK
    for (uint32_t i = lo; i < hi; i++)
        mc_free(gc->heap, s->start + (size_t)i * s->block_size);
#endif
    sweep_out_t c = { .n = hi - lo };
    sweep_note(gc, s, &c);
    *first_out = lo;
    return hi - lo;
}

/* A block of a pending slab past the visit cursor is allocated-and-live when
 * marked, free (carrying the free key) or garbage when not. The free path
 * has checked the key already, but the sweep may have taken the block since
 * (then it carries the key now): both are read again under the arena lock,
 * which the sweep holds, so the block can be neither swept while this runs
 * nor after a free that passed (it is marked, or it was refused). */
const char *gc_free_refused(loam_heap_t *h, slab_t *s, size_t index)
{
    arena_t *a = s->arena;
    arena_lock(a);
    free_block_t *b = (free_block_t *)(s->start + index * s->block_size);
    if (arena_in_bump_range(s, b)) {
        /* Garbage the sweep found, or a block past the bump line, that a
         * thread's allocation has not reached yet. */
        arena_unlock(a);
        return "free of a block that is not allocated (it waits in a thread's "
               "allocation range: never allocated, or reclaimed by the collector)";
    }
    bool ok = b->freed_key != loam_free_key;        /* swept meanwhile: garbage */
    segment_t *seg = segment_of_slab(s);
    size_t g = gc_block_granule(s, index);
    uint64_t *w = &segment_side_bits(seg)[g >> 6], bit = (uint64_t)1 << (g & 63);
    if (ok && s->pending && index >= s->visit_cursor)
        ok = (*w & bit) != 0;
    /* A generational heap: the block, if old, becomes young again (a free
     * block is never old). Its slab is swept first if the sweep has still to
     * pass it: unmarked, it would look dead to a sweep running before the
     * free key is written. */
    if (ok && h->gc && gc_generational(h->gc) && (*w & bit)) {
        if (s->pending)
            sweep_pending(a, s);
        __atomic_fetch_and(w, ~bit, __ATOMIC_RELAXED);
        /* A survivor (generation.c) loses its age bit too: a free block
         * has neither. */
        uint64_t *age = gc_age_bits(seg);
        if (age && (__atomic_load_n(&age[g >> 6], __ATOMIC_RELAXED) & bit)) {
            __atomic_fetch_and(&age[g >> 6], ~bit, __ATOMIC_RELAXED);
            AO_fetch_and_add(&h->gc->survivor_freed, s->block_size);
        } else {
            AO_fetch_and_add(&h->gc->old_freed, s->block_size);
        }
    }
    /* The block may go out again from a thread cache, young, with no refill
     * to tell its slab: the next minor sweep must not skip the slab (gc_sweep). */
    if (ok)
        s->handed_out = true;
    arena_unlock(a);
    return ok ? NULL : "free of a block the collector found unreachable (use after collection)";
}

/* A large block the program frees leaves the old bytes too, if it is old,
 * so that it does not bring the next major collection closer. Its mark
 * needs no clearing: a mapping is unmarked when handed out again
 * (large_alloc), and the world is not stopped, so no marker reads it. */
void gc_large_freed(loam_heap_t *h, large_t *l)
{
    if (gc_generational(h->gc) && (l->upper & 1))
        AO_fetch_and_add(&h->gc->old_freed, l->size);
}

/* At process start (runtime/init.c), before any heap exists. */
void gc_install_hooks(void)
{
    gc_alloc_tables_init();
    start_walks_init();
    alloc_pending_hook = sweep_pending;
    alloc_pending_take_hook = sweep_take;
    alloc_pending_bump_hook = sweep_take_bump;
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

/* World stopped, at the peak of a cycle: the heap will grow back to about
 * its present slabs before the next collection, reusing those the sweeps
 * empty, so free runs up to that much stay committed instead of going back
 * to the OS and faulting in again (GCBench refaulted a third of its pages).
 * A generational heap's cycle runs from one major collection to the next,
 * whose peak minor ones keep, less a sixteenth of the way down to the slabs
 * now: a heap that stays small gives the runs back over its next minor
 * collections, major or not. Explicit and limit collections ask for memory
 * back: no floor. */
static void keep_for_regrowth(loam_heap_t *h, bool full, bool minor)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(h, i)); i++) {
        size_t floor = full ? 0 : arena_slab_bytes(a);
        size_t before = a->retain_floor;    /* only collections write it */
        if (minor && before > floor)
            floor = before - (before - floor) / 16;
        arena_set_retain_floor(a, floor);
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

/* No block of s is marked: none is live (a generational heap's old blocks
 * keep their marks), and none needs its mark cleared. Marks are only ever
 * set below the bump line. */
static bool slab_has_no_mark(segment_t *seg, slab_t *s)
{
    return !gc_any_bit_in(segment_side_bits(seg), gc_block_granule(s, 0),     /* bumped > 0: used > 0 */
                          gc_block_granule(s, s->bumped - 1));
}

/* A slab none of whose blocks is marked goes back now, whole, its blocks
 * unread (as Boehm frees a heap block with no mark): left pending, its
 * garbage stayed committed until a refill of its own size class swept it,
 * or the next collection, while a program that had moved on to other sizes
 * took new slabs beside it (the Lisp example without the generational flag
 * peaked at 10.8 MB out for 1.5 MB live). Its run is reused by any class.
 * Not a tracked slab: its requested bytes are only known block by block. */
static size_t release_dead_slab(gc_state_t *gc, arena_t *a, slab_t *s)
{
    size_t bytes = (size_t)s->used * s->block_size;
#ifdef LOAM_MEMCHECK
    for (uint32_t k = 0; k < s->bumped; k++) {
        free_block_t *b = (free_block_t *)(s->start + (size_t)k * s->block_size);
        if (b->freed_key != loam_free_key)
            mc_free(gc->heap, b);
    }
#else
    (void)gc;
#endif
    arena_release_dead_slab(a, s);
    return bytes;
}

/* World stopped. Large blocks are unmapped now; slabs with no mark are
 * released; the others become pending, but for a minor collection's slabs
 * none of whose blocks went out since the last collection: every block out
 * of such a slab is old then (the last sweep freed or promoted its young
 * ones, gc_finish_sweep having completed it), so this one would find nothing
 * dead there, only walk marks (the Lisp example's old slabs: 14,000 visits,
 * 3 % of its instructions). */
size_t gc_sweep(gc_state_t *gc, bool minor)
{
    size_t freed = 0;
    arena_t *a;
    large_t *dead_large = NULL;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        arena_lock(a);
        slab_t *dead = NULL;                /* released after the walk: a release coalesces runs */
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            for (unsigned p = 1; p < PAGES_PER_SEGMENT; p += seg->slabs[p].pages) {
                slab_t *s = &seg->slabs[p];
                if (s->state != RUN_SLAB)
                    continue;
                const bool fresh = s->handed_out;
                s->handed_out = false;
                if (minor && !fresh && s->used)
                    continue;
                if (s->used && !s->waste && slab_has_no_mark(seg, s)) {
                    s->pending_next = dead;
                    dead = s;
                } else if (s->used) {
                    arena_pending_add(a, s);        /* its sweep clears its marks */
                    /* Thread caches are empty now (the world is stopped,
                     * gc_collect emptied them) and a collected heap's arenas
                     * keep no transfer cache: a slab's free blocks are all in
                     * its free set, and every block below its bump line that is
                     * not is allocated. */
                    s->visit_none_free = s->used == s->bumped;
                } else
                    gc_clear_slab_marks(seg, s);    /* a free block may have been marked */
            }
        while (dead) {
            slab_t *s = dead;
            dead = s->pending_next;
            s->pending_next = NULL;
            freed += release_dead_slab(gc, a, s);
        }
        for (large_t *l = a->large, *next; l; l = next) {
            next = l->next;
            if (l->upper & 1) {
                if (!gc_generational(gc))
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

/* What a major collection should scan: the live bytes, less the atomic
 * ones the last major marked (long-lived, mostly: a program's big arrays
 * of numbers and its strings). */
static size_t major_scan_expect(const gc_state_t *gc)
{
    return gc->live_after > gc->major_atomic ? gc->live_after - gc->major_atomic : 0;
}

void gc_collect(loam_heap_t *h, bool full)
{
    gc_state_t *gc = gc_state_get(h);
    /* The collecting thread's stack is a root. A thread that is not attached
     * is attached for this collection only: collecting attaches no thread. */
    bool visiting = gc_self(gc) == NULL;
    gc_attach(gc);
    gc_markers_prepare(h);
    /* The last cycle's pending slabs are swept before the world stops, as a
     * refill would sweep them, with the world running: the pause then holds
     * only what another thread's collection, finishing meanwhile, leaves
     * pending (the Lisp example's minor collections: 14 of their 53 µs). */
    gc_finish_sweep(h);
    gc_wait_begin();                     /* stopped for other heaps until the restart */
    pthread_mutex_lock(&gc->lock);
    if (!gc_stop_world(gc)) {            /* another thread's collection served */
        pthread_mutex_unlock(&gc->lock);
        gc_wait_end();
        if (visiting)
            loam_thread_detach(h);
        gc_run_ready_finalizers(gc);
        return;
    }
    uint64_t t0 = gc_now_ns();
    gc_mark_begin(gc);

    empty_thread_caches(h);
    /* Generational heaps: a minor collection keeps the old blocks' marks and
     * starts from the old blocks the barrier saw written; a major one starts
     * from nothing (generation.c). */
    bool minor = gc_choose_minor(gc, full);
    keep_for_regrowth(h, full, minor);
    gc_finish_sweep(h);
    size_t old_live = 0;
    if (minor) {
        gc->mk.aging = gc_age_begin(gc);
        old_live = gc_minor_old_live(gc, gc->mk.aging);
        gc_mark_remembered(gc);
    } else if (gc_generational(gc)) {
        gc_begin_major(gc);
    }
    /* A minor collection scans about what the last one did, not the heap. */
    gc->mark_expect = minor ? gc->minor_scanned : major_scan_expect(gc);
    gc_mark_roots(gc);
    gc_mark_drain(gc);
    /* What ephemeron values keep alive is reachable too: before any weak
     * field or reference is found dead. */
    gc_ephemerons_settle(gc);
    size_t weak_fields_seen = gc_clear_dead_weak_fields(gc, 0);
    gc_clear_dead_weaks(gc);
    gc_find_ready_finalizers(gc);
    /* A key that only finalization keeps alive keeps its values too
     * (ephemeron.c); the pairs the finalizable objects' marking met settle
     * with them. */
    gc_ephemerons_settle(gc);
    /* The finalizable objects' marking met weak fields too (of objects
     * alive until their finalizer ran). */
    gc_clear_dead_weak_fields(gc, weak_fields_seen);
    gc_ephemerons_end(gc, true);
    if (gc->mk.aging)
        gc_age_end(gc);
    gc_mark_end(gc);
    size_t live = old_live + gc->mk.marked_bytes;
    __atomic_fetch_add(&gc->bytes_swept, gc_sweep(gc, minor), __ATOMIC_RELAXED);

    gc->live_after = live;
    gc->survivor_bytes = gc->mk.aging && gc->mk.survivor_bytes < live ? gc->mk.survivor_bytes : 0;
    gc->mk.aging = false;
    AO_store(&gc->old_freed, 0);
    AO_store(&gc->survivor_freed, 0);
    if (minor) {
        gc->minor_collections++;
        gc->minors_in_a_row++;
        gc->minor_scanned = gc->mk.marked_bytes - gc->mk.atomic_bytes;
    } else {
        gc->major_atomic = gc->mk.atomic_bytes;
        gc->major_live = live;
        gc->need_major = false;
        gc->minors_in_a_row = 0;
    }
    /* What the next marking will mark, at most: gc_markers_prepare starts
     * helpers only for a heap whose markings can run in parallel. */
    size_t major_scan = major_scan_expect(gc);
    AO_store(&gc->next_mark_max, major_scan > gc->minor_scanned ? major_scan : gc->minor_scanned);
    AO_store(&gc->alloc_since, 0);
    note_pause(gc, gc_now_ns() - t0);
    gc_restart_world(gc);
    pthread_mutex_unlock(&gc->lock);
    gc_wait_end();
    if (visiting)
        loam_thread_detach(h);
    /* The runs this collection's releases keep for regrowth go back after
     * decay_ms if the program goes quiet: the purge thread must be awake
     * to see it. Once per collection, not per refill (purge_poke). */
    if (AO_load(&alloc_decay_due))
        purge_poke_slow();

    gc_run_ready_finalizers(gc);
}
