/* gc/finalize.c — finalizers and weak references.
 *
 * After the roots are marked: every weak reference whose target's block is
 * unmarked is cleared (so none can hand out an object about to be finalized
 * or freed);
 * then every finalizable object still unmarked moves, in registration order,
 * to the ready list and is marked with everything it reaches, so it survives
 * this collection. The ready finalizers run after the world restarts, in the
 * collecting thread. Each entry leaves the table when it becomes ready: a
 * finalizer runs once, even if its object is resurrected.
 */
#include "gc/gc.h"

bool gc_array_grow(void *array_at, size_t *cap, size_t elem, size_t first)
{
    void *old;
    memcpy(&old, array_at, sizeof old);
    size_t ncap = *cap ? *cap * 2 : first;
    void *n = meta_alloc(ncap * elem);
    if (!n)
        return false;
    if (old) {
        memcpy(n, old, *cap * elem);
        meta_free(old, *cap * elem);
    }
    memcpy(array_at, &n, sizeof n);
    *cap = ncap;
    return true;
}

void gc_array_trim(void *array_at, size_t *cap, size_t elem, size_t used)
{
    if (*cap * elem <= (size_t)64 * 1024 || *cap / 4 < used)
        return;
    void *old;
    memcpy(&old, array_at, sizeof old);
    meta_free(old, *cap * elem);
    old = NULL;
    memcpy(array_at, &old, sizeof old);
    *cap = 0;
}

/* Entries of the finalizer table kept however few are set. */
#define FINS_KEEP ((size_t)1024)

static bool grow_fins(finalizer_t **array, size_t *cap)
{
    return gc_array_grow(array, cap, sizeof **array, 64);
}

/* Lock held. obj's finalizers that a collection queued but that have not
 * run yet (in gc->ready, or in a batch a thread runs, after its running
 * entry) are cancelled: their entries lose obj, and the runner skips them
 * and no collection marks them any more. with_running: the entry a thread
 * is running now too (a free of obj: the block must not stay a root, it is
 * free). Without this a finalizer that freed another object found dead by
 * the same collection, or removed that object's finalizer, let it run all
 * the same, on a freed block (maybe handed out again meanwhile). */
static void cancel_pending(gc_state_t *gc, void *obj, bool with_running)
{
    uintptr_t count = objmap_get(&gc->pending_map, (uintptr_t)obj);
    if (!count)
        return;                     /* the usual case: nothing of obj waits */
    for (size_t i = 0; i < gc->nready; i++)
        if (gc->ready[i].obj == obj) {
            __atomic_store_n(&gc->ready[i].obj, NULL, __ATOMIC_RELAXED);
            count--;
        }
    for (finalizer_batch_t *b = gc->running; b; b = b->link) {
        size_t next = AO_load(&b->next);
        for (size_t i = with_running ? next : next + 1; i < b->n; i++)
            if (b->list[i].obj == obj) {
                __atomic_store_n(&b->list[i].obj, NULL, __ATOMIC_RELAXED);
                count--;
            }
    }
    if (count)
        objmap_put(&gc->pending_map, (uintptr_t)obj, count);    /* the running one: not new, no growth */
    else
        objmap_del(&gc->pending_map, (uintptr_t)obj);
}

/* Lock held: one of obj's waiting finalizers ran, or was taken off. */
static void pending_done(gc_state_t *gc, void *obj)
{
    uintptr_t count = objmap_get(&gc->pending_map, (uintptr_t)obj);
    if (count > 1)
        objmap_put(&gc->pending_map, (uintptr_t)obj, count - 1);
    else
        objmap_del(&gc->pending_map, (uintptr_t)obj);
}

