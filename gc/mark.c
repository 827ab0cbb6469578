/* gc/mark.c — marking.
 *
 * A mark bit per block start lives in its segment's side bitmap (a bit per
 * 16-byte granule) or, for a large block, in its header's `upper` word. Grey
 * blocks wait on an explicit mark stack, so marking depth never touches the C
 * stack: a ten-million-cell list is a loop, not a recursion.
 *
 * Invariant kept here: a block is pushed at most once per collection (its bit
 * is set when pushed), and only allocated blocks are marked — a block whose
 * second word carries the free key is free (in a slab's free set or a thread cache)
 * and is never pushed, so a trace callback never sees a free block.
 *
 * Parallel marking (heaps with LOAM_PARALLEL_MARK, option gc_markers, once
 * the last collection found gc_parallel_min live bytes to scan, default 4
 * MiB, or for a minor collection once the last minor one scanned that much;
 * atomic blocks, marked but never scanned, do not count (GCBench's 4 MB
 * array of doubles made its markings of 0.2 MB eligible): marking
 * less takes a millisecond or two, and on the 2-CPU bench machine a helper
 * woken for it took part in none of the Lisp example's markings of 1.5 MiB
 * but made its longest pause 0.64 ms instead of 0.59, median of 11 runs;
 * binary-trees 16's 2 MiB and GCBench ran as fast alone): the roots are marked
 * by the collecting thread alone; the grey blocks they leave
 * are then drained by it and by helper threads of a process-wide pool, each
 * with a stack of its own. A marker whose stack holds work while another is
 * idle gives away the bottom half of its stack (the oldest entries, nearest
 * the roots: the biggest pieces of the graph) through a shared pool; marking
 * ends when every marker is idle and the pool is empty. From the first time
 * the collecting thread gives work away, every marker sets mark bits with an
 * atomic or, so two markers never lose each other's bits in a shared word,
 * and exactly one of them pushes a block. Until then it marks alone with
 * plain stores (a helper marks nothing before it takes work from the pool):
 * a marking that a helper joins late, or never, pays no locked instruction
 * for the blocks marked before.
 */
#include "gc/gc.h"
#include "alloc/memcheck.h"

#include <sys/mman.h>

/* ---- mark bits ------------------------------------------------------------------ */

/* The word of a segment's side bitmap that holds the bit of the granule
 * address p falls in, and that bit: from p alone (a word is 64 granules,
 * 1 KiB of the segment; a shift takes its count mod 64). */
static inline uint64_t *granule_word(uint64_t *bits, uintptr_t p)
{
    return (uint64_t *)(void *)((char *)bits + ((p >> 7) & ((SEGMENT_MASK >> 10) << 3)));
}

static inline uint64_t granule_bit(uintptr_t p)
{
    return (uint64_t)1 << ((p >> 4) & 63);
}

/* Set bit m of word w; true: it was set already. Shared: other markers
 * run, the word is read and set atomically (a relaxed load first: a block
 * reached twice costs no locked instruction the second time). */
static inline bool word_test_and_set(uint64_t *w, uint64_t m, bool shared)
{
    if (shared) {
        if (__atomic_load_n(w, __ATOMIC_RELAXED) & m)
            return true;
        return (__atomic_fetch_or(w, m, __ATOMIC_RELAXED) & m) != 0;
    }
    uint64_t old = *w;
    *w = old | m;
    return (old & m) != 0;
}

static inline bool bit_test(const uint64_t *bits, size_t i)
{
    return (bits[i >> 6] >> (i & 63)) & 1;
}

static inline size_t granule_of(segment_t *seg, const char *block)
{
    return (size_t)(block - (char *)seg) / BLOCK_ALIGN;
}

/* ---- the mark stack ----------------------------------------------------------------- */

/* A marker's stack holds MARK_STACK_MIN entries at least (64 KiB, touched
 * only as deep as markings go): share_take relies on it. */
#define MARK_STACK_MIN 4096

static void set_limit(marker_t *m)
{
    m->limit = m->watch ? 0 : m->reach;
}

static bool stack_grow(marker_t *m)
{
    size_t cap = m->cap ? m->cap * 2 : MARK_STACK_MIN;
    mark_entry_t *s = os_reserve_aligned(cap * sizeof *s, OS_PAGE);
    if (!s)
        return false;
    if (m->stack) {
        memcpy(s, m->stack, m->sp * sizeof *s);
        os_release(m->stack, m->cap * sizeof *s);
    }
    m->stack = s;
    m->cap = m->pages.touched = cap;
    if (m->reach == 0)
        m->reach = cap;
    set_limit(m);
    return true;
}

/* After a marking that used `used` entries of an area (a mark stack, the
 * shared pool): how many of its first entries to keep resident, or 0 to
 * keep it as it is. Its pages stay resident as deep as any marking went: a
 * marking that pushed a million entries kept 16 MiB for the heap's life.
 * Once MARK_SPIKE_QUIET markings in a row used a quarter of that or less,
 * the pages past twice the most they used go back to the OS; the mapping
 * stays, and a deeper marking touches them again. The wait is so that a
 * heap whose major collections go deep and minor ones shallow does not
 * give them back between each. */
#define MARK_SPIKE_QUIET 8

static size_t spike_trim(gc_spike_t *w, size_t used, size_t least)
{
    size_t need = used * 2 > least ? used * 2 : least;
    if (need > w->need)
        w->need = need;
    if (w->touched < 2 * w->need) {
        w->quiet = 0;                   /* used as much as it has: nothing to give */
        w->need = 0;
        return 0;
    }
    if (++w->quiet < MARK_SPIKE_QUIET)
        return 0;
    size_t keep = w->need;
    w->quiet = 0;
    w->need = 0;
    return keep;
}

