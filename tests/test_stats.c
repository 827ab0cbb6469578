/* Statistics: loam_heap_stats is exact at quiet moments (live bytes and
 * blocks, requested bytes, large blocks), and loam_heap_print_stats writes a
 * readable text report and well-formed JSON. */
#define _GNU_SOURCE
#include "harness.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loam.h"
#include "stats_util.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static loam_stats_t stats(loam_heap_t *h)
{
    loam_stats_t st;
    memset(&st, 0xAB, sizeof st);   /* every field must be written */
    loam_heap_stats(h, &st);
    return st;
}

Test(stats, fresh_heap_is_empty)
{
    loam_heap_t *h = loam_heap_new(NULL);
    loam_stats_t st = stats(h);
    cr_assert_eq(st.live_bytes, 0);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.requested_bytes, 0);
    cr_assert_eq(st.requested_tracked, 1, "heaps from loam_heap_new track requested bytes by default");
    cr_assert_eq(st.peak_live_bytes, 0);
    cr_assert_eq(st.large_count, 0);
    cr_assert_eq(st.large_bytes, 0);
    cr_assert_eq(st.gc_collections, 0);
    cr_assert_eq(st.gc_pause_total_ns, 0);
    cr_assert_eq(st.gc_pause_max_ns, 0);
    cr_assert_eq(st.cached_bytes, 0);
    cr_assert_leq(st.committed_bytes, MiB, "an empty heap commits %zu bytes", st.committed_bytes);
    cr_assert_geq(st.reserved_bytes, st.committed_bytes);
    loam_heap_destroy(h);
}

Test(stats, live_and_requested_are_exact)
{
    loam_heap_t *h = loam_heap_new(NULL);
    loam_stats_t s0 = stats(h);
    enum { N = 100 };
    void *p[N];
    size_t usable = 0;
    for (int i = 0; i < N; i++) {
        p[i] = loam_malloc(h, 100);
        usable += loam_usable_size(p[i]);
    }
    loam_stats_t st = stats(h);
    cr_assert_eq(st.live_blocks, s0.live_blocks + N);
    cr_assert_eq(st.live_bytes, s0.live_bytes + usable, "live_bytes %zu, sum of usable sizes %zu",
                 st.live_bytes - s0.live_bytes, usable);
    cr_assert_eq(st.requested_bytes, s0.requested_bytes + N * 100);
    cr_assert_geq(st.peak_live_bytes, st.live_bytes);
    cr_assert_geq(st.committed_bytes, st.live_bytes);
    cr_assert_geq(st.reserved_bytes, st.committed_bytes);
    cr_assert_geq(st.segments, 1);
    cr_assert_geq(st.slab_bytes, st.live_bytes);
    for (int i = 0; i < N; i++)
        loam_free(p[i]);
    st = stats(h);
    cr_assert_eq(st.live_blocks, s0.live_blocks);
    cr_assert_eq(st.live_bytes, s0.live_bytes, "live_bytes %zu after freeing all (blocks in thread "
                 "caches are not live)", st.live_bytes);
    cr_assert_eq(st.requested_bytes, s0.requested_bytes);
    cr_assert_geq(st.peak_live_bytes, usable);
    loam_heap_destroy(h);
}

Test(stats, every_class_size)
{
    /* one block of every size 1..70000: live == sum of usable, requested == sum of n */
    loam_heap_t *h = loam_heap_new(NULL);
    enum { MAXN = 70000, STEP = 7 };
    static void *p[MAXN / STEP + 1];
    size_t usable = 0, requested = 0, k = 0;
    for (size_t n = 1; n <= MAXN; n += STEP) {
        p[k] = loam_malloc(h, n);
        cr_assert_not_null(p[k]);
        usable += loam_usable_size(p[k]);
        requested += n;
        k++;
    }
    loam_stats_t st = stats(h);
    cr_assert_eq(st.live_blocks, k);
    cr_assert_eq(st.live_bytes, usable);
    cr_assert_eq(st.requested_bytes, requested);
    cr_assert_geq(st.live_bytes, st.requested_bytes);
    /* the size classes keep internal waste bounded (<= 25% overall here) */
    cr_assert_leq(st.live_bytes - st.requested_bytes, st.requested_bytes / 4,
                  "internal waste %zu of %zu requested", st.live_bytes - st.requested_bytes,
                  st.requested_bytes);
    for (size_t i = 0; i < k; i++)
        loam_free(p[i]);
    st = stats(h);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.live_bytes, 0);
    cr_assert_eq(st.requested_bytes, 0);
    loam_heap_destroy(h);
}