int loam_finalizer_set(loam_heap_t *h, void *obj, loam_finalizer_fn fn, void *data)
{
    /* Removal works in either mode: a finalizer set while the heap was
     * collected outlives a switch to manual, and runs after the switch back
     * unless removed. Setting one needs a collected heap. */
    if (!h || !obj || (fn && h->mode != LOAM_GC) || loam_heap_of(obj) != h) {
        errno = EINVAL;
        return -1;
    }
    addr_info_t ai;
    addr_classify(obj, &ai);
    if (ai.kind != ADDR_BLOCK) {
        errno = EINVAL;
        return -1;
    }
    if (!fn && !__atomic_load_n(&h->gc, __ATOMIC_ACQUIRE))
        return 0;                    /* never collected: no finalizer to remove */
    gc_state_t *gc = gc_state_get(h);
    int rc = 0;
    pthread_mutex_lock(&gc->lock);
    size_t at = objmap_get(&gc->fin_map, (uintptr_t)obj);     /* index + 1, or 0 */
    if (at) {
        if (fn) {
            gc->fins[at - 1].fn = fn;
            gc->fins[at - 1].data = data;
        } else {                     /* a hole keeps the order of the rest; compacted at collection */
            gc->fins[at - 1].obj = NULL;
            objmap_del(&gc->fin_map, (uintptr_t)obj);
        }
    } else if (fn) {
        if ((gc->nfins == gc->cap_fins && !grow_fins(&gc->fins, &gc->cap_fins)) ||
            !objmap_put(&gc->fin_map, (uintptr_t)obj, gc->nfins + 1)) {
            errno = ENOMEM;
            rc = -1;
        } else {
            gc->fins[gc->nfins++] = (finalizer_t){ obj, fn, data };
        }
    }
    if (!fn)                         /* removed: also if a collection has queued it already */
        cancel_pending(gc, obj, false);
    pthread_mutex_unlock(&gc->lock);
    return rc;
}

/* Lock held, world stopped, roots marked and drained. */
void gc_clear_dead_weaks(gc_state_t *gc)
{
    for (loam_weak_t *w = gc->weaks; w; w = w->next) {
        if (AO_load(&w->target) && !gc_is_marked(gc, (void *)w->block)) {
            objmap_del(&gc->weak_map, w->block);   /* the others into it: as the walk reaches them */
            AO_store_release(&w->target, 0);
            w->next_same = NULL;
            gc->weak_cleared++;
        }
    }
}

/* Lock held. The table's entries move, in registration order, to the ready
 * list, counted in pending_map (cancel_pending): all of them (shutdown), or
 * those whose object the marking left unmarked, which a collection then
 * marks with all they reach, so that they survive until they ran. The rest
 * stay, the table compacted (holes dropped) and its map rebuilt; so does
 * an entry there is no memory to queue (next time). Returns how many moved. */
static size_t queue_finalizers(gc_state_t *gc, bool all)
{
    size_t moved = 0, kept = 0;
    objmap_clear_for(&gc->fin_map, gc->nfins);     /* rebuilt below */
    for (size_t i = 0; i < gc->nfins; i++) {
        finalizer_t f = gc->fins[i];
        if (!f.obj)
            continue;
        bool ready = all || !gc_is_marked(gc, f.obj);
        uintptr_t waiting = ready ? objmap_get(&gc->pending_map, (uintptr_t)f.obj) : 0;
        if (ready && (gc->nready < gc->cap_ready || grow_fins(&gc->ready, &gc->cap_ready)) &&
            objmap_put(&gc->pending_map, (uintptr_t)f.obj, waiting + 1)) {
            gc->ready[gc->nready++] = f;
            moved++;
        } else {
            gc->fins[kept++] = f;
            objmap_put(&gc->fin_map, (uintptr_t)f.obj, kept);
        }
        if (ready && !all)
            gc_mark_word(gc, (uintptr_t)f.obj);
    }
    gc->nfins = kept;
    /* The table too: at a quarter full or less it shrinks to twice what
     * is kept (the next spike grows it again). No memory: it stays. */
    if (gc->cap_fins > FINS_KEEP && gc->cap_fins / 4 >= kept) {
        size_t ncap = FINS_KEEP;
        while (ncap < 2 * kept)
            ncap *= 2;
        finalizer_t *fins = meta_alloc(ncap * sizeof *fins);
        if (fins) {
            if (kept)
                memcpy(fins, gc->fins, kept * sizeof *fins);
            meta_free(gc->fins, gc->cap_fins * sizeof *fins);
            gc->fins = fins;
            gc->cap_fins = ncap;
        }
    }
    return moved;
}

