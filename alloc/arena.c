/* alloc/arena.c — an arena: a lock, the slabs of every size class, and the
 * segments and large blocks they live in. A heap owns a set of arenas; a
 * thread sticks to one and moves to another when it finds the lock taken.
 *
 * Per class the arena keeps a list of partial slabs (with free or never-used
 * blocks). Full slabs are on no list: a free into one puts it back at the
 * tail, so allocation keeps filling the slab at the head and emptier slabs get
 * the chance to drain and go back to their segment. */
#include "alloc/alloc.h"
#include "alloc/tcache.h"

#include <string.h>

#define ARENA_SPINS 200

alloc_tuning_t alloc_tuning = {       /* the options' defaults (runtime/options.c sets them) */
    .mmap_threshold = 128 * 1024, .decay_ms = 250, .retain_max = 4 * 1024 * 1024,
    .huge_pages = true, .tcache_budget = 32 * 1024 * 1024,
};
AO_t alloc_decay_due;
void (*alloc_pending_hook)(arena_t *a, slab_t *s);
unsigned (*alloc_pending_take_hook)(arena_t *a, slab_t *s, unsigned n, void **top);
unsigned (*alloc_pending_bump_hook)(arena_t *a, slab_t *s, unsigned max, uint32_t *first);

bool slab_init(slab_t *s, arena_t *a, unsigned cls);
void slab_fini(slab_t *s);
unsigned slab_take_blocks(slab_t *s, unsigned n, void **top);

/* ---- budget ------------------------------------------------------------- */

bool budget_charge(budget_t *b, size_t bytes)
{
    if (!b)
        return true;
    if (b->limit == 0) {
        AO_fetch_and_add(&b->committed, bytes);
        return true;
    }
    for (;;) {
        AO_t cur = AO_load(&b->committed);
        if (cur + bytes > b->limit || cur + bytes < cur)
            return false;
        if (AO_compare_and_swap_full(&b->committed, cur, cur + bytes))
            return true;
    }
}

void budget_release(budget_t *b, size_t bytes)
{
    if (b)
        AO_fetch_and_add(&b->committed, (AO_t)0 - bytes);
}

/* ---- arena lifetime ---------------------------------------------------- */

arena_t *arena_new(void *owner, uint8_t slot, uint8_t tag, budget_t *budget, bool track_requested,
                   uint32_t index)
{
    arena_t *a = meta_alloc(sizeof *a);
    if (!a)
        return NULL;
    pthread_mutex_init(&a->lock, NULL);
    a->owner = owner;
    a->owner_slot = slot;
    a->tag = tag;
    a->budget = budget;
    a->track_requested = track_requested;
    a->index = index;
    if (budget) {
        /* Arenas of different kinds' sets join at once, under different locks. */
        AO_t head;
        do {
            head = AO_load(&budget->arenas);
            a->budget_next = (arena_t *)head;
        } while (!AO_compare_and_swap_release(&budget->arenas, head, (AO_t)a));
    }
    return a;
}

void arena_destroy(arena_t *a)
{
    /* Side arrays of live slabs go back to the metadata allocator. */
    for (segment_t *seg = a->segments; seg; seg = seg->next)
        for (unsigned p = 1; p < PAGES_PER_SEGMENT; p += seg->slabs[p].pages)
            if (seg->slabs[p].state == RUN_SLAB)
                slab_fini(&seg->slabs[p]);
    while (a->large)
        large_release(a->large);        /* unlinks itself */
    while (a->large_cache_count)
        large_release(a->large_cache[0].l);
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (a->xfer[c])
            meta_free(a->xfer[c], sizeof *a->xfer[c] + a->xfer[c]->cap * sizeof(void *));
    segment_release_all(a);
    pthread_mutex_destroy(&a->lock);
    meta_free(a, sizeof *a);
}

/* A short wait on a held lock: arena critical sections are short (a
 * refill, a flush of one bin), so the holder is usually done within a few
 * hundred pauses, far sooner than a sleep on the futex and the wake-up. */
static bool arena_spin_lock(arena_t *a)
{
    for (unsigned spin = 0; spin < ARENA_SPINS; spin++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (pthread_mutex_trylock(&a->lock) == 0)
            return true;
    }
    return false;
}

