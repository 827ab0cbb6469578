/* What bad input gets (DESIGN.md): a one-line message on stderr naming the
 * fault and the address, then abort (default), or a call to the heap's error
 * callback; impossible sizes give NULL with errno; a heap `limit` gives NULL
 * with ENOMEM after calling the oom callback.
 *
 * A pointer that belongs to no heap (stack, static, libc) has no error
 * callback to go to: its faults take the default heap's reaction (abort), so
 * those cases are only tested for SIGABRT. */
#define _GNU_SOURCE
#include "harness.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loam.h"

/* Writes through dangling pointers that a test makes on purpose (to see
 * loam catch them) are not memcheck's to report in a LOAM_VALGRIND build:
 * its first error ends the test (tests/CMakeLists.txt). */
#ifdef LOAM_MEMCHECK
#include <valgrind/valgrind.h>
#define ON_PURPOSE(stmt)                                                                           \
    do {                                                                                           \
        VALGRIND_DISABLE_ERROR_REPORTING;                                                          \
        stmt;                                                                                      \
        VALGRIND_ENABLE_ERROR_REPORTING;                                                           \
    } while (0)
#else
#define ON_PURPOSE(stmt) do { stmt; } while (0)
#endif

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static char static_buffer[256] __attribute__((aligned(64)));

/* A block start in a slab of h that was never handed out: the block two
 * positions after the higher of two fresh 256-byte blocks. */
static void *never_allocated_block(loam_heap_t *h)
{
    unsigned char *a = loam_malloc(h, 256), *b = loam_malloc(h, 256);
    cr_assert_not_null(a);
    cr_assert_not_null(b);
    size_t sz = loam_usable_size(a);
    unsigned char *hi = a > b ? a : b;
    return hi + 2 * sz;
}

/* ---- default reaction: abort ----------------------------------------------- */

Test(abort, double_free_small, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 64);
    loam_free(p);
    loam_free(p);
}

Test(abort, double_free_small_default_heap, .signal = SIGABRT)
{
    void *p = loam_malloc(loam_heap_default(), 48);
    loam_free(p);
    loam_free(p);
}

Test(abort, double_free_after_other_frees, .signal = SIGABRT)
{
    /* The block is not at the top of the thread cache any more. */
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 64), *q[10];
    for (int i = 0; i < 10; i++)
        q[i] = loam_malloc(h, 64);
    loam_free(p);
    for (int i = 0; i < 10; i++)
        loam_free(q[i]);
    loam_free(p);
}

Test(abort, double_free_after_flush_to_arena, .signal = SIGABRT)
{
    /* enough frees after it that the block has left the thread cache */
    loam_heap_t *h = loam_heap_new(NULL);
    enum { N = 3000 };
    static void *q[N];
    void *p = loam_malloc(h, 64);
    for (int i = 0; i < N; i++)
        q[i] = loam_malloc(h, 64);
    loam_free(p);
    for (int i = 0; i < N; i++)
        loam_free(q[i]);
    loam_free(p);
}

/* Freed by another thread, the block went back to the allocating arena's
 * transfer cache as part of a batch (the oldest ones freed go first). */
enum { XF_N = 512 };
static void *xf_q[XF_N];
static void *free_xf_blocks(void *unused)
{
    (void)unused;
    for (int i = 0; i < XF_N; i++)
        loam_free(xf_q[i]);
    return NULL;
}

Test(abort, double_free_of_a_block_in_the_transfer_cache, .signal = SIGABRT)
{
    loam_option_set("track_requested", 0);      /* thread caches on */
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < XF_N; i++)
        xf_q[i] = loam_malloc(h, 64);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, free_xf_blocks, NULL), 0);
    pthread_join(t, NULL);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_gt(st.transfer_bytes, 0, "nothing reached the transfer cache: nothing is tested");
    loam_free(xf_q[0]);
}

/* A heap with no thread caches (frees go straight to the slab), one 64-byte
 * block kept out so the slab never empties, and *p a second one. */
static loam_heap_t *slab_path_heap(void **p)
{
    loam_option_set("tcache_max", 0);
    loam_heap_t *h = loam_heap_new(NULL);
    void *keep = loam_malloc(h, 64);
    (void)keep;
    *p = loam_malloc(h, 64);
    return h;
}

Test(abort, double_free_without_thread_cache, .signal = SIGABRT)
{
    void *p;
    slab_path_heap(&p);
    loam_free(p);
    loam_free(p);
}

/* A write through a dangling pointer over a block in its slab's free set
 * (no thread cache: the free went straight to the slab) wipes its free key:
 * the refill that takes it stops the process, naming heap corruption,
 * rather than hand out a block whose double free could no longer be told. */
Test(abort, written_free_block_is_caught, .signal = SIGABRT)
{
    void *p;
    loam_heap_t *h = slab_path_heap(&p);
    void *q = loam_malloc(h, 64);
    loam_free(q);
    loam_free(p);
    ON_PURPOSE(memset(p, 0x41, 64));
    void *a = loam_malloc(h, 64);         /* p, the lowest free block: its key is checked */
    cr_log_error("not caught: malloc returned %p (the written block %p)", a, p);
}

/* A double free whose block had its free key overwritten in between (a
 * write through the same dangling pointer) gets past the key; its slab then
 * finds the block in its free set already and stops the process, rather
 * than let it out twice. */
Test(abort, double_free_of_a_written_free_block, .signal = SIGABRT)
{
    void *p;
    slab_path_heap(&p);
    loam_free(p);
    ON_PURPOSE(memset(p, 0, 64));
    ON_PURPOSE(loam_free(p));            /* memcheck sees the double free too */
    cr_log_error("not caught: the second free of %p returned", p);
}

Test(abort, double_free_after_trim, .signal = SIGABRT)
{
    /* the block's slab was emptied and handed back: the address is no block now */
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 3000);
    loam_free(p);
    (void)loam_heap_trim(h);
    loam_free(p);
}

Test(abort, double_free_large, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, MiB);
    loam_free(p);
    loam_free(p);
}

Test(abort, interior_pointer_small, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, 64);
    loam_free(p + 16);
}

Test(abort, interior_pointer_small_unaligned, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, 100);
    loam_free(p + 3);
}

Test(abort, interior_pointer_large, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, MiB);
    loam_free(p + 4096);
}

Test(abort, interior_pointer_large_16, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, 300 * KiB);
    loam_free(p + 16);
}

Test(abort, free_stack_address, .signal = SIGABRT)
{
    char local[64] __attribute__((aligned(16)));
    loam_heap_t *h = loam_heap_new(NULL);
    void *keep = loam_malloc(h, 10);   /* loam is initialised and has a heap */
    (void)keep;
    loam_free(local);
}

Test(abort, free_static_address, .signal = SIGABRT)
{
    loam_free(static_buffer);
}

Test(abort, free_libc_malloc_pointer, .signal = SIGABRT)
{
    void *p = malloc(64);   /* tests link loam_static: plain malloc is glibc's */
    void *keep = loam_malloc(loam_heap_default(), 64);
    (void)keep;
    loam_free(p);
}

