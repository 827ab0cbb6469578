/* alloc/os.c — the page source: address space and memory from the OS.
 *
 * loam never uses brk: the break is one contiguous top that can only recede
 * past the last live byte, so a single long-lived block near the top pins
 * everything below it. Independent mappings can each go back on their own.
 *
 * "Commit" on Linux is implicit: a fresh private mapping costs nothing until
 * touched, and MADV_DONTNEED drops pages again (they read back as zeros).
 */
#define _GNU_SOURCE
#include "alloc/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

AO_t os_reserved_bytes;
AO_t os_committed_bytes;

/* Where the next aligned reservation is tried first: just below the last
 * one (the kernel hands out addresses top-down, so that range is usually
 * free). 0: none yet. A lost race between two threads costs one more try. */
static AO_t reserve_hint;

/* A mapping of size bytes at the hint, if the kernel puts it there: one
 * system call instead of three (map, unmap head, unmap tail). Segments and
 * large blocks are reserved all the time under churn of big blocks. */
static void *reserve_at_hint(size_t size, size_t align, size_t offset, int noreserve)
{
    uintptr_t hint = AO_load(&reserve_hint);
    if (hint < size + align)
        return NULL;
    uintptr_t want = ((hint - size + offset) & ~(uintptr_t)(align - 1)) - offset;
    char *p = mmap((void *)want, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | noreserve, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if ((uintptr_t)p != want) {             /* taken: the kernel chose elsewhere */
        munmap(p, size);
        return NULL;
    }
    return p;
}

/* Map size bytes at an address p with p + offset a multiple of align (a
 * power of two >= OS_PAGE; offset a multiple of OS_PAGE below align): at
 * the hint if that works, else over-map by align, then unmap the head
 * before p and the tail. The offset lets a large block take an alignment
 * above the segment size without mapping the gap up to it.
 *
 * `accounted`: the mapping is memory the caller is about to hand out (a
 * large block), so the kernel's overcommit policy must judge it, as it
 * judges glibc's mmap for a big malloc: under the default heuristic a
 * request past RAM + swap fails here, with ENOMEM, instead of succeeding
 * and getting the process OOM-killed when it touches the block
 * (python's bytearray(2**40)); later growth by mremap is judged too. Only
 * the search span of an alignment above the segment size is mapped
 * MAP_NORESERVE (it may be 2^40 bytes; all of it but the block goes at
 * once), and the block's part is then mapped again, accounted. Segments,
 * metadata and reservations that mremap moves pages into are not
 * accounted: their pages are judged where they come from. */
static void *reserve(size_t size, size_t align, size_t offset, bool accounted)
{
    if (size > SIZE_MAX - align) {
        errno = ENOMEM;
        return NULL;
    }
    int noreserve = accounted ? 0 : MAP_NORESERVE;
    if (align > OS_PAGE) {
        char *h = reserve_at_hint(size, align, offset, noreserve);
        if (h) {
            AO_store(&reserve_hint, (uintptr_t)h);
            AO_fetch_and_add(&os_reserved_bytes, size);
            return h;
        }
    }
    size_t span = size + align;
    bool remap = accounted && align > SEGMENT_SIZE;
    char *p = mmap(NULL, span, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | (remap ? MAP_NORESERVE : noreserve), -1, 0);
    if (p == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    uintptr_t a = (((uintptr_t)p + offset + align - 1) & ~(uintptr_t)(align - 1)) - offset;
    size_t head = a - (uintptr_t)p;
    size_t tail = span - head - size;
    if (head)
        munmap(p, head);
    if (tail)
        munmap((char *)a + size, tail);
    if (remap && mmap((void *)a, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
        munmap((void *)a, size);
        errno = ENOMEM;
        return NULL;
    }
    if (align > OS_PAGE)
        AO_store(&reserve_hint, a);
    AO_fetch_and_add(&os_reserved_bytes, size);
    return (void *)a;
}

void *os_reserve_offset_aligned(size_t size, size_t align, size_t offset)
{
    return reserve(size, align, offset, false);
}

void *os_map_block(size_t size, size_t align, size_t offset)
{
    return reserve(size, align, offset, true);
}

void *os_reserve_aligned(size_t size, size_t align)
{
    return os_reserve_offset_aligned(size, align, 0);
}

void os_release(void *p, size_t size)
{
    if (munmap(p, size) == 0)
        AO_fetch_and_add(&os_reserved_bytes, (AO_t)0 - size);
    /* The last reservation goes: the next one takes its place again. Else
     * each heap made and destroyed in turn walked the hint down the
     * address space, and the segment map's entries for ever new addresses
     * grew resident (8 bytes a segment). */
    AO_compare_and_swap(&reserve_hint, (AO_t)p, (AO_t)p + size);
}

void os_decommit(void *p, size_t size)
{
    /* DONTNEED frees the pages at once (RSS drops now), unlike MADV_FREE. */
    madvise(p, size, MADV_DONTNEED);
}

void os_advise_huge(void *p, size_t size)
{
    /* A kernel without transparent huge pages refuses it: no harm. */
    madvise(p, size, MADV_HUGEPAGE);
}

void os_advise_small(void *p, size_t size)
{
    madvise(p, size, MADV_NOHUGEPAGE);
}

size_t os_resident(void *p, size_t size)
{
    size_t pages = (size + OS_PAGE - 1) / OS_PAGE;
    unsigned char vec[1024];
    size_t resident = 0;
    for (size_t done = 0; done < pages;) {
        size_t n = pages - done < sizeof vec ? pages - done : sizeof vec;
        if (mincore((char *)p + done * OS_PAGE, n * OS_PAGE, vec) != 0)
            break;
        for (size_t i = 0; i < n; i++)
            resident += vec[i] & 1;
        done += n;
    }
    return resident * OS_PAGE;
}

uint64_t os_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* CPUs this process may run on: its affinity mask (taskset, a container's
 * cpuset), else the CPUs online. */
unsigned os_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

/* Threads runnable on the whole machine at this moment, the caller
 * included: the "runnable/total" field of /proc/loadavg, or 0 when it
 * cannot be read. System calls only: stdio could allocate, and loam may be
 * the malloc (the caller may hold its locks). A few microseconds. */
unsigned os_runnable_threads(void)
{
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* "0.50 0.40 0.30 2/345 12345": the fourth field's numerator. */
    const char *p = buf;
    for (int field = 0; field < 3; field++) {
        while (*p && *p != ' ')
            p++;
        while (*p == ' ')
            p++;
    }
    unsigned r = 0;
    const char *digits = p;
    while (*p >= '0' && *p <= '9')
        r = r * 10 + (unsigned)(*p++ - '0');
    return p > digits && *p == '/' ? r : 0;
}

/* The process's free key (runtime/init.c). */
uintptr_t os_random_seed(void)
{
    uintptr_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        r = (uintptr_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uintptr_t)&r ^ (uintptr_t)getpid();
    }
    /* splitmix the bits so a weak source still spreads */
    r ^= r >> 31; r *= 0xBF58476D1CE4E5B9ull; r ^= r >> 27; r *= 0x94D049BB133111EBull; r ^= r >> 31;
    return r | 1;
}