void arena_lock(arena_t *a)
{
    if (pthread_mutex_trylock(&a->lock) != 0) {
        AO_fetch_and_add1(&a->c.lock_contended);
        if (!arena_spin_lock(a))
            pthread_mutex_lock(&a->lock);
    }
}

bool arena_trylock(arena_t *a)
{
    return pthread_mutex_trylock(&a->lock) == 0;
}

void arena_unlock(arena_t *a)
{
    pthread_mutex_unlock(&a->lock);
}

/* ---- partial lists ------------------------------------------------------ */

/* The head is where allocation happens: it never counts as draining. */
static void bin_set_head(arena_bin_t *bin, slab_t *s)
{
    if (bin->partial) {
        AO_int_store(&bin->partial->drain_below, bin->partial->capacity / 8);
        slab_note_draining(bin->partial);
    }
    if (s) {
        AO_int_store(&s->drain_below, 0);
        slab_note_draining(s);
    }
    bin->partial = s;
}

static void partial_push_tail(arena_bin_t *bin, slab_t *s)
{
    s->next = NULL;
    if (!bin->partial) {
        s->prev = s;            /* the head's prev is the tail */
        bin_set_head(bin, s);
        return;
    }
    slab_t *tail = bin->partial->prev;
    tail->next = s;
    s->prev = tail;
    bin->partial->prev = s;
}

static void partial_remove(arena_bin_t *bin, slab_t *s)
{
    slab_t *head = bin->partial;
    if (s == head) {
        bin_set_head(bin, s->next);
        if (bin->partial)
            bin->partial->prev = s->prev;
    } else {
        s->prev->next = s->next;
        if (s->next)
            s->next->prev = s->prev;
        else
            head->prev = s->prev;
    }
    s->next = s->prev = NULL;
}

static slab_t *slab_new(arena_t *a, unsigned cls)
{
    slab_t *s = run_alloc(a, sizeclass_pages[cls]);
    if (!s)
        return NULL;
    if (!slab_init(s, a, cls)) {
        run_free(a, s);
        return NULL;
    }
    a->c.slabs_made++;
    return s;
}

static void slab_release(arena_t *a, slab_t *s)
{
    slab_fini(s);
    a->c.slabs_released++;
    run_free(a, s);
    if (!a->sweeping && os_now_ms() >= a->next_purge_ms)
        arena_purge(a, false);
}

/* ---- blocks ------------------------------------------------------------- */

void arena_note_peak(arena_t *a)
{
    size_t out = a->c.out_bytes + a->c.large_usable;
    if (out > a->c.peak_out_bytes)
        a->c.peak_out_bytes = out;
}

/* ---- the transfer cache ------------------------------------------------ */

/* A thread that frees what another allocates (producer/consumer) flushes its
 * cache into the allocating thread's arena. Linked into their slabs, the
 * blocks came back to the allocating thread's cache by a walk of the free
 * list the other core had written: a cache miss per block, each waiting for
 * the one before (a tenth of producer/consumer's time, in slab_take_blocks).
 * Kept as an array of addresses, a flushed batch goes back to a cache by a
 * copy of the addresses, and the blocks are first touched when they are
 * written, where the misses overlap. Up to 32 KiB or 128 blocks per class,
 * two flushes of a full bin (each sends half of it); what does not
 * fit goes to its slabs (64 KiB and 256 were no faster, for +60 KiB of
 * producer/consumer's peak RSS). Not for arenas whose blocks
 * never sit in caches after a free (collected heaps, tracked ones: the
 * no-cache slot). Purges and trims put the blocks back into their slabs
 * (arena_xfer_drain), so that they pin no slab that could be given back. */
#define XFER_BYTES ((size_t)32 * 1024)
#define XFER_MAX   128u

static uint32_t xfer_cap(unsigned cls)
{
    size_t by_bytes = XFER_BYTES / sizeclass_size[cls];
    return by_bytes < XFER_MAX ? (uint32_t)by_bytes : XFER_MAX;
}

