/* Memory goes back to the OS: after a peak, RSS (from /proc/self/statm)
 * returns near where it started — on heap destroy at once, after free once
 * decay_ms has passed, on loam_heap_trim at once, and for large blocks on free.
 *
 * "Near" is: start + SLACK + start/10. Each test runs in its own process, and
 * the bookkeeping arrays are allocated and touched before the start is read. */
#define _GNU_SOURCE
#include "harness.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#include "loam.h"
#include "rss_util.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)
#define SLACK (16 * MiB)


static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void assert_back_near(size_t start, size_t now, size_t peak, const char *when)
{
    size_t bound = start + SLACK + start / 10;
    cr_assert_leq(now, bound,
                  "%s: RSS %zu MiB, started at %zu MiB, peak %zu MiB (allowed up to %zu MiB)", when,
                  now / MiB, start / MiB, peak / MiB, bound / MiB);
}

/* RSS once it is back near start (what assert_back_near allows), or after
 * ms milliseconds: for memory the background thread gives back. */
static size_t rss_when_back_near(size_t start, int ms)
{
    size_t now = rss_bytes();
    for (int waited = 0; waited < ms && now > start + SLACK + start / 10; waited += 10) {
        sleep_ms(10);
        now = rss_bytes();
    }
    return now;
}

/* Allocate `total` bytes in blocks of sizes lo..hi (cycling), touching each;
 * pointers go to ptrs (capacity cap). Returns the count. */
static size_t alloc_touched(loam_heap_t *h, void **ptrs, size_t cap, size_t total, size_t lo, size_t hi)
{
    size_t n = 0, bytes = 0, size = lo;
    while (bytes < total) {
        cr_assert_lt(n, cap);
        unsigned char *p = loam_malloc(h, size);
        cr_assert_not_null(p, "malloc(%zu) failed after %zu bytes", size, bytes);
        memset(p, (int)(n | 1), size);
        ptrs[n++] = p;
        bytes += size;
        size = size * 5 / 4 + 16;
        if (size > hi)
            size = lo;
    }
    return n;
}

static void **pointer_array(size_t cap)
{
    void **a = malloc(cap * sizeof *a);   /* glibc's malloc: not part of the measurement */
    cr_assert_not_null(a);
    memset(a, 0, cap * sizeof *a);
    return a;
}

/* (a) a heap that allocated 1 GiB, destroyed with everything live */
Test(rss, destroy_returns_everything, .timeout = 120)
{
    const size_t cap = 3 * 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t start = rss_bytes();
    size_t n = alloc_touched(h, ptrs, cap, 3 * GiB / 4, 64 * KiB, 64 * KiB);   /* 768 MiB of 64 KiB */
    n += alloc_touched(h, ptrs + n, cap - n, GiB / 4, 16, 2048);              /* 256 MiB small */
    size_t peak = rss_bytes();
    cr_assert_geq(peak, start + GiB - 64 * MiB, "touched 1 GiB but RSS only %zu MiB", peak / MiB);
    loam_heap_destroy(h);
    assert_back_near(start, rss_bytes(), peak, "after loam_heap_destroy");
    free(ptrs);
}

/* (b) 1 GiB of small blocks freed one by one; after decay_ms, allocation
 * activity on the heap returns the free page runs to the OS. */
Test(rss, free_then_decay_returns_memory, .timeout = 120)
{
    cr_assert_eq(loam_option_set("decay_ms", 50), 0);
    const size_t cap = 4 * 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t start = rss_bytes();
    size_t n = alloc_touched(h, ptrs, cap, GiB, 16, 1024);
    size_t peak = rss_bytes();
    cr_assert_geq(peak, start + GiB - 64 * MiB, "touched 1 GiB but RSS only %zu MiB", peak / MiB);
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    sleep_ms(100);
    /* Some ordinary activity on the heap after the decay time: a few
     * allocations and frees of several classes (not all of which can be
     * served by the thread cache). */
    for (int round = 0; round < 4; round++) {
        void *q[64];
        for (int i = 0; i < 64; i++)
            q[i] = loam_malloc(h, (size_t)(16 << (i % 7)));
        for (int i = 0; i < 64; i++)
            loam_free(q[i]);
    }
    assert_back_near(start, rss_bytes(), peak, "100 ms after freeing everything (decay_ms=50)");
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.live_blocks, 0);
    loam_heap_destroy(h);
    free(ptrs);
}

/* (b') the same with the frees spread over time: runs freed early decay while
 * the program keeps running. */
Test(rss, decay_while_running, .timeout = 120)
{
    cr_assert_eq(loam_option_set("decay_ms", 50), 0);
    const size_t cap = 2 * 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t start = rss_bytes();
    size_t n = alloc_touched(h, ptrs, cap, GiB / 2, 16, 4096);
    size_t peak = rss_bytes();
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    /* keep a small working set busy for 300 ms */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        void *q[32];
        for (int i = 0; i < 32; i++)
            q[i] = loam_malloc(h, (size_t)(24 + 40 * i));
        for (int i = 0; i < 32; i++)
            loam_free(q[i]);
        sleep_ms(1);
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 300);
    assert_back_near(start, rss_bytes(), peak, "300 ms of light activity after freeing (decay_ms=50)");
    loam_heap_destroy(h);
    free(ptrs);
}

