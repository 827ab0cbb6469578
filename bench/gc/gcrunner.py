"""The "Collected heap" section of the loam benchmark report (imported by
bench/runner.py; stdlib only).

Runs the collector workloads (bench/gc: loam-gcbench-VARIANT) on a loam
collected heap, on the Boehm collector and as malloc/free code with mimalloc
preloaded, plus the Lisp example (examples/lisp; on loam, and on Boehm through
bench/gc/lisp_on_boehm.c: it has no malloc/free form), several times
with the variants interleaved, and renders the medians as a Markdown table
with ratios to Boehm and the issue's targets.
"""

import os
import re
import statistics
import subprocess
import threading
import time

from benchproc import child_env, fmt_time, fnum, log, median_of, mib, parse_line, run_checked, spread_details  # noqa: F401  (bench/benchproc.py)

MIMALLOC = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"

# column name -> (binary key, extra arguments, preload, label)
COLUMNS = {
    "loam": ("loam", ["--kind", "traced"], None, "loam (traced)"),
    "loam-cons": ("loam", ["--kind", "conservative"], None, "loam (conservative)"),
    # LOAM_GENERATIONAL: minor collections, the workloads calling the barrier
    "loam-gen": ("loam", ["--kind", "traced", "--generational"], None,
                 "loam (traced, generational)"),
    "loam-precise": ("loam-precise", ["--kind", "traced", "--no-stack-scan"], None,
                     "loam (traced, no stack scan)"),
    "boehm": ("boehm", [], None, "Boehm (libgc)"),
    "mimalloc": ("malloc", [], MIMALLOC, "malloc/free on mimalloc"),
}
DEFAULT_COLUMNS = ["loam", "loam-cons", "loam-gen", "boehm", "mimalloc"]
BASE = "boehm"          # ratios are against Boehm (the targets)
GOAL = "mimalloc"       # ... and the goal beyond them
LOAM_COLUMNS = ("loam", "loam-cons", "loam-gen", "loam-precise")


def workloads(big_depth):
    """name, arguments of loam-gcbench (None: the Lisp example), label."""
    return [
        ("binary-trees", ["binary-trees", "--depth", "16"],
         "binary-trees, depth 16"),
        ("binary-trees-big", ["binary-trees", "--depth", str(big_depth)],
         "binary-trees, depth %d" % big_depth),
        ("gcbench", ["gcbench"],
         "GCBench (tree 16 + 500k doubles live)"),
        ("lisp", None, "Lisp example (demo.lisp)"),
    ]


NAMES = ["binary-trees", "binary-trees-big", "gcbench", "lisp"]
GROUP = "gc"            # BENCH_ONLY=gc: all of them


def add_arguments(ap):
    ap.add_argument("--gc", type=int, default=1, help="0: no collector section")
    ap.add_argument("--gc-bin-loam", default="")
    ap.add_argument("--gc-bin-boehm", default="")
    ap.add_argument("--gc-bin-malloc", default="")
    ap.add_argument("--gc-bin-loam-precise", default="")
    ap.add_argument("--gc-note", action="append", default=[],
                    help="VARIANT=why it is missing (loam, boehm, malloc)")
    ap.add_argument("--gc-loam-build", default="",
                    help="build type of the loam library linked into loam-gcbench-loam")
    ap.add_argument("--gc-columns", default="",
                    help="comma-separated: " + ",".join(COLUMNS))
    ap.add_argument("--gc-big-depth", type=int, default=19)
    ap.add_argument("--lisp", default="", help="the Lisp example's executable")
    ap.add_argument("--lisp-script", default="", help="the program it runs")
    ap.add_argument("--lisp-note", default="", help="why the Lisp example is missing")
    ap.add_argument("--lisp-boehm", default="",
                    help="the Lisp example built over libgc (loam-lisp-boehm)")
    ap.add_argument("--lisp-layouts", default="",
                    help="directory of the Lisp's layout binaries (target lisp-layouts): "
                         "the Lisp row then runs each of them")


