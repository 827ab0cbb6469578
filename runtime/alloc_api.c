/* runtime/alloc_api.c — loam_malloc and friends: the fast paths inline from
 * runtime.h, and the slow paths (large blocks, tracked heaps, refills,
 * flushes, heaps without a cache, and every fault). */
#include "runtime/runtime.h"
#include "gc/gc.h"

#include <stdint.h>

/* ---- helpers --------------------------------------------------------------- */

static void heap_note_requested(loam_heap_t *h, size_t delta_add, size_t delta_sub)
{
    if (delta_add)
        AO_fetch_and_add(&h->requested, delta_add);
    if (delta_sub)
        AO_fetch_and_add(&h->requested, (AO_t)0 - delta_sub);
}

/* One block of class cls and kind k from the thread's cache, or from an arena
 * under its lock when the thread has no cache for it. */
static void *alloc_class_block(loam_heap_t *h, unsigned cls, unsigned kind, bool bump)
{
    heap_kind_t *hk = heap_kind(h, kind);
    tcache_t *tc = NULL;
    /* gc_stress: no cache, no refill, so that the next allocation is a slow
     * path too (gc/api.c, stress_due). */
    if (!h->gc || !gc_stressed(h)) {
        tc = loam_tls_cache[hk->slot];
        if (tc->owner != h)
            tc = heap_thread_cache(h, kind);
    }
    if (tc) {
        bump = bump && tc->allocates_only;  /* ranges: a cache that only allocates */
        void *p = bump ? tcache_bin_bump(&tc->bins[cls], sizeclass_size[cls]) : NULL;
        if (!p)
            p = tcache_pop(tc, cls);
        if (p)
            return p;
        if (tcache_flush_requested(tc))
            purge_answer(tc);
        if (bump) {
            size_t bytes;
            p = tcache_refill_bump(tc, cls, &bytes);
            purge_poke(h);
            if (bytes && h->gc)
                gc_note_alloc(h, bytes);
            return p;
        }
        p = tcache_refill_pop(tc, cls);
        purge_poke(h);
        if (p && h->gc)
            gc_note_refill(h, tc, cls);
        return p;
    }
    arena_t *a = arena_set_lock_some(&hk->arenas, NULL);
    if (!a)
        return NULL;
    void *b = NULL;
    unsigned got = arena_alloc_blocks(a, cls, 1, &b + 1);
    arena_unlock(a);
    if (!got)
        return NULL;
    ((free_block_t *)b)->freed_key = 0;
    if (h->gc)
        gc_note_alloc(h, sizeclass_size[cls]);
    return b;
}

static void *alloc_large_block(loam_heap_t *h, size_t n, size_t align, unsigned kind)
{
    arena_t *a = arena_set_first(&heap_kind(h, kind)->arenas);
    void *p = a ? large_alloc(a, n, align) : NULL;
    if (p && h->gc)
        gc_note_alloc(h, n);
    return p;
}

static void track_block(loam_heap_t *h, void *p, size_t n)
{
    segment_t *seg = (segment_t *)((uintptr_t)p & ~(uintptr_t)SEGMENT_MASK);
    slab_t *s = segment_slab_at(seg, (uintptr_t)p);
    if (s->waste) {
        slab_set_waste(s, slab_block_index(s, (uintptr_t)p), n);
        heap_note_requested(h, n, 0);
    }
}

/* Allocate n bytes of kind k with alignment align (16 for plain malloc; 8,
 * only for a collected heap's blocks with LOAM_ALIGN_8) from h. */
