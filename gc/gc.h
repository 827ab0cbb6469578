/* gc/gc.h — the collector's internal interface.
 *
 * gc/ sits between runtime/ and alloc/: it reads the core through alloc.h
 * (segments, slabs, the segment map, side bits) and the heap through
 * runtime.h; the runtime calls the hooks below from its slow paths.
 *
 *   collect.c   a collection, top to bottom: stop, mark, weak/finalizers, sweep
 *   mark.c      marking: the mark stack, conservative words, loam_mark
 *   threads.c   attached threads, safepoints, stopping the world
 *   roots.c     root slots and ranges
 *   finalize.c  finalizers and weak references
 *   ephemeron.c ephemeron pairs (loam_mark_ephemeron): the fixpoint, the clearing
 *   generation.c LOAM_GENERATIONAL: sticky marks, the barrier's cards, minor or major
 *   api.c       the public collector calls and the runtime's hooks
 */
#ifndef LOAM_GC_H
#define LOAM_GC_H

#include "runtime/runtime.h"
#include "loam/inline.h"      /* loam_inline_class_t: a heap's size-class table */

#include <setjmp.h>

/* ---- attached threads ------------------------------------------------------ */
enum gc_thread_state { GC_RUNNING = 0, GC_PARKED = 1, GC_BLOCKING = 2, GC_COLLECTING = 3 };

/* One per thread that ever attached to a collected heap, shared by its
 * attachments: how a collection of any heap sees the thread wait inside
 * loam for another (threads.c says why and how). */
typedef struct gc_mutator {
    AO_t             waiting;      /* 1: waiting inside loam, stopped for every heap */
    AO_t             holds;        /* collections that counted it stopped so, not ended */
    AO_t             stop_asks;    /* collections of its heaps waiting for it to stop */
    unsigned         wait_depth;   /* the thread's own: nested waits */
    char            *stack_base;   /* highest address of the stack */
    char            *stack_sp;     /* lowest live address, saved when a wait begins */
    jmp_buf          regs;         /* callee-saved registers, saved when a wait begins */
    pthread_mutex_t  lock;         /* with cv: a hold or an ask ended */
    pthread_cond_t   cv;
    /* The collections that ask it to stop (lock): woken when it begins a
     * wait, which counts as stopped for them. Past GC_ASKERS_MAX, the
     * others find out by polling (threads.c, wait_for_parking). */
#define GC_ASKERS_MAX 8
    struct gc_state *askers[GC_ASKERS_MAX];
    /* In the child of fork: a record of a thread the child does not have,
     * listed once to be freed (gc_postfork). */
    bool             fork_gone;
    struct gc_mutator *fork_next;
} gc_mutator_t;

typedef struct gc_thread {
    loam_heap_t     *heap;         /* NULL once the heap is destroyed (atomic: the
                                      destroying thread writes other threads' records) */
    gc_mutator_t    *mut;          /* the thread's (its stack's base too) */
    char            *stack_sp;     /* lowest live address, saved when it stops */
    jmp_buf          regs;         /* callee-saved registers, saved when it stops */
    unsigned         state;        /* enum gc_thread_state; written under gc->lock */
    unsigned         blocking_depth;
    /* While blocking_depth > 0: the thread's caches of the heap, off its
     * slots (heap_hide_my_caches), so an allocation from the heap takes the
     * slow path, which names the fault (api.c, gc_alloc_slow_hook). */
    tcache_t        *hidden[HEAP_KINDS];
    bool             held;         /* counted stopped by its mutator's wait (gc->lock) */
    bool             asked;        /* in mut->stop_asks for this heap's stop (gc->lock) */
    struct gc_thread *next, *prev; /* the heap's threads (gc->lock) */
    struct gc_thread *thread_next; /* this thread's attachments */
} gc_thread_t;

/* ---- the mark stack ---------------------------------------------------------- */
/* Two words: the block, and its size with the kind in the low 3 bits (every
 * block size is a multiple of 8). */
