/* GCBench after Ellis, Kovac and Boehm: a stretch tree of depth 18, then a
 * long-lived tree of depth 16 (built top-down) and a long-lived array of
 * 500 000 doubles (pointer-free), then for each depth d = 4, 6, ..., 16,
 * 2 x TreeSize(18) / TreeSize(d) temporary trees built top-down (Populate)
 * and as many built bottom-up (MakeTree). Nodes are two pointers and two
 * ints (24 bytes). --scale multiplies the number of temporary trees.
 *
 * Unlike the original, the whole array is written (it is large and live,
 * and every variant pays for its pages), and trees are verified: the first
 * temporary tree of each batch, the stretch tree and, at the end, the
 * long-lived tree and the array, every node must be intact. */
#include "gcshim.h"
#include "../workloads/bench.h"

#include <stdio.h>

enum {
    STRETCH_DEPTH = 18,
    LONG_LIVED_DEPTH = 16,
    ARRAY_SIZE = 500000,
    MIN_DEPTH = 4,
    MAX_DEPTH = 16,
};

typedef struct gnode {
    struct gnode *left, *right;
    int i, j;
} gnode_t;

static long tree_size(int depth)
{
    return (1L << (depth + 1)) - 1;
}

static gnode_t *new_node(gnode_t *l, gnode_t *r)
{
    gnode_t *n = gcs_check(gcs_alloc(sizeof *n));
    n->left = l;
    n->right = r;
    n->i = 1;
    n->j = 2;
    return n;
}

/* Top-down: the children hang from a node that is already reachable. */
static void populate(int depth, gnode_t *n)
{
    if (depth <= 0)
        return;
    depth--;
    n->left = new_node(NULL, NULL);
    gcs_written(&n->left);
    n->right = new_node(NULL, NULL);
    gcs_written(&n->right);
    populate(depth, n->left);
    populate(depth, n->right);
}

/* Bottom-up: the left subtree is held only by this frame while the right
 * one is built. */
static gnode_t *make_tree(int depth)
{
    if (depth <= 0)
        return new_node(NULL, NULL);
    gnode_t *l = make_tree(depth - 1);
    GCS_PUSH(l);
    gnode_t *r = make_tree(depth - 1);
    GCS_PUSH(r);
    gnode_t *n = new_node(l, r);
    GCS_POP(2);
    return n;
}

static void free_tree(gnode_t *n)
{
    if (n->left)
        free_tree(n->left);
    if (n->right)
        free_tree(n->right);
    gcs_free(n);
}

/* Nodes counted; *broken counts nodes whose fields are not as written. */
static long walk(const gnode_t *n, long *broken)
{
    long c = 1;
    if (n->i != 1 || n->j != 2)
        (*broken)++;
    if (n->left)
        c += walk(n->left, broken);
    if (n->right)
        c += walk(n->right, broken);
    return c;
}

static long verify(const gnode_t *t, int depth, uint64_t *sum)
{
    long broken = 0;
    long c = walk(t, &broken);
    *sum = *sum * 1000003u + (uint64_t)c;
    return broken + (c != tree_size(depth));
}

static __attribute__((noinline)) long stretch(uint64_t *sum)
{
    gnode_t *t = make_tree(STRETCH_DEPTH);
    GCS_PUSH(t);
    long bad = verify(t, STRETCH_DEPTH, sum);
    GCS_POP(1);
    if (GCS_EXPLICIT_FREE)
        free_tree(t);
    return bad;
}

static __attribute__((noinline)) long time_construction(int depth, long iters, uint64_t *sum)
{
    long bad = 0;
    for (long i = 0; i < iters; i++) {
        gnode_t *t = new_node(NULL, NULL);
        GCS_PUSH(t);
        populate(depth, t);
        if (i == 0)
            bad += verify(t, depth, sum);
        GCS_POP(1);
        if (GCS_EXPLICIT_FREE)
            free_tree(t);
    }
    for (long i = 0; i < iters; i++) {
        gnode_t *t = make_tree(depth);
        if (i == 0)
            bad += verify(t, depth, sum);
        if (GCS_EXPLICIT_FREE)
            free_tree(t);
    }
    return bad;
}

int gcw_gcbench(const gcs_opts_t *o)
{
    if (gcs_init(o, 2) != 0)
        return 2;
    uint64_t sum = 0;
    long bad = 0;
    double t0 = bench_now();

    bad += stretch(&sum);

    gnode_t *long_lived = new_node(NULL, NULL);
    GCS_PUSH(long_lived);
    populate(LONG_LIVED_DEPTH, long_lived);

    double *array = gcs_check(gcs_alloc_atomic(sizeof(double) * ARRAY_SIZE));
    GCS_PUSH(array);
    for (long i = 0; i < ARRAY_SIZE; i++)
        array[i] = 1.0 / (double)(i + 1);

    for (int d = MIN_DEPTH; d <= MAX_DEPTH; d += 2) {
        long iters = (long)((double)(2 * tree_size(STRETCH_DEPTH) / tree_size(d)) * o->scale);
        if (iters < 1)
            iters = 1;
        bad += time_construction(d, iters, &sum);
    }

    bad += verify(long_lived, LONG_LIVED_DEPTH, &sum);
    for (long i = 0; i < ARRAY_SIZE; i += 997)
        bad += array[i] != 1.0 / (double)(i + 1);
    GCS_POP(2);
    if (GCS_EXPLICIT_FREE) {
        free_tree(long_lived);
        gcs_free(array);
    }
    bench_escape(long_lived);
    bench_escape(array);

    double t1 = bench_now();
    int rc = gcs_report("gcbench", o, t1 - t0, sum, bad);
    gcs_finish();
    return rc;
}