# ---- running ---------------------------------------------------------------------

def run_gcbench(binary, argv, preload, scale, timeout):
    cmd = [binary] + argv + ["--scale", str(scale)]
    res, err = run_checked(cmd, preload, timeout)
    if err:
        return None, err
    if preload and res.get("malloc_from") != os.path.basename(preload):
        return None, "malloc came from %s, not %s (preload did not take)" % (
            res.get("malloc_from"), os.path.basename(preload))
    return res, None


# What the Lisp example prints about its heap at exit: with --stats=json,
# loam_heap_print_stats's JSON; the other forms are fallbacks (its text
# summary ";; heap: N collections, pauses X ms total, Y ms max", key=value).
LISP_PATTERNS = {
    "collections": [r'"gc_collections"\s*:\s*(\d+)', r'\bgc_collections\s*[=:]\s*(\d+)',
                    r'\bcollections\s*[=:]\s*(\d+)', r'(\d+)\s+collections\b'],
    "max_pause_ns": [r'"gc_pause_max_ns"\s*:\s*(\d+)', r'\bgc_pause_max_ns\s*[=:]\s*(\d+)'],
    "peak_rss_kb": [r'"peak_rss_kb"\s*:\s*(\d+)'],
    "max_pause_ms": [r'\bmax_pause_ms\s*[=:]\s*([0-9.]+)',
                     r'max(?:imum)?[ _]pause\s*[=:]?\s*([0-9.]+)\s*ms',
                     r'([0-9.]+)\s*ms max\b'],
}


def lisp_stats(text):
    out = {}
    for key, pats in LISP_PATTERNS.items():
        for pat in pats:
            m = re.findall(pat, text, re.IGNORECASE)
            if m:
                out[key] = float(m[-1])
                break
    if "max_pause_ms" not in out and "max_pause_ns" in out:
        out["max_pause_ms"] = out["max_pause_ns"] / 1e6
    return out


def run_lisp(binary, script, timeout, variant="loam", extra=()):
    """The Lisp example, timed from outside (start-up included); peak RSS,
    collections and the longest pause from what it prints (its VmHWM; wait4's
    rusage only when it prints none)."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        p = subprocess.Popen([binary, "--stats=json"] + list(extra) + [script], stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL, env=child_env(None),
                             cwd=os.path.dirname(script) or None)
        killed = []
        timer = threading.Timer(timeout, lambda: (killed.append(1), p.kill()))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text_out, text_err = out.read(), err.read()
    if killed:
        return None, "timeout (%.0f s)" % timeout
    if p.returncode != 0:
        tail = " ".join(text_err.strip().splitlines()[-2:])
        why = "exit %d" % p.returncode if p.returncode > 0 else \
              "signal %d" % -p.returncode
        return None, why + (": " + tail if tail else "")
    res = {"workload": "lisp", "variant": variant, "time_s": "%.6f" % elapsed,
           "peak_rss_kb": str(ru.ru_maxrss), "ok": "1"}
    st = lisp_stats(text_out + "\n" + text_err)
    if "collections" in st:
        res["collections"] = "%d" % st["collections"]
    if "max_pause_ms" in st:
        res["max_pause_ms"] = "%.6f" % st["max_pause_ms"]
    # wait4's ru_maxrss keeps the high-water mark of the forked Python
    # process from before the exec; the interpreter's own VmHWM is right.
    if "peak_rss_kb" in st:
        res["peak_rss_kb"] = "%d" % st["peak_rss_kb"]
    return res, None


def plan(args, only):
    """(workloads to run, columns [(name, binary, argv-extra, preload)],
    notes about what is skipped). only: BENCH_ONLY's names."""
    wls = workloads(args.gc_big_depth)
    if not args.gc:
        return [], [], []
    if only:
        wls = [w for w in wls if w[0] in only or GROUP in only]
    bins = {"loam": args.gc_bin_loam, "boehm": args.gc_bin_boehm,
            "malloc": args.gc_bin_malloc, "loam-precise": args.gc_bin_loam_precise}
    why = dict(n.partition("=")[::2] for n in args.gc_note)
    wanted = [c for c in args.gc_columns.split(",") if c] or DEFAULT_COLUMNS
    cols, skipped = [], []
    for name in wanted:
        if name not in COLUMNS:
            raise SystemExit("unknown collector column %s (known: %s)"
                             % (name, ", ".join(COLUMNS)))
        key, extra, preload, _ = COLUMNS[name]
        binary = bins.get(key, "")
        if not binary or not os.access(binary, os.X_OK):
            skipped.append((name, why.get(key) or "no loam-gcbench-%s" % key))
        elif preload and not os.path.exists(preload):
            skipped.append((name, "%s not found" % preload))
        else:
            cols.append((name, binary, extra, preload))
    if not args.lisp or not os.access(args.lisp, os.X_OK):
        lisp_why = args.lisp_note or "the Lisp example is not built"
        wls = [w for w in wls if w[0] != "lisp"]
        if not only or "lisp" in only or GROUP in only:
            skipped.append(("Lisp example", lisp_why))
    elif not args.lisp_script or not os.path.exists(args.lisp_script):
        wls = [w for w in wls if w[0] != "lisp"]
        skipped.append(("Lisp example", "no script %s" % (args.lisp_script or "given")))
    return wls, cols, skipped