uint32_t arena_xfer_put(arena_t *a, unsigned cls, void *const *blocks, uint32_t n)
{
    if (a->owner_slot == TRACKED_SLOT || a->track_requested)
        return 0;
    arena_xfer_t *x = a->xfer[cls];
    if (!x) {
        uint32_t cap = xfer_cap(cls);
        if (!(x = meta_alloc(sizeof *x + cap * sizeof(void *))))
            return 0;
        x->cap = cap;
        a->xfer[cls] = x;
    }
    if (n > x->cap - x->count)
        n = x->cap - x->count;
    memcpy(&x->slots[x->count], blocks, n * sizeof(void *));
    x->count += n;
    a->xfer_blocks += n;
    return n;
}

/* Up to n blocks of the transfer cache stored downwards from top, the
 * newest at top[-1]. */
static unsigned xfer_take(arena_t *a, unsigned cls, unsigned n, void **top)
{
    arena_xfer_t *x = a->xfer[cls];
    if (!x || x->count == 0)
        return 0;
    unsigned k = n < x->count ? n : x->count;
    x->count -= k;
    a->xfer_blocks -= k;
    memcpy(top - k, &x->slots[x->count], k * sizeof(void *));
    return k;
}

/* A slab's used count fell from `before` to s->used, and that crossed one
 * of its edges: it was full (back onto its partial list), it drains (frees
 * bypass caches), or it is empty (released, or kept). Out of line: the
 * common block back changes only the counts. */
static __attribute__((noinline)) void slab_used_fell(arena_t *a, slab_t *s, uint32_t before)
{
    arena_bin_t *bin = &a->bins[s->cls];
    slab_note_draining(s);
    if (before == s->capacity)
        partial_push_tail(bin, s);
    if (s->used == 0) {
        /* Keep a pending slab (the layer above has not visited it yet), and
         * the class's last one-page slab: a free/malloc cycle at the edge of
         * a slab must not map and unmap it each time. Purge releases kept
         * slabs that stay empty past decay_ms, trim at once. */
        if (s->pending || (bin->partial == s && s->next == NULL && s->pages == 1)) {
            /* No wake-up for the purge thread: this slab is the class's
             * next allocation, often at once (a loop at a slab's edge would
             * signal the thread on every turn). A purge that runs for other
             * memory releases it once decay_ms has passed. */
            s->freed_at_ms = os_now_ms();
            a->kept_classes[s->cls / 64] |= (uint64_t)1 << (s->cls % 64);
            return;
        }
        partial_remove(bin, s);
        slab_release(a, s);
    }
}

/* n blocks are back in slab s's free set: its used count, and its edges.
 * owner_slot needs no update unless used fell to drain_below: above it the
 * slot is the home slot already (slab_note_draining's invariant). The
 * arena's counts are the caller's. */
static inline __attribute__((always_inline)) void slab_used_sub(arena_t *a, slab_t *s, uint32_t n)
{
    uint32_t before = s->used, used = before - n;
    AO_int_store(&s->used, used);
    if (LOAM_UNLIKELY(before == s->capacity || used <= s->drain_below))
        slab_used_fell(a, s, before);
}

/* arena_blocks_returned, inline for arena_free_block. */
static inline __attribute__((always_inline)) void blocks_returned(arena_t *a, slab_t *s, uint32_t n)
{
    a->c.out_bytes -= (size_t)n * s->block_size;
    a->c.out_blocks -= n;
    slab_used_sub(a, s, n);
}

void arena_blocks_returned(arena_t *a, slab_t *s, uint32_t n)
{
    blocks_returned(a, s, n);
}

/* Blocks [from, to) of a flush went back to arena a's slabs: its counts. */
static void arena_blocks_back(arena_t *a, uint32_t from, uint32_t to, size_t size)
{
    a->c.out_bytes -= (size_t)(to - from) * size;
    a->c.out_blocks -= to - from;
}

