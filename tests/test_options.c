/* Options: loam_option_set / loam_option_get / loam_options_parse and the
 * LOAM_OPTIONS environment variable, for every documented key, plus the
 * observable effect of the ones that change behaviour.
 *
 * Options are process-wide; Criterion runs each test in its own process, so
 * each test starts from the defaults. */
#define _GNU_SOURCE
#include "harness.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loam.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

extern char **environ;

static const char *const keys[] = { "mmap_threshold", "arena_max", "decay_ms", "verbose",
                                    "track_requested", "tcache_max", "tcache_budget", "retain_max",
                                    "purge_thread" };
#define NKEYS (sizeof keys / sizeof *keys)

/* Capture what is written to fd 2 (by stdio or write(2)) between
 * capture_begin() and captured_stderr(). */
static int g_saved_err = -1, g_cap_read = -1;

static void capture_begin(void)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(stderr);
    g_saved_err = dup(2);
    dup2(fds[1], 2);
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    g_cap_read = fds[0];
}

static const char *captured_stderr(void)
{
    static char buf[16384];
    fflush(stderr);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < sizeof buf && (r = read(g_cap_read, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = 0;
    dup2(g_saved_err, 2);
    return buf;
}

static int defaults_untouched(void)
{
    const char *e = getenv("LOAM_OPTIONS");
    return e == NULL || *e == 0;
}

/* ---- defaults ------------------------------------------------------------- */

Test(options, documented_defaults)
{
    if (!defaults_untouched())
        cr_skip_test("LOAM_OPTIONS is set; defaults are not observable");
    cr_assert_eq(loam_option_get("mmap_threshold"), 131072);
    cr_assert_eq(loam_option_get("decay_ms"), 250);
    cr_assert_eq(loam_option_get("purge_thread"), 1);
    cr_assert_eq(loam_option_get("verbose"), 0);
    cr_assert_eq(loam_option_get("tcache_max"), 8192);
    cr_assert_eq(loam_option_get("tcache_budget"), 32 * (long)MiB);
    cr_assert_eq(loam_option_get("retain_max"), 4L * 1024 * 1024);
    cr_assert_eq(loam_option_get("huge_pages"), 1);
    long tr = loam_option_get("track_requested");
    cr_assert(tr == 0 || tr == 1, "track_requested default %ld", tr);
}

/* loam.h: "arena_max  arenas per heap (default 8 x CPUs)": get reports the value in force. */
Test(options, arena_max_default_is_8_x_cpus)
{
    if (!defaults_untouched())
        cr_skip_test("LOAM_OPTIONS is set; defaults are not observable");
    long cpus_onln = sysconf(_SC_NPROCESSORS_ONLN), cpus_conf = sysconf(_SC_NPROCESSORS_CONF);
    long am = loam_option_get("arena_max");
    cr_assert(am == 8 * cpus_onln || am == 8 * cpus_conf, "arena_max default %ld, expected 8 x %ld CPUs",
              am, cpus_onln);
}

/* ---- set / get ------------------------------------------------------------- */

Test(options, set_get_every_key)
{
    static const long values[NKEYS] = { 262144, 3, 250, 1, 0, 17, 8L << 20 };
    for (size_t i = 0; i < NKEYS; i++) {
        cr_assert_eq(loam_option_set(keys[i], values[i]), 0, "loam_option_set(\"%s\", %ld) rejected",
                     keys[i], values[i]);
        cr_assert_eq(loam_option_get(keys[i]), values[i], "%s reads back %ld, set %ld", keys[i],
                     loam_option_get(keys[i]), values[i]);
    }
    /* a second value for each */
    static const long again[NKEYS] = { 65536, 1, 0, 0, 1, 0, 0 };
    for (size_t i = 0; i < NKEYS; i++) {
        cr_assert_eq(loam_option_set(keys[i], again[i]), 0, "%s = %ld rejected", keys[i], again[i]);
        cr_assert_eq(loam_option_get(keys[i]), again[i]);
    }
}

Test(options, unknown_key_is_rejected_with_a_warning)
{
    capture_begin();
    cr_assert_eq(loam_option_set("no_such_option", 1), -1);
    cr_assert_eq(loam_option_get("no_such_option"), -1);
    cr_assert_eq(loam_option_set("", 1), -1);
    cr_assert_eq(loam_option_get(""), -1);
    cr_assert_eq(loam_option_set("MMAP_THRESHOLD_X", 1), -1);
    /* the known keys are unchanged and loam still works */
    void *p = loam_malloc(loam_heap_default(), 10);
    cr_assert_not_null(p);
    loam_free(p);
    const char *err = captured_stderr();
    cr_assert(strstr(err, "no_such_option") != NULL,
              "no warning on stderr naming the unknown key; stderr was: \"%s\"", err);
}

Test(options, bad_values_are_rejected_and_leave_the_value)
{
    capture_begin();
    for (size_t i = 0; i < NKEYS; i++) {
        long before = loam_option_get(keys[i]);
        cr_assert_eq(loam_option_set(keys[i], -1), -1, "%s = -1 accepted", keys[i]);
        cr_assert_eq(loam_option_set(keys[i], -1000000), -1, "%s = -1000000 accepted", keys[i]);
        cr_assert_eq(loam_option_get(keys[i]), before, "%s changed by a rejected set", keys[i]);
    }
    /* out of the documented ranges */
    long thr = loam_option_get("mmap_threshold");
    cr_assert_eq(loam_option_set("mmap_threshold", 524288 + 1), -1, "mmap_threshold above its max accepted");
    cr_assert_eq(loam_option_set("mmap_threshold", 64 * (long)MiB), -1);
    cr_assert_eq(loam_option_get("mmap_threshold"), thr);
    cr_assert_eq(loam_option_set("mmap_threshold", 524288), 0, "mmap_threshold = its max rejected");
    cr_assert_neq(captured_stderr()[0], 0, "rejected values produced no warning");
}

Test(options, null_key_does_not_crash)
{
    capture_begin();
    cr_assert_eq(loam_option_set(NULL, 1), -1);
    cr_assert_eq(loam_option_get(NULL), -1);
}

/* ---- loam_options_parse ------------------------------------------------------ */

/* loam_options_parse as the very first loam call (as an embedder would do at
 * startup): the settings must survive loam's lazy initialisation. */
Test(options, parse_before_any_other_call_is_kept)
{
    cr_assert_eq(loam_options_parse("mmap_threshold=262144,decay_ms=33"), 0);
    cr_assert_eq(loam_option_get("mmap_threshold"), 262144,
                 "options parsed before initialisation were reset to the defaults");
    cr_assert_eq(loam_option_get("decay_ms"), 33);
}

Test(options, set_before_any_other_call_is_kept)
{
    cr_assert_eq(loam_option_set("decay_ms", 44), 0);
    cr_assert_eq(loam_option_get("decay_ms"), 44);
}

Test(options, parse_good_text)
{
    (void)loam_heap_default();   /* initialised (see parse_before_any_other_call_is_kept) */
    cr_assert_eq(loam_options_parse("mmap_threshold=262144,arena_max=4,verbose=1"), 0);
    cr_assert_eq(loam_option_get("mmap_threshold"), 262144);
    cr_assert_eq(loam_option_get("arena_max"), 4);
    cr_assert_eq(loam_option_get("verbose"), 1);
    cr_assert_eq(loam_options_parse("decay_ms=5"), 0);
    cr_assert_eq(loam_option_get("decay_ms"), 5);
    cr_assert_eq(loam_options_parse("tcache_max=0,track_requested=0"), 0);
    cr_assert_eq(loam_option_get("tcache_max"), 0);
    cr_assert_eq(loam_option_get("track_requested"), 0);
    cr_assert_eq(loam_options_parse(""), 0);
    cr_assert_eq(loam_option_get("decay_ms"), 5);
    cr_assert_eq(loam_options_parse("verbose=0"), 0);   /* no report at exit */
}

Test(options, parse_counts_rejected_entries)
{
    capture_begin();
    long thr = loam_option_get("mmap_threshold");
    cr_assert_eq(loam_options_parse("mmap_threshold=abc"), 1);
    cr_assert_eq(loam_option_get("mmap_threshold"), thr, "a rejected entry changed the value");
    cr_assert_eq(loam_options_parse("mmap_threshold=12abc"), 1, "trailing garbage accepted");
    cr_assert_eq(loam_options_parse("mmap_threshold="), 1);
    cr_assert_eq(loam_options_parse("mmap_threshold"), 1);
    cr_assert_eq(loam_options_parse("=5"), 1);
    cr_assert_eq(loam_options_parse("decay_ms=-5"), 1);
    cr_assert_eq(loam_option_get("mmap_threshold"), thr);
    /* good entries around bad ones still apply */
    cr_assert_eq(loam_options_parse("bogus=1,decay_ms=77,arena_max=x,tcache_max=9"), 2);
    cr_assert_eq(loam_option_get("decay_ms"), 77);
    cr_assert_eq(loam_option_get("tcache_max"), 9);
    cr_assert_eq(loam_options_parse("a=1,b=2,c=3"), 3);
    cr_assert_neq(captured_stderr()[0], 0, "rejected entries produced no warning");
}

Test(options, parse_accepts_k_m_g_suffixes_in_either_case)
{
    (void)loam_heap_default();
    static const struct { const char *text; long value; } cases[] = {
        { "retain_max=3k", 3L << 10 },  { "retain_max=5K", 5L << 10 },
        { "retain_max=7m", 7L << 20 },  { "retain_max=9M", 9L << 20 },
        { "retain_max=1g", 1L << 30 },  { "retain_max=2G", 2L << 30 },
        { "retain_max=0x10k", 16L << 10 }, { "retain_max=1024g", 1L << 40 },
        { "tcache_budget=64m", 64L << 20 }, { "gc_min_bytes=1G", 1L << 30 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cr_assert_eq(loam_options_parse(cases[i].text), 0, "\"%s\" rejected", cases[i].text);
        const char *eq = strchr(cases[i].text, '=');
        char key[32];
        snprintf(key, sizeof key, "%.*s", (int)(eq - cases[i].text), cases[i].text);
        cr_assert_eq(loam_option_get(key), cases[i].value, "\"%s\" reads back %ld", cases[i].text,
                     loam_option_get(key));
    }
}

/* A value past a long, with or without a suffix, is a bad value: it must not
 * wrap into one that passes the key's range (2^55 KiB is 2^65: it wrapped to 0). */
Test(options, parse_rejects_a_value_too_big_for_a_long)
{
    (void)loam_heap_default();
    cr_assert_eq(loam_options_parse("retain_max=12345"), 0);
    static const char *const bad[] = {
        "retain_max=36028797018963968K", "retain_max=-36028797018963968K",
        "retain_max=9223372036854775807k", "retain_max=9007199254740992m",
        "retain_max=8589934592g", "retain_max=99999999999999999999",
        "retain_max=k", "retain_max=1kk", "retain_max=1kb",
    };
    capture_begin();
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(loam_options_parse(bad[i]), 1, "\"%s\" not rejected", bad[i]);
        cr_assert_eq(loam_option_get("retain_max"), 12345, "\"%s\" set retain_max to %ld", bad[i],
                     loam_option_get("retain_max"));
    }
    /* just past the key's range, through the suffix */
    cr_assert_eq(loam_options_parse("retain_max=1025g"), 1);
    cr_assert_eq(loam_option_get("retain_max"), 12345);
    const char *err = captured_stderr();
    cr_assert(strstr(err, "bad value '36028797018963968K'") != NULL,
              "no bad-value warning for the overflowing value; stderr was: \"%s\"", err);
}

Test(options, parse_null_does_not_crash)
{
    cr_assert_eq(loam_options_parse(NULL), 0);
}

/* ---- LOAM_OPTIONS from the environment ---------------------------------------- */

/* env_variable_is_read re-executes this binary with LOAM_OPTIONS set and
 * LOAM_TEST_ENV_PROBE=1. The re-executed process never reaches Criterion:
 * this constructor checks the options loam read from the environment and
 * exits with 0 (all applied) or 10 + the index of the first wrong one. */
__attribute__((constructor)) static void env_probe(void)
{
    if (!getenv("LOAM_TEST_ENV_PROBE"))
        return;
    if (loam_option_get("decay_ms") != 777)
        _exit(10);
    if (loam_option_get("tcache_max") != 5)
        _exit(11);
    if (loam_option_get("mmap_threshold") != 262144)
        _exit(12);
    loam_heap_t *h = loam_heap_new(NULL);   /* and they take effect */
    void *p = loam_malloc(h, 200 * 1024);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    if (st.large_count != 0)
        _exit(13);
    loam_free(p);
    _exit(0);
}

Test(options, env_variable_is_read, .timeout = 30)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(n, 0);
    self[n] = 0;
    size_t envc = 0;
    while (environ[envc])
        envc++;
    char **env = calloc(envc + 3, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < envc; i++)
        if (strncmp(environ[i], "LOAM_OPTIONS=", 13) != 0)
            env[k++] = environ[i];
    env[k++] = "LOAM_OPTIONS=decay_ms=777,tcache_max=5,mmap_threshold=262144";
    env[k++] = "LOAM_TEST_ENV_PROBE=1";
    env[k] = NULL;
    char *argv[] = { self, NULL };
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    cr_assert_eq(posix_spawn(&pid, self, &fa, NULL, argv, env), 0);
    /* wait at most 10 s: a hang is a failure too, and must not leave the child behind */
    int status = 0, waited = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && waited < 1000) {
        usleep(10000);
        waited++;
    }
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        cr_assert_fail("with LOAM_OPTIONS set, the first loam call hangs (probe killed after 10 s)");
    }
    cr_assert_eq(r, pid);
    static const char *const what[] = { "decay_ms", "tcache_max", "mmap_threshold",
                                        "mmap_threshold's effect on large_count" };
    cr_assert(WIFEXITED(status), "the probe process died (status %#x)", status);
    int code = WEXITSTATUS(status);
    cr_assert_eq(code, 0, "LOAM_OPTIONS=decay_ms=777,tcache_max=5,mmap_threshold=262144: %s was not "
                 "applied (probe exit %d)", code >= 10 && code <= 13 ? what[code - 10] : "?", code);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
}