/* (b'') decay alone: with retain_max so high that no free is handed back at
 * once, the free page runs must still go back once decay_ms has passed. */
Test(rss, decay_without_retain_budget, .timeout = 120)
{
    cr_assert_eq(loam_option_set("decay_ms", 50), 0);
    cr_assert_eq(loam_option_set("retain_max", 1L << 40), 0);
    const size_t cap = 2 * 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t start = rss_bytes();
    size_t n = alloc_touched(h, ptrs, cap, GiB / 2, 16, 2048);
    size_t peak = rss_bytes();
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    sleep_ms(100);
    for (int round = 0; round < 4; round++) {
        void *q[64];
        for (int i = 0; i < 64; i++)
            q[i] = loam_malloc(h, (size_t)(16 << (i % 7)));
        for (int i = 0; i < 64; i++)
            loam_free(q[i]);
    }
    assert_back_near(start, rss_bytes(), peak, "decay_ms=50, retain_max=1 TiB, 100 ms after the frees");
    loam_heap_destroy(h);
    free(ptrs);
}

/* A long decay with a huge retain budget keeps freed runs committed for
 * reuse: the next peak is served without new commits. */
Test(rss, retained_runs_are_reused, .timeout = 120)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);
    cr_assert_eq(loam_option_set("retain_max", 1L << 40), 0);
    const size_t cap = 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t n = alloc_touched(h, ptrs, cap, 256 * MiB, 16, 2048);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    size_t committed_peak = st.committed_bytes;
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    loam_heap_stats(h, &st);
    cr_assert_geq(st.committed_bytes, committed_peak / 2,
                  "decay_ms=600000 and retain_max=1 TiB, yet committed fell from %zu to %zu MiB at once",
                  committed_peak / MiB, st.committed_bytes / MiB);
    n = alloc_touched(h, ptrs, cap, 256 * MiB, 16, 2048);
    loam_heap_stats(h, &st);
    cr_assert_leq(st.committed_bytes, committed_peak + 8 * MiB, "the second peak committed more");
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    loam_heap_destroy(h);
    free(ptrs);
}

/* (c) loam_heap_trim gives the free runs back at once, whatever decay_ms says */
Test(rss, trim_returns_memory_now, .timeout = 120)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);   /* nothing decays by itself */
    const size_t cap = 2 * 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t start = rss_bytes();
    size_t n = alloc_touched(h, ptrs, cap, GiB / 2, 16, 2048);
    size_t peak = rss_bytes();
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    size_t before_trim = rss_bytes();
    loam_stats_t s_before, s_after;
    loam_heap_stats(h, &s_before);
    size_t trimmed = loam_heap_trim(h);
    size_t after = rss_bytes();
    loam_heap_stats(h, &s_after);
    cr_assert_leq(s_after.committed_bytes, s_before.committed_bytes);
    /* (that trim's return equals the fall of committed_bytes is checked in test_stats) */
    cr_assert_geq(s_after.reserved_bytes, s_after.committed_bytes);
    cr_assert_gt(trimmed, 0, "loam_heap_trim returned 0 after freeing 512 MiB");
    cr_assert_leq(trimmed, peak - start + 64 * MiB, "trim claims %zu MiB", trimmed / MiB);
    assert_back_near(start, after, peak, "after loam_heap_trim");
    if (before_trim > start + 64 * MiB)   /* memory was still held: trim must be what dropped it */
        cr_assert_geq(trimmed, (before_trim - after) / 2,
                      "RSS dropped by %zu MiB but trim reported %zu MiB", (before_trim - after) / MiB,
                      trimmed / MiB);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_leq(st.committed_bytes, 8 * MiB, "committed %zu MiB after trim", st.committed_bytes / MiB);
    /* a second trim has nothing left to give */
    cr_assert_leq(loam_heap_trim(h), MiB);
    /* and the heap still works */
    void *p = loam_malloc(h, 1000);
    cr_assert_not_null(p);
    loam_free(p);
    loam_heap_destroy(h);
    free(ptrs);
}

/* Large blocks are unmapped on free, but for a small cache of mappings kept
 * for reuse (at most max(retain_max, 8 x the live large bytes)): freeing
 * everything leaves at most retain_max, whatever decay_ms says. The freeing
 * thread unmaps what the cache cannot keep where no background thread
 * serves the heap; where one does, the cache may run past its budget by a
 * bounded amount and the thread unmaps the excess moments later. */
static void free_large_blocks(loam_heap_t **hp, size_t *start, size_t *peak)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);     /* no decay during the test */
    loam_heap_t *h = loam_heap_new(NULL);
    void *p[128];
    *start = rss_bytes();
    for (int i = 0; i < 128; i++) {
        p[i] = loam_malloc(h, 4 * MiB);
        cr_assert_not_null(p[i]);
        memset(p[i], i, 4 * MiB);
    }
    *peak = rss_bytes();
    cr_assert_geq(*peak, *start + 500 * MiB);
    for (int i = 0; i < 128; i++)
        loam_free(p[i]);
    *hp = h;
}

static void assert_large_cache_within_retain_max(loam_heap_t *h)
{
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_leq(st.committed_bytes, 8 * MiB, "%zu KiB still committed", st.committed_bytes / KiB);
}

