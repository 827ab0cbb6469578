/* gc/mark.c — marking.
 *
 * A mark bit per block start lives in its segment's side bitmap (a bit per
 * 16-byte granule) or, for a large block, in its header's `upper` word. Grey
 * blocks wait on an explicit mark stack, so marking depth never touches the C
 * stack: a ten-million-cell list is a loop, not a recursion.
 *
 * Invariant kept here: a block is pushed at most once per collection (its bit
 * is set when pushed), and only allocated blocks are marked — a block whose
 * second word carries the free key is free (in a free list or a thread cache)
 * and is never pushed, so a trace callback never sees a free block.
 */
#include "gc/gc.h"

#include <sys/mman.h>

/* ---- mark bits ------------------------------------------------------------------ */

static inline bool bit_test_and_set(uint64_t *bits, size_t i)
{
    uint64_t m = (uint64_t)1 << (i & 63);
    uint64_t old = bits[i >> 6];
    bits[i >> 6] = old | m;
    return (old & m) != 0;
}

static inline bool bit_test(const uint64_t *bits, size_t i)
{
    return (bits[i >> 6] >> (i & 63)) & 1;
}

static inline size_t granule_of(segment_t *seg, const char *block)
{
    return (size_t)(block - (char *)seg) / BLOCK_ALIGN;
}

/* ---- the mark stack ----------------------------------------------------------------- */

static bool stack_grow(gc_state_t *gc)
{
    size_t cap = gc->cap ? gc->cap * 2 : 4096;
    mark_entry_t *s = os_reserve_aligned(cap * sizeof *s, OS_PAGE);
    if (!s)
        return false;
    if (gc->stack) {
        memcpy(s, gc->stack, gc->sp * sizeof *s);
        os_release(gc->stack, gc->cap * sizeof *s);
    }
    gc->stack = s;
    gc->cap = cap;
    return true;
}

void gc_mark_stack_release(gc_state_t *gc)
{
    if (gc->stack)
        os_release(gc->stack, gc->cap * sizeof *gc->stack);
    gc->stack = NULL;
    gc->cap = gc->sp = 0;
}

/* Pushed with a kind: a conservative candidate whose block must be checked
 * for the free key when it is scanned. */
#define MARK_VERIFY 4u

static void push(gc_state_t *gc, char *obj, size_t size, unsigned kind)
{
    gc->marked_bytes += size;
    if (kind == LOAM_ATOMIC)
        return;                         /* black at once: nothing inside to follow */
    if (LOAM_UNLIKELY(gc->sp == gc->cap) && !stack_grow(gc)) {
        gc->overflow = true;            /* marked but not scanned: found again by the rescan */
        return;
    }
    gc->stack[gc->sp++] = (mark_entry_t){ obj, size, kind };
}

/* ---- finding the block behind a candidate pointer ---------------------------------- */

/* Mark the block of this heap that contains w (interior: any address inside
 * it; else only its start). A precise candidate comes from the embedder (a
 * trace or roots callback, a root slot), who vouches that it names a live
 * object: the free-key check, which would touch the object's memory before
 * its scan does, is for conservative words only. */
static inline __attribute__((always_inline)) void
mark_candidate(gc_state_t *gc, uintptr_t w, bool interior, bool precise)
{
    void *base;
    if (LOAM_LIKELY(segkind_is_slabs(w))) {
        base = (void *)(w & ~(uintptr_t)SEGMENT_MASK);   /* one load: the kind map */
    } else {
        base = segmap_lookup(w);
        if (!base || *(uint8_t *)base != SEGMENT_LARGE)
            return;
    }
    if (*(uint8_t *)base == SEGMENT_LARGE) {
        large_t *l = base;
        uintptr_t b = (uintptr_t)l->block;
        if (l->arena->owner != gc->heap || w < b || w >= b + l->size || (!interior && w != b))
            return;
        if (l->upper & 1)
            return;
        l->upper |= 1;
        push(gc, l->block, l->size, l->tag);
        return;
    }
    segment_t *seg = base;
    if (seg->owner != gc->heap)
        return;
    slab_t *s = segment_slab_at(seg, w);
    if (s->state != RUN_SLAB)
        return;
    size_t idx = slab_block_index(s, w);
    if (idx >= s->bumped)
        return;
    char *block = s->start + idx * s->block_size;
    if (!interior && (uintptr_t)block != w)
        return;
    /* A conservative word may name a free block. Reading its free key now
     * would touch its memory before the prefetch ring does; for a block that
     * will be scanned anyway the check waits for the scan (MARK_VERIFY), and a
     * free block marked meanwhile is harmless: the sweep skips marked blocks
     * and clears their bits, and a free block is never swept. */
    unsigned kind = s->tag;
    if (!precise) {
        if (kind == LOAM_ATOMIC) {
            if (((free_block_t *)block)->freed_key == loam_free_key)
                return;                 /* a free block: nothing lives there */
        } else {
            kind |= MARK_VERIFY;
        }
    }
    if (bit_test_and_set(segment_side_bits(seg), granule_of(seg, block)))
        return;
    push(gc, block, s->block_size, kind);
}

void gc_mark_word(gc_state_t *gc, uintptr_t w)
{
    mark_candidate(gc, w, true, false);
}

void gc_mark_precise(gc_state_t *gc, uintptr_t w)
{
    mark_candidate(gc, w, true, true);
}

/* Conservative: every aligned word of [start, end). Stacks and registers are
 * read here, including bytes sanitizers consider out of bounds. */
