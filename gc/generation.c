/* gc/generation.c — generations for LOAM_GENERATIONAL heaps: sticky mark
 * bits, the write barrier's cards, promotion at the second minor
 * collection, minor or major.
 *
 * No object moves. A block that survives a collection keeps its mark bit
 * until the next major collection: marked means old (or a survivor, below),
 * unmarked means young (allocated since the last collection) or free. A minor collection marks
 * from the roots as usual, but stops at every old block, so it marks only
 * the young blocks that are reachable; the sweep then frees the unmarked,
 * that is the young garbage, and clears no bit. A major collection clears
 * every bit first and marks everything, like a collection of a heap without
 * the flag.
 *
 * What a minor collection would miss is a young block reachable only through
 * an old one. The embedder reports each pointer store with
 * loam_write_barrier, which sets the card (a side byte per 512 bytes of a
 * slab segment, alloc.h) of the address written; a minor collection scans
 * again every old block overlapping a dirty card, and every old large block
 * that can hold pointers (large blocks have no cards: they are few).
 *
 * Promotion waits for a block's second minor collection. A young block
 * that survives its first stays young, a survivor: between collections it
 * carries its mark (every reader of marks in between, the sweep first, sees
 * a live block) and an age bit in a second bitmap (gc_age_bits). A minor
 * collection first takes the marks of survivors away (gc_age_begin), then
 * marks; the marker that marks a young block flips its age bit (mark.c,
 * age_block): a new block gets mark and age (a survivor now), a survivor
 * reached again loses its age (old). After marking, survivors nothing
 * reached lose their age bit too (gc_age_end), unmarked: the sweep frees
 * them. Without it, every block live at a minor collection was promoted:
 * the Lisp example's tree under construction at each one became old
 * garbage, and only a major collection found it (109 of the demo's 741
 * collections were major, 28 of 727 now; 380 -> 360 ms, docs/internals.md).
 *
 * A survivor is young, so an old block pointing at one must be rescanned
 * at the next minor collection too: every dirty card stays dirty for two
 * minor collections (1 when written, 2 after the first, clean after the
 * second). That is enough: a survivor was allocated after the collection
 * before the one it survived, so any old block, or block promoted by that
 * collection, that points at it was written after it was allocated, with
 * the barrier (it was no fresh block then), in that window.
 *
 * Invariants kept for minor collections to be right:
 *   - a free block is unmarked: loam_free of an old block clears its bit
 *     (gc_free_refused), a free block a conservative word marked has its bit
 *     cleared when its scan finds the free key (mark.c), and a slab with no
 *     block out has its bits cleared at each sweep — so a block is young
 *     when it is handed out, and stores into it before the next safepoint
 *     need no barrier;
 *   - a free block has no age bit either: loam_free of a survivor clears
 *     both (gc_free_refused), and the age bits of survivors that died go at
 *     the end of the collection that found them dead (gc_age_end);
 *   - every old block that may point at a young one is on a dirty card, or
 *     is large: each such store went through the barrier after the
 *     collection before the last one (cards stay dirty for two).
 * A heap switched to manual and back starts again with a major collection. */
#include "gc/gc.h"

/* A card's states: written since the last minor collection; written
 * before it but after the one before (still dirty, for its survivors);
 * clean. */
#define CARD_DIRTY  1
#define CARD_AGED   2

void loam_write_barrier(const void *where)
{
    uintptr_t a = (uintptr_t)where;
    if (!segkind_is_slabs(a))
        return;                     /* a large block (always rescanned), or not ours */
    segment_t *seg = (segment_t *)(a & ~(uintptr_t)SEGMENT_MASK);
    uint8_t *card = &segment_side_bytes(seg)[(a & SEGMENT_MASK) >> SEGMENT_SIDE_BYTES_SHIFT];
    /* Racing stores of the same byte by several threads all write 1; the
     * collector reads the cards with the world stopped. */
    if (__atomic_load_n(card, __ATOMIC_RELAXED) != CARD_DIRTY)
        __atomic_store_n(card, CARD_DIRTY, __ATOMIC_RELAXED);
}

bool gc_generational(const gc_state_t *gc)
{
    return (gc->heap->cfg.flags & LOAM_GENERATIONAL) != 0;
}

/* Pacing of a generational heap. A heap without the flag lets the live heap
 * grow by gc_growth percent between collections; here that growth is split
 * in two: two thirds young allocation between two collections, one third
 * old garbage (what minor collections promote and then drop) between two
 * major ones. Both are measured from the live bytes the last major
 * collection found, so the heap peaks where it would without generations.
 * The young share is the larger: objects given more time to die before a
 * minor collection are not promoted to become old garbage (GCBench, whose
 * trees are still growing when a collection comes: x0.80-0.89 of the time,
 * 92 collections instead of 120 against two equal halves, peak RSS 26 MiB
 * instead of 30; binary-trees 19 the same time at 55-56 MiB instead of 59;
 * binary-trees 16 at 10-11.5 MiB instead of 10). The floor is
 * gc_young_min, not gc_min_bytes (unless the heap has its own,
 * gc_floor_bytes): a minor collection costs what survives it, not the live
 * heap, so small heaps can afford frequent ones (the Lisp example's peak
 * RSS: 10.4 MiB with 2 MiB, 5.7 MiB with 512 KiB). */