/* Entries keep..touched of area go back; the area keeps its first keep. */
static void spike_give_back(gc_spike_t *w, void *area, size_t entry, size_t keep)
{
    os_decommit((char *)area + keep * entry, (w->touched - keep) * entry);
    w->touched = keep;
}

/* After a marking (sp 0); `reach` says how deep it went. The next marking
 * starts from the least reach again. */
static void stack_trim(marker_t *m)
{
    size_t keep = spike_trim(&m->pages, m->reach, MARK_STACK_MIN);
    if (keep)
        spike_give_back(&m->pages, m->stack, sizeof *m->stack, keep);
    m->reach = m->cap < MARK_STACK_MIN ? m->cap : MARK_STACK_MIN;
    set_limit(m);
}

void gc_mark_stack_release(gc_state_t *gc)
{
    if (gc->mk.stack)
        os_release(gc->mk.stack, gc->mk.cap * sizeof *gc->mk.stack);
    gc->mk.stack = NULL;
    gc->mk.cap = gc->mk.sp = gc->mk.limit = gc->mk.reach = 0;
    gc->mk.pages = (gc_spike_t){ 0 };
}

/* Pushed with a kind: a conservative candidate whose block must be checked
 * for the free key when it is scanned. */
#define MARK_VERIFY 4u
/* Not a block: a wake-up for the ephemeron pairs waiting for a key just
 * marked, the first one's index + 1 in the size's place (ephemeron.c). The
 * one kind value no block has: any entry past LOAM_TRACED is one of these
 * two. */
#define MARK_WAKE 3u
_Static_assert((MARK_VERIFY | LOAM_TRACED) <= MARK_KIND_MASK && MARK_WAKE == LOAM_TRACED + 1 &&
               LOAM_CONSERVATIVE < MARK_WAKE && LOAM_ATOMIC < MARK_WAKE,
               "the entry's kind bits hold a kind and the flag, or the wake-up");

static void __attribute__((noinline)) push_slow(marker_t *m, char *obj, size_t size, unsigned kind)
{
    if (m->sp == m->cap && !stack_grow(m)) {
        m->overflow = true;             /* marked but not scanned: found again by the rescan */
        if (kind == MARK_WAKE)          /* not a block the rescan finds: the settling looks again */
            AO_store(&m->gc->eph_lost, 1);
        return;
    }
    if (m->sp >= m->reach) {            /* deeper than this marking went yet */
        m->reach = m->reach * 2 < m->cap ? m->reach * 2 : m->cap;
        if (m->reach > m->pages.touched)
            m->pages.touched = m->reach;
        set_limit(m);
    }
    m->stack[m->sp++] = (mark_entry_t){ obj, size | kind };
}

/* The stack is full, or the marker watches for ephemeron keys: a block
 * newly marked that is the key of waiting pairs wakes them. */
static void __attribute__((noinline)) push_limit(marker_t *m, char *obj, size_t size, unsigned kind)
{
    if (m->watch) {
        size_t head = gc_ephemeron_waiting(m->gc, obj);
        if (head)
            push_slow(m, NULL, head * BLOCK_ALIGN, MARK_WAKE);
    }
    if (kind != LOAM_ATOMIC)
        push_slow(m, obj, size, kind);
}

/* The common push stays small: the growth path, the note of a new depth
 * and the watch for ephemeron keys are out of line, behind the one test a
 * block to scan made before (its stack pointer against `limit`), so the marking
 * fast path saves no registers. An atomic block, never pushed, tests the
 * watch itself: it may be a key (a string, say). */
static inline __attribute__((always_inline)) void
push(marker_t *m, char *obj, size_t size, unsigned kind)
{
    m->marked_bytes += size;
    if (kind == LOAM_ATOMIC) {          /* black at once: nothing inside to follow */
        m->atomic_bytes += size;
        if (LOAM_UNLIKELY(m->watch))
            push_limit(m, obj, size, kind);
        return;
    }
    if (LOAM_UNLIKELY(m->sp >= m->limit)) {
        push_limit(m, obj, size, kind);
        return;
    }
    m->stack[m->sp++] = (mark_entry_t){ obj, size | kind };
}

/* ---- finding the block behind a candidate pointer ---------------------------------- */

/* Candidates mostly fall in slabs found a moment ago (objects allocated
 * together point at each other), so each marker keeps the slabs it found in
 * a small direct-mapped cache by page: a hit costs a subtraction and a
 * compare instead of the walk from the kind map through the segment header
 * to the slab descriptor (a tree of 16 MiB spans some 300 slabs, visited in
 * no particular order). The slabs cannot change while marking (the world is
 * stopped and marking allocates nothing); gc_mark_begin forgets them before
 * each marking. */
_Static_assert(sizeof(struct mark_slab_cache) == 64, "a slab cache entry is 64 bytes");

static inline struct mark_slab_cache *slab_entry(marker_t *m, uintptr_t w)
{
    return &m->slabs[(w >> PAGE_SHIFT) % MARK_SLAB_CACHE];
}

static void forget_slab(marker_t *m)
{
    for (size_t w = 0; w < MARK_SLAB_CACHE / 64; w++) {
        for (uint64_t filled = m->slabs_filled[w]; filled; filled &= filled - 1) {
            size_t i = w * 64 + (size_t)__builtin_ctzll(filled);
            m->slabs[i].lo = 0;
            m->slabs[i].span = 0;
        }
        m->slabs_filled[w] = 0;
    }
}

