/* reader.c — text to objects.
 *
 *   integers   42  -7          symbols   foo  set-car!  +
 *   strings    "a\n\"b\""      booleans  #t  #f
 *   lists      (a b . c)       quote     'x  ==  (quote x)
 *   vectors    #(1 2 3)
 *   comments   ; to the end of the line
 *
 * The partial list being built lives in C locals (head, tail): the
 * conservative scan of the C stack keeps it alive across the allocations
 * that reading the next element makes. */
#include "lisp.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

static _Noreturn void syntax_error(reader_t *r, const char *what)
{
    static char msg[128];
    snprintf(msg, sizeof msg, "read: %s (line %d)", what, r->line);
    lisp_error(msg, UNSPEC);
}

static void skip_space(reader_t *r)
{
    while (r->p < r->end) {
        char c = *r->p;
        if (c == '\n') {
            r->line++;
            r->p++;
        } else if (isspace((unsigned char)c)) {
            r->p++;
        } else if (c == ';') {
            while (r->p < r->end && *r->p != '\n')
                r->p++;
        } else {
            break;
        }
    }
}

static bool is_delimiter(char c)
{
    return isspace((unsigned char)c) || c == '(' || c == ')' || c == '"' || c == ';' || c == '\'';
}

static val_t read_string(reader_t *r)
{
    char buf[4096];
    size_t n = 0;
    r->p++;                                    /* the opening quote */
    for (;;) {
        if (r->p >= r->end)
            syntax_error(r, "unterminated string");
        char c = *r->p++;
        if (c == '"')
            break;
        if (c == '\n')
            r->line++;
        if (c == '\\') {
            if (r->p >= r->end)
                syntax_error(r, "unterminated string");
            c = *r->p++;
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
        }
        if (n == sizeof buf)
            syntax_error(r, "string literal too long");
        buf[n++] = c;
    }
    return make_string(buf, n);
}

static val_t read_atom(reader_t *r)
{
    const char *start = r->p;
    while (r->p < r->end && !is_delimiter(*r->p))
        r->p++;
    size_t len = (size_t)(r->p - start);

    if (len == 2 && start[0] == '#' && (start[1] == 't' || start[1] == 'f'))
        return make_bool(start[1] == 't');

    /* An integer: optional sign, then digits only. */
    size_t i = (start[0] == '-' || start[0] == '+') ? 1 : 0;
    if (i < len) {
        size_t j = i;
        while (j < len && isdigit((unsigned char)start[j]))
            j++;
        if (j == len) {
            intptr_t value = 0;
            for (size_t k = i; k < len; k++) {
                value = value * 10 + (start[k] - '0');
                if (value > FIXNUM_MAX)
                    syntax_error(r, "integer too large");
            }
            return make_fixnum(start[0] == '-' ? -value : value);
        }
    }
    return intern(start, len);
}

static val_t read_list(reader_t *r)
{
    val_t head = NIL, tail = NIL;
    r->p++;                                    /* '(' */
    for (;;) {
        skip_space(r);
        if (r->p >= r->end)
            syntax_error(r, "missing )");
        if (*r->p == ')') {
            r->p++;
            return head;
        }
        if (*r->p == '.' && r->p + 1 < r->end && is_delimiter(r->p[1])) {
            if (tail == NIL)
                syntax_error(r, "nothing before .");
            r->p++;
            val_t last = read_form(r);
            if (last == EOF_V)
                syntax_error(r, "missing datum after .");
            AS(cons_t, tail)->cdr = last;
            written(&AS(cons_t, tail)->cdr);
            skip_space(r);
            if (r->p >= r->end || *r->p != ')')
                syntax_error(r, "expected ) after the datum following .");
            r->p++;
            return head;
        }
        val_t item = read_form(r);
        if (item == EOF_V)
            syntax_error(r, "missing )");
        val_t cell = cons(item, NIL);
        if (tail == NIL)
            head = cell;
        else {
            AS(cons_t, tail)->cdr = cell;
            written(&AS(cons_t, tail)->cdr);
        }
        tail = cell;
    }
}

val_t read_form(reader_t *r)
{
    skip_space(r);
    if (r->p >= r->end)
        return EOF_V;
    char c = *r->p;
    if (c == '(')
        return read_list(r);
    if (c == ')')
        syntax_error(r, "unexpected )");
    if (c == '"')
        return read_string(r);
    if (c == '#' && r->p + 1 < r->end && r->p[1] == '(') {
        r->p++;
        val_t items = read_list(r);            /* a local: alive while the vector is made */
        size_t n = 0;
        for (val_t l = items; is_cons(l); l = cdr(l))
            n++;
        val_t vec = make_vector(n, NIL);
        for (size_t i = 0; i < n; i++, items = cdr(items))
            AS(vector_t, vec)->items[i] = car(items);
        return vec;
    }
    if (c == '\'') {
        r->p++;
        val_t quoted = read_form(r);
        if (quoted == EOF_V)
            syntax_error(r, "nothing after '");
        return cons(S.quote, cons(quoted, NIL));
    }
    return read_atom(r);
}
