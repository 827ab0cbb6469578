/* runtime/heap.c — heaps: creation, destruction, the default heap, and each
 * thread's caches of each heap.
 *
 * A thread finds its cache of heap h at loam_tls_cache[h->slot]. Slots are
 * handed out at heap creation; a slot's cache belongs to the thread, and is
 * also listed on its heap so that destroying the heap can disown it (the
 * thread later finds owner == NULL and takes the slow path). */
#include "runtime/runtime.h"
#include "gc/gc.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__thread tcache_t *loam_tls_cache[TC_SLOTS] = { [0 ... TC_SLOTS - 1] = &loam_empty_tcache };
tcache_t loam_empty_tcache = { .bins = { [0 ... NUM_CLASSES - 1] = TCACHE_REFUSING_BIN } };

/* The calling thread's caches, for its exit. */
static __thread tcache_t *thread_caches;

/* Caches of exited threads, kept for the next threads (heaps_lock): a
 * cache's slots are a mapping of their own (38 KiB, more than the
 * metadata bins hold), and a program that starts and ends threads all the
 * time (the Larson benchmark: 160 threads) would otherwise map and unmap
 * one for each, every unmap a TLB shootdown across CPUs. At most
 * SPARE_CACHES_MAX are kept, disowned and empty. */
#define SPARE_CACHES_MAX 8
static tcache_t *spare_caches;
static unsigned spare_cache_count;

static pthread_mutex_t heaps_mutex = PTHREAD_MUTEX_INITIALIZER;
struct loam_heap *loam_heaps;
static loam_heap_t *slot_holder[TC_SLOTS];    /* slot 0: the default heap */

/* Broadcast when a heap's purge hold or its last pin ends. */
static pthread_cond_t heaps_hold_done = PTHREAD_COND_INITIALIZER;

void heaps_lock(void) { pthread_mutex_lock(&heaps_mutex); }
void heaps_unlock(void) { pthread_mutex_unlock(&heaps_mutex); }

void heaps_wait_purge(loam_heap_t *h)
{
    while (h->purge_hold)
        pthread_cond_wait(&heaps_hold_done, &heaps_mutex);
}

void heaps_release_purge(loam_heap_t *h)
{
    h->purge_hold = false;
    pthread_cond_broadcast(&heaps_hold_done);
}

bool heap_pin(loam_heap_t *h)
{
    heaps_lock();
    bool linked = false;
    for (loam_heap_t *x = loam_heaps; x && !linked; x = x->next)
        linked = x == h;
    if (linked)
        h->pins++;
    heaps_unlock();
    return linked;
}

void heap_unpin(loam_heap_t *h)
{
    heaps_lock();
    if (--h->pins == 0)
        pthread_cond_broadcast(&heaps_hold_done);
    heaps_unlock();
}

static void heap_link(loam_heap_t *h)
{
    h->prev = NULL;
    h->next = loam_heaps;
    if (loam_heaps)
        loam_heaps->prev = h;
    loam_heaps = h;
}

static void heap_unlink(loam_heap_t *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else
        loam_heaps = h->next;
    if (h->next)
        h->next->prev = h->prev;
}


/* The length of the well-formed UTF-8 sequence at s (1 to 4 bytes), or 0
 * if the bytes there are none (a stray continuation byte, a bad lead, an
 * overlong form, a surrogate, past U+10FFFF, or cut by the string's end). */
static size_t utf8_sequence(const unsigned char *s)
{
    unsigned char c = s[0];
    size_t len = c > 0xf4 ? 0 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    if (len == 0)
        return 0;
    unsigned char lo = 0x80, hi = 0xbf;      /* the second byte's range */
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/* The config's name, kept in the heap (the caller's string may go) and
 * safe to print inside quotes, in a text line or JSON. JSON text must be
 * UTF-8: a character the length limit would cut is left out whole (a name
 * in UTF-8 cut inside a character made the statistics' JSON invalid), and
 * a byte that starts no well-formed sequence reads '?'. */
static void copy_name(char *dst, size_t cap, const char *src)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t n = 0;
    while (s && *s && n + 1 < cap) {
        unsigned char c = *s;
        if (c < 0x80) {
            dst[n++] = c < 0x20 || c == 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
            s++;
            continue;
        }
        size_t len = utf8_sequence(s);
        if (len == 0) {
            dst[n++] = '?';
            s++;
            continue;
        }
        if (n + len + 1 > cap)
            break;
        memcpy(dst + n, s, len);
        n += len;
        s += len;
    }
    dst[n] = 0;
}

