/* tests/standalone_shim.h — just enough of Criterion's API to build a test
 * file as a plain program (-DLOAM_TEST_STANDALONE). Criterion cannot run
 * under ThreadSanitizer (its inheritable arena fails: "Could not initialize
 * inheritable arena", Snaipe/Criterion#274), so tests/CMakeLists.txt builds
 * test_threads.c and test_fork.c this way too, as <name>_standalone.
 *
 * Each Test() runs in a process of its own (as with Criterion), one after
 * the other; argv[1], if given, selects tests whose "suite/name" contains it.
 * Messages are optional string-literal formats, as in Criterion. */
#ifndef LOAM_STANDALONE_SHIM_H
#define LOAM_STANDALONE_SHIM_H

#pragma GCC diagnostic ignored "-Wformat-zero-length"   /* a check without a message */

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct shim_test {
    const char *name;
    void (*fn)(void);
} shim_test_t;

static shim_test_t shim_tests[64];
static int shim_ntests;
static int shim_failures;               /* in the test's process */

static inline void shim_register(const char *name, void (*fn)(void))
{
    if (shim_ntests < 64)
        shim_tests[shim_ntests++] = (shim_test_t){ name, fn };
}

/* The trailing named parameters of Test() (.timeout = ...) are dropped. */
#define Test(suite, name, ...)                                                                     \
    static void suite##_##name(void);                                                              \
    __attribute__((constructor)) static void shim_reg_##suite##_##name(void)                      \
    {                                                                                              \
        shim_register(#suite "/" #name, suite##_##name);                                           \
    }                                                                                              \
    static void suite##_##name(void)

static inline __attribute__((format(printf, 6, 7))) void
shim_check(bool ok, bool fatal, const char *file, int line, const char *expr, const char *fmt, ...)
{
    if (ok)
        return;
    fprintf(stderr, "%s:%d: assertion failed: %s", file, line, expr);
    if (fmt && *fmt) {
        fprintf(stderr, "\n    ");
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "\n");
    shim_failures++;
    if (fatal)
        _exit(1);
}

#define SHIM_CHECK(fatal, cond, text, ...) shim_check((cond), (fatal), __FILE__, __LINE__, text, "" __VA_ARGS__)
#define cr_assert(c, ...)             SHIM_CHECK(true, (c), #c, __VA_ARGS__)
#define cr_expect(c, ...)             SHIM_CHECK(false, (c), #c, __VA_ARGS__)
#define cr_assert_eq(a, b, ...)       SHIM_CHECK(true, (a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...)       SHIM_CHECK(false, (a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...)      SHIM_CHECK(true, (a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...)      SHIM_CHECK(true, (a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...)      SHIM_CHECK(false, (a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...)       SHIM_CHECK(false, (a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...)       SHIM_CHECK(true, (a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...)       SHIM_CHECK(true, (a) < (b), #a " < " #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...)      SHIM_CHECK(true, (a) != (b), #a " != " #b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...)      SHIM_CHECK(false, (a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_assert_not_null(p, ...)    SHIM_CHECK(true, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_null(p, ...)        SHIM_CHECK(false, (p) == NULL, #p " == NULL", __VA_ARGS__)

/* A test runs in a process of its own, started afresh: a fork alone would
 * not do under ThreadSanitizer. loam's purge thread runs from load, so the
 * fork is a multi-threaded one, and TSan reports nothing in such a child
 * (checked: a race it reports in the parent goes unreported there). So the
 * child executes this program again, with --one and the test's name. */
static int shim_run_one(const char *name)
{
    for (int i = 0; i < shim_ntests; i++) {
        if (strcmp(shim_tests[i].name, name) != 0)
            continue;
        alarm(900);
        shim_tests[i].fn();
        fflush(NULL);
        return shim_failures ? 1 : 0;   /* a return: TSan makes a run with reports exit 66 */
    }
    fprintf(stderr, "no test named %s\n", name);
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--one") == 0)
        return shim_run_one(argv[2]);
    int failed = 0, ran = 0;
    for (int i = 0; i < shim_ntests; i++) {
        if (argc > 1 && !strstr(shim_tests[i].name, argv[1]))
            continue;
        ran++;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            execl("/proc/self/exe", argv[0], "--one", shim_tests[i].name, (char *)NULL);
            perror("exec");
            _exit(127);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (WIFSIGNALED(status))
            fprintf(stderr, "%s: killed by signal %d\n", shim_tests[i].name, WTERMSIG(status));
        else if (!ok)
            fprintf(stderr, "%s: exit status %d%s\n", shim_tests[i].name, WEXITSTATUS(status),
                    WEXITSTATUS(status) == 66 ? " (ThreadSanitizer reports)" : "");
        printf("[%s] %s\n", ok ? "PASS" : "FAIL", shim_tests[i].name);
        fflush(stdout);
        failed += !ok;
    }
    printf("Tested: %d | Passing: %d | Failing: %d\n", ran, ran - failed, failed);
    return failed || ran == 0 ? 1 : 0;
}

#endif
