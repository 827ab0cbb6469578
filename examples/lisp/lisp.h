/* lisp.h — a small Lisp whose every object lives in a loam collected heap.
 *
 * Files:
 *   lisp.h      values, object layouts, the functions the files share
 *   heap.c      the loam heap: config, trace callback, roots callback, value
 *               stack, allocation, symbols, hash tables, weak refs, resources
 *   reader.c    text -> objects
 *   printer.c   objects -> text (display / write)
 *   eval.c      the evaluator (special forms, tail calls, closures)
 *   builtins.c  primitives and the Lisp prelude
 *   main.c      command line, statistics at exit
 *
 * Values. A value is one machine word (val_t):
 *   ...xxx1   a fixnum: the integer is the word shifted right by one (63 bits)
 *   ...xx10   an immediate constant: #f, #t, the unspecified value, end of file
 *   0         the empty list ()
 *   ...0000   a pointer to a heap object (loam blocks are 16-byte aligned)
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

#define FIXNUM_MAX ((intptr_t)(INTPTR_MAX >> 1))
#define FIXNUM_MIN ((intptr_t)(INTPTR_MIN >> 1))

static inline bool is_fixnum(val_t v) { return ((uintptr_t)v & 1) != 0; }
static inline val_t make_fixnum(intptr_t n) { return (val_t)(((uintptr_t)n << 1) | 1); }
static inline intptr_t fixnum_value(val_t v) { return (intptr_t)v >> 1; }   /* arithmetic shift */
static inline bool is_obj(val_t v) { return v != NIL && ((uintptr_t)v & 15) == 0; }
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
} type_t;

struct obj { uintptr_t tag; };

typedef struct { uintptr_t tag; val_t car, cdr; } cons_t;
typedef struct { uintptr_t tag; size_t len; char bytes[]; } string_t;
/* global: the symbol's (symbol . value) pair in the global table, or () —
 * a shortcut, so that a global variable is found without hashing.
 * local: the symbol may name a variable of some frame (eval.c sets it before
 * any such frame exists, and never clears it); without it, a variable
 * lookup goes straight to global instead of searching the frames. (It sits
 * in what was padding: a symbol takes no more memory for it.) */
typedef struct {
    uintptr_t tag;
    val_t global;
    uint32_t hash, len, special;
    bool local;
    char name[];
} symbol_t;

/* symbol_t.special: the special form a symbol names (set by builtins_init). */
enum { SF_NONE = 0, SF_QUOTE, SF_IF, SF_DEFINE, SF_SET, SF_LAMBDA, SF_LET, SF_LET_STAR,
       SF_LETREC, SF_BEGIN, SF_COND, SF_AND, SF_OR, SF_WHEN, SF_UNLESS };
typedef struct { uintptr_t tag; val_t params, body, env, name; } closure_t;
/* A call's frame: names is the closure's parameter list (shared, not copied),
 * vals[i] the value of the i-th name. Internal defines go to the alist extra. */
typedef struct { uintptr_t tag; val_t parent, names, extra; size_t n; val_t vals[]; } frame_t;
typedef struct { uintptr_t tag; size_t n; val_t items[]; } vector_t;
typedef struct { uintptr_t tag; size_t count; val_t buckets; } table_t;

typedef val_t (*prim_fn)(val_t *args, int nargs);
typedef struct { uintptr_t tag; const char *name; prim_fn fn; int min_args, max_args; } prim_t;
/* ref: the loam weak reference, NULL when the target is not a heap object;
 * then immediate holds the target itself (a fixnum, a constant, ()). */
typedef struct { uintptr_t tag; loam_weak_t *ref; val_t immediate; } weak_t;
typedef struct { uintptr_t tag; val_t name; intptr_t id; intptr_t open; } resource_t;

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
void *gc_alloc(size_t size, loam_kind_t kind);   /* raises a Lisp error on failure */
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

val_t cons(val_t a, val_t d);
val_t make_string(const char *bytes, size_t len);
val_t make_vector(size_t n, val_t fill);
val_t make_closure(val_t params, val_t body, val_t env, val_t name);   /* via eval.c's closure() */
val_t make_frame(val_t parent, val_t names, size_t n);
val_t make_prim(const char *name, prim_fn fn, int min_args, int max_args);
val_t make_weak(val_t target);
val_t weak_get(val_t w);
val_t make_resource(val_t name);
void  close_resource(val_t r);
val_t intern(const char *name, size_t len);
void  global_set(val_t sym, val_t value);

/* A global variable's value (found: whether it has one). Inline: the
 * evaluator looks up a global in most calls (+, car, the program's functions). */
static inline val_t global_ref(val_t sym, bool *found)
{
    val_t pair = AS(symbol_t, sym)->global;
    *found = pair != NIL;
    return pair != NIL ? cdr(pair) : UNSPEC;
}

/* ---- reader.c / printer.c ----------------------------------------------- */
typedef struct { const char *p, *end; int line; } reader_t;
val_t read_form(reader_t *r);          /* EOF_V at the end of the text */
void  print_value(FILE *out, val_t v, bool write);

/* ---- eval.c ------------------------------------------------------------------ */
val_t eval(val_t expr, val_t env);
val_t apply(val_t f, val_t *args, int nargs);
void  eval_init(void);
bool  run_text(const char *text, size_t len);   /* false: some form failed */
extern char *stack_base;               /* main's frame: for the recursion limit */

/* ---- builtins.c ------------------------------------------------------------- */
void builtins_init(void);

#endif