const char *heap_label(const loam_heap_t *h, char *buf)
{
    if (h && h->name[0])
        snprintf(buf, HEAP_LABEL_MAX, "%p \"%s\"", (const void *)h, h->name);
    else
        snprintf(buf, HEAP_LABEL_MAX, "%p", (const void *)h);
    return buf;
}

void heap_init_fields(loam_heap_t *h, const loam_config_t *cfg, bool is_default)
{
    if (cfg)
        h->cfg = *cfg;
    copy_name(h->name, sizeof h->name, h->cfg.name);
    h->cfg.name = h->name[0] ? h->name : NULL;
    h->is_default = is_default;
    h->gc_class_row = gc_class_row_for(h->cfg.flags);
    h->mode = LOAM_MANUAL;
    h->budget.limit = h->cfg.limit;
    /* Collected heaps allocate through kinds' caches and sweep in bulk: no
     * per-block request tracking there. */
    h->track_requested = is_default ? (loam_opt(track_requested_set) && loam_opt(track_requested))
                                    : loam_opt(track_requested) != 0 && h->cfg.mode != LOAM_GC;
    /* Tracked heaps must record each request: their mallocs miss the fast path. */
    h->alloc_slot = h->track_requested ? TC_SLOT_NONE : h->slot;
    h->tcache_max = (unsigned)loam_opt(tcache_max);
    mc_heap_new(h);
    for (unsigned k = 0; k < HEAP_KINDS; k++) {
        heap_kind_t *hk = &h->kinds[k];
        hk->slot = k == 0 ? h->slot : TC_SLOT_NONE;
        h->gc_alloc_slot[k] = h->track_requested ? TC_SLOT_NONE : hk->slot;
        hk->ready = k == 0;
        arena_set_init(&hk->arenas, h, hk->slot, (uint8_t)k, &h->budget, h->track_requested,
                       (unsigned)loam_opt(arena_max));
    }
}

heap_kind_t *heap_kind(loam_heap_t *h, unsigned kind)
{
    heap_kind_t *hk = &h->kinds[kind];
    if (LOAM_UNLIKELY(!__atomic_load_n(&hk->ready, __ATOMIC_ACQUIRE))) {
        heaps_lock();
        if (!hk->ready) {
            for (unsigned s = 1; s < TC_SLOT_NONE; s++)
                if (!slot_holder[s]) {
                    slot_holder[s] = h;
                    /* read lock-free by loam_gc_alloc's fast path */
                    AO_char_store((volatile unsigned char *)&hk->slot, (unsigned char)s);
                    if (!h->track_requested)
                        AO_char_store((volatile unsigned char *)&h->gc_alloc_slot[kind], (unsigned char)s);
                    break;
                }
            /* arenas are made after this, so their slabs see the slot */
            hk->arenas.slot = h->mode == LOAM_GC ? TC_SLOT_NONE : hk->slot;   /* see gc_set_mode */
            __atomic_store_n(&hk->ready, true, __ATOMIC_RELEASE);
        }
        heaps_unlock();
    }
    return hk;
}

arena_t *heap_arena_at(loam_heap_t *h, unsigned i)
{
    for (unsigned k = 0; k < HEAP_KINDS; k++) {
        unsigned n = (unsigned)AO_load_acquire(&h->kinds[k].arenas.count);
        if (i < n)
            return arena_set_at(&h->kinds[k].arenas, i);
        i -= n;
    }
    return NULL;
}

