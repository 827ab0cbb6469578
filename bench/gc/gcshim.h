/* The collector benchmarks' "gc shim": the few calls a workload makes to get
 * and drop objects, so that one workload source compiles three ways. Exactly
 * one of these is defined when compiling (bench/CMakeLists.txt does it):
 *
 *   GCB_LOAM    a collected loam heap (loam_heap_new with mode LOAM_GC):
 *               objects with pointers are LOAM_TRACED (a trace callback
 *               reports their leading pointer fields) or, with --kind
 *               conservative, LOAM_CONSERVATIVE; pointer-free data is
 *               LOAM_ATOMIC. Roots: the stack, scanned conservatively.
 *               With GCB_SHADOW_STACK too (loam-gcbench-loam-precise), the
 *               roots are a shadow stack (GCS_PUSH) reported by the roots
 *               callback, and the stack is not scanned (--no-stack-scan).
 *               Only that binary has the shadow stack: GCS_PUSH takes the
 *               variable's address, which keeps it in a stack slot, and a
 *               slot not yet written in this call holds a stale pointer
 *               from an earlier one, which a conservative scan takes for a
 *               root (GCBench: a dead tree of 4 MiB or two held that way
 *               at its last collections, peak RSS 33.9 MiB instead of
 *               25.4). The other variants compile GCS_PUSH to nothing.
 *   GCB_BOEHM   the Boehm-Demers-Weiser collector (Debian's libgc):
 *               GC_MALLOC / GC_MALLOC_ATOMIC, roots found by Boehm itself.
 *   GCB_MALLOC  explicit malloc/free: the workload frees what it drops
 *               (gcs_free, guarded by GCS_EXPLICIT_FREE); the allocator is
 *               whatever the dynamic linker gives (the runner preloads
 *               mimalloc).
 *
 * A workload calls gcs_written(&obj->field) after storing a pointer into an
 * object other than one it has just allocated (nothing allocated since): the
 * write barrier of a generational loam heap, nothing elsewhere.
 *
 * Objects with pointers keep them in their first gcs_ptr_fields words (set
 * once by the workload with gcs_init): that is all the precise trace
 * callback needs to know, so no object carries a type header.
 */
#ifndef LOAM_GCSHIM_H
#define LOAM_GCSHIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if (defined(GCB_LOAM) + defined(GCB_BOEHM) + defined(GCB_MALLOC)) != 1
#error "define exactly one of GCB_LOAM, GCB_BOEHM, GCB_MALLOC"
#endif

/* Options of the collector benchmarks (parsed by gcmain.c). */
typedef struct gcs_opts {
    int    depth;          /* binary-trees: the maximum depth (default 16) */
    double scale;          /* gcbench: multiplies the temporary-tree counts */
    int    conservative;   /* loam: LOAM_CONSERVATIVE objects, not LOAM_TRACED */
    int    no_stack_scan;  /* loam: LOAM_NO_STACK_SCAN, roots on a shadow stack */
    int    generational;   /* loam: LOAM_GENERATIONAL (the workloads call gcs_written) */
} gcs_opts_t;

/* Sets up the heap / collector. ptr_fields: how many leading words of every
 * object from gcs_alloc are pointers (or NULL). Returns 0, or -1 with a
 * message on stderr. */
int  gcs_init(const gcs_opts_t *o, int ptr_fields);
/* The variant's name for the result line (loam, loam-cons, loam-precise,
 * boehm, malloc). */
const char *gcs_variant(void);
/* After the timed part: collections, longest and total pause. Zero for
 * malloc/free. */
typedef struct gcs_stats {
    long     collections;
    uint64_t pause_max_ns;
    uint64_t pause_total_ns;
} gcs_stats_t;
void gcs_stats(gcs_stats_t *out);
void gcs_finish(void);              /* tears the heap down (not timed) */

/* ---- the shadow stack (precise roots, loam-gcbench-loam-precise only) ----
 * GCS_PUSH(var) makes the pointer variable var a root until the matching
 * GCS_POP; pushes and pops nest like the calls. Everywhere else they are
 * nothing. */
#define GCS_SHADOW_MAX 4096
extern void **gcs_shadow[GCS_SHADOW_MAX];
extern size_t gcs_shadow_top;

#if defined(GCB_LOAM)
#include <loam.h>

extern loam_heap_t *gcs_heap;
extern loam_kind_t gcs_kind;

static inline void *gcs_alloc(size_t n)
{
    return loam_gc_alloc(gcs_heap, n, gcs_kind);
}
static inline void *gcs_alloc_atomic(size_t n)
{
    return loam_gc_alloc(gcs_heap, n, LOAM_ATOMIC);
}
#define GCS_EXPLICIT_FREE 0
static inline void gcs_free(void *p) { (void)p; }
extern int gcs_generational;
static inline void gcs_written(void *where)
{
    if (gcs_generational)
        loam_write_barrier(where);
}
#if defined(GCB_SHADOW_STACK)
#define GCS_PUSH(var) do {                                      \
        if (gcs_shadow_top >= GCS_SHADOW_MAX) abort();          \
        gcs_shadow[gcs_shadow_top++] = (void **)&(var);         \
    } while (0)
#define GCS_POP(n) (gcs_shadow_top -= (n))
#else
#define GCS_PUSH(var) ((void)0)
#define GCS_POP(n) ((void)0)
#endif

#elif defined(GCB_BOEHM)
#include <gc.h>

static inline void *gcs_alloc(size_t n) { return GC_MALLOC(n); }
static inline void *gcs_alloc_atomic(size_t n) { return GC_MALLOC_ATOMIC(n); }
#define GCS_EXPLICIT_FREE 0
static inline void gcs_free(void *p) { (void)p; }
static inline void gcs_written(void *where) { (void)where; }
#define GCS_PUSH(var) ((void)0)
#define GCS_POP(n) ((void)0)

#else /* GCB_MALLOC */

static inline void *gcs_alloc(size_t n) { return malloc(n); }
static inline void *gcs_alloc_atomic(size_t n) { return malloc(n); }
#define GCS_EXPLICIT_FREE 1
static inline void gcs_free(void *p) { free(p); }
static inline void gcs_written(void *where) { (void)where; }
#define GCS_PUSH(var) ((void)0)
#define GCS_POP(n) ((void)0)
#endif

/* Out of memory is fatal in every variant. */
static inline void *gcs_check(void *p)
{
    if (!p)
        abort();
    return p;
}

/* ---- the workloads ------------------------------------------------------ */
int gcw_binary_trees(const gcs_opts_t *o);
int gcw_gcbench(const gcs_opts_t *o);

/* The result line: workload=..., the figures, then bench_end's tail.
 * Returns the exit status (0, or 1 if bad != 0). */
int gcs_report(const char *workload, const gcs_opts_t *o, double seconds,
               uint64_t checksum, long bad);

#endif
