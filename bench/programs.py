"""The "Real programs" section of the loam benchmark report (imported by
bench/runner.py; stdlib only).

Times unmodified programs under each allocator: glibc as is, the others by
LD_PRELOAD. Programs: python3 on an allocation-heavy script and on a
multi-threaded one (both with PYTHONMALLOC=malloc), sqlite3 building and
querying an in-memory table of 200,000 rows, and sort on a million lines.
Their inputs are generated once per invocation into a temporary directory
(fixed seed), each program runs several times with the allocators
interleaved, and the table shows the median wall time and the median peak RSS
(wait4's ru_maxrss). Every run's standard output must be the same as with
glibc's malloc.
"""

import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

from benchproc import child_env, fmt_time, log, median_of, mib, spread_details  # noqa: F401  (bench/benchproc.py)

GROUP = "programs"       # BENCH_ONLY=programs: all of them

# name, label, the executable, its Debian package (the order of the rows)
PROGRAMS = [
    ("py-alloc", "python3: objects, JSON, strings, big ints",
     "python3", "python3"),
    ("py-threads", "python3: 5-thread pipeline + 2 zlib/hashlib threads",
     "python3", "python3"),
    ("sqlite3", "sqlite3: {rows:,}-row table in memory", "sqlite3", "sqlite3"),
    ("sort", "sort: {lines:,} lines", "sort", "coreutils"),
]
NAMES = [p[0] for p in PROGRAMS]

# Python takes objects up to 512 B from its own pools (pymalloc), so
# malloc sees about 2 % of the script's time; PYTHONMALLOC=malloc sends
# every object to the allocator under test.
PYTHON_ENV = {"PYTHONMALLOC": "malloc", "PYTHONHASHSEED": "0",
              "PYTHONDONTWRITEBYTECODE": "1"}

SORT_LINES = 1000000     # the sizes
SQL_ROWS = 200000


def add_arguments(ap):
    ap.add_argument("--programs", type=int, default=1,
                    help="0: no real-programs section")
    ap.add_argument("--programs-scale", type=float, default=1.0,
                    help="multiplies the programs' input sizes (for trying it out)")


def find_program(exe):
    """Debian's program first (as tests/preload/run.sh), else PATH's."""
    path = "/usr/bin/" + exe
    if os.access(path, os.X_OK):
        return path
    return shutil.which(exe)


def scaled(n, scale):
    return max(1, int(n * scale))


def plan(args, only, wanted):
    """(programs [(name, label, path)], columns [(name, lib, package)],
    skipped [(what, why)]). A missing program loses its row, a missing
    peer library keeps its column with the package named in its cells."""
    chosen = [p for p in PROGRAMS
              if not only or p[0] in only or GROUP in only]
    if not args.programs or not chosen:
        return [], [], []
    progs, skipped = [], []
    for name, label, exe, pkg in chosen:
        path = find_program(exe)
        label = label.format(rows=scaled(SQL_ROWS, args.programs_scale),
                             lines=scaled(SORT_LINES, args.programs_scale))
        if path:
            progs.append((name, label, path))
        else:
            skipped.append((name, "'%s' is not installed: install the Debian "
                            "package %s (apt-get install %s)" % (exe, pkg, pkg)))
    cols = []
    for name, lib, pkg in args.all_allocs:
        if wanted and name not in wanted:
            continue
        if name == "loam" and not lib:
            skipped.append(("loam column", args.loam_note or "no libloam-malloc.so"))
            continue
        # absolute: the programs run in the temporary directory
        cols.append((name, os.path.abspath(lib) if lib else None, pkg))
    return progs, cols, skipped


# ---- the inputs -----------------------------------------------------------------

