/* loam-gcbench-VARIANT: the collector benchmarks, one subcommand each.
 *
 *   loam-gcbench-VARIANT WORKLOAD [--depth N] [--scale S]
 *                                 [--kind traced|conservative] [--no-stack-scan]
 *                                 [--generational]
 *   loam-gcbench-VARIANT --list
 *
 * VARIANT is fixed when compiling (gcshim.h): loam, loam-precise, boehm or
 * malloc. --kind and --generational (LOAM_GENERATIONAL, the workloads
 * calling the write barrier) apply to loam only; --no-stack-scan is
 * loam-precise's (it is the one with a shadow stack) and required there. Prints one line of key=value pairs
 * on stdout; exit status 0 when the workload's own checks passed, 1 when
 * they did not, 2 on a usage or set-up error. --seed is accepted and ignored
 * (the workloads are deterministic). With GCS_STATS set in the environment,
 * the loam program prints its heap's statistics on stderr at the end. */
#include "gcshim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(const gcs_opts_t *o);
    const char *what;
} workloads[] = {
    { "binary-trees", gcw_binary_trees,
      "stretch tree, long-lived tree of depth --depth (16), short-lived trees 4..depth" },
    { "gcbench", gcw_gcbench,
      "GCBench: long-lived tree (16) and array of 500k doubles, temporary trees 4..16" },
};

static void usage(FILE *to)
{
    fprintf(to, "usage: loam-gcbench-%s WORKLOAD [--depth N] [--scale S] "
                "[--kind traced|conservative] [--no-stack-scan] [--generational]\nworkloads:\n",
            gcs_variant());
    for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
        fprintf(to, "  %-13s %s\n", workloads[i].name, workloads[i].what);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
            printf("%s\n", workloads[i].name);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        int help = argc >= 2 && strcmp(argv[1], "--help") == 0;
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    gcs_opts_t o = { .depth = 16, .scale = 1.0, .conservative = 0, .no_stack_scan = 0 };
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--no-stack-scan") == 0) {
            o.no_stack_scan = 1;
            continue;
        }
        if (strcmp(a, "--generational") == 0) {
            o.generational = 1;
            continue;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        char *end = NULL;
        if (strcmp(a, "--depth") == 0) {
            o.depth = (int)strtol(v, &end, 10);
        } else if (strcmp(a, "--scale") == 0) {
            o.scale = strtod(v, &end);
            if (!(o.scale > 0))
                end = (char *)"x";
        } else if (strcmp(a, "--seed") == 0) {
            (void)strtoull(v, &end, 0);
        } else if (strcmp(a, "--kind") == 0) {
            if (strcmp(v, "traced") == 0)
                o.conservative = 0;
            else if (strcmp(v, "conservative") == 0)
                o.conservative = 1;
            else
                end = (char *)"x";
        } else {
            usage(stderr);
            return 2;
        }
        if (end && *end) {
            fprintf(stderr, "loam-gcbench: bad value '%s' for %s\n", v, a);
            return 2;
        }
    }
    for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++)
        if (strcmp(argv[1], workloads[i].name) == 0)
            return workloads[i].fn(&o);
    fprintf(stderr, "loam-gcbench: unknown workload '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
