/* eval.c — the evaluator: a compiler, and the loop that runs what it makes.
 *
 * Each top-level form is compiled once into a tree of code nodes (code_t,
 * lisp.h), then run; a lambda's body is compiled with the form around it,
 * once, and shared by every closure made from it. Compiling does the work
 * a tree walker would redo at each step:
 *   - the special forms are recognised once;
 *   - a variable is resolved to a frame slot, (depth, index): how many
 *     parent links to follow from the current frame, then which slot; or
 *     to a global, read through the symbol's global binding cell;
 *   - a body's internal defines are given slots in its frame;
 *   - a call knows its argument count, and a call of + car null? ... whose
 *     global still holds the builtin does the work on the spot for fixnums
 *     and pairs (anything else goes through the primitive itself).
 * Code nodes are heap objects (T_CODE, traced by heap.c): a node keeps its
 * sub-nodes, quoted constants and symbols alive, and a closure keeps its
 * compiled lambda.
 *
 * run(code, env) runs a node; env is () at the top level, or the current
 * T_FRAME. Nodes in tail position (the branches of if, the last form of a
 * body, a closure's body after the call) are not run by a recursive call:
 * the loop replaces code and env and goes round again, so a tail-recursive
 * loop runs in constant C stack.
 *
 * A call pushes each argument on the value stack (heap.c), where the
 * collector's roots callback sees them; primitives get a pointer to their
 * arguments there. Everything else the evaluator holds (code, env, the
 * function, a half-built frame or node) is in C locals, which the collector
 * finds by scanning the C stack conservatively. */
#include "lisp.h"

#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* A ThreadSanitizer build (gcc's macro, or clang's feature test): its
 * recursion limit is lower (eval_init). */
#if defined(__SANITIZE_THREAD__)
#define LISP_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LISP_UNDER_TSAN 1
#endif
#endif

char *stack_base;
static uintptr_t stack_floor;   /* run's frames must stay above it */
static jmp_buf *error_catch;

_Noreturn void lisp_error(const char *msg, val_t irritant)
{
    fflush(stdout);
    fprintf(stderr, "error: %s", msg);
    if (irritant != UNSPEC) {
        fputs(": ", stderr);
        print_value(stderr, irritant, true);
    }
    fputc('\n', stderr);
    if (!error_catch)
        exit(1);
    longjmp(*error_catch, 1);
}

void eval_init(void)
{
    struct rlimit rl;
    size_t stack_limit = 8u << 20;
    if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        stack_limit = (size_t)rl.rlim_cur;
    stack_limit = stack_limit / 4 * 3;        /* leave room for C code under run */
#ifdef LISP_UNDER_TSAN
    /* ThreadSanitizer keeps every C call on a shadow stack of 65,536
     * entries and crashes past it. Under it a level of Lisp recursion is
     * up to three C calls (run, a primitive's handler and its general
     * part) in about 275 bytes, so 6 MiB of them overflow that stack
     * first; 4 MiB stops at about 45,000 calls, and still holds the
     * 10,000 levels tests/tailcalls.lisp asks for. */
    if (stack_limit > (4u << 20))
        stack_limit = 4u << 20;
#endif
    stack_floor = (uintptr_t)stack_base - stack_limit;   /* main set stack_base first */
}

/* ---- code nodes ---------------------------------------------------------------
 * What each op keeps in its node (a..d are small integers, x[] values):
 *   K_CONST        x0 the value
 *   K_LOCAL        a depth, b slot
 *   K_LOCAL_DEF    a depth, b slot of an internal define; x0 the code for the
 *                  same name outside, run while the define has not run yet
 *   K_GLOBAL       x0 the symbol
 *   K_SET_LOCAL    a depth, b slot; x0 the value's code
 *   K_SET_GLOBAL   x0 the symbol, x1 the value's code
 *   K_DEFINE       x0 the symbol, x1 the value's code; a = -1 for a global,
 *                  else the slot in the current frame
 *   K_LAMBDA       a fixed parameters, b frame slots, c 1 with a rest
 *                  parameter; x0 the parameter list, x1 the body's code,
 *                  x2 the name or (), x3 the slots' names
 *   K_IF           x0 test, x1 then, x2 else
 *   K_SEQ, K_AND, K_OR   x0..x(n-1) the forms' code
 *   K_LET, K_LETREC a bindings, b frame slots; x0..x(a-1) the inits,
 *                  x(a) the body, x(a+1) the slots' names
 *   K_NAMED_LET    a bindings; x0..x(a-1) the inits, x(a) the loop's
 *                  K_LAMBDA, x(a+1) the names of the frame holding the loop
 *   K_CALL         a arguments; x0 the operator's code, x1.. the arguments'
 *   K_CALL_GLOBAL  a arguments; x0 the operator's symbol, x1.. the arguments'
 *   K_PRIM         a arguments (1..3), b the PRIM_ op, c its handler; x0 the
 *                  symbol's global cell (a symbol keeps its cell once it has
 *                  one), x1 the primitive the cell held when compiled, x2..
 *                  the arguments' code
 *   K_ERROR        x0 the message (a string), x1 the irritant
 * Compiled nodes are filled in right after their allocation, with their
 * sub-nodes made before: no write barrier is needed. */
enum {
    K_CONST, K_LOCAL, K_LOCAL_DEF, K_GLOBAL, K_SET_LOCAL, K_SET_GLOBAL, K_DEFINE,
    K_LAMBDA, K_IF, K_SEQ, K_AND, K_OR, K_LET, K_LETREC, K_NAMED_LET,
    K_CALL, K_CALL_GLOBAL, K_PRIM, K_ERROR
};

enum { PRIM_INLINE_MAX = 3 };   /* arguments a K_PRIM node evaluates into C locals */
/* What a K_PRIM node's handler returns when it did not do the work (never
 * a value: lisp.h's immediates stop at 0x12). */
#define PRIM_NOT_DONE ((val_t)(uintptr_t)0x16)
static int32_t prim_handler_of(int32_t op, size_t nargs);

#define CODE(v) AS(code_t, v)

