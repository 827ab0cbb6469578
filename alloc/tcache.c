/* alloc/tcache.c — refilling and flushing thread caches (see tcache.h). */
#include "alloc/tcache.h"

#include <string.h>

#define TCACHE_BATCH_MAX 64
#define TCACHE_USER_REFILLS 8          /* refills before a cache counts among its set's users */
#define TCACHE_BATCH_MAX_ALLOCATING 256      /* for caches that only allocate */
#define TCACHE_BIN_BYTES ((size_t)64 * 1024)
#define TCACHE_BASE_MAX 128
#define TCACHE_GROWN_BIN_BYTES ((size_t)128 * 1024)
#define TCACHE_GROWN_BYTES_MAX ((size_t)1024 * 1024)
/* A cache that frees may grow further, drawing from a budget all caches
 * share (alloc_tuning.tcache_budget; tcache_grow says why). */
#define TCACHE_SHARED_BIN_BYTES ((size_t)1024 * 1024)
#define TCACHE_SHARED_CACHE_MAX ((size_t)8 * 1024 * 1024)
/* A range holds at most 64 KiB (a slab of the smallest classes). One shorter
 * than TCACHE_BUMP_MIN blocks comes with a bin refill as well: a slab whose
 * garbage lies between live blocks would otherwise cost a refill for every
 * few allocations. */
#define TCACHE_BUMP_BYTES ((size_t)64 * 1024)
#define TCACHE_BUMP_MIN 16

/* Bytes of growth past TCACHE_GROWN_BYTES_MAX, all caches together. */
static AO_t tcache_shared_taken;

_Static_assert(sizeof(tcache_t) <= 4096, "a cache fits the metadata bins (alloc/meta.c)");

uint16_t tcache_small_bin[SMALL_MAX + 1];
void *tcache_no_blocks[1];

void tcache_tables_init(void)
{
    for (size_t n = 0; n <= SMALL_MAX; n++)
        tcache_small_bin[n] = tcache_bin_offset(sizeclass_of(n));
}

/* A bin's base limit, and the slots every bin starts with: at most 128
 * blocks and 64 KiB of them, at least 1. */
static uint32_t tcache_base_cap(unsigned cls)
{
    size_t by_bytes = TCACHE_BIN_BYTES / sizeclass_size[cls];
    uint32_t cap = by_bytes < TCACHE_BASE_MAX ? (uint32_t)by_bytes : TCACHE_BASE_MAX;
    return cap ? cap : 1;
}

static void bin_set_top(tcache_t *tc, unsigned cls, uint32_t count)
{
    AO_store(&tc->bins[cls].top, (AO_t)(tc->info[cls].base + count));
}

/* The bin takes nothing and holds nothing (TCACHE_REFUSING_BIN): its slots
 * are gone. */
static void bin_refuse(tcache_bin_t *bin)
{
    AO_store(&bin->top, (AO_t)&tcache_no_blocks[1]);
    AO_store(&bin->end, 0);
}

/* Give back up to `bytes` of the cache's draw on the shared budget, no more
 * than it still holds: a racing give-back may have taken it already (heap
 * destroy abandons caches from another thread). */
static void tcache_shared_untake(tcache_t *tc, size_t bytes)
{
    for (;;) {
        AO_t mine = AO_load(&tc->shared_bytes);
        AO_t back = mine < bytes ? mine : bytes;
        if (back == 0)
            return;
        if (AO_compare_and_swap(&tc->shared_bytes, mine, mine - back)) {
            AO_fetch_and_add(&tcache_shared_taken, (AO_t)0 - back);
            return;
        }
    }
}

/* Bins back at their base limits (or refusing): all of the cache's draw goes
 * back. Idempotent. */
void tcache_shared_release(tcache_t *tc)
{
    tcache_shared_untake(tc, SIZE_MAX);
}

/* Take bytes from the shared budget: false if it has not that much left. */
static bool tcache_shared_take(tcache_t *tc, size_t bytes)
{
    for (;;) {
        AO_t taken = AO_load(&tcache_shared_taken);
        if (taken + bytes > alloc_tcache_budget())
            return false;
        if (AO_compare_and_swap(&tcache_shared_taken, taken, taken + bytes)) {
            AO_fetch_and_add(&tc->shared_bytes, bytes);
            return true;
        }
    }
}

size_t tcache_shared_bytes(void)
{
    return AO_load(&tcache_shared_taken);
}