/* ---- effects ------------------------------------------------------------- */

static size_t large_count_after(loam_heap_t *h, size_t n)
{
    void *p = loam_malloc(h, n);
    cr_assert_not_null(p);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    loam_free(p);
    return st.large_count;
}

Test(options, mmap_threshold_default_boundary)
{
    if (!defaults_untouched())
        cr_skip_test("LOAM_OPTIONS is set");
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_eq(large_count_after(h, 64 * KiB), 0);
    cr_assert_eq(large_count_after(h, 128 * KiB), 0, "exactly mmap_threshold is not above it");
    cr_assert_eq(large_count_after(h, 128 * KiB + 1), 1, "above mmap_threshold is a large block");
    cr_assert_eq(large_count_after(h, 200 * KiB), 1);
    cr_assert_eq(large_count_after(h, 4 * MiB), 1);
    loam_heap_destroy(h);
}

Test(options, mmap_threshold_moves_the_large_path)
{
    cr_assert_eq(loam_option_set("mmap_threshold", 262144), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    cr_assert_eq(large_count_after(h, 200 * KiB), 0, "200 KiB is below a 256 KiB threshold");
    cr_assert_eq(large_count_after(h, 256 * KiB), 0);
    cr_assert_eq(large_count_after(h, 256 * KiB + 1), 1);
    loam_heap_destroy(h);

    cr_assert_eq(loam_option_set("mmap_threshold", 65536), 0);
    h = loam_heap_new(NULL);
    cr_assert_eq(large_count_after(h, 64 * KiB), 0);
    cr_assert_eq(large_count_after(h, 100 * KiB), 1, "100 KiB is above a 64 KiB threshold");
    loam_heap_destroy(h);

    cr_assert_eq(loam_options_parse("mmap_threshold=524288"), 0);
    h = loam_heap_new(NULL);
    cr_assert_eq(large_count_after(h, 500 * KiB), 0);
    cr_assert_eq(large_count_after(h, 600 * KiB), 1);
    loam_heap_destroy(h);
}

Test(options, track_requested_controls_requested_bytes)
{
    loam_stats_t st;
    cr_assert_eq(loam_option_set("track_requested", 0), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 100);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.requested_tracked, 0);
    cr_assert_eq(st.requested_bytes, 0, "requested_bytes is 0 when not tracked");
    loam_free(p);
    loam_heap_destroy(h);

    cr_assert_eq(loam_option_set("track_requested", 1), 0);
    h = loam_heap_new(NULL);
    p = loam_malloc(h, 100);
    loam_heap_stats(h, &st);
    cr_assert_eq(st.requested_tracked, 1);
    cr_assert_eq(st.requested_bytes, 100);
    loam_free(p);
    loam_heap_destroy(h);
}