static val_t node(uint32_t op, uint32_t n, int32_t a, int32_t b)
{
    val_t v = make_code(op, n);
    CODE(v)->a = a;
    CODE(v)->b = b;
    return v;
}

static val_t node1(uint32_t op, val_t x0)
{
    val_t v = make_code(op, 1);
    CODE(v)->x[0] = x0;
    return v;
}

static val_t node2(uint32_t op, val_t x0, val_t x1)
{
    val_t v = make_code(op, 2);
    CODE(v)->x[0] = x0;
    CODE(v)->x[1] = x1;
    return v;
}

static val_t constant(val_t v) { return node1(K_CONST, v); }

static val_t make_if(val_t test, val_t then, val_t otherwise)
{
    val_t v = make_code(K_IF, 3);
    CODE(v)->x[0] = test;
    CODE(v)->x[1] = then;
    CODE(v)->x[2] = otherwise;
    return v;
}

/* ---- syntax errors -------------------------------------------------------------
 * A syntax error does not stop the compiler: the faulty form compiles to a
 * K_ERROR node that reports it when it runs, as the error would have been
 * met by a tree walker (an error in a function never called stays silent;
 * one in a branch not taken too). compile() catches it at the innermost
 * form. The message waits in these statics until compile() makes the node:
 * nothing allocates between the raise and the catch. */
static jmp_buf *syntax_catch;
static const char *syntax_msg;
static val_t syntax_irritant;

_Noreturn static void syntax_error(const char *msg, val_t irritant)
{
    syntax_msg = msg;
    syntax_irritant = irritant;
    longjmp(*syntax_catch, 1);
}

static val_t error_node(const char *msg, val_t irritant)
{
    val_t text = make_string(msg, strlen(msg));
    return node2(K_ERROR, text, irritant);
}

static val_t pop_arg(val_t *list, val_t form)
{
    if (!is_cons(*list))
        syntax_error("bad syntax", form);
    val_t v = car(*list);
    *list = cdr(*list);
    return v;
}

/* A let binding (var init), or a parameter, is named by its car. */
static val_t binding_name(val_t entry)
{
    return is_cons(entry) ? car(entry) : entry;
}

static size_t list_length(val_t list, val_t form)
{
    size_t n = 0;
    for (; is_cons(list); list = cdr(list))
        n++;
    if (list != NIL)
        syntax_error("bad syntax", form);
    return n;
}

/* ---- scopes ------------------------------------------------------------------
 * At compile time each frame the code will run in is a scope: the names of
 * its slots, in order. Slots from `bound` on belong to internal defines:
 * they hold UNDEF until their define runs, and until then the name means
 * what it means outside (a tree walker would not find it in the frame yet).
 * Scopes live on the C stack of the compiler; names is a heap list, seen
 * there by the stack scan. */
typedef struct scope {
    struct scope *parent;
    val_t names, last;         /* the slots' names; its last pair, to append */
    int32_t n, bound;          /* slots; how many are bound when the frame is made */
} scope_t;

static void add_slot(scope_t *sc, val_t name)
{
    val_t cell = cons(name, NIL);
    if (sc->last == NIL) {
        sc->names = cell;
    } else {
        AS(cons_t, sc->last)->cdr = cell;   /* last may be old: cons allocated */
        written(&AS(cons_t, sc->last)->cdr);
    }
    sc->last = cell;
    sc->n++;
}

static int32_t slot_of(const scope_t *sc, val_t name)
{
    int32_t i = 0;
    for (val_t p = sc->names; p != NIL; p = cdr(p), i++)
        if (car(p) == name)
            return i;
    return -1;
}

static val_t compile(val_t x, scope_t *sc);

/* The code reading variable sym from the scope sc, which is depth frames
 * out from where the code runs. */
static val_t compile_ref_from(val_t sym, scope_t *sc, int32_t depth)
{
    for (; sc; sc = sc->parent, depth++) {
        int32_t i = slot_of(sc, sym);
        if (i < 0)
            continue;
        if (i < sc->bound)
            return node(K_LOCAL, 0, depth, i);
        val_t outside = compile_ref_from(sym, sc->parent, depth + 1);
        val_t v = node(K_LOCAL_DEF, 1, depth, i);
        CODE(v)->x[0] = outside;
        return v;
    }
    return node1(K_GLOBAL, sym);
}

/* ---- compiling special forms ------------------------------------------------ */

/* Internal defines: a body's (define name ...) forms, and those of a begin
 * in it, get slots in the body's frame before any of the body is compiled,
 * so that code before them (a procedure calling one defined after it) can
 * refer to them. At the top level (no scope) a define is global. */
static void scan_defines(val_t body, scope_t *sc)
{
    for (; is_cons(body); body = cdr(body)) {
        val_t form = car(body);
        if (!is_cons(form) || !is_symbol(car(form)))
            continue;
        uint32_t special = AS(symbol_t, car(form))->special;
        if (special == SF_BEGIN)
            scan_defines(cdr(form), sc);
        if (special != SF_DEFINE || !is_cons(cdr(form)))
            continue;
        val_t name = binding_name(car(cdr(form)));
        if (is_symbol(name) && slot_of(sc, name) < 0)
            add_slot(sc, name);
    }
}

/* Code for a body (a list of forms): the last runs in tail position. */
static val_t compile_body(val_t body, scope_t *sc)
{
    if (sc)
        scan_defines(body, sc);
    size_t base = L.sp, n = 0;
    for (; is_cons(body); body = cdr(body), n++)
        push(compile(car(body), sc));          /* the stack holds the pieces: a root */
    val_t v;
    if (n == 0)
        v = constant(UNSPEC);
    else if (n == 1)
        v = *stack_at(base);
    else {
        v = make_code(K_SEQ, (uint32_t)n);
        memcpy(CODE(v)->x, stack_at(base), n * sizeof(val_t));
    }
    L.sp = base;
    return v;
}

