/* gc/threads.c — attached threads and stopping the world.
 *
 * A collection of heap h stops only the threads attached to h, and only
 * cooperatively: the collector raises gc->stop, then waits (on parked_cv)
 * until every other attached thread is PARKED (it reached a safepoint: an
 * allocation slow path or loam_safepoint) or BLOCKING (it announced a wait
 * with loam_enter_blocking). A stopped thread first saves its registers and
 * stack pointer, so the collector can scan [sp, stack base) and the saved
 * registers conservatively. The world restarts when gc->stop drops and
 * resume_cv is broadcast.
 *
 * Invariant: a thread's state changes only under gc->lock, and a thread
 * leaving BLOCKING or PARKED waits while gc->stop is raised, so no attached
 * thread runs mutator code during a collection.
 *
 * A thread attached to several heaps. Its states are per heap, but while it
 * waits inside loam for one heap (collecting it, from stopping the world to
 * restarting it, or parked for another thread's collection of it) it touches
 * no other heap, so it counts as stopped for all of them. Otherwise two
 * threads, each collecting a heap the other is attached to, would wait for
 * each other for ever. The thread's mutator record (gc_mutator_t, one per
 * thread, shared by its attachments) says so: `waiting`, with the registers
 * and stack top saved when the wait began. A collection that finds a RUNNING
 * attachment whose mutator waits counts it as stopped and *holds* it; when
 * the wait ends, the thread waits on until no collection holds it, so it
 * never runs mutator code in a heap whose world is stopped. Each side
 * writes its word, then reads the other's (waiting, holds), sequentially
 * consistent: either the collection sees the wait end and does not count
 * the thread, or the thread sees the hold and waits for its end.
 *
 * And a collection *asks* every thread attached to its heap to stop
 * (mutator stop_asks): an allocation slow path of any heap, and
 * loam_safepoint, answer by waiting as above until no collection asks. A
 * thread that went on to allocate only from other heaps (a worker serving
 * one interpreter heap per request, attached to each it served) would
 * otherwise never reach a safepoint of the heaps it left. The asking
 * collections are listed in the thread's record, and the thread wakes them
 * when it begins such a wait; a collection that waits for it also looks
 * again every millisecond (a wake-up can fall between its look and its
 * sleep).
 */
#define _GNU_SOURCE
#include "gc/gc.h"

#include <sched.h>
#include <stdlib.h>

/* This thread's attachments, one per heap it is attached to. */
static __thread gc_thread_t *my_attachments;

/* This thread's mutator record, made at its first attachment. */
__thread gc_mutator_t *gc_my_mutator;

/* The collection this thread works for: the collecting thread's from
 * stopping the world to restarting it, a marking helper's while it marks.
 * A fork it makes meanwhile can only come from a roots or trace callback
 * (gc_prefork_try). */
static __thread gc_state_t *my_collection;

void gc_helper_marks_for(gc_state_t *gc)
{
    my_collection = gc;
}

static loam_heap_t *attachment_heap(const gc_thread_t *t)
{
    return __atomic_load_n(&t->heap, __ATOMIC_ACQUIRE);
}

gc_thread_t *gc_self(gc_state_t *gc)
{
    for (gc_thread_t *t = my_attachments; t; t = t->thread_next)
        if (attachment_heap(t) == gc->heap)
            return t;
    return NULL;
}

bool gc_in_blocking_bracket(loam_heap_t *h)
{
    if (h->mode != LOAM_GC)
        return false;               /* no collection to race */
    gc_thread_t *t = gc_self(h->gc);
    return t && t->blocking_depth != 0;
}

static char *stack_base_of_self(void)
{
    pthread_attr_t attr;
    void *addr = NULL;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, &addr, &size);
        pthread_attr_destroy(&attr);
    }
    if (!addr) {
        /* cannot happen on Linux; fall back to a frame near the top */
        return (char *)__builtin_frame_address(0) + 4096;
    }
    return (char *)addr + size;
}

/* Save what the collector scans: registers and the stack top. noinline: the
 * frame of the caller stays above the recorded sp. */
static __attribute__((noinline)) void save_context_to(jmp_buf regs, char **sp)
{
    setjmp(regs);
    *sp = (char *)__builtin_frame_address(0);
}

