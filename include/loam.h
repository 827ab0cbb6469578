/* loam — a language-runtime heap with an optional garbage collector.
 *
 * This is the one public header. Everything here is stable API, which
 * outside programs rely on; docs/embedding.md walks through it.
 *
 * Quick tour:
 *   loam_heap_t *h = loam_heap_new(NULL);          // a manual heap
 *   void *p = loam_malloc(h, 100);
 *   loam_free(p);                                   // heap found from p
 *   loam_heap_print_stats(h, stdout, LOAM_STATS_TEXT);
 *   loam_heap_destroy(h);                           // gives everything back
 */
#ifndef LOAM_H
#define LOAM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LOAM_API __attribute__((visibility("default")))
#define LOAM_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define LOAM_API
#define LOAM_MALLOC_ATTR
#endif

#define LOAM_VERSION_MAJOR 0
#define LOAM_VERSION_MINOR 1
#define LOAM_VERSION_PATCH 0

typedef struct loam_heap   loam_heap_t;     /* opaque */
typedef struct loam_tracer loam_tracer_t;   /* opaque, handed to callbacks */
typedef struct loam_weak   loam_weak_t;     /* opaque weak reference */

typedef enum { LOAM_MANUAL = 0, LOAM_GC = 1 } loam_mode_t;
typedef enum { LOAM_CONSERVATIVE = 0, LOAM_ATOMIC = 1, LOAM_TRACED = 2 } loam_kind_t;
/* loam_config_t.flags:
 *   LOAM_NO_STACK_SCAN   thread stacks and registers are not roots;
 *   LOAM_PARALLEL_MARK   collections mark on several threads (option
 *                        gc_markers): the trace callback may then run on
 *                        loam's marking threads, several at once, so it must
 *                        only read the object and call loam_mark (no
 *                        unsynchronised writes, no loam calls);
 *   LOAM_GENERATIONAL    most collections are minor: they mark only what was
 *                        allocated since the last collection (objects that
 *                        survive one collection are old and stay marked until
 *                        the next major collection). The embedder must then call
 *                        loam_write_barrier after every store of a pointer into
 *                        a collected object, except into an object allocated by
 *                        this thread with no allocation or safepoint since. A
 *                        block loam_realloc returns in place is not new: it
 *                        may be old, and stores into it need the barrier;
 *   LOAM_ALIGN_8         loam_gc_alloc rounds requests of 17-24, 33-40 and
 *                        49-56 bytes to blocks of 24, 40 and 56 bytes, not 32,
 *                        48 and 64 (so does loam_realloc when it moves a
 *                        traced or atomic block): those blocks are 8-byte
 *                        aligned only (every other block, loam_malloc's
 *                        included, stays 16-byte aligned). No C type of such
 *                        a size needs more; a request computed from a struct
 *                        with a 16-byte-aligned member plus a tail (a
 *                        flexible array member) may, and should then be
 *                        rounded up to 16 by the caller. A 24-byte cons takes
 *                        24 bytes instead of 32. */
enum { LOAM_NO_STACK_SCAN = 1u << 0, LOAM_PARALLEL_MARK = 1u << 1, LOAM_GENERATIONAL = 1u << 2,
       LOAM_ALIGN_8 = 1u << 3 };
enum { LOAM_STATS_TEXT = 0, LOAM_STATS_JSON = 1 };

typedef void (*loam_trace_fn)(void *obj, loam_tracer_t *t, void *user);
typedef void (*loam_roots_fn)(loam_tracer_t *t, void *user);
typedef void (*loam_oom_fn)(loam_heap_t *h, size_t request, void *user);
typedef void (*loam_error_fn)(loam_heap_t *h, const char *message, void *addr, void *user);
typedef void (*loam_finalizer_fn)(void *obj, void *data);
typedef void (*loam_leak_fn)(void *block, size_t size, void *user);

#define LOAM_GC_GROWTH_MAX 100000u   /* gc_growth's largest value, here and as an option */