void arena_free_blocks(arena_t **held, void *const *blocks, uint32_t n)
{
    arena_t *a = *held;
    uint32_t a_from = 0;                /* the first block of a's part */
    size_t size = 0;                    /* every block's (one class) */
    slab_t *run = NULL;                 /* the slab of the blocks just before */
    uint32_t run_n = 0;
    uintptr_t run_lo = 0, run_span = 0;
    uint64_t run_m = 0;
    for (uint32_t k = 0; k < n; k++) {
        uintptr_t b = (uintptr_t)blocks[k];
        if (b - run_lo >= run_span) {
            /* Another slab. Its counts change once per run of one slab (a
             * cache often holds blocks freed together), and the lock only
             * with the arena. */
            slab_t *s = segment_slab_at((segment_t *)(b & ~SEGMENT_MASK), b);
            if (run)
                slab_used_sub(a, run, run_n);       /* run may be gone after this */
            if (LOAM_UNLIKELY(s->arena != a)) {
                if (a) {
                    arena_blocks_back(a, a_from, k, size);
                    arena_unlock(a);
                }
                a = s->arena;
                arena_lock(a);
                a_from = k;
            }
            size = s->block_size;
            run = s;
            run_n = 0;
            run_lo = (uintptr_t)s->start;
            run_span = (uintptr_t)s->pages << PAGE_SHIFT;
            run_m = s->div_m;
        }
        slab_put_free(run, (uint32_t)slab_offset_index(b - run_lo, run_m));
        run_n++;
    }
    if (run) {
        slab_used_sub(a, run, run_n);
        arena_blocks_back(a, a_from, n, size);
    }
    *held = a;
}

void arena_xfer_drain(arena_t *a)
{
    if (a->xfer_blocks == 0)
        return;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        arena_xfer_t *x = a->xfer[c];
        if (x && x->count) {
            uint32_t n = x->count;
            x->count = 0;
            a->xfer_blocks -= n;
            arena_t *held = a;           /* its blocks are all a's */
            arena_free_blocks(&held, x->slots, n);
        }
    }
}

uint32_t arena_xfer_count(const arena_t *a, unsigned cls)
{
    return a->xfer[cls] ? a->xfer[cls]->count : 0;
}

unsigned arena_alloc_blocks(arena_t *a, unsigned cls, unsigned n, void **top)
{
    arena_bin_t *bin = &a->bins[cls];
    unsigned got = 0;
    /* Refills are the regular slow-path event of a running program: decay is
     * checked here too, not only when a slab empties. */
    if (os_now_ms() >= a->next_purge_ms)
        arena_purge(a, false);
    unsigned still_out = 0;     /* of got: blocks counted out already (transfer cache, pending visit) */
    got = still_out = xfer_take(a, cls, n, top);
    while (got < n) {
        slab_t *s = bin->partial;
        if (!s)
            s = a->pending[cls];    /* a pending slab off the list (full before its visit) */
        if (s && s->pending) {
            /* Visit before any block of it is used. */
            if (alloc_pending_take_hook) {
                unsigned k = alloc_pending_take_hook(a, s, n - got, top - got);
                if (k)
                    s->handed_out = true;
                got += k;
                still_out += k;
            } else {
                alloc_pending_hook(a, s);   /* may free blocks: a partial slab */
            }
            continue;
        }
        if (!s) {
            s = slab_new(a, cls);
            if (!s)
                break;
            partial_push_tail(bin, s);
        }
        got += slab_take_blocks(s, n - got, top - got);
        s->handed_out = true;
        if (s->used == s->capacity)
            partial_remove(bin, s);
    }
    size_t bytes = (size_t)(got - still_out) * sizeclass_size[cls];
    a->c.out_bytes += bytes;
    a->c.out_blocks += got - still_out;
    arena_note_peak(a);
    return got;
}

/* ---- bump ranges ----------------------------------------------------------- */

