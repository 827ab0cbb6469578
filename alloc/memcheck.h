/* alloc/memcheck.h — telling valgrind's memcheck about loam's blocks.
 *
 * Built in only with -DLOAM_VALGRIND=ON (the client requests cost a few
 * instructions each, too many for the fast paths of a release build); a
 * no-op otherwise, and when the program does not run under valgrind.
 *
 * Each heap is a memcheck memory pool. A block is added to its heap's pool
 * when loam hands it out (at its usable size, undefined unless loam zeroed
 * it) and taken out when a free has passed loam's checks (a double or bad
 * free is reported by loam, not twice); destroying a heap drops its pool.
 * Memcheck then reports reads and writes of freed blocks with the stacks of
 * the allocation and the free.
 *  - The second word of a free block stays accessible: it holds the free
 *    key, which loam reads and writes while the block is free (and nothing
 *    else of loam's: alloc.h).
 *  - The second word of a block handed out is defined (zero): loam reads it
 *    to tell free blocks, so an uninitialised read of that word is not
 *    reported.
 *  - A page run that becomes a slab, and a slab tail given back by trim, is
 *    made accessible again: block boundaries change with the size class.
 *  - The collector's conservative scan of a block skips words memcheck holds
 *    uninitialised (mc_word_defined) rather than branch on them. */
#ifndef LOAM_ALLOC_MEMCHECK_H
#define LOAM_ALLOC_MEMCHECK_H

#include <stddef.h>

#ifdef LOAM_MEMCHECK
#include <valgrind/memcheck.h>

static inline void mc_heap_new(const void *heap)
{
    VALGRIND_CREATE_MEMPOOL(heap, 0, 0);
}

static inline void mc_heap_destroy(const void *heap)
{
    VALGRIND_DESTROY_MEMPOOL(heap);
}

static inline void mc_alloc(const void *heap, const void *p, size_t size, int zeroed)
{
    VALGRIND_MEMPOOL_ALLOC(heap, p, size);
    if (zeroed)
        VALGRIND_MAKE_MEM_DEFINED(p, size);
    else
        VALGRIND_MAKE_MEM_DEFINED((const char *)p + sizeof(void *), sizeof(void *));
}

static inline void mc_free(const void *heap, const void *p)
{
    VALGRIND_MEMPOOL_FREE(heap, p);
    VALGRIND_MAKE_MEM_UNDEFINED((const char *)p + sizeof(void *), sizeof(void *));
}

/* A block that moved (large realloc by mremap) or changed size in place. */
static inline void mc_moved(const void *heap, const void *from, const void *to, size_t size)
{
    VALGRIND_MEMPOOL_FREE(heap, from);
    VALGRIND_MEMPOOL_ALLOC(heap, to, size);
    VALGRIND_MAKE_MEM_DEFINED(to, size);
}

/* Memory loam is about to cut into blocks afresh. */
static inline void mc_fresh(const void *p, size_t size)
{
    VALGRIND_MAKE_MEM_UNDEFINED(p, size);
}

/* A stack about to be scanned conservatively: its dead slots are
 * uninitialised, and the collector's tests on each word (is it a pointer
 * into a block?) would be reported. Marking it defined is what every
 * conservative collector does under memcheck. */
static inline void mc_scanning(const void *lo, const void *hi)
{
    if (hi > lo)
        VALGRIND_MAKE_MEM_DEFINED(lo, (size_t)((const char *)hi - (const char *)lo));
}
/* A word a conservative scan is about to test: false when memcheck holds
 * any of its bytes uninitialised (the tail of a block the program filled in
 * part). The program never stored a pointer there, so the scan skips it
 * instead of branching on it; the bytes stay uninitialised for memcheck,
 * which still reports the program's own uses of them. */
static inline int mc_word_defined(const void *p)
{
    unsigned long long vbits = 0;
    unsigned r = VALGRIND_GET_VBITS(p, &vbits, sizeof vbits);
    return r != 1 || vbits == 0;    /* 1: read (0 bits: defined); else not under valgrind */
}
#else
static inline int mc_word_defined(const void *p) { (void)p; return 1; }
static inline void mc_heap_new(const void *heap) { (void)heap; }
static inline void mc_heap_destroy(const void *heap) { (void)heap; }
static inline void mc_alloc(const void *heap, const void *p, size_t size, int zeroed)
{
    (void)heap, (void)p, (void)size, (void)zeroed;
}
static inline void mc_free(const void *heap, const void *p) { (void)heap, (void)p; }
static inline void mc_moved(const void *heap, const void *from, const void *to, size_t size)
{
    (void)heap, (void)from, (void)to, (void)size;
}
static inline void mc_fresh(const void *p, size_t size) { (void)p, (void)size; }
static inline void mc_scanning(const void *lo, const void *hi) { (void)lo, (void)hi; }
#endif

#endif
