/* alloc/tcache.h — per-thread, per-heap caches of free blocks.
 *
 * A cache is a stack of free blocks per size class, owned by one thread and
 * touched by no other, so the common malloc and free are a pop and a push
 * with no lock and no atomic read-modify-write. Refills take a batch from an
 * arena, flushes give a batch back to the blocks' own slabs (whatever arena
 * or thread they came from: this is how a cross-thread free reaches its
 * owner).
 *
 * Each stack is an array of block addresses in the cache, not a list linked
 * through the blocks:
 *   - a flush knows every block's address without reading the block. Walking
 *     a list was a chain of dependent cache misses: freeing 250,000 blocks in
 *     random order spent 9 ms on the list walk alone (mimalloc's whole free
 *     phase took 6 ms);
 *   - no allocator pointer lives in a block while it is cached, so a write
 *     through a dangling pointer cannot steer the next malloc;
 *   - push and pop are a few instructions fewer (no link to encode).
 * A cached block still carries the free key (double-free detection, and the
 * collector's test for a free block).
 *
 * A cache that only allocates (a collected heap's) also holds, per class, a
 * bump range: a run of free blocks next to each other in one slab, taken
 * whole by a refill and handed out by moving a pointer (tcache_bin_t.bump,
 * tcache_refill_bump; arena_take_bump says how a slab keeps it safe). */
#ifndef LOAM_TCACHE_H
#define LOAM_TCACHE_H

#include "alloc/alloc.h"

/* A bin is two pointers into its slots, the array of its cached blocks'
 * addresses (oldest first). Below the first slot sits a NULL sentinel, so
 * a pop needs no separate emptiness test, and a push compares top with end:
 * no count, no base, no index scaling on the fast paths. */
typedef struct tcache_bin {
    AO_t          top;         /* void **: one past the newest block; top[-1] is NULL
                                  when the bin is empty (the sentinel). Written by the
                                  owner; AO_load from other threads (tcache_count_racy) */
    AO_t          end;         /* void **: pushes fail once top reaches it: base + max, or
                                  0 (every push fails) while a flush is requested or the
                                  cache is disowned. Set from other threads (AO) */
    /* The bump range: free blocks [bump, bump_end) next to each other in one
     * slab, handed out by moving bump up one block (tcache_bin_bump). Only a
     * cache that only allocates takes one (tcache_refill_bump: the
     * collector's allocation); bump == bump_end when it holds none. Its
     * blocks are out of their slab, as the bin's are, but carry no free key
     * and were never listed: a refill costs nothing per block, and a block
     * is first touched when it is handed out. Written by the owner (AO:
     * frees and statistics read it from other threads). */
    AO_t          bump;        /* char * */
    AO_t          bump_end;    /* char * */
} tcache_bin_t;

/* The rest of a bin, read on slow paths only, kept with the slots. */
typedef struct tcache_bin_info {
    void        **base;        /* the first slot; base[-1] is the NULL sentinel */
    uint32_t      cap;         /* slots in the array (at most 128 KiB / 16 B = 8192) */
    uint32_t      max;         /* the bin's limit when it takes pushes (end = base + max) */
} tcache_bin_info_t;

/* The bin every cache that takes no blocks shows (loam's empty cache): its
 * top sits on a sentinel and its end is 0. */
extern LOAM_INTERNAL void *tcache_no_blocks[1];
#define TCACHE_REFUSING_BIN { .top = (AO_t)&tcache_no_blocks[1], .end = 0 }

/* Under 4 KiB (asserted in tcache.c), so a cache comes from the metadata
 * bins (meta.c), not a mapping of its own. */
