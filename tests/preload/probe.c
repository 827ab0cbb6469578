/* tests/preload/probe.c — a plain program (not linked with loam) that
 * exercises every allocation entry point libloam-malloc.so replaces, plus
 * what real programs do around them: threads with cross-thread frees, fork
 * (with threads running), dlopen, libc's own allocations, and a block
 * allocated by a constructor before main and freed in main.
 *
 * Output is the same with and without LD_PRELOAD: one "ok <check>" line per
 * check; a failed check prints "FAIL ..." and the exit code is 1.
 *   probe --which   prints, for each replaced function, the file of the
 *                   object that defines it (run.sh checks it is loam's). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void ok(const char *what)
{
    printf("ok %s\n", what);
    fflush(stdout);
}

/* Volatile function pointers: the compiler cannot pair up or drop calls. */
static void *(*volatile p_malloc)(size_t) = malloc;
static void (*volatile p_free)(void *) = free;
static void *(*volatile p_calloc)(size_t, size_t) = calloc;
static void *(*volatile p_realloc)(void *, size_t) = realloc;
static void *(*volatile p_reallocarray)(void *, size_t, size_t) = reallocarray;

/* ---- before main ---------------------------------------------------------------- */

static char *before_main;
static char *before_main_dup;

__attribute__((constructor)) static void early(void)
{
    before_main = p_malloc(100);
    if (before_main)
        strcpy(before_main, "allocated in a constructor before main");
    before_main_dup = strdup("strdup before main");
}

static void check_before_main(void)
{
    CHECK(before_main && strcmp(before_main, "allocated in a constructor before main") == 0,
          "block from before main damaged");
    CHECK(before_main_dup && strcmp(before_main_dup, "strdup before main") == 0, "strdup before main damaged");
    p_free(before_main);
    free(before_main_dup);
    ok("free in main of blocks allocated before main");
}

/* ---- the replaced functions ------------------------------------------------------ */

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed + i * 7 + (i >> 9));
}

static int same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 7 + (i >> 9)))
            return 0;
    return 1;
}

static const size_t sizes[] = { 0, 1, 7, 8, 15, 16, 17, 24, 31, 32, 48, 63, 64, 100, 127, 128, 255, 256,
                                500, 1000, 1024, 1500, 4095, 4096, 4097, 10000, 32768, 65536, 100000,
                                131072, 131073, 200000, 1 << 20, 5 << 20 };
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void check_malloc(void)
{
    void *p[NSIZES];
    for (size_t i = 0; i < NSIZES; i++) {
        p[i] = p_malloc(sizes[i]);
        CHECK(p[i] != NULL, "malloc(%zu) = NULL", sizes[i]);
        CHECK(((uintptr_t)p[i] & 15) == 0, "malloc(%zu) not 16-byte aligned", sizes[i]);
        CHECK(malloc_usable_size(p[i]) >= sizes[i], "malloc_usable_size %zu < %zu", malloc_usable_size(p[i]),
              sizes[i]);
        fill(p[i], malloc_usable_size(p[i]), (unsigned)i);
    }
    for (size_t i = 0; i < NSIZES; i++) {
        CHECK(same(p[i], malloc_usable_size(p[i]), (unsigned)i), "malloc(%zu) block overwritten", sizes[i]);
        p_free(p[i]);
    }
    void *z1 = p_malloc(0), *z2 = p_malloc(0);
    CHECK(z1 && z2 && z1 != z2, "malloc(0) twice: %p %p", z1, z2);
    p_free(z1);
    p_free(z2);
    p_free(NULL);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) != 0");
    errno = 0;
    void *huge = p_malloc(SIZE_MAX - 4096);
    CHECK(huge == NULL && errno == ENOMEM, "malloc(SIZE_MAX - 4096) = %p errno %d", huge, errno);
    ok("malloc, free, malloc_usable_size");
}