Test(abort, free_libc_malloc_large_pointer, .signal = SIGABRT)
{
    void *p = malloc(4 * MiB);   /* glibc mmaps this one */
    loam_free(p);
}

Test(abort, free_never_allocated_slab_block, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    loam_free(never_allocated_block(h));
}

Test(abort, free_block_of_destroyed_heap, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 64);
    void *other = loam_malloc(loam_heap_default(), 64);   /* loam still has live memory */
    (void)other;
    loam_heap_destroy(h);
    loam_free(p);
}

Test(abort, realloc_of_freed_block, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 64);
    loam_free(p);
    (void)loam_realloc(h, p, 200);
}

Test(abort, realloc_of_foreign_pointer, .signal = SIGABRT)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = malloc(64);
    (void)loam_realloc(h, p, 200);
}

/* ---- the message: one line naming the fault and the address ----------------- */

typedef void (*fault_fn)(void);

/* In the child: the write end of a pipe on which a fault function reports
 * the address it is about to misuse. */
static int g_addr_fd = -1;

static void report_addr(void *a)
{
    if (g_addr_fd >= 0)
        (void)!write(g_addr_fd, &a, sizeof a);
}

static int contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return 1;
    return 0;
}

/* Does the text mention the address in hex (with or without leading zeros)? */
static int mentions_address(const char *text, void *addr)
{
    char hex[32];
    snprintf(hex, sizeof hex, "%lx", (unsigned long)(uintptr_t)addr);
    return contains_ci(text, hex);
}

static int count_lines(const char *text)
{
    int n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static void fault_double_free(void)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 64);
    report_addr(p);
    loam_free(p);
    loam_free(p);
}

static void fault_double_free_named(void)
{
    loam_config_t cfg = { .name = "interpreter" };
    loam_heap_t *h = loam_heap_new(&cfg);
    void *p = loam_malloc(h, 64);
    report_addr(p);
    loam_free(p);
    loam_free(p);
}

static void fault_double_free_large(void)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, MiB);
    report_addr(p);
    loam_free(p);
    loam_free(p);       /* its mapping is gone: still named a double free */
}

static void fault_interior(void)
{
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, 64);
    report_addr(p + 16);
    loam_free(p + 16);
}

static void fault_foreign(void)
{
    void *p = malloc(64);
    report_addr(p);
    loam_free(p);
}

static void fault_free_after_destroy(void)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 64);
    report_addr(p);
    loam_heap_destroy(h);
    loam_free(p);
}

static void fault_free_after_destroy_large(void)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, MiB);
    report_addr(p);
    loam_heap_destroy(h);
    loam_free(p);
}

/* A double free after trim gave the block's segment back to the OS. */
static void fault_double_free_after_trim(void)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 5000);
    report_addr(p);
    loam_free(p);
    loam_heap_trim(h);
    loam_free(p);
}

static void check_message(fault_fn fn, const char *const *words, const char *what)
{
    char buf[4096];
    void *addr = NULL;
    int ap[2], err[2];
    cr_assert_eq(pipe(ap), 0);
    cr_assert_eq(pipe(err), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(err[0]);
        close(ap[0]);
        dup2(err[1], 2);
        g_addr_fd = ap[1];
        fn();
        _exit(0);
    }
    close(err[1]);
    close(ap[1]);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < sizeof buf && (r = read(err[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = 0;
    if (read(ap[0], &addr, sizeof addr) != (ssize_t)sizeof addr)
        addr = NULL;
    close(err[0]);
    close(ap[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);

    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
              "%s: expected the process to abort (status %#x), stderr: %s", what, status, buf);
    cr_assert_not_null(addr);
    cr_assert_eq(count_lines(buf), 1, "%s: expected one line on stderr, got: \"%s\"", what, buf);
    cr_assert(mentions_address(buf, addr), "%s: message does not name the address %p: \"%s\"",
              what, addr, buf);
    int found = 0;
    for (int i = 0; words[i]; i++)
        found |= contains_ci(buf, words[i]);
    cr_assert(found, "%s: message does not name the fault (expected e.g. \"%s\"): \"%s\"", what,
              words[0], buf);
}

Test(message, double_free_names_fault_and_address)
{
    static const char *const words[] = { "double free", "double-free", NULL };
    check_message(fault_double_free, words, "double free");
}

/* A named heap's message names it: with several heaps, which one. */
Test(message, names_the_heap_by_its_name)
{
    static const char *const words[] = { "heap 0x", NULL };
    check_message(fault_double_free_named, words, "double free in a named heap");
    static const char *const name[] = { "\"interpreter\")", NULL };
    check_message(fault_double_free_named, name, "double free in a named heap");
}

Test(message, double_free_of_large_block_names_fault_and_address)
{
    static const char *const words[] = { "double free", "double-free", NULL };
    check_message(fault_double_free_large, words, "double free of a large block");
}

Test(message, interior_pointer_names_fault_and_address)
{
    static const char *const words[] = { "interior", "not a block start", "not the start", NULL };
    check_message(fault_interior, words, "interior pointer");
}

Test(message, foreign_pointer_names_fault_and_address)
{
    static const char *const words[] = { "foreign", "not allocated by loam", "not a loam", "unknown pointer", NULL };
    check_message(fault_foreign, words, "foreign pointer");
}

/* A block of a destroyed heap, or one whose memory went back to the OS, is
 * no foreign pointer: the message said "not allocated by loam", sending the
 * reader to look for another allocator. */
static void check_given_back_message(fault_fn fn, const char *what)
{
    static const char *const words[] = { "gave back", "given back", NULL };
    check_message(fn, words, what);
}

Test(message, free_after_heap_destroy_is_not_called_foreign)
{
    check_given_back_message(fault_free_after_destroy, "free of a block of a destroyed heap");
    check_given_back_message(fault_free_after_destroy_large, "free of a large block of a destroyed heap");
    check_given_back_message(fault_double_free_after_trim, "double free after trim released the segment");
}

/* ---- error callback: reported, no abort, heap stays usable ------------------- */

typedef struct {
    int calls;
    loam_heap_t *heap;
    void *addr;
    void *user;
    char msg[512];
    int msg_null;
} err_record_t;

static void record_error(loam_heap_t *h, const char *message, void *addr, void *user)
{
    err_record_t *r = user;
    r->calls++;
    r->heap = h;
    r->addr = addr;
    r->user = user;
    r->msg_null = message == NULL;
    if (message)
        snprintf(r->msg, sizeof r->msg, "%s", message);
}

static loam_heap_t *heap_with_callback_mode(err_record_t *rec, loam_mode_t mode, unsigned flags)
{
    loam_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    memset(rec, 0, sizeof *rec);
    cfg.mode = mode;
    cfg.flags = flags;
    cfg.error = record_error;
    cfg.user = rec;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

static loam_heap_t *heap_with_callback(err_record_t *rec)
{
    return heap_with_callback_mode(rec, LOAM_MANUAL, 0);
}

/* The callback got the fault: once, with this heap, address and user pointer,
 * and a message naming it (one of the words, case-insensitive). */
static void assert_reported(const err_record_t *rec, loam_heap_t *h, void *addr, const char *what,
                            const char *const *words)
{
    cr_assert_eq(rec->calls, 1, "%s: error callback called %d times", what, rec->calls);
    cr_assert_eq(rec->addr, addr, "%s: callback got address %p, expected %p", what, rec->addr, addr);
    cr_assert_eq(rec->heap, h, "%s: callback got heap %p, expected %p", what, (void *)rec->heap, (void *)h);
    cr_assert_eq(rec->user, rec, "%s: callback got the wrong user pointer", what);
    cr_assert(!rec->msg_null && rec->msg[0] != 0, "%s: empty message", what);
    int found = 0;
    for (int i = 0; words[i]; i++)
        found |= contains_ci(rec->msg, words[i]);
    cr_assert(found, "%s: the message \"%s\" does not name the fault (e.g. \"%s\")", what, rec->msg,
              words[0]);
}

static const char *const W_DOUBLE[] = { "double free", "double-free", "already freed", NULL };
static const char *const W_INTERIOR[] = { "interior", "not the start of a block", "not a block start", NULL };
static const char *const W_UNALLOCATED[] = { "never allocated", "no block", "not allocated", "double free", NULL };

/* After a reported fault the heap must still allocate distinct, intact blocks. */
static void assert_heap_usable(loam_heap_t *h, size_t expect_live_blocks)
{
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, expect_live_blocks, "live_blocks %zu after the fault, expected %zu",
                 st.live_blocks, expect_live_blocks);
    enum { N = 64 };
    unsigned char *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = loam_malloc(h, 64);
        cr_assert_not_null(p[i]);
        memset(p[i], i, 64);
        for (int j = 0; j < i; j++)
            cr_assert_neq(p[i], p[j], "block %p handed out twice after a reported fault", (void *)p[i]);
    }
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 64; k++)
            cr_assert_eq(p[i][k], (unsigned char)i);
        loam_free(p[i]);
    }
    void *big = loam_malloc(h, 2 * MiB);
    cr_assert_not_null(big);
    loam_free(big);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, expect_live_blocks);
}