typedef struct mark_entry {
    char   *obj;
    size_t  size_kind;
} mark_entry_t;
#define MARK_KIND_MASK ((size_t)7)

/* objmap.c: object address -> word (0: absent); caller holds gc->lock. */
typedef struct objmap_entry {
    uintptr_t key, value;
} objmap_entry_t;
typedef struct objmap {
    objmap_entry_t *e;
    size_t          cap, n;
} objmap_t;
LOAM_INTERNAL uintptr_t objmap_get(const objmap_t *m, uintptr_t key);
LOAM_INTERNAL bool      objmap_put(objmap_t *m, uintptr_t key, uintptr_t value);
LOAM_INTERNAL void      objmap_del(objmap_t *m, uintptr_t key);
LOAM_INTERNAL void      objmap_clear(objmap_t *m);
/* Emptied for about `expect` entries to come: a map an eighth full of that
 * or less (past 64 KiB) is released instead, so a spike's memory goes back. */
LOAM_INTERNAL void      objmap_clear_for(objmap_t *m, size_t expect);
LOAM_INTERNAL void      objmap_release(objmap_t *m);

typedef struct finalizer {
    void             *obj;
    loam_finalizer_fn fn;
    void             *data;
} finalizer_t;

/* A ready list one thread runs (gc_run_ready_finalizers), on its stack and
 * linked in its heap's state: the objects whose finalizers have not run
 * yet, from `next` on, stay roots of every collection meanwhile. */
typedef struct finalizer_batch {
    finalizer_t            *list;
    size_t                  n, cap;    /* cap: list's size, for meta_free */
    AO_t                    next;      /* the entry running now, or the next to run */
    struct finalizer_batch *link;      /* the heap's others (gc->lock) */
    pthread_t               thread;    /* the thread running it */
} finalizer_batch_t;

/* A target may lie anywhere inside its block: the block is what lives and
 * dies, and what loam_free names, so the references are found by it. */
struct loam_weak {
    loam_heap_t      *heap;
    AO_t              target;      /* read lock-free by loam_weak_get */
    uintptr_t         block;       /* the start of the target's block: its key in gc->weak_map */
    struct loam_weak *next, *prev; /* all of the heap's weak references */
    struct loam_weak *next_same;   /* the others into the same block (gc->weak_map) */
};

/* What trace and roots callbacks get: the marker that called them. */
struct marker;
struct loam_tracer {
    struct marker *m;
};

#define MARK_SLAB_CACHE 256

/* The resident part of an area markings use and then leave empty (a mark
 * stack, the shared pool), in entries: mark.c gives back what a spike
 * touched once markings stop needing it (spike_trim). */
typedef struct gc_spike {
    size_t   touched;              /* entries whose pages may be resident */
    size_t   need;                 /* the most the last `quiet` markings used, doubled */
    unsigned quiet;                /* markings in a row that used a quarter of touched or less */
} gc_spike_t;

/* One marking thread's state: the collecting thread's (gc->mk) and, while
 * marking runs in parallel, each helper's (mark.c). */