static void check_calloc(void)
{
    for (size_t i = 0; i < NSIZES; i++) {
        /* dirty memory first, so a reused block must be zeroed */
        unsigned char *d = p_malloc(sizes[i]);
        memset(d, 0xff, sizes[i]);
        p_free(d);
        unsigned char *c = p_calloc(1, sizes[i]);
        CHECK(c != NULL, "calloc(1, %zu) = NULL", sizes[i]);
        size_t nz = 0;
        for (size_t k = 0; k < sizes[i]; k++)
            nz += c[k] != 0;
        CHECK(nz == 0, "calloc(1, %zu): %zu nonzero bytes", sizes[i], nz);
        p_free(c);
    }
    unsigned char *c = p_calloc(1000, 24);
    CHECK(c && c[23999] == 0, "calloc(1000, 24)");
    p_free(c);
    errno = 0;
    void *o = p_calloc(SIZE_MAX / 2, 3);
    CHECK(o == NULL && errno == ENOMEM, "calloc overflow = %p errno %d", o, errno);
    ok("calloc");
}

static void check_realloc(void)
{
    unsigned char *p = p_realloc(NULL, 10);
    CHECK(p != NULL, "realloc(NULL, 10)");
    fill(p, 10, 3);
    size_t prev = 10;
    static const size_t steps[] = { 20, 100, 1000, 5000, 70000, 140000, 300000, 2 << 20, 1000, 17, 200000, 5 };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        unsigned char *q = p_realloc(p, steps[i]);
        CHECK(q != NULL, "realloc to %zu = NULL", steps[i]);
        size_t keep = prev < steps[i] ? prev : steps[i];
        CHECK(same(q, keep, 3), "realloc %zu -> %zu lost contents", prev, steps[i]);
        fill(q, steps[i], 3);
        p = q;
        prev = steps[i];
    }
    errno = 0;
    void *q = p_realloc(p, SIZE_MAX - 100);
    CHECK(q == NULL && errno == ENOMEM, "realloc to SIZE_MAX - 100 = %p", q);
    CHECK(same(p, prev, 3), "failed realloc damaged the block");
    /* realloc(p, 0): glibc frees and returns NULL; either way nothing leaks. */
    q = p_realloc(p, 0);
    p_free(q);
    ok("realloc");

    unsigned char *a = p_reallocarray(NULL, 100, 8);
    CHECK(a != NULL, "p_reallocarray(NULL, 100, 8)");
    fill(a, 800, 9);
    unsigned char *b = p_reallocarray(a, 1000, 8);
    CHECK(b && same(b, 800, 9), "reallocarray grow lost contents");
    errno = 0;
    void *c = p_reallocarray(b, SIZE_MAX / 4, 8);
    CHECK(c == NULL && errno == ENOMEM, "reallocarray overflow = %p errno %d", c, errno);
    CHECK(same(b, 800, 9), "failed reallocarray damaged the block");
    p_free(b);
    ok("reallocarray");
}

