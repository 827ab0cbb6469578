/* alloc/alloc.h — the allocator core's internal interface.
 *
 * The core knows nothing of heaps' modes, the collector or the runtime: an
 * arena has an opaque `owner` (the heap) and a budget to charge committed
 * bytes to. Everything above alloc/ reaches memory through this header.
 *
 * Memory map:
 *   segment   4 MiB, 4 MiB-aligned. Page 0 holds the header (descriptors);
 *             pages 1..63 (64 KiB each) are carved into page runs. A run is
 *             either free (coalesced with free neighbours) or one slab.
 *   slab      a run cut into equal blocks of one size class.
 *   large     a block above mmap_threshold: its own mapping, 4 MiB-aligned,
 *             a one-page header then the block.
 * Every segment and large mapping is entered in the process-wide segment map,
 * so "is this address ours, and which block" is O(1) with no block header.
 */
#ifndef LOAM_ALLOC_H
#define LOAM_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <atomic_ops.h>

#define LOAM_LIKELY(x)   __builtin_expect(!!(x), 1)
#define LOAM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define LOAM_INTERNAL    __attribute__((visibility("hidden")))
#define LOAM_NOINLINE    __attribute__((noinline))

/* ---- geometry ---------------------------------------------------------- */
#define SEGMENT_SHIFT      22
#define SEGMENT_SIZE       ((size_t)1 << SEGMENT_SHIFT)
#define SEGMENT_MASK       (SEGMENT_SIZE - 1)
#define PAGE_SHIFT         16                      /* slab page: 64 KiB */
#define PAGE_SIZE          ((size_t)1 << PAGE_SHIFT)
#define PAGES_PER_SEGMENT  (SEGMENT_SIZE / PAGE_SIZE)   /* 64; page 0 is the header */
#define ARENA_HUGE_PAGES_AFTER ((size_t)8 << 20)   /* slab bytes before an arena asks for THP
                                                      (if its owner allows it) */
#define OS_PAGE            4096u
#define BLOCK_ALIGN        16u

/* Size classes: 16..128 step 16, then 8 classes per doubling up to 512 KiB,
 * so a request above 128 B wastes at most 1/8 of its block. Three more,
 * 24, 40 and 56 bytes, come last: only requests that may be 8-byte aligned
 * take them (sizeclass_of_by8), so the classes below stay in size order. */
#define NUM_CLASSES        107
#define CLASS_BY8_FIRST    104                     /* the 24-byte class; then 40, 56 */
#define SMALL_MAX          1024                    /* direct table up to here */
#define CLASS_MAX_SIZE     ((size_t)512 * 1024)

extern LOAM_INTERNAL uint8_t  sizeclass_small[SMALL_MAX / 16 + 1];
extern LOAM_INTERNAL uint32_t sizeclass_size[NUM_CLASSES];
extern LOAM_INTERNAL uint8_t  sizeclass_pages[NUM_CLASSES];

LOAM_INTERNAL void     sizeclass_init(void);
/* Any n <= CLASS_MAX_SIZE (the table's source); inline for malloc's sizes
 * above the table (runtime/alloc_api.c). */
static inline unsigned sizeclass_of_generic(size_t n)
{
    if (n <= 128)
        return n == 0 ? 0 : (unsigned)((n - 1) >> 4);
    unsigned lg = 63u - (unsigned)__builtin_clzll((unsigned long long)(n - 1));   /* n in (2^lg, 2^(lg+1)] */
    unsigned k = (unsigned)(((n - 1) - ((size_t)1 << lg)) >> (lg - 3)) + 1;          /* 1..8 */
    return 7 + (lg - 7) * 8 + k;
}
/* Smallest class >= n whose size is a multiple of align (align a power of two <= PAGE_SIZE). */
LOAM_INTERNAL int      sizeclass_of_aligned(size_t n, size_t align);

static inline unsigned sizeclass_of(size_t n)
{
    if (LOAM_LIKELY(n <= SMALL_MAX))
        return sizeclass_small[(n + 15) >> 4];
    return sizeclass_of_generic(n);
}

/* A request that may have 8-byte alignment (a collected heap's blocks with
 * LOAM_ALIGN_8): to 24, 40 or 56 bytes when it rounds to an odd multiple of
 * 8 below 64, else as sizeclass_of. No C object whose size is an odd
 * multiple of 8 needs 16-byte alignment: a type's size is a multiple of its
 * alignment. */
static inline unsigned sizeclass_of_by8(size_t n)
{
    size_t eighths = (n + 7) >> 3;
    if (n > 16 && n <= 56 && (eighths & 1))
        return CLASS_BY8_FIRST + (unsigned)(eighths - 3) / 2;
    return sizeclass_of(n);
}

/* ---- blocks ------------------------------------------------------------ */
/* A free block holds the double-free key in its second word (every block is
 * at least 16 bytes). Nothing else of loam's: which blocks of a slab are free
 * is in the slab's free set, a bitmap outside the blocks (slab.c), and a
 * thread cache holds addresses in an array. The first word is the
 * program's. */
typedef struct free_block {
    uintptr_t word0;
    uintptr_t freed_key;
} free_block_t;

/* Process secret written into every block that is free, and cleared when the
 * block is handed out: a free of a block already carrying it is a double free. */
extern LOAM_INTERNAL uintptr_t loam_free_key;

/* ---- budget: committed bytes charged to an owner (the heap's limit) ---- */
struct arena;
typedef struct budget {
    AO_t   committed;     /* bytes, all arenas and large blocks of the owner */
    size_t limit;         /* 0 = none */
    /* Committed bytes in the free runs of all the owner's arenas, and the
     * arenas themselves (linked by budget_next, never unlinked before the
     * owner goes): an arena about to commit fresh pages asks the others to
     * give back as many of theirs first (segment.c, retained_reclaim). */
    AO_t   retained;
    AO_t   arenas;        /* struct arena *, published with release */
} budget_t;

LOAM_INTERNAL bool budget_charge(budget_t *b, size_t bytes);    /* false: over the limit */
LOAM_INTERNAL void budget_release(budget_t *b, size_t bytes);