void gc_find_ready_finalizers(gc_state_t *gc)
{
    queue_finalizers(gc, false);
    gc_mark_drain(gc);
}

/* World running, lock not held: a finalizer may allocate, collect, set
 * finalizers. The ready list is taken whole first, and stays linked in the
 * heap's state while it runs: until an object's finalizer has run, every
 * collection marks it (gc_mark_waiting_finalizables), whichever thread
 * runs it. Before, an object taken out of the ready list was no one's
 * root: another thread's collection freed it, and its finalizer then ran
 * on a block handed out again. */
size_t gc_run_ready_finalizers(gc_state_t *gc)
{
    size_t ran = 0;
    for (;;) {
        finalizer_batch_t batch = { .thread = pthread_self() };
        pthread_mutex_lock(&gc->lock);
        batch.list = gc->ready;
        batch.n = gc->nready;
        size_t cap = batch.cap = gc->cap_ready;
        gc->ready = NULL;
        gc->nready = gc->cap_ready = 0;
        if (batch.n) {
            batch.link = gc->running;
            gc->running = &batch;
        }
        pthread_mutex_unlock(&gc->lock);
        if (!batch.n) {
            meta_free(batch.list, cap * sizeof *batch.list);
            return ran;
        }
        for (size_t i = 0; i < batch.n; i++) {
            AO_store_release(&batch.next, i);   /* list[i] stays a root while it runs */
            /* NULL: cancelled since it was queued (cancel_pending). */
            void *obj = __atomic_load_n(&batch.list[i].obj, __ATOMIC_RELAXED);
            if (!obj)
                continue;
            batch.list[i].fn(obj, batch.list[i].data);
            __atomic_fetch_add(&gc->finalizers_run, 1, __ATOMIC_RELAXED);
            ran++;
        }
        pthread_mutex_lock(&gc->lock);
        for (size_t i = 0; i < batch.n; i++)
            if (batch.list[i].obj)
                pending_done(gc, batch.list[i].obj);
        finalizer_batch_t **pp = &gc->running;
        while (*pp != &batch)
            pp = &(*pp)->link;
        *pp = batch.link;
        pthread_mutex_unlock(&gc->lock);
        meta_free(batch.list, cap * sizeof *batch.list);
    }
}

/* Shutdown (lua_close's finalizers, Boehm's GC_finalize_all): every entry
 * of the table joins the ready list, in registration order, and the ready
 * list runs as after a collection; then again for the finalizers those set,
 * until a round finds none. The objects stay roots until their finalizer
 * has run (the ready list is one), and are freed by no one here. */
size_t loam_finalize_all(loam_heap_t *h)
{
    gc_state_t *gc = h ? __atomic_load_n(&h->gc, __ATOMIC_ACQUIRE) : NULL;
    if (!gc)
        return 0;                       /* never collected: no finalizer was set */
    if (LOAM_UNLIKELY(gc_in_blocking_bracket(h))) {
        /* The finalizers would read and write the heap's objects while the
         * thread counts as stopped: another thread's collection may be
         * marking them meanwhile. */
        loam_fault(h, "loam_finalize_all of a heap between loam_enter_blocking and loam_leave_blocking "
                      "(its finalizers would run while the thread counts as stopped)", h, 0);
        errno = EINVAL;
        return 0;
    }
    size_t ran = 0;
    for (;;) {
        pthread_mutex_lock(&gc->lock);
        size_t moved = queue_finalizers(gc, true);
        size_t kept = gc->nfins;            /* no memory to queue them */
        pthread_mutex_unlock(&gc->lock);
        size_t round = gc_run_ready_finalizers(gc);
        ran += round;
        if (!moved && !round) {
            if (kept)
                errno = ENOMEM;
            return ran;
        }
    }
}

bool gc_in_finalizer_of(loam_heap_t *h)
{
    gc_state_t *gc = h->gc;
    if (!gc)
        return false;
    bool inside = false;
    pthread_mutex_lock(&gc->lock);
    for (finalizer_batch_t *b = gc->running; b && !inside; b = b->link)
        inside = pthread_equal(b->thread, pthread_self());
    pthread_mutex_unlock(&gc->lock);
    return inside;
}