static void check_aligned(void)
{
    static const size_t asz[] = { 1, 24, 100, 4096, 5000, 70000, 300000 };
    for (size_t align = sizeof(void *); align <= ((size_t)1 << 20); align <<= 1)
        for (size_t i = 0; i < sizeof asz / sizeof asz[0]; i++) {
            void *p = NULL;
            int r = posix_memalign(&p, align, asz[i]);
            CHECK(r == 0 && p, "posix_memalign(%zu, %zu) = %d", align, asz[i], r);
            if (!p)
                continue;
            CHECK(((uintptr_t)p & (align - 1)) == 0, "posix_memalign(%zu) gave %p", align, p);
            CHECK(malloc_usable_size(p) >= asz[i], "posix_memalign usable size");
            memset(p, 0x11, asz[i]);
            p_free(p);

            p = aligned_alloc(align, asz[i]);
            CHECK(p && ((uintptr_t)p & (align - 1)) == 0, "aligned_alloc(%zu, %zu) = %p", align, asz[i], p);
            if (p)
                memset(p, 0x22, asz[i]);
            p_free(p);

            p = memalign(align, asz[i]);
            CHECK(p && ((uintptr_t)p & (align - 1)) == 0, "memalign(%zu, %zu) = %p", align, asz[i], p);
            if (p)
                memset(p, 0x33, asz[i]);
            p_free(p);
        }
    /* Above 4 MiB (loam's segment size), an alignment is no longer met by
     * where a mapping starts anyway. */
    static const size_t hsz[] = { 16, (5u << 20) + 3 };
    for (size_t align = (size_t)8 << 20; align <= ((size_t)1 << 30); align <<= 1)
        for (size_t i = 0; i < sizeof hsz / sizeof hsz[0]; i++) {
            size_t n = hsz[i];
            void *p = NULL;
            int r = posix_memalign(&p, align, n);
            CHECK(r == 0 && p && ((uintptr_t)p & (align - 1)) == 0,
                  "posix_memalign(%zu, %zu) = %d, %p", align, n, r, p);
            CHECK(!p || malloc_usable_size(p) >= n, "posix_memalign(%zu, %zu) usable size", align, n);
            if (p)
                ((char *)p)[0] = ((char *)p)[n - 1] = 0x44;
            p_free(p);

            p = aligned_alloc(align, n);
            CHECK(p && ((uintptr_t)p & (align - 1)) == 0, "aligned_alloc(%zu, %zu) = %p", align, n, p);
            if (p)
                ((char *)p)[0] = ((char *)p)[n - 1] = 0x55;
            p_free(p);

            p = memalign(align, n);
            CHECK(p && ((uintptr_t)p & (align - 1)) == 0, "memalign(%zu, %zu) = %p", align, n, p);
            if (p)
                ((char *)p)[0] = ((char *)p)[n - 1] = 0x66;
            p_free(p);
        }
    void *p = (void *)1;
    CHECK(posix_memalign(&p, 3, 100) == EINVAL && p == (void *)1, "posix_memalign(3) not EINVAL");
    CHECK(posix_memalign(&p, 24, 100) == EINVAL, "posix_memalign(24) not EINVAL");
    CHECK(posix_memalign(&p, 4, 100) == EINVAL, "posix_memalign(4): below sizeof(void *), not EINVAL");
    CHECK(posix_memalign(&p, 64, SIZE_MAX - 1000) == ENOMEM, "posix_memalign huge not ENOMEM");
    /* glibc's memalign takes any alignment: up to 16 (0 too) it is malloc,
     * else a non-power of two rounds up to the next one. Programs pass
     * sizeof of a struct, or 0; loam refused them (NULL, EINVAL). */
    static const size_t odd[] = { 0, 1, 3, 12, 24, 48, 100, 4097, 65537, ((size_t)1 << 20) + 1 };
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        size_t pow2 = 16;
        while (pow2 < odd[i])
            pow2 <<= 1;
        errno = 0;
        p = memalign(odd[i], 100);
        CHECK(p && ((uintptr_t)p & (pow2 - 1)) == 0, "memalign(%zu, 100) = %p, errno %d (expected a block aligned to %zu)",
              odd[i], p, errno, pow2);
        if (p)
            memset(p, 0x77, 100);
        p_free(p);
    }
    errno = 0;
    p = memalign(((size_t)1 << 63) + 1, 100);    /* no power of two above it */
    CHECK(!p && errno == EINVAL, "memalign(2^63 + 1) = %p, errno %d (expected EINVAL)", p, errno);
    ok("posix_memalign, aligned_alloc, memalign");

    long page = sysconf(_SC_PAGESIZE);
    static const size_t vsz[] = { 1, 100, 4095, 4096, 4097, 10000, 200000 };
    for (size_t i = 0; i < sizeof vsz / sizeof vsz[0]; i++) {
        unsigned char *v = valloc(vsz[i]);
        CHECK(v && ((uintptr_t)v % (uintptr_t)page) == 0, "valloc(%zu) = %p", vsz[i], (void *)v);
        CHECK(v && malloc_usable_size(v) >= vsz[i], "valloc usable size");
        if (v)
            memset(v, 0x44, vsz[i]);
        p_free(v);
        size_t rounded = (vsz[i] + (size_t)page - 1) / (size_t)page * (size_t)page;
        unsigned char *pv = pvalloc(vsz[i]);
        CHECK(pv && ((uintptr_t)pv % (uintptr_t)page) == 0, "pvalloc(%zu) = %p", vsz[i], (void *)pv);
        CHECK(pv && malloc_usable_size(pv) >= rounded, "pvalloc(%zu): usable %zu < %zu", vsz[i],
              pv ? malloc_usable_size(pv) : 0, rounded);
        if (pv)
            memset(pv, 0x55, rounded);     /* the whole rounded size is the caller's */
        p_free(pv);
    }
    ok("valloc, pvalloc");
}

