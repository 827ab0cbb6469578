/* eval.c — the evaluator.
 *
 * eval(expr, env) walks the expression. env is () for the global
 * environment, or a T_FRAME. Expressions in tail position (the branches of
 * if, the last form of a body, a closure's body after the call) are not
 * evaluated by a recursive call: the loop replaces expr and env and goes
 * round again, so a tail-recursive loop runs in constant C stack.
 *
 * A call evaluates its operator, then pushes each argument on the value
 * stack (heap.c), where the collector's roots callback sees them; primitives
 * get a pointer to their arguments there. Everything else the evaluator holds
 * (expr, env, the function, a half-built frame) is in C locals, which the
 * collector finds by scanning the C stack conservatively.
 *
 * A frame's names list is the closure's parameter list, or a let's binding
 * list: an element is a symbol, or a binding (symbol init) whose car is the
 * name. A dotted tail (lambda (a . rest) ...) or a lone symbol
 * (lambda args ...) names the last slot.
 *
 * Two shortcuts keep the walk cheap. A symbol that no frame can name (the
 * `local` flag, see "environments") is looked up straight in its global
 * binding, without searching the frames. And a subexpression that is a
 * variable or a constant, as most arguments are, is evaluated on the spot
 * (eval_sub), without a recursive call of eval. */
#include "lisp.h"

#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

char *stack_base;
static size_t stack_limit;
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
    stack_limit = 8u << 20;
    if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        stack_limit = (size_t)rl.rlim_cur;
    stack_limit = stack_limit / 4 * 3;        /* leave room for C code under eval */
}

/* ---- syntax helpers ----------------------------------------------------- */

static val_t pop_arg(val_t *list, val_t form)
{
    if (!is_cons(*list))
        lisp_error("bad syntax", form);
    val_t v = car(*list);
    *list = cdr(*list);
    return v;
}

static val_t binding_name(val_t entry)
{
    return is_cons(entry) ? car(entry) : entry;
}

/* ---- environments ------------------------------------------------------------
 * Most variables a program names are globals (+, car, its own functions):
 * searching every frame of the chain before the global binding would be
 * wasted. A symbol's `local` flag (lisp.h) says whether it may name a slot
 * of some frame; only then are the frames searched. The flag is set before
 * any frame that names the symbol exists, and never cleared:
 *   - a call's frame (bind) is named by its closure's parameter list, whose
 *     names closure() flags when it makes the closure;
 *   - every other frame (let, let*, letrec, named let) is made by
 *     new_frame(), which flags the names first;
 *   - an internal define flags its name before adding it to a frame.
 * A names list is program text, never changed once it names a frame.
 * The flag is a plain byte, not a pointer: no write barrier. */

static void note_local(val_t name)
{
    if (is_symbol(name))
        AS(symbol_t, name)->local = true;
}

/* A frame for a let form. Its n names are flagged first, read as frame_slot
 * reads them. */
static val_t new_frame(val_t parent, val_t names, size_t n)
{
    val_t p = names;
    for (size_t i = 0; i < n; i++, p = is_cons(p) ? cdr(p) : NIL)
        note_local(is_cons(p) ? binding_name(car(p)) : p);
    return make_frame(parent, names, n);
}

/* Every closure is made here, so that its parameters are flagged before
 * any call can bind them. */
static val_t closure(val_t params, val_t body, val_t env, val_t name)
{
    val_t p = params;
    for (; is_cons(p); p = cdr(p))
        note_local(binding_name(car(p)));     /* a named let's: (var init) */
    note_local(p);                             /* a dotted tail, or a lone rest symbol */
    return make_closure(params, body, env, name);
}

/* The slot of sym in frame f alone, or NULL. Inline: lookup_slot runs it
 * for every frame it searches. */