typedef struct marker {
    struct gc_state *gc;
    struct loam_tracer tracer;     /* tracer.m: this marker */
    /* Recently found slabs, by page: candidate w looks in entry
     * (w >> PAGE_SHIFT) % MARK_SLAB_CACHE (mark.c). */
    struct mark_slab_cache {
        uintptr_t   lo, span;      /* its blocks ever handed out: [lo, lo + span) */
        uint64_t    div_m;         /* its div_m */
        uint64_t   *bits;          /* its segment's side bits */
        uint32_t    size;          /* block size */
        uint32_t    tag;
        uint64_t   *abits;         /* its segment's age bits (generation.c), or NULL */
        uintptr_t   pad[2];
    } slabs[MARK_SLAB_CACHE];      /* 64 bytes an entry: its index is a shift */
    /* The entries filled since the last forget_slab: only those are
     * cleared, so a marking that meets few slabs (a small heap's) leaves
     * the other pages of the 16 KiB table untouched, and never resident. */
    uint64_t        slabs_filled[MARK_SLAB_CACHE / 64];
    mark_entry_t   *stack;
    size_t          sp, cap;
    /* How deep the stack may go this marking before push_slow notes it went
     * deeper (doubling, up to cap): at the marking's end, within a factor of
     * two of its deepest, which says whether the stack's resident pages are
     * far more than markings need (stack_trim). */
    size_t          reach;
    gc_spike_t      pages;         /* its resident pages against what markings use */
    /* push's one test for three rare cases: the stack is as deep as it
     * has been this marking, or full (limit: reach), or every block newly
     * marked must be looked up as an ephemeron key (watch; limit 0). */
    size_t          limit;
    bool            watch;
    bool            overflow;      /* a push was dropped: rescan marked blocks */
    bool            shared;        /* other markers run: mark bits are set atomically */
    bool            may_share;     /* helpers wait for work: give them some when hungry */
    bool            aging;         /* a minor collection: blocks it marks young age (generation.c) */
    size_t          marked_bytes;
    size_t          survivor_bytes;/* of marked_bytes: young blocks marked for the first time */
    size_t          atomic_bytes;  /* of marked_bytes: atomic blocks, marked but never scanned */
} marker_t;

/* An ephemeron pair a marker met with its key unmarked (ephemeron.c). */
typedef struct gc_ephemeron {
    void     **key, **value;       /* the fields, in the object traced */
    uintptr_t  block;              /* the key's block; 0 once the value is marked */
    size_t     next_same;          /* index + 1 of the next pair waiting for the same block */
} gc_ephemeron_t;

#define GC_PAUSE_RING 1024

