/* runtime/init.c — process start: size tables, secrets, options, the default
 * heap, the thread-exit key, fork handlers, the exit report, and how loam
 * starts a thread of its own.
 *
 * It runs on the first allocation (possibly before main, from the dynamic
 * loader, when loam is the malloc), so it must not allocate from libc. A
 * nested call during init (atfork or atexit registration allocating through
 * us) sees the tables ready and goes on. */
#define _GNU_SOURCE 1     /* pthread_setname_np */
#include "runtime/runtime.h"
#include "gc/gc.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

uintptr_t loam_free_key;
unsigned loam_initialized;
struct loam_heap loam_default_heap = {
    .alloc_slot = 0, .slot = 0, .is_default = true,
    .gc_alloc_slot = { 0, TC_SLOT_NONE, TC_SLOT_NONE },
    .gc_class_row = gc_class_row_none,
};

static pthread_mutex_t init_mutex = PTHREAD_MUTEX_INITIALIZER;
static int init_started;

void heap_thread_key_init(void);
void error_install_core_hook(void);
void stats_print_all_at_exit(FILE *out);

/* fork: hold every lock across it, so the child starts with consistent
 * arenas, then release them in both processes. */
static void fork_prepare(void)
{
    alloc_background_lock();
    heaps_lock();
    while (!gc_prefork_try()) {
        heaps_unlock();
        gc_prefork_wait();
        heaps_lock();
    }
    for (loam_heap_t *h = loam_heaps; h; h = h->next) {
        for (unsigned k = 0; k < HEAP_KINDS; k++)
            pthread_mutex_lock(&h->kinds[k].arenas.lock);
        arena_t *a;
        for (unsigned i = 0; (a = heap_arena_at(h, i)); i++)
            pthread_mutex_lock(&a->lock);
    }
    alloc_prefork();
}

static void fork_release_in(bool child)
{
    alloc_postfork();
    for (loam_heap_t *h = loam_heaps; h; h = h->next) {
        arena_t *a;
        for (unsigned i = 0; (a = heap_arena_at(h, i)); i++)
            pthread_mutex_unlock(&a->lock);
        for (unsigned k = 0; k < HEAP_KINDS; k++)
            pthread_mutex_unlock(&h->kinds[k].arenas.lock);
    }
    gc_postfork(child);
    heaps_unlock();
    alloc_background_unlock();
}

static void fork_release(void)
{
    fork_release_in(false);
}

static void fork_release_child(void)
{
    fork_release_in(true);
    heap_caches_after_fork_child();
    purge_after_fork_child();
    gc_markers_after_fork_child();
}

int background_thread_start(void *(*fn)(void *), void *arg, size_t stack, const char *name)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);   /* the new thread inherits the mask */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (stack)
        pthread_attr_setstacksize(&attr, stack);
    pthread_t t;
    int err = pthread_create(&t, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!err)
        pthread_setname_np(t, name);
    return err;
}

/* Programs often close stderr before exit (sort, ls, ...): the report goes
 * to a copy of it taken at start. */
static int report_fd = -1;

static void exit_report(void)
{
    if (!loam_opt(verbose))
        return;
    FILE *f = report_fd >= 0 ? fdopen(report_fd, "w") : NULL;
    stats_print_all_at_exit(f ? f : stderr);
    if (f)
        fclose(f);
    report_fd = -1;
}

void loam_init_slow(void)
{
    pthread_mutex_lock(&init_mutex);
    if (init_started) {
        pthread_mutex_unlock(&init_mutex);
        return;
    }
    init_started = 1;
    sizeclass_init();
    tcache_tables_init();
    loam_free_key = os_random_seed();
    error_install_core_hook();
    gc_install_hooks();
    options_defaults();
    options_from_env();
    heap_init_fields(&loam_default_heap, NULL, true);
    heaps_lock();
    loam_default_heap.next = loam_heaps;
    if (loam_heaps)
        loam_heaps->prev = &loam_default_heap;
    loam_heaps = &loam_default_heap;
    heaps_unlock();
    heap_thread_key_init();
    AO_int_store_release(&loam_initialized, 1);
    pthread_mutex_unlock(&init_mutex);
    pthread_atfork(fork_prepare, fork_release, fork_release_child);
    if (loam_opt(verbose))
        report_fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    atexit(exit_report);
}