static val_t compile_lambda(val_t params, val_t body, val_t name, scope_t *sc)
{
    scope_t inner = { sc, NIL, NIL, 0, 0 };
    int32_t fixed = 0;
    val_t p = params;
    for (; is_cons(p); p = cdr(p), fixed++)
        add_slot(&inner, binding_name(car(p)));   /* a named let's: (var init) */
    bool rest = p != NIL;                      /* a dotted tail, or a lone rest symbol */
    if (rest)
        add_slot(&inner, p);
    inner.bound = inner.n;
    val_t code = compile_body(body, &inner);
    val_t v = node(K_LAMBDA, 4, fixed, inner.n);
    CODE(v)->c = rest;
    CODE(v)->x[0] = params;
    CODE(v)->x[1] = code;
    CODE(v)->x[2] = name;
    CODE(v)->x[3] = inner.names;
    return v;
}

/* The init of a let binding (var init), or unspecified for (var) or var. */
static val_t compile_init(val_t binding, scope_t *sc)
{
    if (is_cons(binding) && is_cons(cdr(binding)))
        return compile(car(cdr(binding)), sc);
    return constant(UNSPEC);
}

/* (let ((var init) ...) body...) and letrec: one frame, whose slots are the
 * bindings'; letrec compiles the inits inside it. */
static val_t compile_let(val_t form, val_t rest, bool letrec, scope_t *sc)
{
    val_t bindings = pop_arg(&rest, form);
    size_t n = list_length(bindings, form);
    scope_t inner = { sc, NIL, NIL, 0, 0 };
    for (val_t b = bindings; b != NIL; b = cdr(b))
        add_slot(&inner, binding_name(car(b)));
    inner.bound = inner.n;
    size_t base = L.sp;
    for (val_t b = bindings; b != NIL; b = cdr(b))
        push(compile_init(car(b), letrec ? &inner : sc));
    push(compile_body(rest, &inner));
    val_t v = node(letrec ? K_LETREC : K_LET, (uint32_t)n + 2, (int32_t)n, inner.n);
    memcpy(CODE(v)->x, stack_at(base), (n + 1) * sizeof(val_t));
    CODE(v)->x[n + 1] = inner.names;
    L.sp = base;
    return v;
}

/* Named let: (let loop ((var init) ...) body...) is a call of a closure
 * whose environment, a frame of its own, binds loop to itself. */
static val_t compile_named_let(val_t form, val_t rest, scope_t *sc)
{
    val_t name = pop_arg(&rest, form);
    val_t bindings = pop_arg(&rest, form);
    scope_t loop_scope = { sc, NIL, NIL, 0, 0 };
    add_slot(&loop_scope, name);
    loop_scope.bound = 1;
    size_t base = L.sp;
    size_t n = 0;
    for (val_t b = bindings; is_cons(b); b = cdr(b), n++)
        push(compile_init(car(b), sc));
    push(compile_lambda(bindings, rest, name, &loop_scope));
    val_t v = node(K_NAMED_LET, (uint32_t)n + 2, (int32_t)n, 0);
    memcpy(CODE(v)->x, stack_at(base), (n + 1) * sizeof(val_t));
    CODE(v)->x[n + 1] = loop_scope.names;
    L.sp = base;
    return v;
}

/* let*: one frame per binding, each a scope of one slot inside the last. */
static val_t compile_let_star(val_t bindings, val_t body, scope_t *sc)
{
    if (!is_cons(bindings))
        return compile_body(body, sc);
    val_t init = compile_init(car(bindings), sc);
    scope_t inner = { sc, NIL, NIL, 0, 0 };
    add_slot(&inner, binding_name(car(bindings)));
    inner.bound = 1;
    val_t code = compile_let_star(cdr(bindings), body, &inner);
    val_t v = node(K_LET, 3, 1, inner.n);
    CODE(v)->x[0] = init;
    CODE(v)->x[1] = code;
    CODE(v)->x[2] = inner.names;
    return v;
}

/* cond, one clause at a time: (test body...) is an if, (test) an or, and
 * a clause that is not a list an error where a tree walker would meet it.
 * tested: some test ran before (an else with no body gives its #f). */
static val_t compile_cond(val_t form, val_t clauses, bool tested, scope_t *sc)
{
    if (!is_cons(clauses))
        return constant(UNSPEC);               /* no clause chosen */
    val_t clause = car(clauses);
    if (!is_cons(clause))
        return error_node("bad syntax", form);
    if (car(clause) == S.else_)
        return cdr(clause) == NIL ? constant(tested ? FALSE_V : UNSPEC)
                                  : compile_body(cdr(clause), sc);
    val_t test = compile(car(clause), sc);
    val_t otherwise = compile_cond(form, cdr(clauses), true, sc);
    if (cdr(clause) == NIL)
        return node2(K_OR, test, otherwise);
    val_t then = compile_body(cdr(clause), sc);
    return make_if(test, then, otherwise);
}

/* and, or: (and) is #t, (or) #f, one form is itself. */
static val_t compile_and_or(uint32_t op, val_t rest, scope_t *sc)
{
    if (!is_cons(rest))
        return constant(make_bool(op == K_AND));
    if (!is_cons(cdr(rest)))
        return compile(car(rest), sc);
    size_t base = L.sp, n = 0;
    for (; is_cons(rest); rest = cdr(rest), n++)
        push(compile(car(rest), sc));
    val_t v = make_code(op, (uint32_t)n);
    memcpy(CODE(v)->x, stack_at(base), n * sizeof(val_t));
    L.sp = base;
    return v;
}

/* The code that raises msg after running value (set! and define of
 * something not a symbol evaluate the value first). */
static val_t value_then_error(val_t value, const char *msg, val_t irritant)
{
    val_t error = error_node(msg, irritant);
    return node2(K_SEQ, value, error);
}

static val_t compile_define(val_t form, val_t rest, scope_t *sc)
{
    val_t target = pop_arg(&rest, form);
    val_t name = target, value;
    if (is_cons(target)) {                     /* (define (name . params) body...) */
        name = car(target);
        value = compile_lambda(cdr(target), rest, name, sc);
    } else {
        value = rest == NIL ? constant(UNSPEC) : compile(pop_arg(&rest, form), sc);
    }
    if (!is_symbol(name))
        return value_then_error(value, "define: not a symbol", name);
    int32_t slot = -1;
    if (sc) {
        slot = slot_of(sc, name);
        if (slot < 0) {                        /* not at a body's top: a slot now */
            slot = sc->n;
            add_slot(sc, name);
        }
    }
    val_t v = node(K_DEFINE, 2, slot, 0);
    CODE(v)->x[0] = name;
    CODE(v)->x[1] = value;
    return v;
}