Test(rss, large_blocks_return_on_free_by_the_background_thread, .timeout = 60)
{
    loam_heap_t *h;
    size_t start, peak;
    free_large_blocks(&h, &start, &peak);
    size_t now = rss_when_back_near(start, 3000);
    assert_back_near(start, now, peak, "3 s after freeing 512 MiB of large blocks");
    loam_stats_t st;
    for (int waited = 0; waited < 3000; waited += 10) {
        loam_heap_stats(h, &st);
        if (st.committed_bytes <= 8 * MiB)
            break;
        sleep_ms(10);
    }
    assert_large_cache_within_retain_max(h);
    loam_heap_destroy(h);
}

/* The control: without the thread, the last free returns with the excess
 * unmapped. */
Test(rss, large_blocks_return_on_free_without_purge_thread_at_once, .timeout = 60)
{
    cr_assert_eq(loam_option_set("purge_thread", 0), 0);
    loam_heap_t *h;
    size_t start, peak;
    free_large_blocks(&h, &start, &peak);
    assert_back_near(start, rss_bytes(), peak, "at once after freeing 512 MiB of large blocks");
    assert_large_cache_within_retain_max(h);
    loam_heap_destroy(h);
}

/* A freed large block's mapping is reused by the next block that fits: no
 * new mapping, no page faults. calloc still gets zeros, and the cached
 * mapping goes back once decay_ms passes with nobody calling in. */
Test(rss, large_mapping_reused_then_decays, .timeout = 60)
{
    cr_assert_eq(loam_option_set("decay_ms", 50), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    unsigned char *p = loam_malloc(h, 2 * MiB);
    cr_assert_not_null(p);
    memset(p, 0xEE, 2 * MiB);
    loam_free(p);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_geq(st.free_run_bytes, 2 * MiB, "the freed mapping was not kept");
    unsigned char *q = loam_malloc(h, 2 * MiB - 4096);
    cr_assert_eq(q, p, "the kept mapping was not reused");
    loam_free(q);
    unsigned char *z = loam_calloc(h, 1, 2 * MiB);
    cr_assert_not_null(z);
    for (size_t i = 0; i < 2 * MiB; i += 509)
        cr_assert_eq(z[i], 0, "calloc of a reused mapping: byte %zu is %#x", i, z[i]);
    loam_free(z);
    sleep_ms(300);                       /* the purge thread unmaps it */
    loam_heap_stats(h, &st);
    cr_assert_eq(st.free_run_bytes, 0, "%zu bytes still kept after decay", st.free_run_bytes);
    cr_assert_leq(st.committed_bytes, 256 * KiB);
    loam_heap_destroy(h);
}

/* Pages of [p, p + n) the kernel has resident (mincore), p page-aligned down. */
static size_t resident_pages(const void *p, size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)p & ~(uintptr_t)(pg - 1), hi = (uintptr_t)p + n;
    size_t count = (hi - lo + pg - 1) / pg, resident = 0;
    unsigned char *vec = malloc(count);
    cr_assert_not_null(vec);
    cr_assert_eq(mincore((void *)lo, hi - lo, vec), 0);
    for (size_t i = 0; i < count; i++)
        resident += vec[i] & 1;
    free(vec);
    return resident;
}

/* The large cache keeps pages, not only mappings: a small block served from
 * a big cached mapping leaves the rest of its pages cached, and a block no
 * cached mapping holds is built from the pages of several. Either way the
 * new block's pages are resident before it is touched (no fault), and the
 * block behaves like any other. */
Test(rss, large_cache_keeps_pages_of_other_sizes, .timeout = 60)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);     /* no purge during the test */
    cr_assert_eq(loam_option_set("retain_max", 16 * MiB), 0); /* room to cache 4 MiB */
    loam_heap_t *h = loam_heap_new(NULL);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    loam_stats_t st;

    unsigned char *big = loam_malloc(h, 4 * MiB);
    cr_assert_not_null(big);
    memset(big, 0xA5, 4 * MiB);
    loam_free(big);
    unsigned char *small = loam_malloc(h, 256 * KiB);
    cr_assert_eq(small, big, "the cached mapping was not reused");
    loam_heap_stats(h, &st);
    cr_assert_geq(st.free_run_bytes, 3 * MiB + 512 * KiB,
                  "the 4 MiB mapping's tail was not kept (%zu KiB cached)", st.free_run_bytes / KiB);
    unsigned char *next = loam_malloc(h, 3 * MiB);
    cr_assert_not_null(next);
    cr_assert_eq(resident_pages(next, 3 * MiB), 3 * MiB / pg, "the tail's pages were not reused");
    memset(next, 0x5A, 3 * MiB);
    memset(small, 0x3C, 256 * KiB);
    for (size_t i = 0; i < 256 * KiB; i += 4093)
        cr_assert_eq(small[i], 0x3C);
    loam_free(next);
    loam_free(small);
    loam_heap_trim(h);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.free_run_bytes, 0);

    /* Three cached 1 MiB mappings; a 2.5 MiB block takes the pages of two. */
    for (int round = 0; round < 2; round++) {
        unsigned char *piece[3];
        for (int i = 0; i < 3; i++) {
            piece[i] = loam_malloc(h, MiB);
            cr_assert_not_null(piece[i]);
            memset(piece[i], 0xF0 + i, MiB);
        }
        for (int i = 0; i < 3; i++)
            loam_free(piece[i]);
        size_t n = 5 * MiB / 2;
        unsigned char *q = round == 0 ? loam_malloc(h, n) : loam_calloc(h, 1, n);
        cr_assert_not_null(q);
        loam_heap_stats(h, &st);
        cr_assert_leq(st.free_run_bytes, MiB + 2 * pg, "%zu KiB still cached: no piece was moved in",
                      st.free_run_bytes / KiB);
        cr_assert_eq(resident_pages(q, 2 * MiB), 2 * MiB / pg, "the pieces' pages are not in the block");
        cr_assert_eq(loam_heap_of(q + n - 1), h);
        cr_assert_eq(loam_heap_of(q + MiB + MiB / 2), h);
        cr_assert_eq(loam_usable_size(q), n + (pg - 1 - (n + pg - 1) % pg));
        if (round == 1)
            for (size_t i = 0; i < n; i += 509)
                cr_assert_eq(q[i], 0, "calloc of moved pages: byte %zu is %#x", i, q[i]);
        for (size_t i = 0; i < n; i++)
            q[i] = (unsigned char)(i * 7 + 1);
        /* it grows by a copy (mremap cannot grow it in place) */
        unsigned char *r = loam_realloc(h, q, 6 * MiB);
        cr_assert_not_null(r);
        for (size_t i = 0; i < n; i++)
            cr_assert_eq(r[i], (unsigned char)(i * 7 + 1), "byte %zu lost by realloc", i);
        loam_free(r);
        loam_heap_trim(h);
    }
    loam_heap_destroy(h);
}

