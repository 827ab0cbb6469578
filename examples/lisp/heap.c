/* heap.c — where the Lisp meets loam.
 *
 * One collected heap holds every Lisp object. The collector finds live
 * objects from three kinds of roots:
 *   1. the roots callback (roots_cb): the value stack, an array malloc'd
 *      outside the heap that holds evaluated arguments during calls;
 *   2. precise root slots (loam_root_add): the symbol table, the global
 *      environment and the static slots of the well-known symbols (S);
 *   3. the C stack and registers, scanned conservatively: every C local of
 *      the evaluator, reader and primitives is safe without any handles.
 * From a live object it follows pointers with the trace callback (trace_obj)
 * for LOAM_TRACED objects; LOAM_ATOMIC objects (strings, primitives, weak
 * boxes) are never scanned. */
#include "lisp.h"

#include <stdlib.h>
#include <string.h>

interp_t L;
syms_t S;

/* Slots of the value stack. Deep recursion must meet the C stack's limit
 * (eval.c, "recursion too deep") before this one: with 65,536 slots, a
 * build whose evaluator frame is small (-O2) ran out of slots first, at one
 * pending argument per level. 8 MiB reserved; pages never reached are
 * never touched (calloc maps them). */
enum { STACK_SLOTS = 1 << 20 };

/* ---- the two callbacks --------------------------------------------------- */

static inline void mark(loam_tracer_t *t, val_t v)
{
    if (is_obj(v))                 /* never fixnums, constants or () */
        loam_mark(t, v);
}

/* Called for every reached LOAM_TRACED object. It may see an object whose
 * block is zero-filled but not yet initialised: tag T_FREE, nothing to do. */
static void trace_obj(void *p, loam_tracer_t *t, void *user)
{
    val_t v = p;
    switch ((type_t)v->tag) {
    case T_CONS:
        mark(t, AS(cons_t, v)->car);
        mark(t, AS(cons_t, v)->cdr);
        break;
    case T_CLOSURE: {
        closure_t *c = AS(closure_t, v);
        mark(t, c->params);
        mark(t, c->body);
        mark(t, c->env);
        mark(t, c->name);
        break;
    }
    case T_FRAME: {
        frame_t *f = AS(frame_t, v);
        mark(t, f->parent);
        mark(t, f->names);
        mark(t, f->proc);
        for (size_t i = 0; i < f->n; i++)
            mark(t, f->vals[i]);
        break;
    }
    case T_VECTOR:
        for (size_t i = 0; i < AS(vector_t, v)->n; i++)
            mark(t, AS(vector_t, v)->items[i]);
        break;
    case T_TABLE:
        mark(t, AS(table_t, v)->buckets);
        break;
    case T_RESOURCE:
        mark(t, AS(resource_t, v)->name);
        break;
    case T_SYMBOL:
        mark(t, AS(symbol_t, v)->global);
        break;
    case T_CODE:
        for (uint32_t i = 0; i < AS(code_t, v)->n; i++)
            mark(t, AS(code_t, v)->x[i]);
        break;
    case T_EPHEMERON: {
        ephemeron_t *e = AS(ephemeron_t, v);
        /* loam takes only objects (or NULL) as a pair's fields: a fixnum
         * could look like an address inside a block. An immediate key never
         * dies: its value is an ordinary field. An immediate value needs no
         * marking: the key alone is weak, and its death is what breaks the
         * ephemeron (a weak field is cleared before finalizers run, a
         * pair's key after: the one difference). */
        if (is_obj(e->key) && is_obj(e->value))
            loam_mark_ephemeron(t, (void **)&e->key, (void **)&e->value);
        else if (is_obj(e->key))
            loam_mark_weak(t, (void **)&e->key);
        else
            mark(t, e->value);
        break;
    }
    default:                       /* T_FREE, and atomic kinds (never traced) */
        break;
    }
}