/* ---- libc's own allocations ---------------------------------------------------- */

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void check_libc(void)
{
    char *s = NULL;
    int n = asprintf(&s, "%s-%d-%0200d", "asprintf", 42, 7);
    CHECK(n == 212 && s && strncmp(s, "asprintf-42-000", 15) == 0, "asprintf");
    free(s);

    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    for (int i = 0; i < 10000; i++)
        fprintf(m, "line %d\n", i);
    fclose(m);
    CHECK(len == 98890, "open_memstream length %zu", len);
    free(buf);

    const char text[] = "alpha\nbeta\ngamma\n";
    FILE *f = fmemopen((void *)text, sizeof text - 1, "r");
    char *line = NULL;
    size_t cap = 0;
    int lines = 0;
    while (getline(&line, &cap, f) > 0)
        lines++;
    free(line);
    fclose(f);
    CHECK(lines == 3, "getline read %d lines", lines);

    int *v = p_malloc(200000 * sizeof *v);
    unsigned x = 1;
    for (int i = 0; i < 200000; i++)
        v[i] = (int)((x = x * 1103515245u + 12345u) >> 1);
    qsort(v, 200000, sizeof *v, cmp_int);   /* glibc's qsort allocates a buffer */
    int sorted = 1;
    for (int i = 1; i < 200000; i++)
        sorted &= v[i - 1] <= v[i];
    CHECK(sorted, "qsort");
    p_free(v);

    setenv("LOAM_PROBE_VAR", "some value", 1);
    CHECK(strcmp(getenv("LOAM_PROBE_VAR"), "some value") == 0, "setenv");
    unsetenv("LOAM_PROBE_VAR");
    ok("libc allocations (asprintf, open_memstream, getline, qsort, setenv)");
}

/* ---- threads --------------------------------------------------------------------- */

#define NTHREADS 4
#define NSHARED  256
static _Atomic(unsigned char *) shared[NSHARED];     /* block, first byte = its size class tag */
static atomic_int thread_errors;
static atomic_int stop_background;

static size_t tsize(unsigned r)
{
    switch (r % 16) {
    case 0: return 20000 + r % 200000;
    case 1: case 2: return 1024 + r % 8192;
    default: return 1 + r % 700;
    }
}

/* Blocks carry their size and a pattern; whoever frees them checks them. */
static unsigned char *tmake(unsigned r)
{
    size_t n = tsize(r) + sizeof(size_t);
    unsigned char *p = p_malloc(n);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof n);
    memset(p + sizeof n, (int)(n & 0xff), n - sizeof n);
    return p;
}

static void tcheck_free(unsigned char *p)
{
    size_t n;
    memcpy(&n, p, sizeof n);
    if (p[sizeof n] != (unsigned char)n || p[n - 1] != (unsigned char)n || p[n / 2 + 4] != (unsigned char)n)
        atomic_fetch_add(&thread_errors, 1);
    p_free(p);
}

static void *thread_main(void *arg)
{
    unsigned r = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    unsigned char *local[64] = { 0 };
    for (int op = 0; op < 200000; op++) {
        r = r * 1103515245u + 12345u;
        unsigned k = (r >> 8) % 64;
        if (local[k]) {
            if (r & 0x10000) {
                /* hand over to whichever thread takes the shared slot next */
                unsigned char *old = atomic_exchange(&shared[(r >> 17) % NSHARED], local[k]);
                if (old)
                    tcheck_free(old);
            } else {
                tcheck_free(local[k]);
            }
            local[k] = NULL;
        } else {
            local[k] = tmake(r >> 4);
            if (!local[k])
                atomic_fetch_add(&thread_errors, 1);
        }
        if ((op & 4095) == 0) {
            /* realloc and calloc in threads too */
            unsigned char *c = p_calloc(10, 10 + (r >> 20) % 50);
            unsigned char *g = p_realloc(c, 5000);
            if (!g || g[99] != 0)
                atomic_fetch_add(&thread_errors, 1);
            p_free(g);
        }
    }
    for (int k = 0; k < 64; k++)
        if (local[k])
            tcheck_free(local[k]);
    return NULL;
}