/* Whether the kernel mapping holding p carries MADV_HUGEPAGE (VmFlags "hg"
 * in /proc/self/smaps). */
static bool mapping_advised_huge(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    cr_assert_not_null(f);
    char line[512];
    bool inside = false, huge = false, found = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        } else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            huge = strstr(line, " hg") != NULL;
            found = true;
            break;
        }
    }
    fclose(f);
    cr_assert(found, "no mapping in /proc/self/smaps holds %p", p);
    return huge;
}

/* A large block grown by realloc is being filled: its mapping asks for huge
 * pages (option huge_pages, on by default), a block from malloc does not,
 * and with the option off neither does. Contents survive each growth. */
Test(rss, large_block_grown_by_realloc_asks_for_huge_pages, .timeout = 60)
{
    if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0)
        cr_skip_test("this kernel has no transparent huge pages (madvise refuses the advice)");
    loam_heap_t *h = loam_heap_new(NULL);
    for (int on = 1; on >= 0; on--) {
        cr_assert_eq(loam_option_set("huge_pages", on), 0);
        unsigned char *plain = loam_malloc(h, 8 * MiB);
        cr_assert_not_null(plain);
        cr_assert(!mapping_advised_huge(plain), "a block from malloc asks for huge pages");
        size_t n = 256 * KiB;
        unsigned char *p = loam_malloc(h, n);
        cr_assert_not_null(p);
        memset(p, 0x5A, n);
        while (n < 16 * MiB) {
            unsigned char *q = loam_realloc(h, p, 2 * n);
            cr_assert_not_null(q);
            for (size_t i = 0; i < n; i += 4093)
                cr_assert_eq(q[i], 0x5A, "byte %zu lost growing to %zu", i, 2 * n);
            memset(q + n, 0x5A, n);
            p = q;
            n *= 2;
        }
        cr_assert_eq(mapping_advised_huge(p), on == 1, "huge_pages=%d: the grown block's mapping %s",
                     on, on ? "does not ask for huge pages" : "asks for huge pages");
        loam_free(p);
        loam_free(plain);
        loam_heap_trim(h);                   /* no cached mapping carries the advice over */
    }
    loam_heap_destroy(h);
}

/* A collected heap whose slabs pass 8 MiB asks for huge pages on all its
 * segments (option huge_pages); a manual heap of the same size does not. A
 * segment part of which goes back to the OS stops asking (else khugepaged
 * could fault the rest of each 2 MiB back in). */
Test(rss, a_big_collected_heap_asks_for_huge_pages_until_it_gives_memory_back, .timeout = 60)
{
    if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0)
        cr_skip_test("this kernel has no transparent huge pages (madvise refuses the advice)");
    enum { N = 256 * 1024, KEEP = 4096 };           /* 64-byte blocks: 16 MiB */
    void **held = calloc(N, sizeof *held);
    cr_assert_not_null(held);
    for (int on = 1; on >= 0; on--) {
        cr_assert_eq(loam_option_set("huge_pages", on), 0);
        loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
        loam_heap_t *h = loam_heap_new(&cfg);
        cr_assert_not_null(h);
        loam_root_add_range(h, held, held + N);
        for (size_t i = 0; i < N; i++) {
            held[i] = loam_gc_alloc(h, 64, LOAM_ATOMIC);
            cr_assert_not_null(held[i]);
            if (i == N / 16)
                cr_assert(!mapping_advised_huge(held[0]), "a 1 MiB collected heap asks for huge pages");
        }
        cr_assert_eq(mapping_advised_huge(held[0]), on == 1, "huge_pages=%d: a 16 MiB collected heap's first "
                     "segment %s", on, on ? "does not ask for huge pages" : "asks for huge pages");
        cr_assert_eq(mapping_advised_huge(held[N - 1]), on == 1, "huge_pages=%d: its last segment %s", on,
                     on ? "does not ask for huge pages" : "asks for huge pages");
        /* Most of it dies; what stays keeps each segment mapped. */
        for (size_t i = 0; i < N; i++)
            if (i % KEEP)
                held[i] = NULL;
        loam_gc_collect(h);
        loam_stats_t st;
        loam_heap_stats(h, &st);                    /* finishes the sweep: dead slabs go */
        cr_assert_lt(st.live_bytes, (size_t)N / KEEP * 64 * 2, "%zu bytes live", st.live_bytes);
        loam_heap_trim(h);
        for (size_t i = 0; i < N; i += KEEP)
            cr_assert(!mapping_advised_huge(held[i]), "block %zu's segment still asks for huge pages after "
                      "it gave pages back", i);
        loam_root_remove_range(h, held);
        loam_heap_destroy(h);

        loam_heap_t *m = loam_heap_new(NULL);
        for (size_t i = 0; i < N; i++)
            held[i] = loam_malloc(m, 64);
        cr_assert(!mapping_advised_huge(held[0]) && !mapping_advised_huge(held[N - 1]),
                  "a 16 MiB manual heap asks for huge pages");
        loam_heap_destroy(m);
    }
    cr_assert_eq(loam_option_set("huge_pages", 1), 0);
    free(held);
}

