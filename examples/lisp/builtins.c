/* builtins.c — primitives, and a prelude written in the Lisp itself.
 *
 * A primitive is prim_fn: it gets its evaluated arguments as an array on the
 * value stack (so they are roots while it allocates) and returns a value.
 * The arity is checked by the caller from the table at the end. */
#include "lisp.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- argument checks ---------------------------------------------------------- */

static intptr_t int_arg(val_t v)
{
    if (!is_fixnum(v))
        lisp_error("not an integer", v);
    return fixnum_value(v);
}

static val_t int_result(intptr_t n)
{
    if (n < FIXNUM_MIN || n > FIXNUM_MAX)
        lisp_error("integer overflow", UNSPEC);
    return make_fixnum(n);
}

static val_t pair_arg(val_t v)
{
    if (!is_cons(v))
        lisp_error("not a pair", v);
    return v;
}

static val_t typed_arg(val_t v, type_t t, const char *what)
{
    if (!is_type(v, t))
        lisp_error(what, v);
    return v;
}

/* ---- numbers ---------------------------------------------------------------- */

static val_t p_add(val_t *a, int n)
{
    intptr_t sum = 0;
    for (int i = 0; i < n; i++)
        if (__builtin_add_overflow(sum, int_arg(a[i]), &sum))
            lisp_error("integer overflow", UNSPEC);
    return int_result(sum);
}

static val_t p_mul(val_t *a, int n)
{
    intptr_t prod = 1;
    for (int i = 0; i < n; i++)
        if (__builtin_mul_overflow(prod, int_arg(a[i]), &prod))
            lisp_error("integer overflow", UNSPEC);
    return int_result(prod);
}

static val_t p_sub(val_t *a, int n)
{
    intptr_t r = int_arg(a[0]);
    if (n == 1)
        return int_result(-r);
    for (int i = 1; i < n; i++)
        if (__builtin_sub_overflow(r, int_arg(a[i]), &r))
            lisp_error("integer overflow", UNSPEC);
    return int_result(r);
}

static intptr_t divisor(val_t v)
{
    intptr_t d = int_arg(v);
    if (d == 0)
        lisp_error("division by zero", UNSPEC);
    return d;
}

/* Integers only: / truncates, like quotient. */
static val_t p_quotient(val_t *a, int n) { intptr_t d = divisor(a[1]); return int_result(int_arg(a[0]) / d); }
static val_t p_remainder(val_t *a, int n) { intptr_t d = divisor(a[1]); return int_result(int_arg(a[0]) % d); }

static val_t p_modulo(val_t *a, int n)
{
    intptr_t d = divisor(a[1]), m = int_arg(a[0]) % d;
    return int_result(m != 0 && (m < 0) != (d < 0) ? m + d : m);
}

#define COMPARE(fname, op)                                        \
    static val_t fname(val_t *a, int n)                           \
    {                                                             \
        for (int i = 0; i + 1 < n; i++)                           \
            if (!(int_arg(a[i]) op int_arg(a[i + 1])))            \
                return FALSE_V;                                   \
        if (n == 1)                                               \
            int_arg(a[0]);                                        \
        return TRUE_V;                                            \
    }
COMPARE(p_num_eq, ==)
COMPARE(p_lt, <)
COMPARE(p_gt, >)
COMPARE(p_le, <=)
COMPARE(p_ge, >=)

/* ---- pairs and lists ---------------------------------------------------------- */

static val_t p_cons(val_t *a, int n) { return cons(a[0], a[1]); }
static val_t p_car(val_t *a, int n) { return car(pair_arg(a[0])); }
static val_t p_cdr(val_t *a, int n) { return cdr(pair_arg(a[0])); }
static val_t p_set_car(val_t *a, int n)
{
    cons_t *c = AS(cons_t, pair_arg(a[0]));
    c->car = a[1];
    written(&c->car);
    return UNSPEC;
}
static val_t p_set_cdr(val_t *a, int n)
{
    cons_t *c = AS(cons_t, pair_arg(a[0]));
    c->cdr = a[1];
    written(&c->cdr);
    return UNSPEC;
}

