/* binary-trees (as in the Computer Language Benchmarks Game): a stretch tree
 * of depth max+1, a long-lived tree of depth max, then for each depth d =
 * 4, 6, ..., max, 2^(max - d + 4) short-lived trees of depth d, built
 * bottom-up and walked once; last, the long-lived tree is walked again.
 * Default max = 16 (--depth N for a bigger run). Nodes are two pointers.
 *
 * Checks: every walk must count 2^(d+1) - 1 nodes; a collector that freed a
 * live node (and handed it out again) breaks the count or the walk. */
#include "gcshim.h"
#include "../workloads/bench.h"

#include <stdio.h>

typedef struct node {
    struct node *left, *right;
} node_t;

static node_t *new_node(node_t *l, node_t *r)
{
    node_t *n = gcs_check(gcs_alloc(sizeof *n));
    n->left = l;
    n->right = r;
    return n;
}

static node_t *bottom_up(int depth)
{
    if (depth <= 0)
        return new_node(NULL, NULL);
    node_t *l = bottom_up(depth - 1);
    GCS_PUSH(l);
    node_t *r = bottom_up(depth - 1);
    GCS_PUSH(r);
    node_t *n = new_node(l, r);
    GCS_POP(2);
    return n;
}

static long check(const node_t *n)
{
    if (!n->left)
        return 1;
    return 1 + check(n->left) + check(n->right);
}

static void free_tree(node_t *n)
{
    if (n->left) {
        free_tree(n->left);
        free_tree(n->right);
    }
    gcs_free(n);
}

static long tree_size(int depth)
{
    return (1L << (depth + 1)) - 1;
}

/* Its own frame, so that no pointer to the stretch tree is left in the
 * caller's stack for a conservative scan to find. */
static __attribute__((noinline)) long stretch(int depth)
{
    node_t *t = bottom_up(depth);
    long c = check(t);
    if (GCS_EXPLICIT_FREE)
        free_tree(t);
    return c;
}

static __attribute__((noinline)) long short_lived(int depth, long iterations)
{
    long c = 0;
    for (long i = 0; i < iterations; i++) {
        node_t *t = bottom_up(depth);
        c += check(t);
        if (GCS_EXPLICIT_FREE)
            free_tree(t);
    }
    return c;
}

int gcw_binary_trees(const gcs_opts_t *o)
{
    const int min_depth = 4;
    int max_depth = o->depth < min_depth + 2 ? min_depth + 2 : o->depth;
    if (max_depth > 26) {
        fprintf(stderr, "loam-gcbench: --depth at most 26\n");
        return 2;
    }
    if (gcs_init(o, 2) != 0)
        return 2;
    uint64_t sum = 0;
    long bad = 0;
    double t0 = bench_now();

    long c = stretch(max_depth + 1);
    bad += c != tree_size(max_depth + 1);
    sum = sum * 1000003u + (uint64_t)c;

    node_t *long_lived = bottom_up(max_depth);
    GCS_PUSH(long_lived);

    for (int d = min_depth; d <= max_depth; d += 2) {
        long iterations = 1L << (max_depth - d + min_depth);
        c = short_lived(d, iterations);
        bad += c != iterations * tree_size(d);
        sum = sum * 1000003u + (uint64_t)c;
    }

    c = check(long_lived);
    bad += c != tree_size(max_depth);
    sum = sum * 1000003u + (uint64_t)c;
    if (GCS_EXPLICIT_FREE)
        free_tree(long_lived);
    GCS_POP(1);
    bench_escape(long_lived);   /* live to the end in the collected variants */

    double t1 = bench_now();
    int rc = gcs_report("binary-trees", o, t1 - t0, sum, bad);
    gcs_finish();
    return rc;
}