static val_t compile_set(val_t form, val_t rest, scope_t *sc)
{
    val_t sym = pop_arg(&rest, form);
    val_t value = compile(pop_arg(&rest, form), sc);
    if (!is_symbol(sym))
        return value_then_error(value, "set!: not a symbol", sym);
    val_t where = compile_ref_from(sym, sc, 0);
    if (CODE(where)->op == K_GLOBAL)
        return node2(K_SET_GLOBAL, sym, value);
    /* An internal define's slot is set even before its define has run. */
    val_t v = node(K_SET_LOCAL, 1, CODE(where)->a, CODE(where)->b);
    CODE(v)->x[0] = value;
    return v;
}

/* An application: the operator's code (or its global symbol), then the
 * arguments'. */
static val_t compile_call(val_t form, scope_t *sc)
{
    val_t op = car(form), args = cdr(form);
    size_t nargs = list_length(args, form);
    val_t callee = is_symbol(op) ? compile_ref_from(op, sc, 0) : compile(op, sc);
    uint32_t kind = K_CALL, first = 1;
    int32_t inline_op = PRIM_CALL;
    if (CODE(callee)->op == K_GLOBAL) {
        kind = K_CALL_GLOBAL;
        callee = op;
        val_t cell = AS(symbol_t, op)->global;
        prim_t *p = cell != NIL && is_type(cdr(cell), T_PRIM) ? AS(prim_t, cdr(cell)) : NULL;
        /* Only calls the primitive accepts: the others fail in the generic path. */
        if (p && p->inline_op != PRIM_CALL && nargs >= 1 && nargs <= PRIM_INLINE_MAX &&
            (int)nargs >= p->min_args && (p->max_args < 0 || (int)nargs <= p->max_args)) {
            kind = K_PRIM;
            first = 2;
            inline_op = p->inline_op;
        }
    }
    size_t base = L.sp;
    if (kind == K_PRIM) {
        push(AS(symbol_t, op)->global);
        push(cdr(AS(symbol_t, op)->global));
    } else {
        push(callee);
    }
    for (; args != NIL; args = cdr(args))
        push(compile(car(args), sc));
    val_t v = node(kind, first + (uint32_t)nargs, (int32_t)nargs, inline_op);
    if (kind == K_PRIM)
        CODE(v)->c = prim_handler_of(inline_op, nargs);
    memcpy(CODE(v)->x, stack_at(base), (first + nargs) * sizeof(val_t));
    L.sp = base;
    return v;
}

static val_t compile_form(val_t form, scope_t *sc)
{
    val_t op = car(form), rest = cdr(form);
    uint32_t special = is_symbol(op) ? AS(symbol_t, op)->special : SF_NONE;
    switch (special) {
    case SF_QUOTE:
        return constant(pop_arg(&rest, form));
    case SF_IF: {
        val_t test = compile(pop_arg(&rest, form), sc);
        val_t then = compile(pop_arg(&rest, form), sc);
        val_t otherwise = rest != NIL ? compile(pop_arg(&rest, form), sc) : constant(UNSPEC);
        return make_if(test, then, otherwise);
    }
    case SF_DEFINE:
        return compile_define(form, rest, sc);
    case SF_SET:
        return compile_set(form, rest, sc);
    case SF_LAMBDA: {
        val_t params = pop_arg(&rest, form);
        return compile_lambda(params, rest, NIL, sc);
    }
    case SF_BEGIN:
        return compile_body(rest, sc);
    case SF_LET:
        if (is_cons(rest) && is_symbol(car(rest)))
            return compile_named_let(form, rest, sc);
        return compile_let(form, rest, false, sc);
    case SF_LETREC:
        return compile_let(form, rest, true, sc);
    case SF_LET_STAR: {
        val_t bindings = pop_arg(&rest, form);
        return compile_let_star(bindings, rest, sc);
    }
    case SF_COND:
        return compile_cond(form, rest, false, sc);
    case SF_AND:
        return compile_and_or(K_AND, rest, sc);
    case SF_OR:
        return compile_and_or(K_OR, rest, sc);
    case SF_WHEN:
    case SF_UNLESS: {
        val_t test = compile(pop_arg(&rest, form), sc);
        val_t body = compile_body(rest, sc);
        val_t none = constant(UNSPEC);
        return special == SF_WHEN ? make_if(test, body, none) : make_if(test, none, body);
    }
    default:
        return compile_call(form, sc);
    }
}

/* The code for expression x in scope sc (NULL: the top level). */
static val_t compile(val_t x, scope_t *sc)
{
    if (is_symbol(x))
        return compile_ref_from(x, sc, 0);
    if (!is_cons(x))
        return constant(x);                    /* numbers, strings, #t, () ... */

    jmp_buf here;
    jmp_buf *outer = syntax_catch;
    size_t sp = L.sp;
    if (setjmp(here)) {
        syntax_catch = outer;
        L.sp = sp;                             /* the pieces of forms left half done */
        val_t irritant = syntax_irritant;      /* a local now: make_string may collect */
        syntax_irritant = NIL;
        return error_node(syntax_msg, irritant);
    }
    syntax_catch = &here;
    val_t code = compile_form(x, sc);
    syntax_catch = outer;
    return code;
}

/* ---- running code --------------------------------------------------------------- */

static val_t run(val_t code, val_t env);
static inline val_t prim_node(const code_t *c, val_t env);
static val_t prim_call(const code_t *c);

static inline val_t *local_slot(val_t env, int32_t depth, int32_t slot)
{
    for (; depth > 0; depth--)
        env = AS(frame_t, env)->parent;
    return &AS(frame_t, env)->vals[slot];
}

static inline val_t global_value(val_t sym)
{
    val_t cell = AS(symbol_t, sym)->global;
    if (cell == NIL)
        lisp_error("unbound variable", sym);   /* not defined (yet) */
    return cdr(cell);
}

