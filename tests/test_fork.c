/* tests/test_fork.c — fork() while other threads allocate.
 *
 * Worker threads keep allocating and freeing (on the default heap, on heaps of
 * their own and on a shared heap, with cross-thread frees) while the main
 * thread, and also a worker, fork again and again. Each child must be able to
 * allocate, check, free, create and destroy a heap, read statistics and exit
 * cleanly. A child that deadlocks is killed by its alarm (SIGALRM), which fails
 * the test instead of hanging it; the parent also gives up waiting on its own.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <execinfo.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loam.h"

#ifdef LOAM_MEMCHECK
#include <valgrind/valgrind.h>
#endif

/* Whether a child starts threads of its own. Not under TSan, which kills a
 * child of a threaded process that starts threads. Nor under ASan: Debian
 * 12's libasan (GCC 12) does not hold its allocator's lock across fork
 * (that came with LLVM 18, llvm/llvm-project#75290), the test runner's own
 * threads allocate through it, and a thread starting in the child does too
 * (pthread_getattr_np calls calloc). One ASan run of this file in about a
 * hundred had a child deadlock there: every stack of the stuck child was
 * inside libasan's allocator, none in loam (none in 200 runs without the
 * child's threads). */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define CHILD_THREADS false
#else
#define CHILD_THREADS true
#endif
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(LOAM_SANITIZED)
#define SAN_DIVISOR 4
#else
#define SAN_DIVISOR 1
#endif

#define WORKERS      4
#define CHILD_ALARM  20        /* seconds a child may take */

static unsigned long test_scale(void)
{
    const char *s = getenv("LOAM_TEST_SCALE");
    unsigned long v = s ? strtoul(s, NULL, 10) : 1;
    return v ? v : 1;
}

static atomic_int stop_workers;
static atomic_int workers_started;
static loam_heap_t *shared_heap;
static _Atomic(void *) handoff[64];            /* blocks passed between workers */