/* Called once per collection, with the world stopped. */
static void roots_cb(loam_tracer_t *t, void *user)
{
    interp_t *in = user;
    for (size_t i = 0; i < in->sp; i++)
        mark(t, in->stack[i]);
}

static size_t oom_request;

static void on_oom(loam_heap_t *h, size_t request, void *user)
{
    oom_request = request;         /* gc_alloc_failed reports it when the NULL comes back */
}

/* ---- heap life ------------------------------------------------------------- */

void heap_init(const heap_options_t *opt)
{
    loam_config_t cfg = {
        .mode = opt->manual ? LOAM_MANUAL : LOAM_GC,
        .limit = opt->limit,
        .trace = trace_obj,
        .roots = roots_cb,
        .oom = on_oom,
        .user = &L,
        .name = "lisp",           /* in its statistics and fault messages */
        /* Stacks are scanned conservatively (no LOAM_NO_STACK_SCAN); trace_obj
         * only reads objects, so marking may run on several threads. No
         * object needs 16-byte alignment: conses take 24-byte blocks and
         * two-slot frames 56-byte ones (LOAM_ALIGN_8), not 32 and 64. */
        .flags = LOAM_PARALLEL_MARK | LOAM_ALIGN_8 | (opt->generational ? LOAM_GENERATIONAL : 0),
        /* The heap may grow 150 % past its live bytes between collections,
         * not the default 100 %: the 24-byte conses leave a quarter less
         * live, and this spends part of what they save on fewer
         * collections. The demo, generational, one layout without address
         * randomisation (7 runs): 298 ms at 130 %, 284 ms at 150 %, both
         * at a peak RSS of 5,580 KiB; 282 ms at 170 %, but 5,964 KiB
         * (docs/benchmarks.md). */
        .gc_growth = 150,
    };
    L.heap = loam_heap_new(&cfg);
    if (!L.heap) {
        perror("lisp: loam_heap_new");
        exit(1);
    }
    loam_thread_attach(L.heap);    /* would happen at the first allocation anyway */

    L.stack_size = STACK_SLOTS;
    L.stack = calloc(L.stack_size, sizeof *L.stack);
    if (!L.stack) {
        perror("lisp: value stack");
        exit(1);
    }

    /* Precise root slots: each holds NULL or the start of an object. */
    loam_root_add(L.heap, (void **)&L.symbols);
    loam_root_add(L.heap, (void **)&L.globals);
    val_t *syms = (val_t *)&S;
    for (size_t i = 0; i < sizeof S / sizeof *syms; i++)
        loam_root_add(L.heap, (void **)&syms[i]);
}

void heap_shutdown(void)
{
    /* Resources still open are closed, as lua_close does: their finalizers
     * run now, reachable or not; the destroy runs none. */
    loam_finalize_all(L.heap);
    loam_heap_destroy(L.heap);     /* every block at once */
    L.heap = NULL;
    free(L.stack);
    L.stack = NULL;
}

/* gc_alloc's NULL. on_oom ran before it if the limit was the cause: it
 * makes no room, so the NULL follows (loam retries only when the callback
 * made room). */
void gc_alloc_failed(void)
{
    size_t limited = oom_request;
    oom_request = 0;
    if (limited)
        lisp_error("out of memory: the heap limit is reached", UNSPEC);
    lisp_error("out of memory", UNSPEC);
}

/* ---- constructors ----------------------------------------------------------
 * Traced blocks come back zero-filled, so a constructor may allocate, then
 * fill in fields in any order. Atomic blocks are not cleared: fill them in
 * completely before the next allocation (they are never traced anyway). */

val_t make_string(const char *bytes, size_t len)
{
    string_t *s = gc_alloc(sizeof *s + len + 1, LOAM_ATOMIC);
    s->tag = T_STRING;
    s->len = len;
    memcpy(s->bytes, bytes, len);
    s->bytes[len] = 0;
    return (val_t)s;
}