/* Run code that is not in tail position (an operator, an argument, a test,
 * an init...). Most are a variable or a constant, and those are done here,
 * without the cost of a call of run. */
static inline val_t run_sub(val_t code, val_t env)
{
    code_t *c = CODE(code);
    switch (c->op) {
    case K_CONST:
        return c->x[0];
    case K_LOCAL:
        return *local_slot(env, c->a, c->b);
    case K_GLOBAL:
        return global_value(c->x[0]);
    case K_PRIM: {
        val_t result = prim_node(c, env);
        if (__builtin_expect(result != PRIM_NOT_DONE, 1))
            return result;
        return prim_call(c);
    }
    default:
        return run(code, env);
    }
}

/* A frame for slots names, its first `bound` slots copied from vals; the
 * internal defines' slots after them start UNDEF. */
static inline val_t new_frame(val_t parent, val_t names, const val_t *vals, size_t bound, size_t slots)
{
    val_t frame = make_frame(parent, names, slots);
    frame_t *f = AS(frame_t, frame);
    for (size_t i = 0; i < bound; i++)        /* a loop: a frame has few slots */
        f->vals[i] = vals[i];
    for (size_t i = bound; i < slots; i++)
        f->vals[i] = UNDEF;
    return frame;
}

/* bind's other cases: a rest parameter, or the wrong count. */
static __attribute__((noinline)) val_t bind_rest(val_t c, val_t *args, int nargs)
{
    code_t *lambda = CODE(AS(closure_t, c)->body);
    int fixed = lambda->a;
    if (!lambda->c || nargs < fixed)
        lisp_error("wrong number of arguments", c);
    val_t frame = new_frame(AS(closure_t, c)->env, lambda->x[3], args, (size_t)fixed,
                            (size_t)lambda->b);
    frame_t *f = AS(frame_t, frame);
    f->proc = c;
    f->vals[fixed] = NIL;                      /* not UNDEF: the list is built below */
    val_t list = NIL;
    for (int i = nargs - 1; i >= fixed; i--)
        list = cons(args[i], list);
    f->vals[fixed] = list;                     /* after allocations: f may be old */
    written(&f->vals[fixed]);
    return frame;
}

/* A new frame for calling closure c with args[0..nargs). */
static inline val_t bind(val_t c, val_t *args, int nargs)
{
    code_t *lambda = CODE(AS(closure_t, c)->body);
    if (__builtin_expect(nargs != lambda->a || lambda->c, 0))
        return bind_rest(c, args, nargs);
    val_t frame = new_frame(AS(closure_t, c)->env, lambda->x[3], args, (size_t)nargs,
                            (size_t)lambda->b);
    AS(frame_t, frame)->proc = c;
    return frame;
}

/* ---- K_PRIM nodes: a handler per primitive and argument count ----------------
 * A handler evaluates the node's arguments and, when the global still holds
 * the primitive and the arguments suit (fixnums, a pair...), does the work
 * on the spot and returns the value. Otherwise it pushes the arguments on
 * the value stack, then the function the global holds, and returns
 * PRIM_NOT_DONE: the caller calls that function (in tail position too),
 * which reports any error. The compiler picks the handler (node field c):
 * running the node costs one indirect call, and no dispatch on the
 * primitive or the argument count.
 *
 * Most arguments are a constant or a local variable: a handler reads those
 * first, without a call, so that its common case saves no registers; any
 * other argument, or a case it does not do, goes to the handler's general
 * part, which runs the arguments in order after reading the function, as a
 * call does. Reading a constant or a variable twice changes nothing. */
typedef val_t prim_handler_fn(const code_t *c, val_t env);

/* A constant's or a local variable's value in *out; false for other code. */
static inline bool leaf_value(val_t code, val_t env, val_t *out)
{
    const code_t *c = CODE(code);
    if (c->op == K_LOCAL) {
        *out = *local_slot(env, c->a, c->b);
        return true;
    }
    if (c->op == K_CONST) {
        *out = c->x[0];
        return true;
    }
    return false;
}

/* What the primitive's global holds now. */
static inline val_t prim_global(const code_t *c) { return cdr(c->x[0]); }

/* The global still holds the primitive the node was compiled against. */
static inline bool prim_unchanged(const code_t *c) { return prim_global(c) == c->x[1]; }

/* The handlers' way out: push the arguments, then f (see above). */
static __attribute__((noinline)) val_t prim_defer(const code_t *c, val_t f, val_t a, val_t b, val_t d)
{
    push(a);
    if (c->a > 1)
        push(b);
    if (c->a > 2)
        push(d);
    push(f);
    return PRIM_NOT_DONE;
}

/* The work of a primitive on its arguments, or PRIM_NOT_DONE. Fixnums are
 * tagged 2n+1, so tagged words compare as their integers do, and a sum or
 * difference is one operation on the words, whose overflow is the fixnum's
 * (63 bits). */
#define FIXNUM_TAGGED(name, overflows)                                          \
    static inline val_t name(val_t a, val_t b)                                  \
    {                                                                           \
        intptr_t r;   /* (2x+1) op 2y is 2(x op y)+1 */                         \
        if (is_fixnum(a) && is_fixnum(b) && !overflows((intptr_t)a, (intptr_t)b - 1, &r)) \
            return (val_t)r;                                                    \
        return PRIM_NOT_DONE;                                                   \
    }
FIXNUM_TAGGED(work_add, __builtin_add_overflow)
FIXNUM_TAGGED(work_sub, __builtin_sub_overflow)
static inline val_t work_mul(val_t a, val_t b)
{
    intptr_t r;
    if (is_fixnum(a) && is_fixnum(b) &&
        !__builtin_mul_overflow(fixnum_value(a), fixnum_value(b), &r) &&
        r >= FIXNUM_MIN && r <= FIXNUM_MAX)
        return make_fixnum(r);
    return PRIM_NOT_DONE;
}
#define FIXNUM_COMPARE(name, op)                                                \
    static inline val_t name(val_t a, val_t b)                                  \
    {                                                                           \
        if (is_fixnum(a) && is_fixnum(b))                                       \
            return make_bool((intptr_t)a op (intptr_t)b);                       \
        return PRIM_NOT_DONE;                                                   \
    }