typedef struct loam_config {      /* all zero: a manual heap with defaults */
    loam_mode_t   mode;
    size_t        limit;          /* bytes of committed memory; 0 = no limit */
    unsigned      flags;
    loam_trace_fn trace;          /* for LOAM_TRACED objects */
    loam_roots_fn roots;          /* embedder's roots, called at each collection */
    loam_oom_fn   oom;            /* called when the limit is reached (not again
                                     for the callback's own allocations from the
                                     heap: they get NULL if it is still full); if
                                     it made room (loam_free, or loam_gc_collect
                                     after dropping references), the allocation
                                     is tried again */
    loam_error_fn error;          /* NULL: print the message and abort */
    void         *user;           /* passed to every callback */
    /* Collected heaps' pacing, this heap's own (0: the process-wide options,
     * loam_option_set): allocation between collections, in percent of the
     * live heap (like GOGC), and at least this many bytes (the option
     * gc_min_bytes, or gc_young_min for a LOAM_GENERATIONAL heap). */
    unsigned      gc_growth;      /* at most LOAM_GC_GROWTH_MAX */
    size_t        gc_min_bytes;
    /* Shown in statistics, fault messages and warnings beside the heap's
     * address (copied: its first 31 bytes, less a UTF-8 character they would
     * cut; a quote, a backslash, a control character or a byte that is not
     * UTF-8 reads '?'). NULL: none. */
    const char   *name;
} loam_config_t;

/* ---- heaps ------------------------------------------------------------- */
/* NULL cfg: defaults. NULL with errno EINVAL for a bad mode, an unknown flag or
 * a gc_growth past LOAM_GC_GROWTH_MAX; ENOMEM if out of memory. */
LOAM_API loam_heap_t *loam_heap_new(const loam_config_t *cfg);
/* loam_heap_destroy releases every block. Not from inside one of the heap's
 * own finalizers or its oom callback: a fault (the error callback, else
 * abort), and the heap is left as it was. */
LOAM_API void         loam_heap_destroy(loam_heap_t *h);         /* releases every block */
LOAM_API loam_heap_t *loam_heap_default(void);                   /* the process heap, manual */
LOAM_API loam_heap_t *loam_heap_of(const void *p);               /* NULL: not a loam block */
LOAM_API int          loam_heap_set_mode(loam_heap_t *h, loam_mode_t m);   /* 0 on success */
LOAM_API loam_mode_t  loam_heap_mode(const loam_heap_t *h);      /* LOAM_MANUAL for NULL */
/* Hand every free page run of the heap back to the OS now, without waiting
 * for decay_ms (like malloc_trim). Returns the bytes decommitted. */
LOAM_API size_t       loam_heap_trim(loam_heap_t *h);

/* ---- allocation --------------------------------------------------------
 * h is a heap: loam_heap_default() for the process's. NULL is none, and the
 * allocation calls (loam_gc_alloc too) do not test for it on their fast
 * path; the other calls that take a heap do nothing with NULL. */
LOAM_API void  *loam_malloc(loam_heap_t *h, size_t n) LOAM_MALLOC_ATTR;
LOAM_API void  *loam_calloc(loam_heap_t *h, size_t count, size_t n) LOAM_MALLOC_ATTR;
LOAM_API void  *loam_realloc(loam_heap_t *h, void *p, size_t n);
/* align: a power of two (else NULL, errno EINVAL) up to 2^40 (else NULL, errno
 * ENOMEM). A block loam_realloc moves is only 16-byte aligned, as any block. */
LOAM_API void  *loam_aligned_alloc(loam_heap_t *h, size_t align, size_t n) LOAM_MALLOC_ATTR;
LOAM_API void   loam_free(void *p);                              /* heap found from p */
LOAM_API size_t loam_usable_size(const void *p);