static size_t at_least_floor(const gc_state_t *gc, size_t bytes)
{
    size_t floor = gc_floor_bytes(gc);
    return bytes > floor ? bytes : floor;
}

size_t gc_young_allowance(const gc_state_t *gc)
{
    return at_least_floor(gc, gc->major_live / 150 * gc_growth_percent(gc));
}

size_t gc_old_allowance(const gc_state_t *gc)
{
    return at_least_floor(gc, gc->major_live / 300 * gc_growth_percent(gc));
}

/* World stopped, before marking. Major when the heap is not generational,
 * when asked (loam_gc_collect, the heap's limit), when marks cannot be
 * trusted, when the old blocks have outgrown their allowance since the last
 * major collection (old garbage is only found by a major one), or after
 * GC_MINORS_PER_MAJOR minor ones in a row: old blocks that die while the
 * program makes only short-lived garbage do not grow the old bytes, and
 * without it they would stay until loam_gc_collect. */
bool gc_choose_minor(gc_state_t *gc, bool full)
{
    if (!gc_generational(gc) || full || gc->need_major || gc->collections == 0 ||
        gc->minors_in_a_row >= GC_MINORS_PER_MAJOR)
        return false;
    return gc_old_bytes(gc) < gc->major_live + gc_old_allowance(gc);
}

/* Bytes in old blocks and survivors: live after the last collection, less
 * the blocks of either freed since. Survivors count as old here: they take
 * the room promoted blocks took before there were survivors (the old
 * allowance), so the heap peaks where it did; and a minor collection frees
 * those that died, which promoted blocks waited for a major one for. */
size_t gc_old_bytes(const gc_state_t *gc)
{
    size_t freed = AO_load(&gc->old_freed) + AO_load(&gc->survivor_freed);
    return gc->live_after > freed ? gc->live_after - freed : 0;
}

/* The old bytes a minor collection starts from, before it marks. With
 * aging, the survivors are young again for it (gc_age_begin took their
 * marks): all of them are left out, freed or not, and marking counts
 * those it reaches. Without, they stay marked, old. */
size_t gc_minor_old_live(const gc_state_t *gc, bool aging)
{
    size_t gone = AO_load(&gc->old_freed) + (aging ? gc->survivor_bytes : AO_load(&gc->survivor_freed));
    return gc->live_after > gone ? gc->live_after - gone : 0;
}

/* Cards of a segment, a word at a time: most are clean. fn is called for
 * each dirty card; then a card written since the last collection is kept
 * for the next one (CARD_AGED) and one kept is cleared. Without fn, every
 * card is cleared (a major collection: no survivor is left). */
static void for_each_dirty_card(segment_t *seg, void (*fn)(gc_state_t *, segment_t *, size_t), gc_state_t *gc)
{
    uint64_t *w = (uint64_t *)segment_side_bytes(seg);
    const uint64_t dirty = 0x0101010101010101u * CARD_DIRTY;
    _Static_assert(CARD_DIRTY == 1 && CARD_AGED == 2, "aged: a dirty byte shifted by one");
    for (size_t i = 0; i < SEGMENT_SIDE_BYTES_COUNT / 8; i++) {
        if (!w[i])
            continue;
        if (fn) {
            const uint8_t *c = (const uint8_t *)&w[i];
            for (size_t j = 0; j < 8; j++)
                if (c[j])
                    fn(gc, seg, i * 8 + j);
            w[i] = (w[i] & dirty) << 1;
        } else {
            w[i] = 0;
        }
    }
}

/* Every old block overlapping card `card` of seg is scanned again. */
static void rescan_card(gc_state_t *gc, segment_t *seg, size_t card)
{
    uintptr_t lo = (uintptr_t)seg + (card << SEGMENT_SIDE_BYTES_SHIFT);
    uintptr_t hi = lo + ((uintptr_t)1 << SEGMENT_SIDE_BYTES_SHIFT);
    unsigned page = (unsigned)((lo - (uintptr_t)seg) >> PAGE_SHIFT);
    if (page == 0)
        return;                     /* the header: no block */
    slab_t *s = segment_page_slab(seg, page);
    if (s->state != RUN_SLAB || s->tag == LOAM_ATOMIC)
        return;
    uintptr_t start = (uintptr_t)s->start, end = start + (uintptr_t)s->bumped * s->block_size;
    if (lo < start)
        lo = start;
    if (hi > end)
        hi = end;
    if (lo >= hi)
        return;
    uint64_t *bits = segment_side_bits(seg);
    size_t k0 = slab_block_index(s, lo), k1 = slab_block_index(s, hi - 1);
    /* Most dirty cards hold young blocks only (written since they were
     * allocated): no mark bit from the first block's start to the last's
     * says so without a look at each block. */
    if (!gc_any_bit_in(bits, gc_block_granule(s, k0), gc_block_granule(s, k1)))
        return;
    for (size_t k = k0; k <= k1; k++) {
        size_t g = gc_block_granule(s, k);
        if (!((bits[g >> 6] >> (g & 63)) & 1))
            continue;               /* young or free: nothing is marked yet this collection */
        char *b = s->start + k * s->block_size;
        if (((free_block_t *)b)->freed_key == loam_free_key)
            continue;
        gc_mark_rescan(gc, b, s->block_size, s->tag);
    }
}

