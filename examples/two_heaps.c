/* two_heaps: two manual heaps side by side — an "AST" heap thrown away at
 * once with loam_heap_destroy, and a "strings" heap freed block by block.
 * Prints both heaps' statistics. */
#include <loam.h>
#include <stdio.h>
#include <string.h>

typedef struct node {
    struct node *left, *right;
    long value;
} node_t;

static node_t *build(loam_heap_t *h, int depth, long *count)
{
    node_t *n = loam_malloc(h, sizeof *n);
    if (!n)
        return NULL;
    (*count)++;
    n->value = depth;
    n->left = depth ? build(h, depth - 1, count) : NULL;
    n->right = depth ? build(h, depth - 1, count) : NULL;
    return n;
}

static long sum(const node_t *n)
{
    return n ? n->value + sum(n->left) + sum(n->right) : 0;
}

int main(void)
{
    loam_heap_t *ast = loam_heap_new(NULL);
    loam_heap_t *strings = loam_heap_new(NULL);
    long nodes = 0;
    node_t *tree = build(ast, 18, &nodes);

    enum { N = 100000 };
    static char *words[N];
    for (int i = 0; i < N; i++) {
        size_t len = 8 + (size_t)(i * 37) % 300;
        words[i] = loam_malloc(strings, len);
        memset(words[i], 'a' + i % 26, len - 1);
        words[i][len - 1] = 0;
    }
    for (int i = 0; i < N; i += 2) {             /* drop every other string */
        loam_free(words[i]);
        words[i] = NULL;
    }
    printf("tree of %ld nodes, value sum %ld\n", nodes, sum(tree));
    printf("\n== the AST heap ==\n");
    loam_heap_print_stats(ast, stdout, LOAM_STATS_TEXT);
    printf("\n== the strings heap (half freed) ==\n");
    loam_heap_print_stats(strings, stdout, LOAM_STATS_TEXT);

    loam_heap_destroy(ast);                      /* every node at once */
    for (int i = 1; i < N; i += 2)
        loam_free(words[i]);
    loam_heap_trim(strings);
    loam_stats_t st;
    loam_heap_stats(strings, &st);
    printf("\nstrings heap after freeing the rest: live %zu bytes, committed %zu bytes\n",
           st.live_bytes, st.committed_bytes);
    loam_heap_destroy(strings);
    return 0;
}