val_t make_vector(size_t n, val_t fill)
{
    if (n > (SIZE_MAX - sizeof(vector_t)) / sizeof(val_t))
        lisp_error("vector too large", UNSPEC);
    vector_t *v = gc_alloc(sizeof *v + n * sizeof(val_t), LOAM_TRACED);
    for (size_t i = 0; i < n; i++)
        v->items[i] = fill;
    v->n = n;
    v->tag = T_VECTOR;
    return (val_t)v;
}

val_t make_closure(val_t params, val_t body, val_t env, val_t name)
{
    closure_t *c = gc_alloc(sizeof *c, LOAM_TRACED);
    c->params = params;
    c->body = body;
    c->env = env;
    c->name = name;
    c->tag = T_CLOSURE;
    return (val_t)c;
}

/* x[] start as () (zero); the compiler fills them in. */
val_t make_code(uint32_t op, uint32_t n)
{
    code_t *c = gc_alloc(sizeof *c + n * sizeof(val_t), LOAM_TRACED);
    c->op = op;
    c->n = n;
    c->tag = T_CODE;
    return (val_t)c;
}

val_t make_prim(const char *name, prim_fn fn, int min_args, int max_args)
{
    prim_t *p = gc_alloc(sizeof *p, LOAM_ATOMIC);
    *p = (prim_t){ T_PRIM, name, fn, min_args, max_args, PRIM_CALL };
    return (val_t)p;
}

/* ---- weak references --------------------------------------------------------
 * A T_WEAK box is atomic: the collector never sees its target through it.
 * The loam_weak_t handle lives outside our objects, so the box carries a
 * finalizer that frees the handle when the box itself dies. */

static void weak_box_finalize(void *obj, void *data)
{
    weak_t *w = obj;
    if (w->ref) {
        loam_weak_free(w->ref);
        w->ref = NULL;
    }
}

val_t make_weak(val_t target)
{
    weak_t *w = gc_alloc(sizeof *w, LOAM_ATOMIC);
    *w = (weak_t){ T_WEAK, NULL, target };
    if (is_obj(target)) {
        w->immediate = FALSE_V;
        w->ref = loam_weak_new(L.heap, target);
        if (!w->ref)
            lisp_error("make-weak: loam_weak_new failed", UNSPEC);
        loam_finalizer_set(L.heap, w, weak_box_finalize, NULL);
    }
    return (val_t)w;
}

val_t weak_get(val_t v)
{
    weak_t *w = AS(weak_t, v);
    if (!w->ref)
        return w->immediate;       /* an immediate target never dies */
    void *p = loam_weak_get(w->ref);
    return p ? (val_t)p : FALSE_V;
}

/* ---- ephemerons ------------------------------------------------------------ */

val_t make_ephemeron(val_t key, val_t value)
{
    ephemeron_t *e = gc_alloc(sizeof *e, LOAM_TRACED);
    e->key = key;                  /* fresh: no barrier */
    e->value = value;
    e->obj_key = is_obj(key);
    e->tag = T_EPHEMERON;
    return (val_t)e;
}

/* ---- resources: objects with a finalizer ------------------------------------
 * A resource stands for something outside the heap (a file, a socket). An
 * open resource that becomes unreachable is closed by its finalizer; an
 * explicit close removes the finalizer (loam_finalizer_set with fn NULL). */

static void resource_finalize(void *obj, void *data)
{
    resource_t *r = obj;
    interp_t *in = data;
    if (!r->open)
        return;
    r->open = 0;
    in->resources_finalized++;
    if (in->verbose_finalizers) {
        /* r->name is still valid: a finalized object keeps what it reaches. */
        fprintf(stderr, "[finalizer] closing resource %ld ", (long)r->id);
        print_value(stderr, r->name, true);
        fputc('\n', stderr);
    }
}

val_t make_resource(val_t name)
{
    resource_t *r = gc_alloc(sizeof *r, LOAM_TRACED);
    r->name = name;
    r->id = (intptr_t)++L.resources_opened;
    r->open = 1;
    r->tag = T_RESOURCE;
    if (loam_finalizer_set(L.heap, r, resource_finalize, &L) != 0)
        lisp_error("open-resource: loam_finalizer_set failed", UNSPEC);
    return (val_t)r;
}