/* ---- slabs and page runs ----------------------------------------------- */
enum run_state { RUN_HEADER = 0, RUN_FREE = 1, RUN_SLAB = 2,
                 RUN_DECOMMITTING = 3 };   /* a free run out of the bins while the background
                                              thread gives its pages back (segment.c) */

struct arena;
struct tcache_bin;

typedef struct slab {
    /* hot: read by the free fast path */
    char        *start;          /* first block */
    uint32_t     block_size;     /* 0 when not a slab */
    uint32_t     bumped;         /* blocks ever handed out: [0, bumped) are real blocks;
                                    written under the arena lock (slab_set_bumped), read
                                    lock-free (AO_int) */
    uint64_t     div_m;          /* slab_div_m(block_size): divides offsets and tests them
                                    for a block start by multiplying (see there) */
    uint32_t     start_below;    /* bumped * slab_div_step(block_size): off * div_m is below
                                    it iff off is a block start below the bump line. Written
                                    with bumped (slab_set_bumped), read lock-free (AO_int) */
    uint32_t     free_lo;        /* free set: no bit below word free_lo (a hint, arena lock) */
    uint8_t      owner_slot;     /* the thread-cache slot the free fast path pushes to:
                                    home_slot, or the no-cache slot while draining (AO_char) */
    uint8_t      cls;
    uint8_t      state;          /* enum run_state */
    uint8_t      committed;      /* a free run: pages may be resident */
    uint8_t      tag;            /* for the layer above (object kind); the core ignores it */
    uint8_t      home_slot;      /* the owner's thread-cache slot */
    uint16_t     pages;          /* run length, in pages */
    uint16_t     page_index;     /* first page of the run within its segment */
    uint16_t     cache_bin;      /* tcache_bin_offset(cls): where in a thread cache the free
                                    fast path finds the class's bin (an add, no scaling) */
    uint32_t     capacity;       /* blocks that fit */
    uint32_t     used;           /* blocks out of the slab (handed out or in a thread cache);
                                    written under the arena lock, read lock-free (AO_int) */
    uint32_t     drain_below;    /* at or below this many used, frees bypass thread caches:
                                    capacity/8, or 0 while the slab is its class's allocation
                                    slab (the partial list's head). Lock-free read (AO_int) */
    uint64_t     free_word;      /* the free set of a slab of at most 64 blocks */
    uint64_t    *free_bits;      /* the free set: bit i set = block i (below the bump line)
                                    is free in the slab, not out. &free_word, or metadata */
    struct arena *arena;
    struct slab  *next, *prev;   /* arena's partial list of the class, or a free-run bin */
    uint16_t    *waste;          /* per block: block_size - requested (track_requested), see slab_set_waste */
    uint64_t     freed_at_ms;    /* a free run: when it became free; a slab: when it last emptied */
    struct slab *pending_next;   /* the arena's pending list of the class */
    bool         pending;        /* the layer above must visit it before its blocks are used
                                    (a lazy sweep); pinned: never released meanwhile */
    bool         visit_none_free;  /* while pending, the layer above's: no block of it was
                                      free when the visit was set up */
    bool         handed_out;     /* a block went out of it (a refill, a bump range) since the
                                    layer above last cleared this; the layer above sets it too
                                    (a freed block a thread cache may hand out again). A
                                    generational heap's minor sweep skips slabs without it */
    uint32_t     visit_cursor;   /* while pending: blocks below it are visited (the layer
                                    above's; 0 when it becomes pending) */
} __attribute__((aligned(128))) slab_t;     /* a power of two: descriptor lookup is a shift */
_Static_assert(sizeof(slab_t) == 128, "slab descriptors are 128 bytes (segment header layout)");

enum segment_kind { SEGMENT_SLABS = 1, SEGMENT_LARGE = 2 };

typedef struct segment {
    uint8_t       kind;          /* enum segment_kind: shared prefix with large_t */
    struct arena *arena;
    void         *owner;         /* the arena's owner, one load away for lookups */
    struct segment *next, *prev; /* the arena's segments */
    struct segment *dirty_next, *dirty_prev;   /* the arena's dirty list (segment.c) */
    bool          dirty;         /* on it */
    uint32_t      used_pages;    /* pages in slabs */
    uint32_t      decommitting;  /* runs being given back with the lock dropped: the
                                    segment is not released meanwhile */
    uint64_t      committed_mask;/* bit per page that may be resident (charged to the budget) */
    uint64_t      empty_since_ms;/* used_pages == 0 since then */
    bool          huge;          /* asks for transparent huge pages (segment.c: until
                                    part of it is given back) */
    void         *upper_side;    /* the layer above's own side table, opaque here: a
                                    mapping of SEGMENT_UPPER_SIDE_BYTES it made with
                                    os_reserve_aligned, released with the segment */
    struct slab  *page_slab[PAGES_PER_SEGMENT];  /* page -> the descriptor of its run (a
                                                    pointer: the free fast path loads it and
                                                    is there, no scaling or adding) */
    struct tcache_bin *bump_holder[PAGES_PER_SEGMENT];  /* at a slab's first page: the cache
                                                    bin holding a bump range of the slab, or
                                                    NULL (arena lock; see arena_take_bump) */
    slab_t        slabs[PAGES_PER_SEGMENT];      /* descriptor of each run, at its first page */
} segment_t;

LOAM_INTERNAL void segment_small_pages(segment_t *seg);   /* lock held */

#define SEGMENT_HEADER_COMMIT  (((sizeof(segment_t) + OS_PAGE - 1) / OS_PAGE) * OS_PAGE)

/* Where segment_t.bump_holder keeps slab s's entry (arena lock). */
static inline struct tcache_bin **slab_bump_holder(slab_t *s)
{
    segment_t *seg = (segment_t *)((uintptr_t)s->start & ~(uintptr_t)SEGMENT_MASK);
    return &seg->bump_holder[s->page_index];
}