typedef struct gc_state {
    loam_heap_t    *heap;
    pthread_mutex_t lock;          /* threads, roots, finalizers, weak refs, the stop */
    pthread_cond_t  parked_cv;     /* a thread stopped (or left) */
    pthread_cond_t  resume_cv;     /* the world restarts */
    AO_t            stop;          /* 1 while a collection wants or holds the world stopped */
    bool            collecting;
    bool            fork_held;     /* fork's prepare handler holds lock (gc_prefork_try) */
    gc_thread_t    *threads;

    /* roots */
    void         ***slots;
    size_t          nslots, cap_slots;
    struct root_range { char *start, *end; } *ranges;
    size_t          nranges, cap_ranges;

    /* finalizers (registration order; obj NULL: removed) and weak references */
    finalizer_t    *fins;
    size_t          nfins, cap_fins;
    objmap_t        fin_map;       /* object -> index in fins + 1 */
    objmap_t        weak_map;      /* block -> first weak reference into it */
    finalizer_t    *ready;         /* found unreachable, to run after the stop */
    size_t          nready, cap_ready;
    finalizer_batch_t *running;    /* ready lists threads are running now */
    /* object -> how many of its finalizers wait in ready or in a running
     * batch (not yet done): a loam_free of it, or its finalizer's removal,
     * must cancel them, and most frees find no entry here. */
    objmap_t        pending_map;
    loam_weak_t    *weaks;
    /* weak fields the markers met this marking (loam_mark_weak), in the
     * order met; appended under weak_fields_lock (helpers mark too) */
    void         ***weak_fields;
    size_t          nweak_fields, cap_weak_fields;
    pthread_mutex_t weak_fields_lock;
    /* Ephemeron pairs met this marking whose key was not marked then
     * (ephemeron.c), in the order met: appended under weak_fields_lock.
     * eph_map: key block -> index + 1 of the first pair that waits for it,
     * written by the collecting thread between drains only, so that any
     * marker reads it without a lock. */
    gc_ephemeron_t *eph;
    size_t          neph, cap_eph;
    size_t          eph_seen;      /* pairs the settling has looked at */
    size_t          eph_waiting;   /* of them, pairs in eph_map whose key is not marked yet */
    objmap_t        eph_map;
    bool            eph_watch;     /* markers look up each block they mark in eph_map */
    AO_t            eph_lost;      /* a wake-up was dropped (mark stack overflow): look again */

    /* marking: the collecting thread's marker (helpers add their bytes) */
    marker_t        mk;
    size_t          helper_marked; /* of mk.marked_bytes: by helpers, this marking */
    /* Parallel marking pays only with idle CPUs (mark.c, choose_parallel):
     * marking rates of both ways, in bytes per ns, and how long to stay serial. */
    double          rate_serial, rate_parallel;
    unsigned        serial_for;    /* eligible markings left to do alone */
    unsigned        serial_backoff;/* the next such stretch */
    unsigned        parallel_run;  /* parallel markings since the last serial probe */

    /* pacing */
    AO_t            alloc_since;   /* bytes handed to allocating threads since the last collection */
    AO_t            stress_count;  /* slow-path allocations, counted while gc_stress is set */
    size_t          live_after;

    /* generations (generation.c; LOAM_GENERATIONAL heaps) */
    bool            need_major;    /* marks cannot be trusted: the next collection is major */
    size_t          major_live;    /* live bytes after the last major collection */
    AO_t            old_freed;     /* bytes of old blocks loam_free'd since the last collection */
    size_t          survivor_bytes;/* of live_after: blocks the last collection kept young */
    AO_t            survivor_freed;/* of those, bytes loam_free'd since */
    size_t          minor_collections;
    unsigned        minors_in_a_row;   /* since the last major collection */
    /* Scanning work, for parallel marking (mark.c): bytes of blocks a
     * marking scans, not the atomic ones it only marks (GCBench's 4 MB
     * array of doubles is one bit to set). */
    size_t          minor_scanned; /* bytes the last minor collection scanned */
    size_t          major_atomic;  /* atomic bytes the last major collection marked */
    size_t          mark_expect;   /* bytes this marking should scan */
    AO_t            next_mark_max; /* the most the next one should */

    /* statistics */
    size_t          collections, bytes_swept, finalizers_run, weak_cleared, ephemerons_cleared;
    uint64_t        pause_total_ns, pause_max_ns;
    uint64_t        pauses[GC_PAUSE_RING];
    size_t          npauses;
} gc_state_t;

/* ---- hooks the runtime calls ---------------------------------------------------- */
/* Slow path of every allocation from a heap with gc state: safepoint, implicit
 * attach, and a collection when pacing says so. false: the allocation is
 * refused (a fault: the thread is inside a blocking bracket of the heap;
 * errno is set). */
LOAM_INTERNAL bool gc_alloc_slow_hook(loam_heap_t *h);
/* Every allocation slow path, of any heap, and loam_safepoint: a collection
 * of a heap this thread is attached to waits for it (threads.c). Inline:
 * one thread-local load when none does. */
extern LOAM_INTERNAL __thread gc_mutator_t *gc_my_mutator;
LOAM_INTERNAL void gc_answer_stop_asks_slow(gc_mutator_t *m);
static inline void gc_answer_stop_asks(void)
{
    gc_mutator_t *m = gc_my_mutator;
    if (LOAM_UNLIKELY(m && AO_load(&m->stop_asks)))
        gc_answer_stop_asks_slow(m);
}
LOAM_INTERNAL void gc_note_refill(loam_heap_t *h, tcache_t *tc, unsigned cls);
/* The option gc_stress (api.c): does a collected heap's allocation skip the
 * thread cache, so that every one takes the slow path, and is counted? */
