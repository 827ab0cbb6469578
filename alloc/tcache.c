/* alloc/tcache.c — refilling and flushing thread caches (see tcache.h). */
#include "alloc/tcache.h"

#include <string.h>

#define TCACHE_BATCH_MAX 64
#define TCACHE_BIN_BYTES ((size_t)64 * 1024)

static void tcache_set_limits(tcache_t *tc)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        size_t by_bytes = TCACHE_BIN_BYTES / sizeclass_size[c];
        uint32_t max = tc->limit < by_bytes ? tc->limit : (uint32_t)by_bytes;
        AO_int_store(&tc->bins[c].max, tc->limit && max == 0 ? 1 : max);
    }
}

void tcache_init(tcache_t *tc, void *owner, arena_set_t *arenas, unsigned tcache_max)
{
    memset(tc->bins, 0, sizeof tc->bins);
    tc->limit = tcache_max;
    tcache_set_limits(tc);
    AO_store(&tc->flush_req, 0);
    AO_int_store(&tc->slow_events, 0);
    tc->purge_seen = 0;
    tc->purge_seen_ms = 0;
    tc->owner = owner;
    tc->key = os_random();
    tc->arenas = arenas;
    tc->arena = NULL;
}

void *tcache_refill_pop(tcache_t *tc, unsigned cls)
{
    tcache_bin_t *bin = &tc->bins[cls];
    unsigned want = AO_int_load(&bin->max) / 2;
    if (want < 1)
        want = 1;
    if (want > TCACHE_BATCH_MAX)
        want = TCACHE_BATCH_MAX;
    free_block_t *got[TCACHE_BATCH_MAX];
    AO_int_store(&tc->slow_events, tc->slow_events + 1);
    arena_t *a = arena_set_lock_some(tc->arenas, tc->arena);
    if (!a)
        return NULL;
    tc->arena = a;
    unsigned n = arena_alloc_blocks(a, cls, got, want);
    arena_unlock(a);
    if (n == 0)
        return NULL;
    /* Push in reverse so the lowest addresses come out first. */
    for (unsigned i = n; i-- > 1;) {
        got[i]->next_enc = freelist_encode(bin->head, tc->key);
        got[i]->freed_key = loam_free_key;
        bin->head = got[i];
    }
    AO_int_store(&bin->count, bin->count + n - 1);
    got[0]->freed_key = 0;
    return got[0];
}

void tcache_flush(tcache_t *tc, unsigned cls, uint32_t keep)
{
    tcache_bin_t *bin = &tc->bins[cls];
    arena_t *held = NULL;
    AO_int_store(&tc->slow_events, tc->slow_events + 1);
    while (bin->count > keep) {
        free_block_t *b = bin->head;
        bin->head = freelist_decode(b->next_enc, tc->key);
        AO_int_store(&bin->count, bin->count - 1);
        segment_t *seg = (segment_t *)((uintptr_t)b & ~SEGMENT_MASK);
        slab_t *s = segment_slab_at(seg, (uintptr_t)b);
        if (s->arena != held) {
            if (held)
                arena_unlock(held);
            held = s->arena;
            arena_lock(held);
        }
        arena_free_block(held, s, b);
    }
    if (held)
        arena_unlock(held);
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
        tc->bins[c].head = NULL;
        AO_int_store(&tc->bins[c].count, 0);
        AO_int_store(&tc->bins[c].max, 0);
    }
    AO_store(&tc->flush_req, 0);
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