FIXNUM_COMPARE(work_num_eq, ==)
FIXNUM_COMPARE(work_lt, <)
FIXNUM_COMPARE(work_gt, >)
FIXNUM_COMPARE(work_le, <=)
FIXNUM_COMPARE(work_ge, >=)
/* FIXNUM_MIN / -1 is FIXNUM_MAX + 1: no overflow in C, and out of range. */
static inline val_t work_quotient(val_t a, val_t b)
{
    if (is_fixnum(a) && is_fixnum(b) && fixnum_value(b) != 0) {
        intptr_t r = fixnum_value(a) / fixnum_value(b);
        if (r <= FIXNUM_MAX)
            return make_fixnum(r);
    }
    return PRIM_NOT_DONE;
}
static inline val_t work_remainder(val_t a, val_t b)
{
    if (is_fixnum(a) && is_fixnum(b) && fixnum_value(b) != 0)
        return make_fixnum(fixnum_value(a) % fixnum_value(b));
    return PRIM_NOT_DONE;
}
static inline val_t work_cons(val_t a, val_t b) { return cons(a, b); }
static inline val_t work_eq(val_t a, val_t b) { return make_bool(a == b); }
static inline val_t work_vector_ref(val_t a, val_t b)
{
    if (is_type(a, T_VECTOR) && is_fixnum(b) && fixnum_value(b) >= 0 &&
        (size_t)fixnum_value(b) < AS(vector_t, a)->n)
        return AS(vector_t, a)->items[fixnum_value(b)];
    return PRIM_NOT_DONE;
}
static inline val_t work_car(val_t a) { return is_cons(a) ? car(a) : PRIM_NOT_DONE; }
static inline val_t work_cdr(val_t a) { return is_cons(a) ? cdr(a) : PRIM_NOT_DONE; }
static inline val_t work_null(val_t a) { return make_bool(a == NIL); }
static inline val_t work_pair(val_t a) { return make_bool(is_cons(a)); }
static inline val_t work_not(val_t a) { return make_bool(a == FALSE_V); }

#define BINARY_HANDLER(name, work)                                                  \
    static __attribute__((noinline)) val_t name##_general(const code_t *c, val_t env) \
    {                                                                               \
        val_t f = prim_global(c);                                                   \
        val_t a = run_sub(c->x[2], env), b = run_sub(c->x[3], env);                 \
        val_t r = f == c->x[1] ? work(a, b) : PRIM_NOT_DONE;                        \
        if (r != PRIM_NOT_DONE)                                                     \
            return r;                                                               \
        return prim_defer(c, f, a, b, UNSPEC);                                      \
    }                                                                               \
    static val_t name(const code_t *c, val_t env)                                   \
    {                                                                               \
        val_t a, b;                                                                 \
        if (leaf_value(c->x[2], env, &a) && leaf_value(c->x[3], env, &b) &&         \
            prim_unchanged(c)) {                                                    \
            val_t r = work(a, b);                                                   \
            if (r != PRIM_NOT_DONE)                                                 \
                return r;                                                           \
        }                                                                           \
        return name##_general(c, env);                                              \
    }

#define UNARY_HANDLER(name, work)                                                   \
    static __attribute__((noinline)) val_t name##_general(const code_t *c, val_t env) \
    {                                                                               \
        val_t f = prim_global(c);                                                   \
        val_t a = run_sub(c->x[2], env);                                            \
        val_t r = f == c->x[1] ? work(a) : PRIM_NOT_DONE;                           \
        if (r != PRIM_NOT_DONE)                                                     \
            return r;                                                               \
        return prim_defer(c, f, a, UNSPEC, UNSPEC);                                 \
    }                                                                               \
    static val_t name(const code_t *c, val_t env)                                   \
    {                                                                               \
        val_t a;                                                                    \
        if (leaf_value(c->x[2], env, &a) && prim_unchanged(c)) {                    \
            val_t r = work(a);                                                      \
            if (r != PRIM_NOT_DONE)                                                 \
                return r;                                                           \
        }                                                                           \
        return name##_general(c, env);                                              \
    }

BINARY_HANDLER(prim_add2, work_add)
BINARY_HANDLER(prim_sub2, work_sub)
BINARY_HANDLER(prim_mul2, work_mul)
BINARY_HANDLER(prim_num_eq2, work_num_eq)
BINARY_HANDLER(prim_lt2, work_lt)
BINARY_HANDLER(prim_gt2, work_gt)
BINARY_HANDLER(prim_le2, work_le)
BINARY_HANDLER(prim_ge2, work_ge)
BINARY_HANDLER(prim_quotient2, work_quotient)
BINARY_HANDLER(prim_remainder2, work_remainder)
BINARY_HANDLER(prim_cons2, work_cons)
BINARY_HANDLER(prim_eq2, work_eq)
BINARY_HANDLER(prim_vector_ref2, work_vector_ref)
UNARY_HANDLER(prim_car1, work_car)
UNARY_HANDLER(prim_cdr1, work_cdr)
UNARY_HANDLER(prim_null1, work_null)
UNARY_HANDLER(prim_pair1, work_pair)
UNARY_HANDLER(prim_not1, work_not)

/* (+ a b c), as in (+ 1 (size left) (size right)): common enough for a
 * handler of its own. A sum that overflows on the way goes to +, which
 * sums in 64 bits. */
static val_t prim_add3(const code_t *c, val_t env)
{
    val_t f = prim_global(c);
    val_t a = run_sub(c->x[2], env), b = run_sub(c->x[3], env), d = run_sub(c->x[4], env);
    if (f == c->x[1]) {
        val_t r = work_add(a, b);
        if (r != PRIM_NOT_DONE && (r = work_add(r, d)) != PRIM_NOT_DONE)
            return r;
    }
    return prim_defer(c, f, a, b, d);
}

/* The function the global holds, then every argument in order into v
 * (UNSPEC past the count): the two handlers below, which take any count. */