Test(callback, double_free_small)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *p = loam_malloc(h, 64);
    loam_free(p);
    cr_assert_eq(rec.calls, 0, "a valid free was reported as an error: %s", rec.msg);
    loam_free(p);
    assert_reported(&rec, h, p, "double free", W_DOUBLE);
    assert_heap_usable(h, 0);
    loam_heap_destroy(h);
}

/* A collected heap whose only roots are the test's: a block the collector
 * found unreachable is garbage until its lazy sweep reaches it. Freeing it
 * then (a use after collection: the caller kept a pointer the collector
 * cannot see) is reported, not obeyed, or the sweep would hand it out while
 * a thread cache also holds it. */
Test(callback, free_of_a_block_the_collector_found_unreachable)
{
    err_record_t rec;
    /* only the test's roots: no stack scanning */
    loam_heap_t *h = heap_with_callback_mode(&rec, LOAM_GC, LOAM_NO_STACK_SCAN);
    static void *kept;
    loam_root_add(h, &kept);
    kept = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    void *lost = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);   /* in no root */
    cr_assert_not_null(kept);
    cr_assert_not_null(lost);
    loam_gc_collect(h);
    loam_free(lost);
    assert_reported(&rec, h, lost, "free after collection", (const char *const[]){ "unreachable", "collect", NULL });
    /* The heap goes on: the garbage block is reclaimed once, the live one stays. */
    unsigned char *p[200];
    for (int i = 0; i < 200; i++) {
        p[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
        cr_assert_not_null(p[i]);
        cr_assert_neq(p[i], kept, "a live block was handed out");
        for (int j = 0; j < i; j++)
            cr_assert_neq(p[i], p[j], "block %p handed out twice", (void *)p[i]);
    }
    /* A live block is freed normally, and so is a block freed before the sweep
     * reached its slab but marked by the collection. */
    loam_free(kept);
    cr_assert_eq(rec.calls, 1, "a valid free was reported: %s", rec.msg);
    kept = NULL;
    loam_heap_destroy(h);
}

/* A collected heap's thread hands out its blocks from a bump range (a run
 * of free blocks next to each other, which it took whole): the blocks it has
 * not reached yet carry no free key. A free of one of them, never handed
 * out, is reported, not obeyed, or the range would hand it out again while
 * the cache holds it too. */
Test(callback, free_of_a_block_ahead_in_a_threads_allocation_range)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback_mode(&rec, LOAM_GC, LOAM_NO_STACK_SCAN);
    static void *kept[64];
    for (int i = 0; i < 64; i++)
        loam_root_add(h, &kept[i]);
    char *first = kept[0] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);    /* a fresh slab's range */
    cr_assert_not_null(first);
    char *ahead = first + 64;
    loam_free(ahead);
    assert_reported(&rec, h, ahead, "free of a block not handed out yet", W_UNALLOCATED);
    /* The range goes on: the block is handed out once, next. */
    for (int i = 1; i < 64; i++) {
        kept[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
        cr_assert_not_null(kept[i]);
        for (int j = 0; j < i; j++)
            cr_assert_neq(kept[i], kept[j], "block %p handed out twice", kept[i]);
    }
    cr_assert_eq(kept[1], ahead, "the block freed by mistake was not the range's next");
    loam_free(kept[1]);                 /* handed out now: an ordinary free */
    cr_assert_eq(rec.calls, 1, "a valid free was reported: %s", rec.msg);
    kept[1] = NULL;
    loam_heap_destroy(h);
}

/* The same for garbage: after a collection the range runs over dead blocks
 * the sweep found, and a free of one the range has not reached yet is a use
 * after collection. */
Test(callback, free_of_garbage_ahead_in_a_threads_allocation_range)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback_mode(&rec, LOAM_GC, LOAM_NO_STACK_SCAN);
    static void *kept;
    loam_root_add(h, &kept);
    char *b[8];
    for (int i = 0; i < 8; i++)
        cr_assert_not_null(b[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE));
    kept = b[0];
    loam_gc_collect(h);                 /* b[1..7] are garbage, their slab pending */
    char *p = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    cr_assert_eq(p, b[1], "the range did not start at the first dead block");
    loam_free(b[4]);
    assert_reported(&rec, h, b[4], "free of garbage not handed out yet",
                    (const char *const[]){ "not allocated", "reclaimed by the collector", NULL });
    for (int i = 2; i < 7; i++)
        cr_assert_eq(loam_gc_alloc(h, 64, LOAM_CONSERVATIVE), b[i], "block %d of the range", i);
    /* The range's last block (its anchor) comes when the rest of the cache
     * is used up: once, as every other. */
    enum { MORE = 600 };
    static char *more[MORE];
    int anchor_seen = 0;
    for (int i = 0; i < MORE; i++) {
        cr_assert_not_null(more[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE));
        anchor_seen += more[i] == b[7];
        for (int j = 0; j < i; j++)
            cr_assert_neq(more[i], more[j], "block %p handed out twice", (void *)more[i]);
        for (int j = 0; j < 7; j++)
            cr_assert_neq(more[i], b[j], "block %d of before handed out again", j);
    }
    cr_assert_eq(anchor_seen, 1, "the range's last block was handed out %d times", anchor_seen);
    cr_assert_eq(rec.calls, 1, "a valid allocation was reported: %s", rec.msg);
    kept = NULL;
    loam_heap_destroy(h);
}