void gc_mark_waiting_finalizables(gc_state_t *gc)
{
    for (size_t i = 0; i < gc->nready; i++)
        gc_mark_precise(gc, (uintptr_t)gc->ready[i].obj);
    /* A batch's thread may run on (it is not attached, or not to this
     * heap's stop): `next` read a little late only marks one more. */
    for (finalizer_batch_t *b = gc->running; b; b = b->link)
        for (size_t i = AO_load_acquire(&b->next); i < b->n; i++)
            gc_mark_precise(gc, (uintptr_t)b->list[i].obj);
}

/* In the child of fork only the forking thread runs: a batch another thread
 * was running will never go on (its record is on that thread's stack, still
 * mapped in the child, and its `next` frozen). Kept, its objects stayed
 * roots of every collection for ever, and the finalizers it had not reached
 * never ran. What the child does with each entry:
 *   - those before `next` ran already: done;
 *   - the one at `next` was running, or about to: dropped, not run again
 *     (half run, its effects are in the child's copy; never twice). Its
 *     object is then ordinary garbage if nothing reaches it;
 *   - those after `next` never started: queued again (gc->ready), to run
 *     after the child's next collection, as any finalizer its copy of the
 *     heap has (the parent's thread runs the parent's). Out of memory for
 *     the ready list, they are dropped as the running one.
 * The forking thread's own batch (a fork from inside a finalizer) goes on
 * in the child, as the thread does. */
void gc_forget_dead_batches(gc_state_t *gc)
{
    pthread_t self = pthread_self();
    for (finalizer_batch_t **pp = &gc->running, *b; (b = *pp);) {
        if (pthread_equal(b->thread, self)) {
            pp = &b->link;
            continue;
        }
        *pp = b->link;
        size_t next = AO_load(&b->next);
        for (size_t i = 0; i < b->n; i++) {
            finalizer_t f = b->list[i];
            if (!f.obj)
                continue;               /* cancelled: counted out already */
            if (i > next && (gc->nready < gc->cap_ready || grow_fins(&gc->ready, &gc->cap_ready))) {
                gc->ready[gc->nready++] = f;    /* still pending: its count stays */
                continue;
            }
            pending_done(gc, f.obj);
        }
        meta_free(b->list, b->cap * sizeof *b->list);
    }
}

/* ---- weak fields ----------------------------------------------------------------------------- */

/* Any marker (helpers too) records the field; the collecting thread clears
 * the dead ones once marking is done. Out of memory to record it, the field
 * is marked as a strong one: kept too long, never dangling. */
void loam_mark_weak(loam_tracer_t *t, void **field)
{
    if (!t || !field)
        return;
    gc_state_t *gc = t->m->gc;
    pthread_mutex_lock(&gc->weak_fields_lock);
    bool room = gc->nweak_fields < gc->cap_weak_fields ||
                gc_array_grow(&gc->weak_fields, &gc->cap_weak_fields, sizeof *gc->weak_fields, 256);
    if (room)
        gc->weak_fields[gc->nweak_fields++] = field;
    pthread_mutex_unlock(&gc->weak_fields_lock);
    if (!room)
        loam_mark(t, *field);
}

size_t gc_clear_dead_weak_fields(gc_state_t *gc, size_t from)
{
    size_t n = gc->nweak_fields;
    for (size_t i = from; i < n; i++) {
        void **field = gc->weak_fields[i];
        void *v = *field;
        if (!v)
            continue;
        addr_info_t ai;
        if (!gc_block_of_heap(gc->heap, v, &ai))
            continue;                   /* no block of the heap: not the collector's to clear */
        /* Dead: unmarked, or marked only to wait for its finalizer (queued
         * by this collection or one before). A field met while marking from
         * the finalizable objects may name one of them, marked by then. */
        if (gc_is_marked(gc, v) &&
            (!gc->pending_map.n || !objmap_get(&gc->pending_map, (uintptr_t)ai.block)))
            continue;
        *field = NULL;
        gc->weak_cleared++;
    }
    return n;
}

/* ---- weak references -------------------------------------------------------------------- */