static void *background(void *arg)
{
    (void)arg;
    unsigned r = 77;
    while (!atomic_load(&stop_background)) {
        r = r * 1103515245u + 12345u;
        unsigned char *p = tmake(r >> 4);
        if (p)
            tcheck_free(p);
    }
    return NULL;
}

static void check_threads(void)
{
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        CHECK(pthread_create(&t[i], NULL, thread_main, (void *)(uintptr_t)i) == 0, "pthread_create");
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < NSHARED; i++) {
        unsigned char *p = atomic_exchange(&shared[i], NULL);
        if (p)
            tcheck_free(p);
    }
    CHECK(atomic_load(&thread_errors) == 0, "%d damaged blocks or failed allocations in threads",
          atomic_load(&thread_errors));
    ok("4 threads with cross-thread frees");
}

/* ---- fork --------------------------------------------------------------------------- */

static void *child_thread(void *arg)
{
    for (int i = 0; i < 10000; i++)
        p_free(p_malloc((size_t)(i % 3000)));
    return arg;
}

static int child_work(void)
{
    alarm(20);
    int bad = 0;
    for (int i = 0; i < 20000; i++) {
        unsigned char *p = tmake((unsigned)i * 2654435761u);
        if (!p)
            bad++;
        else
            tcheck_free(p);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, child_thread, NULL) != 0)
        bad++;
    else
        pthread_join(t, NULL);
    return bad || atomic_load(&thread_errors) ? 1 : 0;
}