static inline val_t *frame_slot(frame_t *f, val_t sym)
{
    val_t names = f->names;
    for (size_t i = 0; i < f->n; i++) {
        val_t name = is_cons(names) ? binding_name(car(names)) : names;
        if (name == sym)
            return &f->vals[i];
        names = is_cons(names) ? cdr(names) : NIL;
    }
    for (val_t a = f->extra; a != NIL; a = cdr(a))
        if (car(car(a)) == sym)
            return &AS(cons_t, car(a))->cdr;
    return NULL;
}

/* The slot holding sym's value in env's frames, or NULL (a global, or
 * unbound). An interior pointer into a frame or a pair: fine to hold in a C
 * local, the stack scan accepts interior pointers. */
static val_t *lookup_slot(val_t sym, val_t env)
{
    if (!AS(symbol_t, sym)->local)
        return NULL;                           /* in no frame: a global (or unbound) */
    for (val_t e = env; e != NIL; e = AS(frame_t, e)->parent) {
        val_t *slot = frame_slot(AS(frame_t, e), sym);
        if (slot)
            return slot;
    }
    return NULL;
}

static inline val_t lookup(val_t sym, val_t env)
{
    val_t *slot = lookup_slot(sym, env);
    if (slot)
        return *slot;
    bool found;
    val_t v = global_ref(sym, &found);
    if (!found)
        lisp_error("unbound variable", sym);
    return v;
}

static void define(val_t sym, val_t value, val_t env)
{
    if (!is_symbol(sym))
        lisp_error("define: not a symbol", sym);
    if (env == NIL) {
        global_set(sym, value);
        return;
    }
    note_local(sym);                           /* before the frame can hold it */
    val_t *slot = frame_slot(AS(frame_t, env), sym);
    if (slot) {
        *slot = value;                         /* redefining a name of this frame */
        written(slot);
        return;
    }
    val_t pair = cons(sym, value);
    val_t extra = cons(pair, AS(frame_t, env)->extra);
    AS(frame_t, env)->extra = extra;           /* env, a local, kept the frame alive */
    written(&AS(frame_t, env)->extra);
}

/* A new frame for calling closure c with args[0..nargs). */
static val_t bind(val_t c, val_t *args, int nargs)
{
    closure_t *cl = AS(closure_t, c);
    int fixed = 0;
    val_t p = cl->params;
    for (; is_cons(p); p = cdr(p))
        fixed++;
    bool rest = p != NIL;
    if (nargs < fixed || (!rest && nargs > fixed))
        lisp_error("wrong number of arguments", c);

    val_t frame = make_frame(cl->env, cl->params, (size_t)fixed + rest);
    frame_t *f = AS(frame_t, frame);
    for (int i = 0; i < fixed; i++)
        f->vals[i] = args[i];
    if (rest) {
        val_t list = NIL;
        for (int i = nargs - 1; i >= fixed; i--)
            list = cons(args[i], list);
        f->vals[fixed] = list;                 /* after allocations: f may be old */
        written(&f->vals[fixed]);
    }
    return frame;
}

/* eval(x, env) for a subexpression that is not in tail position (an
 * operator, an argument, a test, an init...). Most are a variable or a
 * constant, and those are done here, without the cost of a call of eval. */
static inline val_t eval_sub(val_t x, val_t env)
{
    if (is_symbol(x))
        return lookup(x, env);
    if (!is_cons(x))
        return x;
    return eval(x, env);
}

/* Evaluate every form of body but the last, and return the last (for the
 * caller to evaluate in tail position). */
static val_t body_prefix(val_t body, val_t env)
{
    if (body == NIL)
        return UNSPEC;
    while (is_cons(cdr(body))) {
        eval_sub(car(body), env);
        body = cdr(body);
    }
    return car(body);
}

/* The value of a let binding (var init), or unspecified for (var) or var. */
static val_t init_value(val_t binding, val_t env)
{
    if (is_cons(binding) && is_cons(cdr(binding)))
        return eval_sub(car(cdr(binding)), env);
    return UNSPEC;
}

static size_t list_length(val_t list, val_t form)
{
    size_t n = 0;
    for (; is_cons(list); list = cdr(list))
        n++;
    if (list != NIL)
        lisp_error("bad syntax", form);
    return n;
}