static val_t prim_args(const code_t *c, val_t env, val_t v[PRIM_INLINE_MAX])
{
    val_t f = prim_global(c);
    for (int32_t i = 0; i < PRIM_INLINE_MAX; i++)
        v[i] = i < c->a ? run_sub(c->x[2 + i], env) : UNSPEC;
    return f;
}

/* A count no handler above takes, as (= a b c): the arguments, for the call. */
static val_t prim_args_only(const code_t *c, val_t env)
{
    val_t v[PRIM_INLINE_MAX];
    val_t f = prim_args(c, env, v);
    return prim_defer(c, f, v[0], v[1], v[2]);
}

/* The other counts of + and *, and - with one: a loop. */
static val_t prim_arith_n(const code_t *c, val_t env)
{
    val_t v[PRIM_INLINE_MAX];
    val_t f = prim_args(c, env, v);
    int32_t n = c->a;
    if (f != c->x[1])
        return prim_defer(c, f, v[0], v[1], v[2]);
    intptr_t r;
    if (c->b == PRIM_SUB) {                   /* one argument: prim_handler_of saw to it */
        if (!is_fixnum(v[0]))
            return prim_defer(c, f, v[0], v[1], v[2]);
        r = -fixnum_value(v[0]);              /* 63 bits: no overflow */
    } else {
        r = c->b == PRIM_ADD ? 0 : 1;
        for (int32_t i = 0; i < n; i++) {
            bool overflow = !is_fixnum(v[i]) ||
                            (c->b == PRIM_ADD ? __builtin_add_overflow(r, fixnum_value(v[i]), &r)
                                              : __builtin_mul_overflow(r, fixnum_value(v[i]), &r));
            if (overflow)
                return prim_defer(c, f, v[0], v[1], v[2]);
        }
    }
    if (r < FIXNUM_MIN || r > FIXNUM_MAX)     /* the primitive reports the overflow */
        return prim_defer(c, f, v[0], v[1], v[2]);
    return make_fixnum(r);
}

/* Indexed by PRIM_ op for the count each op's own handler takes, then the
 * ones for other counts of + - * (prim_handler_of). */
enum { PRIM_HANDLER_ADD3 = PRIM_VECTOR_REF + 1, PRIM_HANDLER_ARITH_N };
static prim_handler_fn *const prim_handlers[] = {
    prim_args_only, prim_add2, prim_sub2, prim_mul2, prim_num_eq2, prim_lt2, prim_gt2,
    prim_le2, prim_ge2, prim_quotient2, prim_remainder2, prim_car1, prim_cdr1, prim_cons2,
    prim_null1, prim_pair1, prim_not1, prim_eq2, prim_vector_ref2, prim_add3, prim_arith_n,
};
_Static_assert(sizeof prim_handlers / sizeof *prim_handlers == PRIM_HANDLER_ARITH_N + 1,
               "a handler per PRIM_ op");

/* The handler of a K_PRIM node calling inline op `op` with nargs
 * arguments, 1..PRIM_INLINE_MAX, within the primitive's arity. */
static int32_t prim_handler_of(int32_t op, size_t nargs)
{
    /* Each PRIM_ op's own handler takes the count it is called with most:
     * two arguments, but one for car cdr null? pair? not. */
    bool one = op == PRIM_CAR || op == PRIM_CDR || op == PRIM_NULL || op == PRIM_PAIR ||
               op == PRIM_NOT;
    if (nargs == (one ? 1u : 2u))
        return op;
    if (op == PRIM_ADD && nargs == 3)
        return PRIM_HANDLER_ADD3;
    if (op == PRIM_ADD || op == PRIM_MUL || (op == PRIM_SUB && nargs == 1))
        return PRIM_HANDLER_ARITH_N;
    return PRIM_CALL;                 /* prim_args_only */
}

/* Run a K_PRIM node: its value, or PRIM_NOT_DONE with the call pushed. */
static inline val_t prim_node(const code_t *c, val_t env)
{
    return prim_handlers[c->c](c, env);
}

/* A K_PRIM node not in tail position whose handler did not do the work:
 * the call it pushed. */
static __attribute__((noinline)) val_t prim_call(const code_t *c)
{
    val_t f = L.stack[--L.sp];
    size_t base = L.sp - (size_t)c->a;
    val_t result = apply(f, stack_at(base), c->a);
    L.sp = base;
    return result;
}

/* Call primitive f with args[0..nargs), its arity checked. */
static inline val_t call_prim(val_t f, val_t *args, int nargs)
{
    prim_t *p = AS(prim_t, f);
    if (nargs < p->min_args || (p->max_args >= 0 && nargs > p->max_args))
        lisp_error("wrong number of arguments", f);
    return p->fn(args, nargs);
}

/* A closure that was just made, and is stored under name: it takes the
 * name, unless it has one (define of a lambda, say). */
static void name_closure(val_t value, val_t name)
{
    if (is_type(value, T_CLOSURE) && AS(closure_t, value)->name == NIL) {
        AS(closure_t, value)->name = name;
        written(&AS(closure_t, value)->name);
    }
}