static uint64_t xs(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t pick_size(uint64_t *s)
{
    uint64_t r = xs(s);
    switch (r & 63) {
    case 0:
        return 131072 + (r >> 8) % 200000;          /* large: own mapping */
    case 1: case 2: case 3: case 4:
        return 1024 + (r >> 8) % 30000;
    default:
        return (r >> 8) % 1025;
    }
}

typedef struct {
    int           id;
    unsigned long ops;
    int           errors;
    int           forks, fork_failures;
    char          msg[200];
} worker_t;

/* Allocation, checking and freeing, used by workers and by children. Returns
 * the number of damaged blocks found. */
static int churn(loam_heap_t *h, uint64_t *seed, unsigned rounds)
{
    enum { N = 64 };
    void *p[N] = { 0 };
    size_t n[N] = { 0 };
    unsigned char tag[N] = { 0 };
    int bad = 0;
    for (unsigned r = 0; r < rounds; r++) {
        unsigned i = (unsigned)(xs(seed) % N);
        if (p[i]) {
            unsigned char *b = p[i];
            if (n[i] && (b[0] != tag[i] || b[n[i] - 1] != tag[i] || b[n[i] / 2] != tag[i]))
                bad++;
            loam_free(p[i]);
            p[i] = NULL;
        } else {
            n[i] = pick_size(seed);
            tag[i] = (unsigned char)(xs(seed) | 1);
            p[i] = (xs(seed) & 7) == 0 ? loam_calloc(h, 1, n[i]) : loam_malloc(h, n[i]);
            if (!p[i]) {
                bad++;
                continue;
            }
            memset(p[i], tag[i], n[i]);
        }
    }
    for (unsigned i = 0; i < N; i++)
        if (p[i])
            loam_free(p[i]);
    return bad;
}

/* The child's work: everything a freshly forked process would do. Exit code 0
 * when fine, else a code naming the first problem. */
static void *child_thread(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg | 1;
    loam_heap_t *h = loam_heap_new(NULL);
    if (!h)
        return (void *)1;
    int bad = churn(h, &seed, 1000) + churn(loam_heap_default(), &seed, 1000);
    loam_heap_destroy(h);
    return bad ? (void *)1 : NULL;
}

/* A child stuck past its alarm prints where it is stuck before it dies of
 * the signal, so a rare deadlock after fork can be told apart: the thread
 * that takes the alarm (usually the forking thread) prints its stack, then
 * asks each of the child's own threads still running to print theirs.
 * backtrace() is warmed up before the alarm is armed: its first call may
 * load libgcc, which is no work for a signal handler. */
static pthread_t child_threads[2];
static volatile sig_atomic_t child_thread_live[2];      /* created, not yet joined */

static void print_stack(const char *msg, size_t len)
{
    if (write(STDERR_FILENO, msg, len) < 0)
        _exit(98);
    void *frames[48];
    backtrace_symbols_fd(frames, backtrace(frames, 48), STDERR_FILENO);
}

static void child_thread_dump(int sig)
{
    (void)sig;
    static const char msg[] = "test_fork: a thread of the stuck child; its stack:\n";
    print_stack(msg, sizeof msg - 1);
}

static void child_alarm(int sig)
{
    static const char msg[] = "test_fork: a child is stuck after fork; its stack:\n";
    print_stack(msg, sizeof msg - 1);
    for (int i = 0; i < 2; i++) {
        if (!child_thread_live[i])
            continue;
        pthread_kill(child_threads[i], SIGUSR2);
        struct timespec ts = { 0, 200 * 1000 * 1000 };   /* its turn to write */
        nanosleep(&ts, NULL);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void child_main(uint64_t seed, bool threads)
{
    void *warm[1];
    (void)backtrace(warm, 1);
    signal(SIGALRM, child_alarm);
    signal(SIGUSR2, child_thread_dump);
    alarm(CHILD_ALARM);
    /* Heaps the parent's threads were using at the moment of the fork. */
    if (churn(loam_heap_default(), &seed, 1500))
        _exit(10);
    if (churn(shared_heap, &seed, 1500))
        _exit(11);
    /* A fresh heap: statistics back to zero after freeing everything. */
    loam_heap_t *h = loam_heap_new(NULL);
    if (!h)
        _exit(12);
    if (churn(h, &seed, 1500))
        _exit(13);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    if (st.live_bytes != 0 || st.live_blocks != 0)
        _exit(14);
    void *keep = loam_malloc(h, 1000);
    if (!keep || loam_heap_of(keep) != h)
        _exit(15);
    loam_heap_destroy(h);
    /* Blocks handed between the parent's workers, still in flight at the
     * fork, belong to the child too: it may free them. */
    for (int i = 0; i < 64; i += 7) {
        void *b = atomic_exchange(&handoff[i], NULL);
        if (b)
            loam_free(b);
    }
    if (threads) {
        pthread_t t[2];
        for (int i = 0; i < 2; i++) {
            if (pthread_create(&t[i], NULL, child_thread, (void *)(uintptr_t)(seed + (uint64_t)i)) != 0)
                _exit(16);
            child_threads[i] = t[i];
            child_thread_live[i] = 1;
        }
        for (int i = 0; i < 2; i++) {
            void *ret = (void *)1;
            pthread_join(t[i], &ret);
            child_thread_live[i] = 0;      /* gone: no longer signalled */
            if (ret)
                _exit(17);
        }
    }
    /* A grandchild, forked from a child that has no other threads. */
    pid_t g = fork();
    if (g < 0)
        _exit(18);
    if (g == 0) {
        alarm(CHILD_ALARM);
        _exit(churn(loam_heap_default(), &seed, 500) ? 1 : 0);
    }
    int gs = 0;
    if (waitpid(g, &gs, 0) != g || !WIFEXITED(gs) || WEXITSTATUS(gs) != 0)
        _exit(19);
    /* _exit rather than exit: the test runner's exit handlers belong to the parent. */
    _exit(0);
}

/* Wait for a child; a child that does not finish in time is killed. Returns
 * a description of what went wrong, or NULL. */
static const char *reap(pid_t pid, char *buf, size_t len)
{
    int status = 0;
    for (int waited_ms = 0;; waited_ms += 10) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0) {
            snprintf(buf, len, "waitpid: %s", strerror(errno));
            return buf;
        }
        if (waited_ms > (CHILD_ALARM + 10) * 1000) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            snprintf(buf, len, "child %d hung (killed)", (int)pid);
            return buf;
        }
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    if (WIFSIGNALED(status)) {
        snprintf(buf, len, "child %d killed by signal %d%s", (int)pid, WTERMSIG(status),
                 WTERMSIG(status) == SIGALRM ? " (SIGALRM: deadlocked after fork)" : "");
        return buf;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(buf, len, "child %d exited with status %d", (int)pid, WEXITSTATUS(status));
        return buf;
    }
    return NULL;
}

static void *worker(void *arg)
{
    worker_t *w = arg;
    atomic_fetch_add(&workers_started, 1);
    uint64_t seed = 0x9E3779B97F4A7C15ull * (uint64_t)(w->id + 1);
    loam_heap_t *own = loam_heap_new(NULL);
    if (!own) {
        w->errors++;
        return NULL;
    }
    while (!atomic_load(&stop_workers)) {
        loam_heap_t *h = w->ops % 3 == 0 ? loam_heap_default() : w->ops % 3 == 1 ? own : shared_heap;
        if (churn(h, &seed, 200)) {
            w->errors++;
            snprintf(w->msg, sizeof w->msg, "damaged block in worker %d", w->id);
        }
        /* Cross-thread frees: swap a block into a shared slot, free what was there. */
        unsigned i = (unsigned)(xs(&seed) % 64);
        void *b = loam_malloc(i & 1 ? shared_heap : loam_heap_default(), 1 + i * 13);
        void *old = atomic_exchange(&handoff[i], b);
        if (old)
            loam_free(old);
        /* Worker 0 forks too: fork from a thread that is not the main one. */
        if (w->id == 0 && w->ops % 50 == 25 && w->forks < 10) {
            pid_t pid = fork();
            if (pid == 0)
                child_main(seed, CHILD_THREADS);
            if (pid < 0) {
                w->fork_failures++;
            } else {
                char buf[160];
                const char *err = reap(pid, buf, sizeof buf);
                if (err) {
                    w->errors++;
                    snprintf(w->msg, sizeof w->msg, "fork from worker: %s", err);
                }
                w->forks++;
            }
        }
        w->ops++;
    }
    loam_stats_t st;
    loam_heap_stats(own, &st);
    if (st.live_bytes || st.live_blocks) {
        w->errors++;
        snprintf(w->msg, sizeof w->msg, "worker %d: own heap live %zu bytes after freeing everything", w->id,
                 st.live_bytes);
    }
    loam_heap_destroy(own);
    return NULL;
}

Test(fork, fork_while_threads_allocate, .timeout = 600)
{
    atomic_store(&stop_workers, 0);
    atomic_store(&workers_started, 0);
    shared_heap = loam_heap_new(NULL);
    cr_assert_not_null(shared_heap);
    worker_t w[WORKERS];
    pthread_t th[WORKERS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < WORKERS; i++) {
        w[i].id = i;
        cr_assert_eq(pthread_create(&th[i], NULL, worker, &w[i]), 0);
    }
    /* Fork only once every worker runs: a thread still starting is inside the
     * sanitizer runtime's allocator (ASan allocates in its thread start), and
     * a fork then leaves that allocator's lock held in the child, which
     * deadlocks its first thread. Loam's own locks are what the test is for. */
    while (atomic_load(&workers_started) < WORKERS)
        sched_yield();
    unsigned forks = 60 * (unsigned)test_scale() / SAN_DIVISOR;
    int failures = 0;
    char first[200] = "";
    for (unsigned k = 0; k < forks; k++) {
        /* Let the workers get going between forks, at varying moments. */
        struct timespec ts = { 0, (long)(1 + k % 7) * 1000 * 1000 };
        nanosleep(&ts, NULL);
        pid_t pid = fork();
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
        if (pid == 0)
            child_main(0x1234567ull + k, CHILD_THREADS);
        char buf[160];
        const char *err = reap(pid, buf, sizeof buf);
        if (err && !failures++)
            snprintf(first, sizeof first, "fork %u: %s", k, err);
    }
    atomic_store(&stop_workers, 1);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(th[i], NULL);
    cr_expect_eq(failures, 0, "%d of %u children failed; first: %s", failures, forks, first);
    for (int i = 0; i < WORKERS; i++)
        cr_expect_eq(w[i].errors, 0, "worker %d: %d errors: %s", i, w[i].errors, w[i].msg);
    cr_expect_gt(w[0].forks, 0, "worker 0 never forked");
    cr_expect_eq(w[0].fork_failures, 0);
    for (int i = 0; i < 64; i++) {
        void *b = atomic_exchange(&handoff[i], NULL);
        if (b)
            loam_free(b);
    }
    loam_stats_t st;
    loam_heap_stats(shared_heap, &st);
    cr_expect_eq(st.live_bytes, 0, "shared heap: live_bytes %zu after the workers freed everything",
                 st.live_bytes);
    cr_expect_eq(st.live_blocks, 0);
    loam_heap_destroy(shared_heap);
}

/* A collected heap: fork at moments when the background thread may be
 * purging it, which it does holding the heap's collector lock. Each child
 * must be able to collect (a child that inherited that lock held would
 * wait for it for ever, and its alarm fails the test). */
Test(fork, fork_while_the_background_thread_purges_a_collected_heap, .timeout = 300)
{
    cr_assert_eq(loam_option_set("decay_ms", 1), 0);     /* kept runs decay at once */
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    static void *keep[256];
    loam_root_add_range(h, keep, keep + 256);
    unsigned forks = 400 * (unsigned)test_scale() / SAN_DIVISOR;
    int failures = 0;
    char first[200] = "";
    for (unsigned k = 0; k < forks; k++) {
        /* Garbage, then a collection: it releases the garbage's slabs and
         * wakes the thread, which gives their runs back a moment later. */
        for (int i = 0; i < 2000; i++) {
            void *p = loam_gc_alloc(h, 16 + (size_t)(i % 64) * 16, LOAM_ATOMIC);
            cr_assert_not_null(p);
            keep[i % 256] = p;
        }
        loam_gc_collect(h);
        struct timespec ts = { 0, (long)(k % 16) * 25 * 1000 };
        nanosleep(&ts, NULL);
        pid_t pid = fork();
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
        if (pid == 0) {
            signal(SIGALRM, SIG_DFL);
            alarm(CHILD_ALARM);
            loam_gc_collect(h);
            _exit(loam_gc_alloc(h, 100, LOAM_ATOMIC) ? 0 : 1);
        }
        char buf[160];
        const char *err = reap(pid, buf, sizeof buf);
        if (err && !failures++)
            snprintf(first, sizeof first, "fork %u: %s", k, err);
    }
    cr_expect_eq(failures, 0, "%d of %u children failed; first: %s", failures, forks, first);
    loam_root_remove_range(h, keep);
    loam_heap_destroy(h);
    cr_assert_eq(loam_option_set("decay_ms", 250), 0);
}

/* A collected heap with another attached thread allocating (and so
 * collecting) while the main thread forks: each child, where that thread
 * does not exist, must still collect (it must not wait for the thread to
 * stop) and allocate. The main thread forks unattached, then attached. */
static loam_heap_t *collected_heap;
static atomic_int collector_stop;
/* Under memcheck a fork that catches the worker inside loam_gc_alloc
 * leaves the child a block memcheck holds half registered (the block is
 * only lost there, but memcheck reports it when its slab is reused): the
 * worker then holds still, attached and running, while the main thread
 * forks. */
static atomic_int hold_still, holding_still;

static void *collecting_worker(void *arg)
{
    (void)arg;
    loam_thread_attach(collected_heap);
    while (!atomic_load(&collector_stop)) {
        for (int i = 0; i < 1000; i++)
            if (!loam_gc_alloc(collected_heap, 64, LOAM_ATOMIC))
                return (void *)1;
        if (atomic_load(&hold_still)) {
            atomic_store(&holding_still, 1);
            while (atomic_load(&hold_still))
                sched_yield();
            atomic_store(&holding_still, 0);
        }
    }
    loam_thread_detach(collected_heap);
    return NULL;
}

Test(fork, fork_while_another_thread_collects, .timeout = 300)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    collected_heap = loam_heap_new(&cfg);
    cr_assert_not_null(collected_heap);
    atomic_store(&collector_stop, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, collecting_worker, NULL), 0);
    unsigned forks = 40 * (unsigned)test_scale() / SAN_DIVISOR;
    int failures = 0;
    char first[200] = "";
    for (unsigned k = 0; k < forks; k++) {
        bool attached = k >= forks / 2;
        if (k == forks / 2)
            loam_thread_attach(collected_heap);
        struct timespec ts = { 0, (long)(1 + k % 5) * 1000 * 1000 };
        nanosleep(&ts, NULL);
        bool still = false;
#ifdef LOAM_MEMCHECK
        still = RUNNING_ON_VALGRIND;
#endif
        if (still) {
            atomic_store(&hold_still, 1);
            if (attached)
                loam_enter_blocking(collected_heap);    /* the worker may be collecting */
            while (!atomic_load(&holding_still))
                sched_yield();
            if (attached)
                loam_leave_blocking(collected_heap);
        }
        pid_t pid = fork();
        atomic_store(&hold_still, 0);
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
        if (pid == 0) {
            signal(SIGALRM, SIG_DFL);
            alarm(CHILD_ALARM);
            loam_gc_collect(collected_heap);
            for (int i = 0; i < 20000; i++)         /* collections by allocation too */
                if (!loam_gc_alloc(collected_heap, 256, LOAM_ATOMIC))
                    _exit(1);
            _exit(0);
        }
        char buf[160];
        if (attached)
            loam_enter_blocking(collected_heap);    /* waiting: counted as stopped */
        const char *err = reap(pid, buf, sizeof buf);
        if (attached)
            loam_leave_blocking(collected_heap);
        if (err && !failures++)
            snprintf(first, sizeof first, "fork %u (%s): %s", k, attached ? "attached" : "not attached", err);
    }
    loam_thread_detach(collected_heap);
    atomic_store(&collector_stop, 1);
    void *ret = (void *)1;
    pthread_join(th, &ret);
    cr_expect_null(ret, "the collecting thread's allocation failed");
    cr_expect_eq(failures, 0, "%d of %u children failed; first: %s", failures, forks, first);
    loam_stats_t st;
    loam_heap_stats(collected_heap, &st);
    cr_expect_gt(st.gc_collections, 0, "no collection in the parent");
    loam_heap_destroy(collected_heap);
}

