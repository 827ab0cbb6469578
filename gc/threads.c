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
 */
#define _GNU_SOURCE
#include "gc/gc.h"

#include <sched.h>
#include <stdlib.h>

/* This thread's attachments, one per heap it is attached to. */
static __thread gc_thread_t *my_attachments;

/* The collection this thread works for: the collecting thread's from
 * stopping the world to restarting it, a marking helper's while it marks.
 * A fork it makes meanwhile can only come from a roots or trace callback
 * (gc_prefork_try). */
static __thread gc_state_t *my_collection;

void gc_helper_marks_for(gc_state_t *gc)
{
    my_collection = gc;
}

gc_thread_t *gc_self(gc_state_t *gc)
{
    for (gc_thread_t *t = my_attachments; t; t = t->thread_next)
        if (t->heap == gc->heap)
            return t;
    return NULL;
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

gc_thread_t *gc_attach(gc_state_t *gc)
{
    gc_thread_t *t = gc_self(gc);
    if (t)
        return t;
    char *base = stack_base_of_self();          /* may allocate: before any lock */
    t = meta_alloc(sizeof *t);
    if (!t)
        return NULL;
    t->heap = gc->heap;
    t->tid = pthread_self();
    t->stack_base = base;
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
    t->thread_next = my_attachments;
    my_attachments = t;
    return t;
}

static void unlink_thread(gc_state_t *gc, gc_thread_t *t)
{
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

/* Save what the collector scans: registers (into t->regs) and the stack top.
 * noinline: the frame of the caller stays above the recorded sp. */
static __attribute__((noinline)) void save_context(gc_thread_t *t)
{
    setjmp(t->regs);
    t->stack_sp = (char *)__builtin_frame_address(0);
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
    pthread_mutex_lock(&gc->lock);
    if (AO_load(&gc->stop) && t->state == GC_RUNNING) {
        wait_stopped(gc, t, GC_PARKED);
        t->state = GC_RUNNING;
    }
    pthread_mutex_unlock(&gc->lock);
}

static bool all_others_stopped(gc_state_t *gc, gc_thread_t *me)
{
    for (gc_thread_t *t = gc->threads; t; t = t->next)
        if (t != me && t->state == GC_RUNNING)
            return false;
    return true;
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
    while (!all_others_stopped(gc, me))
        pthread_cond_wait(&gc->parked_cv, &gc->lock);
    return true;
}

void gc_restart_world(gc_state_t *gc)
{
    gc_thread_t *me = gc_self(gc);
    if (me)
        me->state = GC_RUNNING;
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
        if (t->state == GC_RUNNING)
            continue;                      /* cannot happen while stopped */
        mc_scanning(&t->regs, (char *)&t->regs + sizeof t->regs);
        mc_scanning(t->stack_sp, t->stack_base);
        gc_mark_range(gc, &t->regs, (char *)&t->regs + sizeof t->regs);
        gc_mark_range(gc, t->stack_sp, t->stack_base);
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
    gc_state_t *gc = h->gc;
    pthread_mutex_lock(&gc->lock);
    /* Leaving during a stop would let the collector scan a stack that is
     * about to change: wait it out, counted as stopped. */
    if (AO_load(&gc->stop))
        wait_stopped(gc, t, GC_BLOCKING);
    unlink_thread(gc, t);
    pthread_cond_broadcast(&gc->parked_cv);
    pthread_mutex_unlock(&gc->lock);
    forget_attachment(t);
}

void loam_safepoint(loam_heap_t *h)
{
    if (h && h->gc)
        gc_park(h->gc);
}

void loam_enter_blocking(loam_heap_t *h)
{
    gc_thread_t *t = attached_self(h);
    if (!t)
        return;
    gc_state_t *gc = h->gc;
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
    pthread_mutex_lock(&gc->lock);
    if (--t->blocking_depth == 0) {
        while (AO_load(&gc->stop))
            pthread_cond_wait(&gc->resume_cv, &gc->lock);
        t->state = GC_RUNNING;
    }
    pthread_mutex_unlock(&gc->lock);
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

void gc_prefork_wait(void)
{
    /* A collection of a heap this thread is attached to waits for it to
     * stop: it parks, if so, until the world restarts. */
    for (gc_thread_t *t = my_attachments; t; t = t->thread_next)
        if (t->heap && t->heap->gc)
            gc_park(t->heap->gc);
    sched_yield();
}

void gc_postfork(bool child)
{
    for (loam_heap_t *h = loam_heaps; h; h = h->next) {
        gc_state_t *gc = h->gc;
        if (!gc || !gc->fork_held)
            continue;
        gc->fork_held = false;
        if (child) {
            gc_thread_t *me = gc_self(gc);
            for (gc_thread_t *t = gc->threads, *next; t; t = next) {
                next = t->next;
                if (t != me) {
                    unlink_thread(gc, t);
                    meta_free(t, sizeof *t);
                }
            }
        }
        pthread_mutex_unlock(&gc->lock);
    }
}

/* Thread exit: leave every heap this thread is attached to. */
void gc_thread_exit(void)
{
    while (my_attachments) {
        gc_thread_t *t = my_attachments;
        loam_heap_t *h = t->heap;
        if (h && h->gc) {
            loam_thread_detach(h);
        } else {
            my_attachments = t->thread_next;
            meta_free(t, sizeof *t);
        }
    }
}