static void check_fork(void)
{
    /* fork while two threads allocate */
    pthread_t bg[2];
    atomic_store(&stop_background, 0);
    for (int i = 0; i < 2; i++)
        pthread_create(&bg[i], NULL, background, NULL);
    fflush(stdout);
    int failed = 0;
    for (int k = 0; k < 10; k++) {
        usleep(2000);
        pid_t pid = fork();
        if (pid < 0) {
            failed++;
            continue;
        }
        if (pid == 0)
            exit(child_work());         /* a real exit: atexit handlers run */
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            printf("FAIL: child %d: %s %d\n", k, WIFSIGNALED(status) ? "signal" : "exit status",
                   WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            failed++;
        }
    }
    /* popen and system fork (or vfork/posix_spawn) and exec */
    FILE *pp = popen("echo from-a-child", "r");
    char line[64] = "";
    CHECK(pp && fgets(line, sizeof line, pp) && strcmp(line, "from-a-child\n") == 0, "popen read '%s'", line);
    if (pp)
        CHECK(pclose(pp) == 0, "pclose");
    CHECK(system("exit 3") != -1, "system");
    atomic_store(&stop_background, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(bg[i], NULL);
    CHECK(failed == 0, "%d forked children failed", failed);
    ok("fork while threads allocate; popen; system");
}

/* ---- dlopen ------------------------------------------------------------------------- */

static void check_dlopen(void)
{
    for (int round = 0; round < 3; round++) {
        void *h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
        CHECK(h != NULL, "dlopen libm.so.6: %s", dlerror());
        if (!h)
            return;
        double (*cosine)(double) = (double (*)(double))dlsym(h, "cos");
        CHECK(cosine && cosine(0.0) == 1.0, "cos from libm");
        CHECK(dlclose(h) == 0, "dlclose");
    }
    /* a failing dlopen: dlerror's message is allocated by libc */
    void *none = dlopen("libdoes-not-exist-loam.so.9", RTLD_NOW);
    CHECK(none == NULL, "dlopen of a missing library succeeded");
    const char *msg = dlerror();
    CHECK(msg && strstr(msg, "libdoes-not-exist-loam"), "dlerror message");
    ok("dlopen, dlsym, dlclose, dlerror");
}

/* ---- --which --------------------------------------------------------------------------- */

/* malloc_trim and mallinfo2 say what glibc's say: a block above every
 * mmap threshold (glibc's moves up to 32 MiB) is counted in hblkhd while it
 * lives; small blocks in uordblks; a trim returns 0 or 1 and leaves no
 * more memory held than before it. */
static void check_mallinfo_and_trim(void)
{
    size_t huge = (size_t)40 << 20;
    struct mallinfo2 before = mallinfo2();
    unsigned char *b = p_malloc(huge);
    CHECK(b != NULL, "malloc(40 MiB)");
    struct mallinfo2 holding = mallinfo2();
    CHECK(holding.hblks >= 1 && holding.hblkhd >= before.hblkhd + huge,
          "mallinfo2 with a 40 MiB block: hblks %zu, hblkhd %zu (before %zu)", holding.hblks,
          holding.hblkhd, before.hblkhd);
    p_free(b);
    struct mallinfo2 after = mallinfo2();
    CHECK(after.hblkhd + huge <= holding.hblkhd, "hblkhd %zu after the free (holding: %zu)", after.hblkhd,
          holding.hblkhd);
    enum { N = 200 };
    void *small[N];
    for (int i = 0; i < N; i++) {
        small[i] = p_malloc(20000);
        CHECK(small[i] != NULL, "malloc(20000)");
        if (small[i])
            memset(small[i], 1, 20000);
    }
    struct mallinfo2 used = mallinfo2();
    CHECK(used.uordblks >= after.uordblks + N * 20000 / 2, "uordblks %zu with %d blocks of 20000 (before %zu)",
          used.uordblks, N, after.uordblks);
    CHECK(used.arena >= used.uordblks, "arena %zu below uordblks %zu", used.arena, used.uordblks);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"   /* glibc 2.33 on: still there */
    struct mallinfo old = mallinfo();
#pragma GCC diagnostic pop
    CHECK(old.uordblks > 0 && (size_t)old.uordblks <= used.uordblks + (1u << 20), "mallinfo uordblks %d",
          old.uordblks);
    for (int i = 0; i < N; i++)
        p_free(small[i]);
    struct mallinfo2 freed = mallinfo2();
    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "malloc_trim returned %d", r);
    struct mallinfo2 trimmed = mallinfo2();
    CHECK(trimmed.arena <= freed.arena, "malloc_trim grew the arena: %zu -> %zu", freed.arena, trimmed.arena);
    ok("mallinfo2, mallinfo, malloc_trim");
}

static int which(void)
{
    static const char *names[] = { "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
                                   "aligned_alloc", "memalign", "valloc", "pvalloc", "malloc_usable_size",
                                   "malloc_trim", "mallinfo2", "mallinfo" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *f = dlsym(RTLD_DEFAULT, names[i]);
        Dl_info info;
        const char *file = "?";
        if (f && dladdr(f, &info) && info.dli_fname) {
            file = strrchr(info.dli_fname, '/');
            file = file ? file + 1 : info.dli_fname;
        }
        printf("%s %s\n", names[i], file);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--which") == 0)
        return which();
    check_before_main();
    check_malloc();
    check_calloc();
    check_realloc();
    check_aligned();
    check_libc();
    check_threads();
    check_fork();
    check_dlopen();
    check_mallinfo_and_trim();
    /* a big one at the end, touched through */
    size_t big = (size_t)64 << 20;
    unsigned char *b = p_malloc(big);
    CHECK(b != NULL, "malloc(64 MiB)");
    if (b) {
        for (size_t i = 0; i < big; i += 4096)
            b[i] = (unsigned char)i;
        unsigned char *b2 = p_realloc(b, big * 2);
        CHECK(b2 && b2[big - 4096] == (unsigned char)(big - 4096), "realloc 64 -> 128 MiB");
        p_free(b2 ? b2 : b);
    }
    ok("64 MiB block, realloc to 128 MiB");
    if (failures) {
        printf("probe: %d checks failed\n", failures);
        return 1;
    }
    printf("probe: all checks passed\n");
    return 0;
}