static val_t p_list(val_t *a, int n)
{
    val_t list = NIL;                          /* a local: the stack scan sees it */
    for (int i = n - 1; i >= 0; i--)
        list = cons(a[i], list);
    return list;
}

static val_t p_length(val_t *a, int n)
{
    intptr_t len = 0;
    val_t l = a[0];
    for (; is_cons(l); l = cdr(l))
        len++;
    if (l != NIL)
        lisp_error("length: not a proper list", a[0]);
    return make_fixnum(len);
}

static val_t p_reverse(val_t *a, int n)
{
    val_t r = NIL, l = a[0];
    for (; is_cons(l); l = cdr(l))
        r = cons(car(l), r);
    if (l != NIL)
        lisp_error("reverse: not a proper list", a[0]);
    return r;
}

/* (append l1 l2 ... last): copies every list but the last. */
static val_t p_append(val_t *a, int n)
{
    if (n == 0)
        return NIL;
    val_t head = NIL, tail = NIL;
    for (int i = 0; i < n - 1; i++) {
        val_t l = a[i];
        for (; is_cons(l); l = cdr(l)) {
            val_t cell = cons(car(l), NIL);
            if (tail == NIL)
                head = cell;
            else {
                AS(cons_t, tail)->cdr = cell;  /* tail may be old: cons allocated */
                written(&AS(cons_t, tail)->cdr);
            }
            tail = cell;
        }
        if (l != NIL)
            lisp_error("append: not a proper list", a[i]);
    }
    if (tail == NIL)
        return a[n - 1];
    AS(cons_t, tail)->cdr = a[n - 1];
    written(&AS(cons_t, tail)->cdr);
    return head;
}

/* (apply f arg ... list) */
static val_t p_apply(val_t *a, int n)
{
    size_t base = L.sp;
    int count = 0;
    for (int i = 1; i < n - 1; i++, count++)
        push(a[i]);
    val_t l = a[n - 1];
    for (; is_cons(l); l = cdr(l), count++)
        push(car(l));
    if (l != NIL)
        lisp_error("apply: not a proper list", a[n - 1]);
    val_t result = apply(a[0], stack_at(base), count);
    L.sp = base;
    return result;
}

/* ---- predicates ------------------------------------------------------------------ */

static bool equal(val_t x, val_t y)
{
    for (;;) {
        if (x == y)
            return true;
        if (type_of(x) != type_of(y) || !is_obj(x))
            return false;
        switch (type_of(x)) {
        case T_STRING:
            return AS(string_t, x)->len == AS(string_t, y)->len &&
                   memcmp(AS(string_t, x)->bytes, AS(string_t, y)->bytes, AS(string_t, x)->len) == 0;
        case T_VECTOR:
            if (AS(vector_t, x)->n != AS(vector_t, y)->n)
                return false;
            for (size_t i = 0; i < AS(vector_t, x)->n; i++)
                if (!equal(AS(vector_t, x)->items[i], AS(vector_t, y)->items[i]))
                    return false;
            return true;
        case T_CONS:
            if (!equal(car(x), car(y)))
                return false;
            x = cdr(x);                        /* loop on the cdr: long lists are fine */
            y = cdr(y);
            break;
        default:
            return false;
        }
    }
}

static val_t p_eq(val_t *a, int n) { return make_bool(a[0] == a[1]); }
static val_t p_equal(val_t *a, int n) { return make_bool(equal(a[0], a[1])); }
static val_t p_not(val_t *a, int n) { return make_bool(a[0] == FALSE_V); }
static val_t p_null(val_t *a, int n) { return make_bool(a[0] == NIL); }
static val_t p_pair(val_t *a, int n) { return make_bool(is_cons(a[0])); }
static val_t p_number(val_t *a, int n) { return make_bool(is_fixnum(a[0])); }
static val_t p_symbol(val_t *a, int n) { return make_bool(is_symbol(a[0])); }
static val_t p_string(val_t *a, int n) { return make_bool(is_type(a[0], T_STRING)); }
static val_t p_vector(val_t *a, int n) { return make_bool(is_type(a[0], T_VECTOR)); }

