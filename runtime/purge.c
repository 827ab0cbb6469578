/* runtime/purge.c — the background purge: memory goes back to the OS after a
 * peak even when the program stops calling into loam's slow paths.
 *
 * Decay (free page runs, empty segments and kept empty slabs that stay
 * unused for decay_ms go back to the OS) is otherwise checked only on slow
 * paths: refills, flushes, slab releases. A program that frees a large heap
 * and then runs quietly from its thread cache (or not at all) would keep the
 * peak committed for ever. So one thread, started when the library loads
 * and asleep whenever nothing waits for decay, does two things every
 * decay_ms / 4:
 *
 *   - purges every arena of every heap that has not purged itself on a
 *     slow path for a period (an arena in use does, and taking its lock
 *     would only send its threads to another arena);
 *   - asks each thread cache that has taken no slow path for decay_ms and
 *     still holds blocks to flush (tcache_request_flush). The owner's next
 *     free misses the cache, and its slow path gives every cached block back
 *     and trims its heap (purge_answer), so the slabs they pinned empty and
 *     go back at once. The fast paths are unchanged: a request only sets
 *     the bins' limits to 0.
 *
 * A collected heap's arenas are purged only while the thread holds the
 * heap's collector lock (gc_purge_begin): a collection reads segment
 * headers without arena locks, so no other thread may unmap one under it.
 * Its thread caches are left alone (each collection empties them), and it
 * does not write back what its frees push past the retained budget (its
 * own threads do, as before). Its slow paths do not wake the thread
 * (purge_poke: its sweeps keep stamping slabs); its collections do, once
 * each, so that the runs a collection keeps for regrowth go back once the
 * program goes quiet.
 *
 * The thread starts when the library is loaded (see purge_start_at_load).
 * Waking: the alloc layer sets alloc_decay_due whenever it starts keeping
 * memory for decay; slow paths call purge_poke() after their locks are
 * released, which wakes the thread only if it sleeps. The thread sets
 * purge_asleep, then looks at alloc_decay_due once more before it sleeps,
 * and a poke stores alloc_decay_due before it looks at purge_asleep, all
 * four accesses sequentially consistent read-modify-writes (not fences,
 * which ThreadSanitizer cannot follow): one of the two always sees the
 * other.
 *
 * The option purge_thread=0 turns it off (decay then waits for slow paths). */
#include "runtime/runtime.h"
#include "gc/gc.h"

#include <time.h>

AO_t purge_asleep = 1;           /* also "not started": a poke must look */

/* A sequentially consistent load, as a read-modify-write (see above). */
static inline AO_t load_seq_cst(volatile AO_t *p)
{
    return AO_fetch_and_add_full(p, 0);
}

static pthread_mutex_t purge_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t purge_cond;
static int purge_woken;          /* under purge_mutex */
enum { PURGE_NONE, PURGE_STARTING, PURGE_RUNNING, PURGE_FAILED, PURGE_NOT_IN_CHILD };
static AO_t purge_state;         /* until RUNNING, purge_cond may not be initialised */

/* ---- one pass ------------------------------------------------------------ */

static bool cache_holds_blocks(tcache_t *tc)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++)
        if (tcache_count_racy(tc, c))
            return true;
    return false;
}

/* Decay in arena a, unless its own slow paths purged it within the last
 * period: then it is in use and purges itself, and holding its lock would
 * only send its threads to another arena (and grow the heap). true: look
 * again soon. */
static bool purge_quiet_arena(arena_t *a, uint64_t now, uint64_t period)
{
    uint64_t due = __atomic_load_n(&a->next_purge_ms, __ATOMIC_RELAXED);
    if (now < due + period || !arena_trylock(a))
        return true;
    arena_purge(a, false);
    bool left = a->decay_left;
    arena_unlock(a);
    return left;
}

/* A collected heap: decay only, between its collections. The background
 * lock is held over the collector's: fork's prepare handler takes it first,
 * so no child inherits a collector lock held by this thread. */
static bool purge_collected_heap(loam_heap_t *h, uint64_t now, uint64_t period)
{
    alloc_background_lock();
    bool left = true;
    if (gc_purge_begin(h)) {
        left = false;
        arena_t *a;
        for (unsigned i = 0; (a = heap_arena_at(h, i)); i++)
            left |= purge_quiet_arena(a, now, period);
        gc_purge_end(h);
    }
    alloc_background_unlock();
    return left;
}

/* true: something still waits (memory not yet decayed, a busy arena, a cache
 * not yet idle for long enough), so look again soon. */
static bool purge_pass(void)
{
    uint64_t now = os_now_ms();
    uint64_t decay = alloc_decay_ms();
    uint64_t period = decay / 4 ? decay / 4 : 1;
    bool left = false;
    heaps_lock();
    for (loam_heap_t *h = loam_heaps; h; h = h->next) {
        /* The arenas are purged without the heap-list lock (madvise over a
         * large heap takes a while; a collection elsewhere, or a thread's
         * first allocation, must not wait for it). The hold keeps h from
         * being destroyed or made collected meanwhile. */
        h->purge_hold = true;
        heaps_unlock();
        if (__atomic_load_n(&h->gc, __ATOMIC_ACQUIRE)) {
            left |= purge_collected_heap(h, now, period);
            heaps_lock();
            heaps_release_purge(h);
            continue;
        }
        arena_t *a;
        for (unsigned i = 0; (a = heap_arena_at(h, i)); i++) {
            /* This thread gives back what the arena's frees push past its
             * retained budget (arena_decommit_excess), in use or not. */
            if (!AO_char_load(&a->decommit_later))
                arena_set_decommit_later(a, true);
            if (AO_char_load(&a->decommit_due))
                arena_decommit_excess(a);
            left |= purge_quiet_arena(a, now, period);
        }
        heaps_lock();
        heaps_release_purge(h);
        for (tcache_t *tc = h->caches; tc; tc = tc->owner_next) {
            if (AO_load(&tc->flush_req) || !cache_holds_blocks(tc))
                continue;
            unsigned events = AO_int_load(&tc->slow_events);
            if (tc->purge_seen_ms == 0 || events != tc->purge_seen) {
                tc->purge_seen = events;
                tc->purge_seen_ms = now;
                left = true;
            } else if (now - tc->purge_seen_ms >= decay) {
                tcache_request_flush(tc);
            } else {
                left = true;
            }
        }
    }
    heaps_unlock();
    return left;
}