Test(stats, calloc_realloc_aligned_are_counted)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *a = loam_calloc(h, 10, 30);
    void *b = loam_aligned_alloc(h, 256, 1000);
    void *c = loam_malloc(h, 50);
    loam_stats_t st = stats(h);
    cr_assert_eq(st.live_blocks, 3);
    cr_assert_eq(st.requested_bytes, 300 + 1000 + 50);
    cr_assert_eq(st.live_bytes, loam_usable_size(a) + loam_usable_size(b) + loam_usable_size(c));
    c = loam_realloc(h, c, 5000);   /* moves: the old block is no longer live */
    st = stats(h);
    cr_assert_eq(st.live_blocks, 3);
    cr_assert_eq(st.requested_bytes, 300 + 1000 + 5000);
    cr_assert_eq(st.live_bytes, loam_usable_size(a) + loam_usable_size(b) + loam_usable_size(c));
    c = loam_realloc(h, c, 4999);   /* in place or not: requested follows */
    st = stats(h);
    cr_assert_eq(st.requested_bytes, 300 + 1000 + 4999);
    cr_assert_eq(st.live_bytes, loam_usable_size(a) + loam_usable_size(b) + loam_usable_size(c));
    loam_free(a);
    loam_free(b);
    loam_free(c);
    st = stats(h);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.live_bytes, 0);
    cr_assert_eq(st.requested_bytes, 0);
    loam_heap_destroy(h);
}

Test(stats, aligned_alloc_requested_accounting)
{
    /* aligned blocks of every alignment, including size 0: requested_bytes
     * goes up by n and back down by n */
    loam_heap_t *h = loam_heap_new(NULL);
    static const size_t sizes[] = { 0, 1, 100, 4096, 70000 };
    for (size_t align = 16; align <= MiB; align <<= 1) {
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            size_t n = sizes[k];
            void *p = loam_aligned_alloc(h, align, n);
            cr_assert_not_null(p);
            loam_stats_t st = stats(h);
            cr_assert_eq(st.requested_bytes, n, "aligned_alloc(%zu, %zu): requested %zu", align, n,
                         st.requested_bytes);
            cr_assert_eq(st.live_blocks, 1);
            loam_free(p);
            st = stats(h);
            cr_assert_eq(st.requested_bytes, 0, "aligned_alloc(%zu, %zu) then free: requested %zd",
                         align, n, (ssize_t)st.requested_bytes);
            cr_assert_eq(st.live_bytes, 0);
            cr_assert_eq(st.live_blocks, 0);
        }
    }
    loam_heap_destroy(h);
}

Test(stats, large_blocks_are_counted)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p[3];
    size_t usable = 0;
    for (int i = 0; i < 3; i++) {
        p[i] = loam_malloc(h, MiB + (size_t)i * 1000);
        usable += loam_usable_size(p[i]);
    }
    void *small = loam_malloc(h, 64);
    loam_stats_t st = stats(h);
    cr_assert_eq(st.large_count, 3);
    cr_assert_geq(st.large_bytes, 3 * MiB + 3000);
    cr_assert_leq(st.large_bytes, 3 * MiB + 3000 + 3 * 2 * MiB, "large_bytes %zu", st.large_bytes);
    cr_assert_eq(st.live_blocks, 4);
    cr_assert_eq(st.live_bytes, usable + loam_usable_size(small));
    cr_assert_eq(st.requested_bytes, 3 * MiB + 3000 + 64);
    cr_assert_geq(st.committed_bytes, st.large_bytes, "large blocks are committed memory");
    loam_free(p[1]);
    st = stats(h);
    cr_assert_eq(st.large_count, 2);
    /* realloc of a large block to a larger one stays one large block */
    p[0] = loam_realloc(h, p[0], 5 * MiB);
    st = stats(h);
    cr_assert_eq(st.large_count, 2);
    cr_assert_geq(st.large_bytes, 5 * MiB + MiB + 2000);
    loam_free(p[0]);
    loam_free(p[2]);
    loam_free(small);
    st = stats(h);
    cr_assert_eq(st.large_count, 0);
    cr_assert_eq(st.large_bytes, 0);
    cr_assert_eq(st.live_blocks, 0);
    cr_assert_eq(st.live_bytes, 0);
    loam_heap_destroy(h);
}

