/* runtime/runtime.h — the runtime layer's internal interface: heaps, the
 * thread-cache slots, options, error reporting, and the allocation fast paths
 * shared by loam_malloc/loam_free and the malloc override. */
#ifndef LOAM_RUNTIME_H
#define LOAM_RUNTIME_H

#include "loam.h"
#include "alloc/alloc.h"
#include "alloc/tcache.h"
#include "alloc/memcheck.h"

#include <errno.h>
#include <string.h>

/* Thread-cache slots: each live heap gets one (while there are some left);
 * a thread's slot s points at its cache for the heap holding s. The last slot
 * is the "none" slot: it always holds the empty cache, so heaps without a slot
 * take the locked path. */
#define TC_SLOTS      32
#define TC_SLOT_NONE  (TC_SLOTS - 1)
_Static_assert(TC_SLOT_NONE == TRACKED_SLOT, "the core's no-cache slot");

/* Exported: loam/inline.h reads it (its layout asserted in gc/api.c). */
extern LOAM_API __thread tcache_t *loam_tls_cache[TC_SLOTS];
extern LOAM_INTERNAL tcache_t loam_empty_tcache;

/* Kinds are segregated by slab: each kind of a heap allocates from its own
 * arenas through its own thread-cache slot. Kind 0 (conservative) is what
 * loam_malloc uses; the others exist once loam_gc_alloc asks for them. */
#define HEAP_KINDS 3
typedef struct heap_kind {
    arena_set_t arenas;
    uint8_t     slot;              /* TC_SLOT_NONE: no slot (locked path) or not yet made */
    bool        ready;
} heap_kind_t;

struct gc_state;

struct loam_heap {
    /* hot: read by the fast paths */
    uint8_t       alloc_slot;      /* slot the malloc fast path reads: TC_SLOT_NONE when tracked */
    uint8_t       gc_alloc_slot[HEAP_KINDS];  /* loam_gc_alloc's, per kind: TC_SLOT_NONE when
                                                 tracked or the kind is not made yet */
    uint8_t       slot;            /* kind 0's slot */
    bool          is_default;
    /* loam_gc_alloc's size classes by request size (gc/api.c; the second
     * table with LOAM_ALIGN_8: 24, 40, 56 bytes, sizeclass_of_by8) */
    const struct loam_inline_class *gc_class_row;
    loam_mode_t   mode;
    /* the rest */
    heap_kind_t   kinds[HEAP_KINDS];
    struct gc_state *gc;           /* the collector's state (gc/), made on first use */
    budget_t      budget;
    loam_config_t cfg;
    unsigned      tcache_max;
    bool          track_requested;
    AO_t          requested;       /* tracked slab blocks */
    AO_t          limit_warned;
    tcache_t     *caches;          /* every thread's cache of this heap (heaps_lock) */
    struct loam_heap *next, *prev; /* all heaps (heaps_lock) */
    bool          purge_hold;      /* the purge thread works on its arenas (heaps_lock) */
    unsigned      pins;            /* uses on loam's own behalf under way (heap_pin; heaps_lock) */
    char          name[32];        /* the config's, copied and made printable; "" for none */
};

/* ---- process ------------------------------------------------------------- */
extern LOAM_INTERNAL struct loam_heap loam_default_heap;
extern LOAM_INTERNAL unsigned loam_initialized;
LOAM_INTERNAL void loam_init_slow(void);
static inline void loam_ensure_init(void)
{
    if (LOAM_UNLIKELY(!AO_int_load_acquire(&loam_initialized)))
        loam_init_slow();
}
/* Guards the heap list, slot table and the cache lists of every heap against
 * heap destruction and thread exit. */
/* "0x... \"name\"", or the address alone for a heap with no name: how
 * messages name a heap. buf: HEAP_LABEL_MAX bytes. */
#define HEAP_LABEL_MAX 64
LOAM_INTERNAL const char *heap_label(const loam_heap_t *h, char *buf);
LOAM_INTERNAL void heaps_lock(void);
LOAM_INTERNAL void heaps_unlock(void);
/* heaps_lock held: wait until the purge thread is done with h's arenas (it
 * works on them without the lock); heaps_release_purge ends such a hold. */
LOAM_INTERNAL void heaps_wait_purge(loam_heap_t *h);
LOAM_INTERNAL void heaps_release_purge(loam_heap_t *h);
/* A use of h on loam's own behalf, outside the heap-list lock and outside
 * any call of the embedder's on h: a thread's exit detaching from h, a
 * fork parking in it. The embedder may be destroying h meanwhile (it is
 * done with it); loam_heap_destroy waits until no such use is under way.
 * heap_pin: false if h is not a live heap (being destroyed, or gone; only
 * its address is read). */
