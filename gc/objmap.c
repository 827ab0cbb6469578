/* gc/objmap.c — a map from object address to a word, for the collector's
 * per-object records (an object's finalizer, the weak references to it), so
 * that setting a finalizer and freeing an object cost O(1) however many there
 * are. Open addressing, linear probing, backward-shift deletion; kept in
 * metadata memory, so the collector never scans it. Caller holds gc->lock
 * (the ephemeron keys' map is also read by marking threads, while nobody
 * writes it: ephemeron.c). */
#include "gc/gc.h"

/* Slots a map keeps however empty it gets (64 KiB). */
#define OBJMAP_KEEP ((size_t)4096)

static size_t slot_of(const objmap_t *m, uintptr_t key)
{
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (m->cap - 1);
}

/* The entries moved to a table of ncap slots (a power of two, more than
 * n / 0.75). false: no memory, the map as it was. */
static bool objmap_resize(objmap_t *m, size_t ncap)
{
    objmap_entry_t *old = m->e;
    size_t ocap = m->cap;
    m->e = meta_alloc(ncap * sizeof *m->e);
    if (!m->e) {
        m->e = old;
        return false;
    }
    m->cap = ncap;
    m->n = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].key)
            objmap_put(m, old[i].key, old[i].value);
    meta_free(old, ocap * sizeof *old);
    return true;
}

static bool objmap_grow(objmap_t *m)
{
    return objmap_resize(m, m->cap ? m->cap * 2 : 64);
}

uintptr_t objmap_get(const objmap_t *m, uintptr_t key)
{
    if (!m->cap)
        return 0;
    for (size_t i = slot_of(m, key);; i = (i + 1) & (m->cap - 1)) {
        if (m->e[i].key == key)
            return m->e[i].value;
        if (!m->e[i].key)
            return 0;
    }
}

bool objmap_put(objmap_t *m, uintptr_t key, uintptr_t value)
{
    if ((m->n + 1) * 4 > m->cap * 3 && !objmap_grow(m))
        return false;
    size_t i = slot_of(m, key);
    while (m->e[i].key && m->e[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->e[i].key)
        m->n++;
    m->e[i] = (objmap_entry_t){ key, value };
    return true;
}

void objmap_del(objmap_t *m, uintptr_t key)
{
    if (!m->cap)
        return;
    size_t i = slot_of(m, key);
    while (m->e[i].key != key) {
        if (!m->e[i].key)
            return;
        i = (i + 1) & (m->cap - 1);
    }
    /* Shift back the entries that probed past the hole. */
    for (size_t j = (i + 1) & (m->cap - 1); m->e[j].key; j = (j + 1) & (m->cap - 1)) {
        size_t home = slot_of(m, m->e[j].key);
        bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) {
            m->e[i] = m->e[j];
            i = j;
        }
    }
    m->e[i] = (objmap_entry_t){ 0, 0 };
    m->n--;
    /* A map an eighth full or less halves (down to OBJMAP_KEEP slots), so
     * that the memory of a spike goes back: a million finalizers or weak
     * references set once and gone kept their map (32 MB) for ever. A
     * halving rehashes under n = cap / 8 entries, and the next needs as many
     * deletions again: O(1) a deletion. */
    if (m->cap > OBJMAP_KEEP && m->n * 8 <= m->cap)
        objmap_resize(m, m->cap / 2);       /* no memory: stays as it is */
}

void objmap_clear(objmap_t *m)
{
    if (m->e)
        memset(m->e, 0, m->cap * sizeof *m->e);
    m->n = 0;
}

void objmap_clear_for(objmap_t *m, size_t expect)
{
    if (m->cap > OBJMAP_KEEP && m->cap / 8 >= expect)
        objmap_release(m);              /* far bigger than needed: made anew at its size */
    else if (m->n)
        objmap_clear(m);
}

void objmap_release(objmap_t *m)
{
    if (m->e)
        meta_free(m->e, m->cap * sizeof *m->e);
    m->e = NULL;
    m->cap = m->n = 0;
}
