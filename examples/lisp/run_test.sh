#!/bin/bash
# run_test.sh LISP SCRIPT.lisp [OPTION...]: run the script (no statistics)
# and diff what it prints, stdout and stderr together, with SCRIPT.out next
# to it. OPTIONs go to the interpreter too (--generational: the same scripts
# on a generational heap must print the same).
# A line ";; args: ..." in the script adds command-line options, and a line
# ";; env: NAME=value ..." environment variables (LOAM_OPTIONS, say).
# Fails on a difference or when the interpreter dies of a signal.
# LISP_UNDER, when set, is a command to run the interpreter under (valgrind
# and its options, in a LOAM_VALGRIND build): what it reports differs too.
set -u
lisp=$1 script=$2
shift 2
expected=${script%.lisp}.out
args=$(sed -n 's/^;; args: //p' "$script" | head -n 1)
vars=$(sed -n 's/^;; env: //p' "$script" | head -n 1)
actual=$(mktemp)
trap 'rm -f "$actual"' EXIT
# shellcheck disable=SC2086   # args, vars and LISP_UNDER are split on purpose
env $vars ${LISP_UNDER:-} "$lisp" -q $args "$@" "$script" >"$actual" 2>&1
status=$?
if [ $status -ge 128 ]; then
  echo "FAIL: $script: the interpreter died (status $status)"
  cat "$actual"
  exit 1
fi
if ! diff -u "$expected" "$actual"; then
  echo "FAIL: $script: output differs from $expected"
  exit 1
fi
echo "ok: $script"
