/* alloc/sizeclass.c — request size -> size class.
 *
 * Classes 0..7 are 16..128 in steps of 16 (the 16-byte alignment makes finer
 * steps impossible). Above 128 B each doubling [2^k, 2^(k+1)] has 8 classes
 * spaced 2^(k-3) apart, so a request wastes less than 1/8 (12.5%) of the
 * block it gets. The last of these is 512 KiB. Classes 104..106 are 24, 40
 * and 56 bytes, for requests that may be 8-byte aligned (sizeclass_of_by8):
 * a 24-byte cons wastes a quarter of a 32-byte block. docs/internals.md has
 * the table.
 *
 * Each class also has a slab length in 64 KiB pages: one page while at least
 * 8 blocks fit, else enough pages for a few blocks with < 1/16 tail waste. */
#include "alloc/alloc.h"

uint8_t  sizeclass_small[SMALL_MAX / 16 + 1];
uint32_t sizeclass_size[NUM_CLASSES];
uint8_t  sizeclass_pages[NUM_CLASSES];

static size_t class_size_of(unsigned cls)
{
    if (cls >= CLASS_BY8_FIRST)
        return 24 + 16 * (size_t)(cls - CLASS_BY8_FIRST);
    if (cls < 8)
        return 16u * (cls + 1);
    unsigned j = cls - 8, lg = 7 + j / 8, k = j % 8 + 1;
    return ((size_t)1 << lg) + ((size_t)k << (lg - 3));
}

int sizeclass_of_aligned(size_t n, size_t align)
{
    if (n > CLASS_MAX_SIZE)
        return -1;
    for (unsigned c = sizeclass_of(n ? n : 1); c < CLASS_BY8_FIRST; c++)
        if ((sizeclass_size[c] & (align - 1)) == 0)
            return (int)c;
    return -1;
}

static unsigned slab_pages_for(size_t size)
{
    if (size * 8 <= PAGE_SIZE)
        return 1;
    unsigned min_blocks = size <= 32 * 1024 ? 8 : size <= 128 * 1024 ? 4 : 2;
    unsigned p = (unsigned)((min_blocks * size + PAGE_SIZE - 1) / PAGE_SIZE);
    for (unsigned q = p; q < p + 8 && q < PAGES_PER_SEGMENT - 1; q++) {
        size_t run = (size_t)q * PAGE_SIZE;
        if ((run % size) * 16 <= run)
            return q;
    }
    return p;
}

void sizeclass_init(void)
{
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
        sizeclass_size[c] = (uint32_t)class_size_of(c);
        sizeclass_pages[c] = (uint8_t)slab_pages_for(sizeclass_size[c]);
    }
    for (size_t i = 0; i <= SMALL_MAX / 16; i++)
        sizeclass_small[i] = (uint8_t)sizeclass_of_generic(i * 16);
}