/* Page 0 past the header holds a side bitmap for the layer above: a bit per
 * 16-byte granule of the segment (32 KiB). Untouched, it costs nothing. */
#define SEGMENT_SIDE_BITS_OFFSET ((size_t)32 * 1024)
#define SEGMENT_SIDE_BITS_BYTES  (SEGMENT_SIZE / BLOCK_ALIGN / 8)
_Static_assert(sizeof(segment_t) <= SEGMENT_SIDE_BITS_OFFSET, "header overlaps the side bitmap");
_Static_assert(SEGMENT_SIDE_BITS_OFFSET + SEGMENT_SIDE_BITS_BYTES <= PAGE_SIZE, "side bitmap past page 0");
static inline uint64_t *segment_side_bits(segment_t *seg)
{
    return (uint64_t *)((char *)seg + SEGMENT_SIDE_BITS_OFFSET);
}

/* The size of a segment's upper_side mapping, when it has one: a bitmap
 * like the side bits. */
#define SEGMENT_UPPER_SIDE_BYTES SEGMENT_SIDE_BITS_BYTES

/* And a side byte per 512 bytes of the segment (8 KiB) for the layer above,
 * before the bitmap; also untouched until used. */
#define SEGMENT_SIDE_BYTES_SHIFT  9
#define SEGMENT_SIDE_BYTES_OFFSET ((size_t)16 * 1024)
#define SEGMENT_SIDE_BYTES_COUNT  (SEGMENT_SIZE >> SEGMENT_SIDE_BYTES_SHIFT)
_Static_assert(sizeof(segment_t) <= SEGMENT_SIDE_BYTES_OFFSET, "header overlaps the side bytes");
_Static_assert(SEGMENT_SIDE_BYTES_OFFSET + SEGMENT_SIDE_BYTES_COUNT <= SEGMENT_SIDE_BITS_OFFSET,
               "side bytes overlap the side bitmap");
static inline uint8_t *segment_side_bytes(segment_t *seg)
{
    return (uint8_t *)seg + SEGMENT_SIDE_BYTES_OFFSET;
}

/* At most LARGE_CACHE_MAX cached mappings per arena; one more between a
 * mapping joining the cache and the eviction that follows (large.c). */
#define LARGE_CACHE_MAX   24
#define LARGE_CACHE_SLOTS (LARGE_CACHE_MAX + 1)

typedef struct large {
    uint8_t       kind;          /* SEGMENT_LARGE */
    struct arena *arena;
    struct large *next, *prev;   /* the arena's large blocks */
    char         *block;
    size_t        size;          /* usable bytes */
    size_t        map_size;      /* bytes mapped from the mapping's base */
    size_t        requested;     /* bytes asked for */
    uint8_t       tag;           /* the arena's tag */
    bool          cached;        /* freed, kept for reuse: no block (size 0) */
    bool          reused;        /* served from the cache: its bytes are not zero */
    bool          pieced;        /* holds pages moved from other mappings (large.c) */
    bool          unmovable;     /* mremap failed to move it (large.c) */
    uint64_t      freed_at_ms;   /* when it was cached */
    uintptr_t     upper;         /* word of the layer above (e.g. the mark bit) */
} large_t;

/* What choosing a cached mapping reads, copied from its header. */
typedef struct large_cache_slot {
    large_t      *l;
    size_t        map_size;
    bool          pieced, unmovable;
} large_cache_slot_t;

/* ---- the segment map ---------------------------------------------------- */
/* Two levels over the 47-bit user address space at 4 MiB granules: 4096 leaf
 * pointers, each leaf 8192 entries. An entry is the base of the segment or
 * large mapping covering the granule. Writes under a lock; reads lock-free. */
#define SEGMAP_L2_BITS 13
#define SEGMAP_L1_SIZE ((size_t)1 << (47 - SEGMENT_SHIFT - SEGMAP_L2_BITS))
extern LOAM_INTERNAL AO_t segmap_l1[SEGMAP_L1_SIZE];

static inline void *segmap_lookup(uintptr_t a)
{
    if (LOAM_UNLIKELY(a >> 47))
        return NULL;
    AO_t *leaf = (AO_t *)AO_load(&segmap_l1[a >> (SEGMENT_SHIFT + SEGMAP_L2_BITS)]);
    if (LOAM_UNLIKELY(leaf == NULL))
        return NULL;
    return (void *)AO_load(&leaf[(a >> SEGMENT_SHIFT) & (((size_t)1 << SEGMAP_L2_BITS) - 1)]);
}
LOAM_INTERNAL void segmap_set(uintptr_t base, size_t len, void *value);
/* The last SEGMAP_RELEASED_RING ranges of segments and large mappings given
 * back to the OS (granule-aligned; best effort, lock-free): a free into one
 * is a block of a destroyed heap, or a double free, not a foreign pointer,
 * and the fault message can say so. */
#define SEGMAP_RELEASED_RING 64
LOAM_INTERNAL void segmap_note_released(uintptr_t base, size_t len);
LOAM_INTERNAL bool segmap_was_released(uintptr_t a);
/* Bounds of every address the map has ever named (they only widen): an
 * address outside them is in no segment or large block. A reader that sees
 * an older, narrower pair can only miss mappings made after it looked. */
extern LOAM_INTERNAL AO_t segmap_lowest, segmap_highest;

/* The free fast path's question "is this a slab segment of ours?" in one load:
 * a byte per 4 MiB granule (32 MiB of address space, untouched pages cost
 * nothing), SEGMENT_SLABS where a slab segment starts, else 0. */
#define SEGKIND_SIZE ((size_t)1 << (47 - SEGMENT_SHIFT))
extern LOAM_INTERNAL uint8_t segkind_map[SEGKIND_SIZE];
/* g: an address >> SEGMENT_SHIFT (the free fast path keeps it). */
static inline bool segkind_index_is_slabs(uintptr_t g)
{
    return LOAM_LIKELY(g < SEGKIND_SIZE) && segkind_map[g] == SEGMENT_SLABS;
}
static inline bool segkind_is_slabs(uintptr_t a)
{
    return segkind_index_is_slabs(a >> SEGMENT_SHIFT);
}
LOAM_INTERNAL void segkind_set(uintptr_t base, uint8_t kind);