unsigned arena_take_bump(arena_t *a, unsigned cls, unsigned max, struct tcache_bin *holder, char **start)
{
    arena_bin_t *bin = &a->bins[cls];
    if (os_now_ms() >= a->next_purge_ms)
        arena_purge(a, false);
    for (;;) {
        slab_t *s = bin->partial;
        if (!s)
            s = a->pending[cls];
        if (s && *slab_bump_holder(s))
            return 0;                   /* one range a slab */
        if (s && s->pending) {
            uint32_t first;
            /* (A tracked slab's sweep reads each dead block's size.) */
            unsigned k = alloc_pending_bump_hook && !s->waste && s->block_size <= 64 * BLOCK_ALIGN
                             ? alloc_pending_bump_hook(a, s, max, &first) : 0;
            if (k) {
                /* Out already (garbage found by the visit): no count changes. */
                *start = s->start + (size_t)first * s->block_size;
                *slab_bump_holder(s) = holder;
                s->handed_out = true;
                return k;
            }
            if (s->pending)
                return 0;               /* no hook: the bin's refill visits it */
            continue;                   /* visited: take from it as from any slab */
        }
        if (!s) {
            s = slab_new(a, cls);
            if (!s)
                return 0;
            partial_push_tail(bin, s);
        }
        uint32_t bumped = s->bumped;
        if (bumped > s->used || bumped == s->capacity)
            return 0;                   /* its free blocks are in its free set */
        unsigned k = s->capacity - bumped;
        if (k > max)
            k = max;
        *start = s->start + (size_t)bumped * s->block_size;
        slab_set_bumped(s, bumped + k);
        AO_int_store(&s->used, s->used + k);
        slab_note_draining(s);
        if (s->used == s->capacity)
            partial_remove(bin, s);
        a->c.out_bytes += (size_t)k * s->block_size;
        a->c.out_blocks += k;
        arena_note_peak(a);
        *slab_bump_holder(s) = holder;
        s->handed_out = true;
        return k;
    }
}

void arena_return_bump(arena_t *a, slab_t *s, char *from, char *to)
{
    *slab_bump_holder(s) = NULL;
    uint32_t lo = (uint32_t)slab_block_index(s, (uintptr_t)from);
    uint32_t hi = (uint32_t)slab_block_index(s, (uintptr_t)to);
    if (lo == hi)
        return;
    if (hi == s->bumped && !s->pending) {
        /* Untouched as far as the slab is concerned: past the bump line
         * again, where nothing reads a block. */
        slab_set_bumped(s, lo);
    } else {
        const uintptr_t free_key = loam_free_key;
        for (uint32_t i = lo; i < hi; i++) {
            ((free_block_t *)(s->start + (size_t)i * s->block_size))->freed_key = free_key;
            slab_put_free(s, i);
        }
    }
    blocks_returned(a, s, hi - lo);
}

void arena_end_bump(slab_t *s)
{
    *slab_bump_holder(s) = NULL;
}

bool arena_in_bump_range(slab_t *s, const void *p)
{
    struct tcache_bin *h = *slab_bump_holder(s);
    if (!h)
        return false;
    /* The holder's bump moves up without the lock; its end does not move
     * while the slab names it (both change only under this lock). */
    const char *lo = (const char *)AO_load(&h->bump), *anchor = (const char *)AO_load(&h->bump_end);
    return (const char *)p >= lo && (const char *)p <= anchor;
}

void arena_release_dead_slab(arena_t *a, slab_t *s)
{
    if (s->used < s->capacity)          /* on its partial list exactly then */
        partial_remove(&a->bins[s->cls], s);
    a->c.out_bytes -= (size_t)s->used * s->block_size;
    a->c.out_blocks -= s->used;
    AO_int_store(&s->used, 0);
    slab_release(a, s);
}

void arena_free_block(arena_t *a, slab_t *s, free_block_t *b)
{
    b->freed_key = loam_free_key;
    slab_put_free(s, (uint32_t)slab_block_index(s, (uintptr_t)b));
    blocks_returned(a, s, 1);
}

void arena_pending_add(arena_t *a, slab_t *s)
{
    if (s->pending)
        return;
    s->pending = true;
    s->visit_cursor = 0;
    s->pending_next = a->pending[s->cls];
    a->pending[s->cls] = s;
    a->pending_count++;
}

void arena_pending_done(arena_t *a, slab_t *s)
{
    if (!s->pending)
        return;
    slab_t **pp = &a->pending[s->cls];
    while (*pp && *pp != s)
        pp = &(*pp)->pending_next;
    if (*pp)
        *pp = s->pending_next;
    s->pending = false;
    s->pending_next = NULL;
    a->pending_count--;
}

size_t arena_slab_bytes(arena_t *a)
{
    arena_lock(a);
    size_t bytes = a->slab_pages * PAGE_SIZE;
    arena_unlock(a);
    return bytes;
}

