/* loam-bench: one program, one workload per subcommand.
 *
 *   loam-bench WORKLOAD [--scale S] [--seed N] [--n N]
 *   loam-bench --list
 *
 * Prints one line of key=value pairs on stdout. Exit status 0 when the
 * workload's own checks passed, 1 when they did not, 2 on a usage or
 * system error.
 */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    workload_fn fn;
    const char *what;
} workloads[] = {
    { "pair",           wl_pair,           "malloc(64)/free pair in a tight loop" },
    { "batch",          wl_batch,          "1000 x malloc(64), then 1000 frees, repeated" },
    { "batch-random",   wl_batch_random,   "50000 x malloc(16-256 B), then the frees in random order, repeated" },
    { "churn-512",      wl_churn_512,      "random replace in a live set of 16384 blocks, 8-512 B" },
    { "churn-4k",       wl_churn_4k,       "random replace in a live set of 16384 blocks, 8-4096 B" },
    { "large",          wl_large,          "random replace of 16 blocks of 64 KiB-4 MiB, every page touched" },
    { "realloc-double", wl_realloc_double, "realloc 16 B -> 64 MiB by doubling, new pages touched" },
    { "realloc-step",   wl_realloc_step,   "realloc 64 B -> 64 MiB in 64 B steps (a string builder)" },
    { "frag",           wl_frag,           "1M x 64 B, free every other, 500k x 128 B: RSS / live bytes" },
    { "freeall",        wl_freeall,        "allocate ~190 MB of mixed sizes, free all: RSS end / start" },
    { "prodcons",       wl_prodcons,       "2 threads: one mallocs 16-256 B, the other frees" },
    { "larson",         wl_larson,         "Larson-like: 2 threads per round replace blocks of the previous round's threads" },
    { "churn2",         wl_churn2,         "2 threads, each churn-512 on its own live set" },
    { "cg-steady",      wl_cg_steady,      "callgrind: --n malloc(64)/free pairs, 1000 others of the class live" },
    { "cg-batch",       wl_cg_batch,       "callgrind: --n pairs as batches of 1000 mallocs then 1000 frees" },
};

static void usage(FILE *to)
{
    fprintf(to, "usage: loam-bench WORKLOAD [--scale S] [--seed N] [--n N]\n"
                "       loam-bench --list\nworkloads:\n");
    for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
        fprintf(to, "  %-15s %s\n", workloads[i].name, workloads[i].what);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
            printf("%s\n", workloads[i].name);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    bench_opts_t o = { .scale = 1.0, .seed = 20240601, .n = 0 };
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        char *end = NULL;
        if (strcmp(argv[i], "--scale") == 0) {
            o.scale = strtod(argv[++i], &end);
            if (*end || !(o.scale > 0)) {
                fprintf(stderr, "loam-bench: bad --scale\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--seed") == 0) {
            o.seed = strtoull(argv[++i], &end, 0);
        } else if (strcmp(argv[i], "--n") == 0) {
            o.n = strtol(argv[++i], &end, 0);
        } else {
            usage(stderr);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "loam-bench: bad number '%s'\n", argv[i]);
            return 2;
        }
    }
    for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
        if (strcmp(argv[1], workloads[i].name) == 0)
            return workloads[i].fn(&o);
    fprintf(stderr, "loam-bench: unknown workload '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