static val_t p_procedure(val_t *a, int n)
{
    return make_bool(is_type(a[0], T_CLOSURE) || is_type(a[0], T_PRIM));
}

/* ---- strings and symbols --------------------------------------------------------- */

static val_t p_string_append(val_t *a, int n)
{
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += AS(string_t, typed_arg(a[i], T_STRING, "not a string"))->len;
    /* Build into one fresh block: allocate first, then copy from the
     * arguments (still on the value stack). */
    string_t *r = gc_alloc(sizeof(string_t) + len + 1, LOAM_ATOMIC);
    r->tag = T_STRING;
    r->len = len;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        memcpy(r->bytes + at, AS(string_t, a[i])->bytes, AS(string_t, a[i])->len);
        at += AS(string_t, a[i])->len;
    }
    r->bytes[len] = 0;
    return (val_t)r;
}

static val_t p_string_length(val_t *a, int n)
{
    return make_fixnum((intptr_t)AS(string_t, typed_arg(a[0], T_STRING, "not a string"))->len);
}

static val_t p_string_eq(val_t *a, int n)
{
    typed_arg(a[0], T_STRING, "not a string");
    typed_arg(a[1], T_STRING, "not a string");
    return make_bool(equal(a[0], a[1]));
}

static val_t p_number_to_string(val_t *a, int n)
{
    char buf[FIXNUM_TEXT_MAX];
    return make_string(buf, fixnum_text(int_arg(a[0]), buf));
}

static val_t p_symbol_to_string(val_t *a, int n)
{
    symbol_t *s = AS(symbol_t, typed_arg(a[0], T_SYMBOL, "not a symbol"));
    return make_string(s->name, s->len);   /* s stays alive: it is interned */
}

static val_t p_string_to_symbol(val_t *a, int n)
{
    string_t *s = AS(string_t, typed_arg(a[0], T_STRING, "not a string"));
    return intern(s->bytes, s->len);
}

/* ---- vectors ------------------------------------------------------------------------ */

static size_t index_arg(val_t vec, val_t i)
{
    intptr_t k = int_arg(i);
    if (k < 0 || (size_t)k >= AS(vector_t, vec)->n)
        lisp_error("index out of range", i);
    return (size_t)k;
}

static val_t p_make_vector(val_t *a, int n)
{
    intptr_t len = int_arg(a[0]);
    if (len < 0)
        lisp_error("make-vector: negative length", a[0]);
    return make_vector((size_t)len, n > 1 ? a[1] : FALSE_V);
}

static val_t p_vector_make(val_t *a, int n)
{
    val_t v = make_vector((size_t)n, FALSE_V);
    memcpy(AS(vector_t, v)->items, a, (size_t)n * sizeof(val_t));
    return v;
}

static val_t p_vector_ref(val_t *a, int n)
{
    val_t v = typed_arg(a[0], T_VECTOR, "not a vector");
    return AS(vector_t, v)->items[index_arg(v, a[1])];
}

static val_t p_vector_set(val_t *a, int n)
{
    val_t v = typed_arg(a[0], T_VECTOR, "not a vector");
    val_t *slot = &AS(vector_t, v)->items[index_arg(v, a[1])];
    *slot = a[2];
    written(slot);
    return UNSPEC;
}

static val_t p_vector_length(val_t *a, int n)
{
    return make_fixnum((intptr_t)AS(vector_t, typed_arg(a[0], T_VECTOR, "not a vector"))->n);
}

/* ---- output and errors --------------------------------------------------------------- */

static val_t p_display(val_t *a, int n) { print_value(stdout, a[0], false); return UNSPEC; }
static val_t p_write(val_t *a, int n) { print_value(stdout, a[0], true); return UNSPEC; }
static val_t p_newline(val_t *a, int n) { putchar('\n'); return UNSPEC; }

static val_t p_error(val_t *a, int n)
{
    const char *msg = is_type(a[0], T_STRING) ? AS(string_t, a[0])->bytes : "error";
    lisp_error(msg, n > 1 ? a[1] : UNSPEC);
}

