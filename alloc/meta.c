/* alloc/meta.c — memory for the allocator's own metadata (arenas, heaps,
 * thread caches, side arrays). Kept apart from user blocks so a heap overflow
 * cannot reach it, and never from malloc, so loam can be the malloc.
 *
 * Power-of-two bins from 64 B to 4 KiB carved from 64 KiB chunks; larger
 * requests get a mapping of their own. Zeroed on return. */
#include "alloc/alloc.h"

#include <string.h>

#define META_MIN_SHIFT 6
#define META_BINS      7            /* 64 .. 4096 */
#define META_CHUNK     ((size_t)64 * 1024)

static pthread_mutex_t meta_lock = PTHREAD_MUTEX_INITIALIZER;
static void *meta_bins[META_BINS];
static char *meta_bump, *meta_end;

static int meta_bin(size_t size)
{
    int b = 0;
    while (((size_t)1 << (META_MIN_SHIFT + b)) < size)
        b++;
    return b;
}

void *meta_alloc(size_t size)
{
    if (size > ((size_t)1 << (META_MIN_SHIFT + META_BINS - 1))) {
        size_t len = (size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1);
        return os_reserve_aligned(len, OS_PAGE);      /* fresh pages are zero */
    }
    int b = meta_bin(size);
    size_t len = (size_t)1 << (META_MIN_SHIFT + b);
    pthread_mutex_lock(&meta_lock);
    void *p = meta_bins[b];
    if (p) {
        meta_bins[b] = *(void **)p;
    } else {
        if (meta_bump == NULL || (size_t)(meta_end - meta_bump) < len) {
            meta_bump = os_reserve_aligned(META_CHUNK, OS_PAGE);
            if (!meta_bump) {
                meta_end = NULL;
                pthread_mutex_unlock(&meta_lock);
                return NULL;
            }
            meta_end = meta_bump + META_CHUNK;
        }
        p = meta_bump;
        meta_bump += len;
    }
    pthread_mutex_unlock(&meta_lock);
    memset(p, 0, len);
    return p;
}

void meta_free(void *p, size_t size)
{
    if (!p)
        return;
    if (size > ((size_t)1 << (META_MIN_SHIFT + META_BINS - 1))) {
        os_release(p, (size + OS_PAGE - 1) & ~(size_t)(OS_PAGE - 1));
        return;
    }
    int b = meta_bin(size);
    pthread_mutex_lock(&meta_lock);
    *(void **)p = meta_bins[b];
    meta_bins[b] = p;
    pthread_mutex_unlock(&meta_lock);
}

void alloc_prefork(void)
{
    pthread_mutex_lock(&segmap_lock);
    pthread_mutex_lock(&meta_lock);
}

void alloc_postfork(void)
{
    pthread_mutex_unlock(&meta_lock);
    pthread_mutex_unlock(&segmap_lock);
}