/* ---- collector (collected heaps) ---------------------------------------
 * A heap made with mode = LOAM_GC (or switched with loam_heap_set_mode) frees
 * blocks nobody can reach. Reachability starts at the roots:
 *   - the config's roots callback, which calls loam_mark on each root;
 *   - slots registered with loam_root_add (precise: the slot holds a block
 *     start or NULL) and ranges with loam_root_add_range (every aligned word
 *     is a candidate pointer);
 *   - the stacks and registers of attached threads, scanned conservatively
 *     (unless flags has LOAM_NO_STACK_SCAN); interior pointers count.
 * From a reached block the collector follows its pointers by kind:
 *   LOAM_ATOMIC        no pointers (strings, numbers): never scanned;
 *   LOAM_CONSERVATIVE  every aligned word may be a pointer (interior too);
 *   LOAM_TRACED        the config's trace callback reports each pointer field
 *                      with loam_mark (precise: block starts or NULL).
 * loam_gc_alloc returns NULL with errno EINVAL for a kind not of these three,
 * and for LOAM_TRACED in a collected heap whose config has no trace callback
 * (a manual heap records the kind, but loam_heap_set_mode then refuses, -1
 * with EINVAL, to make it collected).
 * loam_malloc on a collected heap gives a LOAM_CONSERVATIVE block; a block
 * loam_realloc moves keeps its kind.
 * loam_gc_alloc zero-fills CONSERVATIVE and TRACED blocks (a trace callback
 * may see a fresh object before the embedder initialised it: all zero bytes
 * must read as "no pointers"); ATOMIC blocks are not cleared.
 * Collections start at allocations (when allocation since the last one
 * passes gc_growth percent of the live heap, at least gc_min_bytes, or at the
 * heap's limit; the config's fields of those names, else the options) and at
 * loam_gc_collect. loam_free of a collected block
 * reclaims it at once. */
LOAM_API void  *loam_gc_alloc(loam_heap_t *h, size_t n, loam_kind_t kind) LOAM_MALLOC_ATTR;
LOAM_API void   loam_gc_collect(loam_heap_t *h);
/* A heap's own pacing from now on, as the config's gc_growth and
 * gc_min_bytes (0: the options): a program entering a phase of its own (a
 * game loading a level, a server between requests) may change it. 0, or -1
 * with errno EINVAL for a gc_growth past LOAM_GC_GROWTH_MAX. */
LOAM_API int    loam_heap_set_gc_pacing(loam_heap_t *h, unsigned gc_growth, size_t gc_min_bytes);
LOAM_API void   loam_mark(loam_tracer_t *t, void *p);            /* from trace/roots callbacks */
/* From a trace or roots callback: a weak field. The pointer in *field does
 * not keep its block alive; when a collection finds that block unreachable,
 * it sets *field to NULL before the world restarts (and before any
 * finalizer runs, as for loam_weak_new). field must stay where it is until
 * the collection ends: a field of the object being traced, or a static. A
 * value that is no block of the heap (NULL, a tagged integer, static data)
 * is left as it is. In a generational heap a store into an old object's
 * weak field needs loam_write_barrier, as any pointer store. Weak-valued
 * caches and symbol tables need no handle or finalizer per entry this way. */
LOAM_API void   loam_mark_weak(loam_tracer_t *t, void **field);
/* From a trace or roots callback: an ephemeron pair of fields in the object
 * being traced. The value in *value_field is kept alive only while the key
 * in *key_field is reachable some other way (not through this pair's value,
 * nor through other pairs' values whose keys are not reachable). When a
 * collection finds the key dead, it clears both fields (stores NULL) before
 * the world restarts and before finalizers run; counted in the statistics'
 * gc_ephemerons_cleared. A key that only finalization keeps alive (it waits
 * for its finalizer, or only such an object reaches it) counts as alive in
 * that collection: the pair and its value stay, and go at the first
 * collection after the finalizer ran that finds the key dead. A key that is
 * no block of the heap (NULL, a tagged integer, static data, another heap's
 * block) is always alive: the value is then marked as an ordinary field. An
 * address inside a block stands for the block (key and value alike). Both
 * fields must stay where they are until the collection ends. In a
 * generational heap a store into an old object's ephemeron field needs
 * loam_write_barrier, as any pointer store. loam_leak_check clears no pair.
 * For weak-keyed tables (Lua's ephemeron tables, JavaScript's WeakMap). */