LOAM_INTERNAL bool heap_pin(loam_heap_t *h);
LOAM_INTERNAL void heap_unpin(loam_heap_t *h);
extern LOAM_INTERNAL struct loam_heap *loam_heaps;

/* ---- background purge (runtime/purge.c) ------------------------------------ */
extern LOAM_INTERNAL AO_t purge_asleep;
LOAM_INTERNAL void purge_poke_slow(void);
/* After a slow path on heap h, with no lock held: wake the purge thread (or
 * start it) if some arena began keeping memory for decay while it slept.
 * Collected heaps do not: their sweeps keep stamping slabs, so each of
 * their slow paths would wake it; their collections do, once each. */
/* loam_gc_alloc's blocks of 24, 40 and 56 bytes are 8-byte aligned (LOAM_ALIGN_8). */
static inline bool heap_align_8(const loam_heap_t *h)
{
    return (h->cfg.flags & LOAM_ALIGN_8) != 0;
}

static inline void purge_poke(const loam_heap_t *h)
{
    if (LOAM_UNLIKELY(AO_load(&alloc_decay_due)) && !__atomic_load_n(&h->gc, __ATOMIC_RELAXED))
        purge_poke_slow();
}
/* The owner of tc answers a flush request (runtime/purge.c). */
LOAM_INTERNAL void purge_answer(tcache_t *tc);
LOAM_INTERNAL void purge_after_fork_child(void);
/* A detached thread of loam's own (the purge thread, marking threads): it
 * takes no signal of the program's and carries `name`. stack: bytes, 0 for
 * the default. Returns 0 or pthread_create's error. pthread_create may
 * allocate (through loam when it is the malloc): hold no arena lock. */
LOAM_INTERNAL int background_thread_start(void *(*fn)(void *), void *arg, size_t stack, const char *name);

/* ---- options --------------------------------------------------------------- */
typedef struct loam_options {
    long mmap_threshold, arena_max, decay_ms, retain_max, verbose, track_requested, tcache_max;
    long tcache_budget;
    long purge_thread, huge_pages;
    long gc_growth, gc_min_bytes, gc_young_min, gc_markers, gc_parallel_min, gc_stress;
    int  track_requested_set;      /* set explicitly: applies to the default heap too */
} loam_options_t;
extern LOAM_INTERNAL loam_options_t loam_opts;
/* An option's value. loam_option_set stores atomically, and any thread
 * may read while another sets (relaxed: each value stands alone). */
#define loam_opt(name) __atomic_load_n(&loam_opts.name, __ATOMIC_RELAXED)
LOAM_INTERNAL void options_defaults(void);
LOAM_INTERNAL void options_from_env(void);

/* ---- errors ---------------------------------------------------------------- */
/* One line on stderr naming the fault and address, then the heap's reaction:
 * its error callback if set, else abort. h may be NULL (default heap's reaction). */
LOAM_INTERNAL void loam_fault(loam_heap_t *h, const char *fault, const void *addr, size_t size);
LOAM_INTERNAL void loam_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- heaps ------------------------------------------------------------------ */
LOAM_INTERNAL void heap_init_fields(loam_heap_t *h, const loam_config_t *cfg, bool is_default);
/* The calling thread's cache of kind k of h, made on first use (NULL: no
 * slot or no memory). Making one attaches the thread to a collected heap. */
LOAM_INTERNAL tcache_t *heap_thread_cache(loam_heap_t *h, unsigned kind);
/* The calling thread's caches of h go back (loam_thread_detach): its next
 * allocation from h takes the slow path, which attaches it again. */
LOAM_INTERNAL void heap_drop_my_caches(loam_heap_t *h);
/* The calling thread's caches of h leave its slots, into saved[] (per kind,
 * NULL: none), so that its allocations from h take the slow path; and come
 * back (gc/threads.c: a blocking bracket, where allocating is a fault). */
