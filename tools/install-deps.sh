#!/bin/sh
# Install the Debian packages loam needs, only those missing. Run as root on a
# fresh Debian 12 machine; elsewhere it just reports what is missing.
#   tools/install-deps.sh         build + test dependencies
#   tools/install-deps.sh bench   also the peer allocators for bench/
set -e
missing=""
need_pc() { pkg-config --exists "$1" 2>/dev/null || missing="$missing $2"; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need_file() { [ -e "$1" ] || missing="$missing $2"; }

need_cmd cc gcc
need_cmd make make
need_cmd cmake cmake
need_cmd pkg-config pkg-config
if command -v pkg-config >/dev/null 2>&1; then
  need_pc atomic_ops libatomic-ops-dev
  need_pc criterion libcriterion-dev
else
  missing="$missing libatomic-ops-dev libcriterion-dev"
fi
need_cmd valgrind valgrind
# the LD_PRELOAD test runs these real programs (tests/preload/run.sh)
need_file /usr/bin/python3 python3
need_file /usr/bin/sqlite3 sqlite3
need_file /usr/bin/xz xz-utils
if [ "$1" = bench ]; then
  lib=/usr/lib/x86_64-linux-gnu
  [ -d "$lib" ] || lib=/usr/lib/$(gcc -print-multiarch 2>/dev/null)
  need_file "$lib/libjemalloc.so.2" libjemalloc2
  need_file "$lib/libmimalloc.so.2" libmimalloc2.0
  need_file "$lib/libtcmalloc_minimal.so.4" libtcmalloc-minimal4
  need_file /usr/include/gc.h libgc-dev
fi

[ -z "$missing" ] && exit 0
echo "loam: installing missing packages:$missing"
if [ "$(id -u)" != 0 ]; then
  echo "loam: not root; install them with: sudo apt-get install$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Fresh machines have empty package lists: update them before installing.
apt-get update
apt-get install -y --no-install-recommends $missing