static inline bool gc_stressed(const loam_heap_t *h)
{
    return LOAM_UNLIKELY(loam_opt(gc_stress) != 0) && h->mode == LOAM_GC;
}
LOAM_INTERNAL void gc_note_alloc(loam_heap_t *h, size_t bytes);
/* Bytes a refill counted that go back unused (a dropped cache's ranges). */
LOAM_INTERNAL void gc_note_unused(loam_heap_t *h, size_t bytes);
LOAM_INTERNAL void gc_thread_cache_made(loam_heap_t *h);
LOAM_INTERNAL void gc_heap_destroy(loam_heap_t *h);
/* Is this thread inside one of h's finalizers? (loam_heap_destroy refuses.) */
LOAM_INTERNAL bool gc_in_finalizer_of(loam_heap_t *h);
LOAM_INTERNAL void gc_thread_exit(void);
LOAM_INTERNAL int  gc_set_mode(loam_heap_t *h, loam_mode_t m);
LOAM_INTERNAL bool gc_collect_for_memory(loam_heap_t *h);   /* at the limit: true if it ran */
LOAM_INTERNAL void gc_fill_stats(loam_heap_t *h, loam_stats_t *s);
LOAM_INTERNAL void gc_forget_block(loam_heap_t *h, void *block);  /* loam_free of a block */
/* loam_free of block `index` of slab s: the fault's message if the block is
 * not the caller's to free, else NULL. Refused: the last collection found it
 * unreachable and its sweep has not reached it yet, or it waits in a
 * thread's bump range (either way freeing it would hand it out twice). */
LOAM_INTERNAL const char *gc_free_refused(loam_heap_t *h, slab_t *s, size_t index);
/* loam_free of large block l (before it is unmapped or cached). */
LOAM_INTERNAL void gc_large_freed(loam_heap_t *h, large_t *l);
LOAM_INTERNAL void gc_install_hooks(void);                          /* once, at process start */
LOAM_INTERNAL void gc_alloc_tables_init(void);                      /* by gc_install_hooks */
/* The size-class table of a heap with these config flags (heap.gc_class_row),
 * and one that sends every request to loam_gc_alloc (before heap_init_fields). */
LOAM_INTERNAL const loam_inline_class_t *gc_class_row_for(unsigned flags);
extern LOAM_INTERNAL const loam_inline_class_t gc_class_row_none[SMALL_MAX + 1];
/* The purge thread's turn at a collected heap's arenas (runtime/purge.c):
 * no collection may start meanwhile, since one reads segment headers
 * without arena locks. false: a collection runs, or the lock is busy. */
LOAM_INTERNAL bool gc_purge_begin(loam_heap_t *h);
LOAM_INTERNAL void gc_purge_end(loam_heap_t *h);
/* fork (runtime/init.c). With the heap-list lock held: take every collected
 * heap's lock, none in a collection (a child must not inherit one half
 * done, nor a lock held by a thread it does not have); false: one was
 * busy, none is held. Then, without the heap-list lock, gc_prefork_wait
 * lets a collection that waits for this thread go on, and the caller tries
 * again. After the fork (heap-list lock held), gc_postfork releases them;
 * in the child it first forgets every other thread's attachment, mutator
 * record and finalizer batch (those threads do not exist there: a
 * collection would wait for them, scan their frozen stacks, keep their
 * batches' objects for ever). */
LOAM_INTERNAL bool gc_prefork_try(void);
LOAM_INTERNAL void gc_prefork_wait(void);
/* A marking helper works for gc's collection (NULL: for none), so that a
 * fork from its trace callbacks is known for what it is. */
LOAM_INTERNAL void gc_helper_marks_for(gc_state_t *gc);
LOAM_INTERNAL void gc_postfork(bool child);