/* The block of h that holds target (what a collection and a free of that
 * block find the reference by), or 0: also when a loam_free of it may
 * end in a thread cache and never reach the collector (a slab whose frees
 * keep the fast path: a manual heap that tracks no requests and was never
 * collected, such as the default heap). */
static uintptr_t block_of_heap(loam_heap_t *h, const void *target)
{
    addr_info_t ai;
    uintptr_t block = gc_block_of_heap(h, target, &ai);
    if (!block || (ai.slab && ai.slab->home_slot != TC_SLOT_NONE))
        return 0;
    return block;
}

loam_weak_t *loam_weak_new(loam_heap_t *h, void *target)
{
    /* Outside h's blocks no collection of h could tell the target dead, and
     * no free in h could clear the reference: it would dangle. So would one
     * to a block whose free skips the collector. */
    uintptr_t block = h && target ? block_of_heap(h, target) : 0;
    if (!h || (target && !block)) {
        errno = EINVAL;
        return NULL;
    }
    gc_state_t *gc = gc_state_get(h);
    loam_weak_t *w = meta_alloc(sizeof *w);
    if (!w) {
        errno = ENOMEM;
        return NULL;
    }
    w->heap = h;
    AO_store(&w->target, (AO_t)target);
    w->block = block;
    pthread_mutex_lock(&gc->lock);
    if (block) {
        w->next_same = (loam_weak_t *)objmap_get(&gc->weak_map, block);
        if (!objmap_put(&gc->weak_map, block, (uintptr_t)w)) {
            pthread_mutex_unlock(&gc->lock);
            meta_free(w, sizeof *w);
            errno = ENOMEM;
            return NULL;
        }
    }
    w->prev = NULL;
    w->next = gc->weaks;
    if (gc->weaks)
        gc->weaks->prev = w;
    gc->weaks = w;
    pthread_mutex_unlock(&gc->lock);
    return w;
}

void *loam_weak_get(loam_weak_t *w)
{
    return w ? (void *)AO_load_acquire(&w->target) : NULL;
}

void loam_weak_free(loam_weak_t *w)
{
    if (!w)
        return;
    if (!w->heap) {                    /* its heap was destroyed: only the handle is left */
        meta_free(w, sizeof *w);
        return;
    }
    gc_state_t *gc = w->heap->gc;
    pthread_mutex_lock(&gc->lock);
    if (AO_load(&w->target)) {         /* off its block's chain */
        loam_weak_t *first = (loam_weak_t *)objmap_get(&gc->weak_map, w->block);
        if (first == w) {
            if (w->next_same)
                objmap_put(&gc->weak_map, w->block, (uintptr_t)w->next_same);
            else
                objmap_del(&gc->weak_map, w->block);
        } else {
            for (loam_weak_t *o = first; o; o = o->next_same)
                if (o->next_same == w) {
                    o->next_same = w->next_same;
                    break;
                }
        }
    }
    if (w->prev)
        w->prev->next = w->next;
    else
        gc->weaks = w->next;
    if (w->next)
        w->next->prev = w->prev;
    pthread_mutex_unlock(&gc->lock);
    meta_free(w, sizeof *w);
}

/* loam_free of a block of a heap with collector state: its finalizer is
 * dropped and the weak references into it (to its start or inside it) are
 * cleared, so neither can reach the next block at that address. */
void gc_forget_block(loam_heap_t *h, void *block)
{
    gc_state_t *gc = h->gc;
    pthread_mutex_lock(&gc->lock);
    size_t at = objmap_get(&gc->fin_map, (uintptr_t)block);
    if (at) {
        gc->fins[at - 1].obj = NULL;
        objmap_del(&gc->fin_map, (uintptr_t)block);
    }
    cancel_pending(gc, block, true);
    loam_weak_t *w = (loam_weak_t *)objmap_get(&gc->weak_map, (uintptr_t)block);
    if (w) {
        objmap_del(&gc->weak_map, (uintptr_t)block);
        while (w) {
            loam_weak_t *next = w->next_same;
            AO_store_release(&w->target, 0);
            w->next_same = NULL;
            w = next;
        }
    }
    pthread_mutex_unlock(&gc->lock);
}