/* The slab holding address a of segment seg (any page of a run). */
static inline slab_t *segment_page_slab(segment_t *seg, unsigned page)
{
    return seg->page_slab[page];
}
static inline slab_t *segment_slab_at(segment_t *seg, uintptr_t a)
{
    return segment_page_slab(seg, (unsigned)(a >> PAGE_SHIFT) & (PAGES_PER_SEGMENT - 1));
}

/* Division and divisibility by a block size without a divide. With
 * M = floor((2^64 - 1) / size) + 2 (one more than ceil(2^64 / size)), write
 * e = M * size - 2^64, so size <= e < 2 * size. For off = q * size + r with
 * |off| < 2^32 and size < 2^29, the 128-bit product off * M is
 * q * 2^64 + (q * e + r * M), and the second term never reaches 2^64. So:
 *   - off / size is the high half of off * M;
 *   - the low half is q * e (under 2^33) when r == 0, and at least
 *     M - 2^34 (far above 2^33) when r != 0 or off < 0;
 *   - hence off is a block start below block n iff low < n * e: one multiply
 *     and one compare test "in the slab, at a block start, below the bump
 *     line" together (the free fast path).
 * The "+ 2" rather than the usual "+ 1" (Lemire, Kaser and Kurz, "Faster
 * remainder by direct computation", 2019) keeps e > 0 for powers of two, so
 * the low half still counts blocks. tests/test_slab_math.c checks every class. */
static inline uint64_t slab_div_m(uint32_t size)
{
    return UINT64_MAX / size + 2;
}
/* e above: how much the low half grows per block. */
static inline uint64_t slab_div_step(uint32_t size)
{
    return slab_div_m(size) * size;
}
static inline size_t slab_offset_index(uint64_t off, uint64_t m)
{
    return (size_t)(((unsigned __int128)off * m) >> 64);
}

/* segment_slab_at for the free fast path, from g = a >> SEGMENT_SHIFT (which
 * it has computed for the kind map): seg->page_slab[(a >> PAGE_SHIFT) % 64]
 * with seg = g << SEGMENT_SHIFT is, with x = a >> PAGE_SHIFT,
 *   g * (SEGMENT_SIZE - 64 * 8) + offsetof(page_slab) + x * 8,
 * one multiply instead of a shift and a mask. GCC would build the multiple
 * out of three shifts and subtractions, hence the one-instruction asm. */
static inline slab_t *segment_slab_of_kind_index(uintptr_t g, uintptr_t a)
{
    enum { PAGE_SLAB_STRIDE = (int)(SEGMENT_SIZE - PAGES_PER_SEGMENT * sizeof(slab_t *)) };
    uintptr_t base;
#if defined(__x86_64__)
    __asm__("imulq %2, %1, %0" : "=r"(base) : "r"(g), "i"(PAGE_SLAB_STRIDE) : "cc");
#else
    base = g * PAGE_SLAB_STRIDE;
#endif
    return *(slab_t **)(base + offsetof(segment_t, page_slab) + (a >> PAGE_SHIFT) * sizeof(slab_t *));
}

/* Index of the block containing address a in slab s (a inside the run). */
static inline size_t slab_block_index(const slab_t *s, uintptr_t a)
{
    return slab_offset_index(a - (uintptr_t)s->start, s->div_m);
}

/* Move the bump line (arena lock held). */
static inline void slab_set_bumped(slab_t *s, uint32_t bumped)
{
    AO_int_store(&s->bumped, bumped);          /* addr_classify reads it lock-free */
    AO_int_store(&s->start_below, (uint32_t)(bumped * slab_div_step(s->block_size)));
}

/* Block i of s goes back into its slab's free set (arena lock held). Its
 * bit set already means a block freed twice that got past the free key (a
 * write into the freed block overwrote it): slab_free_twice stops there. */
LOAM_INTERNAL _Noreturn void slab_free_twice(slab_t *s, uint32_t i) __attribute__((cold));
static inline void slab_put_free(slab_t *s, uint32_t i)
{
    uint64_t *w = &s->free_bits[i / 64], bit = (uint64_t)1 << (i % 64);
    if (LOAM_UNLIKELY(*w & bit))
        slab_free_twice(s, i);
    *w |= bit;
    if (i / 64 < s->free_lo)
        s->free_lo = i / 64;
}

/* What an address is, for frees, heap_of and (later) conservative scanning. */
typedef enum {
    ADDR_FOREIGN = 0,     /* not inside any loam mapping */
    ADDR_BLOCK,           /* the start of a handed-out or free block */
    ADDR_INTERIOR,        /* inside a block, not at its start */
    ADDR_UNALLOCATED,     /* inside a loam mapping but in no block ever handed out */
} addr_kind_t;

typedef struct addr_info {
    addr_kind_t kind;
    segment_t  *segment;  /* slab blocks */
    slab_t     *slab;
    large_t    *large;    /* large blocks */
    char       *block;    /* the block's start (ADDR_BLOCK, ADDR_INTERIOR) */
    size_t      size;     /* the block's usable size */
    size_t      index;    /* block index in the slab */
} addr_info_t;

LOAM_INTERNAL void addr_classify(const void *p, addr_info_t *out);

/* ---- arenas ------------------------------------------------------------ */
typedef struct arena_bin {
    slab_t *partial;      /* slabs with free or never-used blocks; the head is where
                             allocation happens (its drain_below is 0). */
} arena_bin_t;

/* A class's transfer cache: addresses of free blocks (each carrying the
 * free key), the newest last. Its blocks count as out of their slabs, as a
 * thread cache's do. */
typedef struct arena_xfer {
    uint32_t count, cap;
    void    *slots[];
} arena_xfer_t;

