#!/bin/sh
# make demo: run the flagship example and print its statistics.
set -e
BUILD=${1:-build}
if [ -x "$BUILD/examples/lisp" ]; then
  exec "$BUILD/examples/lisp" examples/lisp/demo.lisp
fi
exec "$BUILD/examples/two_heaps"