/* Heaps made and destroyed by another thread while the process forks.
 * A new heap was linked into the list of heaps before its fields (its
 * arena sets' locks) were initialised: fork's prepare handler, walking the
 * list, could lock a mutex the making thread then initialised anew under
 * it (a race ThreadSanitizer reports). Each child makes, uses and
 * destroys a heap of its own. */
static atomic_int maker_stop;

static void *make_heaps(void *arg)
{
    (void)arg;
    for (unsigned i = 0; !atomic_load(&maker_stop); i++) {
        loam_config_t cfg = { .mode = i % 2 ? LOAM_GC : LOAM_MANUAL };
        loam_heap_t *h = loam_heap_new(&cfg);
        if (!h)
            return (void *)1;
        void *p = i % 2 ? loam_gc_alloc(h, 64, LOAM_ATOMIC) : loam_malloc(h, 64);
        if (!p)
            return (void *)1;
        if (i % 2 == 0)
            loam_free(p);
        loam_thread_detach(h);
        loam_heap_destroy(h);
    }
    return NULL;
}

Test(fork, fork_while_another_thread_makes_heaps, .timeout = 300)
{
    atomic_store(&maker_stop, 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, make_heaps, NULL), 0);
    unsigned forks = 200 * (unsigned)test_scale() / SAN_DIVISOR;
    int failures = 0;
    char first[200] = "";
    for (unsigned k = 0; k < forks; k++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
        if (pid == 0) {
            signal(SIGALRM, SIG_DFL);
            alarm(CHILD_ALARM);
            loam_heap_t *h = loam_heap_new(NULL);
            void *p = h ? loam_malloc(h, 100) : NULL;
            if (!p)
                _exit(1);
            loam_free(p);
            loam_heap_destroy(h);
            p = malloc(1000);                           /* loam's when preloaded */
            free(p);
            _exit(0);
        }
        char buf[160];
        const char *err = reap(pid, buf, sizeof buf);
        if (err && !failures++)
            snprintf(first, sizeof first, "fork %u: %s", k, err);
    }
    atomic_store(&maker_stop, 1);
    void *ret = (void *)1;
    pthread_join(th, &ret);
    cr_expect_null(ret, "the heap-making thread's allocation failed");
    cr_expect_eq(failures, 0, "%d of %u children failed; first: %s", failures, forks, first);
}