static void save_context(gc_thread_t *t)
{
    save_context_to(t->regs, &t->stack_sp);
}

/* ---- waits inside loam, seen by every heap (the header says why) ---- */

static void mutator_wait_begin(gc_mutator_t *m)
{
    if (m->wait_depth++)
        return;
    save_context_to(m->regs, &m->stack_sp);
    __atomic_store_n(&m->waiting, 1, __ATOMIC_SEQ_CST);
    /* Collections waiting for this thread may count it stopped now. Under
     * the record's lock: an asker takes its ask back under it before its
     * heap can go. No heap's lock is needed to broadcast; a collection that
     * looked just before, and sleeps just after, polls (wait_for_parking). */
    if (AO_load(&m->stop_asks)) {
        pthread_mutex_lock(&m->lock);
        for (unsigned i = 0; i < GC_ASKERS_MAX; i++)
            if (m->askers[i])
                pthread_cond_broadcast(&m->askers[i]->parked_cv);
        pthread_mutex_unlock(&m->lock);
    }
}

static void mutator_wait_end(gc_mutator_t *m)
{
    if (--m->wait_depth)
        return;
    for (;;) {
        /* Sequentially consistent, as the collection's hold and its look at
         * `waiting` (thread_stopped): one of the two sees the other. */
        __atomic_store_n(&m->waiting, 0, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&m->holds, __ATOMIC_SEQ_CST))
            return;
        /* Held: wait for those collections to end, still counted as
         * stopped meanwhile, so that others may count it too. Waiting for
         * one collection while others wait for it would close a cycle (four
         * threads and two heaps were enough). Its saved context stays
         * true: the frames above it are the ones the wait began under. */
        __atomic_store_n(&m->waiting, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_lock(&m->lock);
        while (__atomic_load_n(&m->holds, __ATOMIC_ACQUIRE))
            pthread_cond_wait(&m->cv, &m->lock);
        pthread_mutex_unlock(&m->lock);
    }
}

void gc_wait_begin(void)
{
    if (gc_my_mutator)
        mutator_wait_begin(gc_my_mutator);
}

void gc_wait_end(void)
{
    if (gc_my_mutator)
        mutator_wait_end(gc_my_mutator);
}

void gc_answer_stop_asks_slow(gc_mutator_t *m)
{
    mutator_wait_begin(m);
    pthread_mutex_lock(&m->lock);
    while (__atomic_load_n(&m->stop_asks, __ATOMIC_ACQUIRE))
        pthread_cond_wait(&m->cv, &m->lock);
    pthread_mutex_unlock(&m->lock);
    mutator_wait_end(m);
}

static void forget_attachment(gc_thread_t *t);

/* The records of heaps destroyed since (heap NULL) go: gc_self walks the
 * list at every allocation slow path. */
static void prune_attachments(void)
{
    for (gc_thread_t *t = my_attachments, *next; t; t = next) {
        next = t->thread_next;
        if (!attachment_heap(t))
            forget_attachment(t);
    }
}

/* The thread's record, made at its first attachment: the stack's base is
 * found once per thread (for the main thread glibc reads /proc/self/maps,
 * a third of a collected heap's making and destroying for a thread
 * attached to one heap after another). */
static gc_mutator_t *mutator_of_self(void)
{
    gc_mutator_t *m = gc_my_mutator;
    if (m)
        return m;
    char *base = stack_base_of_self();  /* may allocate: before any lock */
    m = meta_alloc(sizeof *m);          /* zero: not waiting, no hold, no ask */
    if (!m)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cv, NULL);
    m->stack_base = base;
    gc_my_mutator = m;
    return m;
}

gc_thread_t *gc_attach(gc_state_t *gc)
{
    gc_thread_t *t = gc_self(gc);
    if (t)
        return t;
    prune_attachments();
    gc_mutator_t *m = mutator_of_self();
    t = m ? meta_alloc(sizeof *t) : NULL;
    if (!t)
        return NULL;
    t->heap = gc->heap;
    t->mut = m;
    mutator_wait_begin(m);
    pthread_mutex_lock(&gc->lock);
    /* A collection in progress finishes first: we were not part of it. */
    while (AO_load(&gc->stop))
        pthread_cond_wait(&gc->resume_cv, &gc->lock);
    t->state = GC_RUNNING;
    t->next = gc->threads;
    t->prev = NULL;
    if (gc->threads)
        gc->threads->prev = t;
    gc->threads = t;
    pthread_mutex_unlock(&gc->lock);
    mutator_wait_end(m);
    t->thread_next = my_attachments;
    my_attachments = t;
    return t;
}