/* What a marker counts in a marking (drain_parallel sums them). */
static void marker_counts_reset(marker_t *m)
{
    m->marked_bytes = 0;
    m->survivor_bytes = 0;
    m->atomic_bytes = 0;
}

void gc_mark_begin(gc_state_t *gc)
{
    /* The last marking's weak fields were cleared (a leak check's are
     * dropped unread); their list shrinks after a spike. */
    gc_array_trim(&gc->weak_fields, &gc->cap_weak_fields, sizeof *gc->weak_fields, gc->nweak_fields);
    gc->nweak_fields = 0;
    gc->neph = gc->eph_seen = gc->eph_waiting = 0;
    if (gc->eph_map.n)
        objmap_clear(&gc->eph_map);
    AO_store(&gc->eph_lost, 0);
    gc_mark_watch(gc, false);           /* limit: the reach the last marking's gc_mark_end set */
    marker_counts_reset(&gc->mk);
    gc->mk.aging = false;
    gc->helper_marked = 0;
    gc->mk.shared = false;
    gc->mk.may_share = false;
    forget_slab(&gc->mk);
}

static void remember_slab(marker_t *m, struct mark_slab_cache *c, segment_t *seg, slab_t *s)
{
    size_t i = (size_t)(c - m->slabs);
    m->slabs_filled[i / 64] |= (uint64_t)1 << (i % 64);
    c->lo = (uintptr_t)s->start;
    c->span = (uintptr_t)s->bumped * s->block_size;
    c->div_m = s->div_m;
    c->bits = segment_side_bits(seg);
    c->size = s->block_size;
    c->tag = s->tag;
    c->abits = gc_age_bits(seg);
}

/* A candidate in no cached slab: a large block of this heap is marked here;
 * a slab block of this heap has its slab cached in its entry (true). */
static bool __attribute__((noinline)) find_slab(marker_t *m, uintptr_t w, bool interior)
{
    gc_state_t *gc = m->gc;
    void *base;
    if (LOAM_LIKELY(segkind_is_slabs(w))) {
        base = (void *)(w & ~(uintptr_t)SEGMENT_MASK);   /* one load: the kind map */
    } else {
        base = segmap_lookup(w);
        if (!base || *(uint8_t *)base != SEGMENT_LARGE)
            return false;
    }
    if (*(uint8_t *)base == SEGMENT_LARGE) {
        large_t *l = base;
        uintptr_t b = (uintptr_t)l->block;
        if (l->arena->owner != gc->heap || w < b || w >= b + l->size || (!interior && w != b))
            return false;
        if (m->shared) {
            if (__atomic_fetch_or(&l->upper, (uintptr_t)1, __ATOMIC_RELAXED) & 1)
                return false;
        } else {
            if (l->upper & 1)
                return false;
            l->upper |= 1;
        }
        push(m, l->block, l->size, l->tag);
        return false;
    }
    segment_t *seg = base;
    if (seg->owner != gc->heap)
        return false;
    slab_t *s = segment_slab_at(seg, w);
    if (s->state != RUN_SLAB)
        return false;
    remember_slab(m, slab_entry(m, w), seg, s);
    return true;
}

/* A minor collection's marker has just marked young block g (exactly one
 * marker does): its age bit flips (generation.c). Clear, the block
 * survives for the first time and stays young (mark and age set); set, it
 * is a survivor reached again, and old now (mark only). */
static inline __attribute__((always_inline)) void
age_block(marker_t *m, uint64_t *abits, uintptr_t block, size_t size)
{
    uint64_t bit = granule_bit(block), *w = granule_word(abits, block), old;
    if (m->shared) {
        old = __atomic_fetch_xor(w, bit, __ATOMIC_RELAXED);
    } else {
        old = *w;
        *w = old ^ bit;
    }
    if (old & bit)
        return;
    uint64_t page = (uint64_t)1 << ((block & SEGMENT_MASK) >> PAGE_SHIFT);
    if (!(__atomic_load_n(&abits[0], __ATOMIC_RELAXED) & page))
        __atomic_fetch_or(&abits[0], page, __ATOMIC_RELAXED);
    m->survivor_bytes += size;
}

/* Mark the block of this heap that contains w (interior: any address inside
 * it; else only its start), w inside the cached slab c. A precise
 * candidate comes from the embedder (a trace or roots callback, a root slot),
 * who vouches that it names a live object: the free-key check, which would
 * touch the object's memory before its scan does, is for conservative words
 * only. */
static inline __attribute__((always_inline)) void
mark_in_slab(marker_t *m, struct mark_slab_cache *c, uintptr_t w, bool interior, bool precise)
{
    /* Everything read from the entry before the mark bit's store, which the
     * compiler must otherwise assume can change it. */
    const uintptr_t lo = c->lo;
    const uint32_t size = c->size;
    uint64_t *const bits = c->bits;
    unsigned kind = c->tag;
    size_t idx = slab_offset_index(w - lo, c->div_m);
    char *block = (char *)lo + idx * size;
    if (!interior && (uintptr_t)block != w)
        return;
    /* A conservative word may name a free block. Reading its free key now
     * would touch its memory before the prefetch ring does; for a block that
     * will be scanned anyway the check waits for the scan (MARK_VERIFY), and a
     * free block marked meanwhile is harmless: the sweep skips marked blocks
     * and clears their bits, and a free block is never swept. */
    if (!precise) {
        if (kind == LOAM_ATOMIC) {
            if (((free_block_t *)block)->freed_key == loam_free_key)
                return;                 /* a free block: nothing lives there */
        } else {
            kind |= MARK_VERIFY;
        }
    }
    if (word_test_and_set(granule_word(bits, (uintptr_t)block), granule_bit((uintptr_t)block), m->shared))
        return;
    if (LOAM_UNLIKELY(m->aging))
        age_block(m, c->abits, (uintptr_t)block, size);
    push(m, block, size, kind);
}