Test(stats, peak_live_bytes)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *p[64];
    size_t live = 0, peak = 0;
    for (int i = 0; i < 64; i++) {
        p[i] = loam_malloc(h, 4096);
        live += loam_usable_size(p[i]);
    }
    peak = live;
    for (int i = 0; i < 32; i++) {
        live -= loam_usable_size(p[i]);
        loam_free(p[i]);
    }
    loam_stats_t st = stats(h);
    cr_assert_eq(st.live_bytes, live);
    cr_assert_eq(st.peak_live_bytes, peak, "peak %zu, expected %zu", st.peak_live_bytes, peak);
    for (int i = 32; i < 64; i++)
        loam_free(p[i]);
    st = stats(h);
    cr_assert_eq(st.peak_live_bytes, peak);
    cr_assert_eq(st.live_bytes, 0);
    loam_heap_destroy(h);
}

Test(stats, peak_includes_large_blocks_and_never_falls)
{
    loam_heap_t *h = loam_heap_new(NULL);
    void *a = loam_malloc(h, MiB), *b = loam_malloc(h, MiB), *c = loam_malloc(h, MiB);
    size_t live = loam_usable_size(a) + loam_usable_size(b) + loam_usable_size(c);
    loam_stats_t st = stats(h);
    cr_assert_eq(st.live_bytes, live);
    cr_assert_eq(st.peak_live_bytes, live);
    loam_free(a);
    loam_free(b);
    loam_free(c);
    st = stats(h);
    cr_assert_eq(st.live_bytes, 0);
    cr_assert_eq(st.peak_live_bytes, live,
                 "peak_live_bytes fell from %zu to %zu when large blocks were freed", live,
                 st.peak_live_bytes);
    loam_heap_destroy(h);
}

Test(stats, peak_is_a_bound_on_handed_out_blocks)
{
    /* peak_live_bytes is documented as the high-water mark of bytes out of the
     * slabs (live or parked in thread caches) plus large blocks: at least the
     * live bytes, at most live + cached while nothing was freed. */
    loam_heap_t *h = loam_heap_new(NULL);
    void *p = loam_malloc(h, 1000);
    loam_stats_t st = stats(h);
    cr_assert_eq(st.live_bytes, loam_usable_size(p));
    cr_assert_geq(st.peak_live_bytes, st.live_bytes);
    cr_assert_leq(st.peak_live_bytes, st.live_bytes + st.cached_bytes,
                  "peak %zu above live %zu + cached %zu", st.peak_live_bytes, st.live_bytes,
                  st.cached_bytes);
    void *q = loam_malloc(h, 40);
    st = stats(h);
    cr_assert_geq(st.peak_live_bytes, loam_usable_size(p) + loam_usable_size(q));
    cr_assert_leq(st.peak_live_bytes, st.live_bytes + st.cached_bytes);
    loam_free(p);
    loam_free(q);
    loam_heap_destroy(h);
}