void arena_pending_visit_all(arena_t *a)
{
    for (unsigned c = 0; c < NUM_CLASSES && a->pending_count; c++)
        while (a->pending[c])
            alloc_pending_hook(a, a->pending[c]);
}

/* Only the classes that kept an empty slab since their last look are
 * walked (kept_classes), unless forced: the partial lists of a big
 * fragmented heap hold most of its slabs. */
bool arena_release_kept_slabs(arena_t *a, bool force, uint64_t now)
{
    bool left = false;
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        uint64_t bit = (uint64_t)1 << (c % 64);
        if (!force && !(a->kept_classes[c / 64] & bit))
            continue;
        bool kept = false;
        slab_t *next;
        for (slab_t *s = a->bins[c].partial; s; s = next) {
            next = s->next;
            if (s->used != 0)
                continue;
            if (s->pending) {
                kept = true;            /* empty once its visit is done: look again */
                continue;
            }
            if (force || now - s->freed_at_ms >= alloc_decay_ms()) {
                partial_remove(&a->bins[c], s);
                slab_fini(s);
                a->c.slabs_released++;
                run_free(a, s);
            } else {
                kept = left = true;
            }
        }
        if (kept)
            a->kept_classes[c / 64] |= bit;
        else
            a->kept_classes[c / 64] &= ~bit;
    }
    return left;
}

size_t slab_shrink_tail(slab_t *s);

size_t arena_trim(arena_t *a, size_t *walk)
{
    arena_xfer_drain(a);                /* before: its blocks may empty slabs */
    arena_release_kept_slabs(a, true, 0);
    size_t bytes = arena_purge(a, true);
    /* Sparse slabs give back their free tails (a dense one has little to
     * give). */
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        for (slab_t *s = a->bins[c].partial; s && *walk; s = s->next)
            if (!s->pending && s->used <= s->capacity / 8) {
                size_t n = s->bumped - s->used;
                *walk = *walk > n ? *walk - n : 0;
                bytes += slab_shrink_tail(s);
            }
    return bytes;
}

/* ---- statistics --------------------------------------------------------- */

void arena_collect_stats(arena_t *a, arena_stats_t *st, bool resident)
{
    for (segment_t *seg = a->segments; seg; seg = seg->next) {
        st->segments++;
        st->reserved_bytes += SEGMENT_SIZE;
        st->committed_bytes += SEGMENT_HEADER_COMMIT
                               + (size_t)__builtin_popcountll(seg->committed_mask) * PAGE_SIZE;
        if (resident)
            st->resident_bytes += os_resident(seg, SEGMENT_SIZE);
        for (unsigned p = 1; p < PAGES_PER_SEGMENT;) {
            slab_t *r = &seg->slabs[p];
            size_t run = (size_t)r->pages * PAGE_SIZE;
            if (r->state == RUN_SLAB) {
                arena_class_stats_t *cs = &st->cls[r->cls];
                cs->block_size = r->block_size;
                cs->slabs++;
                cs->blocks_used += r->used;
                cs->blocks_free += r->capacity - r->used;
                st->slab_bytes += run;
                if (r->used && r->used < r->capacity)
                    st->slab_free_bytes += (size_t)(r->capacity - r->used) * r->block_size;
            } else if (r->state == RUN_FREE) {
                uint64_t m = (r->pages >= 64 ? ~0ull : ((1ull << r->pages) - 1)) << p;
                st->free_run_bytes += (size_t)__builtin_popcountll(seg->committed_mask & m) * PAGE_SIZE;
            }
            p += r->pages;
        }
    }
    for (large_t *l = a->large; l; l = l->next) {
        st->reserved_bytes += l->map_size;
        st->committed_bytes += l->map_size;
        if (resident)
            st->resident_bytes += os_resident((char *)l, l->map_size);
    }
    /* Cached mappings count as free runs: committed, awaiting reuse or decay. */
    for (size_t i = 0; i < a->large_cache_count; i++) {
        large_t *l = a->large_cache[i].l;
        st->reserved_bytes += l->map_size;
        st->committed_bytes += l->map_size;
        st->free_run_bytes += l->map_size;
        if (resident)
            st->resident_bytes += os_resident((char *)l, l->map_size);
    }
}