/* w in no cached slab: look it up (out of line: the common case stays a
 * leaf that saves no registers). */
static void __attribute__((noinline)) mark_elsewhere(marker_t *m, uintptr_t w, bool interior, bool precise)
{
    /* Most conservative words that are not pointers are small numbers or
     * zero: the kernel maps nothing in the first 64 KiB (mmap_min_addr), so
     * they stop here. */
    if (w < 65536)
        return;
    /* Other numbers mostly lie outside every mapping loam ever made. The
     * collected heap's own mappings were made before this marking began. */
    if (w < AO_load(&segmap_lowest) || w >= AO_load(&segmap_highest))
        return;
    if (!find_slab(m, w, interior))
        return;
    struct mark_slab_cache *c = slab_entry(m, w);
    if (w - c->lo >= c->span)
        return;                         /* past the slab's bump line: no block there */
    mark_in_slab(m, c, w, interior, precise);
}

static inline __attribute__((always_inline)) void
mark_candidate(marker_t *m, uintptr_t w, bool interior, bool precise)
{
    struct mark_slab_cache *c = slab_entry(m, w);
    if (LOAM_UNLIKELY(w - c->lo >= c->span)) {
        mark_elsewhere(m, w, interior, precise);
        return;
    }
    mark_in_slab(m, c, w, interior, precise);
}

void gc_mark_word(gc_state_t *gc, uintptr_t w)
{
    mark_candidate(&gc->mk, w, true, false);
}

void gc_mark_precise(gc_state_t *gc, uintptr_t w)
{
    mark_candidate(&gc->mk, w, true, true);
}

/* Conservative: every aligned word of [start, end). Stacks and registers are
 * read here, including bytes sanitizers consider out of bounds. */
__attribute__((no_sanitize("address"))) __attribute__((no_sanitize("thread")))
static void mark_range(marker_t *m, const void *start, const void *end)
{
    uintptr_t a = ((uintptr_t)start + sizeof(void *) - 1) & ~(uintptr_t)(sizeof(void *) - 1);
    for (; a + sizeof(void *) <= (uintptr_t)end; a += sizeof(void *)) {
        if (!mc_word_defined((const void *)a))
            continue;                   /* memcheck builds: never written, no pointer */
        mark_candidate(m, *(const uintptr_t *)a, true, false);
    }
}

void gc_mark_range(gc_state_t *gc, const void *start, const void *end)
{
    mark_range(&gc->mk, start, end);
}

void loam_mark(loam_tracer_t *t, void *p)
{
    /* NULL needs no test of its own: no slab starts at 0, and the lookup
     * that follows drops every word below 64 KiB. */
    if (LOAM_LIKELY(t != NULL))
        mark_candidate(t->m, (uintptr_t)p, true, true);
}

void gc_mark_rescan(gc_state_t *gc, char *block, size_t size, unsigned kind)
{
    push_slow(&gc->mk, block, size, kind);    /* grows the stack, or notes the overflow */
}

bool gc_block_marked(const addr_info_t *ai)
{
    if (ai->large)
        return __atomic_load_n(&ai->large->upper, __ATOMIC_RELAXED) & 1;
    size_t g = granule_of(ai->segment, ai->block);
    return (__atomic_load_n(&segment_side_bits(ai->segment)[g >> 6], __ATOMIC_RELAXED) >> (g & 63)) & 1;
}

bool gc_is_marked(gc_state_t *gc, const void *obj)
{
    (void)gc;
    addr_info_t ai;
    addr_classify(obj, &ai);
    if (ai.kind != ADDR_BLOCK && ai.kind != ADDR_INTERIOR)
        return false;
    return gc_block_marked(&ai);
}

void gc_mark_watch(gc_state_t *gc, bool on)
{
    gc->eph_watch = on;
    gc->mk.watch = on;
    set_limit(&gc->mk);
}

/* ---- scanning grey blocks ------------------------------------------------------------ */

/* A free block a conservative word marked loses its bit: a free block is
 * never old (generation.c), and a slab whose blocks are all free must hold no
 * marks. Slab blocks only: a large block is never free while listed. */
static void unmark_free(marker_t *m, char *block)
{
    segment_t *seg = (segment_t *)((uintptr_t)block & ~(uintptr_t)SEGMENT_MASK);
    size_t g = granule_of(seg, block);
    uint64_t *w = &segment_side_bits(seg)[g >> 6], bit = (uint64_t)1 << (g & 63);
    if (m->shared)
        __atomic_fetch_and(w, ~bit, __ATOMIC_RELAXED);
    else
        *w &= ~bit;
}

/* The heap's trace callback, read once per drain. */
typedef struct tracer_fn {
    loam_trace_fn trace;
    void         *user;
} tracer_fn_t;

static tracer_fn_t tracer_of(marker_t *m)
{
    loam_heap_t *h = m->gc->heap;
    return (tracer_fn_t){ h->cfg.trace, h->cfg.user };
}