ALLOC_PY = r'''
# Allocation-heavy python3 (bench/programs.py): many small objects, containers
# that grow and shrink, strings, JSON, big integers, a fork. argv: size, seed.
import gc, hashlib, json, os, random, sys, zlib

size, seed = float(sys.argv[1]), int(sys.argv[2])
def n(k):
    return max(1, int(k * size))
rng = random.Random(seed)
out = []

records = [{"id": i, "name": "n%06d" % rng.randrange(1000000),
            "tags": [rng.randrange(100) for _ in range(rng.randrange(6))],
            "score": rng.random()} for i in range(n(50000))]
records.sort(key=lambda r: (r["name"], r["id"]))
out.append("records %d first %s last %s" % (len(records), records[0]["name"],
                                            records[-1]["name"]))
del records[::2]
gc.collect()
out.append("kept %d tagsum %d" % (len(records), sum(sum(r["tags"]) for r in records)))

text = json.dumps(records, sort_keys=True)
back = json.loads(text)
out.append("json %d bytes equal %s sha %s" % (len(text), back == records,
           hashlib.sha256(text.encode()).hexdigest()[:16]))
del back, text, records

words = ["".join(chr(97 + rng.randrange(26)) for _ in range(rng.randrange(1, 12)))
         for _ in range(n(30000))]
joined = " ".join(words)
counts = {}
for w in joined.split():
    counts[w] = counts.get(w, 0) + 1
top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
out.append("words %d distinct %d top %s upper-sha %s" % (
    len(words), len(counts), top, hashlib.sha256(joined.upper().encode()).hexdigest()[:16]))

ba = bytearray()
for i in range(n(8000)):
    ba += bytes([i & 0xff]) * (i % 97)
out.append("bytearray %d crc %08x" % (len(ba), zlib.crc32(ba)))

f = 1
for i in range(1, n(600) + 1):
    f *= i
out.append("factorial digits %d" % len(str(f)))

s = set()
for i in range(n(100000)):
    s.add((rng.randrange(40000), rng.randrange(10)))
    if i % 3 == 0:
        s.discard((rng.randrange(40000), rng.randrange(10)))
out.append("set %d" % len(s))

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    data = [str(i) * 3 for i in range(n(25000))]
    os.write(w, ("child %d %d" % (len(data), sum(map(len, data)))).encode())
    os._exit(0)
os.close(w)
msg = b""
while True:
    chunk = os.read(r, 4096)
    if not chunk:
        break
    msg += chunk
os.close(r)
os.waitpid(pid, 0)
out.append(msg.decode())
print("\n".join(out))
'''

THREADS_PY = r'''
# Multi-threaded python3 (bench/programs.py): a pipeline of 5 threads passing
# batches of objects through queues, each stage freeing what the previous
# one allocated; meanwhile 2 pool threads compress and hash in zlib/hashlib,
# which drop the GIL, so C code allocates in parallel. argv: size, seed.
import hashlib, queue, random, sys, threading, zlib
from concurrent.futures import ThreadPoolExecutor

size, seed = float(sys.argv[1]), int(sys.argv[2])
BATCHES = max(1, int(400 * size))
STAGES = 3
queues = [queue.Queue(maxsize=32) for _ in range(STAGES + 1)]

def produce():
    rng = random.Random(seed)
    for b in range(BATCHES):
        queues[0].put([{"n": b * 64 + i,
                        "payload": [rng.randrange(1000) for _ in range(rng.randrange(1, 30))],
                        "text": "x" * rng.randrange(200)} for i in range(64)])
    queues[0].put(None)

def stage(k):
    while True:
        batch = queues[k].get()
        if batch is None:
            queues[k + 1].put(None)
            return
        queues[k + 1].put([{"n": o["n"], "payload": [v * 3 + k for v in o["payload"]],
                            "text": o["text"].upper() + str(k)} for o in batch])

def job(i):
    rng = random.Random(seed + i)
    data = rng.randbytes(150000).translate(bytes(range(64)) * 4) * 3
    comp = zlib.compress(data, 6)
    return i, len(comp), zlib.crc32(zlib.decompress(comp)), hashlib.sha256(data * 8).hexdigest()[:16]

with ThreadPoolExecutor(max_workers=2) as pool:
    jobs = pool.map(job, range(max(1, int(30 * size))))
    threads = [threading.Thread(target=produce)] + \
              [threading.Thread(target=stage, args=(k,)) for k in range(STAGES)]
    for t in threads:
        t.start()
    count = total = 0
    while True:
        batch = queues[STAGES].get()
        if batch is None:
            break
        for o in batch:
            count += 1
            total += sum(o["payload"]) + len(o["text"])
    for t in threads:
        t.join()
    print("pipeline %d objects total %d" % (count, total))
    for i, n, crc, h in jobs:
        print("job %d compressed %d crc %08x sha %s" % (i, n, crc, h))
'''