static void *alloc_from_heap_generic(loam_heap_t *h, size_t n, size_t align, unsigned kind, bool bump)
{
    loam_ensure_init();
    if (h->gc && !gc_alloc_slow_hook(h))    /* safepoint, and a paced collection */
        return NULL;                    /* a fault, its reaction returned */
    gc_answer_stop_asks();              /* a safepoint of every heap the thread is attached to */
    for (unsigned attempt = 0;; attempt++) {
        void *p = NULL;
        if (n <= alloc_mmap_threshold() && align <= PAGE_SIZE) {
            int cls = align < BLOCK_ALIGN ? (int)sizeclass_of_by8(n)
                    : align == BLOCK_ALIGN ? (int)sizeclass_of(n) : sizeclass_of_aligned(n, align);
            if (cls >= 0) {
                p = alloc_class_block(h, (unsigned)cls, kind, bump);
                if (p && h->track_requested)
                    track_block(h, p, n);
                if (p) {
                    mc_alloc(h, p, sizeclass_size[cls], 0);
                    return p;
                }
                goto failed;
            }
        }
        if (n > PTRDIFF_MAX) {
            errno = ENOMEM;
            return NULL;
        }
        p = alloc_large_block(h, n, align, kind);
        if (p) {
#ifdef LOAM_MEMCHECK
            addr_info_t ai;
            addr_classify(p, &ai);
            mc_alloc(h, p, ai.size, ai.large && !ai.large->reused);   /* a fresh mapping is zero */
#endif
            return p;
        }
    failed:
        if (!heap_out_of_memory(h, n, attempt)) {
            errno = ENOMEM;
            return NULL;
        }
    }
}

void *alloc_from_heap(loam_heap_t *h, size_t n, size_t align, unsigned kind)
{
    return alloc_from_heap_generic(h, n, align, kind, false);
}

void *alloc_from_heap_bump(loam_heap_t *h, size_t n, unsigned kind)
{
    /* No bigger blocks than the collector's fast path serves (a sweep's
     * ranges are of blocks of 1 KiB or less). */
    return alloc_from_heap_generic(h, n, heap_align_8(h) ? 8 : BLOCK_ALIGN, kind, n <= SMALL_MAX);
}

/* Above the fast path's table, up to the mmap threshold, a size's class is
 * a little arithmetic and then the same pop: the random sizes of 8-4096 B
 * spent 7 % of their time in alloc_from_heap's set-up for three mallocs in
 * four. An empty bin, or anything else, goes on to alloc_from_heap. */
void *alloc_malloc_slow(loam_heap_t *h, size_t n)
{
    if (n > SMALL_MAX && n <= CLASS_MAX_SIZE && n <= alloc_mmap_threshold()) {
        unsigned cls = sizeclass_of_generic(n);
        void *p = tcache_pop(loam_tls_cache[h->alloc_slot], cls);
        if (LOAM_LIKELY(p != NULL)) {
            mc_alloc(h, p, sizeclass_size[cls], 0);
            return p;
        }
    }
    return alloc_from_heap(h, n, BLOCK_ALIGN, LOAM_CONSERVATIVE);
}