/* A collected heap (no stack scan) whose root range held[0..n) holds n
 * fresh blocks of `size` bytes and kind k. */
static loam_heap_t *collected_heap_holding(void **held, size_t n, size_t size, loam_kind_t k)
{
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    loam_root_add_range(h, held, held + n);
    for (size_t i = 0; i < n; i++)
        cr_assert_not_null(held[i] = loam_gc_alloc(h, size, k));
    return h;
}

/* A heap's arenas share their retained pages: one about to commit fresh
 * pages takes them from the free runs another keeps (here a collected
 * heap's arenas of two kinds) instead of growing the heap beside them. */
Test(rss, an_arena_takes_pages_another_arena_of_its_heap_retains, .timeout = 60)
{
    enum { N = 32 * 1024 };                         /* 64-byte blocks: 2 MiB */
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);   /* no decay gives them back meanwhile */
    void **held = calloc(N, sizeof *held);
    cr_assert_not_null(held);
    loam_heap_t *h = collected_heap_holding(held, N, 64, LOAM_ATOMIC);
    for (size_t i = 0; i < N; i++) {
        loam_free(held[i]);
        held[i] = NULL;
    }
    loam_stats_t before, after;
    loam_heap_stats(h, &before);
    cr_assert_geq(before.free_run_bytes, (size_t)N * 64 * 3 / 4,
                  "the atomic blocks' slabs are not kept as free runs: %zu bytes", before.free_run_bytes);
    for (size_t i = 0; i < N; i++)
        cr_assert_not_null(held[i] = loam_gc_alloc(h, 64, LOAM_CONSERVATIVE));
    loam_heap_stats(h, &after);
    cr_assert_leq(after.committed_bytes, before.committed_bytes + 512 * 1024,
                  "2 MiB of a second kind grew the heap from %zu to %zu committed bytes beside %zu retained",
                  before.committed_bytes, after.committed_bytes, before.free_run_bytes);
    cr_assert_lt(after.free_run_bytes, before.free_run_bytes / 4, "the first kind's arena kept %zu of its %zu "
                 "retained bytes", after.free_run_bytes, before.free_run_bytes);
    loam_root_remove_range(h, held);
    loam_heap_destroy(h);
    free(held);
    cr_assert_eq(loam_option_set("decay_ms", 250), 0);
}

/* A new slab takes committed pages where the arena keeps some, before
 * pages given back: here the first free run that fits a slab is two pages,
 * the first given back by trim, the second committed; a three-page run of
 * committed pages is there too. */
Test(rss, a_new_slab_takes_committed_pages_before_pages_given_back, .timeout = 60)
{
    enum { SLABS = 12, PER = 65536 / 48, N = SLABS * PER };    /* 48-byte blocks in one-page slabs */
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);   /* no decay gives the runs back meanwhile */
    void **held = calloc(N, sizeof *held);
    cr_assert_not_null(held);
    loam_heap_t *h = collected_heap_holding(held, N, 48, LOAM_ATOMIC);
    /* Pages in allocation order: one slab each, the first one's blocks first. */
    uintptr_t page[SLABS];
    size_t pages = 0;
    for (size_t i = 0; i < N && pages < SLABS; i++)
        if (pages == 0 || (uintptr_t)held[i] >> 16 != page[pages - 1])
            page[pages++] = (uintptr_t)held[i] >> 16;
    cr_assert_geq(pages, 9, "48-byte blocks spread over %zu pages", pages);
    /* The second slab dies, its page is given back; then the third dies
     * (its run joins the given-back page), and three in a row. */
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < N; i++) {
            uintptr_t pg = (uintptr_t)held[i] >> 16;
            if (round == 0 ? pg == page[1] : (pg == page[2] || pg == page[4] || pg == page[5] || pg == page[6]))
                held[i] = NULL;
        }
        loam_gc_collect(h);
        if (round == 0)
            loam_heap_trim(h);
    }
    loam_stats_t before, after;
    loam_heap_stats(h, &before);
    cr_assert_geq(before.free_run_bytes, 4 * 65536, "four dead slabs left %zu bytes of free runs",
                  before.free_run_bytes);
    enum { MORE = 3 * PER + PER / 2 };                 /* a refill takes a batch beyond: not a fifth slab */
    void **more = calloc(MORE, sizeof *more);
    cr_assert_not_null(more);
    loam_root_add_range(h, more, more + MORE);
    for (size_t i = 0; i < MORE; i++)
        cr_assert_not_null(more[i] = loam_gc_alloc(h, 48, LOAM_ATOMIC));
    loam_heap_stats(h, &after);
    cr_assert_leq(after.committed_bytes, before.committed_bytes, "three and a half slabs' worth of blocks committed %zu "
                  "bytes more beside %zu bytes of committed free runs", after.committed_bytes -
                  before.committed_bytes, before.free_run_bytes);
    loam_root_remove_range(h, more);
    loam_root_remove_range(h, held);
    loam_heap_destroy(h);
    free(more);
    free(held);
    cr_assert_eq(loam_option_set("decay_ms", 250), 0);
}

