/* lisp.h — a small Lisp whose every object lives in a loam collected heap.
 *
 * Files:
 *   lisp.h      values, object layouts, the functions the files share
 *   heap.c      the loam heap: config, trace callback, roots callback, value
 *               stack, allocation, symbols, hash tables, weak refs, ephemerons,
 *               resources
 *   reader.c    text -> objects
 *   printer.c   objects -> text (display / write)
 *   eval.c      the compiler (forms -> trees of code nodes, variables
 *               resolved to frame slots or global cells) and the loop that
 *               runs the code (tail calls, closures, errors)
 *   builtins.c  primitives and the Lisp prelude
 *   main.c      command line, statistics at exit
 *
 * Values. A value is one machine word (val_t):
 *   ...xxx1   a fixnum: the integer is the word shifted right by one (63 bits)
 *   ...xx10   an immediate constant: #f, #t, the unspecified value, end of file
 *   0         the empty list ()
 *   ...x000   a pointer to a heap object (loam blocks are 8-byte aligned at
 *             least: the heap has LOAM_ALIGN_8, so a cons takes 24 bytes)
 * Fixnums and constants are never heap pointers, so the trace callback only
 * hands loam_mark the values for which is_obj() holds.
 *
 * Objects. Every heap object starts with a word holding its type tag; the
 * trace callback (heap.c) switches on it. Tag 0 (T_FREE) is what a freshly
 * zero-filled block reads as, and means "nothing to trace".
 */
#ifndef LISP_H
#define LISP_H

#include <loam.h>
#include <loam/inline.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct obj *val_t;

/* ---- immediates ---------------------------------------------------------- */
#define NIL      ((val_t)0)
#define FALSE_V  ((val_t)(uintptr_t)0x02)
#define TRUE_V   ((val_t)(uintptr_t)0x06)
#define UNSPEC   ((val_t)(uintptr_t)0x0a)
#define EOF_V    ((val_t)(uintptr_t)0x0e)
/* An internal define's frame slot before the define has run (eval.c): a
 * program never gets it as a value. */
#define UNDEF    ((val_t)(uintptr_t)0x12)

#define FIXNUM_MAX ((intptr_t)(INTPTR_MAX >> 1))
#define FIXNUM_MIN ((intptr_t)(INTPTR_MIN >> 1))

static inline bool is_fixnum(val_t v) { return ((uintptr_t)v & 1) != 0; }
static inline val_t make_fixnum(intptr_t n) { return (val_t)(((uintptr_t)n << 1) | 1); }
static inline intptr_t fixnum_value(val_t v) { return (intptr_t)v >> 1; }   /* arithmetic shift */
static inline bool is_obj(val_t v) { return v != NIL && ((uintptr_t)v & 7) == 0; }
static inline val_t make_bool(bool b) { return b ? TRUE_V : FALSE_V; }
static inline bool is_true(val_t v) { return v != FALSE_V; }   /* only #f is false */

/* ---- heap objects --------------------------------------------------------- */
typedef enum {
    T_FREE = 0,   /* a zero-filled block: not initialised yet */
    T_CONS,       /* traced   car, cdr */
    T_STRING,     /* atomic   bytes */
    T_SYMBOL,     /* traced   global binding, name bytes */
    T_CLOSURE,    /* traced   params, body, env, name */
    T_FRAME,      /* traced   a local environment: parent, names, vals[] */
    T_VECTOR,     /* traced   items[] */
    T_TABLE,      /* traced   a hash table: buckets vector of alists */
    T_PRIM,       /* atomic   a C function */
    T_WEAK,       /* atomic   a loam weak reference (the target is not traced) */
    T_RESOURCE,   /* traced   name; has a finalizer while open */
    T_CODE,       /* traced   a compiled node: operands x[] (eval.c) */
    T_EPHEMERON,  /* traced   key (not kept alive by it), value (kept while the key lives) */
} type_t;

struct obj { uintptr_t tag; };

typedef struct { uintptr_t tag; val_t car, cdr; } cons_t;
typedef struct { uintptr_t tag; size_t len; char bytes[]; } string_t;
/* global: the symbol's (symbol . value) pair in the global table, or () —
 * the cell compiled code reads and writes a global variable through, so
 * that it is found without hashing (and a later define or set! is seen). */