/* The parent goes on normally after many forks: its own heaps and caches are intact. */
Test(fork, parent_intact_after_forks, .timeout = 300)
{
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_not_null(h);
    void *blocks[100];
    for (int i = 0; i < 100; i++) {
        blocks[i] = loam_malloc(h, (size_t)(i * 40 + 1));
        memset(blocks[i], i, (size_t)(i * 40 + 1));
    }
    for (int k = 0; k < 20; k++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            alarm(CHILD_ALARM);
            /* The child frees the parent's blocks (its copies) and reuses the heap. */
            for (int i = 0; i < 100; i++) {
                unsigned char *b = blocks[i];
                if (b[0] != (unsigned char)i || b[i * 40] != (unsigned char)i)
                    _exit(1);
                loam_free(b);
            }
            loam_stats_t st;
            loam_heap_stats(h, &st);
            if (st.live_blocks != 0)
                _exit(2);
            loam_heap_destroy(h);
            _exit(0);
        }
        char buf[160];
        const char *err = reap(pid, buf, sizeof buf);
        cr_expect_null(err, "fork %d: %s", k, err ? err : "");
    }
    for (int i = 0; i < 100; i++) {
        unsigned char *b = blocks[i];
        cr_expect_eq(b[i * 40], (unsigned char)i, "parent block %d damaged after forks", i);
        loam_free(b);
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_expect_eq(st.live_blocks, 0);
    cr_expect_eq(st.live_bytes, 0);
    loam_heap_destroy(h);
}