/* The same when none of a slab's blocks was reachable: the collection
 * releases the slab whole, and the block lies in no slab at all. */
Test(callback, free_of_a_block_whose_slab_the_collector_released)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback_mode(&rec, LOAM_GC, LOAM_NO_STACK_SCAN);
    enum { N = 4096 };                  /* 64-byte blocks: four slabs, none reachable */
    static void *lost[N];
    for (int i = 0; i < N; i++)
        cr_assert_not_null(lost[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE));
    loam_gc_collect(h);
    loam_free(lost[N / 2]);
    assert_reported(&rec, h, lost[N / 2], "free of a block in a released slab",
                    (const char *const[]){ "use after collection", NULL });
    assert_heap_usable(h, 0);
    loam_heap_destroy(h);
}

Test(callback, free_of_a_live_block_between_collection_and_sweep)
{
    err_record_t rec;
    /* only the test's roots: no stack scanning */
    loam_heap_t *h = heap_with_callback_mode(&rec, LOAM_GC, LOAM_NO_STACK_SCAN);
    static void *kept[8];
    for (int i = 0; i < 8; i++) {
        loam_root_add(h, &kept[i]);
        kept[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE);
    }
    loam_gc_collect(h);                 /* their slab is pending now: marked, unswept */
    for (int i = 0; i < 8; i++)
        loam_free(kept[i]);
    cr_assert_eq(rec.calls, 0, "a free of a live block was reported: %s", rec.msg);
    loam_free(kept[3]);
    assert_reported(&rec, h, kept[3], "double free", W_DOUBLE);
    loam_heap_destroy(h);
}

Test(callback, double_free_large_kept_for_reuse)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *p = loam_malloc(h, MiB);
    loam_free(p);                       /* its mapping is kept in the heap's cache */
    cr_assert_eq(rec.calls, 0, "a valid free was reported as an error: %s", rec.msg);
    loam_free(p);
    assert_reported(&rec, h, p, "double free of a large block", W_DOUBLE);
    assert_heap_usable(h, 0);
    loam_heap_destroy(h);
}

Test(callback, double_free_small_repeated)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *keep = loam_malloc(h, 32);
    for (int i = 0; i < 100; i++) {
        void *p = loam_malloc(h, 32);
        loam_free(p);
        loam_free(p);
        cr_assert_eq(rec.calls, i + 1);
        cr_assert_eq(rec.addr, p);
    }
    assert_heap_usable(h, 1);
    loam_free(keep);
    loam_heap_destroy(h);
}

Test(callback, interior_pointer_small)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    unsigned char *p = loam_malloc(h, 64);
    memset(p, 7, 64);
    loam_free(p + 16);
    assert_reported(&rec, h, p + 16, "interior free (small)", W_INTERIOR);
    /* the real block is untouched and still live */
    for (int i = 0; i < 64; i++)
        cr_assert_eq(p[i], 7);
    assert_heap_usable(h, 1);
    loam_free(p);
    cr_assert_eq(rec.calls, 1);
    assert_heap_usable(h, 0);
    loam_heap_destroy(h);
}

/* Blocks of 24 bytes (LOAM_ALIGN_8) start at every 8-byte boundary that
 * is not a 16-byte one, too: an address 8 or 16 bytes into one is interior,
 * whichever granule it falls in, and a second free is a double free. */
Test(callback, faults_in_24_byte_blocks)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback_mode(&rec, LOAM_GC, LOAM_ALIGN_8 | LOAM_NO_STACK_SCAN);
    cr_assert_eq(loam_heap_set_gc_pacing(h, 0, 1024 * MiB), 0);      /* blocks held in locals */
    unsigned char *a = loam_gc_alloc(h, 24, LOAM_CONSERVATIVE), *b = loam_gc_alloc(h, 24, LOAM_CONSERVATIVE);
    cr_assert(a && b);
    cr_assert_eq(loam_usable_size(a), 24);
    cr_assert_eq(b - a, 24, "two 24-byte blocks in a row");
    memset(a, 5, 24);
    memset(b, 6, 24);
    unsigned char *odd = (uintptr_t)a % 16 ? a : b;      /* the one starting mid-granule */
    loam_free(odd + 8);
    assert_reported(&rec, h, odd + 8, "interior free of a 24-byte block", W_INTERIOR);
    memset(&rec, 0, sizeof rec);
    loam_free(a + 16);
    assert_reported(&rec, h, a + 16, "interior free 16 bytes into a 24-byte block", W_INTERIOR);
    for (int i = 0; i < 24; i++)
        cr_assert(a[i] == 5 && b[i] == 6, "a fault changed a block");
    memset(&rec, 0, sizeof rec);
    loam_free(b);
    cr_assert_eq(rec.calls, 0);
    loam_free(b);
    assert_reported(&rec, h, b, "double free of a 24-byte block", W_DOUBLE);
    loam_free(a);
    loam_heap_destroy(h);
}

Test(callback, interior_pointer_large)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    unsigned char *p = loam_malloc(h, MiB);
    memset(p, 9, MiB);
    loam_free(p + 4096);
    assert_reported(&rec, h, p + 4096, "interior free (large)", W_INTERIOR);
    for (size_t i = 0; i < MiB; i += 511)
        cr_assert_eq(p[i], 9);
    assert_heap_usable(h, 1);
    loam_free(p);
    cr_assert_eq(rec.calls, 1);
    assert_heap_usable(h, 0);
    loam_heap_destroy(h);
}

Test(callback, never_allocated_slab_block)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *q = never_allocated_block(h);   /* leaves two live blocks */
    loam_free(q);
    assert_reported(&rec, h, q, "free of a never-allocated block", W_UNALLOCATED);
    assert_heap_usable(h, 2);
    loam_heap_destroy(h);
}

Test(callback, realloc_of_interior_pointer)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    unsigned char *p = loam_malloc(h, 128);
    memset(p, 5, 128);
    void *q = loam_realloc(h, p + 32, 1000);
    cr_assert_null(q, "realloc of an interior pointer returned %p", q);
    assert_reported(&rec, h, p + 32, "realloc of an interior pointer", W_INTERIOR);
    for (int i = 0; i < 128; i++)
        cr_assert_eq(p[i], 5);
    assert_heap_usable(h, 1);
    loam_free(p);
    loam_heap_destroy(h);
}

Test(callback, usable_size_of_a_freed_block)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *keep = loam_malloc(h, 64);
    void *p = loam_malloc(h, 64);
    cr_assert_geq(loam_usable_size(p), 64);
    loam_free(p);
    cr_assert_eq(rec.calls, 0, "a valid free was reported as an error: %s", rec.msg);
    cr_assert_eq(loam_usable_size(p), 0, "the size of a freed block");
    static const char *const words[] = { "freed", NULL };
    assert_reported(&rec, h, p, "usable_size of a freed block", words);
    assert_heap_usable(h, 1);
    loam_free(keep);
    loam_heap_destroy(h);
}