typedef struct {
    uintptr_t tag;
    val_t global;
    uint32_t hash, len, special;
    char name[];
} symbol_t;

/* symbol_t.special: the special form a symbol names (set by builtins_init). */
enum { SF_NONE = 0, SF_QUOTE, SF_IF, SF_DEFINE, SF_SET, SF_LAMBDA, SF_LET, SF_LET_STAR,
       SF_LETREC, SF_BEGIN, SF_COND, SF_AND, SF_OR, SF_WHEN, SF_UNLESS };
/* params: the parameter list as written; body: the compiled lambda (a
 * T_CODE, eval.c) that says how to bind the arguments, and the code to run. */
typedef struct { uintptr_t tag; val_t params, body, env, name; } closure_t;
/* A frame: the variables of a call, a let or a letrec; vals[i] is the i-th
 * slot, as the compiler numbered them (the parameters or bindings, then the
 * body's internal defines). names lists the slots' names (a list the
 * compiler made, shared by all such frames) and proc is the closure called
 * (() for a let's frame): code never reads either, they are there for a
 * debugger or a backtrace — and keep a frame the size it had under the
 * tree-walking evaluator, so that the benchmark's heap stays the same. */
typedef struct { uintptr_t tag; val_t parent, names, proc; size_t n; val_t vals[]; } frame_t;
typedef struct { uintptr_t tag; size_t n; val_t items[]; } vector_t;
typedef struct { uintptr_t tag; size_t count; val_t buckets; } table_t;

typedef val_t (*prim_fn)(val_t *args, int nargs);
/* inline: a PRIM_ code when compiled calls may do the primitive's work on
 * the spot for fixnums and pairs (eval.c), else PRIM_CALL. */
typedef struct { uintptr_t tag; const char *name; prim_fn fn; int min_args, max_args, inline_op; } prim_t;
enum { PRIM_CALL = 0, PRIM_ADD, PRIM_SUB, PRIM_MUL, PRIM_NUM_EQ, PRIM_LT, PRIM_GT, PRIM_LE,
       PRIM_GE, PRIM_QUOTIENT, PRIM_REMAINDER, PRIM_CAR, PRIM_CDR, PRIM_CONS, PRIM_NULL,
       PRIM_PAIR, PRIM_NOT, PRIM_EQ, PRIM_VECTOR_REF };
/* ref: the loam weak reference, NULL when the target is not a heap object;
 * then immediate holds the target itself (a fixnum, a constant, ()). */
typedef struct { uintptr_t tag; loam_weak_t *ref; val_t immediate; } weak_t;
typedef struct { uintptr_t tag; val_t name; intptr_t id; intptr_t open; } resource_t;
/* An ephemeron, as Racket's and Guile's: value is kept only while key is
 * reachable otherwise (loam_mark_ephemeron). When the key dies the
 * collector clears both fields: broken then, as obj_key (the key was an
 * object) with key () tells. */
typedef struct { uintptr_t tag; val_t key, value; intptr_t obj_key; } ephemeron_t;
/* A node of compiled code. op says what it does (eval.c lists the ops and
 * what each keeps in a..d and x[]); x[0..n) are values the trace callback
 * marks: sub-nodes, constants, symbols. */
typedef struct { uintptr_t tag; uint32_t op, n; int32_t a, b, c, d; val_t x[]; } code_t;

static inline type_t type_of(val_t v) { return is_obj(v) ? (type_t)v->tag : T_FREE; }
static inline bool is_type(val_t v, type_t t) { return is_obj(v) && v->tag == (uintptr_t)t; }
static inline bool is_cons(val_t v) { return is_type(v, T_CONS); }
static inline bool is_symbol(val_t v) { return is_type(v, T_SYMBOL); }

#define AS(type, v) ((type *)(void *)(v))
static inline val_t car(val_t v) { return AS(cons_t, v)->car; }
static inline val_t cdr(val_t v) { return AS(cons_t, v)->cdr; }