/* ---- inside gc/ ----------------------------------------------------------------- */
LOAM_INTERNAL gc_state_t *gc_state_get(loam_heap_t *h);          /* made on first use */
/* full: a major collection even for a generational heap. */
LOAM_INTERNAL void        gc_collect(loam_heap_t *h, bool full);
/* threads.c */
LOAM_INTERNAL gc_thread_t *gc_self(gc_state_t *gc);               /* NULL: not attached */
/* The calling thread is between loam_enter_blocking and loam_leave_blocking
 * of h, a collected heap: it counts as stopped, and must not use the heap. */
LOAM_INTERNAL bool gc_in_blocking_bracket(loam_heap_t *h);
LOAM_INTERNAL gc_thread_t *gc_attach(gc_state_t *gc);
LOAM_INTERNAL void        gc_park(gc_state_t *gc);                 /* if a stop is requested */
LOAM_INTERNAL bool        gc_stop_world(gc_state_t *gc);           /* lock held; false: another collects */
LOAM_INTERNAL void        gc_restart_world(gc_state_t *gc);        /* lock held */
LOAM_INTERNAL void        gc_scan_thread_stacks(gc_state_t *gc);
/* Around a collection (stopping the world to restarting it) the calling
 * thread waits inside loam: it counts as stopped for every other heap. */
LOAM_INTERNAL void        gc_wait_begin(void);
LOAM_INTERNAL void        gc_wait_end(void);
/* The heap is destroyed: its attachments go (the caller's) or say so. Lock held. */
LOAM_INTERNAL void        gc_forget_threads(gc_state_t *gc);
/* Clear the mark bits of a slab, or of the whole heap (world stopped). */
LOAM_INTERNAL void        gc_clear_slab_marks(segment_t *seg, slab_t *s);
/* Mark and age bits are one per 16-byte granule of a segment: a block's is
 * the granule its start falls in. Block sizes are multiples of 8 bytes of
 * at least 16 (sizeclass.c), so no two blocks start in one granule; a block
 * of an odd multiple of 8 bytes (24, 40, 56) may start halfway into one.
 * Walks over a slab's blocks therefore count in half granules of 8 bytes,
 * where every start is whole: block k of slab s starts at half granule
 * gc_slab_half0(s) + k * gc_slab_halfstep(s). */
#define GC_HALF_GRANULE 8u
static inline size_t gc_slab_half0(const slab_t *s)
{
    return ((uintptr_t)s->start & SEGMENT_MASK) / GC_HALF_GRANULE;
}
static inline size_t gc_slab_halfstep(const slab_t *s)
{
    return s->block_size / GC_HALF_GRANULE;
}
static inline size_t gc_block_granule(const slab_t *s, size_t k)
{
    return (gc_slab_half0(s) + k * gc_slab_halfstep(s)) >> 1;
}
/* Is any of the mark bits [lo, hi] set? (A dirty card's blocks, a slab's.) */
static inline bool gc_any_bit_in(const uint64_t *bits, size_t lo, size_t hi)
{
    size_t wl = lo >> 6, wh = hi >> 6;
    uint64_t first = bits[wl] & (~(uint64_t)0 << (lo & 63));
    uint64_t last_mask = ~(uint64_t)0 >> (63 - (hi & 63));
    if (wl == wh)
        return (first & last_mask) != 0;
    if (first)
        return true;
    for (size_t w = wl + 1; w < wh; w++)
        if (bits[w])
            return true;
    return (bits[wh] & last_mask) != 0;
}
LOAM_INTERNAL void        gc_clear_all_marks(gc_state_t *gc);
/* mark.c */
LOAM_INTERNAL void  gc_mark_begin(gc_state_t *gc);                 /* world stopped, before any mark */
/* Start the marking threads a collection of h will use (no lock held). */
LOAM_INTERNAL void  gc_markers_prepare(loam_heap_t *h);
LOAM_INTERNAL void  gc_markers_after_fork_child(void);
LOAM_INTERNAL void  gc_mark_word(gc_state_t *gc, uintptr_t w);     /* conservative, interior ok */
LOAM_INTERNAL void  gc_mark_precise(gc_state_t *gc, uintptr_t w);  /* the embedder's: a live object */
LOAM_INTERNAL void  gc_mark_range(gc_state_t *gc, const void *start, const void *end);
LOAM_INTERNAL void  gc_mark_drain(gc_state_t *gc);
/* The serial/parallel choice of an eligible marking, and what it learns
 * from one done (mark.c, "Parallel marking is a bet on idle CPUs"). */