Test(callback, realloc_of_freed_block)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *keep = loam_malloc(h, 64);
    void *p = loam_malloc(h, 64);
    loam_free(p);
    void *q = loam_realloc(h, p, 1000);
    cr_assert_null(q, "realloc of a freed block returned %p", q);
    static const char *const words[] = { "realloc of a free block", NULL };
    assert_reported(&rec, h, p, "realloc of a freed block", words);
    assert_heap_usable(h, 1);
    loam_free(keep);
    loam_heap_destroy(h);
}

Test(callback, double_free_after_flush_to_arena)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    enum { N = 3000 };
    static void *q[N];
    void *keep = loam_malloc(h, 64);
    void *p = loam_malloc(h, 64);
    for (int i = 0; i < N; i++)
        q[i] = loam_malloc(h, 64);
    loam_free(p);
    for (int i = 0; i < N; i++)
        loam_free(q[i]);
    loam_free(p);
    assert_reported(&rec, h, p, "double free of a block flushed to its arena", W_DOUBLE);
    assert_heap_usable(h, 1);
    loam_free(keep);
    loam_heap_destroy(h);
}

/* The same with nothing else in the slab: the frees empty it, and it goes
 * back to its arena's free runs. The second free finds no block there, and
 * must still say it may be a double free (it said "never allocated"). */
Test(callback, double_free_after_its_slab_was_given_back)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    enum { N = 3000 };
    static void *q[N];
    for (int i = 0; i < N; i++)
        q[i] = loam_malloc(h, 64);
    for (int i = 0; i < N; i++)
        loam_free(q[i]);
    loam_free(q[5]);
    assert_reported(&rec, h, q[5], "double free of a block whose slab went back", W_DOUBLE);
    assert_heap_usable(h, 0);
    loam_heap_destroy(h);
}

/* A freed large block has no mapping any more, so its heap may be unknown: the
 * second free may either reach this heap's callback or take the default
 * reaction (abort). What it must not do is pass silently. */
static void large_double_free_child(void)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *p = loam_malloc(h, MiB);
    loam_free(p);
    loam_free(p);
    if (rec.calls != 1 || rec.addr != p)
        _exit(3);   /* silently ignored (or reported wrongly) */
    void *q = loam_malloc(h, MiB);
    if (!q)
        _exit(4);
    loam_free(q);
    _exit(0);
}

Test(callback, double_free_large_is_reported_or_aborts)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 2);
        large_double_free_child();
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    int ok = (WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) ||
             (WIFEXITED(status) && WEXITSTATUS(status) == 0);
    cr_assert(ok, "double free of a large block: neither reported to the callback nor aborted "
              "(status %#x: exit %d, signal %d)", status,
              WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : -1);
}

/* Foreign pointers have no heap: even with a callback configured on some heap,
 * they take the default reaction. */
Test(callback, foreign_free_still_aborts, .signal = SIGABRT)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *keep = loam_malloc(h, 64);
    (void)keep;
    int local;
    loam_free(&local);
}

/* Free N blocks of heap h, write an address into each one's first word (where
 * a free list would keep its link), then malloc N blocks: none may be that
 * address or another heap's, none may come twice, and nothing is reported. */
static void written_free_blocks_cannot_steer_malloc(loam_heap_t *h, const err_record_t *rec)
{
    enum { N = 8 };
    void *p[N], *again[N];
    for (int i = 0; i < N; i++)
        p[i] = loam_malloc(h, 64);
    for (int i = 0; i < N; i++)
        loam_free(p[i]);
    for (int i = 0; i < N; i++)
        ON_PURPOSE(memcpy(p[i], &(void *){ static_buffer }, sizeof(void *)));
    for (int i = 0; i < N; i++) {
        again[i] = loam_malloc(h, 64);
        cr_assert_not_null(again[i]);
        cr_assert_neq(again[i], (void *)static_buffer, "malloc handed out the address written into a free block");
        cr_assert_eq(loam_heap_of(again[i]), h, "malloc %d returned %p, not a block of the heap", i, again[i]);
        for (int j = 0; j < i; j++)
            cr_assert_neq(again[i], again[j], "block %p handed out twice", again[i]);
    }
    cr_assert_eq(rec->calls, 0, "a fault was reported: %s", rec->msg);
    for (int i = 0; i < N; i++)
        loam_free(again[i]);
}

/* A block in a thread cache holds no link (the cache keeps addresses in an
 * array of its own): a write through a dangling pointer into it changes no
 * later malloc, which still hands out this heap's blocks, each once. */
Test(callback, write_into_cached_block_cannot_steer_malloc)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    written_free_blocks_cannot_steer_malloc(h, &rec);
    loam_heap_destroy(h);
}

/* The same for blocks in their slab's free set (no thread cache): loam
 * keeps no pointer in a free block there either. */
Test(callback, write_into_free_block_in_its_slab_cannot_steer_malloc)
{
    loam_option_set("tcache_max", 0);
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    written_free_blocks_cannot_steer_malloc(h, &rec);
    loam_heap_destroy(h);
}

Test(callback, valid_operations_are_not_reported)
{
    err_record_t rec;
    loam_heap_t *h = heap_with_callback(&rec);
    void *p[100];
    for (int i = 0; i < 100; i++)
        p[i] = loam_malloc(h, (size_t)i * 1000);
    for (int i = 0; i < 100; i++)
        p[i] = loam_realloc(h, p[i], (size_t)i * 3000 + 1);
    for (int i = 0; i < 100; i++)
        loam_free(p[i]);
    cr_assert_eq(rec.calls, 0, "callback called for valid operations: %s", rec.msg);
    loam_heap_destroy(h);
}

/* ---- impossible sizes: NULL with errno, never a crash or a short block -------- */