/* ---- fork from inside a collection ----------------------------------------------- */

/* A roots callback that forks: the fork's handlers would wait for the
 * collection under way, which is the forking thread's own, for ever. loam
 * names the fault instead; with an error callback that returns, the fork
 * goes on, the child exits, and the collection finishes in the parent. */
static atomic_int cb_forks, cb_child_status = -1, cb_faults;
static char cb_fault_text[160];

static void cb_on_error(loam_heap_t *h, const char *message, void *addr, void *user)
{
    (void)h, (void)addr, (void)user;
    if (atomic_fetch_add(&cb_faults, 1) == 0)
        snprintf(cb_fault_text, sizeof cb_fault_text, "%s", message);
}

static void cb_roots_that_fork(loam_tracer_t *t, void *user)
{
    (void)t, (void)user;
    if (atomic_fetch_add(&cb_forks, 1) != 0)
        return;
    pid_t pid = fork();
    if (pid == 0)
        _exit(7);                   /* the child must not use the heap: it only leaves */
    int status = 0;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status))
        atomic_store(&cb_child_status, WEXITSTATUS(status));
}

Test(fork, fork_from_a_roots_callback_is_named_not_a_hang, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .roots = cb_roots_that_fork, .error = cb_on_error };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    void *keep = loam_gc_alloc(h, 64, LOAM_ATOMIC);
    cr_assert_not_null(keep);
    memset(keep, 0x5a, 64);
    loam_gc_collect(h);
    cr_assert_eq(atomic_load(&cb_forks), 1);
    cr_assert_eq(atomic_load(&cb_faults), 1, "the fork inside the collection was reported %d times",
                 atomic_load(&cb_faults));
    cr_assert(strstr(cb_fault_text, "fork() inside a collection") != NULL, "the fault said: %s",
              cb_fault_text);
    cr_assert_eq(atomic_load(&cb_child_status), 7, "the child did not exit normally");
    /* The parent's heap goes on: the block on the stack survived, and
     * allocation and collection work. */
    for (int i = 0; i < 64; i++)
        cr_assert_eq(((unsigned char *)keep)[i], 0x5a);
    for (int i = 0; i < 10000; i++)
        cr_assert_not_null(loam_gc_alloc(h, 48, LOAM_CONSERVATIVE));
    loam_gc_collect(h);
    loam_heap_destroy(h);
}