/* A minor collection's extra roots: old blocks on dirty cards and old large
 * blocks that can hold pointers. A block spanning two dirty cards is scanned
 * twice, which costs time only. */
void gc_mark_remembered(gc_state_t *gc)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            for_each_dirty_card(seg, rescan_card, gc);
        for (large_t *l = a->large; l; l = l->next)
            if ((l->upper & 1) && l->tag != LOAM_ATOMIC && !l->cached && l->block)
                gc_mark_rescan(gc, l->block, l->size, l->tag);
    }
}

/* A major collection of a generational heap starts from no marks and no
 * dirty cards. */
void gc_begin_major(gc_state_t *gc)
{
    gc_clear_all_marks(gc);
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++)
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            for_each_dirty_card(seg, NULL, gc);
}

/* ---- promotion at the second survival --------------------------------------- */

/* Age bits of granules [first, first + n) (a slab's: whole words, whole
 * pages) go, with their pages' bits in word 0. */
void gc_age_clear(segment_t *seg, size_t first, size_t n)
{
    uint64_t *age = gc_age_bits(seg);
    if (!age)
        return;
    const size_t per_page = PAGE_SIZE / BLOCK_ALIGN;
    uint64_t pages = 0;
    for (size_t g = first; g < first + n; g += per_page)
        pages |= (uint64_t)1 << (g / per_page);
    if (!(age[0] & pages))
        return;                         /* no age bit there: nothing touched */
    for (size_t w = first / 64; w < (first + n) / 64; w++)
        if (age[w])
            age[w] = 0;
    age[0] &= ~pages;
}

/* Word 0 of a segment's age bits: the pages that may have some, and the
 * words of page p. */
#define AGE_WORDS_PER_PAGE (PAGE_SIZE / BLOCK_ALIGN / 64)

/* World stopped, before a minor collection marks (and before the dirty
 * cards are read, which look at marks): every slab segment has its age
 * bits (mapped, untouched until set), and survivors lose their marks, so
 * that marking finds again which of them are reachable. false: no memory
 * for a segment's bits; the collection then promotes what it reaches, as
 * the survivors stay marked. */
bool gc_age_begin(gc_state_t *gc)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++)
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            if (!seg->upper_side) {
                seg->upper_side = os_reserve_aligned(SEGMENT_UPPER_SIDE_BYTES, OS_PAGE);
                if (!seg->upper_side)
                    return false;
            }
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++)
        for (segment_t *seg = a->segments; seg; seg = seg->next) {
            uint64_t *age = gc_age_bits(seg), *mark = segment_side_bits(seg);
            for (uint64_t pages = age[0]; pages; pages &= pages - 1) {
                size_t w = (size_t)__builtin_ctzll(pages) * AGE_WORDS_PER_PAGE;
                for (size_t end = w + AGE_WORDS_PER_PAGE; w < end; w++)
                    if (age[w])
                        mark[w] &= ~age[w];
            }
        }
    return true;
}

/* After a minor collection's marking and every decision made on its marks
 * (weak references, finalizers, ephemerons), before its sweep: survivors
 * nothing reached lose their age bit and, unmarked, are freed by the
 * sweep, which must then visit their slabs even if no block went out of
 * them since the last collection. Word 0 keeps the pages that still have
 * age bits. */
void gc_age_end(gc_state_t *gc)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++)
        for (segment_t *seg = a->segments; seg; seg = seg->next) {
            uint64_t *age = gc_age_bits(seg), *mark = segment_side_bits(seg), still = 0;
            if (!age)
                continue;
            for (uint64_t pages = age[0]; pages; pages &= pages - 1) {
                unsigned p = (unsigned)__builtin_ctzll(pages);
                size_t w = (size_t)p * AGE_WORDS_PER_PAGE;
                for (size_t end = w + AGE_WORDS_PER_PAGE; w < end; w++) {
                    if (!age[w])
                        continue;
                    uint64_t dead = age[w] & ~mark[w];
                    if (dead) {
                        age[w] &= ~dead;
                        segment_page_slab(seg, p)->handed_out = true;
                    }
                    if (age[w])
                        still |= (uint64_t)1 << p;
                }
            }
            age[0] = still;
        }
}

/* The heap turns manual: its frees no longer clear marks, so once it is
 * collected again no mark can be trusted; that first collection is major
 * (gc_begin_major clears them all). */
void gc_forget_generations(gc_state_t *gc)
{
    pthread_mutex_lock(&gc->lock);
    gc->need_major = true;
    pthread_mutex_unlock(&gc->lock);
}