/* Lock held: collection gc asks thread record m to stop (t->asked). */
static void mutator_ask(gc_mutator_t *m, gc_state_t *gc)
{
    pthread_mutex_lock(&m->lock);
    AO_fetch_and_add1(&m->stop_asks);
    for (unsigned i = 0; i < GC_ASKERS_MAX; i++)
        if (!m->askers[i]) {
            m->askers[i] = gc;
            break;
        }
    pthread_mutex_unlock(&m->lock);
}

/* Lock held: one of gc's counts on m ends (an ask, with gc's place in its
 * askers; or a hold) and m's thread may go on. */
static void mutator_release(gc_mutator_t *m, AO_t *count, gc_state_t *gc)
{
    pthread_mutex_lock(&m->lock);
    if (count == &m->stop_asks)
        for (unsigned i = 0; i < GC_ASKERS_MAX; i++)
            if (m->askers[i] == gc) {
                m->askers[i] = NULL;
                break;
            }
    /* Release: what the collection read of the thread (its saved context,
     * its stack) comes before the thread's going on. */
    __atomic_fetch_sub(count, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->lock);
}

/* Lock held: this collection's ask and hold on t (if any) end. */
static void end_ask_and_hold(gc_state_t *gc, gc_thread_t *t)
{
    if (t->asked)
        mutator_release(t->mut, &t->mut->stop_asks, gc);
    if (t->held)
        mutator_release(t->mut, &t->mut->holds, gc);
    t->asked = t->held = false;
}

/* Lock held: t leaves the heap's list, and this collection's ask and hold
 * on it (if any) end with it. */
static void unlink_thread(gc_state_t *gc, gc_thread_t *t)
{
    end_ask_and_hold(gc, t);
    if (t->prev)
        t->prev->next = t->next;
    else
        gc->threads = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = t->prev = NULL;
}

static void forget_attachment(gc_thread_t *t)
{
    gc_thread_t **pp = &my_attachments;
    while (*pp && *pp != t)
        pp = &(*pp)->thread_next;
    if (*pp)
        *pp = t->thread_next;
    meta_free(t, sizeof *t);
}

/* Wait (lock held) until the world restarts, counted as stopped meanwhile. */
static void wait_stopped(gc_state_t *gc, gc_thread_t *t, unsigned as_state)
{
    save_context(t);
    t->state = as_state;
    pthread_cond_broadcast(&gc->parked_cv);
    while (AO_load(&gc->stop))
        pthread_cond_wait(&gc->resume_cv, &gc->lock);
}

void gc_park(gc_state_t *gc)
{
    if (!AO_load_acquire(&gc->stop))
        return;
    gc_thread_t *t = gc_self(gc);
    if (!t)
        return;
    mutator_wait_begin(t->mut);
    pthread_mutex_lock(&gc->lock);
    if (AO_load(&gc->stop) && t->state == GC_RUNNING) {
        wait_stopped(gc, t, GC_PARKED);
        t->state = GC_RUNNING;
    }
    pthread_mutex_unlock(&gc->lock);
    mutator_wait_end(t->mut);
}

/* Lock held. Does t count as stopped: parked, blocking, or running but
 * waiting inside loam for another heap (then held until the restart)? */
static bool thread_stopped(gc_thread_t *t)
{
    if (t->state != GC_RUNNING || t->held)
        return true;
    gc_mutator_t *m = t->mut;
    if (!__atomic_load_n(&m->waiting, __ATOMIC_SEQ_CST))
        return false;
    __atomic_fetch_add(&m->holds, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&m->waiting, __ATOMIC_SEQ_CST)) {
        t->held = true;
        return true;
    }
    mutator_release(m, &m->holds, NULL);   /* its wait ended meanwhile */
    return false;
}