typedef struct arena_counters {
    size_t out_bytes;     /* bytes of blocks out of slabs (live + thread-cached) */
    size_t out_blocks;
    size_t peak_out_bytes;/* high-water mark of out_bytes + large_usable */
    size_t requested;     /* requested bytes of live tracked blocks */
    size_t large_count, large_bytes;       /* blocks, mapped bytes */
    size_t large_usable;
    AO_t   large_requested;/* an in-place realloc of a large block updates it without the lock */
    AO_t   lock_contended;/* times a thread found the lock taken (counted outside the lock) */
    size_t slabs_made, slabs_released;
} arena_counters_t;

/* The thread-cache slot that never holds a cache (the runtime keeps it empty). */
#define TRACKED_SLOT 31

typedef struct arena {
    pthread_mutex_t lock;
    void      *owner;           /* the heap */
    uint8_t    owner_slot;
    uint8_t    tag;             /* copied into every slab (the layer above's object kind) */
    bool       track_requested;
    budget_t  *budget;
    struct arena *budget_next;  /* the next arena charging the same budget */
    uint32_t   index;
    arena_bin_t bins[NUM_CLASSES];
    slab_t    *free_runs[PAGES_PER_SEGMENT];   /* by run length; committed and not */
    segment_t *segments;
    /* Segments that may hold committed free pages, or no slab: the only
     * ones decay and give-back have work in, so their walks cost what is
     * there to give, not the size of the heap (segment.c). */
    segment_t *dirty;
    large_t   *large;
    /* Freed mappings kept for reuse (large.c), oldest first. An array in the
     * arena, not a list through the mappings: choosing one read every
     * cached mapping's header, each on a page of its own. */
    large_cache_slot_t large_cache[LARGE_CACHE_SLOTS];
    size_t     large_cache_bytes, large_cache_count;
    size_t     segment_count;
    size_t     retained_bytes;          /* committed pages in free runs */
    size_t     slab_pages;              /* pages in slabs, all segments */
    bool       huge_ok;                 /* the owner allows huge pages (arena_set_allow_huge) */
    bool       huge_pages;              /* its segments ask for them (segment.c) */
    size_t     retain_floor;            /* committed free-run bytes kept at least, set by
                                           the owner (arena_set_retain_floor); under the lock */
    uint64_t   kept_classes[(NUM_CLASSES + 63) / 64];   /* bit per class that may have an
                                           empty slab kept on its partial list */
    slab_t    *pending[NUM_CLASSES];    /* slabs the layer above visits before use */
    size_t     pending_count;
    bool       sweeping;                /* a walk of the segments is under way: no purge */
    uint64_t   next_purge_ms;
    bool       decay_left;              /* the last purge left memory still waiting for decay */
    /* Free runs past the retained budget, and cached large mappings past
     * the cache's, are given back by the background thread instead of the
     * freeing one while both flags are set (see arena_decommit_excess). decommit_later: the runtime's background
     * thread serves this arena (arena_set_decommit_later); decommit_due:
     * something waits for it. Under the lock; read without it (AO_char)
     * by the background thread to skip arenas with nothing due. */
    unsigned char decommit_later, decommit_due;
    /* Blocks thread caches flushed here, kept as their addresses for the
     * next refill of the class (arena_xfer_*): lazily made, under the lock. */
    arena_xfer_t *xfer[NUM_CLASSES];
    size_t     xfer_blocks;             /* in all of them */
    arena_counters_t c;
} arena_t;

LOAM_INTERNAL arena_t *arena_new(void *owner, uint8_t slot, uint8_t tag, budget_t *budget,
                                 bool track_requested, uint32_t index);
/* Unmaps every segment and large block of the arena, then frees it. */
LOAM_INTERNAL void     arena_destroy(arena_t *a);
LOAM_INTERNAL void     arena_lock(arena_t *a);
LOAM_INTERNAL bool     arena_trylock(arena_t *a);
LOAM_INTERNAL void     arena_unlock(arena_t *a);

/* Take up to n blocks of class cls (lock held), every block carrying the
 * free key (the caller clears it on each it hands out). Their addresses are
 * stored downwards from top, top[-1] first: a stack whose top is top[-1]
 * then pops them in the order taken (bumped blocks in address order).
 * Addresses, not a chain linked through the blocks: a caller that keeps
 * them in an array (a thread cache) would otherwise walk the chain again,
 * one cache miss after another. Returns how many (0: out of memory or over
 * budget). */
LOAM_INTERNAL unsigned arena_alloc_blocks(arena_t *a, unsigned cls, unsigned n, void **top);
/* Bump ranges (tcache.h): up to max free blocks of class cls next to each
 * other in one slab, for the cache bin `holder` (lock held). They come from
 * a pending slab's visit (alloc_pending_bump_hook: a run of dead blocks) or
 * from past a slab's bump line; a slab whose free blocks are in its free
 * set, or that has a range out already, gives none. Returns how many (0:
 * none here, refill the bin instead) and *start, the first one's address.
 *   - A slab has at most one range out, and records its holder
 *     (segment_t.bump_holder), so that a free of a block the holder has not
 *     handed out yet is refused (arena_in_bump_range).
 *   - The blocks are out of the slab, as a cache's are. The holder keeps
 *     the last one, the anchor, until it returns the range: the slab cannot
 *     empty meanwhile, so the holder can always find it again. */
LOAM_INTERNAL unsigned arena_take_bump(arena_t *a, unsigned cls, unsigned max,
                                       struct tcache_bin *holder, char **start);
/* The range's blocks [from, to) of slab s come back unused (lock held): past
 * the bump line again if they end at it, else into the free set, each with
 * the free key. The slab forgets its holder. */
LOAM_INTERNAL void     arena_return_bump(arena_t *a, slab_t *s, char *from, char *to);
/* The holder of s's range has used it up to its anchor (lock held): the
 * slab forgets it; the anchor stays out, for the holder to hand out. */
LOAM_INTERNAL void     arena_end_bump(slab_t *s);
/* p (a block start of s, lock held) lies in a bump range and has not been
 * handed out. */