static inline __attribute__((always_inline)) void
scan(marker_t *m, tracer_fn_t t, char *obj, size_t size_kind)
{
    unsigned kind = (unsigned)(size_kind & MARK_KIND_MASK);
    size_t size = size_kind & ~MARK_KIND_MASK;
    if (LOAM_UNLIKELY(kind > LOAM_TRACED)) {         /* MARK_WAKE, or a kind | MARK_VERIFY */
        if (kind == MARK_WAKE) {
            gc_ephemerons_wake(m, size / BLOCK_ALIGN);
            return;
        }
        if (((free_block_t *)obj)->freed_key == loam_free_key) {
            m->marked_bytes -= size;        /* a free block: nothing lives there */
            if (m->aging)
                m->survivor_bytes -= size;  /* it was aged as it was marked: no age before */
            unmark_free(m, obj);
            return;
        }
        kind &= ~MARK_VERIFY;
    }
    if (kind == LOAM_TRACED) {
        if (t.trace)
            t.trace(obj, &m->tracer, t.user);
    } else {
        mark_range(m, obj, obj + size);
    }
}

static void rescan_marked(gc_state_t *gc, char *block, size_t size, unsigned kind, bool marked, void *arg)
{
    (void)arg;
    marker_t *m = &gc->mk;
    if (marked && kind != LOAM_ATOMIC) {
        tracer_fn_t t = tracer_of(m);
        scan(m, t, block, size | kind);
        while (m->sp) {
            mark_entry_t top = m->stack[--m->sp];
            scan(m, t, top.obj, top.size_kind);
        }
    }
}

/* ---- parallel marking: the helpers and the shared pool ---------------------------------- */

#define MARKERS_MAX 8
#define SHARE_TAKE 64          /* entries an idle marker takes from the pool at once */
#define SHARE_POOL_MIN 1024    /* entries of the pool at first, and kept resident */

static struct mark_pool {
    pthread_mutex_t lock;
    pthread_cond_t  job_cv;        /* helpers wait here for a job */
    pthread_cond_t  share_cv;      /* idle markers wait here for work or the end */
    pthread_cond_t  done_cv;       /* the collecting thread waits here for its helpers */
    unsigned        helpers;       /* helper threads started */
    bool            start_failed;
    bool            busy;          /* a collection's marking uses the pool */
    gc_state_t     *job;           /* the heap being marked (busy) */
    unsigned        job_seq;       /* bumped per job: a helper joins each once */
    unsigned        markers;       /* taking part in the job, the collector included */
    unsigned        idle;          /* of those, waiting for work */
    unsigned        job_helpers;   /* helpers the job may use (gc_markers - 1, at most helpers) */
    unsigned        joined;        /* helpers that joined the job */
    unsigned        finished;      /* of those, done with it */
    bool            ended;         /* every marker idle, the pool empty */
    AO_t            hungry;        /* a marker found the pool empty and waits: busy ones
                                      read it lock-free and give (cleared when fed) */
    mark_entry_t   *entries;       /* the shared pool */
    size_t          n, cap;
    size_t          peak;          /* the most it held since the last pool_trim */
    gc_spike_t      pages;
    marker_t       *helper[MARKERS_MAX];
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER, .job_cv = PTHREAD_COND_INITIALIZER,
           .share_cv = PTHREAD_COND_INITIALIZER, .done_cv = PTHREAD_COND_INITIALIZER };

/* Give the bottom half of m's stack to the pool (another marker is idle). */
static void share_give(marker_t *m)
{
    size_t give = m->sp / 2;
    /* From now on another marker may set bits in the words this one sets:
     * atomically, both. Until here the collecting thread marked alone, with
     * plain stores (a helper marks nothing before it takes work from the
     * pool, under the lock released below). */
    m->shared = true;
    pthread_mutex_lock(&pool.lock);
    if (pool.n + give > pool.cap) {
        size_t cap = pool.cap ? pool.cap : SHARE_POOL_MIN;
        while (cap < pool.n + give)
            cap *= 2;
        mark_entry_t *e = os_reserve_aligned(cap * sizeof *e, OS_PAGE);
        if (!e) {
            pthread_mutex_unlock(&pool.lock);
            return;                     /* keep the work: it is marked alone */
        }
        if (pool.entries) {
            memcpy(e, pool.entries, pool.n * sizeof *e);
            os_release(pool.entries, pool.cap * sizeof *e);
        }
        pool.entries = e;
        pool.cap = cap;
        pool.pages.touched = pool.n;
    }
    memcpy(pool.entries + pool.n, m->stack, give * sizeof *m->stack);
    pool.n += give;
    if (pool.n > pool.peak)
        pool.peak = pool.n;
    if (pool.n > pool.pages.touched)
        pool.pages.touched = pool.n;
    /* Fed: nobody gives more until a marker finds the pool empty again. */
    AO_store(&pool.hungry, 0);
    pthread_cond_broadcast(&pool.share_cv);
    pthread_mutex_unlock(&pool.lock);
    memmove(m->stack, m->stack + give, (m->sp - give) * sizeof *m->stack);
    m->sp -= give;
}

/* m's stack is empty: take work from the pool, or wait for some. false: the
 * marking is over (every marker idle and the pool empty). */
static bool share_take(marker_t *m)
{
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        if (pool.n) {
            /* Every marker's stack holds MARK_STACK_MIN entries at least (made so
             * before it joins). */
            size_t take = pool.n < SHARE_TAKE ? pool.n : SHARE_TAKE;
            pool.n -= take;
            memcpy(m->stack, pool.entries + pool.n, take * sizeof *m->stack);
            m->sp = take;
            pthread_mutex_unlock(&pool.lock);
            return true;
        }
        if (pool.ended) {
            pthread_mutex_unlock(&pool.lock);
            return false;
        }
        pool.idle++;
        AO_store(&pool.hungry, pool.idle);
        if (pool.idle == pool.markers) {
            pool.ended = true;
            pthread_cond_broadcast(&pool.share_cv);
            pthread_mutex_unlock(&pool.lock);
            return false;
        }
        pthread_cond_wait(&pool.share_cv, &pool.lock);
        pool.idle--;
    }
}

