/* alloc/tcache.c — refilling and flushing thread caches (see tcache.h). */
#include "alloc/tcache.h"

#include <string.h>

#define TCACHE_BATCH_MAX 64
#define TCACHE_BATCH_MAX_ALLOCATING 256      /* for caches that only allocate */
#define TCACHE_BIN_BYTES ((size_t)64 * 1024)
#define TCACHE_BASE_MAX 128
#define TCACHE_GROWN_BIN_BYTES ((size_t)128 * 1024)
#define TCACHE_GROWN_BYTES_MAX ((size_t)1024 * 1024)

_Static_assert(TCACHE_GROWN_BIN_BYTES / 16 <= UINT16_MAX, "a bin's capacity fits tcache_t.cap");
_Static_assert(sizeof(tcache_t) <= 2048, "a cache fits the metadata bins (alloc/meta.c)");

uint16_t tcache_small_bin[SMALL_MAX / 16 + 1];

void tcache_tables_init(void)
{
    for (size_t i = 0; i <= SMALL_MAX / 16; i++)
        tcache_small_bin[i] = tcache_bin_offset(sizeclass_small[i]);
}

/* A bin's base limit, and the slots every bin starts with: at most 128
 * blocks and 64 KiB of them, at least 1. */
static uint32_t tcache_base_cap(unsigned cls)
{
    size_t by_bytes = TCACHE_BIN_BYTES / sizeclass_size[cls];
    uint32_t cap = by_bytes < TCACHE_BASE_MAX ? (uint32_t)by_bytes : TCACHE_BASE_MAX;
    return cap ? cap : 1;
}

static void tcache_set_limits(tcache_t *tc)
{
    tc->grown_bytes = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        uint32_t base = tcache_base_cap(c);
        AO_int_store(&tc->bins[c].max, tc->limit < base ? tc->limit : base);
    }
}

/* The bin of cls ran empty since its last flush (refilled bits). */
static void refilled_set(tcache_t *tc, unsigned cls)
{
    tc->refilled[cls / 64] |= (uint64_t)1 << (cls % 64);
}

static bool refilled_take(tcache_t *tc, unsigned cls)
{
    uint64_t bit = (uint64_t)1 << (cls % 64);
    bool was = (tc->refilled[cls / 64] & bit) != 0;
    tc->refilled[cls / 64] &= ~bit;
    return was;
}

static bool tcache_slots_init(tcache_t *tc)
{
    if (tc->base_slots)
        return true;                    /* a cache made again keeps its slots */
    size_t total = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        total += tcache_base_cap(c);
    void **slots = meta_alloc(total * sizeof(void *));
    if (!slots)
        return false;
    tc->base_slots = slots;
    tc->base_slots_count = total;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        tc->bins[c].slots = slots;
        tc->cap[c] = (uint16_t)tcache_base_cap(c);
        slots += tc->cap[c];
    }
    return true;
}

static bool slots_are_base(const tcache_t *tc, void **slots)
{
    return slots >= tc->base_slots && slots < tc->base_slots + tc->base_slots_count;
}

void tcache_free_slots(tcache_t *tc)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        if (tc->bins[c].slots && !slots_are_base(tc, tc->bins[c].slots))
            meta_free(tc->bins[c].slots, (size_t)tc->cap[c] * sizeof(void *));
        tc->bins[c].slots = NULL;
        tc->cap[c] = 0;
    }
    meta_free(tc->base_slots, tc->base_slots_count * sizeof(void *));
    tc->base_slots = NULL;
    tc->base_slots_count = 0;
}

bool tcache_init(tcache_t *tc, void *owner, arena_set_t *arenas, unsigned tcache_max)
{
    if (!tcache_slots_init(tc))
        return false;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        AO_int_store(&tc->bins[c].count, 0);
    memset(tc->refilled, 0, sizeof tc->refilled);
    tc->allocates_only = false;
    tc->limit = tcache_max;
    tcache_set_limits(tc);
    AO_store(&tc->flush_req, 0);
    AO_int_store(&tc->slow_events, 0);
    tc->purge_seen = 0;
    tc->purge_seen_ms = 0;
    tc->owner = owner;
    tc->arenas = arenas;
    tc->allocates = false;
    tc->arena = NULL;
    return true;
}

void *tcache_refill_pop(tcache_t *tc, unsigned cls)
{
    tcache_bin_t *bin = &tc->bins[cls];
    /* A cache that only allocates gets bigger refills: each one is a slow
     * path with an arena lock (binary-trees on a collected heap: 10-20 %
     * faster with refills of 256 blocks than of 64). Not for a cache that
     * frees too, which would only hold more (producer/consumer peak RSS:
     * 4.3 -> 5.3 MiB). */
    if (tc->allocates_only)
        tcache_grow(tc, cls);           /* grows only if it ran empty before */
    unsigned want = AO_int_load(&bin->max) / 2;
    if (want < 1)
        want = 1;
    unsigned batch_max = tc->allocates_only ? TCACHE_BATCH_MAX_ALLOCATING : TCACHE_BATCH_MAX;
    if (want > batch_max)
        want = batch_max;
    if (want > tc->cap[cls] - bin->count)
        want = tc->cap[cls] - bin->count;
    AO_int_store(&tc->slow_events, tc->slow_events + 1);
    refilled_set(tc, cls);
    if (!tc->allocates) {
        /* An allocating thread: one more that may have an arena of its own
         * (a thread that only frees does not need one). */
        tc->allocates = true;
        AO_fetch_and_add1(&tc->arenas->users);
    }
    arena_t *a = arena_set_lock_some(tc->arenas, tc->arena);
    if (!a)
        return NULL;
    tc->arena = a;
    unsigned count = bin->count;
    void **top = bin->slots + count + want;
    unsigned n = arena_alloc_blocks(a, cls, want, top);
    arena_unlock(a);
    if (n == 0)
        return NULL;
    if (n < want)                       /* short: close the gap below them */
        memmove(bin->slots + count, top - n, (size_t)n * sizeof(void *));
    AO_int_store(&bin->count, count + n);
    return tcache_pop(tc, cls);
}