LOAM_INTERNAL bool     arena_in_bump_range(slab_t *s, const void *p);
/* The arena's transfer cache (arena.c; lock held): put the first of a
 * thread cache's batch of n free blocks of class cls, all of this arena, as
 * they are, as many as there is room for (returned; the caller frees the
 * rest to their slabs, and 0 if the arena takes none); put every block it
 * holds back into its slab; how many of class cls it holds. */
LOAM_INTERNAL uint32_t arena_xfer_put(arena_t *a, unsigned cls, void *const *blocks, uint32_t n);
LOAM_INTERNAL void     arena_xfer_drain(arena_t *a);
LOAM_INTERNAL uint32_t arena_xfer_count(const arena_t *a, unsigned cls);
/* blocks[i..) as runs of one slab: the end of the run starting at i, its
 * slab in *sp (a cache or a transfer cache mostly holds runs of blocks
 * freed together). */
static inline uint32_t slab_run_end(void *const *blocks, uint32_t i, uint32_t n, slab_t **sp)
{
    segment_t *seg = (segment_t *)((uintptr_t)blocks[i] & ~SEGMENT_MASK);
    slab_t *s = segment_slab_at(seg, (uintptr_t)blocks[i]);
    uintptr_t lo = (uintptr_t)s->start, span = (uintptr_t)s->pages << PAGE_SHIFT;
    for (i++; i < n && (uintptr_t)blocks[i] - lo < span; i++)
        ;
    *sp = s;
    return i;
}
/* n free blocks of one size class (carrying the free key), each of any
 * slab and arena, back into their slabs' free sets. A slab's counts change
 * once per run of its blocks, and a block costs a lookup of its slab only
 * where the run changes: a cache flushed after random-order frees holds
 * runs of one block (batch-random: 93 instructions a block with a call per
 * run, about 45 here). *held is the arena whose lock the caller holds
 * (NULL: none); the lock moves to each block's arena as needed, and the
 * caller releases *held's at the end. */
LOAM_INTERNAL void     arena_free_blocks(arena_t **held, void *const *blocks, uint32_t n);
/* Raise the arena's high-water mark (lock held). */
LOAM_INTERNAL void     arena_note_peak(arena_t *a);
/* Return a block to its slab (the slab's arena lock held). */
LOAM_INTERNAL void     arena_free_block(arena_t *a, slab_t *s, free_block_t *b);
/* n blocks of slab s are back in its free set (slab_put_free, lock held):
 * the counts, the partial list, and the slab's release once it is empty. A
 * pending slab emptied by its sweep stays on its partial list, stamped for
 * decay. */
LOAM_INTERNAL void     arena_blocks_returned(arena_t *a, slab_t *s, uint32_t n);
/* Every block out of slab s is garbage, which the layer above knows (lock
 * held, no block of s in a cache, s not pending): the slab goes back at
 * once, as if they had all been freed, without a read of its blocks. */
LOAM_INTERNAL void     arena_release_dead_slab(arena_t *a, slab_t *s);
/* Hand free runs that have stayed free past decay_ms back to the OS (lock held).
 * force: all of them now. Returns bytes decommitted; sets a->decay_left. */
LOAM_INTERNAL size_t   arena_purge(arena_t *a, bool force);
/* The background thread's part (no lock held): give back the free runs past
 * the arena's retained budget, the arena lock dropped around each batch's
 * madvise. Returns the bytes given back. */
LOAM_INTERNAL size_t   arena_decommit_excess(arena_t *a);
/* on: the arena's free runs past the budget wait for arena_decommit_excess
 * (only while alloc_background_decommit is set too); off: given back at
 * once again, and what waits goes now. Takes the lock. */
LOAM_INTERNAL void     arena_set_decommit_later(arena_t *a, bool on);
/* The owner expects the arena's slabs to grow back to `bytes` soon (a
 * collected heap's, after a collection's sweeps empty them): free runs up to
 * that much stay committed instead of going back and faulting in again.
 * 0: none past the usual budget. */
LOAM_INTERNAL void     arena_set_retain_floor(arena_t *a, size_t bytes);
LOAM_INTERNAL void     arena_allow_huge(arena_t *a, bool ok);   /* see arena_set_allow_huge */
/* Bytes in the arena's slabs now (a snapshot). */
LOAM_INTERNAL size_t   arena_slab_bytes(arena_t *a);
/* Set by the runtime while its background thread runs. */
extern LOAM_INTERNAL AO_t alloc_background_decommit;
/* For tests: called by arena_decommit_excess with a batch of runs out of
 * the bins and the lock dropped, before their pages are given back
 * (given_back false) and after (true). */
extern LOAM_INTERNAL void (*alloc_decommit_hook)(arena_t *a, bool given_back);
/* Release the empty slabs kept for reuse: all (force) or those empty for
 * decay_ms (lock held). true: some are still kept. */
LOAM_INTERNAL bool     arena_release_kept_slabs(arena_t *a, bool force, uint64_t now);
/* Set (never cleared here) whenever an arena starts keeping memory that only
 * decay will give back: a free run, an emptied segment, a cached large
 * mapping (not the one empty slab a class keeps for its next allocation);
 * and when a thread cache grows, since only the purge thread asks an idle
 * cache to give its blocks back (tcache_grow).
 * The runtime's background purge clears it and looks (runtime/purge.c). */
extern LOAM_INTERNAL AO_t alloc_decay_due;
static inline void alloc_note_decay_due(void)
{
    if (!AO_load(&alloc_decay_due))        /* no store (and no line bouncing) when set */
        AO_compare_and_swap_full(&alloc_decay_due, 0, 1);   /* seq-cst: before the poke's look (purge.c) */
}
/* Page runs (segment.c; lock held). */
LOAM_INTERNAL slab_t  *run_alloc(arena_t *a, unsigned pages);
LOAM_INTERNAL void     run_free(arena_t *a, slab_t *r);
LOAM_INTERNAL void     segment_release_all(arena_t *a);
/* Requested size of tracked blocks, kept as waste (block_size - requested) per
 * block: 16 bits while a block is under 64 KiB (waste <= size fits), else 32. */