/* ---- eval ------------------------------------------------------------------ */

val_t eval(val_t x, val_t env)
{
    char here;
    if ((uintptr_t)stack_base - (uintptr_t)&here > stack_limit)
        lisp_error("recursion too deep", UNSPEC);

    for (;;) {
        if (is_symbol(x))
            return lookup(x, env);
        if (!is_cons(x))
            return x;                          /* numbers, strings, #t, () ... */

        val_t form = x, op = car(x), rest = cdr(x);
        int special = is_symbol(op) ? AS(symbol_t, op)->special : SF_NONE;

        switch (special) {
        case SF_NONE:
            break;                             /* an application: below */

        case SF_QUOTE:
            return pop_arg(&rest, form);

        case SF_IF: {
            val_t test = pop_arg(&rest, form);
            val_t then = pop_arg(&rest, form);
            if (is_true(eval_sub(test, env)))
                x = then;
            else if (rest != NIL)
                x = pop_arg(&rest, form);
            else
                return UNSPEC;
            continue;
        }

        case SF_DEFINE: {
            val_t target = pop_arg(&rest, form);
            if (is_cons(target)) {             /* (define (name . params) body...) */
                val_t name = car(target);
                define(name, closure(cdr(target), rest, env, name), env);
            } else {
                val_t value = rest == NIL ? UNSPEC : eval_sub(pop_arg(&rest, form), env);
                if (is_type(value, T_CLOSURE) && AS(closure_t, value)->name == NIL)
                {
                    AS(closure_t, value)->name = target;
                    written(&AS(closure_t, value)->name);
                }
                define(target, value, env);
            }
            return UNSPEC;
        }

        case SF_SET: {
            val_t sym = pop_arg(&rest, form);
            val_t value = eval_sub(pop_arg(&rest, form), env);
            if (!is_symbol(sym))
                lisp_error("set!: not a symbol", sym);
            val_t *slot = lookup_slot(sym, env);
            if (slot) {
                *slot = value;
                written(slot);
            } else {
                bool found;
                global_ref(sym, &found);
                if (!found)
                    lisp_error("set!: unbound variable", sym);
                global_set(sym, value);
            }
            return UNSPEC;
        }

        case SF_LAMBDA: {
            val_t params = pop_arg(&rest, form);
            return closure(params, rest, env, NIL);
        }

        case SF_BEGIN:
            x = body_prefix(rest, env);
            continue;

        case SF_LET:
            if (is_symbol(car(rest))) {
                /* Named let: (let loop ((var init) ...) body...) is a call of
                 * a closure whose environment binds loop to itself. */
                val_t name = pop_arg(&rest, form);
                val_t bindings = pop_arg(&rest, form);
                val_t loop_env = new_frame(env, cons(name, NIL), 1);
                val_t loop = closure(bindings, rest, loop_env, name);
                AS(frame_t, loop_env)->vals[0] = loop;
                written(&AS(frame_t, loop_env)->vals[0]);
                size_t base = L.sp;
                int n = 0;
                for (val_t b = bindings; is_cons(b); b = cdr(b), n++)
                    push(init_value(car(b), env));
                env = bind(loop, stack_at(base), n);
                L.sp = base;
                x = body_prefix(rest, env);
                continue;
            }
            /* fall through */
        case SF_LETREC: {
            /* (let ((var init) ...) body...): one frame, whose names list is
             * the binding list itself. letrec evaluates the inits inside it. */
            val_t bindings = pop_arg(&rest, form);
            size_t n = list_length(bindings, form);
            if (special == SF_LETREC) {
                env = new_frame(env, bindings, n);
                for (size_t i = 0; i < n; i++, bindings = cdr(bindings)) {
                    val_t v = init_value(car(bindings), env);
                    AS(frame_t, env)->vals[i] = v;
                    written(&AS(frame_t, env)->vals[i]);
                }
            } else {
                size_t base = L.sp;
                for (val_t b = bindings; b != NIL; b = cdr(b))
                    push(init_value(car(b), env));
                val_t frame = new_frame(env, bindings, n);
                memcpy(AS(frame_t, frame)->vals, stack_at(base), n * sizeof(val_t));
                L.sp = base;
                env = frame;
            }
            x = body_prefix(rest, env);
            continue;
        }

        case SF_LET_STAR: {
            /* One frame per binding; each frame's names list is the binding
             * list from that binding on, and only its first entry counts. */
            val_t bindings = pop_arg(&rest, form);
            for (; is_cons(bindings); bindings = cdr(bindings)) {
                val_t v = init_value(car(bindings), env);
                val_t frame = new_frame(env, bindings, 1);
                AS(frame_t, frame)->vals[0] = v;
                env = frame;
            }
            x = body_prefix(rest, env);
            continue;
        }

        case SF_COND: {
            val_t result = UNSPEC;
            for (; is_cons(rest); rest = cdr(rest)) {
                val_t clause = car(rest);
                if (!is_cons(clause))
                    lisp_error("bad syntax", form);
                if (car(clause) == S.else_ || is_true(result = eval_sub(car(clause), env)))
                    break;
            }
            if (!is_cons(rest))
                return UNSPEC;                 /* no clause chosen */
            val_t body = cdr(car(rest));
            if (body == NIL)
                return result;                 /* (cond (test) ...) gives the test's value */
            x = body_prefix(body, env);
            continue;
        }

        case SF_AND:
        case SF_OR: {
            bool is_and = special == SF_AND;
            if (rest == NIL)
                return make_bool(is_and);
            while (is_cons(cdr(rest))) {
                val_t v = eval_sub(car(rest), env);
                if (is_true(v) != is_and)
                    return v;
                rest = cdr(rest);
            }
            x = car(rest);
            continue;
        }

        case SF_WHEN:
        case SF_UNLESS: {
            val_t test = eval_sub(pop_arg(&rest, form), env);
            if (is_true(test) != (special == SF_WHEN))
                return UNSPEC;
            x = body_prefix(rest, env);
            continue;
        }
        }

        /* An application. */
        val_t f = eval_sub(op, env);
        size_t base = L.sp;
        int nargs = 0;
        for (; is_cons(rest); rest = cdr(rest), nargs++)
            push(eval_sub(car(rest), env));
        if (rest != NIL)
            lisp_error("bad syntax", form);

        if (is_type(f, T_PRIM)) {
            prim_t *p = AS(prim_t, f);
            if (nargs < p->min_args || (p->max_args >= 0 && nargs > p->max_args))
                lisp_error("wrong number of arguments", f);
            val_t result = p->fn(stack_at(base), nargs);
            L.sp = base;
            return result;
        }
        if (!is_type(f, T_CLOSURE))
            lisp_error("not a procedure", f);
        env = bind(f, stack_at(base), nargs);
        L.sp = base;
        x = body_prefix(AS(closure_t, f)->body, env);   /* the tail call */
    }
}

/* Call f from C (the apply primitive, and anything else that needs to). */
val_t apply(val_t f, val_t *args, int nargs)
{
    if (is_type(f, T_PRIM)) {
        prim_t *p = AS(prim_t, f);
        if (nargs < p->min_args || (p->max_args >= 0 && nargs > p->max_args))
            lisp_error("wrong number of arguments", f);
        return p->fn(args, nargs);
    }
    if (!is_type(f, T_CLOSURE))
        lisp_error("not a procedure", f);
    val_t env = bind(f, args, nargs);
    return eval(body_prefix(AS(closure_t, f)->body, env), env);
}

/* ---- the top level ------------------------------------------------------------ */

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
        L.sp = sp;
        *at_end = reading;
        return false;
    }
    error_catch = &here;
    val_t form = read_form(r);
    reading = false;
    if (form == EOF_V)
        *at_end = true;
    else
        eval(form, NIL);
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