LOAM_API void   loam_mark_ephemeron(loam_tracer_t *t, void **key_field, void **value_field);
/* LOAM_GENERATIONAL heaps: `where` (any address inside a collected object)
 * was just written with a pointer. Cheap (no lock, one byte stored); any other
 * address is ignored, so it may be called for every pointer store. Old objects
 * are unreachable garbage only to major collections: loam_gc_collect,
 * collections at the heap's limit, and those pacing chooses when the old
 * objects have grown by a third of gc_growth percent since the last major
 * one (at least gc_young_min bytes). */
LOAM_API void   loam_write_barrier(const void *where);
LOAM_API void   loam_root_add(loam_heap_t *h, void **slot);      /* precise root slot */
LOAM_API void   loam_root_remove(loam_heap_t *h, void **slot);
LOAM_API void   loam_root_add_range(loam_heap_t *h, void *start, void *end);   /* conservative */
LOAM_API void   loam_root_remove_range(loam_heap_t *h, void *start);
/* Threads using a collected heap are attached to it (implicitly by their
 * first allocation from it). An attached thread stops for collections at its
 * allocations and at loam_safepoint; around waits that do not allocate (join,
 * locks, I/O) it brackets loam_enter_blocking / loam_leave_blocking, and must
 * neither touch the heap's blocks nor allocate from the heap in between
 * (either would race with a collection; an allocation is a fault: abort,
 * or NULL with errno EINVAL if the heap's error callback returns; so are
 * loam_free of h's blocks, which then frees nothing, and loam_gc_collect of
 * h, which then does not collect). Brackets nest; on a thread
 * not attached to h they do nothing. A thread attached to several heaps
 * stops for any of them at an allocation slow path of any heap (malloc's
 * too), and counts as stopped for all of them while it waits inside loam for
 * one (collecting it, or stopped for its collection). */
LOAM_API void   loam_thread_attach(loam_heap_t *h);
LOAM_API void   loam_thread_detach(loam_heap_t *h);
LOAM_API void   loam_safepoint(loam_heap_t *h);
LOAM_API void   loam_enter_blocking(loam_heap_t *h);             /* counts as stopped until ... */
LOAM_API void   loam_leave_blocking(loam_heap_t *h);
/* fn(obj, data) runs once, after the collection that found obj unreachable,
 * in the collecting thread with the world running; obj and everything it
 * reaches stay alive until then (it may store obj somewhere: resurrection).
 * Finalizers of the objects one collection finds unreachable run in the order
 * they were set; a finalized object is freed by a later collection if it is
 * still unreachable then (never finalized twice). Returns 0, or -1 (errno
 * EINVAL) if obj is not a block of h or, for a non-NULL fn, h is not collected
 * now; ENOMEM if out of memory. fn NULL removes the finalizer, in either mode:
 * a finalizer set while h was collected outlives a switch to manual and runs
 * after the switch back unless removed. loam_free of obj removes it too. Both
 * hold also once a collection has queued it (from another finalizer of that
 * collection): it does not run. */
LOAM_API int    loam_finalizer_set(loam_heap_t *h, void *obj, loam_finalizer_fn fn, void *data);
/* For shutdown, before loam_heap_destroy (which runs no finalizer), as
 * lua_close does: runs, in the calling thread, the finalizer of every object
 * of h that has one, reachable or not, in the order they were set, then
 * those the finalizers set meanwhile, until none is left (a finalizer that
 * sets one again each time it runs keeps it going). Each runs once; the
 * objects stay until a collection finds them unreachable, or h is destroyed.
 * Either mode. Returns how many ran; out of memory to queue some, it sets
 * errno to ENOMEM and leaves those set. Inside the calling thread's
 * loam_enter_blocking bracket of a collected h it is a fault: nothing runs
 * (0, errno EINVAL, if the error callback returns). */