/* The same from a trace callback run by a marking helper (a thread of
 * loam's): the collecting thread waits for the helper, which would wait
 * in fork's handler for the collection. The tree is wide so that helpers
 * take part; a helper forks the first time one traces. */
typedef struct cb_node { struct cb_node *kid[2]; uint64_t payload; } cb_node_t;
static atomic_int cb_helper_forks;

static void cb_trace_that_forks(void *obj, loam_tracer_t *t, void *user)
{
    (void)user;
    cb_node_t *n = obj;
    if (gettid() != getpid() && atomic_fetch_add(&cb_helper_forks, 1) == 0) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(7);
        int status = 0;
        if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status))
            atomic_store(&cb_child_status, WEXITSTATUS(status));
    }
    loam_mark(t, n->kid[0]);
    loam_mark(t, n->kid[1]);
}

static cb_node_t *cb_tree(loam_heap_t *h, int depth, uint64_t *count)
{
    cb_node_t *n = loam_gc_alloc(h, sizeof *n, LOAM_TRACED);
    cr_assert_not_null(n);
    n->payload = (*count)++;
    n->kid[0] = depth ? cb_tree(h, depth - 1, count) : NULL;
    n->kid[1] = depth ? cb_tree(h, depth - 1, count) : NULL;
    return n;
}