Test(stats, trim_returns_what_committed_bytes_lose)
{
    /* loam_heap_trim "returns the bytes decommitted": committed_bytes falls by that much */
    loam_heap_t *h = loam_heap_new(NULL);
    void *p[1000];
    for (int i = 0; i < 1000; i++)
        p[i] = loam_malloc(h, 1000);
    for (int i = 0; i < 1000; i++)
        loam_free(p[i]);
    loam_stats_t a = stats(h);
    size_t t = loam_heap_trim(h);
    loam_stats_t b = stats(h);
    cr_assert_leq(b.committed_bytes, a.committed_bytes);
    cr_assert_eq(a.committed_bytes - b.committed_bytes, t,
                 "committed_bytes fell from %zu to %zu (%zu), but loam_heap_trim returned %zu",
                 a.committed_bytes, b.committed_bytes, a.committed_bytes - b.committed_bytes, t);
    cr_assert_eq(b.cached_bytes, 0, "trim leaves %zu bytes in thread caches", b.cached_bytes);
    cr_assert_eq(loam_heap_trim(h), 0, "a second trim found more to give back");
    loam_heap_destroy(h);
}

Test(stats, heaps_are_counted_separately)
{
    loam_heap_t *a = loam_heap_new(NULL), *b = loam_heap_new(NULL);
    void *p = loam_malloc(a, 1000);
    void *q[3] = { loam_malloc(b, 10), loam_malloc(b, 20), loam_malloc(b, 2 * MiB) };
    loam_stats_t sa = stats(a), sb = stats(b);
    cr_assert_eq(sa.live_blocks, 1);
    cr_assert_eq(sb.live_blocks, 3);
    cr_assert_eq(sa.requested_bytes, 1000);
    cr_assert_eq(sb.requested_bytes, 10 + 20 + 2 * MiB);
    cr_assert_eq(sa.large_count, 0);
    cr_assert_eq(sb.large_count, 1);
    loam_free(p);
    for (int i = 0; i < 3; i++)
        loam_free(q[i]);
    loam_heap_destroy(a);
    loam_heap_destroy(b);
}

Test(stats, default_heap_does_not_track_requested)
{
    loam_heap_t *d = loam_heap_default();
    loam_stats_t s0 = stats(d);
    cr_assert_eq(s0.requested_tracked, 0, "the default heap does not track requested bytes by default");
    cr_assert_eq(s0.requested_bytes, 0);
    void *p = loam_malloc(d, 100);
    loam_stats_t st = stats(d);
    cr_assert_eq(st.requested_bytes, 0);
    cr_assert_eq(st.live_blocks, s0.live_blocks + 1);
    cr_assert_eq(st.live_bytes, s0.live_bytes + loam_usable_size(p));
    loam_free(p);
    st = stats(d);
    cr_assert_eq(st.live_blocks, s0.live_blocks);
    cr_assert_eq(st.live_bytes, s0.live_bytes);
}

/* ---- print_stats -------------------------------------------------------- */

static loam_heap_t *busy_heap(void **keep, int n)
{
    loam_heap_t *h = loam_heap_new(NULL);
    for (int i = 0; i < n; i++)
        keep[i] = loam_malloc(h, (size_t)(16 << (i % 10)));
    keep[n - 1] = loam_malloc(h, MiB);
    return h;
}

Test(stats, print_text)
{
    void *keep[40];
    loam_heap_t *h = busy_heap(keep, 40);
    char *text = print_to_string(h, LOAM_STATS_TEXT);
    cr_assert_gt(strlen(text), 40, "text report too short: \"%s\"", text);
    cr_assert(strcasestr(text, "live") != NULL, "text report does not mention live bytes:\n%s", text);
    cr_assert(strcasestr(text, "class") != NULL, "text report does not mention size classes:\n%s", text);
    cr_assert(strcasestr(text, "committed") != NULL, "text report does not mention committed:\n%s", text);
    cr_assert_eq(text[strlen(text) - 1], '\n', "text report does not end with a newline");
    free(text);
    for (int i = 0; i < 40; i++)
        loam_free(keep[i]);
    loam_heap_destroy(h);
}

/* A small JSON checker: values, objects, arrays, strings, numbers, literals. */
static const char *js_ws(const char *s)
{
    while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')
        s++;
    return s;
}

static const char *js_value(const char *s, int depth);