/* ---- the collector from Lisp ----------------------------------------------------------- */

static val_t p_gc(val_t *a, int n)
{
    loam_gc_collect(L.heap);                   /* finalizers have run when it returns */
    return UNSPEC;
}

/* An alist of the heap's statistics: ((collections . 3) (live-bytes . 81920) ...) */
static val_t p_heap_stats(val_t *a, int n)
{
    loam_stats_t st;
    loam_heap_stats(L.heap, &st);
    struct { const char *key; size_t value; } rows[] = {
        { "collections", st.gc_collections },
        { "live-bytes", st.live_bytes },
        { "live-blocks", st.live_blocks },
        { "peak-bytes", st.peak_live_bytes },
        { "committed-bytes", st.committed_bytes },
        { "pause-total-us", (size_t)(st.gc_pause_total_ns / 1000) },
        { "pause-max-us", (size_t)(st.gc_pause_max_ns / 1000) },
        { "finalizers-run", st.gc_finalizers_run },
        { "weak-cleared", st.gc_weak_cleared },
        { "ephemerons-cleared", st.gc_ephemerons_cleared },
    };
    val_t list = NIL;
    for (size_t i = sizeof rows / sizeof rows[0]; i-- > 0;) {
        val_t key = intern(rows[i].key, strlen(rows[i].key));
        val_t pair = cons(key, make_fixnum((intptr_t)rows[i].value));
        list = cons(pair, list);
    }
    return list;
}

/* (set-heap-mode! 'manual) or 'collected: loam_heap_set_mode. In manual mode
 * nothing is reclaimed (garbage piles up) until the heap is collected again. */
static val_t p_set_heap_mode(val_t *a, int n)
{
    const char *name = is_symbol(a[0]) ? AS(symbol_t, a[0])->name : "";
    loam_mode_t mode;
    if (strcmp(name, "manual") == 0)
        mode = LOAM_MANUAL;
    else if (strcmp(name, "collected") == 0)
        mode = LOAM_GC;
    else
        lisp_error("set-heap-mode!: expected manual or collected", a[0]);
    if (loam_heap_set_mode(L.heap, mode) != 0)
        lisp_error("set-heap-mode!: loam_heap_set_mode failed", a[0]);
    return UNSPEC;
}

static val_t p_make_weak(val_t *a, int n) { return make_weak(a[0]); }
static val_t p_weak_get(val_t *a, int n) { return weak_get(typed_arg(a[0], T_WEAK, "not a weak reference")); }

/* (make-ephemeron key value); ephemeron-key and ephemeron-value give #f
 * once the key has died (broken). */
static val_t p_make_ephemeron(val_t *a, int n) { return make_ephemeron(a[0], a[1]); }
static bool broken(ephemeron_t *e) { return e->obj_key && e->key == NIL; }
static val_t p_ephemeron_key(val_t *a, int n)
{
    ephemeron_t *e = AS(ephemeron_t, typed_arg(a[0], T_EPHEMERON, "not an ephemeron"));
    return broken(e) ? FALSE_V : e->key;
}
static val_t p_ephemeron_value(val_t *a, int n)
{
    ephemeron_t *e = AS(ephemeron_t, typed_arg(a[0], T_EPHEMERON, "not an ephemeron"));
    return broken(e) ? FALSE_V : e->value;
}
static val_t p_ephemeron_broken(val_t *a, int n)
{
    return make_bool(broken(AS(ephemeron_t, typed_arg(a[0], T_EPHEMERON, "not an ephemeron"))));
}

static val_t p_open_resource(val_t *a, int n) { return make_resource(a[0]); }

static val_t p_close_resource(val_t *a, int n)
{
    close_resource(typed_arg(a[0], T_RESOURCE, "not a resource"));
    return UNSPEC;
}

static val_t p_resource_open(val_t *a, int n)
{
    return make_bool(AS(resource_t, typed_arg(a[0], T_RESOURCE, "not a resource"))->open);
}

static val_t p_resources_finalized(val_t *a, int n)
{
    return make_fixnum((intptr_t)L.resources_finalized);
}