LOAM_API size_t loam_finalize_all(loam_heap_t *h);
/* A reference to target that does not keep it alive. target is NULL (a
 * reference to nothing) or an address in a block of h, at its start or
 * inside it: as for conservative scanning, an interior address stands for
 * its block, and the block is what the reference follows. loam_weak_get
 * gives back target itself until the reference is cleared, then NULL. It
 * is cleared when a collection finds the block unreachable (before any
 * finalizer runs), when h is destroyed, and when loam_free frees the block
 * (or loam_realloc moves it).
 * NULL with errno EINVAL if h is NULL, if target is in no block of h, or in
 * a small block whose free skips the collector (of the default heap, or of
 * one made manual with the option track_requested=0 and never collected);
 * ENOMEM if out of memory. loam_weak_free releases the reference, before or after
 * it was cleared or its heap destroyed. */
LOAM_API loam_weak_t *loam_weak_new(loam_heap_t *h, void *target);
LOAM_API void        *loam_weak_get(loam_weak_t *w);             /* NULL once the target died */
LOAM_API void         loam_weak_free(loam_weak_t *w);
/* Manual heaps: mark from the roots and report each block that is
 * unreachable but was never freed; frees nothing. Returns the count; 0 with
 * errno EINVAL for NULL or a collected heap (its unreachable blocks are
 * garbage, not leaks). */
LOAM_API size_t loam_leak_check(loam_heap_t *h, loam_leak_fn report, void *user);

/* ---- statistics -------------------------------------------------------- */
typedef struct loam_stats {       /* more fields welcome; these stay */
    size_t live_bytes;            /* bytes in blocks handed out and not freed */
    size_t requested_bytes;       /* what callers asked for (internal waste = live - requested);
                                     exact when the option track_requested is on (the
                                     default for heaps made by loam_heap_new) and the
                                     heap was created manual, else 0 */
    size_t committed_bytes;       /* memory committed from the OS */
    size_t reserved_bytes;
    size_t gc_collections;
    uint64_t gc_pause_total_ns, gc_pause_max_ns;
    /* --- additions --- */
    size_t live_blocks;           /* blocks handed out and not freed */
    size_t peak_live_bytes;       /* high-water mark of bytes out of the heap's slabs (live or
                                     parked in thread caches) plus large blocks: an upper bound of
                                     the peak of live_bytes, kept without cost on the fast paths */
    size_t slab_bytes;            /* bytes of page runs holding slabs */
    size_t slab_free_bytes;       /* free block bytes inside partly used slabs (external fragmentation) */
    size_t cached_bytes;          /* free blocks held in thread caches */
    size_t large_count;           /* blocks above mmap_threshold, one mapping each */
    size_t large_bytes;           /* their mapped bytes */
    size_t resident_bytes;        /* of this heap's memory, resident in RAM (mincore) */
    size_t segments;              /* segments the heap holds */
    size_t free_run_bytes;        /* committed page runs holding no slab, awaiting reuse or decay */
    size_t requested_tracked;     /* 1 if requested_bytes is exact */
    /* collector */
    uint64_t gc_pause_p50_ns, gc_pause_p99_ns;   /* over the last 1024 collections */
    size_t gc_bytes_marked;       /* in the last collection */
    size_t gc_bytes_swept;        /* reclaimed, all collections */
    size_t gc_live_after;         /* live bytes after the last collection */
    size_t gc_finalizers_run;
    size_t gc_weak_cleared;       /* weak references and weak fields (loam_mark_weak) cleared by
                                     collections (not those a loam_free ends) */
    size_t gc_bytes_marked_helpers;   /* of gc_bytes_marked: by marking threads (LOAM_PARALLEL_MARK) */
    size_t gc_minor_collections;  /* of gc_collections: minor (LOAM_GENERATIONAL) */
    size_t transfer_bytes;        /* free blocks in the arenas' transfer caches: batches that
                                     threads freeing other threads' blocks handed back, kept
                                     for the arena's next refills (a purge or trim empties them) */
    size_t gc_ephemerons_cleared; /* ephemeron pairs (loam_mark_ephemeron) cleared by collections:
                                     their keys were found dead */
} loam_stats_t;
LOAM_API void loam_heap_stats(loam_heap_t *h, loam_stats_t *out);
LOAM_API void loam_heap_print_stats(loam_heap_t *h, FILE *out, int format);