loam_heap_t *loam_heap_new(const loam_config_t *cfg)
{
    loam_ensure_init();
    const unsigned known_flags = LOAM_NO_STACK_SCAN | LOAM_PARALLEL_MARK | LOAM_GENERATIONAL | LOAM_ALIGN_8;
    if (cfg && ((cfg->mode != LOAM_MANUAL && cfg->mode != LOAM_GC) || cfg->gc_growth > LOAM_GC_GROWTH_MAX ||
                (cfg->flags & ~known_flags))) {
        errno = EINVAL;
        return NULL;
    }
    loam_heap_t *h = meta_alloc(sizeof *h);
    if (!h) {
        errno = ENOMEM;
        return NULL;
    }
    heaps_lock();
    h->slot = TC_SLOT_NONE;
    for (unsigned s = 1; s < TC_SLOT_NONE; s++)
        if (!slot_holder[s]) {
            slot_holder[s] = h;
            h->slot = (uint8_t)s;
            break;
        }
    heaps_unlock();
    heap_init_fields(h, cfg, false);
    /* Linked only once whole: whoever walks the heaps (fork's prepare
     * handler locking every arena set, the purge thread, statistics) would
     * otherwise use its locks while heap_init_fields initialises them. */
    heaps_lock();
    heap_link(h);
    heaps_unlock();
    if (cfg && cfg->mode == LOAM_GC)
        gc_set_mode(h, LOAM_GC);
    return h;
}

loam_heap_t *loam_heap_default(void)
{
    loam_ensure_init();
    return &loam_default_heap;
}

static bool in_oom_callback_of(loam_heap_t *h);

void loam_heap_destroy(loam_heap_t *h)
{
    if (!h)
        return;
    if (h->is_default) {
        loam_warn("loam_heap_destroy of the default heap ignored (it lives as long as the process)");
        return;
    }
    /* The code that called the callback goes on with the heap when it
     * returns (the finalizers after this one, the allocation that hit the
     * limit): destroyed, it used freed memory and crashed. */
    if (gc_in_finalizer_of(h) || in_oom_callback_of(h)) {
        loam_fault(h, "loam_heap_destroy inside one of the heap's own finalizers or its oom callback "
                      "(ignored: the heap is still in use there)", h, 0);
        return;
    }
    heaps_lock();
    /* Neither the purge thread nor a thread's exit or fork may be using h
     * past this point: both find it unlinked from now on. */
    while (h->purge_hold || h->pins)
        pthread_cond_wait(&heaps_hold_done, &heaps_mutex);
    /* Every thread's cache of h is disowned: its blocks are about to vanish. */
    for (tcache_t *tc = h->caches; tc; tc = tc->owner_next)
        tcache_abandon(tc);
    h->caches = NULL;
    for (unsigned k = 0; k < HEAP_KINDS; k++)
        if (h->kinds[k].slot != TC_SLOT_NONE)
            slot_holder[h->kinds[k].slot] = NULL;
    heap_unlink(h);
    heaps_unlock();
    gc_heap_destroy(h);
    for (unsigned k = 0; k < HEAP_KINDS; k++)
        arena_set_destroy(&h->kinds[k].arenas);
    mc_heap_destroy(h);
    meta_free(h, sizeof *h);
}

loam_heap_t *loam_heap_of(const void *p)
{
    if (!p)
        return NULL;
    addr_info_t ai;
    addr_classify(p, &ai);
    if (ai.kind != ADDR_BLOCK && ai.kind != ADDR_INTERIOR)
        return NULL;
    arena_t *a = ai.large ? ai.large->arena : ai.slab->arena;
    return a->owner;
}

int loam_heap_set_mode(loam_heap_t *h, loam_mode_t m)
{
    if (!h || (m != LOAM_MANUAL && m != LOAM_GC) || (h->is_default && m == LOAM_GC)) {
        errno = EINVAL;           /* the default heap serves malloc: it stays manual */
        return -1;
    }
    if (m == LOAM_GC && h->mode != LOAM_GC && !h->cfg.trace &&
        __atomic_load_n(&h->kinds[LOAM_TRACED].ready, __ATOMIC_ACQUIRE)) {
        errno = EINVAL;           /* TRACED blocks and no trace callback to follow their pointers */
        return -1;
    }
    return gc_set_mode(h, m);
}

