/* main.c — the lisp command.
 *
 *   lisp [options] [file ... | -e expr ...]     (no file: read stdin)
 *     -q, --quiet          no heap statistics at exit
 *     --stats=text|json    format of the statistics at exit (default text;
 *                          also the environment: LISP_STATS=text|json|none)
 *     --limit=BYTES        cap the heap (K, M, G suffixes); past it an
 *                          allocation collects, then fails: "out of memory"
 *     --manual             run the heap in manual mode (nothing reclaimed);
 *                          at exit a leak check counts the unreachable blocks
 *     --generational       a LOAM_GENERATIONAL heap: most collections minor
 *     -v                   the resource finalizer reports on stderr
 */
#include "lisp.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage(void)
{
    fputs("usage: lisp [-q] [-v] [--stats=text|json] [--limit=BYTES] [--manual] [--generational] "
          "[file ... | -e expr ...]\n", stderr);
    exit(2);
}

static size_t parse_size(const char *s)
{
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': n <<= 10; end++; break;
    case 'm': case 'M': n <<= 20; end++; break;
    case 'g': case 'G': n <<= 30; end++; break;
    }
    if (end == s || *end)
        usage();
    return (size_t)n;
}

/* A source file is read into an atomic block of the collected heap and
 * given back with loam_free as soon as it has run: loam_free is allowed in a
 * collected heap and reclaims the block at once. While it runs, the reader's
 * cursor (an interior pointer on the C stack) keeps it alive anyway. */
static bool run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        perror(path);
        if (f)
            fclose(f);
        return false;
    }
    size_t size = (size_t)st.st_size;
    char *text = gc_alloc(size + 1, LOAM_ATOMIC);
    size_t got = fread(text, 1, size, f);
    fclose(f);
    text[got] = 0;
    bool ok = run_text(text, got);
    loam_free(text);
    return ok;
}

/* stdin may block for a long time: the reads are bracketed by
 * enter/leave blocking so that this thread never holds up a collection. */
static bool run_stdin(void)
{
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    loam_enter_blocking(L.heap);
    for (size_t n; text && (n = fread(text + len, 1, cap - len, stdin)) > 0;) {
        len += n;
        if (len == cap)
            text = realloc(text, cap *= 2);
    }
    loam_leave_blocking(L.heap);
    if (!text) {
        fputs("lisp: out of memory reading stdin\n", stderr);
        return false;
    }
    bool ok = run_text(text, len);
    free(text);
    return ok;
}

/* The process's peak RSS (VmHWM), in KiB; 0 where /proc is not there. */
static long peak_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

static void print_stats(int format)
{
    fflush(stdout);
    if (format == LOAM_STATS_JSON) {
        loam_heap_print_stats(L.heap, stdout, LOAM_STATS_JSON);
        printf("{\"process\":{\"peak_rss_kb\":%ld}}\n", peak_rss_kb());
        return;
    }
    loam_stats_t st;
    loam_heap_stats(L.heap, &st);
    printf("\n;; heap: %zu collections, pauses %.3f ms total, %.3f ms max; "
           "live %zu bytes, peak %zu bytes; process peak RSS %ld KiB\n",
           st.gc_collections, st.gc_pause_total_ns / 1e6, st.gc_pause_max_ns / 1e6,
           st.live_bytes, st.peak_live_bytes, peak_rss_kb());
    loam_heap_print_stats(L.heap, stdout, LOAM_STATS_TEXT);
}

static void report_leak(void *block, size_t size, void *user)
{
    (*(size_t *)user) += size;
}

int main(int argc, char **argv)
{
    char base;
    stack_base = &base;

    heap_options_t opt = { 0 };
    const char *env = getenv("LISP_STATS");
    int stats = env && strcmp(env, "json") == 0 ? LOAM_STATS_JSON
              : env && strcmp(env, "none") == 0 ? -1 : LOAM_STATS_TEXT;
    int first = 1;
    for (; first < argc && argv[first][0] == '-' && argv[first][1]; first++) {
        const char *a = argv[first];
        if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0)
            stats = -1;
        else if (strcmp(a, "--stats=text") == 0)
            stats = LOAM_STATS_TEXT;
        else if (strcmp(a, "--stats=json") == 0)
            stats = LOAM_STATS_JSON;
        else if (strncmp(a, "--limit=", 8) == 0)
            opt.limit = parse_size(a + 8);
        else if (strcmp(a, "--manual") == 0)
            opt.manual = true;
        else if (strcmp(a, "--generational") == 0)
            opt.generational = true;
        else if (strcmp(a, "-v") == 0)
            L.verbose_finalizers = true;
        else if (strcmp(a, "-e") == 0)
            break;
        else
            usage();
    }

    eval_init();
    heap_init(&opt);
    builtins_init();

    bool ok = true;
    if (first == argc)
        ok = run_stdin();
    for (int i = first; i < argc; i++) {
        if (strcmp(argv[i], "-e") == 0) {
            if (++i == argc)
                usage();
            ok &= run_text(argv[i], strlen(argv[i]));
        } else if (strcmp(argv[i], "-") == 0) {
            ok &= run_stdin();
        } else {
            ok &= run_file(argv[i]);
        }
    }
    fflush(stdout);

    if (stats >= 0)
        print_stats(stats);
    if (opt.manual) {
        size_t bytes = 0;
        size_t blocks = loam_leak_check(L.heap, report_leak, &bytes);
        fprintf(stderr, "lisp: leak check: %zu unreachable blocks (%zu bytes) never freed\n",
                blocks, bytes);
    }
    heap_shutdown();
    return ok ? 0 : 1;
}