__attribute__((no_sanitize("address"))) __attribute__((no_sanitize("thread")))
void gc_mark_range(gc_state_t *gc, const void *start, const void *end)
{
    uintptr_t a = ((uintptr_t)start + sizeof(void *) - 1) & ~(uintptr_t)(sizeof(void *) - 1);
    for (; a + sizeof(void *) <= (uintptr_t)end; a += sizeof(void *))
        mark_candidate(gc, *(const uintptr_t *)a, true, false);
}

void loam_mark(loam_tracer_t *t, void *p)
{
    if (t && p)
        mark_candidate(t->gc, (uintptr_t)p, true, true);
}

bool gc_is_marked(gc_state_t *gc, const void *obj)
{
    addr_info_t ai;
    addr_classify(obj, &ai);
    if (ai.kind != ADDR_BLOCK && ai.kind != ADDR_INTERIOR)
        return false;
    if (ai.large)
        return ai.large->upper & 1;
    return bit_test(segment_side_bits(ai.segment), granule_of(ai.segment, ai.block));
}

/* ---- scanning grey blocks ------------------------------------------------------------ */

static void scan(gc_state_t *gc, const mark_entry_t *e)
{
    if (LOAM_UNLIKELY(e->kind & MARK_VERIFY)) {
        if (((free_block_t *)e->obj)->freed_key == loam_free_key) {
            gc->marked_bytes -= e->size;    /* a free block: nothing lives there */
            return;
        }
        mark_entry_t checked = { e->obj, e->size, e->kind & ~MARK_VERIFY };
        scan(gc, &checked);
        return;
    }
    if (e->kind == LOAM_TRACED) {
        loam_heap_t *h = gc->heap;
        if (h->cfg.trace)
            h->cfg.trace(e->obj, &gc->tracer, h->cfg.user);
    } else {
        gc_mark_range(gc, e->obj, e->obj + e->size);
    }
}

static void rescan_marked(gc_state_t *gc, char *block, size_t size, unsigned kind, bool marked, void *arg)
{
    (void)arg;
    if (marked && kind != LOAM_ATOMIC) {
        mark_entry_t e = { block, size, kind };
        scan(gc, &e);
        while (gc->sp) {
            mark_entry_t top = gc->stack[--gc->sp];
            scan(gc, &top);
        }
    }
}

/* Pop grey blocks through a small ring: each is prefetched when it enters
 * and scanned PREFETCH_DEPTH pops later, when its memory has arrived. A plain
 * depth-first pop would scan a block the moment after pushing it. */
#define PREFETCH_DEPTH 8

static void drain_stack(gc_state_t *gc)
{
    mark_entry_t ring[PREFETCH_DEPTH];
    unsigned head = 0, n = 0;
    while (gc->sp || n) {
        while (n < PREFETCH_DEPTH && gc->sp) {
            mark_entry_t e = gc->stack[--gc->sp];
            __builtin_prefetch(e.obj);
            ring[(head + n++) % PREFETCH_DEPTH] = e;
        }
        mark_entry_t e = ring[head];
        head = (head + 1) % PREFETCH_DEPTH;
        n--;
        scan(gc, &e);
    }
}

void gc_mark_drain(gc_state_t *gc)
{
    for (;;) {
        drain_stack(gc);
        if (!gc->overflow)
            return;
        /* Pushes were dropped: every marked block is scanned again, which
         * finds the unmarked children of those that were never scanned. */
        gc->overflow = false;
        gc_for_each_block(gc, rescan_marked, NULL);
    }
}

/* ---- clearing marks --------------------------------------------------------------------- */

/* Conservative words may mark free blocks (checked only when scanned): in a
 * slab with no block out nothing sweeps those marks away, and a block
 * allocated there later would look marked at the next collection, its
 * children never traced. A slab's granules are whole words of the bitmap
 * (its start and length are multiples of 64 granules). */
void gc_clear_slab_marks(segment_t *seg, slab_t *s)
{
    uint64_t *bits = segment_side_bits(seg);
    size_t first = (size_t)(s->start - (char *)seg) / BLOCK_ALIGN;
    size_t n = (size_t)s->pages * PAGE_SIZE / BLOCK_ALIGN;
    memset(bits + first / 64, 0, n / 8);
}

void gc_clear_all_marks(gc_state_t *gc)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            for (unsigned p = 1; p < PAGES_PER_SEGMENT; p += seg->slabs[p].pages)
                if (seg->slabs[p].state == RUN_SLAB)
                    gc_clear_slab_marks(seg, &seg->slabs[p]);
        for (large_t *l = a->large; l; l = l->next)
            l->upper &= ~(uintptr_t)1;
    }
}

/* ---- walking the heap ------------------------------------------------------------------ */

void gc_for_each_block(gc_state_t *gc, gc_block_fn fn, void *arg)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        for (segment_t *seg = a->segments; seg; seg = seg->next) {
            uint64_t *bits = segment_side_bits(seg);
            for (unsigned p = 1; p < PAGES_PER_SEGMENT;) {
                slab_t *s = &seg->slabs[seg->page_head[p]];
                unsigned next = s->page_index + s->pages;
                if (s->state == RUN_SLAB) {
                    for (uint32_t k = 0; k < s->bumped; k++) {
                        char *b = s->start + (size_t)k * s->block_size;
                        if (((free_block_t *)b)->freed_key == loam_free_key)
                            continue;
                        fn(gc, b, s->block_size, s->tag, bit_test(bits, granule_of(seg, b)), arg);
                    }
                }
                p = next > p ? next : p + 1;
            }
        }
        for (large_t *l = a->large; l; l = l->next)
            fn(gc, l->block, l->size, l->tag, l->upper & 1, arg);
    }
}