/* A collected heap that goes quiet after a collection gives back, once
 * decay_ms has passed, the runs that collection kept for regrowth: the
 * background thread purges collected heaps too, between collections. */
Test(rss, an_idle_collected_heap_gives_back_what_its_last_collection_kept, .timeout = 60)
{
    enum { N = 1024 * 1024 };                        /* 64-byte blocks: 64 MiB */
    void **held = pointer_array(N);
    size_t start = rss_bytes();
    loam_heap_t *h = collected_heap_holding(held, N, 64, LOAM_ATOMIC);   /* zero-filled: touched */
    size_t peak = rss_bytes();
    cr_assert_geq(peak, start + 48 * MiB, "64 MiB of blocks: RSS %zu MiB from %zu", peak / MiB, start / MiB);
    memset(held, 0, N * sizeof *held);
    /* A collection that allocation brings (loam_gc_collect asks for the
     * memory back at once). */
    loam_stats_t st;
    loam_heap_stats(h, &st);
    size_t collections = st.gc_collections;
    while (st.gc_collections == collections) {
        for (int k = 0; k < 1000; k++)
            cr_assert_not_null(loam_gc_alloc(h, 1024, LOAM_ATOMIC));
        loam_heap_stats(h, &st);
    }
    size_t kept = rss_bytes();
    cr_assert_geq(kept, start + 32 * MiB, "the collection kept only %zu MiB above the start for regrowth",
                  (kept - start) / MiB);
    size_t now = rss_when_back_near(start, 3000);    /* no loam call meanwhile */
    assert_back_near(start, now, peak, "a collected heap quiet for 3 s after a collection");
    loam_root_remove_range(h, held);
    loam_heap_destroy(h);
    free(held);
}

/* Repeated peaks do not ratchet RSS up. */
Test(rss, repeated_peaks_do_not_accumulate, .timeout = 120)
{
    const size_t cap = 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t start = rss_bytes(), peak = 0;
    for (int round = 0; round < 5; round++) {
        size_t lo = (size_t)16 << round;
        size_t n = alloc_touched(h, ptrs, cap, 200 * MiB, lo, lo * 64);
        size_t r = rss_bytes();
        peak = r > peak ? r : peak;
        for (size_t i = 0; i < n; i++)
            loam_free(ptrs[i]);
        loam_heap_trim(h);
    }
    assert_back_near(start, rss_bytes(), peak, "after five 200 MiB peaks, each trimmed");
    loam_heap_destroy(h);
    free(ptrs);
}

/* ---- the background purge (runtime/purge.c) ------------------------------ */

/* Free a peak of small blocks from a heap whose thread cache serves it, then
 * run a tiny loop that never leaves the cache (one 64-byte block every 20 ms),
 * as an idle program would. Returns the heap's statistics at the end. */
static void peak_then_quiet_loop(loam_stats_t *st)
{
    cr_assert_eq(loam_option_set("decay_ms", 50), 0);
    cr_assert_eq(loam_option_set("track_requested", 0), 0);    /* so the heap has caches */
    const size_t cap = 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    size_t n = alloc_touched(h, ptrs, cap, 128 * MiB, 16, 2048);
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    for (int k = 0; k < 25; k++) {
        sleep_ms(20);
        void *p = loam_malloc(h, 64);
        cr_assert_not_null(p);
        memset(p, 1, 64);
        loam_free(p);
    }
    loam_heap_stats(h, st);
    loam_heap_destroy(h);
    free(ptrs);
}

/* (b''') past the retained budget, memory goes back with no decay at all:
 * the background thread gives it back (the freeing thread does not wait for
 * madvise), with no call of the program's after the frees. */
static void free_burst_past_budget(size_t *start, size_t *peak, loam_heap_t **hp, void ***ptrsp,
                                   size_t *np)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);     /* no decay during the test */
    const size_t cap = 2 * 1000 * 1000;
    void **ptrs = pointer_array(cap);
    loam_heap_t *h = loam_heap_new(NULL);
    *start = rss_bytes();
    size_t n = alloc_touched(h, ptrs, cap, 256 * MiB, 16, 1024);
    *peak = rss_bytes();
    cr_assert_geq(*peak, *start + 256 * MiB - 32 * MiB, "touched 256 MiB but RSS only %zu MiB",
                  *peak / MiB);
    for (size_t i = 0; i < n; i++)
        loam_free(ptrs[i]);
    *hp = h, *ptrsp = ptrs, *np = n;
}

