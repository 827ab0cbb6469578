/* tests/standalone_shim.h — just enough of Criterion's API to build a test
 * file as a plain program (-DLOAM_TEST_STANDALONE). Criterion cannot run
 * under ThreadSanitizer (its inheritable arena fails: "Could not initialize
 * inheritable arena", Snaipe/Criterion#274), so tests/CMakeLists.txt builds
 * every test file this way in a TSan build, as <name>_standalone.
 *
 * Each Test() runs in a process of its own (as with Criterion), one after
 * the other; argv[1], if given, selects tests whose "suite/name" contains it.
 * Test()'s parameters .signal, .exit_code, .timeout, .init, .fini and
 * .disabled mean what they mean to Criterion. Messages are optional
 * string-literal formats, as in Criterion. */
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

/* Test()'s named parameters, as Criterion takes them: the expected end
 * (a signal, an exit code), a time limit, fixtures. */
typedef struct shim_params {
    int shim_none;                      /* so that no parameter at all is { 0, } */
    int signal, exit_code;
    double timeout;
    void (*init)(void), (*fini)(void);
    const char *description;
    bool disabled;
} shim_params_t;

typedef struct shim_test {
    const char *name;
    void (*fn)(void);
    shim_params_t params;
} shim_test_t;

#define SHIM_MAX_TESTS 128
static shim_test_t shim_tests[SHIM_MAX_TESTS];
static int shim_ntests;
static int shim_failures;               /* in the test's process */

static inline void shim_register(const char *name, void (*fn)(void), shim_params_t params)
{
    if (shim_ntests < SHIM_MAX_TESTS)
        shim_tests[shim_ntests++] = (shim_test_t){ name, fn, params };
}

#define Test(suite, name, ...)                                                                     \
    static void suite##_##name(void);                                                              \
    __attribute__((constructor)) static void shim_reg_##suite##_##name(void)                      \
    {                                                                                              \
        shim_register(#suite "/" #name, suite##_##name, (shim_params_t){ 0, __VA_ARGS__ });        \
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
#define cr_assert_null(p, ...)        SHIM_CHECK(true, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_fail(...)           SHIM_CHECK(true, false, "cr_assert_fail", __VA_ARGS__)
#define cr_log_info(...)              (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))
#define cr_log_error(...)             (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))
/* A skipped test passes, as it ends. */
#define cr_skip_test(...)             (fprintf(stderr, "skipped: " __VA_ARGS__), fputc('\n', stderr), \
                                       fflush(NULL), _exit(0))

/* A test runs in a process of its own, started afresh: a fork alone would
 * not do under ThreadSanitizer. loam's purge thread runs from load, so the
 * fork is a multi-threaded one, and TSan reports nothing in such a child
 * (checked: a race it reports in the parent goes unreported there). So the
 * child executes this program again, with --one and the test's name. */
static int shim_run_one(const char *name)
{
    for (int i = 0; i < shim_ntests; i++) {
        const shim_test_t *t = &shim_tests[i];
        if (strcmp(t->name, name) != 0)
            continue;
        alarm(t->params.timeout > 0 ? (unsigned)t->params.timeout : 900);
        if (t->params.init)
            t->params.init();
        t->fn();
        if (t->params.fini)
            t->params.fini();
        fflush(NULL);
        return shim_failures ? 1 : 0;   /* a return: TSan makes a run with reports exit 66 */
    }
    fprintf(stderr, "no test named %s\n", name);
    return 2;
}

/* Did the test end as it should: by its expected signal, with its expected
 * exit code, or else with 0. */
static bool shim_ended_well(const shim_test_t *t, int status)
{
    if (t->params.signal)
        return WIFSIGNALED(status) && WTERMSIG(status) == t->params.signal;
    return WIFEXITED(status) && WEXITSTATUS(status) == t->params.exit_code;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--one") == 0)
        return shim_run_one(argv[2]);
    int failed = 0, ran = 0;
    for (int i = 0; i < shim_ntests; i++) {
        if ((argc > 1 && !strstr(shim_tests[i].name, argv[1])) || shim_tests[i].params.disabled)
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
        bool ok = shim_ended_well(&shim_tests[i], status);
        if (!ok && WIFSIGNALED(status))
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
