/* loam/inline.h — loam_gc_alloc's fast path, compiled into the embedder's
 * own code.
 *
 *   #include <loam/inline.h>
 *   cons_t *c = loam_gc_alloc_inline(heap, sizeof *c, LOAM_TRACED);
 *
 * loam_gc_alloc_inline(h, n, kind) is loam_gc_alloc(h, n, kind): the same
 * blocks, zero-filling, errors, safepoints, pacing and statistics. When the
 * calling thread's cache of the heap has a block of n's class ready, it
 * takes it here, in a few instructions and without a call; anything else
 * (an empty cache, a first allocation, a size past LOAM_INLINE_MAX, a bad
 * kind, a heap that tracks requested sizes, an allocation inside a blocking
 * bracket, gc_stress) goes to loam_gc_alloc. With n a constant, as in an
 * interpreter's constructors, the size tests fold away. An interpreter
 * that allocates small objects by the million gains the cost of a call per
 * object: the Lisp example (examples/lisp/lisp.h) runs its demo 3 % faster
 * (docs/benchmarks.md).
 *
 * What it reads of the library: the thread's cache slots, the heap's table
 * from request size to cache bin and block size, and the first bytes of a
 * heap. Their layout is this header's, asserted by the library when it is
 * built (gc/api.c), so the header and the library must come from the same
 * loam, as with any inline allocation (Boehm's gc_inline.h). The layout's
 * version, LOAM_INLINE_ABI, is part of the name of the function it falls
 * back to: a program built with a header of another layout fails to link,
 * or to start against a shared library ("undefined symbol:
 * loam_inline_alloc_slow_abi2"), instead of allocating through the wrong
 * offsets.
 *
 * Define LOAM_NO_INLINE_ALLOC before including this header to make
 * loam_gc_alloc_inline a plain call of loam_gc_alloc: for builds of the
 * same sources over another implementation of loam's API (bench/'s Boehm
 * build of the Lisp example), or to rule the fast path out while
 * debugging. A library built for valgrind (-DLOAM_VALGRIND=ON) sends every
 * allocation here to loam_gc_alloc too, which tells memcheck about it. */
#ifndef LOAM_LOAM_INLINE_H
#define LOAM_LOAM_INLINE_H

#include "../loam.h"

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Requests up to this many bytes can take the fast path. */
#define LOAM_INLINE_MAX 1024

#ifdef LOAM_NO_INLINE_ALLOC

static inline void *loam_gc_alloc_inline(loam_heap_t *h, size_t n, loam_kind_t kind)
{
    return loam_gc_alloc(h, n, kind);
}

#else

/* ---- the layout the library shares with this header (do not use) ---------- */

/* Bumped with any change of what follows, and in the name of the function
 * the fast path falls back to. */
#define LOAM_INLINE_ABI 2
#define loam_inline_alloc_slow loam_inline_alloc_slow_abi2
/* loam_gc_alloc, under the layout's name. */
extern LOAM_API void *loam_inline_alloc_slow(loam_heap_t *h, size_t n, loam_kind_t kind);

/* A thread cache's bin of one size class: blocks are taken from the bump
 * range [bump, bump_end) first, then from the stack of freed blocks below
 * top (top[-1] NULL: empty). Only the owning thread writes it. */
struct loam_inline_bin {
    uintptr_t top, end, bump, bump_end;
};

/* A heap's size classes: at byte LOAM_INLINE_ROW_AT of a heap, a pointer to
 * its table by request size 0..LOAM_INLINE_MAX (a heap with LOAM_ALIGN_8
 * has its own): the byte offset of the class's bin in a thread cache, and
 * the class's block size; size 0 sends the request to loam_gc_alloc. */
typedef struct loam_inline_class {
    uint16_t bin;
    uint16_t size;
} loam_inline_class_t;
#define LOAM_INLINE_ROW_AT 8

/* The calling thread's caches, by slot; a heap's kind k allocates through
 * slot ((const uint8_t *)h)[LOAM_INLINE_SLOTS_AT + k]. A slot with no cache
 * of its own holds a cache with no blocks. */
struct loam_tcache;
#define LOAM_INLINE_SLOTS_AT 1
extern LOAM_API __thread struct loam_tcache *loam_tls_cache[32]
    __attribute__((tls_model("initial-exec")));

static inline __attribute__((always_inline)) void *
loam_gc_alloc_inline(loam_heap_t *h, size_t n, loam_kind_t kind)
{
    if (__builtin_expect(n > LOAM_INLINE_MAX || (unsigned)kind > LOAM_TRACED, 0))
        return loam_inline_alloc_slow(h, n, kind);
    const loam_inline_class_t *row =
        *(const loam_inline_class_t *const *)(const void *)((const char *)h + LOAM_INLINE_ROW_AT);
    const loam_inline_class_t c = row[n];
    if (__builtin_expect(c.size == 0, 0))
        return loam_inline_alloc_slow(h, n, kind);
    unsigned slot = __atomic_load_n((const uint8_t *)h + LOAM_INLINE_SLOTS_AT + (unsigned)kind,
                                    __ATOMIC_RELAXED);
    struct loam_inline_bin *bin =
        (struct loam_inline_bin *)(void *)((char *)loam_tls_cache[slot] + c.bin);
    /* The bump range first, then the freed blocks. Relaxed atomics: other
     * threads read these fields (statistics, frees), only this one writes. */
    char *p = (char *)__atomic_load_n(&bin->bump, __ATOMIC_RELAXED);
    if (__builtin_expect((uintptr_t)p < __atomic_load_n(&bin->bump_end, __ATOMIC_RELAXED), 1)) {
        __atomic_store_n(&bin->bump, (uintptr_t)(p + c.size), __ATOMIC_RELAXED);
    } else {
        void **top = (void **)__atomic_load_n(&bin->top, __ATOMIC_RELAXED);
        p = (char *)top[-1];
        if (__builtin_expect(p == NULL, 0))
            return loam_inline_alloc_slow(h, n, kind);
        __atomic_store_n(&bin->top, (uintptr_t)(top - 1), __ATOMIC_RELAXED);
    }
    /* As loam_gc_alloc: the whole block for kinds that are scanned, the
     * first 16 bytes of an atomic one (its second word held the free key). */
    size_t clear = kind == LOAM_ATOMIC ? 16 : c.size;
    if (__builtin_expect(clear <= 64, 1)) {
        memset(p, 0, 16);
        memset(p + clear - 16, 0, 16);
        if (clear > 32) {
            memset(p + 16, 0, 16);
            memset(p + clear - 32, 0, 16);
        }
    } else {
        memset(p, 0, clear);
    }
    return p;
}

#endif /* LOAM_NO_INLINE_ALLOC */

#ifdef __cplusplus
}
#endif

#endif