LOAM_INTERNAL bool  gc_mark_choose_parallel(gc_state_t *gc);
LOAM_INTERNAL void  gc_mark_note_rate(gc_state_t *gc, bool parallel, size_t bytes, uint64_t ns);
LOAM_INTERNAL bool  gc_is_marked(gc_state_t *gc, const void *obj);
/* The block of heap h that holds p (its start, or an address inside it),
 * or 0: no block, or another heap's. *ai describes p. */
static inline uintptr_t gc_block_of_heap(const loam_heap_t *h, const void *p, addr_info_t *ai)
{
    addr_classify(p, ai);
    if (ai->kind != ADDR_BLOCK && ai->kind != ADDR_INTERIOR)
        return 0;
    const arena_t *a = ai->large ? ai->large->arena : ai->slab->arena;
    return a->owner == h ? (uintptr_t)ai->block : 0;
}
/* The block ai names is marked (read atomically: other markers may set it). */
LOAM_INTERNAL bool  gc_block_marked(const addr_info_t *ai);
/* Watch for ephemeron keys, or stop: the collecting thread's marker and the
 * helpers that join a drain from now on (ephemeron.c). */
LOAM_INTERNAL void  gc_mark_watch(gc_state_t *gc, bool on);
LOAM_INTERNAL void  gc_mark_stack_release(gc_state_t *gc);
/* After a marking: the stack's pages past what markings need go back. */
LOAM_INTERNAL void  gc_mark_end(gc_state_t *gc);
/* Visit every block of the heap that is allocated (not free). */
typedef void (*gc_block_fn)(gc_state_t *gc, char *block, size_t size, unsigned kind, bool marked, void *arg);
LOAM_INTERNAL void  gc_for_each_block(gc_state_t *gc, gc_block_fn fn, void *arg);
/* A block already marked (an old one on a dirty card) is scanned again. */
LOAM_INTERNAL void  gc_mark_rescan(gc_state_t *gc, char *block, size_t size, unsigned kind);
/* generation.c */
LOAM_INTERNAL bool   gc_generational(const gc_state_t *gc);
#define GC_MINORS_PER_MAJOR 64      /* minor collections in a row at most (generation.c) */
LOAM_INTERNAL bool   gc_choose_minor(gc_state_t *gc, bool full);   /* world stopped */
LOAM_INTERNAL size_t gc_old_bytes(const gc_state_t *gc);
LOAM_INTERNAL size_t gc_minor_old_live(const gc_state_t *gc, bool aging);   /* world stopped */
LOAM_INTERNAL size_t gc_young_allowance(const gc_state_t *gc);  /* allocated between collections */
LOAM_INTERNAL size_t gc_old_allowance(const gc_state_t *gc);    /* old garbage between major ones */
LOAM_INTERNAL size_t gc_growth_percent(const gc_state_t *gc);   /* the heap's pacing (api.c) */
LOAM_INTERNAL size_t gc_floor_bytes(const gc_state_t *gc);
LOAM_INTERNAL void   gc_mark_remembered(gc_state_t *gc);           /* minor: old blocks on dirty cards */
LOAM_INTERNAL void   gc_begin_major(gc_state_t *gc);               /* generational major: no marks, no cards */
LOAM_INTERNAL void   gc_forget_generations(gc_state_t *gc);        /* the heap turns manual */
/* Promotion at the second survival (generation.c): a bitmap per slab
 * segment like the marks, a bit per granule, set for the blocks the last
 * minor collection kept young (survivors, which also carry their mark
 * between collections). NULL: none made yet, all clear. Its word 0 (the
 * header page's granules, never a block's) holds the pages that may have
 * age bits. */
