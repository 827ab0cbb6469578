/* alloc/slab.c — a page run cut into equal blocks.
 *
 * Blocks [0, bumped) have been handed out at least once; the rest are served
 * by bumping, so a fresh slab touches memory only as it is used. The blocks
 * below the bump line that are back in the slab form its free set: a bitmap
 * outside the blocks (in the descriptor for 64 blocks or fewer, else in
 * metadata), and refills take its lowest blocks first.
 *   - Order: a list linked through the blocks handed them out in the order
 *     they came back. A program that freed a big structure in an order of
 *     its own (a hash table, a tree) then had every refill follow links
 *     from one cold block to the next, each load waiting for the one before
 *     (bench's batch-random, 50,000 mixed blocks freed at random: 94 ns per
 *     malloc and free against mimalloc's 22; 51 ns with the bitmap). From
 *     the bitmap, blocks go out in address order: the loads of their keys
 *     are independent, and the program that fills them goes through memory
 *     forwards.
 *   - Safety: no pointer of loam's lives in a free block, so a write through
 *     a dangling pointer cannot aim an allocation; the only word loam reads
 *     there is the free key, checked as each block leaves. */
#include "alloc/alloc.h"
#include "alloc/memcheck.h"
#include "alloc/tcache.h"

#include <string.h>

void (*alloc_fault_hook)(const char *what, void *addr);

static _Noreturn void slab_fault(const char *what, void *addr)
{
    if (alloc_fault_hook)
        alloc_fault_hook(what, addr);
    __builtin_trap();
}

_Noreturn void slab_free_twice(slab_t *s, uint32_t i)
{
    slab_fault("double free (the block is free in its slab already)", s->start + (size_t)i * s->block_size);
}

static size_t free_set_bytes(const slab_t *s)
{
    return (size_t)(s->capacity + 63) / 64 * sizeof(uint64_t);
}

/* false: no metadata for the free set (the run is not a slab yet). */
bool slab_init(slab_t *s, arena_t *a, unsigned cls);
bool slab_init(slab_t *s, arena_t *a, unsigned cls)
{
    uint32_t size = sizeclass_size[cls];
    s->block_size = size;
    s->cls = (uint8_t)cls;
    s->cache_bin = tcache_bin_offset(cls);
    s->capacity = (uint32_t)(((size_t)s->pages * PAGE_SIZE) / size);
    AO_int_store(&s->drain_below, s->capacity / 8);
    slab_set_bumped(s, 0);
    AO_int_store(&s->used, 0);
    s->free_word = 0;
    s->free_bits = &s->free_word;
    if (s->capacity > 64 && !(s->free_bits = meta_alloc(free_set_bytes(s))))
        return false;
    s->free_lo = 0;
    s->div_m = slab_div_m(size);
    /* A tracked slab's frees must see the slow path (to read its waste). */
    s->home_slot = a->track_requested ? TRACKED_SLOT : a->owner_slot;
    s->owner_slot = TRACKED_SLOT;       /* draining while empty */
    s->arena = a;
    s->tag = a->tag;
    s->pending = false;
    s->pending_next = NULL;
    s->handed_out = false;
    s->waste = NULL;
    *slab_bump_holder(s) = NULL;
    mc_fresh(s->start, (size_t)s->pages * PAGE_SIZE);
    if (a->track_requested)
        s->waste = meta_alloc((size_t)s->capacity * slab_waste_width(s));
    return true;
}

void slab_fini(slab_t *s);
void slab_fini(slab_t *s)
{
    if (s->waste)
        meta_free(s->waste, (size_t)s->capacity * slab_waste_width(s));
    s->waste = NULL;
    if (s->free_bits != &s->free_word)
        meta_free(s->free_bits, free_set_bytes(s));
    s->free_bits = NULL;
    slab_set_bumped(s, 0);
    s->block_size = 0;
}

/* Up to n blocks out of the slab, their addresses stored downwards from
 * top (top[-1] first; see arena_alloc_blocks): the free set's lowest first,
 * then bumped ones. Free blocks keep their free key, checked here; bumped
 * ones get it. Returns how many. */
unsigned slab_take_blocks(slab_t *s, unsigned n, void **top);
unsigned slab_take_blocks(slab_t *s, unsigned n, void **top)
{
    /* The slab's fields in locals: the stores into blocks could alias them. */
    const uintptr_t lo = (uintptr_t)s->start, free_key = loam_free_key;
    const size_t size = s->block_size;
    const uint32_t bumped_before = s->bumped;
    unsigned got = 0;
    if (bumped_before > s->used) {              /* the free set is not empty */
        uint64_t *bits = s->free_bits;
        const uint32_t words = (bumped_before + 63) / 64;
        uint32_t w = s->free_lo;
        for (; w < words && got < n; w++) {
            uint64_t x = bits[w];
            if (!x)
                continue;
            do {
                free_block_t *b = (free_block_t *)(lo + ((size_t)w * 64 + (unsigned)__builtin_ctzll(x)) * size);
                x &= x - 1;
                if (LOAM_UNLIKELY(b->freed_key != free_key))
                    slab_fault("a free block was written to (its free key is gone)", b);
                *--top = b;
                got++;
            } while (x && got < n);
            bits[w] = x;
            if (x)
                break;                          /* blocks left in this word */
        }
        s->free_lo = w;
    }
    /* Past the bump line, a count known in advance: a pointer walk with
     * nothing else to count (a collected heap whose slabs die whole takes
     * most of its blocks here, fresh). */
    unsigned bumped = bumped_before, fresh = s->capacity - bumped;
    if (fresh > n - got)
        fresh = n - got;
    if (fresh) {
        char *b = (char *)lo + (size_t)bumped * size, *end = b + (size_t)fresh * size;
        for (; b < end; b += size) {
            ((free_block_t *)b)->freed_key = free_key;
            *--top = b;
        }
        bumped += fresh;
        got += fresh;
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
 * blocks beyond it leave the free set, and the OS pages wholly past it are
 * decommitted (they read as zero, and bumping hands them out as fresh).
 * Returns the bytes decommitted. */
size_t slab_shrink_tail(slab_t *s);
size_t slab_shrink_tail(slab_t *s)
{
    uint32_t bumped = s->bumped;
    if (s->used == bumped)
        return 0;
    uint64_t *bits = s->free_bits;
    uint32_t keep = bumped;
    while (keep > 0 && (bits[(keep - 1) / 64] >> ((keep - 1) % 64) & 1))
        keep--;
    uintptr_t cut = ((uintptr_t)s->start + (uintptr_t)keep * s->block_size + OS_PAGE - 1)
                    & ~(uintptr_t)(OS_PAGE - 1);
    uintptr_t end = (uintptr_t)s->start + (uintptr_t)bumped * s->block_size;
    if (end <= cut)
        return 0;
    /* The free blocks past the new line leave the free set: bumping hands
     * them out again. */
    for (uint32_t i = keep; i < bumped; i++)
        bits[i / 64] &= ~((uint64_t)1 << (i % 64));
    slab_set_bumped(s, keep);
    end = (end + OS_PAGE - 1) & ~(uintptr_t)(OS_PAGE - 1);
    segment_small_pages((segment_t *)((uintptr_t)s->start & ~(uintptr_t)SEGMENT_MASK));
    os_decommit((void *)cut, end - cut);
    mc_fresh((void *)cut, end - cut);
    return end - cut;
}
