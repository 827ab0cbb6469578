/* alloc/slab.c — a page run cut into equal blocks.
 *
 * Blocks [0, bumped) have been handed out at least once; the rest are served
 * by bumping, so a fresh slab touches memory only as it is used. Freed blocks
 * go on an intrusive list whose links are XOR-encoded with the slab's secret:
 * a stray write into a free block cannot aim the next allocation. Every link
 * followed is checked to point at a block of this slab. */
#include "alloc/alloc.h"
#include "alloc/memcheck.h"
#include "alloc/tcache.h"

#include <string.h>

void (*alloc_fault_hook)(const char *what, void *addr);

static void slab_fault(const char *what, void *addr)
{
    if (alloc_fault_hook)
        alloc_fault_hook(what, addr);
    __builtin_trap();
}

void slab_init(slab_t *s, arena_t *a, unsigned cls);
void slab_init(slab_t *s, arena_t *a, unsigned cls)
{
    uint32_t size = sizeclass_size[cls];
    s->block_size = size;
    s->cls = (uint8_t)cls;
    s->cache_bin = tcache_bin_offset(cls);
    s->capacity = (uint32_t)(((size_t)s->pages * PAGE_SIZE) / size);
    AO_int_store(&s->drain_below, s->capacity / 8);
    slab_set_bumped(s, 0);
    AO_int_store(&s->used, 0);
    s->free = NULL;
    s->key = os_random();
    s->div_m = slab_div_m(size);
    /* A tracked slab's frees must see the slow path (to read its waste). */
    s->home_slot = a->track_requested ? TRACKED_SLOT : a->owner_slot;
    s->owner_slot = TRACKED_SLOT;       /* draining while empty */
    s->arena = a;
    s->tag = a->tag;
    s->pending = false;
    s->pending_next = NULL;
    s->waste = NULL;
    mc_fresh(s->start, (size_t)s->pages * PAGE_SIZE);
    if (a->track_requested)
        s->waste = meta_alloc((size_t)s->capacity * slab_waste_width(s));
}

void slab_fini(slab_t *s);
void slab_fini(slab_t *s)
{
    if (s->waste)
        meta_free(s->waste, (size_t)s->capacity * slab_waste_width(s));
    s->waste = NULL;
    slab_set_bumped(s, 0);
    s->block_size = 0;
}

/* Up to n blocks out of the slab, their addresses stored downwards from
 * top (top[-1] first; see arena_alloc_blocks). Free-list blocks keep their
 * free key; bumped ones get it. Each free-list link followed is checked to
 * point at a block of this slab. Returns how many. */
unsigned slab_take_blocks(slab_t *s, unsigned n, void **top);
unsigned slab_take_blocks(slab_t *s, unsigned n, void **top)
{
    /* The slab's fields in locals: the stores into blocks could alias them. */
    const uintptr_t lo = (uintptr_t)s->start, skey = s->key;
    const uint64_t m = s->div_m;
    const size_t size = s->block_size;
    const uintptr_t hi = lo + (uintptr_t)s->bumped * size;
    unsigned got = 0;
    free_block_t *f = s->free;
    while (got < n && f) {
        uintptr_t nx = (uintptr_t)freelist_decode(f->next_enc, skey);
        if (nx && (nx < lo || nx >= hi || !slab_offset_is_block_start(nx - lo, m)))
            slab_fault("free list corrupted (a freed block was written to)", f);
        *--top = f;
        got++;
        f = (free_block_t *)nx;
    }
    s->free = f;
    unsigned bumped = s->bumped;
    while (got < n && bumped < s->capacity) {
        free_block_t *b = (free_block_t *)(lo + (size_t)bumped++ * size);
        b->freed_key = loam_free_key;
        *--top = b;
        got++;
    }
    slab_set_bumped(s, bumped);
    AO_int_store(&s->used, s->used + got);
    slab_note_draining(s);
    return got;
}

/* Give back the pages past the slab's last allocated block (lock held, the
 * slab not pending). A slab that keeps a few long-lived blocks stays resident
 * in full after a peak filled it; here its free tail becomes untouched again:
 * the bump line moves down to just past the last allocated block, the free
 * blocks beyond it leave the list, and the OS pages wholly past it are
 * decommitted (they read as zero, and bumping hands them out as fresh).
 * Returns the bytes decommitted. */
size_t slab_shrink_tail(slab_t *s);
size_t slab_shrink_tail(slab_t *s)
{
    enum { MAX_BLOCKS = (int)(PAGE_SIZE / BLOCK_ALIGN) };
    uint32_t bumped = s->bumped;
    if (s->capacity > MAX_BLOCKS || s->used == bumped)
        return 0;
    uint64_t freed[MAX_BLOCKS / 64] = { 0 };
    const uintptr_t lo = (uintptr_t)s->start, span = (uintptr_t)bumped * s->block_size;
    uint32_t walked = 0;
    for (free_block_t *b = s->free; b; b = freelist_decode(b->next_enc, s->key)) {
        uintptr_t off = (uintptr_t)b - lo;
        size_t i = slab_block_index(s, (uintptr_t)b);
        if (off >= span || !slab_offset_is_block_start(off, s->div_m) || ++walked > bumped)   /* out, or a cycle */
            slab_fault("free list corrupted (a freed block was written to)", b);
        freed[i / 64] |= (uint64_t)1 << (i % 64);
    }
    uint32_t keep = bumped;
    while (keep > 0 && (freed[(keep - 1) / 64] >> ((keep - 1) % 64) & 1))
        keep--;
    uintptr_t cut = ((uintptr_t)s->start + (uintptr_t)keep * s->block_size + OS_PAGE - 1)
                    & ~(uintptr_t)(OS_PAGE - 1);
    uintptr_t end = (uintptr_t)s->start + (uintptr_t)bumped * s->block_size;
    if (end <= cut)
        return 0;
    /* Rebuild the list in address order from the blocks below the line. */
    free_block_t *head = NULL;
    for (uint32_t i = keep; i-- > 0;)
        if (freed[i / 64] >> (i % 64) & 1) {
            free_block_t *b = (free_block_t *)(s->start + (size_t)i * s->block_size);
            b->next_enc = freelist_encode(head, s->key);
            head = b;
        }
    s->free = head;
    slab_set_bumped(s, keep);
    end = (end + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1);
    segment_small_pages((segment_t *)((uintptr_t)s->start & ~(uintptr_t)SEGMENT_MASK));
    os_decommit((void *)cut, end - cut);
    mc_fresh((void *)cut, end - cut);
    return end - cut;
}