#define ASSERT_FAILS(expr, err)                                                   \
    do {                                                                          \
        errno = 0;                                                                \
        void *r_ = (expr);                                                        \
        int e_ = errno;                                                           \
        cr_assert_null(r_, #expr " returned %p", r_);                             \
        cr_assert_eq(e_, (err), #expr ": errno %d (%s), expected %d (%s)", e_,     \
                     strerror(e_), (err), strerror(err));                         \
    } while (0)

Test(overflow, calloc_overflow)
{
    loam_heap_t *h = loam_heap_new(NULL);
    ASSERT_FAILS(loam_calloc(h, SIZE_MAX / 2, 4), ENOMEM);
    ASSERT_FAILS(loam_calloc(h, SIZE_MAX, SIZE_MAX), ENOMEM);
    ASSERT_FAILS(loam_calloc(h, SIZE_MAX, 2), ENOMEM);
    /* the product wraps to a small number: must not return a short block */
    ASSERT_FAILS(loam_calloc(h, ((size_t)1 << 32) + 1, (size_t)1 << 32), ENOMEM);
    ASSERT_FAILS(loam_calloc(h, (SIZE_MAX / 16) + 2, 16), ENOMEM);
    ASSERT_FAILS(loam_calloc(loam_heap_default(), SIZE_MAX / 2, 4), ENOMEM);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    loam_heap_destroy(h);
}

Test(overflow, malloc_huge)
{
    loam_heap_t *h = loam_heap_new(NULL);
    ASSERT_FAILS(loam_malloc(h, SIZE_MAX), ENOMEM);
    ASSERT_FAILS(loam_malloc(h, SIZE_MAX - 1), ENOMEM);
    ASSERT_FAILS(loam_malloc(h, SIZE_MAX - 15), ENOMEM);     /* rounding up to 16 wraps */
    ASSERT_FAILS(loam_malloc(h, SIZE_MAX - 4095), ENOMEM);   /* rounding up to a page wraps */
    ASSERT_FAILS(loam_malloc(h, (size_t)PTRDIFF_MAX), ENOMEM);
    ASSERT_FAILS(loam_malloc(h, (size_t)PTRDIFF_MAX + 1), ENOMEM);
    ASSERT_FAILS(loam_malloc(h, (size_t)1 << 50), ENOMEM);   /* beyond the address space */
    ASSERT_FAILS(loam_malloc(loam_heap_default(), SIZE_MAX), ENOMEM);
    ASSERT_FAILS(loam_realloc(h, NULL, SIZE_MAX), ENOMEM);
    void *p = loam_malloc(h, 100);   /* still works */
    cr_assert_not_null(p);
    loam_free(p);
    loam_heap_destroy(h);
}

/* Bytes of RAM plus swap (/proc/meminfo), 0 if unknown; *policy gets
 * vm.overcommit_memory (-1 if unknown). */
static size_t memory_and_swap(int *policy)
{
    *policy = -1;
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    if (f) {
        if (fscanf(f, "%d", policy) != 1)
            *policy = -1;
        fclose(f);
    }
    size_t total = 0;
    f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[128];
    while (fgets(line, sizeof line, f)) {
        unsigned long kb;
        if (sscanf(line, "MemTotal: %lu kB", &kb) == 1 || sscanf(line, "SwapTotal: %lu kB", &kb) == 1)
            total += (size_t)kb * 1024;
    }
    fclose(f);
    return total;
}

/* A block bigger than the machine's RAM and swap together, which the
 * kernel's overcommit policy refuses to glibc's malloc (ENOMEM), must be
 * refused too, never handed out to get the process OOM-killed when it is
 * touched: large mappings are accounted (no MAP_NORESERVE). Blocks are
 * never touched here. Under vm.overcommit_memory=1 the kernel grants
 * anything, and glibc's malloc succeeds as well: skipped. */
Test(overflow, sizes_beyond_ram_and_swap_fail_as_glibcs_do)
{
    int policy;
    size_t ram = memory_and_swap(&policy);
    if (policy == 1 || ram == 0 || ram > ((size_t)1 << 43))
        cr_skip_test("overcommit policy %d, %zu bytes of RAM and swap", policy, ram);
    size_t n = 2 * ram + ((size_t)1 << 30);
    loam_heap_t *h = loam_heap_new(NULL);
    ASSERT_FAILS(loam_malloc(h, n), ENOMEM);
    ASSERT_FAILS(loam_calloc(h, n / 4096, 4096), ENOMEM);
    ASSERT_FAILS(loam_aligned_alloc(h, MiB, n), ENOMEM);
    ASSERT_FAILS(loam_aligned_alloc(h, (size_t)1 << 30, n), ENOMEM);   /* a placed mapping */
    ASSERT_FAILS(loam_malloc(loam_heap_default(), n), ENOMEM);
    /* A large block grown past it: mremap is judged too; the block stays. */
    unsigned char *p = loam_malloc(h, MiB);
    cr_assert_not_null(p);
    p[0] = 1;
    p[MiB - 1] = 2;
    ASSERT_FAILS(loam_realloc(h, p, n), ENOMEM);
    cr_assert(p[0] == 1 && p[MiB - 1] == 2);
    loam_free(p);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.large_count, 0);
    loam_heap_destroy(h);
}

Test(overflow, aligned_alloc_bad_alignment)
{
    loam_heap_t *h = loam_heap_new(NULL);
    static const size_t bad[] = { 0, 3, 5, 6, 12, 24, 48, 100, 1000, 4097, (1u << 20) + 1,
                                  ((size_t)1 << 20) * 3, SIZE_MAX };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        errno = 0;
        void *p = loam_aligned_alloc(h, bad[i], 64);
        int e = errno;
        cr_assert_null(p, "aligned_alloc(%zu, 64) accepted a non-power-of-two alignment", bad[i]);
        cr_assert_eq(e, EINVAL, "aligned_alloc(%zu, 64): errno %d, expected EINVAL", bad[i], e);
    }
    loam_heap_destroy(h);
}

Test(overflow, aligned_alloc_huge)
{
    loam_heap_t *h = loam_heap_new(NULL);
    ASSERT_FAILS(loam_aligned_alloc(h, 64, SIZE_MAX), ENOMEM);
    ASSERT_FAILS(loam_aligned_alloc(h, 4096, SIZE_MAX - 100), ENOMEM);
    ASSERT_FAILS(loam_aligned_alloc(h, MiB, SIZE_MAX - MiB + 1), ENOMEM);
    ASSERT_FAILS(loam_aligned_alloc(h, 16, (size_t)PTRDIFF_MAX), ENOMEM);
    /* an absurd but power-of-two alignment: NULL, with ENOMEM or EINVAL */
    errno = 0;
    void *p = loam_aligned_alloc(h, (size_t)1 << 62, 16);
    int e = errno;
    cr_assert_null(p);
    cr_assert(e == ENOMEM || e == EINVAL, "errno %d", e);
    loam_heap_destroy(h);
}

static void realloc_huge_keeps_block(size_t n)
{
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, n);
    cr_assert_not_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 13);
    size_t us = loam_usable_size(p);
    static const size_t huge[] = { SIZE_MAX, SIZE_MAX - 15, (size_t)PTRDIFF_MAX, (size_t)1 << 50 };
    for (size_t k = 0; k < sizeof huge / sizeof *huge; k++) {
        errno = 0;
        void *q = loam_realloc(h, p, huge[k]);
        int e = errno;
        cr_assert_null(q, "realloc(%zu bytes -> %zu) returned %p", n, huge[k], q);
        cr_assert_eq(e, ENOMEM, "realloc to %zu: errno %d", huge[k], e);
        cr_assert_eq(loam_heap_of(p), h, "the old block was lost");
        cr_assert_eq(loam_usable_size(p), us);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(p[i], (unsigned char)(i * 13), "old block changed at %zu", i);
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 1);
    loam_free(p);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    loam_heap_destroy(h);
}

Test(overflow, realloc_huge_keeps_small_block) { realloc_huge_keeps_block(100); }
Test(overflow, realloc_huge_keeps_large_block) { realloc_huge_keeps_block(MiB); }