static const char *js_string(const char *s)
{
    if (*s != '"')
        return NULL;
    for (s++; *s && *s != '"'; s++) {
        if ((unsigned char)*s < 0x20)
            return NULL;
        if (*s == '\\') {
            s++;
            if (!*s || !strchr("\"\\/bfnrtu", *s))
                return NULL;
        }
    }
    return *s == '"' ? s + 1 : NULL;
}

static const char *js_number(const char *s)
{
    const char *b = s;
    if (*s == '-')
        s++;
    if (!isdigit((unsigned char)*s))
        return NULL;
    while (isdigit((unsigned char)*s))
        s++;
    if (*s == '.') {
        s++;
        if (!isdigit((unsigned char)*s))
            return NULL;
        while (isdigit((unsigned char)*s))
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!isdigit((unsigned char)*s))
            return NULL;
        while (isdigit((unsigned char)*s))
            s++;
    }
    return s > b ? s : NULL;
}

static const char *js_value(const char *s, int depth)
{
    if (depth > 64)
        return NULL;
    s = js_ws(s);
    if (*s == '{' || *s == '[') {
        char close = *s == '{' ? '}' : ']';
        int obj = *s == '{';
        s = js_ws(s + 1);
        if (*s == close)
            return s + 1;
        for (;;) {
            if (obj) {
                s = js_string(js_ws(s));
                if (!s)
                    return NULL;
                s = js_ws(s);
                if (*s != ':')
                    return NULL;
                s++;
            }
            s = js_value(s, depth + 1);
            if (!s)
                return NULL;
            s = js_ws(s);
            if (*s == ',') {
                s++;
                continue;
            }
            return *s == close ? s + 1 : NULL;
        }
    }
    if (*s == '"')
        return js_string(s);
    if (!strncmp(s, "true", 4))
        return s + 4;
    if (!strncmp(s, "false", 5))
        return s + 5;
    if (!strncmp(s, "null", 4))
        return s + 4;
    return js_number(s);
}

static int json_valid(const char *text)
{
    const char *s = js_ws(text);
    if (*s != '{')
        return 0;
    s = js_value(s, 0);
    return s && *js_ws(s) == 0;
}

/* The number following "key": in the JSON text, or -1. */
static long long json_number_of(const char *text, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *s = strstr(text, pat);
    if (!s)
        return -1;
    s = js_ws(s + strlen(pat));
    if (*s != ':')
        return -1;
    return strtoll(js_ws(s + 1), NULL, 10);
}

Test(stats, json_checker_self_test)
{
    cr_assert(json_valid("{}"));
    cr_assert(json_valid("{\"a\": [1, 2.5, -3e2, \"x\\n\", true, null, {\"b\": {}}]}\n"));
    cr_assert(!json_valid("{\"a\": 1,}"));
    cr_assert(!json_valid("{\"a\": 1"));
    cr_assert(!json_valid("{\"a\" 1}"));
    cr_assert(!json_valid("{a: 1}"));
    cr_assert(!json_valid("{\"a\": 01x}"));
    cr_assert(!json_valid("[1]"));
}

Test(stats, print_json)
{
    void *keep[40];
    loam_heap_t *h = busy_heap(keep, 40);
    loam_stats_t st = stats(h);
    char *json = print_to_string(h, LOAM_STATS_JSON);
    cr_assert(json_valid(json), "not valid JSON:\n%s", json);
    cr_assert(strstr(json, "\"live_bytes\"") != NULL, "no \"live_bytes\" key:\n%s", json);
    cr_assert(strstr(json, "\"committed_bytes\"") != NULL, "no \"committed_bytes\" key:\n%s", json);
    cr_assert(strstr(json, "\"requested_bytes\"") != NULL, "no \"requested_bytes\" key:\n%s", json);
    cr_assert_eq(json_number_of(json, "live_bytes"), (long long)st.live_bytes,
                 "JSON live_bytes disagrees with loam_heap_stats (%zu):\n%s", st.live_bytes, json);
    cr_assert_eq(json_number_of(json, "live_blocks"), (long long)st.live_blocks,
                 "JSON live_blocks disagrees with loam_heap_stats (%zu)", st.live_blocks);
    cr_assert_eq(json_number_of(json, "large_count"), (long long)st.large_count);
    cr_assert_eq(json_number_of(json, "cache_shared_growth_max"), 32ll * 1024 * 1024,
                 "the caches' shared growth budget is not reported:\n%s", json);
    cr_assert_geq(json_number_of(json, "cache_shared_growth_bytes"), 0);
    free(json);
    for (int i = 0; i < 40; i++)
        loam_free(keep[i]);
    loam_heap_destroy(h);
}

