/* printer.c — objects to text. write shows strings quoted and escaped (as
 * the reader reads them back); display shows their bytes. Printing never
 * allocates, so it is safe anywhere, finalizers included. */
#include "lisp.h"

#include <string.h>

size_t fixnum_text(intptr_t n, char buf[FIXNUM_TEXT_MAX])
{
    /* Digits from the end of a scratch buffer; the magnitude as unsigned,
     * so that no value overflows on negation. */
    char tmp[FIXNUM_TEXT_MAX];
    size_t i = sizeof tmp;
    uintptr_t u = n < 0 ? -(uintptr_t)n : (uintptr_t)n;
    do
        tmp[--i] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (n < 0)
        tmp[--i] = '-';
    size_t len = sizeof tmp - i;
    memcpy(buf, tmp + i, len);
    return len;
}

static void print_string(FILE *out, const string_t *s, bool write)
{
    if (!write) {
        fwrite(s->bytes, 1, s->len, out);
        return;
    }
    fputc('"', out);
    for (size_t i = 0; i < s->len; i++) {
        char c = s->bytes[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c == '\t')
            fputs("\\t", out);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static void print_list(FILE *out, val_t v, bool write)
{
    fputc('(', out);
    for (;;) {
        print_value(out, car(v), write);
        v = cdr(v);
        if (v == NIL)
            break;
        if (!is_cons(v)) {
            fputs(" . ", out);
            print_value(out, v, write);
            break;
        }
        fputc(' ', out);
    }
    fputc(')', out);
}

void print_value(FILE *out, val_t v, bool write)
{
    if (v == NIL) {
        fputs("()", out);
        return;
    }
    if (is_fixnum(v)) {
        char digits[FIXNUM_TEXT_MAX];
        fwrite(digits, 1, fixnum_text(fixnum_value(v), digits), out);
        return;
    }
    if (v == TRUE_V || v == FALSE_V) {
        fputs(v == TRUE_V ? "#t" : "#f", out);
        return;
    }
    if (v == UNSPEC || v == EOF_V || !is_obj(v)) {
        fputs(v == EOF_V ? "#<eof>" : "#<unspecified>", out);
        return;
    }
    switch (type_of(v)) {
    case T_CONS:
        print_list(out, v, write);
        break;
    case T_STRING:
        print_string(out, AS(string_t, v), write);
        break;
    case T_SYMBOL:
        fputs(AS(symbol_t, v)->name, out);
        break;
    case T_CLOSURE: {
        val_t name = AS(closure_t, v)->name;
        fputs("#<procedure", out);
        if (is_symbol(name))
            fprintf(out, " %s", AS(symbol_t, name)->name);
        fputc('>', out);
        break;
    }
    case T_PRIM:
        fprintf(out, "#<primitive %s>", AS(prim_t, v)->name);
        break;
    case T_VECTOR: {
        vector_t *vec = AS(vector_t, v);
        fputs("#(", out);
        for (size_t i = 0; i < vec->n; i++) {
            if (i)
                fputc(' ', out);
            print_value(out, vec->items[i], write);
        }
        fputc(')', out);
        break;
    }
    case T_RESOURCE: {
        resource_t *r = AS(resource_t, v);
        fprintf(out, "#<resource %ld ", (long)r->id);
        print_value(out, r->name, true);
        fputs(r->open ? " open>" : " closed>", out);
        break;
    }
    case T_WEAK:
        fputs("#<weak>", out);
        break;
    case T_FRAME:
        fputs("#<environment>", out);
        break;
    case T_TABLE:
        fputs("#<table>", out);
        break;
    case T_EPHEMERON:
        fputs("#<ephemeron>", out);
        break;
    case T_CODE:
        fputs("#<code>", out);
        break;
    case T_FREE:
        fputs("#<uninitialised>", out);
        break;
    }
}