static uint64_t cb_tree_count(const cb_node_t *n)
{
    return n ? 1 + cb_tree_count(n->kid[0]) + cb_tree_count(n->kid[1]) : 0;
}

Test(fork, fork_from_a_marking_helpers_trace_callback_is_named, .timeout = 120)
{
    cr_assert_eq(loam_option_set("gc_markers", 4), 0);
    cr_assert_eq(loam_option_set("gc_parallel_min", 0), 0);
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_PARALLEL_MARK | LOAM_NO_STACK_SCAN,
                          .trace = cb_trace_that_forks, .error = cb_on_error };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    static cb_node_t *root;
    loam_root_add(h, (void **)&root);
    uint64_t count = 0;
    root = cb_tree(h, 15, &count);
    for (int i = 0; i < 50 && atomic_load(&cb_helper_forks) == 0; i++)
        loam_gc_collect(h);
    cr_assert_gt(atomic_load(&cb_helper_forks), 0, "no marking helper traced in 50 collections");
    cr_assert_eq(atomic_load(&cb_faults), 1, "the fork inside the collection was reported %d times",
                 atomic_load(&cb_faults));
    cr_assert(strstr(cb_fault_text, "fork() inside a collection") != NULL, "the fault said: %s",
              cb_fault_text);
    cr_assert_eq(atomic_load(&cb_child_status), 7, "the child did not exit normally");
    cr_assert_eq(cb_tree_count(root), count, "the tree lost nodes");
    loam_gc_collect(h);
    cr_assert_eq(cb_tree_count(root), count);
    loam_heap_destroy(h);
}

/* Without an error callback, the fault's reaction is to abort. */
Test(fork, fork_from_a_roots_callback_aborts_by_default, .signal = SIGABRT, .timeout = 60)
{
    loam_config_t cfg = { .mode = LOAM_GC, .roots = cb_roots_that_fork };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    loam_gc_collect(h);
}

/* ---- the child drops the parent's other threads ------------------------------------- */

/* In the child only the forking thread exists. The parent's other threads'
 * records must go with them: a collection in the child must neither wait
 * for them (one running outside any safepoint never stops), nor scan their
 * stacks (still mapped in the child, frozen, they would keep what they
 * held alive for ever), nor keep the objects of a finalizer batch one of
 * them was running. */
static loam_heap_t *dead_heap;
static atomic_int dead_ready, dead_release;
static loam_weak_t *dead_weak[2];       /* to what each thread keeps only on its stack */

/* Thread 0 waits in a blocking bracket (stopped: its stack is scanned);
 * thread 1 spins running, at no safepoint. Each keeps a block only in a
 * local, and hands out nothing but a weak reference to it (a weak
 * reference's record is not in the heap, so nothing scanned sees the
 * block through it). */
static void *dead_holder(void *arg)
{
    int which = (int)(intptr_t)arg;
    loam_thread_attach(dead_heap);
    void *volatile keep = loam_gc_alloc(dead_heap, 4096, LOAM_ATOMIC);
    if (!keep)
        return (void *)1;
    memset(keep, 0x77, 4096);
    dead_weak[which] = loam_weak_new(dead_heap, keep);
    if (which == 0)
        loam_enter_blocking(dead_heap);
    atomic_fetch_add(&dead_ready, 1);
    while (!atomic_load(&dead_release))
        sched_yield();
    if (which == 0)
        loam_leave_blocking(dead_heap);
    bool intact = ((unsigned char *)keep)[4095] == 0x77;
    loam_thread_detach(dead_heap);
    return intact ? NULL : (void *)2;
}

