/* Free runs past the retained budget are given back by the purge thread with
 * the arena lock dropped (alloc/segment.c, arena_decommit_excess). While a
 * batch's pages are being given back, its runs must be out of reach: an
 * allocation made in that window, from the very heap, must not land on them
 * (its contents would read as zeros afterwards), and the memory must still
 * go back.
 *
 * White box: alloc_decommit_hook runs on the purge thread between taking a
 * batch out and giving its pages back, and again after. */
#include "harness.h"
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "loam.h"
#include "alloc/alloc.h"

enum { HOOK_BLOCKS = 2000, HOOK_SIZE = 4096 };

static loam_heap_t *hook_heap;
static void *hook_blocks[HOOK_BLOCKS];
static int hook_made;                      /* blocks allocated inside the window */
static AO_t hook_checked, hook_bad, hook_batches;

static unsigned char pattern(size_t block, size_t i)
{
    return (unsigned char)(block * 131 + i * 7 + 1);
}

static void decommit_hook(arena_t *a, bool given_back)
{
    (void)a;
    AO_fetch_and_add1(&hook_batches);
    if (!given_back && hook_made == 0) {
        /* The window: the batch is out of the bins, its pages not yet given back. */
        for (int i = 0; i < HOOK_BLOCKS; i++) {
            unsigned char *p = loam_malloc(hook_heap, HOOK_SIZE);
            if (!p)
                break;
            for (size_t j = 0; j < HOOK_SIZE; j++)
                p[j] = pattern((size_t)i, j);
            hook_blocks[hook_made++] = p;
        }
    } else if (given_back && hook_made && !AO_load(&hook_checked)) {
        size_t bad = 0;
        for (int i = 0; i < hook_made; i++) {
            unsigned char *p = hook_blocks[i];
            for (size_t j = 0; j < HOOK_SIZE; j++)
                if (p[j] != pattern((size_t)i, j)) {
                    bad++;
                    break;
                }
        }
        AO_store(&hook_bad, bad);
        AO_store_release(&hook_checked, 1);
    }
}

Test(decommit, blocks_allocated_while_runs_are_given_back_keep_their_contents, .timeout = 120)
{
    cr_assert_eq(loam_option_set("decay_ms", 600000), 0);     /* only the budget gives back */
    cr_assert_eq(loam_option_set("retain_max", 1024 * 1024), 0);
    hook_heap = loam_heap_new(NULL);
    cr_assert_not_null(hook_heap);
    enum { N = 16384 };
    static void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = loam_malloc(hook_heap, HOOK_SIZE);
        cr_assert_not_null(p[i]);
        memset(p[i], 0x5a, HOOK_SIZE);                /* 64 MiB, resident */
    }
    alloc_decommit_hook = decommit_hook;
    for (int i = 0; i < N; i++)
        loam_free(p[i]);                              /* slabs empty: runs past the budget */
    struct timespec ms = { 0, 1000 * 1000 };
    for (int waited = 0; waited < 10000 && !AO_load_acquire(&hook_checked); waited++)
        nanosleep(&ms, NULL);
    alloc_decommit_hook = NULL;
    cr_assert(AO_load(&hook_batches) > 0, "the purge thread gave nothing back in 10 s");
    cr_assert(AO_load_acquire(&hook_checked), "no batch was given back after the window");
    cr_assert_gt(hook_made, 0, "nothing could be allocated in the window");
    cr_assert_eq(AO_load(&hook_bad), 0,
                 "%zu of %d blocks allocated while runs were being given back lost their "
                 "contents: they were carved from those runs", (size_t)AO_load(&hook_bad),
                 hook_made);
    for (int i = 0; i < hook_made; i++)
        loam_free(hook_blocks[i]);
    loam_stats_t st;
    loam_heap_stats(hook_heap, &st);
    cr_assert_eq(st.live_blocks, 0);
    loam_heap_destroy(hook_heap);
}