LOAM_INTERNAL void heap_hide_my_caches(loam_heap_t *h, tcache_t *saved[HEAP_KINDS]);
LOAM_INTERNAL void heap_show_my_caches(loam_heap_t *h, tcache_t *saved[HEAP_KINDS]);
/* Kind k's context, made on first use. */
LOAM_INTERNAL heap_kind_t *heap_kind(loam_heap_t *h, unsigned kind);
/* Every arena of h (all kinds): for (i = 0; (a = heap_arena_at(h, i)); i++). */
LOAM_INTERNAL arena_t *heap_arena_at(loam_heap_t *h, unsigned i);
/* Allocate n bytes of kind k aligned to align from h (slow path of every allocation). */
LOAM_INTERNAL void *alloc_from_heap(loam_heap_t *h, size_t n, size_t align, unsigned kind);
/* The same for the collector's allocation (loam_gc_alloc's slow path): a
 * small block (SMALL_MAX or less) comes from the cache's bump range first
 * (tcache.h), and a refill takes a new range. */
LOAM_INTERNAL void *alloc_from_heap_bump(loam_heap_t *h, size_t n, unsigned kind);
LOAM_INTERNAL void heap_thread_exit(void);
LOAM_INTERNAL void heap_caches_after_fork_child(void);
/* loam_heap_trim, walking at most `walk` free blocks to shrink sparse slabs
 * (loam_heap_trim: no bound). */
LOAM_INTERNAL size_t heap_trim(loam_heap_t *h, size_t walk);
/* An allocation of n bytes failed (attempt 0, 1, ...): first trim and retry
 * once, then call the oom callback (heaps with a limit) and retry while it
 * makes room, a bounded number of times. true: try again. */
LOAM_INTERNAL bool heap_out_of_memory(loam_heap_t *h, size_t n, unsigned attempt);

/* ---- allocation slow paths (runtime/alloc_api.c) ---------------------------- */
LOAM_INTERNAL void *alloc_malloc_slow(loam_heap_t *h, size_t n) LOAM_MALLOC_ATTR;
LOAM_INTERNAL void  alloc_free_slow(void *p);
LOAM_INTERNAL void *alloc_aligned(loam_heap_t *h, size_t align, size_t n);
LOAM_INTERNAL void *alloc_realloc(loam_heap_t *h, void *p, size_t n);
LOAM_INTERNAL size_t alloc_usable_size(const void *p);

/* ---- fast paths ----------------------------------------------------------- */

static inline __attribute__((always_inline)) void *alloc_malloc_fast(loam_heap_t *h, size_t n)
{
    if (LOAM_LIKELY(n <= SMALL_MAX)) {
        unsigned bin = tcache_small_bin[n];
        void *p = tcache_bin_pop(tcache_bin_at(loam_tls_cache[h->alloc_slot], bin));
        if (LOAM_LIKELY(p != NULL)) {
            mc_alloc(h, p, sizeclass_size[tcache_bin_class(bin)], 0);
            return p;
        }
    }
    return alloc_malloc_slow(h, n);
}

/* Every check that keeps a bad pointer out of a cache is here or in the slow
 * path: the address must be in a loam slab segment, at a block start, below
 * the slab's bump line, and not already free. Anything unusual goes to
 * alloc_free_slow, which names the fault.
 * A block of a draining slab (few blocks out, not its arena's allocation
 * slab) also goes the slow way, straight to its slab: cached blocks must not
 * pin slabs that could empty. Such a slab carries the no-cache slot
 * (slab_note_draining), so that costs no test here. */
static inline __attribute__((always_inline)) void alloc_free_fast(void *p)
{
#ifdef LOAM_MEMCHECK
    alloc_free_slow(p);         /* the block is unregistered only once it passed every check */
    return;
#endif
    uintptr_t a = (uintptr_t)p, g = a >> SEGMENT_SHIFT;
    if (LOAM_LIKELY(segkind_index_is_slabs(g))) {
        slab_t *s = segment_slab_of_kind_index(g, a);
        uintptr_t off = a - (uintptr_t)s->start;
        /* The cache at the slab's slot is this thread's cache of the slab's
         * heap, or one that refuses every push (the empty cache, a disowned
         * one); slabs of tracked heaps and draining slabs carry
         * TC_SLOT_NONE. No owner test. */
        tcache_t *tc = loam_tls_cache[AO_char_load(&s->owner_slot)];
        uintptr_t free_key = loam_free_key;
        if (LOAM_LIKELY(off * s->div_m < AO_int_load(&s->start_below) &&   /* slab_div_m */
                        ((free_block_t *)p)->freed_key != free_key &&
                        tcache_bin_push(tcache_bin_at(tc, s->cache_bin), p, free_key)))
            return;
    }
    alloc_free_slow(p);
}

#endif