static void tcache_set_limits(tcache_t *tc)
{
    tcache_shared_release(tc);
    tc->grown_bytes = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        uint32_t base = tcache_base_cap(c);
        tc->info[c].max = tc->limit < base ? tc->limit : base;
        AO_store(&tc->bins[c].end, (AO_t)(tc->info[c].base + tc->info[c].max));
    }
}

uint32_t tcache_count_racy(tcache_t *tc, unsigned cls)
{
    for (;;) {
        /* A sequence lock: both reads atomic, the second count read after
         * them (the fence), so an unchanged even count means no move ran
         * between. */
        AO_t seq = AO_load_acquire(&tc->resize_seq);
        void **top = (void **)AO_load(&tc->bins[cls].top);
        void **base = (void **)AO_load((volatile AO_t *)&tc->info[cls].base);
        AO_nop_read();
        AO_t seq2 = AO_load(&tc->resize_seq);
        if (!(seq & 1) && seq == seq2) {
            uint32_t n = top >= base ? (uint32_t)(top - base) : 0;
            /* The bump range and its anchor; a refill between the two
             * reads gives a span no range has, which counts as none. */
            char *b = (char *)AO_load(&tc->bins[cls].bump), *e = (char *)AO_load(&tc->bins[cls].bump_end);
            if (e && e >= b && (size_t)(e - b) < TCACHE_BUMP_BYTES)
                n += (uint32_t)((size_t)(e - b) / sizeclass_size[cls]) + 1;
            return n;
        }
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

/* The store: the bins' info, then for each class a NULL sentinel and its
 * base slots (fresh metadata is zero, and nothing writes below a base). */
/* The store's layout: after the classes' info, each class's NULL sentinel
 * and then its base slots. home[c] is where class c's slots begin. */
static void store_homes(tcache_bin_info_t *info, void **home[NUM_CLASSES])
{
    void **next = (void **)(info + NUM_CLASSES);
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        home[c] = next + 1;
        next += 1 + tcache_base_cap(c);
    }
}

static bool tcache_slots_init(tcache_t *tc)
{
    if (tc->info)
        return true;                    /* a cache made again keeps its slots */
    size_t slots = 0;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        slots += 1 + tcache_base_cap(c);
    size_t bytes = NUM_CLASSES * sizeof(tcache_bin_info_t) + slots * sizeof(void *);
    tcache_bin_info_t *info = meta_alloc(bytes);
    if (!info)
        return false;
    void **home[NUM_CLASSES];
    store_homes(info, home);
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        info[c].base = home[c];
        info[c].cap = tcache_base_cap(c);
    }
    tc->info = info;
    tc->store_bytes = bytes;
    return true;
}

static bool slots_in_store(const tcache_t *tc, void **slots)
{
    return (char *)slots >= (char *)tc->info && (char *)slots < (char *)tc->info + tc->store_bytes;
}

void tcache_free_slots(tcache_t *tc)
{
    tcache_shared_release(tc);
    if (!tc->info)
        return;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        tcache_bin_info_t *in = &tc->info[c];
        if (!slots_in_store(tc, in->base))
            meta_free(in->base - 1, (size_t)(in->cap + 1) * sizeof(void *));
        bin_refuse(&tc->bins[c]);
    }
    meta_free(tc->info, tc->store_bytes);
    tc->info = NULL;
    tc->store_bytes = 0;
}

bool tcache_init(tcache_t *tc, void *owner, arena_set_t *arenas, unsigned tcache_max)
{
    if (!tcache_slots_init(tc))
        return false;
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        bin_set_top(tc, c, 0);
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
    tc->refills = 0;
    tc->arena = NULL;
    return true;
}

/* A refill: the owner's count of slow events, and its arena set's count of
 * allocating threads. */
static void refill_note(tcache_t *tc)
{
    AO_int_store(&tc->slow_events, tc->slow_events + 1);
    if (!tc->allocates && ++tc->refills >= TCACHE_USER_REFILLS) {
        /* An allocating thread: one more that may have an arena of its own
         * (a thread that only frees does not need one, nor does one that
         * made a few allocations at its start and then only frees, as a
         * consumer does: counted, it gave a producer/consumer pair a second
         * arena, and the producer's heap spread over both). */
        tc->allocates = true;
        AO_fetch_and_add1(&tc->arenas->users);
    }
}

