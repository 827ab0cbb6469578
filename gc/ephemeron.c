/* gc/ephemeron.c — ephemeron pairs (loam_mark_ephemeron).
 *
 * A pair is two fields of an object being traced: a key, which the pair
 * does not keep alive, and a value, which it keeps alive only while the key
 * is reached some other way. A weak-keyed table whose value refers to its
 * own key (a property table, a cache of wrappers) then lets go of both.
 *
 * The fixpoint: a pair met with its key marked (or with a key that is no
 * block of the heap: always alive) has its value marked at once, as an
 * ordinary field. Any other pair waits, recorded in the collection's list
 * in the order met (any marker appends to it, under weak_fields_lock).
 * After a drain the collecting thread settles the pairs met since it last
 * looked: a key marked by then has its value marked; a key still unmarked
 * goes in eph_map (key block -> its waiting pairs, chained through
 * next_same). From then on the markers watch: push() sends every block it
 * newly marks to a look-up in eph_map (mark.c, push_limit), and a key found
 * there pushes a wake-up on the mark stack, whose scan marks the values of
 * the pairs waiting for it. The collecting thread drains and settles until
 * a settling marks nothing: then every pair still waiting has a key that
 * nothing reaches but ephemeron values of keys nothing reaches.
 *
 * Each pair is looked at once when it is settled and once more if its key
 * wakes it, so a chain of pairs (each value the next pair's key) costs the
 * same in any order: a scan of the whole list after each drain would cost
 * the chain's length times the list's, when the pairs come in the reverse
 * of the chain's order. eph_map is written only between drains, by the
 * collecting thread, so the markers read it without a lock; the list itself
 * may be moved by a marker's append, so a wake-up reads it under the lock.
 * The watch costs push() nothing more than a full stack does: one test of
 * the stack pointer against `limit`, which is 0 while the marker watches.
 *
 * A collection settles twice: after the marking from the roots, and again
 * after the finalizable objects were marked with what they reach. A key
 * that only finalization keeps alive (it waits for its finalizer, or only
 * such an object reaches it) is alive for that collection: its pairs keep
 * their values, so that a finalizer still finds what a weak-keyed table
 * associates with the object (Lua 5.4 keeps weak keys of objects being
 * finalized until they are freed; Racket clears a weak box of a value with
 * a will only after the will ran). Weak fields and weak references, cleared
 * before finalizers run, are decided before that second marking. */
#include "gc/gc.h"

/* Any marker: a pair whose key is not marked (yet) waits. Out of memory to
 * record it, its value is marked as an ordinary field: kept too long,
 * never dangling. */
void loam_mark_ephemeron(loam_tracer_t *t, void **key_field, void **value_field)
{
    if (!t || !key_field || !value_field)
        return;
    gc_state_t *gc = t->m->gc;
    addr_info_t ai;
    uintptr_t block = gc_block_of_heap(gc->heap, *key_field, &ai);
    if (!block || gc_block_marked(&ai)) {
        loam_mark(t, *value_field);
        return;
    }
    pthread_mutex_lock(&gc->weak_fields_lock);
    bool room = gc->neph < gc->cap_eph || gc_array_grow(&gc->eph, &gc->cap_eph, sizeof *gc->eph, 256);
    if (room)
        gc->eph[gc->neph++] = (gc_ephemeron_t){ key_field, value_field, block, 0 };
    pthread_mutex_unlock(&gc->weak_fields_lock);
    if (!room)
        loam_mark(t, *value_field);
}

/* Pair p's key is marked: its value is marked by m. Lock held, or no
 * other marker runs. */
static void keep_value(marker_t *m, gc_ephemeron_t *p)
{
    p->block = 0;
    loam_mark(&m->tracer, *p->value);
}

void gc_ephemerons_wake(marker_t *m, size_t head)
{
    gc_state_t *gc = m->gc;
    pthread_mutex_lock(&gc->weak_fields_lock);
    for (size_t i = head; i;) {
        gc_ephemeron_t *p = &gc->eph[i - 1];
        i = p->next_same;
        if (p->block) {
            keep_value(m, p);
            gc->eph_waiting--;
        }
    }
    pthread_mutex_unlock(&gc->weak_fields_lock);
}

/* Collecting thread, no other marker running. true: a value was marked. */
static bool settle_new_pairs(gc_state_t *gc)
{
    bool marked = false;
    if (AO_load(&gc->eph_lost)) {
        /* A wake-up fell off a full mark stack: any waiting pair may have
         * its key marked now. */
        AO_store(&gc->eph_lost, 0);
        for (size_t i = 0; i < gc->eph_seen; i++) {
            gc_ephemeron_t *p = &gc->eph[i];
            if (p->block && gc_is_marked(gc, (void *)p->block)) {
                keep_value(&gc->mk, p);
                gc->eph_waiting--;
                marked = true;
            }
        }
    }
    for (; gc->eph_seen < gc->neph; gc->eph_seen++) {
        gc_ephemeron_t *p = &gc->eph[gc->eph_seen];
        if (gc_is_marked(gc, (void *)p->block)) {
            keep_value(&gc->mk, p);
            marked = true;
            continue;
        }
        size_t first = (size_t)objmap_get(&gc->eph_map, p->block);
        if (!objmap_put(&gc->eph_map, p->block, gc->eph_seen + 1)) {
            keep_value(&gc->mk, p);         /* no memory to wait: kept as a strong field */
            marked = true;
            continue;
        }
        p->next_same = first;
        gc->eph_waiting++;
    }
    return marked;
}

void gc_ephemerons_settle(gc_state_t *gc)
{
    if (!gc->neph)
        return;                         /* no pair: nothing to watch for */
    /* On before the first look: a value marked there may be the key of a
     * pair put in eph_map a moment before. */
    gc_mark_watch(gc, true);
    while (settle_new_pairs(gc))
        gc_mark_drain(gc);
    /* Marks still to come (the finalizable objects') may wake the rest. */
    gc_mark_watch(gc, gc->eph_waiting > 0);
}

void gc_ephemerons_end(gc_state_t *gc, bool clear)
{
    gc_mark_watch(gc, false);
    for (size_t i = 0; clear && i < gc->neph; i++) {
        gc_ephemeron_t *p = &gc->eph[i];
        /* A pair met twice (an old object on two dirty cards, a rescan
         * after an overflow) is cleared and counted once. */
        if (p->block && *p->key) {
            *p->key = NULL;
            *p->value = NULL;
            gc->ephemerons_cleared++;
        }
    }
    size_t used = gc->neph;
    gc->neph = gc->eph_seen = gc->eph_waiting = 0;
    /* The records live only while a marking does. After a spike (a big
     * weak table dropped, say) their memory goes back once a marking needs
     * a quarter of it or less: kept, 100,000 pairs held 8 MB, and the map
     * was cleared whole at every later collection. Small ones stay. */
    gc_array_trim(&gc->eph, &gc->cap_eph, sizeof *gc->eph, used);
    objmap_clear_for(&gc->eph_map, used);
}