/* ---- arena sets ---------------------------------------------------------- */

void arena_set_init(arena_set_t *set, void *owner, uint8_t slot, uint8_t tag, budget_t *budget,
                    bool track, unsigned max)
{
    memset(set, 0, sizeof *set);
    pthread_mutex_init(&set->lock, NULL);
    set->owner = owner;
    set->slot = slot;
    set->tag = tag;
    set->budget = budget;
    set->track = track;
    set->max = max < 1 ? 1 : max > ARENA_SET_MAX ? ARENA_SET_MAX : max;
}

void arena_set_destroy(arena_set_t *set)
{
    unsigned n = (unsigned)AO_load(&set->count);
    for (unsigned i = 0; i < n; i++)
        arena_destroy(arena_set_at(set, i));
    AO_store(&set->count, 0);
    meta_free(set->more, (ARENA_SET_MAX - ARENA_SET_INLINE) * sizeof *set->more);
    set->more = NULL;
    pthread_mutex_destroy(&set->lock);
}

static arena_t *arena_set_grow(arena_set_t *set)
{
    arena_t *a = NULL;
    pthread_mutex_lock(&set->lock);
    unsigned n = (unsigned)AO_load(&set->count);
    if (n < set->max && n >= ARENA_SET_INLINE && !set->more)
        set->more = meta_alloc((ARENA_SET_MAX - ARENA_SET_INLINE) * sizeof *set->more);
    if (n < set->max && (n < ARENA_SET_INLINE || set->more)) {
        a = arena_new(set->owner, set->slot, set->tag, set->budget, set->track, n);
        if (a) {
            a->huge_ok = set->huge_ok;
            if (n < ARENA_SET_INLINE)
                set->first[n] = a;
            else
                set->more[n - ARENA_SET_INLINE] = a;
            AO_store_release(&set->count, n + 1);
        }
    }
    pthread_mutex_unlock(&set->lock);
    return a;
}

void arena_set_allow_huge(arena_set_t *set, bool ok)
{
    pthread_mutex_lock(&set->lock);
    set->huge_ok = ok;
    unsigned n = (unsigned)AO_load(&set->count);
    for (unsigned i = 0; i < n; i++)
        arena_allow_huge(arena_set_at(set, i), ok);
    pthread_mutex_unlock(&set->lock);
}

arena_t *arena_set_first(arena_set_t *set)
{
    if (AO_load_acquire(&set->count) == 0) {
        arena_t *a = arena_set_grow(set);
        if (a || AO_load_acquire(&set->count) == 0)
            return a;
    }
    return set->first[0];
}

arena_t *arena_set_lock_some(arena_set_t *set, arena_t *preferred)
{
    if (!preferred)
        preferred = arena_set_first(set);
    if (!preferred)
        return NULL;
    if (arena_trylock(preferred))
        return preferred;
    AO_fetch_and_add1(&preferred->c.lock_contended);
    /* Held: most often by a thread flushing blocks it freed for this one
     * (producer/consumer), for a moment. A short spin keeps the thread on
     * its arena; moving on at the first miss spread one allocating thread's
     * heap over two arenas, with a partly used slab per class in each
     * (producer/consumer peak RSS 4.4 -> 3.2 MiB with the spin). */
    if (arena_spin_lock(preferred))
        return preferred;
    unsigned n = (unsigned)AO_load_acquire(&set->count);
    for (unsigned i = 0; i < n; i++) {
        arena_t *a = arena_set_at(set, (preferred->index + 1 + i) % n);
        if (a != preferred && arena_trylock(a))
            return a;
    }
    /* A new arena only while there are fewer than the threads allocating
     * through caches from the set: a thread that only frees (flushing what
     * another allocated) and meets the allocator on a lock now and then must
     * not spread the heap over more arenas. Sets without caches (tracked
     * heaps) grow up to max. */
    AO_t users = AO_load(&set->users);
    arena_t *fresh = users == 0 || n < users ? arena_set_grow(set) : NULL;
    if (fresh) {
        arena_lock(fresh);
        return fresh;
    }
    arena_lock(preferred);
    return preferred;
}