static bool all_others_stopped(gc_state_t *gc, gc_thread_t *me)
{
    for (gc_thread_t *t = gc->threads; t; t = t->next)
        if (t != me && !thread_stopped(t))
            return false;
    return true;
}

/* Lock held: wait a millisecond at most for a thread to stop. A thread
 * that begins a wait inside loam for another heap wakes the collections
 * that ask it (mutator_wait_begin), without this heap's lock: a wake-up
 * that falls between this collection's look and its sleep is lost, and
 * the millisecond bounds that. */
static void wait_for_parking(gc_state_t *gc)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&gc->parked_cv, &gc->lock, &until);
}

/* Lock held. Raise the stop and wait for the attached threads. If another
 * thread is collecting already, wait for it as a stopped thread and return
 * false (its collection served ours). */
bool gc_stop_world(gc_state_t *gc)
{
    gc_thread_t *me = gc_self(gc);
    if (gc->collecting) {
        if (me && me->state == GC_RUNNING) {
            wait_stopped(gc, me, GC_PARKED);
            me->state = GC_RUNNING;
        } else {
            while (gc->collecting)
                pthread_cond_wait(&gc->resume_cv, &gc->lock);
        }
        return false;
    }
    gc->collecting = true;
    my_collection = gc;
    AO_store_release(&gc->stop, 1);
    if (me) {
        save_context(me);
        me->state = GC_COLLECTING;
    }
    /* Threads now in other heaps' slow paths stop there too. */
    for (gc_thread_t *t = gc->threads; t; t = t->next)
        if (t != me) {
            mutator_ask(t->mut, gc);
            t->asked = true;
        }
    while (!all_others_stopped(gc, me))
        wait_for_parking(gc);
    return true;
}

void gc_restart_world(gc_state_t *gc)
{
    gc_thread_t *me = gc_self(gc);
    if (me)
        me->state = GC_RUNNING;
    for (gc_thread_t *t = gc->threads; t; t = t->next)
        end_ask_and_hold(gc, t);
    gc->collecting = false;
    if (my_collection == gc)
        my_collection = NULL;
    AO_store_release(&gc->stop, 0);
    pthread_cond_broadcast(&gc->resume_cv);
}

/* Every attached thread's stack and saved registers, conservatively. The
 * collecting thread's own context was saved by gc_stop_world; a collecting
 * thread that is not attached has its stack scanned from here. */
void gc_scan_thread_stacks(gc_state_t *gc)
{
    if (gc->heap->cfg.flags & LOAM_NO_STACK_SCAN)
        return;
    for (gc_thread_t *t = gc->threads; t; t = t->next) {
        /* A held thread waits for another heap: what it saved when its wait
         * began (its stack above that point does not change until it ends). */
        jmp_buf *regs = t->held ? &t->mut->regs : &t->regs;
        char *sp = t->held ? t->mut->stack_sp : t->stack_sp;
        if (t->state == GC_RUNNING && !t->held)
            continue;                      /* cannot happen while stopped */
        mc_scanning(regs, (char *)regs + sizeof *regs);
        mc_scanning(sp, t->mut->stack_base);
        gc_mark_range(gc, regs, (char *)regs + sizeof *regs);
        gc_mark_range(gc, sp, t->mut->stack_base);
    }
}

/* ---- public: attach, detach, safepoints, blocking -------------------------------------- */

void loam_thread_attach(loam_heap_t *h)
{
    if (h)
        gc_attach(gc_state_get(h));
}

/* The calling thread's attachment to h, or NULL (no collector, not attached). */
static gc_thread_t *attached_self(loam_heap_t *h)
{
    return h && h->gc ? gc_self(h->gc) : NULL;
}