typedef struct loam_tcache {
    tcache_bin_t  bins[NUM_CLASSES];
    void         *owner;       /* the heap; NULL: not (or no longer) in use */
    arena_set_t  *arenas;
    arena_t      *arena;       /* where refills come from: sticky */
    struct loam_tcache *owner_next, *owner_prev;   /* the owner's list of caches (its list lock:
                                                  the runtime's heaps_lock) */
    struct loam_tcache *thread_next;              /* this thread's caches */
    uint8_t       slot;                        /* the thread-cache slot it sits in */
    unsigned      limit;                       /* tcache_max it was made with */
    bool          allocates;                   /* has refilled TCACHE_USER_REFILLS times:
                                                  counted in its set's users */
    unsigned      refills;                     /* until then */
    uint64_t      refilled[(NUM_CLASSES + 63) / 64];   /* bit per class: the bin ran empty
                                                          since its last flush */
    size_t        grown_bytes;                 /* bins' growth past their base limits, in bytes */
    AO_t          shared_bytes;                /* of it, drawn from the budget all caches share
                                                  (tcache_grow); AO: a heap's destroy releases it
                                                  from another thread */
    bool          allocates_only;              /* its owner never frees through it (set by the
                                                  runtime for collected heaps): refills grow */
    tcache_bin_info_t *info;                   /* [NUM_CLASSES], at the start of the
                                                  store: one allocation for the info and
                                                  every bin's base slots; a bin that grew
                                                  past them has its own */
    size_t        store_bytes;
    AO_t          resize_seq;                  /* odd while the owner moves a bin to wider
                                                  slots (tcache_count_racy retries) */
    /* Idle caches are asked to flush (runtime/purge.c): a cache whose owner
     * has not taken a slow path for decay_ms gets every bin's end set to 0
     * and flush_req set, so the owner's next free misses the cache and the
     * slow path empties it. Both are changed under the list lock of the
     * cache's owner; slow_events is the owner's count of refills and
     * flushes, read by the purger to tell an idle cache. */
    AO_t          flush_req;
    unsigned      slow_events;
    unsigned      purge_seen;                  /* the purger's own: slow_events last seen, */
    uint64_t      purge_seen_ms;               /* and when */
} tcache_t;

/* Blocks kept per class: at first 128 at most, and 64 KiB worth, at least
 * 1; a bin that batches overflow grows up to tcache_max (tcache_grow).
 * false: no memory for the slots (the cache must not be used). A cache
 * made again for another heap keeps its slots. */
LOAM_INTERNAL bool  tcache_init(tcache_t *tc, void *owner, arena_set_t *arenas, unsigned tcache_max);
/* Free the slots (the cache is abandoned or empty, and goes away). */
LOAM_INTERNAL void  tcache_free_slots(tcache_t *tc);
/* Refill the bin of cls and pop one block (NULL: out of memory). */
LOAM_INTERNAL void *tcache_refill_pop(tcache_t *tc, unsigned cls);
/* A cache that only allocates (the collector's): give the bin of cls a new
 * bump range, and a batch in the bin too when the range is short (a slab
 * whose free blocks are scattered), then hand out one block. *bytes: what
 * the refill put into the cache, the block included (the collector's
 * pacing counts it as allocated). NULL: out of memory. */
LOAM_INTERNAL void *tcache_refill_bump(tcache_t *tc, unsigned cls, size_t *bytes);
/* Every bump range of the cache goes back to its slab (the owner's, or with
 * the owner stopped). */
LOAM_INTERNAL void  tcache_return_bumps(tcache_t *tc);
/* Blocks left in the bin's bump range (the owner's view). */
static inline uint32_t tcache_bump_count(const tcache_t *tc, unsigned cls);
/* The bin of cls is full, or empty again with no flush since its last
 * refill: true if it grew (tcache.c says when). */
LOAM_INTERNAL bool  tcache_grow(tcache_t *tc, unsigned cls);
/* Of the growth past a cache's own 1 MiB that all caches share
 * (alloc_tuning.tcache_budget, tcache_grow), how much they have drawn. */
LOAM_INTERNAL size_t tcache_shared_bytes(void);
/* All of tc's draw on it goes back (idempotent): its bins are back at their
 * base limits, it refuses pushes, or nobody will use it again. */
