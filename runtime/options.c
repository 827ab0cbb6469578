/* runtime/options.c — options: LOAM_OPTIONS="key=value,..." and the API.
 * One table gives each key its range and default; a bad key or value gets a
 * warning and is ignored, never a crash. */
#include "runtime/runtime.h"

#include <ctype.h>
#include <stdlib.h>
#include <unistd.h>

loam_options_t loam_opts;

typedef struct option_def {
    const char *key;
    long       *value;
    long        min, max, def;
    const char *what;
} option_def_t;

static option_def_t option_table[] = {
    { "mmap_threshold",  &loam_opts.mmap_threshold, 1024, (long)CLASS_MAX_SIZE, 128 * 1024,
      "bytes; larger blocks get their own mapping" },
    { "arena_max",       &loam_opts.arena_max,       1, ARENA_SET_MAX, 0 /* 8 x CPUs */,
      "arenas per heap" },
    { "decay_ms",        &loam_opts.decay_ms,        0, 3600 * 1000, 250,
      "ms a free page run stays committed before it goes back to the OS" },
    { "retain_max",      &loam_opts.retain_max,      0, 1L << 40, 4L * 1024 * 1024,
      "bytes of free page runs an arena keeps committed (the rest goes back at once)" },
    { "gc_growth",       &loam_opts.gc_growth,       1, LOAM_GC_GROWTH_MAX, 100,
      "percent of the live heap allocated between collections (like GOGC)" },
    { "gc_min_bytes",    &loam_opts.gc_min_bytes,    0, 1L << 40, 4L * 1024 * 1024,
      "bytes allocated between collections at least" },
    { "gc_young_min",    &loam_opts.gc_young_min,    0, 1L << 40, 512L * 1024,
      "LOAM_GENERATIONAL heaps: bytes allocated between collections, and of old garbage "
      "between major ones, at least (instead of gc_min_bytes)" },
    { "gc_markers",      &loam_opts.gc_markers,      0, 8, 0,
      "threads marking a LOAM_PARALLEL_MARK heap (0: one per idle CPU, at most 8)" },
    { "gc_parallel_min", &loam_opts.gc_parallel_min, 0, 1L << 40, 4L << 20,
      "live bytes to scan (found by the last collection; atomic blocks do not count) from "
      "which marking runs in parallel" },
    { "gc_stress",       &loam_opts.gc_stress,       0, 1L << 30, 0,
      "testing: every collected heap collects at every N-th allocation, whatever its pacing "
      "(0: off; 1: at every allocation)" },
    { "verbose",         &loam_opts.verbose,         0, 2, 0,
      "1: statistics at exit and warnings" },
    { "track_requested", &loam_opts.track_requested, 0, 1, 1,
      "keep exact requested bytes (heaps from loam_heap_new; the default heap only if set)" },
    { "tcache_max",      &loam_opts.tcache_max,      0, 65536, 8192,
      "most blocks per size class in a thread cache (0: no caches); bins start at 128, grow in batches" },
    { "tcache_budget",   &loam_opts.tcache_budget,   0, 1L << 40, 32L * 1024 * 1024,
      "bytes of cache growth past each cache's own 1 MiB that all threads' caches share" },
    { "purge_thread",    &loam_opts.purge_thread,    0, 1, 1,
      "1: a background thread returns decayed memory and idle caches' blocks" },
    { "huge_pages",      &loam_opts.huge_pages,      0, 1, 1,
      "1: large blocks grown by realloc and collected heaps past 8 MiB ask for transparent huge pages" },
};
#define NUM_OPTIONS (sizeof option_table / sizeof option_table[0])

/* Word stores, atomic: the purge thread, always there, reads decay_ms
 * while a program sets options, and allocating threads mmap_threshold
 * (relaxed: each value stands alone). */
static void options_apply(void)
{
    __atomic_store_n(&alloc_tuning.mmap_threshold, (size_t)loam_opts.mmap_threshold, __ATOMIC_RELAXED);
    __atomic_store_n(&alloc_tuning.decay_ms, (uint64_t)loam_opts.decay_ms, __ATOMIC_RELAXED);
    __atomic_store_n(&alloc_tuning.retain_max, (size_t)loam_opts.retain_max, __ATOMIC_RELAXED);
    __atomic_store_n(&alloc_tuning.huge_pages, loam_opts.huge_pages != 0, __ATOMIC_RELAXED);
    __atomic_store_n(&alloc_tuning.tcache_budget, (size_t)loam_opts.tcache_budget, __ATOMIC_RELAXED);
}