/* Fill the bin of cls from arena a (locked): returns how many came. */
static unsigned bin_fill(tcache_t *tc, unsigned cls, arena_t *a)
{
    /* A cache that only allocates gets bigger refills: each one is a slow
     * path with an arena lock (binary-trees on a collected heap: 10-20 %
     * faster with refills of 256 blocks than of 64). Not for a cache that
     * frees too, which would only hold more (producer/consumer peak RSS:
     * 4.3 -> 5.3 MiB). */
    if (tc->allocates_only)
        tcache_grow(tc, cls);           /* grows only if it ran empty before */
    refilled_set(tc, cls);              /* (after: it is what tcache_grow reads) */
    tcache_bin_info_t *in = &tc->info[cls];
    unsigned count = tcache_count(tc, cls);
    unsigned want = in->max / 2;
    if (want < 1)
        want = 1;
    unsigned batch_max = tc->allocates_only ? TCACHE_BATCH_MAX_ALLOCATING : TCACHE_BATCH_MAX;
    if (want > batch_max)
        want = batch_max;
    if (want > in->cap - count)
        want = in->cap - count;
    void **top = in->base + count + want;
    unsigned n = arena_alloc_blocks(a, cls, want, top);
    if (n && n < want)                  /* short: close the gap below them */
        memmove(in->base + count, top - n, (size_t)n * sizeof(void *));
    bin_set_top(tc, cls, count + n);
    return n;
}

void *tcache_refill_pop(tcache_t *tc, unsigned cls)
{
    refill_note(tc);
    arena_t *a = arena_set_lock_some(tc->arenas, tc->arena);
    if (!a)
        return NULL;
    tc->arena = a;
    unsigned n = bin_fill(tc, cls, a);
    arena_unlock(a);
    return n ? tcache_bin_pop(&tc->bins[cls]) : NULL;
}

/* ---- bump ranges ------------------------------------------------------------ */

static slab_t *slab_of_block(const char *p)
{
    segment_t *seg = (segment_t *)((uintptr_t)p & ~(uintptr_t)SEGMENT_MASK);
    return segment_slab_at(seg, (uintptr_t)p);
}

static void bump_forget(tcache_bin_t *bin)
{
    AO_store(&bin->bump_end, 0);
    AO_store(&bin->bump, 0);
}

/* The range of cls, whatever is left of it, anchor included, goes back to
 * its slab. The anchor keeps the slab (and its arena) in place. */
static void bump_return(tcache_t *tc, unsigned cls)
{
    tcache_bin_t *bin = &tc->bins[cls];
    char *anchor = (char *)bin->bump_end;
    if (!anchor)
        return;
    slab_t *s = slab_of_block(anchor);
    arena_t *a = s->arena;
    arena_lock(a);
    arena_return_bump(a, s, (char *)bin->bump, anchor + s->block_size);
    bump_forget(bin);
    arena_unlock(a);
}

void tcache_return_bumps(tcache_t *tc)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (tc->bins[c].bump_end)
            bump_return(tc, c);
}

void *tcache_refill_bump(tcache_t *tc, unsigned cls, size_t *bytes)
{
    tcache_bin_t *bin = &tc->bins[cls];
    const size_t size = sizeclass_size[cls];
    *bytes = 0;
    void *p = tcache_bin_bump(bin, size);
    if (p)
        return p;                       /* (a caller that did not try the range) */
    refill_note(tc);
    char *anchor = (char *)bin->bump_end;
    if (anchor) {
        /* Used up to its anchor, which is this allocation (counted when
         * the range came); the next refill takes a new range. */
        slab_t *s = slab_of_block(anchor);
        arena_t *a = s->arena;
        arena_lock(a);
        arena_end_bump(s);
        bump_forget(bin);
        arena_unlock(a);
        return anchor;
    }
    arena_t *a = arena_set_lock_some(tc->arenas, tc->arena);
    if (!a)
        return NULL;
    tc->arena = a;
    char *start = NULL;
    unsigned k = arena_take_bump(a, cls, (unsigned)(TCACHE_BUMP_BYTES / size), bin, &start);
    if (k == 1) {
        arena_end_bump(slab_of_block(start));   /* a range of its anchor alone */
        p = start;
    } else if (k) {
        AO_store(&bin->bump_end, (AO_t)(start + (k - 1) * size));
        AO_store(&bin->bump, (AO_t)(start + size));
        p = start;
    }
    unsigned n = k < TCACHE_BUMP_MIN ? bin_fill(tc, cls, a) : 0;
    arena_unlock(a);
    *bytes = (size_t)(k + n) * size;
    if (!p && n)
        p = tcache_bin_take(bin);
    return p;
}

/* Room for `slots` blocks in the bin of cls (the owner's, on a slow path:
 * only the owner and a thread that has stopped it read the slots). */