Test(options, tcache_max_zero_means_no_cache)
{
    cr_assert_eq(loam_option_set("tcache_max", 0), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    void *p[100];
    for (int i = 0; i < 100; i++)
        p[i] = loam_malloc(h, 64);
    for (int i = 0; i < 100; i++)
        loam_free(p[i]);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_eq(st.cached_bytes, 0, "with tcache_max=0, %zu bytes sit in thread caches", st.cached_bytes);
    cr_assert_eq(st.live_blocks, 0);
    loam_heap_destroy(h);
}

Test(options, tcache_max_bounds_the_cache)
{
    cr_assert_eq(loam_option_set("tcache_max", 4), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    void *p[200];
    for (int i = 0; i < 200; i++)
        p[i] = loam_malloc(h, 64);
    for (int i = 0; i < 200; i++)
        loam_free(p[i]);
    void *one = loam_malloc(h, 64);
    size_t us = loam_usable_size(one);
    loam_free(one);
    loam_stats_t st;
    loam_heap_stats(h, &st);
    cr_assert_leq(st.cached_bytes, 4 * us,
                  "tcache_max=4 but %zu bytes are cached for one class", st.cached_bytes);
    loam_heap_destroy(h);
}

/* A thread that mallocs and frees in batches bigger than a bin's first
 * bound (128 blocks) gets a bigger bin, so its batches stay in its cache;
 * never past tcache_max. */
static size_t cached_after_batches(loam_heap_t *h, int batch)
{
    void *p[1000];
    for (int round = 0; round < 12; round++) {
        for (int i = 0; i < batch; i++) {
            p[i] = loam_malloc(h, 64);
            cr_assert_not_null(p[i]);
            memset(p[i], round, 64);
        }
        for (int i = 0; i < batch; i++)
            loam_free(p[i]);
    }
    loam_stats_t st;
    loam_heap_stats(h, &st);
    return st.cached_bytes;
}

Test(options, tcache_bin_grows_for_batches_up_to_tcache_max)
{
    loam_heap_t *h = loam_heap_new(NULL);
    size_t us = 64;
    size_t cached = cached_after_batches(h, 1000);
    cr_assert_geq(cached, 1000 * us, "batches of 1000: only %zu bytes stay cached", cached);
    cr_assert_leq(cached, 128 * KiB, "a bin past 128 KiB: %zu bytes", cached);
    loam_heap_destroy(h);

    cr_assert_eq(loam_option_set("tcache_max", 300), 0);
    h = loam_heap_new(NULL);
    cached = cached_after_batches(h, 1000);
    cr_assert_gt(cached, 128 * us, "the bin did not grow (%zu bytes)", cached);
    cr_assert_leq(cached, 300 * us, "tcache_max=300 but %zu bytes are cached", cached);
    loam_heap_destroy(h);
}

Test(options, arena_max_one_still_works)
{
    cr_assert_eq(loam_option_set("arena_max", 1), 0);
    loam_heap_t *h = loam_heap_new(NULL);
    void *p[1000];
    for (int i = 0; i < 1000; i++)
        p[i] = loam_malloc(h, (size_t)i + 1);
    for (int i = 0; i < 1000; i++)
        loam_free(p[i]);
    loam_heap_destroy(h);
}

Test(options, verbose_prints_statistics_at_exit)
{
    /* verbose=1: "print each heap's statistics at exit". Check in a child. */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        dup2(fds[1], 1);
        loam_option_set("verbose", 1);
        loam_heap_t *h = loam_heap_new(NULL);
        void *p = loam_malloc(h, 1000);
        (void)p;
        exit(0);   /* not _exit: atexit handlers run */
    }
    close(fds[1]);
    char buf[16384];
    size_t len = 0;
    ssize_t r;
    while (len + 1 < sizeof buf && (r = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = 0;
    close(fds[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    cr_assert(strstr(buf, "live") != NULL, "verbose=1 printed no statistics at exit: \"%s\"", buf);
}