static inline size_t slab_waste_width(const slab_t *s)
{
    return s->block_size <= UINT16_MAX ? sizeof(uint16_t) : sizeof(uint32_t);
}
static inline void slab_set_waste(slab_t *s, size_t index, size_t requested)
{
    size_t w = s->block_size - requested;
    if (!s->waste)
        return;
    if (slab_waste_width(s) == sizeof(uint16_t))
        s->waste[index] = (uint16_t)w;
    else
        ((uint32_t *)(void *)s->waste)[index] = (uint32_t)w;
}
static inline size_t slab_get_requested(const slab_t *s, size_t index)
{
    size_t w = slab_waste_width(s) == sizeof(uint16_t) ? s->waste[index]
                                                       : ((const uint32_t *)(const void *)s->waste)[index];
    return s->block_size - w;
}

/* A slab that could empty if cached blocks did not pin it: few blocks out,
 * and not where its arena allocates from. Frees to it bypass thread caches. */
static inline bool slab_is_draining(slab_t *s)
{
    return AO_int_load(&s->used) <= AO_int_load(&s->drain_below);
}

/* The free fast path tests no draining: a draining slab carries the
 * no-cache slot, whose cache refuses every push. Kept wherever used or
 * drain_below change (arena lock held); a fast path that reads a stale slot
 * only sends one block the other way, which is harmless either way. */
static inline void slab_note_draining(slab_t *s)
{
    uint8_t slot = s->used <= s->drain_below ? TRACKED_SLOT : s->home_slot;
    if (AO_char_load(&s->owner_slot) != slot)
        AO_char_store(&s->owner_slot, slot);
}

/* Release kept empty slabs and decommit every free run now (lock held).
 * Sparse slabs also give back their free tails, scanning their free sets:
 * at most *walk blocks in all (decremented). */
LOAM_INTERNAL size_t   arena_trim(arena_t *a, size_t *walk);

/* A heap's arenas: at most `max`, created on contention. The first few
 * live in the set (most heaps never have more); the array for the rest is
 * made when the set first outgrows them, and never moves: readers index it
 * after an acquiring load of count, which its pointer was stored before.
 * Three sets of 256 pointers made every heap's struct 6.6 KiB, two pages
 * of each heap resident (a small collected heap: 33 KiB in all). */
#define ARENA_SET_MAX    256
#define ARENA_SET_INLINE 4
typedef struct arena_set {
    pthread_mutex_t lock;        /* guards growth */
    arena_t  *first[ARENA_SET_INLINE];
    arena_t **more;              /* arenas ARENA_SET_INLINE.. (meta_alloc), or NULL */
    AO_t      count;
    unsigned  max;
    AO_t      users;             /* caches that allocate from the set: growth stops there */
    void     *owner;
    uint8_t   slot;
    uint8_t   tag;
    bool      track;
    bool      huge_ok;           /* its arenas may ask for huge pages (arena_set_allow_huge) */
    budget_t *budget;
} arena_set_t;
LOAM_INTERNAL void     arena_set_init(arena_set_t *set, void *owner, uint8_t slot, uint8_t tag,
                                      budget_t *budget, bool track, unsigned max);
LOAM_INTERNAL void     arena_set_destroy(arena_set_t *set);
/* Arena i of the set, i below an acquiring load of its count. */
static inline arena_t *arena_set_at(const arena_set_t *set, unsigned i)
{
    return i < ARENA_SET_INLINE ? set->first[i] : set->more[i - ARENA_SET_INLINE];
}
LOAM_INTERNAL arena_t *arena_set_first(arena_set_t *set);      /* created on first use */
/* Arenas of the set, and those it makes later, may ask for transparent huge
 * pages once their slabs pass ARENA_HUGE_PAGES_AFTER (a collected heap's:
 * segment.c says why not every heap's); false stops that. */
LOAM_INTERNAL void     arena_set_allow_huge(arena_set_t *set, bool ok);
/* Lock `preferred` if free, else another free arena, else a new one (up to
 * max), else wait for `preferred`. Returns the locked arena (NULL: no memory). */
LOAM_INTERNAL arena_t *arena_set_lock_some(arena_set_t *set, arena_t *preferred);

/* Pending slabs: the layer above (the collector's lazy sweep) marks a slab
 * pending; the arena calls alloc_pending_hook(a, s) (lock held) before it
 * takes any block from it, and keeps it from being released meanwhile. The
 * hook must call arena_pending_done.
 *
 * alloc_pending_take_hook, when set, is called instead by refills: it visits
 * the slab only as far as needed to find up to n blocks for the caller, and
 * stores their addresses downwards from top as arena_alloc_blocks does (each
 * block carrying the free key).
 * Blocks found this way were out of the slab and stay counted as out (now in
 * a thread cache). It returns fewer than n only once the visit is complete
 * and it has called arena_pending_done. */
LOAM_INTERNAL void arena_pending_add(arena_t *a, slab_t *s);        /* lock held */
LOAM_INTERNAL void arena_pending_done(arena_t *a, slab_t *s);       /* lock held */
LOAM_INTERNAL void arena_pending_visit_all(arena_t *a);            /* lock held */
extern LOAM_INTERNAL void (*alloc_pending_hook)(arena_t *a, slab_t *s);
extern LOAM_INTERNAL unsigned (*alloc_pending_take_hook)(arena_t *a, slab_t *s, unsigned n, void **top);
/* For a bump range (arena_take_bump): the next run of at most max blocks
 * of the visit that were out and are garbage, next to each other, and its
 * first block's index in *first. The visit moves past them; the blocks stay
 * counted as out and get no free key. Returns 0 only once the visit is
 * complete (arena_pending_done called). Blocks of 1 KiB or less. */
extern LOAM_INTERNAL unsigned (*alloc_pending_bump_hook)(arena_t *a, slab_t *s, unsigned max, uint32_t *first);

/* Set by the runtime: reports heap corruption found inside the core (then the core traps). */
extern LOAM_INTERNAL void (*alloc_fault_hook)(const char *what, void *addr);