# The pads of the Lisp's layout binaries (bench/CMakeLists.txt, lisp-layouts).
LISP_PADS = [0, 16, 32, 48, 64, 80, 96, 112]


def lisp_layouts(args):
    """{pad: (loam binary, Boehm binary)} when every layout binary is there,
    else {}. Where a hot loop of the interpreter falls in its cache line
    moves either build's time by up to 11 % (docs/benchmarks.md): one pair
    of binaries is one draw, and the row's medians are taken over layouts."""
    d = args.lisp_layouts
    if not d:
        return {}
    out = {}
    for pad in LISP_PADS:
        a = os.path.join(d, "loam-lisp-layout-%d" % pad)
        b = os.path.join(d, "loam-lisp-boehm-layout-%d" % pad)
        if not (os.access(a, os.X_OK) and os.access(b, os.X_OK)):
            return {}
        out[pad] = (a, b)
    return out


def lisp_runs(args):
    """Runs of the Lisp row: a multiple of the layouts, at least --runs."""
    n = len(lisp_layouts(args))
    return -(-args.runs // n) * n if n else args.runs


def run(args, wls, cols, timeout):
    """results[workload][column] = {"runs": [...], "error": str|None}; the
    Lisp example runs in the loam column and, when built, the Boehm one;
    with --lisp-layouts, run r of each column on layout r % 8."""
    results = {}
    layouts = lisp_layouts(args)
    for wi, (w, argv, _label) in enumerate(wls):
        t0 = time.monotonic()
        runs = args.runs
        if argv is None:
            runs = lisp_runs(args)
            # the interpreter's own option for the generational column
            lisp_bins = {"loam": (args.lisp, []), "loam-gen": (args.lisp, ["--generational"])}
            if args.lisp_boehm and os.access(args.lisp_boehm, os.X_OK):
                lisp_bins["boehm"] = (args.lisp_boehm, [])
            mine = [(c[0], lisp_bins[c[0]][0], lisp_bins[c[0]][1], None)
                    for c in cols if c[0] in lisp_bins]
        else:
            mine = cols
        results[w] = {c[0]: {"runs": [], "error": None} for c in mine}
        if not mine:
            continue
        for r in range(runs):
            k = r % len(mine)
            order = mine[k:] + mine[:k]
            bits = []
            pad = LISP_PADS[r % len(LISP_PADS)] if argv is None and layouts else None
            for name, binary, extra, preload in order:
                cell = results[w][name]
                if cell["error"]:
                    continue
                if argv is None:
                    if pad is not None:
                        binary = layouts[pad][1 if name == "boehm" else 0]
                    res, err = run_lisp(binary, args.lisp_script, timeout, name, extra)
                    if res and pad is not None:
                        res["layout"] = str(pad)
                else:
                    res, err = run_gcbench(binary, argv + extra, preload,
                                           args.scale, timeout)
                if err:
                    cell["error"] = err
                    bits.append("%s FAIL" % name)
                    log("  %s / %s: %s" % (w, name, err))
                    continue
                cell["runs"].append(res)
                bits.append("%s %.3f" % (name, float(res["time_s"])))
            log("[gc %d/%d] %-16s run %d/%d: %s%s" % (wi + 1, len(wls), w, r + 1, runs,
                                                     ", ".join(bits),
                                                     "" if pad is None else " (layout %d)" % pad))
        log("        %-16s %.1f s" % (w, time.monotonic() - t0))
    return results


# ---- report ---------------------------------------------------------------------

def fmt_ms(ms):
    if ms >= 100:
        return "%.0f ms" % ms
    if ms >= 10:
        return "%.1f ms" % ms
    return "%.2f ms" % ms


def summary(cell):
    runs = cell["runs"]
    if not runs:
        return None
    return {
        "time": median_of(runs, "time_s"),
        "rss": median_of(runs, "peak_rss_kb"),
        "gcs": median_of(runs, "collections"),
        "pause": median_of(runs, "max_pause_ms"),
        "pause_total": median_of(runs, "total_pause_ms"),
        # the longest pause of all the runs: pauses are what a user feels
        "pause_worst": max((fnum(r, "max_pause_ms") or 0.0) for r in runs)
                       if any(fnum(r, "max_pause_ms") is not None for r in runs) else None,
    }


def section(L, args, wls, cols, skipped, results, notes):
    names = [c[0] for c in cols]
    L.append("## Collected heap")
    L.append("")
    L.append("Each cell: median time of the timed part · ratio to Boehm's median "
             "(lower is better) · median peak RSS (VmHWM) · median number of "
             "collections, median of each run's longest pause. The malloc/free "
             "column runs the same workloads with explicit frees and no collector.")
    L.append("")
    for n, why in skipped:
        L.append("- **%s skipped**: %s" % (n, why))
    if args.gc_loam_build and any(n in LOAM_COLUMNS for n in names):
        L.append("- loam built as %s" % args.gc_loam_build)
    if any(w[0] == "lisp" for w in wls):
        if lisp_layouts(args):
            L.append("- the Lisp example runs %d times per column, on the %d code layouts of "
                     "target lisp-layouts in turn (the same objects behind a pad of 0, 16, ... "
                     "112 bytes; bench/gc/lisp_layouts.sh): its medians are over layouts, not "
                     "one draw of where the interpreter's hot loops fall"
                     % (lisp_runs(args), len(LISP_PADS)))
        else:
            L.append("- the Lisp example runs one pair of binaries: one draw of where the "
                     "interpreter's hot loops fall, which moves either build by up to 11 % "
                     "(no --lisp-layouts)")
    L.append("")
    if not cols:
        L.append("(no collector variant to run)")
        L.append("")
        return
    labels = [COLUMNS[n][3] for n in names]
    L.append("| workload | " + " | ".join(labels) + " |")
    L.append("|---|" + "---|" * len(names))
    summ = {}
    for w, argv, label in wls:
        row = results.get(w, {})
        summ[w] = {}
        base = summary(row[BASE]) if BASE in row else None
        cells = []
        sums = set()
        for n in names:
            if n not in row:
                cells.append("n/a")
                continue
            c = row[n]
            if c["error"] and not c["runs"]:
                cells.append("FAIL")
                summ[w].setdefault("_failed", []).append(n)
                notes.append("%s / %s: %s" % (w, n, c["error"]))
                continue
            s = summary(c)
            summ[w][n] = s
            parts = [fmt_time(s["time"])]
            if base and base["time"]:
                parts[0] += " ×%.2f" % (s["time"] / base["time"])
            parts.append(mib(s["rss"]))
            if n == "mimalloc":
                parts.append("no GC")
            else:
                g = "%s GCs" % ("%.0f" % s["gcs"] if s["gcs"] is not None else "?")
                if s["pause"] is not None:
                    g += ", max %s" % fmt_ms(s["pause"])
                parts.append(g)
            cell = " · ".join(parts)
            if c["error"]:
                cell += " (FAIL in a later run)"
                notes.append("%s / %s: %s" % (w, n, c["error"]))
            cells.append(cell)
            for r in c["runs"]:
                if r.get("checksum") is not None:
                    sums.add(r.get("checksum"))
        if len(sums) > 1:
            notes.append("%s: checksums differ between runs/variants: %s"
                         % (w, ", ".join(sorted(sums))))
        L.append("| %s | %s |" % (label, " | ".join(cells)))
    L.append("")
    targets(L, wls, names, summ)
    if args.runs >= 2:
        spread(L, wls, names, results)


def targets(L, wls, names, summ):
    """The issue's targets for each loam column, against Boehm's medians:
    time at most half, peak RSS and longest pause no higher; the goal: the
    time of malloc/free on mimalloc."""
    mine = [n for n in names if n in LOAM_COLUMNS]
    if not mine or BASE not in names:
        return
    L.append("**Targets** (against Boehm): time ≤ ½ Boehm's, peak RSS ≤ Boehm's, "
             "longest pause ≤ Boehm's (worst run of each); goal: time ≤ malloc/free "
             "on mimalloc. ✓ met, ✗ missed.")
    L.append("")
    L.append("| workload | variant | time / Boehm | peak RSS / Boehm | "
             "longest pause (Boehm's) | time / mimalloc |")
    L.append("|---|---|---|---|---|---|")
    for w, _argv, label in wls:
        b = summ.get(w, {}).get(BASE)
        g = summ.get(w, {}).get(GOAL)
        for n in mine:
            if n not in summ.get(w, {}):
                if n in summ.get(w, {}).get("_failed", ()):
                    L.append("| %s | %s | FAIL | FAIL | FAIL | FAIL |" % (label, n))
                continue
            s = summ[w][n]
            if not b:
                L.append("| %s | %s | n/a | n/a | n/a | %s |" % (
                    label, n, ("×%.2f" % (s["time"] / g["time"])) if g else "n/a"))
                continue
            tr = s["time"] / b["time"]
            rr = s["rss"] / b["rss"]
            if s["pause_worst"] is not None and b["pause_worst"] is not None:
                pause = "%s %s (%s)" % ("✓" if s["pause_worst"] <= b["pause_worst"] else "✗",
                                        fmt_ms(s["pause_worst"]), fmt_ms(b["pause_worst"]))
            else:
                pause = "?"
            goal = "n/a"
            if g and g["time"]:
                gr = s["time"] / g["time"]
                goal = "%s ×%.2f" % ("✓" if gr <= 1.0 else "✗", gr)
            L.append("| %s | %s | %s ×%.2f | %s ×%.2f | %s | %s |" % (
                label, n, "✓" if tr <= 0.5 else "✗", tr,
                "✓" if rr <= 1.0 else "✗", rr, pause, goal))
    L.append("")


def spread(L, wls, names, results):
    spread_details(L, "Collected heap: run-to-run spread of the times (max − min) / median",
                   "workload", [(w, label) for w, _argv, label in wls], names,
                   lambda w, n: (results.get(w, {}).get(n) or {}).get("runs", []))