void loam_thread_detach(loam_heap_t *h)
{
    gc_thread_t *t = attached_self(h);
    if (!t)
        return;
    /* Its caches of h go first, while it is attached and running (no
     * collection of h can be under way): kept, they would let it allocate
     * with no slow path, so unattached, its stack no root of h, and its new
     * blocks reclaimed under it. Its next allocation from h attaches it. */
    if (t->state == GC_RUNNING && t->blocking_depth == 0)
        heap_drop_my_caches(h);
    /* Inside a bracket its caches cannot be flushed (a collection may be
     * emptying them), and they stay off its slots (loam_enter_blocking):
     * back there, they would serve it unattached. Its next allocation from
     * h attaches it and makes it a new cache; the old ones stay on its list
     * and h's, emptied by collections, flushed at its exit. */
    gc_state_t *gc = h->gc;
    gc_mutator_t *m = t->mut;
    mutator_wait_begin(m);
    pthread_mutex_lock(&gc->lock);
    /* Leaving during a stop would let the collector scan a stack that is
     * about to change: wait it out, counted as stopped. */
    if (AO_load(&gc->stop))
        wait_stopped(gc, t, GC_BLOCKING);
    unlink_thread(gc, t);
    pthread_cond_broadcast(&gc->parked_cv);
    pthread_mutex_unlock(&gc->lock);
    mutator_wait_end(m);
    forget_attachment(t);
}

void loam_safepoint(loam_heap_t *h)
{
    if (h && h->gc)
        gc_park(h->gc);
    gc_answer_stop_asks();
}

void loam_enter_blocking(loam_heap_t *h)
{
    gc_thread_t *t = attached_self(h);
    if (!t)
        return;
    gc_state_t *gc = h->gc;
    /* Allocating from h inside the bracket is a fault, named by the slow
     * path (api.c, gc_alloc_slow_hook). The fast path would serve it from
     * the thread's caches unseen: they leave the thread's slots until the
     * bracket ends, and an allocation finds an empty cache, so it takes the
     * slow path. Only this thread's slots change, with no lock: the fast
     * path pays nothing, the bracket a few stores. */
    if (t->blocking_depth == 0 && h->mode == LOAM_GC)    /* a manual heap's: no fault to name */
        heap_hide_my_caches(h, t->hidden);
    pthread_mutex_lock(&gc->lock);
    if (t->blocking_depth++ == 0) {
        save_context(t);
        t->state = GC_BLOCKING;
        pthread_cond_broadcast(&gc->parked_cv);
    }
    pthread_mutex_unlock(&gc->lock);
}

void loam_leave_blocking(loam_heap_t *h)
{
    gc_thread_t *t = attached_self(h);
    if (!t || t->blocking_depth == 0)
        return;
    gc_state_t *gc = h->gc;
    gc_mutator_t *m = t->mut;
    mutator_wait_begin(m);              /* a collection of h may keep it here */
    pthread_mutex_lock(&gc->lock);
    bool left = --t->blocking_depth == 0;
    if (left) {
        while (AO_load(&gc->stop))
            pthread_cond_wait(&gc->resume_cv, &gc->lock);
        t->state = GC_RUNNING;
    }
    pthread_mutex_unlock(&gc->lock);
    mutator_wait_end(m);
    if (left)
        heap_show_my_caches(h, t->hidden);     /* running: its fast path serves again */
}

/* ---- fork --------------------------------------------------------------------------------- */

bool gc_prefork_try(void)
{
    /* A fork from a callback of a collection this thread works for would
     * wait for that collection to end, for ever. If the heap's error
     * callback returns, the fork goes on without the lock of any heap in a
     * collection (that collection finishes in the parent; the child must
     * not use the heap). */
    bool in_collection = my_collection != NULL;
    if (in_collection)
        loam_fault(my_collection->heap, "fork() inside a collection (from a roots or trace callback)",
                   NULL, 0);
    for (loam_heap_t *h = loam_heaps; h; h = h->next) {
        gc_state_t *gc = __atomic_load_n(&h->gc, __ATOMIC_ACQUIRE);
        if (!gc)
            continue;
        /* A collection waiting for its threads to park has the lock free
         * (it sleeps on parked_cv) but is under way all the same. */
        if (pthread_mutex_trylock(&gc->lock) != 0) {
            if (in_collection)
                continue;
            goto busy;
        }
        if (gc->collecting) {
            pthread_mutex_unlock(&gc->lock);
            if (in_collection)
                continue;
            goto busy;
        }
        gc->fork_held = true;
    }
    return true;
busy:
    gc_postfork(false);
    return false;
}

/* The heap of this thread's attachment t, pinned for a use on loam's own
 * behalf (exit, fork) that may race the heap's destruction by another
 * thread. NULL: the heap is being destroyed, or gone. */