SQL = """\
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, name TEXT, v REAL, pad TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
INSERT INTO t SELECT i, (i * 7919) % 1000, printf('name-%07d', (i * 104729) % {rows}),
                     (i % 997) * 1.5, substr(hex(i * 2654435761), 1, i % 40) FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_name ON t(name);
SELECT count(*), sum(k), total(v), sum(length(pad)) FROM t;
SELECT k, count(*), sum(id) FROM t GROUP BY k ORDER BY k LIMIT 5;
SELECT name FROM t ORDER BY name DESC LIMIT 5;
SELECT count(DISTINCT name) FROM t;
UPDATE t SET v = v * 2, name = upper(name) || '-x' WHERE k < 200;
DELETE FROM t WHERE id % 3 = 0;
SELECT count(*), total(v), max(name) FROM t;
SELECT a.k, count(*), total(b.v) FROM t a JOIN t b ON a.id = b.id + 1
 WHERE a.k < 5 GROUP BY a.k ORDER BY a.k;
CREATE TABLE u AS SELECT k, group_concat(name, ',') AS names FROM t GROUP BY k;
SELECT count(*), sum(length(names)) FROM u;
SELECT k, substr(names, 1, 40) FROM u ORDER BY length(names) DESC, k LIMIT 3;
"""


def make_inputs(work, scale, seed):
    """Write the programs' inputs into work; returns {name: (argv tail,
    stdin file, extra environment)}."""
    with open(os.path.join(work, "alloc.py"), "w") as f:
        f.write(ALLOC_PY)
    with open(os.path.join(work, "threads.py"), "w") as f:
        f.write(THREADS_PY)
    with open(os.path.join(work, "table.sql"), "w") as f:
        f.write(SQL.format(rows=scaled(SQL_ROWS, scale)))
    # Park-Miller from the seed, written in chunks: the runner's own peak
    # RSS is a floor under every child's ru_maxrss (see run_program)
    x = seed % 2147483646 + 1
    letters = "abcdefghijklmnopqrstuvwxyz"
    with open(os.path.join(work, "lines.txt"), "w") as f:
        chunk = []
        for i in range(scaled(SORT_LINES, scale)):
            x = x * 16807 % 2147483647
            chunk.append("%s %d line-%d\n" % (letters[x % 26:x % 26 + x % 7 + 1], x, i))
            if len(chunk) == 10000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    empty = os.path.join(work, "empty")
    open(empty, "w").close()
    size = "%g" % scale
    return {
        "py-alloc": ([os.path.join(work, "alloc.py"), size, str(seed)], empty, PYTHON_ENV),
        "py-threads": ([os.path.join(work, "threads.py"), size, str(seed)], empty, PYTHON_ENV),
        "sqlite3": (["-batch", ":memory:"], os.path.join(work, "table.sql"), {}),
        "sort": ([os.path.join(work, "lines.txt")], empty, {}),
    }


# ---- running ---------------------------------------------------------------------

def self_hwm_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def reset_self_hwm():
    # Writing 5 to clear_refs lowers our peak RSS to the current RSS (Linux
    # 4.0+), and with it the floor under the children's ru_maxrss.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_program(cmd, stdin, env, work, timeout):
    """One run of cmd, directly (no shell, no env(1)). Returns (result,
    None) or (None, why). ru_maxrss from wait4 is the program's peak, but
    never below our own: the kernel keeps the peak of the memory the child
    had before exec (subprocess's vfork: ours). Runs at or under that floor
    are flagged."""
    out_path = os.path.join(work, "run.out")
    err_path = os.path.join(work, "run.err")
    reset_self_hwm()
    with open(stdin, "rb") as fin, open(out_path, "wb") as fout, \
            open(err_path, "wb") as ferr:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, env=env,
                             cwd=work)
        killed = []
        timer = threading.Timer(timeout, lambda: (killed.append(1), p.kill()))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    floor = self_hwm_kb()
    with open(err_path, errors="replace") as f:
        err = f.read()
    if killed:
        return None, "timeout (%.0f s)" % timeout
    if p.returncode != 0:
        tail = " ".join(err.strip().splitlines()[-2:])
        why = "exit %d" % p.returncode if p.returncode > 0 else \
              "signal %d" % -p.returncode
        return None, why + (": " + tail if tail else "")
    res = {"time_s": elapsed, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
           "peak_rss_kb": ru.ru_maxrss, "rss_floor": ru.ru_maxrss <= floor,
           "out_sha256": file_digest(out_path),
           "out_bytes": os.path.getsize(out_path), "stderr": err}
    return res, None


