/* alloc/slab.c — a page run cut into equal blocks.
 *
 * Blocks [0, bumped) have been handed out at least once; the rest are served
 * by bumping, so a fresh slab touches memory only as it is used. Freed blocks
 * go on an intrusive list whose links are XOR-encoded with the slab's secret:
 * a stray write into a free block cannot aim the next allocation. Every link
 * followed is checked to point at a block of this slab. */
#include "alloc/alloc.h"

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
    s->capacity = (uint32_t)(((size_t)s->pages * PAGE_SIZE) / size);
    AO_int_store(&s->drain_below, s->capacity / 8);
    AO_int_store(&s->bumped, 0);
    AO_int_store(&s->used, 0);
    s->free = NULL;
    s->key = os_random();
    s->div_magic = (((uint64_t)1 << 42) + size - 1) / size;
    s->owner = a->owner;
    /* A tracked slab's frees must see the slow path (to read its waste). */
    s->owner_slot = a->track_requested ? TRACKED_SLOT : a->owner_slot;
    s->arena = a;
    s->tag = a->tag;
    s->pending = false;
    s->pending_next = NULL;
    s->waste = NULL;
    if (a->track_requested)
        s->waste = meta_alloc((size_t)s->capacity * slab_waste_width(s));
}

void slab_fini(slab_t *s);
void slab_fini(slab_t *s)
{
    if (s->waste)
        meta_free(s->waste, (size_t)s->capacity * slab_waste_width(s));
    s->waste = NULL;
    s->block_size = 0;
    AO_int_store(&s->bumped, 0);
}

/* Up to n blocks out of the slab. */
unsigned slab_take(slab_t *s, free_block_t **out, unsigned n);
unsigned slab_take(slab_t *s, free_block_t **out, unsigned n)
{
    unsigned got = 0;
    uintptr_t lo = (uintptr_t)s->start, hi = lo + (uintptr_t)s->bumped * s->block_size;
    while (got < n && s->free) {
        free_block_t *b = s->free;
        uintptr_t nx = (uintptr_t)freelist_decode(b->next_enc, s->key);
        if (nx && (nx < lo || nx >= hi || slab_block_index(s, nx) * s->block_size != nx - lo))
            slab_fault("free list corrupted (a freed block was written to)", b);
        s->free = (free_block_t *)nx;
        out[got++] = b;
    }
    unsigned bumped = s->bumped;
    while (got < n && bumped < s->capacity)
        out[got++] = (free_block_t *)(s->start + (size_t)bumped++ * s->block_size);
    AO_int_store(&s->bumped, bumped);
    AO_int_store(&s->used, s->used + got);
    return got;
}

void slab_put(slab_t *s, free_block_t *b);
void slab_put(slab_t *s, free_block_t *b)
{
    b->next_enc = freelist_encode(s->free, s->key);
    b->freed_key = loam_free_key;
    s->free = b;
    AO_int_store(&s->used, s->used - 1);
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
    for (free_block_t *b = s->free; b; b = freelist_decode(b->next_enc, s->key)) {
        size_t i = slab_block_index(s, (uintptr_t)b);
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
    AO_int_store(&s->bumped, keep);
    end = (end + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1);
    os_decommit((void *)cut, end - cut);
    return end - cut;
}