static inline uint64_t *gc_age_bits(segment_t *seg)
{
    return (uint64_t *)seg->upper_side;
}
LOAM_INTERNAL bool   gc_age_begin(gc_state_t *gc);     /* minor, before marking: false, no aging */
LOAM_INTERNAL void   gc_age_end(gc_state_t *gc);       /* minor, after every decision on marks */
LOAM_INTERNAL void   gc_age_clear(segment_t *seg, size_t first, size_t n);   /* granules of a slab */
/* roots.c */
LOAM_INTERNAL void  gc_mark_roots(gc_state_t *gc);
/* finalize.c */
LOAM_INTERNAL void  gc_clear_dead_weaks(gc_state_t *gc);
/* World stopped, after a drain: the weak fields met from index `from` on
 * whose blocks are unmarked become NULL. Returns the index to go on from
 * (the finalizable objects' marking meets more). */
LOAM_INTERNAL size_t gc_clear_dead_weak_fields(gc_state_t *gc, size_t from);
LOAM_INTERNAL void  gc_find_ready_finalizers(gc_state_t *gc);
LOAM_INTERNAL size_t gc_run_ready_finalizers(gc_state_t *gc);   /* returns how many ran */
/* Roots (gc_mark_roots): the objects whose finalizers wait to run. */
LOAM_INTERNAL void  gc_mark_waiting_finalizables(gc_state_t *gc);
/* In the child of fork (lock held): the batches of threads the child does
 * not have are dropped; the entries they had not reached are queued again. */
LOAM_INTERNAL void  gc_forget_dead_batches(gc_state_t *gc);
/* A meta_alloc'd array (at array_at, a pointer to its pointer) of *cap
 * elements of elem bytes, all in use, doubled (first elements the first
 * time), its contents kept. false: out of memory, the array unchanged. */
LOAM_INTERNAL bool  gc_array_grow(void *array_at, size_t *cap, size_t elem, size_t first);
/* An array whose content lives for one marking (weak fields, ephemeron
 * pairs), after a marking that used `used` of it: released when it is over
 * 64 KiB and used a quarter of it or less (the memory of a spike goes back;
 * the next marking grows it again). */
LOAM_INTERNAL void  gc_array_trim(void *array_at, size_t *cap, size_t elem, size_t used);
/* ephemeron.c */
/* A marker newly marked `block` while watching: index + 1 of the first pair
 * waiting for that key (a wake-up to push), or 0. Lock-free: eph_map holds
 * still during a drain. */
static inline size_t gc_ephemeron_waiting(const gc_state_t *gc, const char *block)
{
    return gc->eph_map.n ? (size_t)objmap_get(&gc->eph_map, (uintptr_t)block) : 0;
}
/* A marker pops a wake-up: the pairs from `head` on, whose key is marked,
 * get their values marked. */
LOAM_INTERNAL void   gc_ephemerons_wake(marker_t *m, size_t head);
/* World stopped, after a drain: the fixpoint. Pairs whose key is marked get
 * their values marked, and the marking goes on, until no pair changes. */
LOAM_INTERNAL void   gc_ephemerons_settle(gc_state_t *gc);
/* The end of a marking: the pairs whose key stays unmarked are cleared
 * (clear: a collection) or forgotten (a leak check); the watch stops. */
LOAM_INTERNAL void   gc_ephemerons_end(gc_state_t *gc, bool clear);
/* collect.c */
LOAM_INTERNAL size_t gc_sweep(gc_state_t *gc, bool minor);
/* Sweep every pending slab of h now (world running or not). */
LOAM_INTERNAL void   gc_finish_sweep(loam_heap_t *h);
LOAM_INTERNAL uint64_t gc_now_ns(void);

#endif