void close_resource(val_t v)
{
    resource_t *r = AS(resource_t, v);
    if (r->open) {
        r->open = 0;
        loam_finalizer_set(L.heap, r, NULL, NULL);
    }
}

/* ---- hash tables keyed by symbols --------------------------------------------
 * buckets is a vector of alists of (symbol . value) pairs. Both the symbol
 * table (value unused) and the global environment are such tables. */

static val_t table_new(size_t nbuckets)
{
    val_t buckets = make_vector(nbuckets, NIL);
    table_t *t = gc_alloc(sizeof *t, LOAM_TRACED);
    t->buckets = buckets;
    t->tag = T_TABLE;
    return (val_t)t;
}

static uint32_t hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u;      /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static val_t *bucket_of(val_t table, uint32_t hash)
{
    vector_t *b = AS(vector_t, AS(table_t, table)->buckets);
    return &b->items[hash % b->n];
}

/* Double the buckets when the table gets crowded. Only the vector is
 * allocated; the alist cells move over as they are. */
static void table_grow(val_t table)
{
    table_t *t = AS(table_t, table);
    vector_t *old = AS(vector_t, t->buckets);
    if (t->count < 2 * old->n)
        return;
    val_t fresh = make_vector(old->n * 2, NIL);    /* may collect: table is rooted */
    vector_t *nv = AS(vector_t, fresh);
    for (size_t i = 0; i < old->n; i++) {
        val_t cell = old->items[i];
        while (cell != NIL) {
            val_t next = cdr(cell);
            uint32_t h = AS(symbol_t, car(car(cell)))->hash;
            AS(cons_t, cell)->cdr = nv->items[h % nv->n];   /* nv: fresh, no allocation since */
            written(&AS(cons_t, cell)->cdr);
            nv->items[h % nv->n] = cell;
            cell = next;
        }
    }
    t->buckets = fresh;
    written(&t->buckets);
}

/* Adds (sym . value) to the table; returns the pair. */
static val_t table_add(val_t table, val_t sym, val_t value)
{
    val_t pair = cons(sym, value);
    val_t cell = cons(pair, NIL);
    val_t *bucket = bucket_of(table, AS(symbol_t, sym)->hash);   /* after the allocations */
    AS(cons_t, cell)->cdr = *bucket;
    *bucket = cell;
    written(bucket);
    AS(table_t, table)->count++;
    table_grow(table);
    return pair;
}

val_t intern(const char *name, size_t len)
{
    if (!L.symbols)
        L.symbols = table_new(256);
    uint32_t h = hash_bytes(name, len);
    for (val_t cell = *bucket_of(L.symbols, h); cell != NIL; cell = cdr(cell)) {
        symbol_t *s = AS(symbol_t, car(car(cell)));
        if (s->hash == h && s->len == len && memcmp(s->name, name, len) == 0)
            return (val_t)s;
    }
    symbol_t *s = gc_alloc(sizeof *s + len + 1, LOAM_TRACED);   /* global = () */
    s->tag = T_SYMBOL;
    s->hash = h;
    s->len = (uint32_t)len;
    memcpy(s->name, name, len);
    s->name[len] = 0;
    table_add(L.symbols, (val_t)s, TRUE_V);   /* s: a C local, seen by the stack scan */
    return (val_t)s;
}

void global_set(val_t sym, val_t value)
{
    if (!L.globals)
        L.globals = table_new(256);
    val_t pair = AS(symbol_t, sym)->global;
    if (pair == NIL) {
        AS(symbol_t, sym)->global = pair = table_add(L.globals, sym, value);
        written(&AS(symbol_t, sym)->global);
    } else {
        AS(cons_t, pair)->cdr = value;
        written(&AS(cons_t, pair)->cdr);
    }
}