Test(rss, past_the_budget_the_background_thread_gives_back, .timeout = 60)
{
    size_t start, peak, n;
    loam_heap_t *h;
    void **ptrs;
    free_burst_past_budget(&start, &peak, &h, &ptrs, &n);
    size_t now = rss_when_back_near(start, 3000);
    assert_back_near(start, now, peak, "3 s after freeing 256 MiB (decay_ms=600000)");
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_leq(st.free_run_bytes, 8 * MiB, "%zu MiB of free runs kept past the budget",
                  st.free_run_bytes / MiB);
    loam_heap_destroy(h);
    free(ptrs);
}

/* The control: without the thread the freeing thread gives it back itself,
 * before its last free returns. */
Test(rss, past_the_budget_without_purge_thread_at_once, .timeout = 60)
{
    cr_assert_eq(loam_option_set("purge_thread", 0), 0);
    size_t start, peak, n;
    loam_heap_t *h;
    void **ptrs;
    free_burst_past_budget(&start, &peak, &h, &ptrs, &n);
    assert_back_near(start, rss_bytes(), peak, "at once after freeing 256 MiB (no purge thread)");
    loam_heap_destroy(h);
    free(ptrs);
}

/* With the purge thread, the idle cache is asked to flush and the heap goes
 * back to almost nothing, with no slow path of the program's own. */
Test(rss, purge_thread_returns_an_idle_heap, .timeout = 60)
{
    loam_stats_t st;
    peak_then_quiet_loop(&st);
    cr_assert_leq(st.resident_bytes, 1 * MiB,
                  "500 ms after freeing 128 MiB: %zu KiB resident (slabs %zu KiB, free runs %zu KiB, "
                  "cached %zu KiB)", st.resident_bytes / KiB, st.slab_bytes / KiB,
                  st.free_run_bytes / KiB, st.cached_bytes / KiB);
    cr_assert_leq(st.cached_bytes, 64 * KiB, "the cache kept %zu KiB", st.cached_bytes / KiB);
    cr_assert_eq(st.free_run_bytes, 0, "%zu KiB of free runs never decayed", st.free_run_bytes / KiB);
}

/* The control: without the thread, nothing runs decay or empties the cache
 * in that loop, so the peak's retained runs and cache-pinned slabs stay. */
Test(rss, without_purge_thread_an_idle_heap_keeps_memory, .timeout = 60)
{
    cr_assert_eq(loam_option_set("purge_thread", 0), 0);
    loam_stats_t st;
    peak_then_quiet_loop(&st);
    cr_assert_geq(st.resident_bytes, 2 * MiB,
                  "only %zu KiB resident: something else returned the memory", st.resident_bytes / KiB);
}

/* A slab that empties while it is its class's only one is kept for the next
 * malloc of the class. Once it has stayed empty past decay_ms, the next
 * purge releases it, whatever runs that purge (here: a refill of another
 * class, with no background thread, which would trim the idle heap whole).
 * Decay looks only at the classes that kept a slab since its last look
 * (arena.c, kept_classes): this checks that the kept slab was noted. */
Test(rss, an_empty_slab_kept_for_reuse_goes_back_after_decay, .timeout = 60)
{
    cr_assert_eq(loam_option_set("decay_ms", 50), 0);
    cr_assert_eq(loam_option_set("tcache_max", 0), 0);     /* frees go to the slabs */
    cr_assert_eq(loam_option_set("purge_thread", 0), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    loam_free(loam_malloc(h, 64));
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.slab_bytes, 64 * KiB, "the empty slab should be kept at first: %zu KiB in slabs",
                 st.slab_bytes / KiB);
    sleep_ms(100);
    enum { N = 256 };                   /* 1 KiB blocks: four slabs of 64 KiB */
    void *q[N];
    for (int i = 0; i < N; i++)
        q[i] = loam_malloc(h, 1024);
    for (int i = 0; i < N; i++)
        loam_free(q[i]);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.slab_bytes, 64 * KiB,
                 "%zu KiB in slabs: the 1 KiB class keeps one, and the 64 B class's kept slab "
                 "should be gone", st.slab_bytes / KiB);
    loam_heap_destroy(h);
}

/* Decay walks only the segments that may have something to give (segment.c,
 * the dirty list): one it found full leaves the list, and must come back
 * when runs are freed into it later, or their pages would stay committed
 * for ever. */
