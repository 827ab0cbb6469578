/* runtime/error.c — what bad input gets: one line on stderr naming the fault
 * and the address, then the heap's reaction (its error callback, else abort).
 * Written with write(2) and a stack buffer: the heap may be corrupt, so
 * nothing here allocates. */
#include "runtime/runtime.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void write_line(const char *buf, int len)
{
    if (len < 0)
        return;
    if (len > 511)
        len = 511;
    ssize_t r = write(STDERR_FILENO, buf, (size_t)len);
    (void)r;
}

void loam_warn(const char *fmt, ...)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf, "loam: warning: ");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > 510)
        n = 510;
    buf[n++] = '\n';
    write_line(buf, n);
}

void loam_fault(loam_heap_t *h, const char *fault, const void *addr, size_t size)
{
    char buf[512];
    int n;
    char label[HEAP_LABEL_MAX];
    if (size)
        n = snprintf(buf, sizeof buf, "loam: error: %s at %p (block of %zu bytes, heap %s)\n",
                     fault, addr, size, heap_label(h, label));
    else
        n = snprintf(buf, sizeof buf, "loam: error: %s at %p\n", fault, addr);
    if (!h)
        h = &loam_default_heap;
    if (h->cfg.error) {
        if (loam_opt(verbose))
            write_line(buf, n);
        h->cfg.error(h, fault, (void *)addr, h->cfg.user);
        return;
    }
    write_line(buf, n);
    abort();
}

/* Corruption found inside the core (a free block's key overwritten). */
static void core_fault(const char *what, void *addr)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, "loam: error: heap corruption: %s at %p\n", what, addr);
    write_line(buf, n);
    abort();
}

void error_install_core_hook(void);
void error_install_core_hook(void)
{
    alloc_fault_hook = core_fault;
}