/* Room for `slots` blocks in the bin of cls (the owner's, on a slow path:
 * only the owner and a thread that has stopped it read the slots). */
static bool tcache_widen(tcache_t *tc, unsigned cls, uint32_t slots)
{
    tcache_bin_t *bin = &tc->bins[cls];
    void **wide = meta_alloc((size_t)slots * sizeof(void *));
    if (!wide)
        return false;
    memcpy(wide, bin->slots, (size_t)bin->count * sizeof(void *));
    if (!slots_are_base(tc, bin->slots))
        meta_free(bin->slots, (size_t)tc->cap[cls] * sizeof(void *));
    bin->slots = wide;
    tc->cap[cls] = (uint16_t)slots;
    return true;
}

/* A bin that overflows after it ran empty since its last flush serves a
 * thread that allocates and frees in batches bigger than the bin: each
 * batch would go through an arena lock twice, blocks relinked one by one
 * (cg-batch, 1000 at a time: 140 instructions per malloc+free pair, 85 once
 * the batch fits). It doubles, up to tcache_max blocks and 128 KiB of them
 * (a flush keeps half, so a batch of 64 KiB needs that), while the cache's
 * growth in all stays under 1 MiB. A cache flushed because it is idle
 * (runtime/purge.c) comes back at the base limits. The compare-and-swap
 * loses to a flush request, which sets the limit to 0 from another thread. */
bool tcache_grow(tcache_t *tc, unsigned cls)
{
    if (!refilled_take(tc, cls))
        return false;
    size_t size = sizeclass_size[cls];
    size_t cap = tc->limit;
    if (cap > TCACHE_GROWN_BIN_BYTES / size)
        cap = TCACHE_GROWN_BIN_BYTES / size;
    uint32_t max = AO_int_load(&tc->bins[cls].max);
    if (max == 0 || max >= cap)
        return false;
    uint32_t grown = (size_t)max * 2 < cap ? max * 2 : (uint32_t)cap;
    size_t bytes = (size_t)(grown - max) * size;
    if (tc->grown_bytes + bytes > TCACHE_GROWN_BYTES_MAX)
        return false;
    if (grown > tc->cap[cls] && !tcache_widen(tc, cls, grown))
        return false;
    if (!AO_int_compare_and_swap(&tc->bins[cls].max, max, grown))
        return false;
    tc->grown_bytes += bytes;
    return true;
}

/* The oldest blocks go back, the newest (likeliest still in the CPU's
 * cache) stay. They go in runs that share a slab (a cache mostly holds runs
 * of blocks freed together): each run is linked with its slab's key,
 * newest first, then spliced onto the slab's list with one update of its
 * counts. Only the links are written into the blocks, so their cache misses
 * overlap. */
void tcache_flush(tcache_t *tc, unsigned cls, uint32_t keep)
{
    tcache_bin_t *bin = &tc->bins[cls];
    arena_t *held = NULL;
    AO_int_store(&tc->slow_events, tc->slow_events + 1);
    (void)refilled_take(tc, cls);
    uint32_t count = bin->count;
    if (count <= keep)
        return;
    uint32_t out = count - keep;
    void **slots = bin->slots;
    for (uint32_t i = 0; i < out;) {
        free_block_t *last = slots[i], *first = last;
        segment_t *seg = (segment_t *)((uintptr_t)last & ~SEGMENT_MASK);
        slab_t *s = segment_slab_at(seg, (uintptr_t)last);
        uintptr_t lo = (uintptr_t)s->start, span = (uintptr_t)s->pages << PAGE_SHIFT;
        uint32_t n = 1;
        for (i++; i < out && (uintptr_t)slots[i] - lo < span; i++, n++) {
            free_block_t *b = slots[i];         /* newer: it goes ahead (LIFO reuse) */
            b->next_enc = freelist_encode(first, s->key);
            first = b;
        }
        if (s->arena != held) {
            if (held)
                arena_unlock(held);
            held = s->arena;
            arena_lock(held);
        }
        arena_free_run(held, s, first, last, n);
    }
    if (held)
        arena_unlock(held);
    memmove(slots, slots + out, (size_t)keep * sizeof(void *));
    AO_int_store(&bin->count, keep);
}

void tcache_flush_all(tcache_t *tc)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (tc->bins[c].count)
            tcache_flush(tc, c, 0);
}

void tcache_abandon(tcache_t *tc)
{
    /* max = 0: pushes fail too, so a disowned cache can never take a block
     * (the free fast path relies on this instead of comparing owners). */
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        AO_int_store(&tc->bins[c].count, 0);
        AO_int_store(&tc->bins[c].max, 0);
    }
    AO_store(&tc->flush_req, 0);
    if (tc->arenas && tc->allocates)
        AO_fetch_and_sub1(&tc->arenas->users);
    tc->allocates = false;
    tc->arenas = NULL;
    tc->owner = NULL;
    tc->arena = NULL;
}

void tcache_request_flush(tcache_t *tc)
{
    AO_store(&tc->flush_req, 1);
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        AO_int_store(&tc->bins[c].max, 0);
}

void tcache_answer_flush(tcache_t *tc)
{
    AO_store(&tc->flush_req, 0);
    tcache_flush_all(tc);
    if (tc->owner)              /* a disowned cache keeps refusing every push */
        tcache_set_limits(tc);
}