/* ---- heap limit ----------------------------------------------------------- */

typedef struct {
    int calls;
    size_t request;
    loam_heap_t *heap;
} oom_record_t;

static void record_oom(loam_heap_t *h, size_t request, void *user)
{
    oom_record_t *r = user;
    r->calls++;
    r->request = request;
    r->heap = h;
}

static loam_heap_t *limited_heap(size_t limit, oom_record_t *rec)
{
    loam_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    memset(rec, 0, sizeof *rec);
    cfg.limit = limit;
    cfg.oom = record_oom;
    cfg.user = rec;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

static size_t committed(loam_heap_t *h)
{
    loam_stats_t st;
    loam_heap_stats(h, &st);
    return st.committed_bytes;
}

/* Allocate blocks of size n until NULL; returns how many succeeded. */
static int fill_to_limit(loam_heap_t *h, size_t n, void **out, int max, size_t limit, oom_record_t *rec)
{
    int k = 0;
    for (; k < max; k++) {
        errno = 0;
        void *p = loam_malloc(h, n);
        if (!p) {
            cr_assert_eq(errno, ENOMEM, "allocation past the limit: errno %d", errno);
            cr_assert_geq(rec->calls, 1, "the oom callback was not called");
            cr_assert_eq(rec->request, n, "oom callback got request %zu, expected %zu", rec->request, n);
            cr_assert_eq(rec->heap, h);
            break;
        }
        cr_assert_eq(rec->calls, 0, "oom callback called although the allocation succeeded");
        memset(p, 1, n);
        out[k] = p;
        size_t c = committed(h);
        cr_assert_leq(c, limit, "committed_bytes %zu exceeds the limit %zu", c, limit);
    }
    cr_assert_lt(k, max, "the limit was never reached");
    return k;
}

Test(limit, small_blocks)
{
    const size_t limit = 4 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    void *p[200];
    int k = fill_to_limit(h, 64 * KiB, p, 200, limit, &rec);
    cr_assert_geq((size_t)k * 64 * KiB, limit / 2, "only %d blocks of 64 KiB fit under a 4 MiB limit", k);
    cr_assert_leq(committed(h), limit);

    /* freeing makes room again */
    loam_free(p[k - 1]);
    rec.calls = 0;
    p[k - 1] = loam_malloc(h, 64 * KiB);
    cr_assert_not_null(p[k - 1], "no room after a free");
    for (int i = 0; i < k; i++)
        loam_free(p[i]);
    rec.calls = 0;
    int k2 = fill_to_limit(h, 64 * KiB, p, 200, limit, &rec);
    cr_assert_geq(k2, k, "after freeing everything only %d of %d blocks fit again", k2, k);
    for (int i = 0; i < k2; i++)
        loam_free(p[i]);
    loam_heap_destroy(h);
}

Test(limit, tiny_blocks)
{
    const size_t limit = 4 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    static void *p[400000];
    int k = fill_to_limit(h, 48, p, 400000, limit, &rec);
    cr_assert_geq((size_t)k * 48, limit / 2, "only %d blocks of 48 bytes fit under 4 MiB", k);
    for (int i = 0; i < k; i++)
        loam_free(p[i]);
    loam_heap_destroy(h);
}

Test(limit, large_blocks)
{
    const size_t limit = 4 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    void *p[16];
    int k = fill_to_limit(h, MiB, p, 16, limit, &rec);
    cr_assert_geq(k, 2, "only %d large blocks of 1 MiB fit under 4 MiB", k);
    cr_assert_leq(k, 4);
    loam_free(p[0]);
    rec.calls = 0;
    p[0] = loam_malloc(h, MiB);
    cr_assert_not_null(p[0], "no room after freeing a large block");
    /* a realloc past the limit fails and keeps the block */
    memset(p[0], 0x3C, MiB);
    errno = 0;
    void *q = loam_realloc(h, p[0], 3 * MiB);
    cr_assert_null(q, "realloc past the limit succeeded");
    cr_assert_eq(errno, ENOMEM);
    cr_assert_geq(rec.calls, 1);
    cr_assert_eq(((unsigned char *)p[0])[MiB - 1], 0x3C);
    cr_assert_leq(committed(h), limit);
    for (int i = 0; i < k; i++)
        loam_free(p[i]);
    loam_heap_destroy(h);
}

/* A large block grows by an eighth more than asked (slack for the next
 * steps), but not past the heap's limit: where only the exact size fits,
 * the realloc still succeeds, and the limit holds. */
Test(limit, large_realloc_slack_gives_way_to_the_limit)
{
    const size_t limit = 8 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    unsigned char *p = loam_malloc(h, MiB);
    cr_assert_not_null(p);
    memset(p, 0x5D, MiB);
    /* The growth is charged beyond the block's 1 MiB: with want this, the
     * exact size leaves 128 KiB under the limit, an eighth more would not. */
    size_t want = limit - committed(h) + MiB - 128 * KiB;
    cr_assert_gt(want, MiB);
    unsigned char *q = loam_realloc(h, p, want);
    cr_assert_not_null(q, "realloc to %zu under the %zu limit failed (committed %zu)", want, limit,
                       committed(h));
    cr_assert_eq(q[MiB - 1], 0x5D);
    cr_assert_geq(loam_usable_size(q), want);
    cr_assert_leq(committed(h), limit);
    loam_free(q);
    loam_heap_destroy(h);
}

Test(limit, freed_small_memory_serves_large_blocks)
{
    /* committed memory of freed slabs must not keep large blocks out forever */
    const size_t limit = 4 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    void *p[200];
    int k = fill_to_limit(h, 64 * KiB, p, 200, limit, &rec);
    for (int i = 0; i < k; i++)
        loam_free(p[i]);
    rec.calls = 0;
    void *a = loam_malloc(h, MiB), *b = loam_malloc(h, MiB);
    cr_assert_not_null(a, "a 1 MiB block does not fit in an empty heap with a 4 MiB limit");
    cr_assert_not_null(b);
    cr_assert_leq(committed(h), limit);
    loam_free(a);
    loam_free(b);
    loam_heap_destroy(h);
}

Test(limit, big_alignments_respect_the_limit)
{
    /* an aligned block may need more address space than its size: the
     * committed memory must still stay under the limit */
    const size_t limit = 4 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    void *p[64];
    int k = 0;
    for (; k < 64; k++) {
        p[k] = loam_aligned_alloc(h, MiB, 100);
        if (!p[k])
            break;
        cr_assert_eq((uintptr_t)p[k] & (MiB - 1), 0);
        cr_assert_leq(committed(h), limit, "after %d blocks aligned to 1 MiB: committed %zu", k + 1,
                      committed(h));
    }
    cr_assert_lt(k, 64, "64 blocks under a 4 MiB limit");
    cr_assert_geq(k, 1);
    for (int i = 0; i < k; i++)
        loam_free(p[i]);
    loam_heap_destroy(h);
}

/* Random malloc/realloc/free under a 16 MiB limit: committed_bytes never
 * passes it, a refusal is always NULL + ENOMEM + the oom callback, and the
 * heap does not refuse while it holds less than half the limit. */
Test(limit, random_operations_stay_under_the_limit, .timeout = 120)
{
    const size_t limit = 16 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    enum { SLOTS = 512 };
    static unsigned char *p[SLOTS];
    static size_t n[SLOTS], us[SLOTS];
    size_t live = 0;   /* sum of usable sizes */
    uint64_t x = 0x1234567;
    int refusals = 0;
    for (int op = 0; op < 200000; op++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        unsigned i = (unsigned)(x % SLOTS);
        size_t r = (x >> 32) % 1000;
        size_t want = r < 900 ? 1 + (x >> 40) % 2048 : r < 990 ? 1 + (x >> 40) % (100 * KiB)
                                                             : 128 * KiB + (x >> 40) % (2 * MiB);
        if (p[i] && (x & 0x10000)) {
            cr_assert_eq(p[i][0], (unsigned char)n[i]);
            live -= us[i];
            loam_free(p[i]);
            p[i] = NULL;
        } else {
            rec.calls = 0;
            errno = 0;
            unsigned char *q = p[i] ? loam_realloc(h, p[i], want) : loam_malloc(h, want);
            if (!q) {
                refusals++;
                cr_assert_eq(errno, ENOMEM, "op %d: refusal with errno %d", op, errno);
                cr_assert_geq(rec.calls, 1, "op %d: refusal without the oom callback", op);
                cr_assert_eq(rec.request, want);
                cr_assert_geq(live + want, limit / 2,
                              "op %d: refused %zu bytes while only %zu are live under a %zu limit", op,
                              want, live, limit);
                if (p[i])
                    cr_assert_eq(p[i][0], (unsigned char)n[i], "a refused realloc damaged the block");
                continue;
            }
            if (p[i]) {
                cr_assert_eq(q[0], (unsigned char)n[i], "realloc lost the contents");
                live -= us[i];
            }
            p[i] = q;
            n[i] = want;
            us[i] = loam_usable_size(q);
            live += us[i];
            q[0] = (unsigned char)want;
            q[want - 1] = 1;
        }
        if ((op & 15) == 0)
            cr_assert_leq(committed(h), limit, "op %d: committed %zu over the limit", op, committed(h));
    }
    for (unsigned i = 0; i < SLOTS; i++)
        loam_free(p[i]);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_geq(refusals, 1, "the limit was never reached: the test does not test it");
    loam_heap_destroy(h);
}

/* An oom callback that makes room by freeing blocks (or by dropping
 * references and collecting) gets its allocation tried again, though no
 * memory went back to the system (the slabs stay in use). One that makes
 * no room is called once per refused allocation. */
typedef struct {
    int     calls;
    void  **release;            /* blocks the callback frees, or roots it drops */
    size_t  nrelease;
    bool    collect;            /* drop roots and collect instead of freeing */
} releasing_oom_t;

static void release_on_oom(loam_heap_t *h, size_t request, void *user)
{
    (void)request;
    releasing_oom_t *r = user;
    r->calls++;
    for (size_t i = 0; i < r->nrelease; i++) {
        if (!r->collect)
            loam_free(r->release[i]);
        r->release[i] = NULL;
    }
    r->nrelease = 0;
    if (r->collect)
        loam_gc_collect(h);
}

static void oom_callback_that_makes_room(loam_mode_t mode)
{
    enum { MAX = 1 << 17 };
    const size_t limit = 4 * MiB;
    static void *blocks[MAX];
    memset(blocks, 0, sizeof blocks);
    releasing_oom_t rec = { 0 };
    loam_config_t cfg = { 0 };
    cfg.mode = mode;
    cfg.flags = mode == LOAM_GC ? LOAM_NO_STACK_SCAN : 0;
    cfg.limit = limit;
    cfg.oom = release_on_oom;
    cfg.user = &rec;
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    if (mode == LOAM_GC)
        loam_root_add_range(h, blocks, blocks + MAX);
    size_t k = 0;
    for (; k < MAX; k++)
        if (!(blocks[k] = mode == LOAM_GC ? loam_gc_alloc(h, 64, LOAM_ATOMIC) : loam_malloc(h, 64)))
            break;
    cr_assert_lt(k, MAX, "the limit was never reached");
    cr_assert_eq(rec.calls, 1, "the callback that had nothing to release was called %d times", rec.calls);

    /* Two blocks released from inside the callback: the allocation that
     * called it succeeds, and so does the next one. */
    rec.calls = 0;
    rec.release = &blocks[k / 2];
    rec.nrelease = 2;
    rec.collect = mode == LOAM_GC;
    void *p = mode == LOAM_GC ? loam_gc_alloc(h, 64, LOAM_ATOMIC) : loam_malloc(h, 64);
    cr_assert_not_null(p, "the oom callback freed two blocks and the allocation was not tried again");
    cr_assert_eq(rec.calls, 1);
    blocks[k / 2] = p;
    p = mode == LOAM_GC ? loam_gc_alloc(h, 64, LOAM_ATOMIC) : loam_malloc(h, 64);
    cr_assert_not_null(p, "the second block the callback freed was lost");
    blocks[k / 2 + 1] = p;
    cr_assert_eq(rec.calls, 1);

    /* Nothing left to release: NULL, ENOMEM, the callback called once. */
    errno = 0;
    p = mode == LOAM_GC ? loam_gc_alloc(h, 64, LOAM_ATOMIC) : loam_malloc(h, 64);
    cr_assert_null(p);
    cr_assert_eq(errno, ENOMEM);
    cr_assert_eq(rec.calls, 2, "a callback that made no room was called %d times for one allocation",
                 rec.calls - 1);
    cr_assert_leq(committed(h), limit);
    if (mode == LOAM_GC)
        loam_root_remove_range(h, blocks);
    loam_heap_destroy(h);
}

Test(limit, an_oom_callback_that_frees_blocks_gets_its_allocation_tried_again)
{
    oom_callback_that_makes_room(LOAM_MANUAL);
}

Test(limit, an_oom_callback_that_drops_references_and_collects_gets_its_allocation_tried_again)
{
    oom_callback_that_makes_room(LOAM_GC);
}

Test(limit, calloc_and_aligned_respect_the_limit)
{
    const size_t limit = 2 * MiB;
    oom_record_t rec;
    loam_heap_t *h = limited_heap(limit, &rec);
    errno = 0;
    void *p = loam_calloc(h, 3, MiB);
    cr_assert_null(p);
    cr_assert_eq(errno, ENOMEM);
    cr_assert_eq(rec.calls, 1);
    cr_assert_eq(rec.request, 3 * MiB);
    rec.calls = 0;
    errno = 0;
    p = loam_aligned_alloc(h, 4096, 3 * MiB);
    cr_assert_null(p);
    cr_assert_eq(errno, ENOMEM);
    cr_assert_eq(rec.calls, 1);
    cr_assert_leq(committed(h), limit);
    p = loam_calloc(h, 1, 1000);
    cr_assert_not_null(p);
    loam_free(p);
    loam_heap_destroy(h);
}