loam_mode_t loam_heap_mode(const loam_heap_t *h)
{
    return h ? __atomic_load_n(&h->mode, __ATOMIC_RELAXED) : LOAM_MANUAL;
}

size_t loam_heap_trim(loam_heap_t *h)
{
    return heap_trim(h, SIZE_MAX);
}

size_t heap_trim(loam_heap_t *h, size_t walk)
{
    if (!h)
        return 0;
    /* The calling thread's cached blocks go back first so their slabs can empty. */
    for (unsigned k = 0; k < HEAP_KINDS; k++) {
        tcache_t *tc = loam_tls_cache[h->kinds[k].slot];
        if (tc->owner == h)
            tcache_flush_all(tc);
    }
    size_t bytes = 0;
    arena_t *a;
    for (unsigned i = 0; (a = heap_arena_at(h, i)); i++) {
        arena_lock(a);
        bytes += arena_trim(a, &walk);
        arena_unlock(a);
    }
    return bytes;
}

/* ---- thread caches ---------------------------------------------------------- */

static pthread_key_t thread_exit_key;
static int thread_exit_key_made;

static void thread_exit_destructor(void *unused)
{
    (void)unused;
    heap_thread_exit();
}

void heap_thread_key_init(void);
void heap_thread_key_init(void)
{
    if (pthread_key_create(&thread_exit_key, thread_exit_destructor) == 0)
        thread_exit_key_made = 1;
}

tcache_t *heap_thread_cache(loam_heap_t *h, unsigned kind)
{
    heap_kind_t *hk = heap_kind(h, kind);
    if (hk->slot == TC_SLOT_NONE || h->tcache_max == 0)
        return NULL;
    tcache_t *tc = loam_tls_cache[hk->slot];
    if (tc->owner == h)
        return tc;
    /* A thread with a cache of a collected heap can allocate from it without
     * a slow path: it must be attached (stopped for collections). */
    gc_thread_cache_made(h);
    /* Reuse a disowned cache of this thread (its heap was destroyed), else
     * an exited thread's, else make one. */
    heaps_lock();
    tcache_t *mine = NULL;
    for (tcache_t *t = thread_caches; t; t = t->thread_next)
        if (t->owner == NULL) {
            mine = t;
            /* Its old slot still names it: a heap made where the destroyed
             * one was, with that slot for another kind, passes the owner
             * test above, and its allocations of that kind came from this
             * cache's blocks of the kind it is made for now (conservative
             * blocks in traced slabs, given to the trace callback). */
            if (loam_tls_cache[t->slot] == t)
                loam_tls_cache[t->slot] = &loam_empty_tcache;
            break;
        }
    if (!mine) {
        if (spare_caches) {
            mine = spare_caches;
            spare_caches = mine->thread_next;
            spare_cache_count--;
        } else {
            mine = meta_alloc(sizeof *mine);
            if (!mine) {
                heaps_unlock();
                return NULL;
            }
        }
        if (!thread_caches && thread_exit_key_made)
            pthread_setspecific(thread_exit_key, (void *)1);
        mine->thread_next = thread_caches;
        thread_caches = mine;
    }
    if (!tcache_init(mine, h, &hk->arenas, h->tcache_max)) {
        heaps_unlock();                 /* no memory for its slots: the arena path serves */
        return NULL;
    }
    mine->allocates_only = h->mode == LOAM_GC;   /* the sweep frees, not the cache */
    mine->slot = hk->slot;
    mine->owner_prev = NULL;
    mine->owner_next = h->caches;
    if (h->caches)
        h->caches->owner_prev = mine;
    h->caches = mine;
    heaps_unlock();
    loam_tls_cache[hk->slot] = mine;
    return mine;
}

