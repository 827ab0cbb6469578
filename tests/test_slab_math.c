/* The slab's division by multiplication (alloc/alloc.h, slab_div_m): for
 * every size class, over a whole segment's worth of offsets on both sides of
 * a slab's start, the high half of off * M is off / size, the low half tells
 * a block start, and the free fast path's one compare (low < bumped * step)
 * accepts exactly the block starts below the bump line. The free path trusts
 * this test alone for "in the slab, at a block start, below the line".
 *
 * Offsets tried per class: every offset near a block boundary of the slab
 * and one block either side (each multiple of the size, -20..+20), every
 * offset in the first and last 4 KiB of the range, and random ones (the seed is printed; LOAM_TEST_SEED replays). */
#include "harness.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "alloc/alloc.h"

static uint64_t rng_state;
static uint64_t rng(void)
{
    uint64_t x = rng_state;            /* xorshift64* */
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* The low half of off * M is under M exactly at a block start (alloc.h's
 * comment on slab_div_m): the property the free path's fused compare
 * builds on. */
static bool offset_is_block_start(uint64_t off, uint64_t m)
{
    return off * m < m;
}

/* Every property for one offset (may be negative, as the free path's
 * a - start is for no valid pointer, but must still be refused). */
static void check_offset(uint32_t size, int64_t off, uint32_t bumped, uint64_t *checked)
{
    const uint64_t m = slab_div_m(size);
    const uint64_t below = (uint64_t)bumped * slab_div_step(size);
    const uint64_t u = (uint64_t)off;
    const bool start = off >= 0 && off % size == 0;
    if (off >= 0 && off < ((int64_t)1 << 32))
        cr_assert_eq(slab_offset_index(u, m), (size_t)(off / size),
                     "size %" PRIu32 ": index of offset %" PRId64, size, off);
    if (off >= 0)
        cr_assert_eq(offset_is_block_start(u, m), start,
                     "size %" PRIu32 ": offset %" PRId64 " block start?", size, off);
    const bool accepted = u * m < below;
    const bool expected = start && (uint64_t)off / size < bumped;
    cr_assert_eq(accepted, expected,
                 "size %" PRIu32 ", bumped %" PRIu32 ": the free path's test of offset %" PRId64
                 " says %d", size, bumped, off, accepted);
    ++*checked;
}

Test(slab_math, every_class_every_boundary)
{
    sizeclass_init();
    uint64_t seed = getenv("LOAM_TEST_SEED") ? strtoull(getenv("LOAM_TEST_SEED"), NULL, 0)
                                             : (uint64_t)time(NULL) * 2654435761u + 1;
    printf("slab_math seed %" PRIu64 " (LOAM_TEST_SEED replays)\n", seed);
    fflush(stdout);
    rng_state = seed | 1;
    uint64_t checked = 0;
    const int64_t range = (int64_t)SEGMENT_SIZE;     /* a - start never leaves (-4, 4) MiB */
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        const uint32_t size = sizeclass_size[c];
        const uint32_t cap = (uint32_t)((size_t)sizeclass_pages[c] * PAGE_SIZE / size);
        cr_assert(cap >= 1);
        /* the bounds the derivation in alloc.h relies on */
        cr_assert_lt(size, (uint32_t)1 << 29);
        cr_assert_lt((uint64_t)cap * slab_div_step(size), (uint64_t)1 << 32,
                     "start_below of a full slab of %" PRIu32 " fits 32 bits", size);
        const uint32_t bumps[] = { 0, 1, cap / 2, cap - 1, cap, 1 + (uint32_t)(rng() % cap) };
        for (unsigned b = 0; b < sizeof bumps / sizeof bumps[0]; b++) {
            const uint32_t bumped = bumps[b];
            for (int64_t q = -(int64_t)cap - 2; q <= (int64_t)cap + 2; q++)
                for (int64_t d = -20; d <= 20; d++)
                    check_offset(size, q * (int64_t)size + d, bumped, &checked);
            for (int64_t off = -4096; off < 4096; off++)
                check_offset(size, off, bumped, &checked);
            for (int64_t off = range - 4096; off < range; off++) {
                check_offset(size, off, bumped, &checked);
                check_offset(size, -off, bumped, &checked);
            }
            for (int i = 0; i < 20000; i++)
                check_offset(size, (int64_t)(rng() % (2 * (uint64_t)range)) - range, bumped,
                             &checked);
        }
    }
    printf("slab_math: %" PRIu64 " offsets checked\n", checked);
}