/* (sleep ms): a wait that does not touch the heap. Bracketed by
 * enter/leave blocking, it never holds up a collection in another thread. */
static val_t p_sleep(val_t *a, int n)
{
    intptr_t ms = int_arg(a[0]);
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    loam_enter_blocking(L.heap);
    nanosleep(&ts, NULL);
    loam_leave_blocking(L.heap);
    return UNSPEC;
}

static val_t p_runtime(val_t *a, int n)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return make_fixnum((intptr_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

/* ---- registration -------------------------------------------------------------------------- */

static const struct { const char *name; prim_fn fn; int min, max; } prims[] = {
    { "+", p_add, 0, -1 },        { "-", p_sub, 1, -1 },        { "*", p_mul, 0, -1 },
    { "/", p_quotient, 2, 2 },    { "quotient", p_quotient, 2, 2 },
    { "remainder", p_remainder, 2, 2 }, { "modulo", p_modulo, 2, 2 },
    { "=", p_num_eq, 1, -1 },     { "<", p_lt, 1, -1 },         { ">", p_gt, 1, -1 },
    { "<=", p_le, 1, -1 },        { ">=", p_ge, 1, -1 },
    { "cons", p_cons, 2, 2 },     { "car", p_car, 1, 1 },       { "cdr", p_cdr, 1, 1 },
    { "set-car!", p_set_car, 2, 2 }, { "set-cdr!", p_set_cdr, 2, 2 },
    { "list", p_list, 0, -1 },    { "length", p_length, 1, 1 }, { "reverse", p_reverse, 1, 1 },
    { "append", p_append, 0, -1 }, { "apply", p_apply, 2, -1 },
    { "eq?", p_eq, 2, 2 },        { "equal?", p_equal, 2, 2 },  { "not", p_not, 1, 1 },
    { "null?", p_null, 1, 1 },    { "pair?", p_pair, 1, 1 },    { "number?", p_number, 1, 1 },
    { "symbol?", p_symbol, 1, 1 }, { "string?", p_string, 1, 1 }, { "vector?", p_vector, 1, 1 },
    { "procedure?", p_procedure, 1, 1 },
    { "string-append", p_string_append, 0, -1 }, { "string-length", p_string_length, 1, 1 },
    { "string=?", p_string_eq, 2, 2 }, { "number->string", p_number_to_string, 1, 1 },
    { "symbol->string", p_symbol_to_string, 1, 1 }, { "string->symbol", p_string_to_symbol, 1, 1 },
    { "make-vector", p_make_vector, 1, 2 }, { "vector", p_vector_make, 0, -1 },
    { "vector-ref", p_vector_ref, 2, 2 }, { "vector-set!", p_vector_set, 3, 3 },
    { "vector-length", p_vector_length, 1, 1 },
    { "display", p_display, 1, 1 }, { "write", p_write, 1, 1 }, { "newline", p_newline, 0, 0 },
    { "error", p_error, 1, 2 },
    { "gc", p_gc, 0, 0 },         { "heap-stats", p_heap_stats, 0, 0 },
    { "set-heap-mode!", p_set_heap_mode, 1, 1 },
    { "make-weak", p_make_weak, 1, 1 }, { "weak-get", p_weak_get, 1, 1 },
    { "make-ephemeron", p_make_ephemeron, 2, 2 }, { "ephemeron-key", p_ephemeron_key, 1, 1 },
    { "ephemeron-value", p_ephemeron_value, 1, 1 }, { "ephemeron-broken?", p_ephemeron_broken, 1, 1 },
    { "open-resource", p_open_resource, 1, 1 }, { "close-resource", p_close_resource, 1, 1 },
    { "resource-open?", p_resource_open, 1, 1 },
    { "resources-finalized", p_resources_finalized, 0, 0 },
    { "sleep", p_sleep, 1, 1 },   { "runtime", p_runtime, 0, 0 },
};

static const char prelude[] =
    "(define (cadr x) (car (cdr x)))\n"
    "(define (cddr x) (cdr (cdr x)))\n"
    "(define (caddr x) (car (cdr (cdr x))))\n"
    "(define (zero? n) (= n 0))\n"
    "(define (abs n) (if (< n 0) (- n) n))\n"
    "(define (min a b) (if (< a b) a b))\n"
    "(define (max a b) (if (> a b) a b))\n"
    "(define (map f l)\n"
    "  (let loop ((l l) (acc '()))\n"
    "    (if (null? l) (reverse acc) (loop (cdr l) (cons (f (car l)) acc)))))\n"
    "(define (for-each f l)\n"
    "  (if (null? l) #t (begin (f (car l)) (for-each f (cdr l)))))\n"
    "(define (filter keep? l)\n"
    "  (let loop ((l l) (acc '()))\n"
    "    (cond ((null? l) (reverse acc))\n"
    "          ((keep? (car l)) (loop (cdr l) (cons (car l) acc)))\n"
    "          (else (loop (cdr l) acc)))))\n"
    "(define (fold f acc l)\n"
    "  (if (null? l) acc (fold f (f acc (car l)) (cdr l))))\n"
    "(define (iota n)\n"
    "  (let loop ((i (- n 1)) (acc '()))\n"
    "    (if (< i 0) acc (loop (- i 1) (cons i acc)))))\n"
    "(define (list-ref l k) (if (= k 0) (car l) (list-ref (cdr l) (- k 1))))\n"
    "(define (assq key alist)\n"
    "  (cond ((null? alist) #f) ((eq? key (car (car alist))) (car alist))\n"
    "        (else (assq key (cdr alist)))))\n"
    "(define (heap-stat key) (cdr (assq key (heap-stats))))\n";

/* The primitives compiled calls may do inline (eval.c), as long as the
 * global still holds the primitive. */
static const struct { const char *name; int op; } inline_ops[] = {
    { "+", PRIM_ADD }, { "-", PRIM_SUB }, { "*", PRIM_MUL }, { "=", PRIM_NUM_EQ },
    { "<", PRIM_LT }, { ">", PRIM_GT }, { "<=", PRIM_LE }, { ">=", PRIM_GE },
    { "quotient", PRIM_QUOTIENT }, { "remainder", PRIM_REMAINDER }, { "car", PRIM_CAR },
    { "cdr", PRIM_CDR }, { "cons", PRIM_CONS }, { "null?", PRIM_NULL }, { "pair?", PRIM_PAIR },
    { "not", PRIM_NOT }, { "eq?", PRIM_EQ }, { "vector-ref", PRIM_VECTOR_REF },
};

void builtins_init(void)
{
    static const struct { const char *name; int form; } forms[] = {
        { "quote", SF_QUOTE }, { "if", SF_IF }, { "define", SF_DEFINE }, { "set!", SF_SET },
        { "lambda", SF_LAMBDA }, { "let", SF_LET }, { "let*", SF_LET_STAR },
        { "letrec", SF_LETREC }, { "begin", SF_BEGIN }, { "cond", SF_COND }, { "and", SF_AND },
        { "or", SF_OR }, { "when", SF_WHEN }, { "unless", SF_UNLESS },
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++)
        AS(symbol_t, intern(forms[i].name, strlen(forms[i].name)))->special = (uint32_t)forms[i].form;
    S.quote = intern("quote", 5);
    S.else_ = intern("else", 4);

    for (size_t i = 0; i < sizeof prims / sizeof prims[0]; i++) {
        val_t sym = intern(prims[i].name, strlen(prims[i].name));
        global_set(sym, make_prim(prims[i].name, prims[i].fn, prims[i].min, prims[i].max));
    }
    for (size_t i = 0; i < sizeof inline_ops / sizeof inline_ops[0]; i++) {
        val_t sym = intern(inline_ops[i].name, strlen(inline_ops[i].name));
        AS(prim_t, cdr(AS(symbol_t, sym)->global))->inline_op = inline_ops[i].op;
    }
    if (!run_text(prelude, sizeof prelude - 1)) {
        fputs("lisp: the prelude failed\n", stderr);
        exit(1);
    }
}