static bool tcache_widen(tcache_t *tc, unsigned cls, uint32_t slots)
{
    tcache_bin_info_t *in = &tc->info[cls];
    void **wide = meta_alloc((size_t)(slots + 1) * sizeof(void *));   /* zero: [0] is the sentinel */
    if (!wide)
        return false;
    uint32_t count = tcache_count(tc, cls);
    void **old = in->base;
    uint32_t old_cap = in->cap;
    memcpy(wide + 1, old, (size_t)count * sizeof(void *));
    AO_store(&tc->resize_seq, tc->resize_seq + 1);
    AO_nop_write();                 /* the odd count is visible before the move */
    AO_store((volatile AO_t *)&in->base, (AO_t)(wide + 1));
    in->cap = slots;
    bin_set_top(tc, cls, count);
    AO_store_release(&tc->resize_seq, tc->resize_seq + 1);
    if (!slots_in_store(tc, old))
        meta_free(old - 1, (size_t)(old_cap + 1) * sizeof(void *));
    return true;
}

/* Growth past the cache's own allowance, which the shared budget pays. */
static size_t shared_part(size_t grown)
{
    return grown > TCACHE_GROWN_BYTES_MAX ? grown - TCACHE_GROWN_BYTES_MAX : 0;
}

/* A bin that overflows after it ran empty since its last flush serves a
 * thread that allocates and frees in batches bigger than the bin: each
 * batch would go through an arena lock twice, every block going back to its
 * slab and out again (cg-batch, 1000 at a time: 140 instructions per
 * malloc+free pair, 85 once the batch fits). It doubles, up to tcache_max
 * blocks and 128 KiB of them (a flush keeps half, so a batch of 64 KiB needs
 * that), while the cache's growth in all stays under 1 MiB.
 * A cache that frees (not a collected heap's, whose bins grow on refills
 * alone) may go on to 1 MiB a class and 8 MiB in all, the growth past
 * 1 MiB drawn from a budget (option tcache_budget, 32 MiB) that every
 * thread's caches share, as tcmalloc bounds its thread caches: a program
 * that frees a structure of 50,000 blocks in random order and builds it
 * again (bench's batch-random) otherwise sends most blocks through their
 * slabs and back, twice the instructions of mimalloc's run. The shared
 * budget keeps many threads from holding 8 MiB each.
 * A cache flushed because it is idle (runtime/purge.c) comes back at the
 * base limits, and returns what it drew. The compare-and-swap loses to a
 * flush request, which sets end to 0 from another thread. */
bool tcache_grow(tcache_t *tc, unsigned cls)
{
    if (!refilled_take(tc, cls))
        return false;
    size_t size = sizeclass_size[cls];
    bool frees = !tc->allocates_only;
    size_t bin_bytes = frees ? TCACHE_SHARED_BIN_BYTES : TCACHE_GROWN_BIN_BYTES;
    size_t cap = tc->limit;
    if (cap > bin_bytes / size)
        cap = bin_bytes / size;
    tcache_bin_info_t *in = &tc->info[cls];
    uint32_t max = in->max;
    if (AO_load(&tc->bins[cls].end) == 0 || max >= cap)
        return false;
    uint32_t grown = (size_t)max * 2 < cap ? max * 2 : (uint32_t)cap;
    size_t bytes = (size_t)(grown - max) * size;
    size_t after = tc->grown_bytes + bytes;
    if (after > (frees ? TCACHE_SHARED_CACHE_MAX : TCACHE_GROWN_BYTES_MAX))
        return false;
    size_t draw = shared_part(after) - shared_part(tc->grown_bytes);
    if (draw && !tcache_shared_take(tc, draw))
        return false;
    if (grown > in->cap && !tcache_widen(tc, cls, grown))
        goto undo;
    /* Read end again: widening moved the slots, and a flush request (end
     * set to 0) must win over this. */
    AO_t end = AO_load(&tc->bins[cls].end);
    if (end == 0 || !AO_compare_and_swap(&tc->bins[cls].end, end, (AO_t)(in->base + grown)))
        goto undo;
    in->max = grown;
    tc->grown_bytes = after;
    /* The background purge must look at this cache until it is idle: a
     * thread that stops with its bins full would keep them for ever (the
     * purge thread sleeps while no arena keeps memory for decay, and
     * pushes and pops never wake it). Not for a collected heap's cache,
     * which each collection empties. */
    if (frees)
        alloc_note_decay_due();
    return true;
undo:
    if (draw)
        tcache_shared_untake(tc, draw);
    return false;
}