def loam_options(extra):
    # keep what the user passes in LOAM_OPTIONS (it reaches the loam runs)
    mine = os.environ.get("LOAM_OPTIONS", "")
    return extra + ("," + mine if mine else "")


def preload_check(path, lib, env, work):
    """None if a trivial run of the program binds malloc to lib (the
    dynamic linker's LD_DEBUG=bindings), else why not."""
    env = dict(env, LD_DEBUG="bindings")
    trivial = ["-c", "pass"] if os.path.basename(path).startswith("python") \
        else ["--version"]
    try:
        p = subprocess.run([path] + trivial, env=env, cwd=work, timeout=60,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, errors="replace")
    except subprocess.TimeoutExpired:
        return "the preload check (%s %s) timed out" % (path, " ".join(trivial))
    if ("to %s [0]: normal symbol `malloc'" % lib) not in p.stderr:
        return "malloc of %s does not come from %s (preload did not take)" % (
            os.path.basename(path), lib)
    return None


def verdict(res, ref, name):
    """Why a successful run still counts as failed, or None."""
    if res["out_sha256"] != ref["out_sha256"]:
        return "standard output differs from the run with glibc's malloc " \
               "(%d bytes against %d)" % (res["out_bytes"], ref["out_bytes"])
    if name == "loam" and "loam: error" in res["stderr"]:
        line = [x for x in res["stderr"].splitlines() if "loam: error" in x][0]
        return "loam reported an error: " + line.strip()
    return None