/* ---- the thread ----------------------------------------------------------- */

static void *purge_main(void *unused)
{
    (void)unused;
    AO_store(&purge_asleep, 0);     /* pokes until now only found the thread starting */
    for (;;) {
        AO_compare_and_swap_full(&alloc_decay_due, 1, 0);
        AO_store(&alloc_background_decommit, loam_opt(purge_thread) != 0);
        bool left = loam_opt(purge_thread) && purge_pass();
        pthread_mutex_lock(&purge_mutex);
        if (left) {
            uint64_t ms = alloc_decay_ms() / 4;
            ms = ms < 10 ? 10 : ms > 1000 ? 1000 : ms;
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += (time_t)(ms / 1000);
            until.tv_nsec += (long)(ms % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            while (!purge_woken && pthread_cond_timedwait(&purge_cond, &purge_mutex, &until) == 0)
                ;
        } else {
            AO_compare_and_swap_full(&purge_asleep, 0, 1);
            while (!purge_woken && !load_seq_cst(&alloc_decay_due))
                pthread_cond_wait(&purge_cond, &purge_mutex);
            AO_store(&purge_asleep, 0);
        }
        purge_woken = 0;
        pthread_mutex_unlock(&purge_mutex);
    }
    return NULL;
}

static void purge_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&purge_cond, &ca);
    pthread_condattr_destroy(&ca);
    /* A small stack. pthread_create allocates (through loam when it is the
     * malloc): no lock of ours is held here, and a nested poke finds the
     * thread started. */
    int err = background_thread_start(purge_main, NULL, 256 * 1024, "loam-purge");
    if (err) {
        AO_store(&purge_state, PURGE_FAILED);
        loam_warn("cannot start the background purge thread (error %d): memory goes back "
                  "to the OS on allocation slow paths only", err);
        return;
    }
    AO_store_release(&purge_state, PURGE_RUNNING);
    AO_store(&alloc_background_decommit, 1);
}

void purge_poke_slow(void)
{
    AO_t state = AO_load_acquire(&purge_state);
    if (state != PURGE_RUNNING) {
        if (state == PURGE_NONE && loam_opt(purge_thread) &&
            AO_compare_and_swap_full(&purge_state, PURGE_NONE, PURGE_STARTING))
            purge_start();
        else if (state != PURGE_STARTING)
            AO_store(&alloc_decay_due, 0);      /* no thread will look: stop asking */
        return;
    }
    if (!load_seq_cst(&purge_asleep))
        return;
    if (!loam_opt(purge_thread)) {
        AO_store(&alloc_decay_due, 0);
        return;
    }
    pthread_mutex_lock(&purge_mutex);
    purge_woken = 1;
    pthread_cond_signal(&purge_cond);
    pthread_mutex_unlock(&purge_mutex);
}

/* The thread starts when the library is loaded (our constructor runs after
 * libc's, so creating a thread is safe), while the heap is small: the few
 * blocks pthread_create allocates then sit among the program's first ones,
 * not in the slabs of some later peak that they would keep resident. It
 * sleeps until an arena keeps memory for decay. */
__attribute__((constructor)) static void purge_start_at_load(void)
{
    loam_ensure_init();
    if (loam_opt(purge_thread) && AO_compare_and_swap_full(&purge_state, PURGE_NONE, PURGE_STARTING))
        purge_start();
}

/* Free blocks the answer's trim may walk to shrink sparse slabs: about a
 * millisecond, so a thread waking from a long idle spell does not stall on a
 * large fragmented heap (loam_heap_trim has no bound). */
#define PURGE_SHRINK_WALK ((size_t)1 << 16)

/* The owner has run from its cache alone for decay_ms: it is idle, or in a
 * steady state that a refill every decay_ms does not slow. Its blocks go
 * back, and so does everything its heap keeps for reuse (kept slabs, free
 * runs, empty segments), so that what the thread allocates next comes from
 * fresh pages instead of keeping the peak's resident ones alive. */
void purge_answer(tcache_t *tc)
{
    heaps_lock();
    loam_heap_t *h = tc->owner;
    tcache_answer_flush(tc);
    heaps_unlock();
    if (h)
        heap_trim(h, PURGE_SHRINK_WALK);
}

/* A child of fork has no purge thread, and gets none: until it execs, a child
 * of a multi-threaded process may only make async-signal-safe calls, and loam
 * starts no thread behind its back there. Decay runs on its slow paths. */
void purge_after_fork_child(void)
{
    /* A hold the parent's thread had at fork time ends here. */
    for (loam_heap_t *h = loam_heaps; h; h = h->next)
        h->purge_hold = false;
    pthread_mutex_init(&purge_mutex, NULL);
    purge_woken = 0;
    AO_store(&purge_state, PURGE_NOT_IN_CHILD);
    AO_store(&alloc_background_decommit, 0);   /* arenas give back at once again */
}