void options_defaults(void)
{
    long cpus = (long)os_cpu_count();
    for (size_t i = 0; i < NUM_OPTIONS; i++) {
        if (option_table[i].value == &loam_opts.arena_max)
            option_table[i].def = 8 * cpus;
        *option_table[i].value = option_table[i].def;
    }
    options_apply();
}

static option_def_t *option_find(const char *key, size_t len)
{
    for (size_t i = 0; i < NUM_OPTIONS; i++)
        if (strlen(option_table[i].key) == len && strncmp(option_table[i].key, key, len) == 0)
            return &option_table[i];
    return NULL;
}

static int option_store(option_def_t *o, long value)
{
    if (value < o->min || value > o->max) {
        loam_warn("option %s=%ld out of range [%ld, %ld] (%s): ignored", o->key, value, o->min,
                  o->max, o->what);
        return -1;
    }
    __atomic_store_n(o->value, value, __ATOMIC_RELAXED);
    if (o->value == &loam_opts.track_requested)
        __atomic_store_n(&loam_opts.track_requested_set, 1, __ATOMIC_RELAXED);
    options_apply();
    return 0;
}

int loam_option_set(const char *key, long value)
{
    loam_ensure_init();
    option_def_t *o = key ? option_find(key, strlen(key)) : NULL;
    if (!o) {
        loam_warn("unknown option '%s': ignored", key ? key : "(null)");
        return -1;
    }
    return option_store(o, value);
}

long loam_option_get(const char *key)
{
    loam_ensure_init();
    option_def_t *o = key ? option_find(key, strlen(key)) : NULL;
    return o ? __atomic_load_n(o->value, __ATOMIC_RELAXED) : -1;
}

/* A value: a number (as strtol reads it, so 0x... too) and an optional k, m
 * or g in either case, for KiB, MiB or GiB. false: not one, or past a long
 * (a too big value must not wrap into a small one that passes the range). */
static bool parse_value(const char *text, long *out)
{
    char *stop;
    errno = 0;
    long v = strtol(text, &stop, 0);
    if (stop == text || errno)
        return false;
    int shift = 0;
    switch (*stop) {
    case 'k': case 'K': shift = 10; stop++; break;
    case 'm': case 'M': shift = 20; stop++; break;
    case 'g': case 'G': shift = 30; stop++; break;
    }
    if (*stop || __builtin_mul_overflow(v, 1L << shift, &v))
        return false;
    *out = v;
    return true;
}

static int options_parse_text(const char *text)
{
    int rejected = 0;
    const char *p = text;
    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (len == 0) {
            /* empty entry: ",," */
        } else if (!eq) {
            loam_warn("option '%.*s' has no '=value': ignored", (int)len, p);
            rejected++;
        } else {
            option_def_t *o = option_find(p, (size_t)(eq - p));
            char buf[32];
            size_t vlen = len - (size_t)(eq - p) - 1;
            bool parsed = false;
            long v = 0;
            if (vlen > 0 && vlen < sizeof buf) {
                memcpy(buf, eq + 1, vlen);
                buf[vlen] = 0;
                parsed = parse_value(buf, &v);
            }
            if (!o) {
                loam_warn("unknown option '%.*s': ignored", (int)(eq - p), p);
                rejected++;
            } else if (!parsed) {
                loam_warn("option %s: bad value '%.*s': ignored", o->key, (int)vlen, eq + 1);
                rejected++;
            } else if (option_store(o, v) != 0) {
                rejected++;
            }
        }
        p = end ? end + 1 : NULL;
    }
    return rejected;
}

int loam_options_parse(const char *text)
{
    loam_ensure_init();          /* else the first allocation's init would reset them */
    return options_parse_text(text);
}

/* Called by init itself: no loam_ensure_init here. */
void options_from_env(void)
{
    const char *env = getenv("LOAM_OPTIONS");
    if (env)
        options_parse_text(env);
}