/* In the child of fork (which runs only the forking thread): the caches of
 * the parent's other threads will never be used again, so their draws on
 * the shared growth budget go back, which the child's own caches may then
 * grow into. Only the draws: those caches' blocks stay where they are,
 * lost to the child, because their owners may have been halfway through a
 * push, a pop or a flush when the fork came, and flushing them again could
 * hand a block to its slab twice. */
void heap_caches_after_fork_child(void)
{
    heaps_lock();
    for (loam_heap_t *h = loam_heaps; h; h = h->next)
        for (tcache_t *tc = h->caches; tc; tc = tc->owner_next) {
            bool mine = false;
            for (tcache_t *t = thread_caches; t && !mine; t = t->thread_next)
                mine = t == tc;
            if (!mine)
                tcache_shared_release(tc);
        }
    heaps_unlock();
}

/* heaps_lock held: this thread's cache tc of its heap goes back, and the
 * thread's slot of it serves no more (its next allocation takes a slow path). */
static void drop_my_cache(tcache_t *tc)
{
    loam_heap_t *h = tc->owner;
    if (h->gc)
        gc_note_unused(h, tcache_bump_bytes_left(tc));
    tcache_flush_all(tc);
    if (tc->owner_prev)
        tc->owner_prev->owner_next = tc->owner_next;
    else
        h->caches = tc->owner_next;
    if (tc->owner_next)
        tc->owner_next->owner_prev = tc->owner_prev;
    if (loam_tls_cache[tc->slot] == tc)
        loam_tls_cache[tc->slot] = &loam_empty_tcache;
    tcache_abandon(tc);                 /* (emptied above) unbinds it from its arena set */
}

/* Only this thread's slots change: no lock. The caches stay on h's list and
 * the thread's, so a collection still empties them, thread exit still
 * flushes them, and a destruction still disowns them; one disowned or given
 * to another heap meanwhile is not put back, nor one whose slot the thread
 * filled again (a heap switched to manual: no fault there, and its slow
 * path made the thread a new cache). A kind made meanwhile had no cache. */
void heap_hide_my_caches(loam_heap_t *h, tcache_t *saved[HEAP_KINDS])
{
    for (unsigned k = 0; k < HEAP_KINDS; k++) {
        unsigned s = AO_char_load((volatile unsigned char *)&h->kinds[k].slot);
        tcache_t *tc = loam_tls_cache[s];
        saved[k] = NULL;
        if (s != TC_SLOT_NONE && tc->owner == h) {
            saved[k] = tc;
            loam_tls_cache[s] = &loam_empty_tcache;
        }
    }
}

void heap_show_my_caches(loam_heap_t *h, tcache_t *saved[HEAP_KINDS])
{
    for (unsigned k = 0; k < HEAP_KINDS; k++) {
        tcache_t *tc = saved[k];
        saved[k] = NULL;
        unsigned s = AO_char_load((volatile unsigned char *)&h->kinds[k].slot);
        if (tc && loam_tls_cache[s] == &loam_empty_tcache && tc->owner == h)
            loam_tls_cache[s] = tc;
    }
}

void heap_drop_my_caches(loam_heap_t *h)
{
    heaps_lock();
    for (tcache_t *tc = thread_caches; tc; tc = tc->thread_next)
        if (tc->owner == h)
            drop_my_cache(tc);          /* disowned, it stays this thread's to reuse */
    heaps_unlock();
}

