/* loam — a language-runtime heap with an optional garbage collector.
 *
 * This is the one public header. Everything here is stable API; names that
 * outside programs rely on are listed in docs/api.md (see also DESIGN.md).
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
enum { LOAM_NO_STACK_SCAN = 1u << 0 };      /* loam_config_t.flags */
enum { LOAM_STATS_TEXT = 0, LOAM_STATS_JSON = 1 };

typedef void (*loam_trace_fn)(void *obj, loam_tracer_t *t, void *user);
typedef void (*loam_roots_fn)(loam_tracer_t *t, void *user);
typedef void (*loam_oom_fn)(loam_heap_t *h, size_t request, void *user);
typedef void (*loam_error_fn)(loam_heap_t *h, const char *message, void *addr, void *user);
typedef void (*loam_finalizer_fn)(void *obj, void *data);
typedef void (*loam_leak_fn)(void *block, size_t size, void *user);

typedef struct loam_config {      /* all zero: a manual heap with defaults */
    loam_mode_t   mode;
    size_t        limit;          /* bytes of committed memory; 0 = no limit */
    unsigned      flags;
    loam_trace_fn trace;          /* for LOAM_TRACED objects */
    loam_roots_fn roots;          /* embedder's roots, called at each collection */
    loam_oom_fn   oom;            /* called when the limit is reached */
    loam_error_fn error;          /* NULL: print the message and abort */
    void         *user;           /* passed to every callback */
} loam_config_t;

/* ---- heaps ------------------------------------------------------------- */
LOAM_API loam_heap_t *loam_heap_new(const loam_config_t *cfg);   /* NULL cfg: defaults */
LOAM_API void         loam_heap_destroy(loam_heap_t *h);         /* releases every block */
LOAM_API loam_heap_t *loam_heap_default(void);                   /* the process heap, manual */
LOAM_API loam_heap_t *loam_heap_of(const void *p);               /* NULL: not a loam block */
LOAM_API int          loam_heap_set_mode(loam_heap_t *h, loam_mode_t m);   /* 0 on success */
/* Hand every free page run of the heap back to the OS now, without waiting
 * for decay_ms (like malloc_trim). Returns the bytes decommitted. */
LOAM_API size_t       loam_heap_trim(loam_heap_t *h);

/* ---- allocation -------------------------------------------------------- */
LOAM_API void  *loam_malloc(loam_heap_t *h, size_t n) LOAM_MALLOC_ATTR;
LOAM_API void  *loam_calloc(loam_heap_t *h, size_t count, size_t n) LOAM_MALLOC_ATTR;
LOAM_API void  *loam_realloc(loam_heap_t *h, void *p, size_t n);
LOAM_API void  *loam_aligned_alloc(loam_heap_t *h, size_t align, size_t n) LOAM_MALLOC_ATTR;
LOAM_API void   loam_free(void *p);                              /* heap found from p */
LOAM_API size_t loam_usable_size(const void *p);

/* ---- collector --------------------------------------------------------
 * The collected mode (LOAM_GC, loam_gc_alloc, roots, finalizers, weak
 * references) is being built in gc/; until it lands loam_heap_new with
 * mode = LOAM_GC and loam_heap_set_mode(h, LOAM_GC) fail with errno ENOSYS. */

/* ---- statistics -------------------------------------------------------- */
typedef struct loam_stats {       /* more fields welcome; these stay */
    size_t live_bytes;            /* bytes in blocks handed out and not freed */
    size_t requested_bytes;       /* what callers asked for (internal waste = live - requested);
                                     exact when the option track_requested is on (the
                                     default for heaps made by loam_heap_new), else 0 */
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
} loam_stats_t;
LOAM_API void loam_heap_stats(loam_heap_t *h, loam_stats_t *out);
LOAM_API void loam_heap_print_stats(loam_heap_t *h, FILE *out, int format);

/* ---- options ----------------------------------------------------------- */
/* Keys (also settable by the environment: LOAM_OPTIONS="key=value,..."):
 *   mmap_threshold  bytes; blocks above get their own mapping (default 131072, max 524288)
 *   arena_max       arenas per heap (default 8 x CPUs)
 *   decay_ms        ms a free page run stays committed before it is returned (default 1000)
 *   retain_max      bytes of free page runs an arena keeps committed at most; past it a
 *                   freed run goes back to the OS at once (default 4 MiB)
 *   verbose         1: print each heap's statistics at exit and warnings on stderr
 *   track_requested 0/1: keep exact requested_bytes (default 1 for new heaps, 0 for the default heap)
 *   tcache_max      most blocks per size class in a thread cache (default 128, 0 = no cache)
 * Returns 0 on success, -1 (and a warning on stderr) for an unknown key or bad value. */
LOAM_API int  loam_option_set(const char *key, long value);
LOAM_API long loam_option_get(const char *key);           /* -1 for an unknown key */
/* Parse "key=value,key=value"; returns the number of entries rejected. */
LOAM_API int  loam_options_parse(const char *text);

#ifdef __cplusplus
}
#endif
#endif /* LOAM_H */
