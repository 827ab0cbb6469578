/* Run under valgrind by the LOAM_VALGRIND build (tests/CMakeLists.txt): a
 * read of a freed loam block, past the two words loam keeps for itself, must
 * be reported by memcheck as a read inside a freed block. A plain program:
 * the test passes on memcheck's message, not on this exit code. */
#include <stdio.h>
#include <string.h>

#include "loam.h"

int main(void)
{
    loam_heap_t *h = loam_heap_new(NULL);
    if (!h)
        return 1;
    unsigned char *p = loam_malloc(h, 64);
    if (!p)
        return 1;
    memset(p, 0x5A, 64);
    loam_free(p);
    volatile unsigned char *q = p;
    int seen = q[40];                   /* use after free */
    printf("read %d from a freed block\n", seen);
    loam_heap_destroy(h);
    return 0;
}