void *alloc_aligned(loam_heap_t *h, size_t align, size_t n)
{
    if (align == 0 || (align & (align - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    if (align < BLOCK_ALIGN)
        align = BLOCK_ALIGN;
    if (n > PTRDIFF_MAX || align > ((size_t)1 << 40)) {
        errno = ENOMEM;
        return NULL;
    }
    return alloc_from_heap(h, n, align, LOAM_CONSERVATIVE);
}

/* ---- free ------------------------------------------------------------------ */

static loam_heap_t *block_heap(const addr_info_t *ai)
{
    arena_t *a = ai->large ? ai->large->arena : ai->slab->arena;
    return a->owner;
}

/* Does the small block carry the free key (freed, or never handed out)?
 * Under memcheck the bytes of a block never handed out are undefined, and
 * comparing them would be reported: such a word reads as no key (the checks
 * after this one name such a free). */
static inline bool has_free_key(const void *block)
{
    const free_block_t *b = block;
    return mc_word_defined(&b->freed_key) && b->freed_key == loam_free_key;
}

void alloc_free_slow(void *p)
{
    if (p == NULL)
        return;
    addr_info_t ai;
    addr_classify(p, &ai);
    switch (ai.kind) {
    case ADDR_FOREIGN:
        if (large_was_freed(p))
            loam_fault(NULL, "double free (of a large block, already unmapped)", p, 0);
        else if (segmap_was_released((uintptr_t)p))
            /* Not foreign: loam's memory, given back since. The heap it
             * belonged to may be gone: the default heap's reaction. */
            loam_fault(NULL, "free of a pointer into memory loam gave back to the OS (a block of a "
                             "destroyed heap, or a double free or use after free)", p, 0);
        else
            loam_fault(NULL, "free of a pointer not allocated by loam", p, 0);
        return;
    case ADDR_UNALLOCATED:
        if (ai.large && ai.large->cached && p == ai.large->block) {
            loam_fault(ai.large->arena->owner, "double free (of a large block)", p, 0);
            return;
        }
    {
        loam_heap_t *owner = ai.large || ai.slab ? (ai.large ? ai.large->arena : ai.slab->arena)->owner : NULL;
        /* A collection releases a slab none of whose blocks it marked: a
         * block kept past it by a pointer the collector cannot see lies in
         * no slab now. */
        loam_fault(owner, owner && owner->gc
                              ? "free of an address inside a loam heap that is no block (never allocated, "
                                "or reclaimed by the collector: use after collection)"
                              : "free of an address inside a loam heap that is no block (never allocated, "
                                "or freed before and its slab given back since: double free)",
                   p, 0);
        return;
    }
    case ADDR_INTERIOR:
        loam_fault(block_heap(&ai), "free of an interior pointer (not the start of a block)", p, ai.size);
        return;
    case ADDR_BLOCK:
        break;
    }
    loam_heap_t *h = block_heap(&ai);
    free_block_t *b = p;
    if (!ai.large && has_free_key(b)) {
        /* The key says free; whether the block was ever handed out, loam
         * does not keep (a flushed cache leaves never-used blocks keyed). */
        loam_fault(h, "double free (the block is free: freed already, or never handed out)", p, ai.size);
        return;
    }
    if (h->gc && LOAM_UNLIKELY(gc_in_blocking_bracket(h))) {
        /* Counted as stopped, the thread would free a block a collection
         * may be marking or sweeping. Not freed. */
        loam_fault(h, "free of a block of a collected heap between loam_enter_blocking and "
                      "loam_leave_blocking (it would race the collector)", p, ai.size);
        return;
    }
    if (h->gc && !ai.large) {
        const char *refused = gc_free_refused(h, ai.slab, ai.index);
        if (refused) {
            loam_fault(h, refused, p, ai.size);
            return;
        }
    }
    mc_free(h, p);
    if (h->gc)
        gc_forget_block(h, p);
    if (ai.large) {
        if (h->gc)
            gc_large_freed(h, ai.large);
        large_remember_freed(p);
        large_free(ai.large);
        purge_poke(h);
        return;
    }
    slab_t *s = ai.slab;
    if (s->waste) {
        heap_note_requested(h, 0, slab_get_requested(s, ai.index));
        slab_set_waste(s, ai.index, s->block_size);
    }
    tcache_t *tc = loam_tls_cache[s->home_slot];
    if (tc->owner != h)
        tc = heap_thread_cache(h, s->tag);
    /* After arena_free_block the slab, and even its segment, may be gone:
     * what is needed afterwards is read now. */
    arena_t *a = s->arena;
    unsigned cls = s->cls;
    if (tc && tcache_flush_requested(tc)) {
        purge_answer(tc);
        tc = NULL;      /* this block too goes straight to its slab */
    }
    if (tc && slab_is_draining(s)) {
        /* The slab is draining: the block goes straight back, and so does
         * the cache's stock of the class, which would otherwise keep other
         * draining slabs from emptying. */
        arena_lock(a);
        arena_free_block(a, s, b);
        arena_unlock(a);
        tcache_flush(tc, cls, 0);
        purge_poke(h);
        return;
    }
    if (tc) {
        if (tcache_push(tc, cls, p))
            return;
        if (tcache_grow(tc, cls) && tcache_push(tc, cls, p)) {
            purge_poke(h);              /* to watch the grown cache (tcache_grow) */
            return;
        }
        uint32_t max = tcache_limit(tc, cls);
        if (max) {
            tcache_flush_overflow(tc, cls, max / 2);
            purge_poke(h);
            if (tcache_push(tc, cls, p))
                return;
        }
    }
    arena_lock(a);
    arena_free_block(a, s, b);
    arena_unlock(a);
    purge_poke(h);
}

/* ---- sizes and realloc ----------------------------------------------------- */

size_t alloc_usable_size(const void *p)
{
    if (!p)
        return 0;
    addr_info_t ai;
    addr_classify(p, &ai);
    if (ai.kind != ADDR_BLOCK) {
        loam_fault(ai.kind == ADDR_FOREIGN ? NULL : ai.kind == ADDR_INTERIOR ? block_heap(&ai) : NULL,
                   ai.kind == ADDR_INTERIOR ? "usable_size of an interior pointer"
                                            : "usable_size of a pointer that is no loam block",
                   p, 0);
        return 0;
    }
    /* A freed block's size is a use after free waiting to happen (the
     * caller is about to write it): named, as a free of it would be. */
    if (!ai.large && has_free_key(ai.block)) {
        loam_fault(block_heap(&ai), "usable_size of a freed block (use after free)", p, ai.size);
        return 0;
    }
    return ai.size;
}

void *alloc_realloc(loam_heap_t *h, void *p, size_t n)
{
    if (p == NULL)
        return alloc_malloc_fast(h, n);
    /* A live large block staying large, the common case of a buffer grown
     * again and again: two loads name it, no full classification. */
    large_t *l = segkind_is_slabs((uintptr_t)p) ? NULL : segmap_lookup((uintptr_t)p);
    if (l && l->kind == SEGMENT_LARGE && (char *)p == l->block && l->size &&
        n > alloc_mmap_threshold() && n <= PTRDIFF_MAX) {
        loam_heap_t *owner = l->arena->owner;      /* l may move */
        void *q = large_realloc(l, n);
        if (q) {
            mc_moved(owner, p, q, alloc_usable_size(q));
            /* Moved: to the collector the old block is gone, as the
             * allocate-copy-free below leaves a small one (its finalizer
             * dropped, weak references to it cleared). Kept, a reference
             * would give the unmapped address, and the next collection
             * would run the finalizer on it. */
            if (q != p && owner->gc)
                gc_forget_block(owner, p);
            return q;
        }
    }
    addr_info_t ai;
    addr_classify(p, &ai);
    if (ai.kind == ADDR_BLOCK && !ai.large && has_free_key(p)) {
        /* Not a double free: the caller goes on to use what it gets back. */
        loam_fault(block_heap(&ai), "realloc of a free block (freed already, or never handed out: use after free)",
                   p, ai.size);
        return NULL;
    }
    if (ai.kind != ADDR_BLOCK) {
        alloc_free_slow(p);              /* names the fault */
        return NULL;
    }
    loam_heap_t *owner = block_heap(&ai);
    if (n == 0) {                        /* as glibc: free, and return NULL */
        alloc_free_fast(p);
        return NULL;
    }
    if (n > PTRDIFF_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    /* A large block staying large was tried above: here it becomes small,
     * or could not grow in place (allocate, copy, free below). */
    if (!ai.large && n <= ai.size && (n > ai.size / 2 || ai.size <= 32)) {
        slab_t *s = ai.slab;
        if (s->waste) {
            heap_note_requested(owner, n, slab_get_requested(s, ai.index));
            slab_set_waste(s, ai.index, n);
        }
        return p;
    }
    /* The new block is of the old one's kind (loam_gc_alloc records it in
     * manual heaps too): a traced block moved into a conservative one lost
     * its trace callback, and what only the callback can find (a pointer
     * kept boxed, say) was freed while still reached; an atomic one moved
     * was scanned, and its bytes kept garbage alive. */
    unsigned kind = ai.large ? ai.large->tag : ai.slab->tag;
    void *q = kind == LOAM_CONSERVATIVE ? alloc_malloc_fast(owner, n) : loam_gc_alloc(owner, n, (loam_kind_t)kind);
    if (!q)
        return NULL;
    memcpy(q, p, n < ai.size ? n : ai.size);
    alloc_free_fast(p);
    return q;
}

/* ---- public entry points ---------------------------------------------------- */

void *loam_malloc(loam_heap_t *h, size_t n)
{
    return alloc_malloc_fast(h, n);
}

void loam_free(void *p)
{
    alloc_free_fast(p);
}

void *loam_calloc(loam_heap_t *h, size_t count, size_t n)
{
    size_t total;
    if (__builtin_mul_overflow(count, n, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = alloc_malloc_fast(h, total);
    if (p && total > alloc_mmap_threshold()) {
        addr_info_t ai;
        addr_classify(p, &ai);
        if (ai.large && !ai.large->reused)
            return p;                    /* a fresh mapping is already zero */
    }
    if (p)
        memset(p, 0, total);
    return p;
}

void *loam_realloc(loam_heap_t *h, void *p, size_t n)
{
    return alloc_realloc(h, p, n);
}

void *loam_aligned_alloc(loam_heap_t *h, size_t align, size_t n)
{
    return alloc_aligned(h, align, n);
}

size_t loam_usable_size(const void *p)
{
    return alloc_usable_size(p);
}
