/* loam benchmark workloads: time, RSS, bookkeeping memory, the result line. */
#include "bench.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads a /proc file with plain syscalls: fopen would call malloc and so
 * disturb the very thing being measured. Returns bytes read, -1 on error. */
static long read_proc(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got + 1 < cap) {
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    return (long)got;
}

long bench_rss_kb(void)
{
    char buf[256];
    if (read_proc("/proc/self/statm", buf, sizeof buf) <= 0)
        return -1;
    unsigned long size = 0, resident = 0;
    if (sscanf(buf, "%lu %lu", &size, &resident) != 2)
        return -1;
    return (long)(resident * (unsigned long)sysconf(_SC_PAGESIZE) / 1024);
}

long bench_peak_kb(void)
{
    static char buf[8192];
    if (read_proc("/proc/self/status", buf, sizeof buf) > 0) {
        const char *p = strstr(buf, "VmHWM:");
        if (p)
            return strtol(p + 6, NULL, 10);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

void *bench_map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED)
        bench_die("mmap for bookkeeping");
    return p;
}

void bench_unmap(void *p, size_t bytes)
{
    munmap(p, bytes);
}

long bench_scaled(const bench_opts_t *o, long base)
{
    double v = (double)base * o->scale;
    return v < 1.0 ? 1 : (long)v;
}

void bench_die(const char *what)
{
    fprintf(stderr, "loam-bench: %s failed\n", what);
    exit(2);
}

size_t bench_log_range(bench_rng_t *r, size_t lo, size_t hi)
{
    unsigned octaves = 0;
    while ((lo << (octaves + 1)) <= hi)
        octaves++;
    unsigned k = (unsigned)(bench_rand(r) % (octaves + 1));
    size_t a = lo << k;
    size_t b = a * 2 - 1;
    if (b > hi)
        b = hi;
    return bench_range(r, a, b);
}

void bench_touch(void *p, size_t n, unsigned char v)
{
    volatile unsigned char *c = (volatile unsigned char *)p;
    for (size_t i = 0; i < n; i += 4096)
        c[i] = v;
    c[n - 1] = v;
}

/* ---- the result line ---------------------------------------------------- */

void bench_begin(const char *workload, const bench_opts_t *o)
{
    printf("workload=%s seed=%llu scale=%g", workload,
           (unsigned long long)o->seed, o->scale);
}

void bench_kv_long(const char *key, long long v)
{
    printf(" %s=%lld", key, v);
}

void bench_kv_double(const char *key, double v)
{
    printf(" %s=%.6f", key, v);
}

void bench_kv_str(const char *key, const char *v)
{
    printf(" %s=%s", key, v);
}

/* Which shared object defines the malloc every call here goes to: the
 * runner checks it so a preload that silently did not take is caught. */
static const char *malloc_provider(void)
{
    void *f = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    if (!f || !dladdr(f, &info) || !info.dli_fname)
        return "unknown";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

int bench_end(uint64_t checksum, long bad)
{
    long final_kb = bench_rss_kb();
    long peak_kb = bench_peak_kb();
    printf(" checksum=%llu bad=%ld peak_rss_kb=%ld final_rss_kb=%ld malloc_from=%s ok=%d\n",
           (unsigned long long)checksum, bad, peak_kb, final_kb, malloc_provider(),
           bad == 0);
    fflush(stdout);
    if (bad)
        fprintf(stderr, "loam-bench: %ld blocks failed verification\n", bad);
    return bad ? 1 : 0;
}