LOAM_INTERNAL void  tcache_shared_release(tcache_t *tc);
/* Flush the bin of cls down to `keep` blocks, into their slabs. */
LOAM_INTERNAL void  tcache_flush(tcache_t *tc, unsigned cls, uint32_t keep);
/* The same for a bin that overflowed on a free: the blocks may go to their
 * arena's transfer cache instead, for its next refill (arena.c). Flushes
 * that give memory back (thread exit, trim, a purge request, a draining
 * slab) go to the slabs. */
LOAM_INTERNAL void  tcache_flush_overflow(tcache_t *tc, unsigned cls, uint32_t keep);
LOAM_INTERNAL void  tcache_flush_all(tcache_t *tc);
/* Forget every block without touching it (its heap is gone). */
LOAM_INTERNAL void  tcache_abandon(tcache_t *tc);
/* Another thread asks the owner to give its blocks back (caller holds the
 * lock of the cache's owner list): the owner's next free misses the cache. */
LOAM_INTERNAL void  tcache_request_flush(tcache_t *tc);
/* The owner's answer (same lock held): every block goes back, limits return. */
LOAM_INTERNAL void  tcache_answer_flush(tcache_t *tc);
static inline bool tcache_flush_requested(tcache_t *tc)
{
    return LOAM_UNLIKELY(AO_load(&tc->flush_req) != 0);
}

/* The byte offset of the bin of cls in a cache: the fast paths keep it
 * instead of the class (slab_t.cache_bin, tcache_small_bin), which
 * saves scaling the class on every malloc and free. */
static inline uint16_t tcache_bin_offset(unsigned cls)
{
    return (uint16_t)(offsetof(tcache_t, bins) + cls * sizeof(tcache_bin_t));
}

static inline tcache_bin_t *tcache_bin_at(tcache_t *tc, unsigned offset)
{
    return (tcache_bin_t *)((char *)tc + offset);
}

static inline unsigned tcache_bin_class(unsigned offset)
{
    return (unsigned)((offset - offsetof(tcache_t, bins)) / sizeof(tcache_bin_t));
}

/* malloc's lookup: the bin offset of size n (0..SMALL_MAX) is
 * tcache_small_bin[n]. Indexed by the size itself, not (n + 15) >> 4: two
 * instructions fewer on every malloc, for a 2 KiB table (a program's usual
 * sizes touch a few of its lines). Filled by tcache_tables_init, after
 * sizeclass_init. */
extern LOAM_INTERNAL uint16_t tcache_small_bin[SMALL_MAX + 1];
LOAM_INTERNAL void tcache_tables_init(void);

/* The owner moves its bin's top by one slot (+1 push, -1 pop). Other
 * threads read top whole (tcache_count_racy): it is one aligned 8-byte
 * store either way. On x86-64 it is one read-modify-write instruction where
 * the compiler, which must treat the field as volatile, would load, add and
 * store: malloc and free are counted in instructions (docs/benchmarks.md),
 * and this pays for malloc's prefetch (tcache_bin_pop). */
static inline void tcache_top_step(tcache_bin_t *bin, long slots)
{
#if defined(__x86_64__)
    __asm__ volatile("addq %1, %0" : "+m"(bin->top) : "er"(slots * (long)sizeof(void *)));
#else
    AO_store(&bin->top, AO_load(&bin->top) + (AO_t)(slots * (long)sizeof(void *)));
#endif
}

/* top >= bin->end, end read afresh (other threads set it to refuse
 * pushes). On x86-64 one compare with end in memory, where the compiler
 * would load it into a register first (a volatile read): one instruction
 * less on every free, as tcache_top_step. */
static inline bool tcache_top_at_end(tcache_bin_t *bin, void **top)
{
#if defined(__x86_64__)
    bool at_end;
    __asm__ volatile("cmpq %2, %1" : "=@ccae"(at_end) : "r"(top), "m"(bin->end));
    return at_end;
#else
    return (AO_t)top >= AO_load(&bin->end);
#endif
}

/* The next block of the bin's bump range (size: the class's), or NULL when
 * the range is used up. One load the block's address depends on, where a
 * pop has two (top, then the slot). */