/* Per-arena statistic walk (lock held). */
typedef struct arena_class_stats {
    size_t slabs, blocks_used, blocks_free, block_size;
} arena_class_stats_t;
typedef struct arena_stats {
    arena_class_stats_t cls[NUM_CLASSES];
    size_t slab_bytes, slab_free_bytes, free_run_bytes, committed_bytes, reserved_bytes;
    size_t resident_bytes, segments;
} arena_stats_t;
LOAM_INTERNAL void arena_collect_stats(arena_t *a, arena_stats_t *st, bool resident);

/* ---- large blocks ------------------------------------------------------ */
LOAM_INTERNAL void  *large_alloc(arena_t *a, size_t n, size_t align);   /* zero-filled */
/* Free a large block: its mapping is kept for reuse (decay_ms at most) when
 * the arena's cache has room, else unmapped. */
LOAM_INTERNAL void   large_free(large_t *l);
/* Unmap a cached mapping, or a live block's, now (no cache). */
LOAM_INTERNAL void   large_release(large_t *l);
/* Unmap the cached mappings idle for decay_ms (all: force); lock held.
 * Returns the bytes unmapped; *left: some stay cached. */
LOAM_INTERNAL size_t large_cache_purge(arena_t *a, bool force, uint64_t now, bool *left);
/* Cached mappings past the cache's budget, out of the cache as a list (lock
 * held; a free leaves them for the background thread where it serves the
 * arena), and their unmapping (lock not held): returns the bytes. */
LOAM_INTERNAL large_t *large_cache_take_excess_locked(arena_t *a);
LOAM_INTERNAL size_t   large_unmap_list(large_t *list);
/* The last few large blocks freed by the program: their mappings are gone,
 * so a second free of one would otherwise look like a foreign pointer. */
LOAM_INTERNAL void   large_remember_freed(const void *block);
LOAM_INTERNAL bool   large_was_freed(const void *p);
/* Resize in place or by moving the pages (mremap); NULL on failure (block intact). */
LOAM_INTERNAL void  *large_realloc(large_t *l, size_t n);

/* ---- the page source --------------------------------------------------- */
LOAM_INTERNAL void  *os_reserve_aligned(size_t size, size_t align);   /* committed lazily by touch */
/* The same, at p with p + offset aligned (offset < align). */
LOAM_INTERNAL void  *os_reserve_offset_aligned(size_t size, size_t align, size_t offset);
/* The same for a large block: a mapping the kernel's overcommit policy
 * judges (no MAP_NORESERVE), so an impossible size fails with ENOMEM. */
LOAM_INTERNAL void  *os_map_block(size_t size, size_t align, size_t offset);
LOAM_INTERNAL void   os_release(void *p, size_t size);
LOAM_INTERNAL void   os_decommit(void *p, size_t size);
LOAM_INTERNAL void   os_advise_huge(void *p, size_t size);   /* MADV_HUGEPAGE */
LOAM_INTERNAL void   os_advise_small(void *p, size_t size);  /* MADV_NOHUGEPAGE */
LOAM_INTERNAL size_t os_resident(void *p, size_t size);
LOAM_INTERNAL uint64_t os_now_ms(void);
LOAM_INTERNAL unsigned os_cpu_count(void);         /* CPUs the process may run on */
LOAM_INTERNAL unsigned os_runnable_threads(void);  /* machine-wide, now; 0: unknown */
LOAM_INTERNAL uintptr_t os_random_seed(void);   /* from the kernel (getrandom) */
extern LOAM_INTERNAL AO_t os_reserved_bytes;    /* process-wide, all loam mappings */
extern LOAM_INTERNAL AO_t os_committed_bytes;

/* ---- metadata (arenas, heaps, thread caches, side arrays) --------------- */
LOAM_INTERNAL void *meta_alloc(size_t size);     /* zeroed; NULL on failure */
LOAM_INTERNAL void  meta_free(void *p, size_t size);

/* ---- tuning the layer above sets (options) ----------------------------- */
typedef struct alloc_tuning {
    size_t   mmap_threshold;
    uint64_t decay_ms;
    size_t   retain_max;      /* committed free-run bytes an arena may keep past a free,
                                 or as much as it has in slabs if that is more */
    bool     huge_pages;      /* large blocks grown by realloc, and segments of an arena
                                 past ARENA_HUGE_PAGES_AFTER: MADV_HUGEPAGE */
    size_t   tcache_budget;   /* cache growth past each cache's own allowance that all
                                 caches share (tcache_grow) */
} alloc_tuning_t;
extern LOAM_INTERNAL alloc_tuning_t alloc_tuning;
/* What the purge thread and the allocation paths read while a program may
 * set the options (runtime/options.c stores each atomically). Relaxed: an
 * allocation racing a change may see either value. */
static inline size_t alloc_mmap_threshold(void) { return __atomic_load_n(&alloc_tuning.mmap_threshold, __ATOMIC_RELAXED); }
static inline uint64_t alloc_decay_ms(void) { return __atomic_load_n(&alloc_tuning.decay_ms, __ATOMIC_RELAXED); }
static inline size_t alloc_retain_max(void) { return __atomic_load_n(&alloc_tuning.retain_max, __ATOMIC_RELAXED); }
static inline bool alloc_huge_pages(void) { return __atomic_load_n(&alloc_tuning.huge_pages, __ATOMIC_RELAXED); }
static inline size_t alloc_tcache_budget(void) { return __atomic_load_n(&alloc_tuning.tcache_budget, __ATOMIC_RELAXED); }

/* The mutex protecting the segment map and the metadata allocator: the
 * runtime takes it around fork. */
LOAM_INTERNAL void alloc_prefork(void);
LOAM_INTERNAL void alloc_postfork(void);
/* The background thread's lock (segment.c): taken before every other lock,
 * by the background thread over work that fork must not cut in two (a run
 * out of its bins, a collector's lock held) and by fork's prepare handler. */
LOAM_INTERNAL void alloc_background_lock(void);
LOAM_INTERNAL void alloc_background_unlock(void);
extern LOAM_INTERNAL pthread_mutex_t segmap_lock;   /* segment.c */

#endif