static val_t run(val_t code, val_t env)
{
    char here;
    if ((uintptr_t)&here < stack_floor)
        lisp_error("recursion too deep", UNSPEC);

    val_t f;                                   /* a call: the function, its arguments */
    size_t base;                               /* on the value stack from base */
    int nargs;
    for (;;) {
        code_t *c = CODE(code);
        switch (c->op) {
        case K_CONST:
            return c->x[0];
        case K_LOCAL:
            return *local_slot(env, c->a, c->b);
        case K_LOCAL_DEF: {
            val_t v = *local_slot(env, c->a, c->b);
            if (v != UNDEF)
                return v;
            code = c->x[0];                    /* its define has not run: the outer name */
            continue;
        }
        case K_GLOBAL:
            return global_value(c->x[0]);

        case K_SET_LOCAL: {
            val_t v = run_sub(c->x[0], env);
            val_t *slot = local_slot(env, c->a, c->b);
            *slot = v;
            written(slot);
            return UNSPEC;
        }
        case K_SET_GLOBAL: {
            val_t v = run_sub(c->x[1], env);
            val_t cell = AS(symbol_t, c->x[0])->global;
            if (cell == NIL)
                lisp_error("set!: unbound variable", c->x[0]);
            AS(cons_t, cell)->cdr = v;
            written(&AS(cons_t, cell)->cdr);
            return UNSPEC;
        }
        case K_DEFINE: {
            val_t v = run_sub(c->x[1], env);
            name_closure(v, c->x[0]);
            if (c->a < 0) {
                global_set(c->x[0], v);
            } else {
                val_t *slot = &AS(frame_t, env)->vals[c->a];
                *slot = v;
                written(slot);
            }
            return UNSPEC;
        }
        case K_LAMBDA:
            return make_closure(c->x[0], code, env, c->x[2]);

        case K_IF:
            code = is_true(run_sub(c->x[0], env)) ? c->x[1] : c->x[2];
            continue;
        case K_SEQ:
            for (uint32_t i = 0; i + 1 < c->n; i++)
                run_sub(c->x[i], env);
            code = c->x[c->n - 1];
            continue;
        case K_AND:
        case K_OR: {
            bool is_and = c->op == K_AND;
            uint32_t i = 0;
            for (; i + 1 < c->n; i++) {
                val_t v = run_sub(c->x[i], env);
                if (is_true(v) != is_and)
                    return v;
            }
            code = c->x[i];
            continue;
        }

        case K_LET:
            base = L.sp;
            for (int32_t i = 0; i < c->a; i++)
                push(run_sub(c->x[i], env));
            env = new_frame(env, c->x[c->a + 1], stack_at(base), (size_t)c->a, (size_t)c->b);
            L.sp = base;
            code = c->x[c->a];
            continue;
        case K_LETREC:
            env = new_frame(env, c->x[c->a + 1], NULL, 0, (size_t)c->b);
            for (int32_t i = 0; i < c->a; i++)
                AS(frame_t, env)->vals[i] = NIL;   /* not UNDEF: a letrec variable is bound */
            for (int32_t i = 0; i < c->a; i++) {
                val_t v = run_sub(c->x[i], env);
                AS(frame_t, env)->vals[i] = v;
                written(&AS(frame_t, env)->vals[i]);
            }
            code = c->x[c->a];
            continue;
        case K_NAMED_LET: {
            code_t *lambda = CODE(c->x[c->a]);
            val_t loop_env = make_frame(env, c->x[c->a + 1], 1);
            f = make_closure(lambda->x[0], c->x[c->a], loop_env, lambda->x[2]);
            AS(frame_t, loop_env)->vals[0] = f;
            written(&AS(frame_t, loop_env)->vals[0]);
            base = L.sp;
            nargs = c->a;
            for (int32_t i = 0; i < nargs; i++)
                push(run_sub(c->x[i], env));
            goto call;
        }

        case K_CALL:
            f = run_sub(c->x[0], env);
            goto arguments;
        case K_CALL_GLOBAL:
            f = global_value(c->x[0]);
        arguments:
            base = L.sp;
            nargs = c->a;
            for (int32_t i = 1; i <= nargs; i++)
                push(run_sub(c->x[i], env));
            goto call;
        case K_PRIM: {
            val_t result = prim_node(c, env);
            if (result != PRIM_NOT_DONE)
                return result;
            f = L.stack[--L.sp];               /* + redefined, or not fixnums: a call */
            nargs = c->a;
            base = L.sp - (size_t)nargs;
            goto call;                         /* still a tail call */
        }

        case K_ERROR:
            lisp_error(AS(string_t, c->x[0])->bytes, c->x[1]);
        }
        abort();                               /* not an op */

    call:
        if (__builtin_expect(!is_type(f, T_CLOSURE), 0)) {
            if (!is_type(f, T_PRIM))
                lisp_error("not a procedure", f);
            val_t result = call_prim(f, stack_at(base), nargs);
            L.sp = base;
            return result;
        }
        env = bind(f, stack_at(base), nargs);
        L.sp = base;
        code = CODE(AS(closure_t, f)->body)->x[1];   /* the tail call */
    }
}

/* Call f from C (the apply primitive, and anything else that needs to). */
val_t apply(val_t f, val_t *args, int nargs)
{
    if (is_type(f, T_PRIM))
        return call_prim(f, args, nargs);
    if (!is_type(f, T_CLOSURE))
        lisp_error("not a procedure", f);
    val_t env = bind(f, args, nargs);
    return run(CODE(AS(closure_t, f)->body)->x[1], env);
}

val_t eval(val_t expr)
{
    val_t code = compile(expr, NULL);          /* a local: the stack scan keeps it */
    return run(code, NIL);
}

/* ---- the top level ------------------------------------------------------------ */

/* An abandoned form's frames are left on the C stack below the top level.
 * The next form's frames, which the collector scans, overwrite most of
 * them, but not every word (padding, locals not set yet): a stale pointer
 * there would keep the abandoned form's data alive — after an out of memory
 * error, everything the failed form had built. Clear that part of the stack
 * (its first 64 KiB, below which the next forms hardly reach soon). */
static __attribute__((noinline)) void clear_dead_stack(void)
{
    char dead[64 * 1024];
    memset(dead, 0, sizeof dead);
    __asm__ volatile("" : : "r"(dead) : "memory");   /* the stores are not dead */
}

/* Read and evaluate one form. An error abandons it (and the value stack
 * above it); an error while reading also ends the text. */
static bool run_one(reader_t *r, bool *at_end)
{
    jmp_buf here;
    jmp_buf *outer = error_catch;
    size_t sp = L.sp;
    volatile bool reading = true;

    if (setjmp(here)) {
        error_catch = outer;
        syntax_catch = NULL;
        L.sp = sp;
        clear_dead_stack();
        *at_end = reading;
        return false;
    }
    error_catch = &here;
    val_t form = read_form(r);
    reading = false;
    if (form == EOF_V)
        *at_end = true;
    else
        eval(form);
    error_catch = outer;
    return true;
}

/* Evaluate every form of text; false if any of them failed. */
bool run_text(const char *text, size_t len)
{
    reader_t r = { text, text + len, 1 };
    bool ok = true, at_end = false;
    while (!at_end)
        if (!run_one(&r, &at_end))
            ok = false;
    return ok;
}