/* ---- heap.c ---------------------------------------------------------------- */
typedef struct {
    loam_heap_t *heap;
    val_t symbols;            /* T_TABLE name -> symbol; a loam root slot */
    val_t globals;            /* T_TABLE symbol -> value; a loam root slot */
    val_t *stack;             /* the value stack (malloc'd, reported by the roots callback) */
    size_t sp, stack_size;
    size_t resources_opened, resources_finalized;
    bool verbose_finalizers;
} interp_t;

extern interp_t L;

/* Symbols the C code refers to: static slots, each registered as a root. */
typedef struct {
    val_t quote, else_;
} syms_t;
extern syms_t S;

typedef struct {
    size_t limit;             /* bytes; 0 = none */
    bool manual;              /* start the heap in manual mode */
    bool generational;        /* LOAM_GENERATIONAL (stores call written()) */
} heap_options_t;

void  heap_init(const heap_options_t *opt);
void  heap_shutdown(void);
_Noreturn void gc_alloc_failed(void);
/* Every object's allocation: loam's fast path inline (loam/inline.h), as an
 * interpreter that allocates by the million should; raises a Lisp error on
 * failure. */
static inline void *gc_alloc(size_t size, loam_kind_t kind)
{
    void *p = loam_gc_alloc_inline(L.heap, size, kind);
    if (__builtin_expect(p == NULL, 0))
        gc_alloc_failed();
    return p;
}
/* After storing a pointer into an object that may be old (any object but
 * one allocated with no allocation since): the heap is generational, and a
 * minor collection must see the store (docs/embedding.md §6.1). */
static inline void written(void *slot) { loam_write_barrier(slot); }

_Noreturn void lisp_error(const char *msg, val_t irritant);   /* eval.c */

/* Inline: the evaluator pushes every argument of every call. */
static inline void push(val_t v)
{
    if (L.sp == L.stack_size)
        lisp_error("value stack overflow", UNSPEC);
    L.stack[L.sp++] = v;
}
static inline val_t *stack_at(size_t i) { return &L.stack[i]; }

/* The two constructors every call and list operation uses: inline. */
static inline val_t cons(val_t a, val_t d)
{
    cons_t *c = gc_alloc(sizeof *c, LOAM_TRACED);
    c->car = a;
    c->cdr = d;
    c->tag = T_CONS;
    return (val_t)c;
}
/* vals[] start as () (zero); the caller fills them in. */
static inline val_t make_frame(val_t parent, val_t names, size_t n)
{
    frame_t *f = gc_alloc(sizeof *f + n * sizeof(val_t), LOAM_TRACED);
    f->parent = parent;
    f->names = names;
    f->n = n;
    f->tag = T_FRAME;
    return (val_t)f;
}
val_t make_string(const char *bytes, size_t len);
val_t make_vector(size_t n, val_t fill);
val_t make_closure(val_t params, val_t body, val_t env, val_t name);   /* via eval.c's closure() */
val_t make_code(uint32_t op, uint32_t n);
val_t make_prim(const char *name, prim_fn fn, int min_args, int max_args);
val_t make_weak(val_t target);
val_t weak_get(val_t w);
val_t make_resource(val_t name);
val_t make_ephemeron(val_t key, val_t value);
void  close_resource(val_t r);
val_t intern(const char *name, size_t len);
void  global_set(val_t sym, val_t value);

/* ---- reader.c / printer.c ----------------------------------------------- */
typedef struct { const char *p, *end; int line; } reader_t;
val_t read_form(reader_t *r);          /* EOF_V at the end of the text */
void  print_value(FILE *out, val_t v, bool write);
/* A fixnum in decimal, in buf (not terminated); its length. */
enum { FIXNUM_TEXT_MAX = 24 };         /* a sign and 19 digits fit */
size_t fixnum_text(intptr_t n, char buf[FIXNUM_TEXT_MAX]);

/* ---- eval.c ------------------------------------------------------------------ */
val_t eval(val_t expr);                /* compile, then run, in the global environment */
val_t apply(val_t f, val_t *args, int nargs);
void  eval_init(void);
bool  run_text(const char *text, size_t len);   /* false: some form failed */
extern char *stack_base;               /* main's frame: for the recursion limit */

/* ---- builtins.c ------------------------------------------------------------- */
void builtins_init(void);

#endif