/* ---- options ----------------------------------------------------------- */
/* Keys (also settable by the environment: LOAM_OPTIONS="key=value,..."):
 *   mmap_threshold  bytes; blocks above get their own mapping (default 131072, max 524288)
 *   arena_max       arenas per heap (default 8 x CPUs)
 *   decay_ms        ms a free page run stays committed before it is returned (default 250)
 *   purge_thread    1: a background thread returns decayed memory and asks idle thread
 *                   caches to give their blocks back (default 1); 0: no thread, decay
 *                   runs on allocation slow paths only
 *   huge_pages      1: a large block grown by realloc, and the segments of a collected
 *                   heap past 8 MiB of slabs, ask for transparent huge pages
 *                   (MADV_HUGEPAGE), so they fault 2 MiB at a time (default 1)
 *   retain_max      bytes of free page runs an arena keeps committed at most; past it a
 *                   freed run goes back to the OS at once, by the background thread when
 *                   it runs (manual heaps), else by the freeing thread (default 4 MiB)
 *   verbose         1: print each heap's statistics at exit on stderr, and each fault's
 *                   line even when the heap's error callback handles it (warnings are
 *                   printed at any level)
 *   track_requested 0/1: keep exact requested_bytes (default 1 for new heaps, 0 for the
 *                   default heap; never for a heap created collected)
 *   tcache_max      most blocks per size class in a thread cache (default 8192, 0 = no
 *                   cache); a class starts at min(128, 64 KiB) and grows towards it when a
 *                   thread allocates and frees in batches (or allocates from a collected
 *                   heap): 128 KiB a class and 1 MiB a cache on its own, and for a cache
 *                   that frees up to 1 MiB a class and 8 MiB in all, the part past
 *                   1 MiB drawn from tcache_budget
 *   tcache_budget   bytes of cache growth past each cache's own 1 MiB that every
 *                   thread's caches share (default 32 MiB; 0: no cache grows past 1 MiB)
 *   gc_growth       percent of the live heap allocated between collections (default 100)
 *   gc_min_bytes    allocation between collections at least (default 4 MiB)
 *   gc_young_min    LOAM_GENERATIONAL heaps instead: allocation between collections (two
 *                   thirds of the growth), and old garbage between major ones (one
 *                   third), each at least this (default 512 KiB)
 *   gc_markers      threads that mark a LOAM_PARALLEL_MARK heap, the collecting one
 *                   included (default 0: one per CPU, at most 8, fewer while other
 *                   threads keep CPUs busy; 1: no helpers)
 *   gc_parallel_min live bytes found by the last collection from which marking runs in
 *                   parallel (default 1 MiB; a minor collection: bytes the last minor
 *                   one marked)
 *   gc_stress       testing: every collected heap collects at every N-th allocation
 *                   (1: at each), whatever its pacing; its allocations skip the thread
 *                   caches meanwhile (default 0: off)
 * Returns 0 on success, -1 (and a warning on stderr) for an unknown key or bad value. */
LOAM_API int  loam_option_set(const char *key, long value);
LOAM_API long loam_option_get(const char *key);           /* -1 for an unknown key */
/* Parse "key=value,key=value"; returns the number of entries rejected (each with
 * a warning on stderr, its option unchanged). A value is a decimal, 0x hex or 0
 * octal number, optionally followed by k, m or g (either case) for KiB, MiB or
 * GiB: "retain_max=64m". A value that does not fit a long is a bad value. */
LOAM_API int  loam_options_parse(const char *text);

#ifdef __cplusplus
}
#endif
#endif /* LOAM_H */