Test(rss, runs_freed_into_a_segment_decay_found_full_decay_too, .timeout = 60)
{
    cr_assert_eq(loam_option_set("decay_ms", 50), 0);
    cr_assert_eq(loam_option_set("tcache_max", 0), 0);     /* every malloc refills: purges run */
    cr_assert_eq(loam_option_set("purge_thread", 0), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    enum { N = 12 * 1024 };             /* 12 MiB of 1 KiB blocks: three segments and more */
    void **q = malloc(N * sizeof *q);
    cr_assert_not_null(q);
    for (int i = 0; i < N; i++)
        q[i] = loam_malloc(h, 1024);
    sleep_ms(100);
    loam_free(loam_malloc(h, 64));      /* a purge: it finds the full segments clean */
    for (int i = 0; i < N / 2; i++)     /* the first half: whole slabs empty, runs go free */
        loam_free(q[i]);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_geq(st.free_run_bytes, 4 * MiB, "only %zu KiB of free runs kept", st.free_run_bytes / KiB);
    /* The next purges: the runs are past decay_ms. The first also releases
     * the class's kept slab, whose segment is then empty since that moment,
     * and goes back at the second. Two do it; a run on a loaded machine
     * under valgrind (a valgrind build's test run beside other builds') may
     * need more, and gets up to 20: a segment left out of decay's list
     * never gives its runs back, however many purges pass. */
    for (int purge = 0; purge < 20; purge++) {
        sleep_ms(100);
        loam_free(loam_malloc(h, 64));
        loam_heap_stats(h, &st);
        if (purge >= 1 && st.free_run_bytes == 0)
            break;
    }
    loam_heap_stats(h, &st);
    cr_assert_eq(st.free_run_bytes, 0, "%zu KiB of free runs still committed past decay_ms",
                 st.free_run_bytes / KiB);
    for (int i = N / 2; i < N; i++)
        loam_free(q[i]);
    free(q);
    loam_heap_destroy(h);
}

/* Trim shrinks a sparse slab to just past its last allocated block: the
 * pages beyond are no longer resident, the blocks there are handed out again
 * (fresh), and a second free of one of them is still a fault. */
static int trim_faults;
static void count_fault(loam_heap_t *h, const char *msg, void *addr, void *user)
{
    (void)h, (void)msg, (void)addr, (void)user;
    trim_faults++;
}

static bool page_resident(const void *p)
{
    unsigned char v = 0;
    uintptr_t page = (uintptr_t)p & ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
    cr_assert_eq(mincore((void *)page, 1, &v), 0);
    return v & 1;
}

/* A burst of garbage in a collected heap, with no collection since: an
 * explicit collection and a trim give it back at once, as
 * docs/embedding.md (§6, "After a peak") tells a program going idle to do.
 * The collection alone keeps the retained budget committed; the trim
 * gives that back too. */
Test(rss, a_collected_heaps_burst_goes_back_at_collect_and_trim, .timeout = 120)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);   /* nothing decays by itself */
    loam_config_t cfg = { .mode = LOAM_GC, .flags = LOAM_NO_STACK_SCAN, .gc_min_bytes = 512 * MiB };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    size_t start = rss_bytes();
    for (size_t i = 0; i < 2 * 1000 * 1000; i++)       /* 128 MB, zero-filled: touched */
        cr_assert_not_null(loam_gc_alloc(h, 64, LOAM_CONSERVATIVE));
    size_t peak = rss_bytes();
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.gc_collections, 0, "the burst brought a collection");
    cr_assert_geq(peak, start + 100 * MiB, "128 MB of blocks: RSS %zu MiB from %zu", peak / MiB, start / MiB);
    loam_gc_collect(h);
    loam_heap_stats(h, &st);
    size_t collected = st.committed_bytes;
    size_t trimmed = loam_heap_trim(h);
    loam_heap_stats(h, &st);
    size_t after = rss_bytes();
    fprintf(stderr, "rss/burst: RSS %zu KiB at the start, %zu at the peak, %zu after; committed %zu KiB "
            "after the collection, %zu after the trim\n", start >> 10, peak >> 10, after >> 10,
            collected >> 10, st.committed_bytes >> 10);
    cr_assert_eq(st.live_bytes, 0);
    cr_assert_gt(trimmed, 0, "the collection left nothing for the trim");
    cr_assert_leq(st.committed_bytes, 1 * MiB, "%zu KiB still committed", st.committed_bytes >> 10);
    assert_back_near(start, after, peak, "after loam_gc_collect and loam_heap_trim");
    loam_heap_destroy(h);
    cr_assert_eq(loam_option_set("decay_ms", 250), 0);
}

Test(rss, trim_shrinks_a_sparse_slab, .timeout = 60)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);
    loam_config_t cfg = { 0 };
    cfg.error = count_fault;
    loam_heap_t *h = loam_heap_new(&cfg);
    enum { N = 1024 };                  /* 64 KiB of 64-byte blocks: one whole slab */
    static unsigned char *b[N];
    for (int i = 0; i < N; i++) {
        b[i] = loam_malloc(h, 64);
        cr_assert_not_null(b[i]);
        memset(b[i], 0xA5, 64);
    }
    /* the slab's first blocks stay; all others are freed */
    unsigned char *last = b[N - 1];
    cr_assert(page_resident(last));
    for (int i = 4; i < N; i++)
        loam_free(b[i]);
    cr_assert_gt(loam_heap_trim(h), 0);
    cr_assert(!page_resident(last), "the slab's free tail is still resident after trim");
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 64; k++)
            cr_assert_eq(b[i][k], 0xA5, "a live block changed under trim");
    /* a freed block past the new line: its second free is reported */
    loam_free(last);
    cr_assert_eq(trim_faults, 1, "a second free past the shrunk line was not reported");
    /* the tail is handed out again, zeroed by the OS, and works */
    for (int i = 4; i < N; i++) {
        b[i] = loam_malloc(h, 64);
        cr_assert_not_null(b[i]);
        memset(b[i], 0x5A, 64);
    }
    for (int i = 0; i < N; i++)
        loam_free(b[i]);
    cr_assert_eq(trim_faults, 1);
    loam_heap_destroy(h);
}