/* Pop grey blocks through a small ring: each is prefetched when it enters
 * and scanned PREFETCH_DEPTH pops later, when its memory has arrived. A plain
 * depth-first pop would scan a block the moment after pushing it. With other
 * markers running, half the stack goes to the pool whenever one is idle. */
#define PREFETCH_DEPTH 16

static void drain_stack(marker_t *m)
{
    mark_entry_t ring[PREFETCH_DEPTH];
    unsigned head = 0, n = 0;           /* the ring's oldest entry, and how many */
    const tracer_fn_t t = tracer_of(m);
    for (;;) {
        /* Steady state: the ring is full, and each grey block popped takes
         * the place of the one scanned now. */
        while (n == PREFETCH_DEPTH && m->sp) {
            if (m->may_share && m->sp >= 2 && AO_load(&pool.hungry))
                share_give(m);
            mark_entry_t e = ring[head], in = m->stack[--m->sp];
            __builtin_prefetch(in.obj);
            ring[head] = in;
            head = (head + 1) % PREFETCH_DEPTH;
            scan(m, t, e.obj, e.size_kind);
        }
        /* Filling up, or running dry. */
        while (n < PREFETCH_DEPTH && m->sp) {
            mark_entry_t in = m->stack[--m->sp];
            __builtin_prefetch(in.obj);
            ring[(head + n++) % PREFETCH_DEPTH] = in;
        }
        if (!n)
            return;
        if (n == PREFETCH_DEPTH && m->sp)
            continue;
        mark_entry_t e = ring[head];
        head = (head + 1) % PREFETCH_DEPTH;
        n--;
        scan(m, t, e.obj, e.size_kind);
    }
}

/* A marker's part of a parallel marking: until every marker is idle. */
static void mark_shared(marker_t *m)
{
    do
        drain_stack(m);
    while (share_take(m));
}

/* After a marking of any heap, when no job holds the pool: the pool and
 * the helpers' stacks give back as the collector's stack does (spike_trim),
 * by the most each held since. A helper touches its marker only in a job,
 * so with none under way its stack is the pool's to trim; a marking it did
 * not join counts as a shallow one for it. */
static void pool_trim(void)
{
    pthread_mutex_lock(&pool.lock);
    if (!pool.busy) {
        if (pool.entries) {
            size_t keep = spike_trim(&pool.pages, pool.peak, SHARE_POOL_MIN);
            if (keep)
                spike_give_back(&pool.pages, pool.entries, sizeof *pool.entries, keep);
            pool.peak = 0;
        }
        for (unsigned i = 0; i < pool.helpers; i++)
            stack_trim(pool.helper[i]);
    }
    pthread_mutex_unlock(&pool.lock);
}

void gc_mark_end(gc_state_t *gc)
{
    stack_trim(&gc->mk);
    pool_trim();
}

/* A helper joins each marking that is still under way when it wakes (one
 * that ended first has no use for it), and leaves it when share_take says
 * the marking is over. */
static void *helper_main(void *arg)
{
    marker_t *m = arg;
    unsigned seen = 0;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.busy || pool.job_seq == seen)
            pthread_cond_wait(&pool.job_cv, &pool.lock);
        seen = pool.job_seq;
        if (pool.ended || pool.joined >= pool.job_helpers)
            continue;                   /* over already, or enough helpers (gc_markers) */
        pool.markers++;
        pool.joined++;
        m->gc = pool.job;
        m->watch = m->gc->eph_watch;        /* set before the drain, under this lock */
        set_limit(m);
        pthread_mutex_unlock(&pool.lock);
        gc_helper_marks_for(m->gc);
        m->shared = true;
        m->may_share = true;
        m->aging = m->gc->mk.aging;
        marker_counts_reset(m);
        m->overflow = false;
        m->sp = 0;
        forget_slab(m);
        mark_shared(m);
        gc_helper_marks_for(NULL);
        pthread_mutex_lock(&pool.lock);
        pool.finished++;
        pthread_cond_signal(&pool.done_cv);
    }
    return NULL;
}

/* CPUs the process may run on, counted once. */
static unsigned cpus_usable(void)
{
    static unsigned cpus;
    unsigned n = __atomic_load_n(&cpus, __ATOMIC_RELAXED);
    if (!n) {
        n = os_cpu_count();
        __atomic_store_n(&cpus, n, __ATOMIC_RELAXED);
    }
    return n;
}

/* Markers a marking may use, the collecting thread included: the option
 * (read each time: it may change), by default one per CPU. */
static unsigned markers_wanted(void)
{
    long n = loam_opt(gc_markers);
    if (n <= 0)
        n = cpus_usable();
    return n > MARKERS_MAX ? MARKERS_MAX : (unsigned)n;
}

/* Helpers this marking takes, of the `want` it may use. With gc_markers
 * left to its default (one marker per CPU), only as many as the machine
 * has idle CPUs right now: a helper that has to share a CPU with another
 * runnable thread is preempted with work in its stack, and the collecting
 * thread, done with its own, waits for it: on the 2-CPU bench machine,
 * busy with one other program, binary-trees' longest pause went from 2.6
 * to 6-14 ms in half the runs, against 2.6-3.9 ms marking alone. The count
 * comes from the kernel's runnable threads (the attached threads are
 * stopped, not runnable; this thread is). A number the program set is
 * kept as it is. */