Test(stats, print_empty_heap)
{
    loam_heap_t *h = loam_heap_new(NULL);
    char *json = print_to_string(h, LOAM_STATS_JSON);
    cr_assert(json_valid(json), "empty heap: not valid JSON:\n%s", json);
    cr_assert_eq(json_number_of(json, "live_bytes"), 0);
    free(json);
    char *text = print_to_string(h, LOAM_STATS_TEXT);
    cr_assert_gt(strlen(text), 0);
    free(text);
    loam_heap_destroy(h);
}

/* A heap's name (config) is in its reports, copied and made printable. */
Test(stats, a_named_heap_is_named_in_its_reports)
{
    char name[] = "parser \"cache\"\tof 40 characters, cut at 31";
    loam_config_t cfg = { .name = name };
    loam_heap_t *h = loam_heap_new(&cfg);
    cr_assert_not_null(h);
    memset(name, 'x', sizeof name - 1);             /* the heap kept a copy */
    void *p = loam_malloc(h, 100);
    char *text = print_to_string(h, LOAM_STATS_TEXT);
    cr_assert(strstr(text, "\"parser ?cache??of 40 characters\"") != NULL,
              "the text report does not name the heap as expected:\n%s", text);
    free(text);
    char *json = print_to_string(h, LOAM_STATS_JSON);
    cr_assert(json_valid(json), "not valid JSON:\n%s", json);
    cr_assert(strstr(json, "\"name\":\"parser ?cache??of 40 characters\"") != NULL,
              "the JSON report does not name the heap:\n%s", json);
    free(json);
    loam_free(p);
    loam_heap_destroy(h);
    h = loam_heap_new(NULL);                         /* no name: none shown */
    json = print_to_string(h, LOAM_STATS_JSON);
    cr_assert(strstr(json, "\"name\":\"\"") != NULL, "an unnamed heap:\n%s", json);
    free(json);
    loam_heap_destroy(h);
}

/* JSON text is UTF-8: a name in UTF-8 whose 31-byte copy would end inside
 * a character keeps the character out whole, and bytes that are not UTF-8
 * read '?' (the JSON report held a cut "\xe2" and a Latin-1 "\xe9"). */
Test(stats, a_name_is_cut_between_utf8_characters)
{
    static const struct { const char *name, *shown; } cases[] = {
        /* 27 ASCII bytes, then euro signs (3 bytes each): the second ends past 31 */
        { "abcdefghijklmnopqrstuvwxyz-\xe2\x82\xac\xe2\x82\xac", "abcdefghijklmnopqrstuvwxyz-\xe2\x82\xac" },
        { "caf\xe9 (latin-1)", "caf? (latin-1)" },
        { "h\xc3\xa9llo \xf0\x9f\x90\xb1 \xc3", "h\xc3\xa9llo \xf0\x9f\x90\xb1 ?" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        loam_config_t cfg = { .name = cases[i].name };
        loam_heap_t *h = loam_heap_new(&cfg);
        cr_assert_not_null(h);
        char *json = print_to_string(h, LOAM_STATS_JSON);
        char want[128];
        snprintf(want, sizeof want, "\"name\":\"%s\"", cases[i].shown);
        cr_assert(strstr(json, want) != NULL, "case %zu: the JSON report names the heap as:\n%s", i, json);
        free(json);
        loam_heap_destroy(h);
    }
}

Test(stats, print_default_heap_json)
{
    void *p = loam_malloc(loam_heap_default(), 100);
    char *json = print_to_string(loam_heap_default(), LOAM_STATS_JSON);
    cr_assert(json_valid(json), "default heap: not valid JSON:\n%s", json);
    free(json);
    loam_free(p);
}