static loam_heap_t *pin_attachment_heap(gc_thread_t *t)
{
    loam_heap_t *h = attachment_heap(t);
    if (!h || !heap_pin(h))
        return NULL;
    /* Destroyed between the two reads, and a new heap made at its address:
     * the destruction forgot t first, so t no longer names it. */
    if (attachment_heap(t) != h) {
        heap_unpin(h);
        return NULL;
    }
    return h;
}

void gc_prefork_wait(void)
{
    /* A collection of a heap this thread is attached to waits for it to
     * stop: it parks, if so, until the world restarts. */
    for (gc_thread_t *t = my_attachments; t; t = t->thread_next) {
        loam_heap_t *h = pin_attachment_heap(t);
        if (!h)
            continue;
        if (h->gc)
            gc_park(h->gc);
        heap_unpin(h);
    }
    sched_yield();
}

/* In the child: every other thread's attachment goes (those threads do not
 * exist there, a collection would wait for one running for ever, and scan
 * the frozen stack of one stopped, keeping what it held alive for ever), and
 * so do the finalizer batches they were running (gc_forget_dead_batches)
 * and their mutator records (reached only through their attachments; no
 * collection is under way, so no ask or hold is on them). A record's lock
 * may have been held by its thread at the fork: it is freed, not destroyed.
 * Their caches are another matter (heap_caches_after_fork_child). */
void gc_postfork(bool child)
{
    gc_mutator_t *gone = NULL;
    bool every_heap_held = true;
    for (loam_heap_t *h = loam_heaps; h; h = h->next) {
        gc_state_t *gc = h->gc;
        if (!gc)
            continue;
        if (!gc->fork_held) {
            /* A fork from inside this heap's collection (gc_prefork_try):
             * the child must not use the heap, whose threads stay listed,
             * their records with them. */
            every_heap_held = false;
            continue;
        }
        gc->fork_held = false;
        if (child) {
            gc_thread_t *me = gc_self(gc);
            for (gc_thread_t *t = gc->threads, *next; t; t = next) {
                next = t->next;
                if (t != me) {
                    gc_mutator_t *m = t->mut;
                    if (m != gc_my_mutator && !m->fork_gone) {
                        m->fork_gone = true;
                        m->fork_next = gone;
                        gone = m;
                    }
                    unlink_thread(gc, t);
                    meta_free(t, sizeof *t);
                }
            }
            gc_forget_dead_batches(gc);
        }
        pthread_mutex_unlock(&gc->lock);
    }
    if (!child || !every_heap_held)
        return;                     /* a record may still be listed there */
    while (gone) {
        gc_mutator_t *m = gone;
        gone = m->fork_next;
        meta_free(m, sizeof *m);
    }
}

/* Thread exit: leave every heap this thread is attached to. Then no
 * collection can reach its mutator record (each reads it through an
 * attachment in its heap's list, under the heap's lock). */
void gc_thread_exit(void)
{
    while (my_attachments) {
        gc_thread_t *t = my_attachments;
        loam_heap_t *h = pin_attachment_heap(t);
        if (h) {
            loam_thread_detach(h);
            if (my_attachments == t)        /* h has no collector: t is on no list */
                forget_attachment(t);
            heap_unpin(h);
        } else if (attachment_heap(t)) {
            /* h is being destroyed: t is on its list until the destroying
             * thread forgets it, which it is about to do. */
            sched_yield();
        } else {
            forget_attachment(t);
        }
    }
    gc_mutator_t *m = gc_my_mutator;
    if (m) {
        gc_my_mutator = NULL;
        pthread_cond_destroy(&m->cv);
        pthread_mutex_destroy(&m->lock);
        meta_free(m, sizeof *m);
    }
}

void gc_forget_threads(gc_state_t *gc)
{
    /* The caller's own record goes now; another thread's says the heap is
     * gone, and goes at that thread's next attachment or its exit (only
     * its owner walks its list). */
    for (gc_thread_t *t = gc->threads, *next; t; t = next) {
        next = t->next;
        if (t->mut == gc_my_mutator)
            forget_attachment(t);
        else
            __atomic_store_n(&t->heap, NULL, __ATOMIC_RELEASE);
    }
    gc->threads = NULL;
}