/* Runs at thread exit (pthread key destructor): every cache goes back. */
void heap_thread_exit(void)
{
    /* Caches are flushed while the thread is still attached to its collected
     * heaps (ordinary mutator work); it detaches after. */
    heaps_lock();
    tcache_t *tc = thread_caches;
    thread_caches = NULL;
    while (tc) {
        tcache_t *next = tc->thread_next;
        if (tc->owner)
            drop_my_cache(tc);
        if (spare_cache_count < SPARE_CACHES_MAX) {
            tc->thread_next = spare_caches;     /* disowned and empty: kept whole */
            spare_caches = tc;
            spare_cache_count++;
        } else {
            tcache_free_slots(tc);
            meta_free(tc, sizeof *tc);
        }
        tc = next;
    }
    for (unsigned s = 0; s < TC_SLOTS; s++)
        loam_tls_cache[s] = &loam_empty_tcache;
    heaps_unlock();
    /* The flushes may have freed runs that wait for decay or for the
     * background thread: wake it, as any slow path does. */
    if (AO_load(&alloc_decay_due))
        purge_poke_slow();
    gc_thread_exit();
}

/* ---- limits ------------------------------------------------------------------ */

/* The oom callbacks this thread is running, innermost last, each with the
 * frame that called it. An allocation inside a heap's own callback that
 * reaches that heap's limit again does not call it again: the callback
 * would run nested once per allocation it makes, a full collection each
 * time, until the stack overflows. An entry whose frame is not above the
 * caller's was left by a longjmp out of its callback (the stack grows
 * down): it is dropped. */
#define OOM_NEST_MAX 8
static __thread struct oom_call {
    loam_heap_t *h;
    uintptr_t    frame;
} oom_calls[OOM_NEST_MAX];
static __thread unsigned oom_ncalls;

static void run_oom_callback(loam_heap_t *h, size_t n)
{
    uintptr_t frame = (uintptr_t)__builtin_frame_address(0);
    if (in_oom_callback_of(h) || oom_ncalls == OOM_NEST_MAX)
        return;                     /* OOM_NEST_MAX: callbacks of several heaps allocating from each other */
    unsigned at = oom_ncalls++;
    oom_calls[at] = (struct oom_call){ h, frame };
    h->cfg.oom(h, n, h->cfg.user);
    oom_ncalls = at;
}

/* Is this thread inside h's oom callback? (Entries a longjmp left are
 * dropped as in run_oom_callback.) */
static bool in_oom_callback_of(loam_heap_t *h)
{
    uintptr_t frame = (uintptr_t)__builtin_frame_address(0);
    while (oom_ncalls && oom_calls[oom_ncalls - 1].frame <= frame)
        oom_ncalls--;
    for (unsigned i = 0; i < oom_ncalls; i++)
        if (oom_calls[i].h == h)
            return true;
    return false;
}

bool heap_out_of_memory(loam_heap_t *h, size_t n, unsigned attempt)
{
    /* First give back what is committed but unused: free runs awaiting decay. */
    /* A collected heap collects first; then everyone gives back what is
     * committed but unused: free runs awaiting decay. */
    if (attempt == 0 && gc_collect_for_memory(h))
        return true;
    if (attempt <= 1 && loam_heap_trim(h) > 0)
        return true;
    if (h->budget.limit == 0)
        return false;
    if (h->cfg.oom && attempt < 5) {
        /* The room the callback makes is measured from a trimmed heap: a
         * failed attempt may have committed pages (a slab's start) that a
         * trim after the callback would give back, and that alone is no
         * room (the callback was called thrice per refusal). */
        loam_heap_trim(h);
        size_t before = AO_load(&h->budget.committed);
        loam_stats_t st;
        loam_heap_stats(h, &st);
        size_t live_before = st.live_bytes;
        run_oom_callback(h, n);
        loam_heap_trim(h);
        /* Retry if the callback made room: memory given back, or blocks
         * freed (by loam_free, or by a collection it asked for after
         * dropping references) that the retry may reuse. A callback that
         * does neither is not called again for this allocation. */
        if (AO_load(&h->budget.committed) < before)
            return true;
        loam_heap_stats(h, &st);
        return st.live_bytes < live_before;
    }
    if (!h->cfg.oom && AO_fetch_and_add(&h->limit_warned, 1) == 0)
    {
        char label[HEAP_LABEL_MAX];
        loam_warn("heap %s reached its limit of %zu bytes (request of %zu bytes): returning NULL",
                  heap_label(h, label), h->budget.limit, n);
    }
    return false;
}