Test(fork, the_child_forgets_the_stacks_of_threads_it_does_not_have, .timeout = 120)
{
    loam_config_t cfg = { .mode = LOAM_GC };        /* stacks scanned */
    dead_heap = loam_heap_new(&cfg);
    cr_assert_not_null(dead_heap);
    atomic_store(&dead_ready, 0);
    atomic_store(&dead_release, 0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, dead_holder, (void *)(intptr_t)i), 0);
    while (atomic_load(&dead_ready) < 2)
        sched_yield();
    /* (No collection in the parent now: it would wait for the spinning
     * thread for ever. In the child that thread does not exist.) */
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        alarm(CHILD_ALARM);          /* a collection waiting for the spinning thread: killed */
        loam_gc_collect(dead_heap);
        if (loam_weak_get(dead_weak[0]))
            _exit(2);                /* kept by the blocked thread's stale stack */
        if (loam_weak_get(dead_weak[1]))
            _exit(3);                /* kept by the spinning thread's stale stack */
        for (int i = 0; i < 20000; i++)             /* collections by allocation too */
            if (!loam_gc_alloc(dead_heap, 256, LOAM_ATOMIC))
                _exit(4);
        _exit(0);
    }
    char buf[160];
    const char *err = reap(pid, buf, sizeof buf);
    atomic_store(&dead_release, 1);
    for (int i = 0; i < 2; i++) {
        void *ret = (void *)1;
        pthread_join(th[i], &ret);
        cr_expect_null(ret, "thread %d lost its block", i);
    }
    cr_expect_null(err, "%s (2: a dead blocked thread's stack kept its block in the child; "
                   "3: a dead running one's; SIGALRM: a collection waited for a dead thread)",
                   err ? err : "");
    /* In the parent both blocks were alive while their threads held them;
     * now they are gone. */
    loam_gc_collect(dead_heap);
    for (int i = 0; i < 2; i++)
        loam_weak_free(dead_weak[i]);
    loam_heap_destroy(dead_heap);
}

/* A finalizer batch that another thread was running when the process
 * forked: in the child, that thread's finalizer will never return. The
 * entry it was running is dropped (its object is ordinary garbage in the
 * child, and its finalizer is not run again: it ran partly already), and
 * the entries it had not reached go back to the ready list, to run at the
 * child's next collection (the parent's thread runs its own copies). Before
 * the child forgot the batch, its objects stayed roots there for ever and
 * the entries it had not reached never ran. */
static atomic_int fin_entered, fin_release, fin_a_runs, fin_b_runs;

static void fin_a_blocks(void *obj, void *data)
{
    (void)obj, (void)data;
    atomic_fetch_add(&fin_a_runs, 1);
    atomic_store(&fin_entered, 1);
    while (!atomic_load(&fin_release))
        sched_yield();
}

static void fin_b_counts(void *obj, void *data)
{
    (void)obj, (void)data;
    atomic_fetch_add(&fin_b_runs, 1);
}

static void *collect_and_finalize(void *arg)
{
    loam_gc_collect(arg);            /* finalizes a, which blocks, then b */
    return NULL;
}

Test(fork, the_child_drops_a_finalizer_batch_of_a_thread_it_does_not_have, .timeout = 120)
{
    /* No stack scanning: what this thread's stack holds keeps nothing. */
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    void *a = loam_gc_alloc(h, 64, LOAM_ATOMIC), *b = loam_gc_alloc(h, 64, LOAM_ATOMIC);
    cr_assert(a && b);
    cr_assert_eq(loam_finalizer_set(h, a, fin_a_blocks, NULL), 0);
    cr_assert_eq(loam_finalizer_set(h, b, fin_b_counts, NULL), 0);
    a = b = NULL;
    loam_thread_detach(h);           /* this thread's allocations attached it */
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, collect_and_finalize, h), 0);
    while (!atomic_load(&fin_entered))
        sched_yield();
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        signal(SIGALRM, SIG_DFL);
        alarm(CHILD_ALARM);
        loam_gc_collect(h);          /* runs b's finalizer; a is garbage */
        if (atomic_load(&fin_a_runs) != 1)
            _exit(2);                /* a's finalizer ran again in the child */
        if (atomic_load(&fin_b_runs) != 1)
            _exit(3);                /* b's finalizer, not reached by the dead thread, never ran */
        loam_gc_collect(h);          /* b, finalized, is garbage now */
        loam_stats_t st;
        loam_heap_stats(h, &st);
        if (st.live_blocks != 0)
            _exit(4);                /* the batch kept its objects alive */
        _exit(0);
    }
    char buf[160];
    const char *err = reap(pid, buf, sizeof buf);
    atomic_store(&fin_release, 1);
    pthread_join(th, NULL);
    cr_expect_null(err, "%s (2: the running finalizer ran again in the child; 3: the finalizer the "
                   "dead thread had not reached did not run in the child; 4: blocks still live)",
                   err ? err : "");
    /* The parent's thread ran both, once each. */
    cr_expect_eq(atomic_load(&fin_a_runs), 1);
    cr_expect_eq(atomic_load(&fin_b_runs), 1);
    loam_gc_collect(h);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_expect_eq(st.live_blocks, 0, "the parent's blocks: %zu still live", st.live_blocks);
    loam_heap_destroy(h);
}