static inline void *tcache_bin_bump(tcache_bin_t *bin, size_t size)
{
    char *p = (char *)bin->bump;
    if (LOAM_UNLIKELY(p >= (char *)bin->bump_end))
        return NULL;
    if (p == NULL)
        __builtin_unreachable();        /* (bump_end is 0 when there is no range) */
    AO_store(&bin->bump, (AO_t)(p + size));
    return p;
}

/* Leaves the free key for the caller to overwrite (the collector's
 * allocation zeroes the block's first 16 bytes at once). */
static inline void *tcache_bin_take(tcache_bin_t *bin)
{
    void **top = (void **)bin->top;
    void *b = top[-1];
    if (LOAM_UNLIKELY(b == NULL))       /* the sentinel: empty */
        return NULL;
    tcache_top_step(bin, -1);
    return b;
}

/* malloc's pop. It also starts loading the block the bin hands out next:
 * after frees in an order of the program's own (a big structure freed at
 * random), consecutive blocks of a bin lie anywhere in the class's slabs,
 * and the program's first write into each would wait for memory. Fetched
 * one malloc ahead, the wait overlaps the program's work on this block:
 * batch-random's malloc phase 15.4 -> 11.5 ns, mimalloc's 11.0 (its blocks
 * come page by page; docs/internals.md). Two instructions; an empty bin's
 * next is the NULL sentinel, and a prefetch never faults. The collector's
 * allocation (tcache_bin_take) gets its blocks in address order from
 * sweeps and refills, where this gained nothing (GCBench, binary-trees,
 * the Lisp). */
static inline void *tcache_bin_pop(tcache_bin_t *bin)
{
    void **top = (void **)bin->top;
    free_block_t *b = top[-1];
    if (LOAM_UNLIKELY(b == NULL))       /* the sentinel: empty */
        return NULL;
    tcache_top_step(bin, -1);
    __builtin_prefetch(top[-2], 1);
    b->freed_key = 0;
    return b;
}

static inline void *tcache_pop(tcache_t *tc, unsigned cls)
{
    return tcache_bin_pop(&tc->bins[cls]);
}

/* false: the bin is full, or refuses pushes (the caller's slow path tells
 * which). free_key is loam_free_key, which the free fast path has loaded
 * already. */
static inline bool tcache_bin_push(tcache_bin_t *bin, void *p, uintptr_t free_key)
{
    void **top = (void **)bin->top;
    if (LOAM_UNLIKELY(tcache_top_at_end(bin, top)))
        return false;
    *top = p;
    ((free_block_t *)p)->freed_key = free_key;
    tcache_top_step(bin, 1);
    return true;
}

static inline bool tcache_push(tcache_t *tc, unsigned cls, void *p)
{
    return tcache_bin_push(&tc->bins[cls], p, loam_free_key);
}

/* Blocks in the bin of cls: the owner's view (or with the owner stopped). */
static inline uint32_t tcache_count(const tcache_t *tc, unsigned cls)
{
    return (uint32_t)((void **)tc->bins[cls].top - tc->info[cls].base);
}
static inline uint32_t tcache_bump_count(const tcache_t *tc, unsigned cls)
{
    const tcache_bin_t *bin = &tc->bins[cls];
    return (uint32_t)((bin->bump_end - bin->bump) / sizeclass_size[cls]);
}
/* Bytes of the cache's bump ranges not handed out yet, anchors included
 * (the owner's view). */
static inline size_t tcache_bump_bytes_left(const tcache_t *tc)
{
    size_t bytes = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (tc->bins[c].bump_end)
            bytes += tc->bins[c].bump_end - tc->bins[c].bump + sizeclass_size[c];
    return bytes;
}
/* The same from another thread while the owner runs, bump range included: a
 * snapshot, never torn by a bin moving to wider slots. */
LOAM_INTERNAL uint32_t tcache_count_racy(tcache_t *tc, unsigned cls);
/* The bin's limit, 0 while it refuses pushes (the owner's). */
static inline uint32_t tcache_limit(const tcache_t *tc, unsigned cls)
{
    return AO_load((AO_t *)&tc->bins[cls].end) ? tc->info[cls].max : 0;
}

#endif