static unsigned helpers_for_now(unsigned want)
{
    if (loam_opt(gc_markers) > 0 || want == 0)
        return want;
    unsigned runnable = os_runnable_threads();
    if (runnable == 0)
        return want;                    /* unknown: as many as the option says */
    unsigned cpus = cpus_usable();
    unsigned idle = runnable < cpus ? cpus - runnable : 0;
    return want < idle ? want : idle;
}

/* Before the world stops (no lock of ours held: pthread_create may allocate
 * through loam): start the helpers a parallel marking of h will want. */
void gc_markers_prepare(loam_heap_t *h)
{
    if (!(h->cfg.flags & LOAM_PARALLEL_MARK))
        return;
    /* Not before a marking of the heap can run in parallel (may_mark_in_
     * parallel): a heap that stays under gc_parallel_min, as the Lisp
     * example's, has no thread started for it, nor its stack and mark stack
     * resident. The first eligible marking runs alone anyway, to measure. */
    if (AO_load(&h->gc->next_mark_max) < (size_t)loam_opt(gc_parallel_min))
        return;
    unsigned want = markers_wanted() - 1;
    pthread_mutex_lock(&pool.lock);
    while (pool.helpers < want && !pool.start_failed) {
        marker_t *m = meta_alloc(sizeof *m);      /* zeroed, its slab cache untouched */
        if (!m) {
            pool.start_failed = true;
            break;
        }
        m->tracer.m = m;
        if (!stack_grow(m)) {
            meta_free(m, sizeof *m);
            pool.start_failed = true;
            break;
        }
        int err = background_thread_start(helper_main, m, 0, "loam-mark");
        if (err) {
            meta_free(m, sizeof *m);
            pool.start_failed = true;
            loam_warn("cannot start a marking thread (error %d): marking runs on fewer threads", err);
            break;
        }
        pool.helper[pool.helpers++] = m;
    }
    pthread_mutex_unlock(&pool.lock);
}

/* The collecting thread's drain with the helpers. false: no helper (none
 * started, or another heap's collection uses them): drain alone. */
static bool drain_parallel(gc_state_t *gc)
{
    unsigned want = helpers_for_now(markers_wanted() - 1);
    pthread_mutex_lock(&pool.lock);
    if (pool.busy || pool.helpers == 0 || want == 0) {
        pthread_mutex_unlock(&pool.lock);
        return false;
    }
    pool.job_helpers = want < pool.helpers ? want : pool.helpers;
    pool.busy = true;
    pool.job = gc;
    pool.job_seq++;
    pool.markers = 1;               /* helpers add themselves as they join */
    pool.joined = 0;
    pool.idle = 0;
    pool.finished = 0;
    pool.ended = false;
    pool.n = 0;
    AO_store(&pool.hungry, 0);
    gc->mk.may_share = true;        /* shared from its first share_give */
    pthread_cond_broadcast(&pool.job_cv);
    pthread_mutex_unlock(&pool.lock);

    mark_shared(&gc->mk);

    /* Ended: no helper joins any more; wait for those that did. */
    pthread_mutex_lock(&pool.lock);
    while (pool.finished < pool.joined)
        pthread_cond_wait(&pool.done_cv, &pool.lock);
    for (unsigned i = 0; i < pool.helpers; i++) {
        marker_t *m = pool.helper[i];
        if (m->gc == gc) {
            gc->mk.marked_bytes += m->marked_bytes;
            gc->mk.survivor_bytes += m->survivor_bytes;
            gc->mk.atomic_bytes += m->atomic_bytes;
            gc->helper_marked += m->marked_bytes;
            gc->mk.overflow |= m->overflow;
            m->gc = NULL;
        }
    }
    pool.busy = false;
    pool.job = NULL;
    pthread_mutex_unlock(&pool.lock);
    gc->mk.shared = false;
    gc->mk.may_share = false;
    return true;
}

/* A fork child has no helpers (threads do not survive fork) and may have
 * forked while a marking held the pool: it starts afresh. */
void gc_markers_after_fork_child(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.job_cv, NULL);
    pthread_cond_init(&pool.share_cv, NULL);
    pthread_cond_init(&pool.done_cv, NULL);
    pool.helpers = 0;
    pool.busy = false;
    pool.job = NULL;
    pool.n = 0;
    AO_store(&pool.hungry, 0);
}

/* Parallel marking is a bet on idle CPUs: on a machine with more runnable
 * threads than CPUs the helpers take CPU time from the collecting thread, or
 * are preempted with work in their stacks while the others wait. So the
 * collector measures: the first eligible marking of a heap runs alone, later
 * ones in parallel, each timed as bytes scanned per ns; when parallel is not
 * 15 % faster than alone, the next 2, 4, ... 64 eligible markings run alone
 * (and refresh the serial rate), and every 64th parallel marking is followed
 * by one alone, so a machine that gets busy or idle is noticed (rarely: a
 * marking alone is a longer pause). On the 2-CPU bench machine, idle, two
 * markers mark binary-trees 19 at ~2.3 bytes/ns against ~1.4 alone. The
 * rates follow a lasting change; a busy moment is seen by helpers_for_now,
 * which counts the idle CPUs at the start of each parallel marking.
 *
 * Only markings of gc_parallel_min bytes or more teach the rates. An
 * eligible marking (the last collection found that much to scan) can scan
 * next to nothing, when the program has just dropped its data: its rate is
 * the fixed cost of starting, for helpers a wake-up. One such, 10 KiB in
 * 128 us in parallel, took binary-trees 19's parallel rate from nothing to
 * a twentieth of the serial one, and the average took twenty parallel
 * markings at 2.1 bytes/ns against 1.55 alone to forgive it: the collector
 * marked alone for most of the run, 15 % slower (gc_parallel_min = 4 MiB). */