def run(args, progs, cols, timeout):
    """results[program][column] = {"runs": [...], "error": str|None,
    "missing": str|None}; a missing peer library is "missing", not an error."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="loam-programs-") as work:
        t0 = time.monotonic()
        inputs = make_inputs(work, args.programs_scale, args.seed)
        log("programs: inputs written to %s in %.1f s" % (work, time.monotonic() - t0))
        for pi, (name, _label, path) in enumerate(progs):
            t0 = time.monotonic()
            tail, stdin, extra = inputs[name]
            cmd = [path] + tail
            base_env = dict(child_env(None), LC_ALL="C", TMPDIR=work, **extra)
            row = results[name] = {}
            for col, lib, pkg in cols:
                row[col] = {"runs": [], "error": None, "missing": None}
                if lib is not None and not os.path.exists(lib):
                    row[col]["missing"] = "no %s (apt-get install %s)" % (
                        os.path.basename(lib), pkg or "?")
            # the reference output, and a program that works at all
            ref, err = run_program(cmd, stdin, base_env, work, timeout)
            if err:
                for c in row.values():
                    c["error"] = c["error"] or \
                        "fails even with glibc's malloc: %s" % err
                log("  %s: %s" % (name, row[cols[0][0]]["error"] if cols else err))
                continue
            # each preload must be the malloc the program calls; loam's
            # statistics at exit (LOAM_OPTIONS=verbose=1) prove it ran
            live = []
            for col, lib, _pkg in cols:
                cell = row[col]
                if cell["missing"]:
                    continue
                if lib is not None:
                    cell["error"] = preload_check(path, lib, child_env(lib), work)
                if col == "loam" and not cell["error"]:
                    env = dict(base_env, LD_PRELOAD=lib,
                               LOAM_OPTIONS=loam_options("verbose=1"))
                    res, err = run_program(cmd, stdin, env, work, timeout)
                    if err:
                        cell["error"] = err
                    elif not any(x.startswith("loam heap ")
                                 for x in res["stderr"].splitlines()):
                        cell["error"] = "no 'loam heap' statistics on stderr with " \
                                        "LOAM_OPTIONS=verbose=1: loam was not the malloc"
                    else:
                        cell["error"] = verdict(res, ref, col)
                if cell["error"]:
                    log("  %s / %s: %s" % (name, col, cell["error"]))
                else:
                    live.append((col, lib))
            for r in range(args.runs):
                if not live:
                    break
                k = r % len(live)
                order = live[k:] + live[:k]   # a different allocator first each run
                bits = []
                for col, lib in order:
                    cell = row[col]
                    if cell["error"]:
                        continue
                    env = dict(base_env)
                    if lib:
                        env["LD_PRELOAD"] = lib
                    res, err = run_program(cmd, stdin, env, work, timeout)
                    err = err or verdict(res, ref, col)
                    if err:
                        cell["error"] = err
                        bits.append("%s FAIL" % col)
                        log("  %s / %s: %s" % (name, col, err))
                        continue
                    del res["stderr"]
                    cell["runs"].append(res)
                    bits.append("%s %.3f" % (col, res["time_s"]))
                log("[programs %d/%d] %-10s run %d/%d: %s" % (
                    pi + 1, len(progs), name, r + 1, args.runs, ", ".join(bits)))
            log("        %-10s %.1f s" % (name, time.monotonic() - t0))
    return results


# ---- report ---------------------------------------------------------------------

def section(L, args, progs, cols, skipped, results, notes, baseline):
    names = [c[0] for c in cols]
    base = baseline if baseline in names else (names[0] if names else None)
    L.append("## Real programs")
    L.append("")
    L.append("Unmodified programs, the allocator preloaded (glibc: none). Each "
             "cell: median wall time of the whole process (start-up included) · "
             "ratio to %s's median (lower is better) · median peak RSS of the "
             "process (wait4's ru_maxrss). Every run's standard output is "
             "compared with the run under glibc's malloc. python3 runs with "
             "PYTHONMALLOC=malloc (otherwise its objects up to 512 B never reach "
             "malloc); all with LC_ALL=C." % (base or "?"))
    L.append("")
    for n, why in skipped:
        L.append("- **%s skipped**: %s" % (n, why))
    if args.programs_scale != 1:
        L.append("- inputs scaled by %g (BENCH_PROGRAMS_SCALE)" % args.programs_scale)
    if skipped or args.programs_scale != 1:
        L.append("")
    if not progs or not cols:
        L.append("(no program or no allocator to run)")
        L.append("")
        return
    L.append("| program | " + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    floors = False
    for p, label, _path in progs:
        row = results.get(p, {})
        bt = median_of(row[base]["runs"], "time_s") if base in row else None
        cells = []
        for n in names:
            c = row.get(n)
            if c is None:
                cells.append("–")
                continue
            if c["missing"]:
                cells.append(c["missing"])
                continue
            if c["error"] and not c["runs"]:
                cells.append("FAIL")
                notes.append("%s / %s: %s" % (p, n, c["error"]))
                continue
            t = median_of(c["runs"], "time_s")
            pk = median_of(c["runs"], "peak_rss_kb")
            ratio = "×%.2f" % (t / bt) if bt else "–"
            floor = any(r["rss_floor"] for r in c["runs"])
            floors = floors or floor
            cell = "%s · %s · %s%s" % (fmt_time(t), ratio, "≤ " if floor else "",
                                       mib(pk))
            if c["error"]:
                cell += " (FAIL in a later run)"
                notes.append("%s / %s: %s" % (p, n, c["error"]))
            cells.append(cell)
        L.append("| %s | %s |" % (label, " | ".join(cells)))
    L.append("")
    if floors:
        L.append("≤: that run's ru_maxrss was no higher than the runner's own "
                 "peak RSS, which the kernel counts for a child from before its "
                 "exec; the program's real peak is at most that.")
        L.append("")
    if args.runs >= 2:
        spread_details(L, "Real programs: run-to-run spread of the times (max − min) / median",
                       "program", [(p, label) for p, label, _path in progs], names,
                       lambda p, n: (results.get(p, {}).get(n) or {}).get("runs", []))