/* The oldest blocks go back, the newest (likeliest still in the CPU's
 * cache) stay. Flushing a bin that overflowed (to_xfer), runs of blocks
 * that share a slab (a cache mostly holds runs of blocks freed together) go
 * to their arena's transfer cache while it has room; the rest go to their
 * slabs' free sets one block at a time (arena_free_blocks), which reads
 * no block. */
static void flush_bin(tcache_t *tc, unsigned cls, uint32_t keep, bool to_xfer)
{
    arena_t *held = NULL;
    AO_int_store(&tc->slow_events, tc->slow_events + 1);
    (void)refilled_take(tc, cls);
    uint32_t count = tcache_count(tc, cls);
    if (count <= keep)
        return;
    uint32_t out = count - keep;
    void **slots = tc->info[cls].base;
    for (uint32_t i = 0, end; to_xfer && i < out; i = end) {
        slab_t *s;
        end = slab_run_end(slots, i, out, &s);
        if (s->arena != held) {
            if (held)
                arena_unlock(held);
            held = s->arena;
            arena_lock(held);
        }
        uint32_t put = arena_xfer_put(held, cls, &slots[i], end - i);
        if (put == end - i)
            continue;
        /* Full (or refused): the rest goes to the slabs without asking
         * again. A thread freeing a big heap in random order flushes runs
         * of one block, each of which asked a full cache before (a twelfth
         * of free-all's instructions). */
        arena_free_blocks(&held, &slots[i + put], out - i - put);
        break;
    }
    if (!to_xfer)
        arena_free_blocks(&held, slots, out);
    if (held)
        arena_unlock(held);
    memmove(slots, slots + out, (size_t)keep * sizeof(void *));
    bin_set_top(tc, cls, keep);
}

void tcache_flush(tcache_t *tc, unsigned cls, uint32_t keep)
{
    flush_bin(tc, cls, keep, false);
}

void tcache_flush_overflow(tcache_t *tc, unsigned cls, uint32_t keep)
{
    flush_bin(tc, cls, keep, true);
}

void tcache_flush_all(tcache_t *tc)
{
    tcache_return_bumps(tc);
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (tcache_count(tc, c))
            tcache_flush(tc, c, 0);
}

void tcache_abandon(tcache_t *tc)
{
    /* end = 0: pushes fail too, so a disowned cache can never take a block
     * (the free fast path relies on this instead of comparing owners). */
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        bump_forget(&tc->bins[c]);      /* its slab is gone, or the range went back */
        if (tc->info) {
            bin_set_top(tc, c, 0);
            AO_store(&tc->bins[c].end, 0);
        } else {
            bin_refuse(&tc->bins[c]);
        }
    }
    AO_store(&tc->flush_req, 0);
    tcache_shared_release(tc);
    tc->grown_bytes = 0;
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
        AO_store(&tc->bins[c].end, 0);
}

/* Every bin is empty: those that grew wider than their slots in the store
 * go back to them, and their wide arrays back to the system. A grown bin of
 * a small class has 8,192 slots, 64 KiB, which an idle thread would
 * otherwise keep until it exits (batch-random's cache: about 400 KB). As in
 * tcache_widen, the move is a sequence-lock write for tcache_count_racy.
 * The store's slots of a class are where store_homes says, its sentinel
 * still NULL (nothing writes below a base). */
static void tcache_narrow(tcache_t *tc)
{
    void **home[NUM_CLASSES];
    store_homes(tc->info, home);
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        tcache_bin_info_t *in = &tc->info[c];
        if (in->base == home[c])
            continue;
        void **old = in->base;
        uint32_t old_cap = in->cap;
        AO_store(&tc->resize_seq, tc->resize_seq + 1);
        AO_nop_write();
        AO_store((volatile AO_t *)&in->base, (AO_t)home[c]);
        in->cap = tcache_base_cap(c);
        in->max = in->max < in->cap ? in->max : in->cap;
        bin_set_top(tc, c, 0);
        AO_store_release(&tc->resize_seq, tc->resize_seq + 1);
        meta_free(old - 1, (size_t)(old_cap + 1) * sizeof(void *));
    }
}

void tcache_answer_flush(tcache_t *tc)
{
    AO_store(&tc->flush_req, 0);
    tcache_flush_all(tc);
    tcache_narrow(tc);
    if (tc->owner)              /* a disowned cache keeps refusing every push */
        tcache_set_limits(tc);
}