static bool may_mark_in_parallel(gc_state_t *gc)
{
    return (gc->heap->cfg.flags & LOAM_PARALLEL_MARK) && gc->mk.sp > 0 &&
           gc->mark_expect >= (size_t)loam_opt(gc_parallel_min);
}

/* An eligible marking: in parallel now, or alone (to measure, or backing off). */
bool gc_mark_choose_parallel(gc_state_t *gc)
{
    if (gc->rate_serial == 0 || gc->serial_for > 0) {
        if (gc->serial_for > 0)
            gc->serial_for--;
        return false;
    }
    return true;
}

static void note_rate(double *rate, size_t bytes, uint64_t ns)
{
    double r = (double)bytes / (double)(ns ? ns : 1);
    *rate = *rate == 0 ? r : 0.75 * *rate + 0.25 * r;
}

/* An eligible marking done, in parallel or alone: bytes scanned in ns. */
void gc_mark_note_rate(gc_state_t *gc, bool parallel, size_t bytes, uint64_t ns)
{
    if (bytes < (size_t)loam_opt(gc_parallel_min))
        return;                         /* not representative (above) */
    if (!parallel) {
        note_rate(&gc->rate_serial, bytes, ns);
        return;
    }
    note_rate(&gc->rate_parallel, bytes, ns);
    if (gc->rate_parallel < 1.15 * gc->rate_serial) {
        gc->serial_backoff = gc->serial_backoff ? gc->serial_backoff * 2 : 2;
        if (gc->serial_backoff > 64)
            gc->serial_backoff = 64;
        gc->serial_for = gc->serial_backoff;
        gc->parallel_run = 0;
    } else {
        gc->serial_backoff = 0;
        if (++gc->parallel_run == 64) {
            gc->parallel_run = 0;
            gc->serial_for = 1;         /* probe: is alone still slower? */
        }
    }
}

void gc_mark_drain(gc_state_t *gc)
{
    for (;;) {
        bool eligible = may_mark_in_parallel(gc);
        size_t before = gc->mk.marked_bytes - gc->mk.atomic_bytes;     /* bytes scanned */
        uint64_t t0 = eligible ? gc_now_ns() : 0;
        bool parallel = eligible && gc_mark_choose_parallel(gc) && drain_parallel(gc);
        if (!parallel)
            drain_stack(&gc->mk);
        if (eligible)
            gc_mark_note_rate(gc, parallel, gc->mk.marked_bytes - gc->mk.atomic_bytes - before,
                              gc_now_ns() - t0);
        if (!gc->mk.overflow)
            return;
        /* Pushes were dropped: every marked block is scanned again, which
         * finds the unmarked children of those that were never scanned. */
        gc->mk.overflow = false;
        gc_for_each_block(gc, rescan_marked, NULL);
    }
}

/* ---- clearing marks --------------------------------------------------------------------- */

/* Conservative words may mark free blocks (checked only when scanned): in a
 * slab with no block out nothing sweeps those marks away, and a block
 * allocated there later would look marked at the next collection, its
 * children never traced. A slab's granules are whole words of the bitmap
 * (its start and length are multiples of 64 granules). */
void gc_clear_slab_marks(segment_t *seg, slab_t *s)
{
    uint64_t *bits = segment_side_bits(seg);
    size_t first = (size_t)(s->start - (char *)seg) / BLOCK_ALIGN;
    size_t n = (size_t)s->pages * PAGE_SIZE / BLOCK_ALIGN;
    memset(bits + first / 64, 0, n / 8);
    gc_age_clear(seg, first, n);
}

void gc_clear_all_marks(gc_state_t *gc)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        for (segment_t *seg = a->segments; seg; seg = seg->next)
            for (unsigned p = 1; p < PAGES_PER_SEGMENT; p += seg->slabs[p].pages)
                if (seg->slabs[p].state == RUN_SLAB)
                    gc_clear_slab_marks(seg, &seg->slabs[p]);
        for (large_t *l = a->large; l; l = l->next)
            l->upper &= ~(uintptr_t)1;
    }
}

/* ---- walking the heap ------------------------------------------------------------------ */

void gc_for_each_block(gc_state_t *gc, gc_block_fn fn, void *arg)
{
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(gc->heap, i)); i++) {
        for (segment_t *seg = a->segments; seg; seg = seg->next) {
            uint64_t *bits = segment_side_bits(seg);
            for (unsigned p = 1; p < PAGES_PER_SEGMENT;) {
                slab_t *s = segment_page_slab(seg, p);
                unsigned next = s->page_index + s->pages;
                if (s->state == RUN_SLAB) {
                    for (uint32_t k = 0; k < s->bumped; k++) {
                        char *b = s->start + (size_t)k * s->block_size;
                        size_t g = granule_of(seg, b);
                        if (((free_block_t *)b)->freed_key == loam_free_key) {
                            if (bit_test(bits, g)) {     /* see unmark_free */
                                bits[g >> 6] &= ~((uint64_t)1 << (g & 63));
                                if (gc->mk.aging)        /* aged as it was marked (gc_age_end clears it) */
                                    gc->mk.survivor_bytes -= s->block_size;
                            }
                            continue;
                        }
                        fn(gc, b, s->block_size, s->tag, bit_test(bits, g), arg);
                    }
                }
                p = next > p ? next : p + 1;
            }
        }
        for (large_t *l = a->large; l; l = l->next)
            fn(gc, l->block, l->size, l->tag, l->upper & 1, arg);
    }
}
